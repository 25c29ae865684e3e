//! Node groups and their instances: answers the autoscaler from memory, records scaling intent at
//! once, and reconciles with Kamatera in the background.
//!
//! - Reads (`node_groups`, `target_size`, `nodes`, `node_group_for_node`, templates, options) are
//!   map lookups under a short lock; they never call the API.
//! - `increase_size`, `delete_nodes` and `decrease_target_size` validate, change the in-memory
//!   state, start the cloud calls as tasks (bounded concurrency) and return.
//! - One reconcile pass serves all node groups: one listing, tags only for servers not seen before
//!   (bounded concurrency), and every pending command in one batched queue request. A background
//!   loop runs it on an interval; `refresh` triggers it and waits a bounded time.
//! - Kamatera is the truth for what exists (both tags = membership); the provider is the truth
//!   for what is in flight.

mod actions;
mod gauges;
mod guard;
mod hibernate;
mod in_force;
mod journal;
mod leader;
mod nodes;
mod pricing;
mod reads;
mod reconcile;
mod reload;
mod scaling;
mod standby;
mod state;
mod store;
mod template;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::config::{CloudConfig, NodeGroupConfig};
use crate::kamatera::{self, Client, CommandStatus, CreateServer, KamateraError};

pub use hibernate::HibernationStatus;
pub use in_force::{InForce, Manual};
pub use state::{
    CreateStatus, ErrorInfo, GroupHibernation, HibernationPhase, InstanceErrorClass, Phase,
    VanishRule,
};
pub use template::{GROUP_LABEL, MAX_PODS, TemplateNode};
// Part of the provider's answers (GetOptions), so its callers need not reach into `config`.
pub use crate::config::OptionOverrides;

pub use journal::{Restored, probe as probe_state_file};
use state::{Action, CommandKind, GroupTags, Instance, Limits, Observed, Pending, State};
use store::MapVersion;

/// Errors the autoscaler sees; the gRPC layer maps each to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("node group {} not found", crate::telemetry::quoted(group))]
    UnknownGroup { group: String },
    #[error("node {} (provider ID {}) is not in any node group", crate::telemetry::quoted(&node.name), crate::telemetry::quoted(&node.provider_id))]
    UnknownNode { node: NodeRef },
    #[error("node {} (provider ID {}) does not belong to node group {group}", crate::telemetry::quoted(&node.name), crate::telemetry::quoted(&node.provider_id))]
    NotInGroup { node: NodeRef, group: String },
    #[error("delta must be {}, have: {delta}", if *.positive { "positive" } else { "negative" })]
    BadDelta { delta: i32, positive: bool },
    #[error("size increase is too large: current {current}, desired {desired}, max {max}{limit}")]
    OverMax {
        current: u32,
        desired: u32,
        max: u32,
        limit: MaxLimit,
    },
    #[error(
        "attempt to delete existing nodes: target size {target}, only {uncreated} not yet created, delta {delta}"
    )]
    WouldDeleteExisting {
        target: usize,
        uncreated: usize,
        delta: i32,
    },
    #[error("node group {group} has no price-per-hour")]
    NoPrice { group: String },
    #[error("end time {end} is before start time {start}")]
    EndBeforeStart {
        start: jiff::Timestamp,
        end: jiff::Timestamp,
    },
    #[error("this replica is standing by: another one holds the lease")]
    StandingBy,
    #[error("no Kamatera state yet: {why}")]
    NoStateYet { why: String },
}

/// Which max-size an increase ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxLimit {
    /// The node group's own.
    Config,
    /// The max-size of the schedule in force.
    Schedule,
    /// The node group is hibernating (max-size 0).
    Hibernating,
    /// The group's own max-size, reached with this many servers the autoscaler does not see.
    Unseen(u32),
}

impl std::fmt::Display for MaxLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaxLimit::Config => "",
            MaxLimit::Schedule => " (max-size of the schedule in force)",
            MaxLimit::Hibernating => " (the node group is hibernating)",
            MaxLimit::Unseen(n) => {
                return write!(
                    f,
                    " (counting {n} server(s) of the group the autoscaler does not see: parked or standby, missing from the listing, or maybe bought)"
                );
            }
        })
    }
}

