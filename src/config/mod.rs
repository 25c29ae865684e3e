//! The Kamatera cloud config: the upstream INI file (`[global]` + `[nodegroup "name"]`), resolved
//! and validated once at load into typed node-group settings.
//!
//! Keys, defaults and override rules are those of the in-tree Go provider, with its known bugs
//! fixed: node-group booleans accept every gcfg spelling, a node group can turn `dailybackup` and
//! `managed` off again, and everything that would only fail later (bad script, missing image,
//! names that no create request could carry) is reported here, all problems at once, each with
//! its file, line, section and key.

mod entries;
mod gcfg;
mod group;
mod keys;
mod labels;
mod read;
mod resolve;
mod summary;
mod values;

use std::fmt;
use std::path::Path;

pub use crate::secret::Secret;
pub use entries::DEFAULT_DRAIN_TIMEOUT;
pub use keys::reference as key_reference;
pub use labels::{GROUP_LABEL, INSTANCE_TYPE_LABEL, KUBELET_LABELS, REGION_LABEL, kubelet_may_set};
pub use resolve::{DEFAULT_API_URL, DEFAULT_PROVIDER_ID_PREFIX};
pub use summary::{render as render_summary, warnings};

/// Environment variable that overrides `kamatera-api-client-id`.
pub const ENV_CLIENT_ID: &str = "KAMATERA_API_CLIENT_ID";
/// Environment variable that overrides `kamatera-api-secret`.
pub const ENV_SECRET: &str = "KAMATERA_API_SECRET";

/// A warning when the cloud config at `path` holds the API secret (the environment does not
/// override it) and group or others may read the file.
pub fn permission_warning(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        let from_env = env(ENV_SECRET).is_some_and(|v| !v.trim().is_empty());
        if mode & 0o077 == 0 || from_env {
            return None;
        }
        Some(format!(
            "{} holds the Kamatera API secret and is readable by {} (mode {mode:03o}): chmod 600 it, or pass the secret in ${ENV_SECRET}",
            path.display(),
            if mode & 0o007 != 0 {
                "everyone"
            } else {
                "its group"
            }
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, env);
        None
    }
}

/// The one rule for quoting a value from the file (or the environment) in any message, `check`'s
/// and `serve`'s alike. A short plain value (at most 24 characters, no `=`, no control
/// character) is quoted as it is; any other is described by its length and its first `=` or
/// control character with its position, never shown: two lines joined by a lost line break
/// carry the next key's value, a secret perhaps, and a long value would flood the log.
pub fn shown(value: impl AsRef<str>) -> String {
    let value = value.as_ref();
    let count = value.chars().count();
    let odd = value
        .chars()
        .enumerate()
        .find(|(_, c)| *c == '=' || c.is_control());
    match odd {
        None if count <= 24 => format!("{value:?}"),
        None => format!(
            "a value of {count} characters starting with {:?} (too long to show)",
            value.chars().next().unwrap_or(' ')
        ),
        Some((i, c)) => format!(
            "a value of {count} characters with {c:?} at position {} (not shown: it may hold another key's value)",
            i + 1
        ),
    }
}

/// A fully resolved and validated cloud config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    pub api_client_id: String,
    pub api_secret: Secret,
    /// Base URL without a trailing slash.
    pub api_url: String,
    pub cluster_name: String,
    /// Only servers whose name starts with this are considered at all.
    pub filter_name_prefix: String,
    /// Prefix of every providerID, `kamatera://` unless configured.
    pub provider_id_prefix: String,
    /// Label that marks GPU nodes (`gpu-label`), answered by the GPULabel RPC; empty for none.
    pub gpu_label: String,
    /// Time zone of `schedule` and `hibernate` cron expressions (`timezone`, default UTC).
    pub timezone: crate::schedule::Zone,
    /// Per-pod price model (PricingPodPrice), when node groups have prices.
    pub pod_prices: Option<PodPrices>,
    /// How long one Kamatera API request may take, by kind.
    pub api_timeouts: ApiTimeouts,
    /// Node groups, sorted by name.
    pub node_groups: Vec<NodeGroupConfig>,
}

