//! The `simulator` command's flags.

use super::*;

/// The `simulator` command's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// The AuthClientId the simulator accepts.
    #[arg(long, default_value = DEMO_CLIENT_ID)]
    pub client_id: String,
    /// The AuthSecret the simulator accepts.
    #[arg(long, default_value = DEMO_SECRET)]
    pub secret: String,
    /// Start with this many powered-on, untagged servers named seed-<n> (other workloads).
    #[arg(long, default_value_t = 0)]
    pub seed_servers: u32,
    /// Seed of every random choice; the same seed and requests give the same answers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Multiply every command duration by this.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Seconds a create takes (before --time-scale).
    #[arg(long, default_value_t = 20.0)]
    pub create_seconds: f64,
    /// Seconds the first power-on of a server created powered off takes (its first boot).
    #[arg(long, default_value_t = 10.0)]
    pub first_boot_seconds: f64,
    /// Seconds a power-on of a server that booted before takes.
    #[arg(long, default_value_t = 5.0)]
    pub boot_seconds: f64,
    /// Account quota: most servers at once.
    #[arg(long)]
    pub quota_servers: Option<u32>,
    /// Account quota: most CPU cores in all.
    #[arg(long)]
    pub quota_cpu: Option<u32>,
    /// Account quota: most RAM in all, in MB.
    #[arg(long)]
    pub quota_ram_mb: Option<u64>,
}

impl SimulatorArgs {
    /// The simulator these flags describe.
    pub fn config(&self) -> Result<SimConfig, SimArgsError> {
        if !(self.time_scale.is_finite() && self.time_scale >= 0.0) {
            return Err(SimArgsError::TimeScale);
        }
        let secs = |flag: &'static str, v: f64| {
            Duration::try_from_secs_f64(v).map_err(|_| SimArgsError::Seconds { flag, value: v })
        };
        let create = secs("--create-seconds", self.create_seconds)?;
        let first_boot = secs("--first-boot-seconds", self.first_boot_seconds)?;
        let boot = secs("--boot-seconds", self.boot_seconds)?;
        let servers = (0..self.seed_servers)
            .map(|i| SeedServer {
                name: format!("seed-{i:04}"),
                datacenter: "US-NY2".into(),
                power_on: true,
                tags: Vec::new(),
                cpu: "2B".into(),
                ram_mb: 4096,
            })
            .collect();
        Ok(SimConfig {
            client_id: self.client_id.clone(),
            secret: self.secret.clone(),
            seed: self.seed,
            timing: Timing {
                scale: self.time_scale,
                create,
                first_boot,
                boot,
                ..Timing::default()
            },
            quota: Quota {
                max_servers: self.quota_servers,
                max_cpu_cores: self.quota_cpu,
                max_ram_mb: self.quota_ram_mb,
            },
            servers,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimArgsError {
    #[error("--time-scale must be a non-negative number")]
    TimeScale,
    #[error("{flag} must be a non-negative number of seconds, not {value}")]
    Seconds { flag: &'static str, value: f64 },
}