/// Servers missing from the listings looked up per reconcile, at most.
const LOOKUPS_PER_RECONCILE: usize = 4;
/// How often one server's cached tags are read again.
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// Where the provider reads the time for schedules (tests set it).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(jiff::Timestamp::now))
    }

    pub fn new(f: impl Fn() -> jiff::Timestamp + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> jiff::Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

pub type Result<T> = std::result::Result<T, ProviderError>;

/// Tuning knobs; the defaults suit the autoscaler's 10 s loop and 5 s call deadline.
#[derive(Debug, Clone)]
pub struct ProviderOptions {
    /// How long `refresh` waits for a reconcile before answering with the state it has.
    pub refresh_wait: Duration,
    /// Background reconcile period.
    pub reconcile_interval: Duration,
    /// Create, power and terminate requests in flight at once.
    pub max_concurrent_requests: usize,
    /// Tag requests in flight at once during a reconcile.
    pub max_concurrent_tag_reads: usize,
    /// How long the name of a create whose outcome is unknown (timeout, 5xx) is watched, so a
    /// server that appears late is terminated rather than orphaned.
    pub uncertain_create_watch: Duration,
    /// Ready (health, `/readyz`) only while the last successful reconcile is at most this old.
    pub max_staleness: Duration,
    /// How long a command may go unreported by the queue (while it answers others) before the
    /// provider stops waiting for it and goes by the listing.
    pub unknown_command_limit: Duration,
    /// How long a create whose outcome is unknown (timeout, 5xx, lost answer) waits for its
    /// server to appear before it reports CREATE_UNCERTAIN.
    pub uncertain_create_grace: Duration,
    /// How long a known server must be missing from the listings before a lookup may prove it
    /// gone (only such a lookup, or a completed terminate, makes it gone).
    pub vanish: VanishRule,
    /// How long a create may wait for deleted servers to leave when only they keep the group at
    /// max-size; then it reports `MAX_SIZE_REACHED`.
    pub room_wait: Duration,
    /// How long the standby pool buys nothing after one of its creates failed.
    pub standby_retry: Duration,
    /// The restart journal as a file; `None` keeps in-flight intent in memory only (unless
    /// `state_configmap` is set, which wins).
    pub state_file: Option<std::path::PathBuf>,
    /// The restart journal in a ConfigMap (in a cluster: it outlives the pod).
    pub state_configmap: Option<crate::kube::JournalMap>,
    /// With a Lease, only the replica that holds it reconciles, mutates and answers the
    /// autoscaler; `None`: this process is the only one.
    pub leader_elect: Option<std::sync::Arc<crate::kube::LeaseLock>>,
    /// How often the Lease is renewed (or tried for).
    pub lease_retry: Duration,
    /// Kubernetes access for Node cleanup on park and providerIDs; `None` skips both.
    pub kube: Option<crate::kube::Kube>,
    /// This process's Pod (namespace, name), for Events about the provider itself (a refused
    /// config change); `None` posts none.
    pub own_pod: Option<(String, String)>,
    /// The time schedules are evaluated at.
    pub clock: Clock,
    /// How often a drain looks at the pods left on its nodes.
    pub drain_poll: Duration,
    /// How often the hibernation controller checks the windows.
    pub hibernation_tick: Duration,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            refresh_wait: Duration::from_secs(2),
            reconcile_interval: Duration::from_secs(15),
            max_concurrent_requests: 8,
            max_concurrent_tag_reads: 8,
            uncertain_create_watch: Duration::from_secs(30 * 60),
            max_staleness: Duration::from_secs(120),
            unknown_command_limit: Duration::from_secs(10 * 60),
            uncertain_create_grace: Duration::from_secs(2 * 60),
            vanish: VanishRule {
                misses: 3,
                after: Duration::from_secs(60),
            },
            room_wait: Duration::from_secs(10 * 60),
            standby_retry: Duration::from_secs(5 * 60),
            state_file: None,
            state_configmap: None,
            leader_elect: None,
            lease_retry: Duration::from_secs(2),
            kube: None,
            own_pod: None,
            clock: Clock::system(),
            drain_poll: Duration::from_secs(5),
            hibernation_tick: Duration::from_secs(1),
        }
    }
}