/// How long one Kamatera API request may take, by kind (`kamatera-api-*timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiTimeouts {
    /// Listings, tags, lookups, queue polls, options.
    pub read: std::time::Duration,
    /// Power on, power off, terminate.
    pub power: std::time::Duration,
    /// Create: the server makes several upstream calls for one; the in-tree provider waits 5
    /// minutes.
    pub create: std::time::Duration,
}

impl Default for ApiTimeouts {
    fn default() -> Self {
        ApiTimeouts {
            read: std::time::Duration::from_secs(30),
            power: std::time::Duration::from_secs(60),
            create: std::time::Duration::from_secs(5 * 60),
        }
    }
}

/// One `[nodegroup "name"]` with the global defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupConfig {
    pub name: String,
    pub min_size: u32,
    pub max_size: u32,
    pub poweroff_on_scale_down: bool,
    pub poweron_on_scale_up: bool,
    /// 0 means no cap on parked servers.
    pub poweroff_on_scale_down_max_servers: u32,
    /// Powered-off servers kept ready for scale-up (`standby`): the pool is topped up to this
    /// many by buying servers that are never booted; parked servers count toward it.
    pub standby: u32,
    /// `template-label` entries, in file order.
    pub template_labels: Vec<(String, String)>,
    /// `template-taint` entries, in file order.
    pub template_taints: Vec<TemplateTaint>,
    /// CPU kept back from the template node's allocatable, in millicores.
    pub reserved_cpu_millis: u32,
    /// Memory kept back from the template node's allocatable, in MiB.
    pub reserved_memory_mib: u32,
    /// Per-group autoscaling options; all `None` means "use the autoscaler's defaults".
    pub options: OptionOverrides,
    /// `schedule` entries, in file order.
    pub schedules: Vec<ScheduleEntry>,
    /// `hibernate` entries, in file order.
    pub hibernate: Vec<HibernateEntry>,
    /// `price-per-hour`: what one server of the group costs per hour (PricingNodePrice).
    pub price_per_hour: Option<Price>,
    pub server: ServerConfig,
}

impl NodeGroupConfig {
    /// A scale-up powers on the group's pool (parked, then standby servers) before buying:
    /// `poweron-on-scale-up`, or a standby pool anywhere (the group's own or a window's).
    pub fn powers_on_pool(&self) -> bool {
        self.poweron_on_scale_up || self.has_standby()
    }

    /// The group keeps a standby pool at some time (its own `standby` or a window's).
    pub fn has_standby(&self) -> bool {
        self.standby > 0
            || self
                .schedules
                .iter()
                .any(|e| e.standby.is_some_and(|n| n > 0))
    }
}

/// A window during which a node group's sizes or options differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleEntry {
    pub window: crate::schedule::Window,
    pub min_size: Option<u32>,
    pub max_size: Option<u32>,
    /// The standby pool while the window is open.
    pub standby: Option<u32>,
    pub options: OptionOverrides,
    /// The entry as written, for messages.
    pub text: String,
}

/// A window during which a node group hibernates (drained, servers gone, max-size 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HibernateEntry {
    pub window: crate::schedule::Window,
    /// Delete pods that could not be evicted within `drain_timeout` (PodDisruptionBudgets).
    pub force: bool,
    pub drain_timeout: std::time::Duration,
    pub text: String,
}

/// A price in the account's currency (≥ 0, finite).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price(pub f64);

impl Eq for Price {}

/// How PricingPodPrice prices a pod: its requests times these hourly rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPrices {
    pub per_cpu_hour: Price,
    pub per_gib_hour: Price,
}

