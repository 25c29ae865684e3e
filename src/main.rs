//! Command line of `kamatera-ca-provider`: parses arguments and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kamatera_ca_provider::config::{self, CloudConfig, ConfigError};
use kamatera_ca_provider::provider::{Provider, ProviderOptions};
use kamatera_ca_provider::sim::{self, Quota, SeedServer, SimConfig, Timing};
use kamatera_ca_provider::{grpc, kamatera};

#[derive(Parser)]
#[command(
    name = "kamatera-ca-provider",
    version,
    about = "Kamatera cloud provider for the Kubernetes cluster-autoscaler (externalgrpc)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a cloud config and print the resolved node groups.
    ///
    /// Exit status: 0 when the config is valid, 2 when it has problems (all are printed).
    Check {
        /// The Kamatera INI cloud config (same format as the in-tree provider).
        #[arg(long, value_name = "FILE")]
        cloud_config: PathBuf,
    },
    /// Serve the externalgrpc CloudProvider API to the cluster-autoscaler.
    Serve(ServeArgs),
    /// Run the Kamatera API simulator alone (a fake cloudcli API for demos and tools).
    Simulator(SimulatorArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The Kamatera INI cloud config. With --simulate it is optional (config/example.ini is
    /// built in) and its API URL and credentials are replaced by the simulator's.
    #[arg(long, value_name = "FILE", required_unless_present = "simulate")]
    cloud_config: Option<PathBuf>,
    /// Address of the gRPC server (the autoscaler's cloud-config `address`).
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    /// Run against an embedded Kamatera API simulator instead of the real API.
    #[arg(long)]
    simulate: bool,
}

#[derive(clap::Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: SocketAddr,
    /// The AuthClientId the simulator accepts.
    #[arg(long, default_value = sim::DEMO_CLIENT_ID)]
    client_id: String,
    /// The AuthSecret the simulator accepts.
    #[arg(long, default_value = sim::DEMO_SECRET)]
    secret: String,
    /// Start with this many powered-on, untagged servers named seed-<n> (other workloads).
    #[arg(long, default_value_t = 0)]
    seed_servers: u32,
    /// Seed of every random choice; the same seed and requests give the same answers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Multiply every command duration (create 20 s, power and terminate 5 s) by this.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Account quota: most servers at once.
    #[arg(long)]
    quota_servers: Option<u32>,
    /// Account quota: most CPU cores in all.
    #[arg(long)]
    quota_cpu: Option<u32>,
    /// Account quota: most RAM in all, in MB.
    #[arg(long)]
    quota_ram_mb: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { cloud_config } => check(&cloud_config),
        Command::Serve(args) => run(serve(args)),
        Command::Simulator(args) => run(simulator(args)),
    }
}

/// Runs an async command on a multi-threaded runtime, printing any error.
fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn check(path: &std::path::Path) -> ExitCode {
    match CloudConfig::load(path) {
        Ok(cfg) => {
            print!("{}", config::render_summary(&cfg));
            println!("\n{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (mut cfg, source) = match &args.cloud_config {
        Some(path) => (
            CloudConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
            path.display().to_string(),
        ),
        None => (
            CloudConfig::parse(
                "config/example.ini (built in)",
                config::EXAMPLE_CONFIG,
                &|_| None,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
            "config/example.ini (built in)".to_string(),
        ),
    };
    let simulator = if args.simulate {
        let handle = sim::start(SimConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot start the embedded simulator")?;
        cfg.api_url = handle.url();
        cfg.api_client_id = sim::DEMO_CLIENT_ID.into();
        cfg.api_secret = config::Secret::new(sim::DEMO_SECRET);
        Some(handle)
    } else {
        None
    };

    let client = kamatera::Client::new(kamatera::ClientSettings::from_config(&cfg))
        .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    let groups: Vec<String> = cfg
        .node_groups
        .iter()
        .map(|g| format!("{} ({}..{})", g.name, g.min_size, g.max_size))
        .collect();
    for g in cfg
        .node_groups
        .iter()
        .filter(|g| g.poweroff_on_scale_down || g.poweron_on_scale_up)
    {
        tracing::warn!(
            group = %g.name,
            "poweroff-on-scale-down / poweron-on-scale-up are accepted but not implemented yet: \
             scale-down terminates servers and scale-up creates new ones"
        );
    }
    let api_url = cfg.api_url.clone();
    let provider = Provider::new(cfg, client, ProviderOptions::default());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;

    match &simulator {
        Some(sim) => tracing::info!(
            "provider listening on {addr}, simulated Kamatera at {} (account state: {}/_sim/state); \
             config {source}; node groups: {}",
            sim.url(),
            sim.url(),
            groups.join(", ")
        ),
        None => tracing::info!(
            "provider listening on {addr}, Kamatera API at {api_url}; config {source}; node groups: {}",
            groups.join(", ")
        ),
    }
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address");
    }

    match provider.reconcile().await {
        Ok(r) => tracing::info!(servers = r.listed, "first Kamatera listing done"),
        Err(e) => tracing::warn!(
            error = e.detail(),
            "first Kamatera listing failed; Refresh answers Unavailable until one succeeds"
        ),
    }
    let background = provider.start_background();
    grpc::serve(provider, listener, shutdown_signal())
        .await
        .context("gRPC server failed")?;
    background.abort();
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

async fn simulator(args: SimulatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.time_scale.is_finite() && args.time_scale >= 0.0,
        "--time-scale must be a non-negative number"
    );
    let servers = (0..args.seed_servers)
        .map(|i| SeedServer {
            name: format!("seed-{i:04}"),
            datacenter: "US-NY2".into(),
            power_on: true,
            tags: Vec::new(),
            cpu: "2B".into(),
            ram_mb: 4096,
        })
        .collect();
    let handle = sim::start(
        SimConfig {
            client_id: args.client_id.clone(),
            secret: args.secret.clone(),
            seed: args.seed,
            timing: Timing {
                scale: args.time_scale,
                ..Timing::default()
            },
            quota: Quota {
                max_servers: args.quota_servers,
                max_cpu_cores: args.quota_cpu,
                max_ram_mb: args.quota_ram_mb,
            },
            servers,
        },
        args.listen,
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("Kamatera API simulator listening on {}", handle.url());
    println!(
        "  credentials: AuthClientId: {}  AuthSecret: {}",
        args.client_id, args.secret
    );
    println!(
        "  try: curl -s -H 'AuthClientId: {}' -H 'AuthSecret: {}' {}/service/servers",
        args.client_id,
        args.secret,
        handle.url()
    );
    println!("  state: {}/_sim/state   (Ctrl-C to stop)", handle.url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    handle.shutdown().await;
    Ok(())
}