/// A node group as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: String,
    pub min_size: u32,
    pub max_size: u32,
}

/// One instance as the autoscaler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// The providerID: prefix + server name.
    pub id: String,
    pub phase: Phase,
    pub error: Option<ErrorInfo>,
}

/// A Kubernetes node as the autoscaler sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeRef {
    pub provider_id: String,
    pub name: String,
    /// Its `kamatera.com/node-group` label, if any (template nodes carry it).
    pub group_label: String,
}

/// What one reconcile pass did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub listed: usize,
    pub tag_reads: usize,
    pub commands_polled: usize,
    pub actions: usize,
}

/// The provider: cheap to clone, shared by the gRPC service and the background loop.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

/// The config in force and the client it asks for: swapped whole by a reload, between
/// reconciles; readers take the `Arc` and drop the lock at once.
struct Live {
    config: Arc<CloudConfig>,
    client: Client,
    /// Why the config file's latest change was refused (the config in force stays).
    refused: Option<String>,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Node groups new in the file.
    pub added: Vec<String>,
    /// Node groups gone from the file (their servers are kept untouched).
    pub removed: Vec<String>,
    /// Node groups whose settings changed.
    pub changed: Vec<String>,
    /// The API URL, credentials or timeouts changed: a new client is in use.
    pub new_client: bool,
}

/// A node group of the config in force, kept alive by its config (a reload swaps the config;
/// a caller holding this finishes on the one it started with).
pub(crate) struct GroupRef {
    config: Arc<CloudConfig>,
    index: usize,
}

impl std::ops::Deref for GroupRef {
    type Target = NodeGroupConfig;
    fn deref(&self) -> &NodeGroupConfig {
        &self.config.node_groups[self.index]
    }
}

struct Inner {
    live: std::sync::RwLock<Live>,
    /// Where every figure goes (the clients of every config share it).
    metrics: Arc<crate::telemetry::Metrics>,
    options: ProviderOptions,
    state: Mutex<State>,
    /// One reconcile at a time.
    reconcile_lock: tokio::sync::Mutex<()>,
    /// Counts finished reconciles; `refresh` waits for it to move.
    finished: watch::Sender<u64>,
    requests: Arc<Semaphore>,
    /// Serialises journal writes; holds the state version and the text last written.
    journal: tokio::sync::Mutex<(u64, Option<String>)>,
    /// The ConfigMap journal's resourceVersion last read or written (`Unread` when it could not
    /// be read at startup, which holds back every write and create until it is), and why the
    /// last write failed.
    journal_status: Mutex<store::JournalStatus>,
    /// True while this process may act: it holds the Lease, or there is no leader election.
    leader: watch::Sender<bool>,
    /// The node controller's queue and Node copy (see `nodes`).
    node_work: Mutex<nodes::NodeWork>,
    /// Node groups with a drain task running.
    draining: Mutex<std::collections::BTreeSet<String>>,
}