/// A taint of the template node: `key=value:Effect` or `key:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateTaint {
    pub key: String,
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Per-group overrides of the autoscaler's options (GetOptions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OptionOverrides {
    pub scale_down_utilization_threshold: Option<f64>,
    pub scale_down_gpu_utilization_threshold: Option<f64>,
    pub scale_down_unneeded_time: Option<std::time::Duration>,
    pub scale_down_unready_time: Option<std::time::Duration>,
    pub max_node_provision_time: Option<std::time::Duration>,
    pub zero_or_max_node_scaling: Option<bool>,
    pub ignore_daemonsets_utilization: Option<bool>,
}

impl Eq for OptionOverrides {}

impl OptionOverrides {
    pub fn is_empty(&self) -> bool {
        *self == OptionOverrides::default()
    }
}

/// Default CPU reservation of template nodes (kubelet and system daemons), in millicores.
pub const DEFAULT_RESERVED_CPU_MILLIS: u32 = 100;
/// Default memory reservation of template nodes (daemons plus the eviction threshold), in MiB.
pub const DEFAULT_RESERVED_MEMORY_MIB: u32 = 256;

/// What a create request for this node group carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub name_prefix: String,
    /// `None` lets the API generate a password (`__generate__`).
    pub password: Option<Secret>,
    pub ssh_key: String,
    pub datacenter: String,
    pub image: String,
    /// `<cores><type>`, for example `2B`.
    pub cpu: String,
    pub ram_mb: u32,
    /// Disk specs such as `size=20` or `id=1,size=100`.
    pub disks: Vec<String>,
    /// Network specs such as `name=wan,ip=auto`.
    pub networks: Vec<String>,
    pub daily_backup: bool,
    pub managed: bool,
    pub billing_cycle: BillingCycle,
    pub monthly_package: String,
    /// The decoded init script.
    pub script: Option<Secret>,
    /// `k8sca-<cluster>` and `k8scang-<group>`.
    pub tags: Vec<String>,
}

impl ServerConfig {
    /// Number of cores from the cpu string (`2B` → 2).
    pub fn cpu_cores(&self) -> u32 {
        values::cpu_cores(&self.cpu).unwrap_or(0)
    }

    /// Size in GB of the first disk, if it names one.
    pub fn first_disk_gb(&self) -> Option<u32> {
        self.disks.first().and_then(|d| values::disk_size_gb(d))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BillingCycle {
    #[default]
    Hourly,
    Monthly,
}

impl BillingCycle {
    pub fn as_str(self) -> &'static str {
        match self {
            BillingCycle::Hourly => "hourly",
            BillingCycle::Monthly => "monthly",
        }
    }
}

impl fmt::Display for BillingCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a problem is, as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// `global` or `nodegroup "name"`, when the problem belongs to a section.
    pub section: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(section) = &self.section {
            write!(f, "[{section}] ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read cloud config {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{}", invalid_message(.path, .problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn invalid_message(path: &str, problems: &[Problem]) -> String {
    let mut out = format!(
        "cloud config {path} has {} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        match p.line {
            Some(line) => out.push_str(&format!("{path}:{line}: ")),
            None => out.push_str(&format!("{path}: ")),
        }
        let mut rest = p.clone();
        rest.line = None;
        out.push_str(&rest.to_string());
    }
    out
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

impl CloudConfig {
    /// Reads, resolves and validates a cloud config file, with the credentials taken from the
    /// process environment when set there.
    pub fn load(path: &Path) -> Result<CloudConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&path.display().to_string(), &text, &|name| {
            std::env::var(name).ok()
        })
    }

    /// Resolves and validates config text. `source` names the text in messages; `env` looks up
    /// the credential override variables.
    pub fn parse(
        source: &str,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<CloudConfig, ConfigError> {
        resolve::resolve(text, env).map_err(|problems| ConfigError::Invalid {
            path: source.to_string(),
            problems,
        })
    }

    pub fn node_group(&self, name: &str) -> Option<&NodeGroupConfig> {
        self.node_groups.iter().find(|g| g.name == name)
    }
}

/// The commented example config shipped in `config/example.ini`; also the built-in config of
/// `serve --simulate`.
pub const EXAMPLE_CONFIG: &str = include_str!("../../config/example.ini");