impl Provider {
    pub fn new(config: CloudConfig, client: Client, options: ProviderOptions) -> Provider {
        let (finished, _) = watch::channel(0);
        let (leader, _) = watch::channel(options.leader_elect.is_none());
        Provider {
            inner: Arc::new(Inner {
                requests: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
                metrics: client.metrics().clone(),
                live: std::sync::RwLock::new(Live {
                    config: Arc::new(config),
                    client,
                    refused: None,
                }),
                options,
                state: Mutex::new(State::default()),
                reconcile_lock: tokio::sync::Mutex::new(()),
                finished,
                journal: tokio::sync::Mutex::new((0, None)),
                node_work: Mutex::new(nodes::NodeWork::default()),
                leader,
                journal_status: Mutex::new(store::JournalStatus {
                    map: MapVersion::Absent,
                    trouble: None,
                }),
                draining: Mutex::new(std::collections::BTreeSet::new()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Transitions never leave the state half-updated across a panic point that matters;
        // keep serving rather than poisoning every later call.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok` while this process may act (see [`Provider::is_leader`]).
    fn acting(&self) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(ProviderError::StandingBy)
        }
    }

    /// The config in force (a reload may swap it for the next caller).
    pub fn config(&self) -> Arc<CloudConfig> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config
            .clone()
    }

    /// The Kamatera client of the config in force.
    pub(crate) fn client(&self) -> Client {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .client
            .clone()
    }

    fn group(&self, id: &str) -> Result<GroupRef> {
        let config = self.config();
        let index = config
            .node_groups
            .iter()
            .position(|g| g.name == id)
            .ok_or_else(|| ProviderError::UnknownGroup {
                group: id.to_string(),
            })?;
        Ok(GroupRef { config, index })
    }

    fn provider_id(&self, name: &str) -> String {
        format!("{}{}", self.config().provider_id_prefix, name)
    }

    /// What ties a Node to server `name`: its providerID, or no providerID and the name.
    fn tie(&self, name: &str) -> crate::kube::Tie {
        crate::kube::Tie {
            server: name.to_string(),
            provider_id: self.provider_id(name),
        }
    }

    /// The server name a providerID refers to: strips the configured prefix, or the default
    /// `kamatera://`; a string with neither is taken as a bare server name (old providers).
    fn server_name<'a>(&self, provider_id: &'a str) -> &'a str {
        provider_id
            .strip_prefix(self.config().provider_id_prefix.as_str())
            .or_else(|| provider_id.strip_prefix(crate::config::DEFAULT_PROVIDER_ID_PREFIX))
            .unwrap_or(provider_id)
    }

    /// True once a reconcile has succeeded.
    pub fn ready(&self) -> bool {
        self.lock().reads.last_success.is_some()
    }

    /// `Ok` while the last successful reconcile is recent enough, with a note when creates are
    /// held because the journal cannot be written (reads and deletions go on: the provider
    /// stays in service); `Err` why not ready otherwise.
    pub fn readiness(&self) -> std::result::Result<Option<String>, String> {
        if let (false, Some(lock)) = (self.is_leader(), &self.inner.options.leader_elect) {
            return Err(format!(
                "standing by: {lock} is held by another replica (this one is {})",
                lock.identity
            ));
        }
        let st = self.lock();
        let max = self.inner.options.max_staleness;
        match st.reads.last_success {
            None => Err(format!(
                "Kamatera's state has not been read yet{}",
                st.reads
                    .last_error
                    .as_ref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
            Some(t) if t.elapsed() > max => Err(format!(
                "the last successful Kamatera read was {} s ago (limit {} s){}",
                t.elapsed().as_secs(),
                max.as_secs(),
                st.reads
                    .last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )),
            Some(_) => {
                drop(st);
                let notes = self.notes();
                Ok((!notes.is_empty()).then(|| notes.join("; ")))
            }
        }
    }

    /// What an operator should know while the provider serves: a refused config change, node
    /// groups removed from the config that still have servers, a journal that cannot be
    /// written. `/readyz` and `client status` show these.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.config_notes();
        if let Some(why) = self.journal_trouble() {
            notes.push(format!(
                "no create is sent until the journal can be written: {why}"
            ));
        }
        notes
    }

    /// The metrics this provider (and its Kamatera client) record into.
    pub fn metrics(&self) -> &crate::telemetry::Metrics {
        &self.inner.metrics
    }

    /// Changes each time a reconcile finishes.
    pub fn subscribe_reconciles(&self) -> watch::Receiver<u64> {
        self.inner.finished.subscribe()
    }

    /// Age of the last successful reconcile.
    pub fn staleness(&self) -> Option<Duration> {
        self.lock().reads.last_success.map(|t| t.elapsed())
    }
}
