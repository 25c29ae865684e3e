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

mod gauges;
mod guard;
mod hibernate;
mod journal;
mod leader;
mod nodes;
mod pricing;
mod state;
mod store;
mod template;
mod windows;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::config::{CloudConfig, NodeGroupConfig, OptionOverrides};
use crate::kamatera::{self, Client, CommandStatus, CreateServer, KamateraError};

pub use hibernate::HibernationStatus;
pub use state::{CreateStatus, ErrorClass, ErrorInfo, GroupHibernation, HibernationPhase, Phase};
pub use template::{GROUP_LABEL, MAX_PODS, TemplateNode};
pub use windows::{InForce, Manual};

pub use journal::{Restored, probe as probe_state_file};
use state::{Action, CommandKind, GroupTags, Instance, Limits, Observed, Pending, State};
use store::MapVersion;

/// Errors the autoscaler sees; the gRPC layer maps each to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("node group {} not found", crate::telemetry::quoted(.0))]
    UnknownGroup(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
}

/// Servers missing from a listing looked up by id per reconcile, at most.
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
    /// Consecutive listings a known server must be missing from before it is looked up by id
    /// (only a lookup that finds no such server, or a completed terminate, makes it gone).
    pub vanish_misses: u32,
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
            vanish_misses: 3,
            state_file: None,
            state_configmap: None,
            leader_elect: None,
            lease_retry: Duration::from_secs(2),
            kube: None,
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

struct Inner {
    config: CloudConfig,
    client: Client,
    options: ProviderOptions,
    state: Mutex<State>,
    /// One reconcile at a time.
    reconcile_lock: tokio::sync::Mutex<()>,
    /// Counts finished reconciles; `refresh` waits for it to move.
    finished: watch::Sender<u64>,
    requests: Arc<Semaphore>,
    /// Serialises journal writes; holds the state version and the text last written.
    journal: tokio::sync::Mutex<(u64, Option<String>)>,
    /// The ConfigMap journal's resourceVersion last read or written; set when it could not be
    /// read at startup (`Unread`), which holds back every write and create until it is.
    journal_map_version: Mutex<MapVersion>,
    /// True while this process may act: it holds the Lease, or there is no leader election.
    leader: watch::Sender<bool>,
    /// When the last reconcile finished (the background loop skips its turn after a recent one).
    last_pass: Mutex<Option<tokio::time::Instant>>,
    /// Work restored from the journal, started once the first listing verified it.
    deferred: Mutex<Vec<Action>>,
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
                config,
                client,
                options,
                state: Mutex::new(State::default()),
                reconcile_lock: tokio::sync::Mutex::new(()),
                finished,
                journal: tokio::sync::Mutex::new((0, None)),
                node_work: Mutex::new(nodes::NodeWork::default()),
                deferred: Mutex::new(Vec::new()),
                last_pass: Mutex::new(None),
                leader,
                journal_map_version: Mutex::new(MapVersion::Absent),
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
            Err(ProviderError::Unavailable(
                "this replica is standing by: another one holds the lease".into(),
            ))
        }
    }

    fn group(&self, id: &str) -> Result<&NodeGroupConfig> {
        self.inner
            .config
            .node_group(id)
            .ok_or_else(|| ProviderError::UnknownGroup(id.to_string()))
    }

    fn provider_id(&self, name: &str) -> String {
        format!("{}{}", self.inner.config.provider_id_prefix, name)
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
            .strip_prefix(self.inner.config.provider_id_prefix.as_str())
            .or_else(|| provider_id.strip_prefix(crate::config::DEFAULT_PROVIDER_ID_PREFIX))
            .unwrap_or(provider_id)
    }

    /// The node groups with the sizes in force now (schedules and hibernation applied).
    pub fn node_groups(&self) -> Vec<GroupInfo> {
        // One look at the manual controls for all groups; groups without windows or controls
        // answer their configured sizes without evaluating anything.
        let manual: std::collections::BTreeMap<String, Manual> = {
            let st = self.lock();
            st.hibernation
                .iter()
                .map(|(k, v)| (k.clone(), v.manual.clone()))
                .collect()
        };
        let now = self.inner.options.clock.now();
        self.inner
            .config
            .node_groups
            .iter()
            .map(|g| self.info_at(g, manual.get(&g.name), now))
            .collect()
    }

    /// The group's sizes at `now`; configured ones unless windows or manual controls exist.
    fn info_at(
        &self,
        g: &NodeGroupConfig,
        manual: Option<&Manual>,
        now: jiff::Timestamp,
    ) -> GroupInfo {
        let (min_size, max_size) =
            if g.schedules.is_empty() && g.hibernate.is_empty() && manual.is_none() {
                (g.min_size, g.max_size)
            } else {
                let f = windows::in_force(
                    g,
                    &self.inner.config.timezone,
                    now,
                    manual.unwrap_or(&Manual::default()),
                );
                (f.min_size, f.max_size)
            };
        GroupInfo {
            id: g.name.clone(),
            min_size,
            max_size,
        }
    }

    /// What the group's schedule and hibernation say now.
    pub fn in_force(&self, group: &str) -> Result<InForce> {
        Ok(self.in_force_for(self.group(group)?))
    }

    fn in_force_for(&self, g: &NodeGroupConfig) -> InForce {
        self.in_force_for_locked(&self.lock(), g)
    }

    fn group_info(&self, g: &NodeGroupConfig) -> GroupInfo {
        let manual = self
            .lock()
            .hibernation
            .get(&g.name)
            .map(|h| h.manual.clone());
        self.info_at(g, manual.as_ref(), self.inner.options.clock.now())
    }

    fn has_hibernation(&self, group: &str) -> bool {
        self.lock().hibernation.contains_key(group)
    }

    /// The group of a node, or `None` when it is not one of ours (the autoscaler then leaves it
    /// alone). Matches by providerID, then by node name. (A node without a providerID gets one
    /// from the node controller, with the template's labels.)
    pub fn node_group_for_node(&self, node: &NodeRef) -> Option<GroupInfo> {
        let group = {
            let st = self.lock();
            let inst = self.find_instance(&st, node)?;
            if inst.phase == Phase::Deleting && inst.terminated {
                return None;
            }
            self.inner.config.node_group(&inst.group)
        };
        group.map(|g| self.group_info(g))
    }

    /// Posts an Event on a Node, best effort (no Kubernetes access: nothing; failures: debug log).
    fn node_event(&self, node: &str, warning: bool, reason: &'static str, message: String) {
        let Some(kube) = self.inner.options.kube.clone() else {
            return;
        };
        let node = node.to_string();
        tokio::spawn(async move {
            if let Err(e) = kube.node_event(&node, warning, reason, &message).await {
                debug!(node = %node, reason, error = %e, "cannot post the event");
            }
        });
    }

    fn find_instance<'s>(&self, st: &'s State, node: &NodeRef) -> Option<&'s Instance> {
        let by_id = (!node.provider_id.is_empty())
            .then(|| st.instances.get(self.server_name(&node.provider_id)))
            .flatten();
        // A node whose providerID uses another scheme (or none yet) is matched by its name, which
        // equals the server name.
        by_id.or_else(|| {
            (!node.name.is_empty())
                .then(|| st.instances.get(&node.name))
                .flatten()
        })
    }

    pub fn target_size(&self, group: &str) -> Result<u32> {
        self.group(group)?;
        Ok(u32::try_from(self.lock().target_size(group)).unwrap_or(u32::MAX))
    }

    pub fn nodes(&self, group: &str) -> Result<Vec<InstanceView>> {
        self.group(group)?;
        let st = self.lock();
        Ok(st
            .group_instances(group)
            .map(|i| InstanceView {
                id: self.provider_id(&i.name),
                phase: i.phase,
                error: i.error.clone(),
            })
            .collect())
    }

    /// Adds `delta` Creating instances at once and starts their cloud calls: with
    /// `poweron-on-scale-up`, parked servers of the group are powered on first; the rest are
    /// created. Writes the intent to the journal before answering.
    pub async fn increase_size(&self, group: &str, delta: i32) -> Result<()> {
        let cfg = self.group(group)?;
        self.acting()?;
        if delta <= 0 {
            return Err(ProviderError::InvalidArgument(format!(
                "delta must be positive, have: {delta}"
            )));
        }
        let delta = u32::try_from(delta).unwrap_or(u32::MAX);
        let now = Instant::now();
        let actions = {
            let mut st = self.lock();
            // Evaluated under the same lock as the target size, so a hibernate request cannot
            // slip in between.
            let in_force = self.in_force_for_locked(&st, cfg);
            let current = u32::try_from(st.target_size(group)).unwrap_or(u32::MAX);
            let desired = current.saturating_add(delta);
            if desired > in_force.max_size {
                let why = if in_force.hibernate {
                    " (the node group is hibernating)"
                } else if in_force.max_size != cfg.max_size {
                    " (max-size of the schedule in force)"
                } else {
                    ""
                };
                return Err(ProviderError::FailedPrecondition(format!(
                    "size increase is too large: current {current}, desired {desired}, max {}{why}",
                    in_force.max_size
                )));
            }
            let mut actions = Vec::new();
            if cfg.poweron_on_scale_up {
                for p in st.reusable(group).into_iter().take(delta as usize) {
                    let mut inst = Instance::creating(p.name.clone(), group.to_string(), now);
                    inst.create = CreateStatus::Reused;
                    inst.server_id = Some(p.id.clone());
                    inst.power = Some(kamatera::Power::Off);
                    inst.seen = true;
                    inst.action_in_flight = true;
                    st.insert(p.name.clone(), inst);
                    actions.push(Action::PowerOn {
                        name: p.name,
                        server_id: p.id,
                    });
                }
            }
            let mut names = Vec::new();
            while names.len() + actions.len() < delta as usize {
                let name = kamatera::new_server_name(&cfg.server.name_prefix);
                if st.instances.contains_key(&name) {
                    continue;
                }
                st.insert(
                    name.clone(),
                    Instance::creating(name.clone(), group.to_string(), now),
                );
                names.push(name);
            }
            for name in names {
                actions.push(Action::Create {
                    name,
                    group: group.to_string(),
                });
            }
            actions
        };
        let powered_on: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::PowerOn { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let created: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        info!(group, delta, power_on = ?powered_on, create = ?created, "scale-up");
        // Spawned before the journal write so that a dropped call (deadline) still runs them.
        for a in actions {
            self.spawn(a);
        }
        self.persist_logged().await;
        Ok(())
    }

    /// Deletes the given nodes of the group; fails, changing nothing, if any is not the group's.
    /// With `poweroff-on-scale-down`, each server is decided here, once, to be parked (while the
    /// group's parked servers plus those on their way stay under the cap) or terminated; either
    /// way it is powered off first.
    pub async fn delete_nodes(&self, group: &str, nodes: &[NodeRef]) -> Result<()> {
        let cfg = self.group(group)?;
        self.acting()?;
        let now = Instant::now();
        let mut actions = Vec::new();
        {
            let mut st = self.lock();
            let mut names = Vec::with_capacity(nodes.len());
            for node in nodes {
                match self.find_instance(&st, node) {
                    Some(i) if i.group == group => names.push(i.name.clone()),
                    _ => {
                        return Err(ProviderError::InvalidArgument(format!(
                            "node {} (provider ID {}) does not belong to node group {group}",
                            crate::telemetry::quoted(&node.name),
                            crate::telemetry::quoted(&node.provider_id)
                        )));
                    }
                }
            }
            let cap = cfg.poweroff_on_scale_down_max_servers as usize;
            let mut parking = st.parked_or_parking(group);
            for name in names {
                let Some(inst) = st.instances.get_mut(&name) else {
                    continue;
                };
                if inst.phase == Phase::Deleting {
                    continue; // already going
                }
                inst.phase = Phase::Deleting;
                inst.since = now;
                // Only a server that exists can be parked; one still being bought is terminated
                // if it appears. A server whose power-on failed is not trusted with a second life.
                inst.park = cfg.poweroff_on_scale_down
                    && inst.server_id.is_some()
                    && inst.create != CreateStatus::Rejected
                    && !inst.power_on_failed
                    && (cap == 0 || parking < cap);
                if inst.park {
                    parking += 1;
                }
                let off = inst
                    .power
                    .as_ref()
                    .is_some_and(|p| *p != kamatera::Power::On);
                match (&inst.server_id, inst.create) {
                    // Never bought (request refused, or its command failed and the API removed
                    // what it began): forget it now.
                    (_, CreateStatus::Rejected) => {
                        st.remove(&name);
                    }
                    // Maybe bought, never seen: leaves the autoscaler's view (and the error
                    // gauge) now; its name stays watched, so a late server is terminated.
                    (None, CreateStatus::Uncertain) if inst.command.is_none() => {
                        st.watch_uncertain(&name, now);
                    }
                    // Listed off already and to be parked: the next reconcile parks it.
                    (Some(_), _) if inst.park && off => {}
                    (Some(server_id), _) if inst.command.is_none() && !inst.action_in_flight => {
                        inst.action_in_flight = true;
                        actions.push(if off {
                            Action::Terminate {
                                name: name.clone(),
                                server_id: server_id.clone(),
                            }
                        } else {
                            Action::PowerOff {
                                name: name.clone(),
                                server_id: server_id.clone(),
                            }
                        });
                    }
                    // A create or power-on still running, or a create whose outcome is unknown:
                    // the reconcile goes on from what the listing shows.
                    _ => {}
                }
            }
            st.version += 1;
        }
        info!(group, nodes = nodes.len(), "scale-down");
        for _ in &actions {
            self.metrics().delete("started");
        }
        for a in actions {
            self.spawn(a);
        }
        self.persist_logged().await;
        Ok(())
    }

    /// Lowers the target by cancelling capacity that has no server yet; never deletes a node.
    pub async fn decrease_target_size(&self, group: &str, delta: i32) -> Result<()> {
        self.group(group)?;
        self.acting()?;
        if delta >= 0 {
            return Err(ProviderError::InvalidArgument(format!(
                "delta must be negative, have: {delta}"
            )));
        }
        self.decrease_locked(group, delta)?;
        self.persist_logged().await;
        Ok(())
    }

    fn decrease_locked(&self, group: &str, delta: i32) -> Result<()> {
        let want = delta.unsigned_abs() as usize;
        let now = Instant::now();
        let mut st = self.lock();
        let mut candidates: Vec<(u8, Instant, String)> = st
            .group_instances(group)
            .filter(|i| i.phase == Phase::Creating && i.server_id.is_none())
            .map(|i| {
                let rank = match i.create {
                    CreateStatus::Rejected => 0,
                    CreateStatus::Queued => 1,
                    CreateStatus::Uncertain => 2,
                    _ => 3,
                };
                (rank, i.since, i.name.clone())
            })
            .collect();
        if candidates.len() < want {
            let target = st.target_size(group);
            return Err(ProviderError::FailedPrecondition(format!(
                "attempt to delete existing nodes: target size {target}, only {} not yet created, delta {delta}",
                candidates.len()
            )));
        }
        // Failed and unsent first, then the newest requests.
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        for (_, _, name) in candidates.into_iter().take(want) {
            let Some(inst) = st.instances.get_mut(&name) else {
                continue;
            };
            if inst.create == CreateStatus::Rejected {
                st.remove(&name);
            } else {
                inst.phase = Phase::Deleting;
                inst.since = now;
                st.watch_uncertain(&name, now);
            }
        }
        st.version += 1;
        info!(group, delta, "target size decreased");
        Ok(())
    }

    pub fn template_node(&self, group: &str) -> Result<TemplateNode> {
        Ok(template::build(
            self.group(group)?,
            self.inner.options.kube.is_some(),
        ))
    }

    /// The group's options in force now (a schedule window may override some).
    pub fn options(&self, group: &str) -> Result<OptionOverrides> {
        let g = self.group(group)?;
        if g.schedules.is_empty() {
            return Ok(g.options);
        }
        Ok(self.in_force_for(g).options)
    }

    fn in_force_for_locked(&self, st: &State, g: &NodeGroupConfig) -> InForce {
        let manual = st
            .hibernation
            .get(&g.name)
            .map(|h| h.manual.clone())
            .unwrap_or_default();
        windows::in_force(
            g,
            &self.inner.config.timezone,
            self.inner.options.clock.now(),
            &manual,
        )
    }

    pub fn gpu_label(&self) -> &str {
        &self.inner.config.gpu_label
    }

    /// True once a reconcile has succeeded.
    pub fn ready(&self) -> bool {
        self.lock().last_success.is_some()
    }

    /// `Ok` while the last successful reconcile is recent enough; else why not.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        if let (false, Some(lock)) = (self.is_leader(), &self.inner.options.leader_elect) {
            return Err(format!(
                "standing by: {lock} is held by another replica (this one is {})",
                lock.identity
            ));
        }
        let st = self.lock();
        let max = self.inner.options.max_staleness;
        match st.last_success {
            None => Err(format!(
                "Kamatera's state has not been read yet{}",
                st.last_error
                    .as_ref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )),
            Some(t) if t.elapsed() > max => Err(format!(
                "the last successful Kamatera read was {} s ago (limit {} s){}",
                t.elapsed().as_secs(),
                max.as_secs(),
                st.last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )),
            Some(_) => Ok(()),
        }
    }

    /// The metrics this provider (and its Kamatera client) record into.
    pub fn metrics(&self) -> &crate::telemetry::Metrics {
        self.inner.client.metrics()
    }

    /// Changes each time a reconcile finishes.
    pub fn subscribe_reconciles(&self) -> watch::Receiver<u64> {
        self.inner.finished.subscribe()
    }

    /// Age of the last successful reconcile.
    pub fn staleness(&self) -> Option<Duration> {
        self.lock().last_success.map(|t| t.elapsed())
    }

    /// Triggers a reconcile and waits for it up to `refresh_wait`. Errors only while the
    /// provider has never seen Kamatera's state (it cannot answer truthfully then).
    pub async fn refresh(&self) -> Result<()> {
        self.acting()?;
        let mut rx = self.inner.finished.subscribe();
        let seen = *rx.borrow_and_update();
        self.trigger();
        let waited = tokio::time::timeout(self.inner.options.refresh_wait, async {
            while *rx.borrow_and_update() == seen {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let st = self.lock();
        if st.last_success.is_none() {
            let why = st
                .last_error
                .clone()
                .unwrap_or_else(|| "the first listing is still in progress".into());
            return Err(ProviderError::Unavailable(format!(
                "no Kamatera state yet: {why}"
            )));
        }
        if waited.is_err() {
            debug!("refresh answered before the reconcile finished");
        }
        Ok(())
    }

    /// Starts a reconcile in the background unless one is already queued behind the running one.
    pub fn trigger(&self) {
        let p = self.clone();
        if let Ok(guard) = self.inner.reconcile_lock.try_lock() {
            drop(guard);
            tokio::spawn(async move {
                let _ = p.reconcile().await;
            });
        }
        // A reconcile is running: its result is what the waiter gets.
    }

    /// Reconciles on `reconcile_interval` when nothing else did within it (Refresh), and runs
    /// the hibernation controller every `hibernation_tick` once Kamatera was read, until the
    /// returned task is aborted.
    pub fn start_background(&self) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(p.inner.options.reconcile_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut hib = tokio::time::interval(p.inner.options.hibernation_tick);
            hib.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // Only when no Refresh reconciled within the interval: an autoscaler
                        // looping every 10 s already keeps the state fresh.
                        let recent = p
                            .inner
                            .last_pass
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .is_some_and(|t| t.elapsed() < p.inner.options.reconcile_interval);
                        if !recent && p.is_leader() {
                            let _ = p.reconcile().await;
                        }
                    }
                    _ = hib.tick() => {
                        // Drains need the instances: only after the first listing.
                        if p.ready() && p.is_leader() {
                            p.control_hibernation().await;
                        }
                    }
                }
            }
        })
    }

    /// One full pass: list, read new tags, poll pending commands, apply, start follow-ups.
    pub async fn reconcile(&self) -> std::result::Result<ReconcileReport, KamateraError> {
        let guard = self.inner.reconcile_lock.lock().await;
        let started = Instant::now();
        let result = self.reconcile_locked().await;
        {
            let mut st = self.lock();
            st.reconciles += 1;
            match &result {
                Ok(_) => {
                    st.last_success = Some(Instant::now());
                    st.last_error = None;
                }
                Err(e) => st.last_error = Some(e.safe_message().to_string()),
            }
        }
        *self
            .inner
            .last_pass
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
        // Unlock before announcing: a `refresh` that sees this announcement must be able to start
        // a new pass rather than find the lock still held and wait for nothing.
        drop(guard);
        self.inner.finished.send_modify(|n| *n += 1);
        let m = self.metrics();
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        m.reconciles
            .get_or_create(&crate::telemetry::ResultLabel {
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            })
            .inc();
        match &result {
            Ok(r) => debug!(
                listed = r.listed,
                tag_reads = r.tag_reads,
                commands = r.commands_polled,
                actions = r.actions,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "reconciled"
            ),
            Err(e) => warn!(
                error = e.detail(),
                stale_s = self.staleness().map(|d| d.as_secs()),
                "reconcile failed; serving the last known state"
            ),
        }
        result
    }

    async fn reconcile_locked(&self) -> std::result::Result<ReconcileReport, KamateraError> {
        if self.journal_unread() {
            // The journal may hold creates on the wire before a restart: read it before
            // anything could buy them again.
            self.restore().await;
        }
        let cfg = &self.inner.config;
        let client = &self.inner.client;
        let mut servers = client.list_servers(&cfg.filter_name_prefix).await?;
        // Known servers this listing lacks are presumed to exist until a lookup by id says
        // otherwise; a few are looked up per pass.
        let (presumed, gone) = self.verify_missing(&mut servers).await;

        // Tags: cached per server id; servers we created carry their group's tags already.
        let (mut known, unknown) = {
            let mut st = self.lock();
            let listed_ids: std::collections::HashSet<&str> = servers
                .iter()
                .map(|s| s.id.as_str())
                .chain(presumed.iter().map(|o| o.id.as_str()))
                .collect();
            st.tags.retain(|id, _| listed_ids.contains(id.as_str()));
            st.live_tags.retain(|id| listed_ids.contains(id.as_str()));
            let mut known = std::collections::HashMap::new();
            let mut unknown = Vec::new();
            for s in &servers {
                // A name from the journal is only a claim: its server's tags are read.
                let claimed = st.unverified.contains(&s.name);
                if let Some(t) = st.tags.get(&s.id).filter(|_| !claimed) {
                    known.insert(s.id.clone(), t.clone());
                } else if let Some(inst) = st.instances.get(&s.name)
                    && !claimed
                    && let Some(g) = cfg.node_group(&inst.group)
                {
                    // Named by this process: created with the group's tags.
                    known.insert(s.id.clone(), g.server.tags.clone());
                    st.live_tags.insert(s.id.clone());
                } else {
                    unknown.push(s.id.clone());
                }
            }
            // Cached tags (a warm restart takes them from the journal) are read again, one
            // server a minute once the provider is ready, so a tag changed by hand is noticed
            // without multiplying the steady API cost.
            if st.last_recheck.is_none() {
                // The clock starts with the first pass: none in the first minute.
                st.last_recheck = Some(Instant::now());
            } else if st
                .last_recheck
                .is_some_and(|t| t.elapsed() >= RECHECK_EVERY)
            {
                let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
                let again = st.recheck(&ids, &unknown, 1);
                if !again.is_empty() {
                    st.last_recheck = Some(Instant::now());
                }
                unknown.extend(again);
            }
            (known, unknown)
        };
        let tag_reads = unknown.len();
        let fetched: Vec<(String, std::result::Result<Vec<String>, KamateraError>)> =
            futures_util::stream::iter(unknown)
                .map(|id| async move {
                    let r = client.server_tags(&id).await;
                    (id, r)
                })
                .buffer_unordered(self.inner.options.max_concurrent_tag_reads.max(1))
                .collect()
                .await;
        let mut live = Vec::new();
        for (id, r) in fetched {
            match r {
                Ok(tags) => {
                    if known.get(&id).is_some_and(|had| *had != tags) {
                        info!(server_id = %id, tags = ?tags, "a server's tags changed");
                    }
                    live.push(id.clone());
                    known.insert(id, tags);
                }
                Err(e) => {
                    warn!(server_id = %id, error = e.detail(), "cannot read server tags; skipping it this time")
                }
            }
        }

        // The journal is a claim: what it restored must match this listing before it acts.
        let restored_settled = self.verify_restored(&servers, &known);

        let pending = self.lock().pending_commands();
        let (statuses, unanswered) = self.poll(&pending).await;

        let observed: Vec<Observed> = servers
            .iter()
            .map(|s| Observed {
                id: s.id.clone(),
                name: s.name.clone(),
                power: s.power.clone(),
                tags: known.get(&s.id).cloned(),
                presumed: false,
            })
            .chain(presumed)
            .collect();
        let groups: Vec<GroupTags<'_>> = cfg
            .node_groups
            .iter()
            .map(|g| GroupTags {
                name: &g.name,
                tags: &g.server.tags,
            })
            .collect();
        let actions = {
            let mut st = self.lock();
            for o in &observed {
                if let Some(t) = &o.tags {
                    st.tags.insert(o.id.clone(), t.clone());
                }
            }
            st.live_tags.extend(live);
            let actions = st.apply(
                &observed,
                &statuses,
                &unanswered,
                &groups,
                Limits {
                    uncertain_watch: self.inner.options.uncertain_create_watch,
                    unknown_command: self.inner.options.unknown_command_limit,
                    uncertain_grace: self.inner.options.uncertain_create_grace,
                },
                Instant::now(),
            );
            let o = std::mem::take(&mut st.outcomes);
            drop(st);
            let m = self.metrics();
            m.parks.inc_by(o.parked.len() as u64);
            m.power_ons
                .get_or_create(&result_label("failed"))
                .inc_by(o.power_ons_failed);
            for name in &o.parked {
                info!(server = %name, "parked: powered off and kept for reuse");
            }
            self.servers_gone(o.gone, o.parked);
            m.creates
                .get_or_create(&result_label("failed"))
                .inc_by(o.creates_failed);
            m.creates
                .get_or_create(&result_label("cancelled"))
                .inc_by(o.creates_cancelled);
            m.deletes
                .get_or_create(&result_label("completed"))
                .inc_by(o.deletes_completed);
            m.deletes
                .get_or_create(&result_label("failed"))
                .inc_by(o.deletes_failed);
            actions
        };
        if !gone.is_empty() {
            debug!(servers = ?gone, "confirmed gone by lookup");
        }
        let report = ReconcileReport {
            listed: servers.len(),
            tag_reads,
            commands_polled: pending.len(),
            actions: actions.len(),
        };
        for a in actions {
            self.spawn(a);
        }
        if restored_settled {
            // Work the journal restored, verified now, and checked by the guard against the
            // state this pass built.
            let deferred = std::mem::take(
                &mut *self
                    .inner
                    .deferred
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for a in deferred {
                self.spawn(a);
            }
        }
        // Nodes of gone servers that could not be deleted yet (still Ready, API errors).
        self.sweep_gone_nodes();
        self.persist_logged().await;
        Ok(report)
    }

    /// Sorts the known servers a listing lacks: up to [`LOOKUPS_PER_RECONCILE`] of those missing
    /// for `vanish_misses` listings are looked up by id. A server the API says does not exist is
    /// gone (returned, so the listing's absence now counts); one it still has is added to
    /// `servers` (the listing omitted it); the rest are returned as presumed: their last known
    /// state is kept. A listing that lacks at least half of the known servers (two or more) is
    /// suspect: counted, and warned about once until a listing is trusted again.
    async fn verify_missing(
        &self,
        servers: &mut Vec<kamatera::Server>,
    ) -> (Vec<Observed>, Vec<String>) {
        let (mut missing, known) = {
            let st = self.lock();
            let listed: std::collections::HashSet<&str> =
                servers.iter().map(|s| s.id.as_str()).collect();
            st.missing_known(&listed)
        };
        let suspect = missing.len() >= 2 && missing.len() * 2 >= known;
        {
            let mut st = self.lock();
            if suspect {
                self.metrics().suspect_listings.inc();
                if !st.suspect_listing {
                    warn!(
                        missing = missing.len(),
                        known,
                        "the Kamatera listing lacks most known servers; keeping their last known state until lookups by id confirm they are gone"
                    );
                }
            } else if st.suspect_listing {
                info!("the Kamatera listing is complete again");
            }
            st.suspect_listing = suspect;
        }
        let due = self.inner.options.vanish_misses.max(1);
        missing.sort_by_key(|m| std::cmp::Reverse(m.misses));
        let to_look_up: Vec<String> = missing
            .iter()
            .filter(|m| m.misses >= due)
            .take(LOOKUPS_PER_RECONCILE)
            .map(|m| m.observed.id.clone())
            .collect();
        let client = &self.inner.client;
        let answers: Vec<(
            String,
            std::result::Result<Option<kamatera::Server>, KamateraError>,
        )> = futures_util::stream::iter(to_look_up)
            .map(|id| async move {
                let r = client.server_info(&id).await;
                (id, r)
            })
            .buffer_unordered(LOOKUPS_PER_RECONCILE)
            .collect()
            .await;
        let mut gone = Vec::new();
        for (id, answer) in answers {
            match answer {
                Ok(None) => {
                    info!(server_id = %id, "a server missing from the listing does not exist any more");
                    gone.push(id);
                }
                Ok(Some(server)) => {
                    debug!(server = %server.name, server_id = %id, "the listing omitted a server that exists");
                    servers.push(server);
                }
                Err(e) => {
                    debug!(server_id = %id, error = e.detail(), "cannot look up a server missing from the listing; presuming it exists")
                }
            }
        }
        let presumed = missing
            .into_iter()
            .map(|m| m.observed)
            .filter(|o| !gone.contains(&o.id) && !servers.iter().any(|s| s.id == o.id))
            .collect();
        (presumed, gone)
    }

    /// Polls commands: one batched request; if it fails, each id alone (bounded), so one id the
    /// API rejects cannot block the others. Returns the statuses and the ids the API did not
    /// report while it answered (only then are they "unanswered").
    async fn poll(&self, pending: &[String]) -> (Vec<CommandStatus>, Vec<String>) {
        const SINGLE_POLLS: usize = 20;
        if pending.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let client = &self.inner.client;
        let unreported = |statuses: &[CommandStatus]| -> Vec<String> {
            pending
                .iter()
                .filter(|id| !statuses.iter().any(|s| &s.id == *id))
                .cloned()
                .collect()
        };
        match client.command_status(pending).await {
            Ok(statuses) => {
                let missing = unreported(&statuses);
                (statuses, missing)
            }
            Err(e) if pending.len() == 1 => {
                warn!(
                    error = e.detail(),
                    "cannot poll the command queue; trying again next time"
                );
                (Vec::new(), Vec::new())
            }
            Err(e) => {
                warn!(
                    error = e.detail(),
                    "batched queue poll failed; polling commands one by one"
                );
                // A bounded number, concurrently: a few ids the API rejects cannot stall the
                // pass (and with it readiness) one timeout after another.
                let answers: Vec<(
                    String,
                    std::result::Result<Vec<CommandStatus>, KamateraError>,
                )> = futures_util::stream::iter(pending.iter().take(SINGLE_POLLS).cloned())
                    .map(|id| async move {
                        let r = client.command_status(std::slice::from_ref(&id)).await;
                        (id, r)
                    })
                    .buffer_unordered(self.inner.options.max_concurrent_requests.max(1))
                    .collect()
                    .await;
                let mut statuses = Vec::new();
                let mut failed = Vec::new();
                for (id, r) in answers {
                    match r {
                        Ok(s) => statuses.extend(s),
                        Err(_) => failed.push(id),
                    }
                }
                if statuses.is_empty() {
                    // Nothing answered: the API is down, not the ids unknown.
                    (statuses, Vec::new())
                } else {
                    (statuses, failed)
                }
            }
        }
    }

    /// Runs one cloud call as a task, under the request limit, and records its outcome.
    fn spawn(&self, action: Action) {
        let p = self.clone();
        tokio::spawn(async move {
            let _permit = p.inner.requests.clone().acquire_owned().await;
            p.run(action).await;
        });
    }

    async fn run(&self, action: Action) {
        let client = &self.inner.client;
        if let Action::PowerOn { server_id, .. }
        | Action::PowerOff { server_id, .. }
        | Action::Terminate { server_id, .. } = &action
        {
            self.read_tags_before_mutation(server_id).await;
        }
        let admitted = {
            let mut st = self.lock();
            if let Action::Create { name, .. } = &action {
                match st.instances.get(name) {
                    // Cancelled before its request went out: nothing to send.
                    Some(i) if i.phase == Phase::Deleting => {
                        st.remove(name);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
            // Every mutation passes the guard, under the lock that marks a create sent, so
            // the max-size count includes the creates admitted before it.
            let admitted = self.admit(&mut st, &action);
            if let (true, Action::Create { name, .. }) = (admitted, &action)
                && let Some(i) = st.instances.get_mut(name)
            {
                i.create = CreateStatus::Sent;
                st.version += 1;
            }
            admitted
        };
        if !admitted {
            self.persist_logged().await;
            return;
        }
        match action {
            Action::Create { name, group } => {
                let Ok(cfg) = self.group(&group) else { return };
                // Write-ahead: a crash from here on leaves "sent" in the journal, so the restarted
                // provider watches for the server instead of buying another. A create whose
                // journal entry could not be stored is not sent: nothing is bought.
                if let Err(e) = self.persist().await {
                    warn!(server = %name, error = %e, "not sending a create the journal could not record");
                    self.metrics()
                        .refused_mutation("create", "journal_unavailable");
                    let mut st = self.lock();
                    if let Some(inst) = st.instances.get_mut(&name) {
                        inst.create = CreateStatus::Rejected;
                        inst.error = Some(ErrorInfo {
                            class: ErrorClass::Other,
                            code: "JOURNAL_UNAVAILABLE",
                            message: format!("create of {name} not sent: {e}"),
                        });
                        st.version += 1;
                    }
                    return;
                }
                let result = client
                    .create_server(CreateServer {
                        name: &name,
                        server: &cfg.server,
                    })
                    .await;
                {
                    let mut st = self.lock();
                    let Some(inst) = st.instances.get_mut(&name) else {
                        return;
                    };
                    match result {
                        Ok(cmd) => {
                            info!(server = %name, command = %cmd, "create accepted");
                            inst.create = CreateStatus::Accepted;
                            inst.command = Some(Pending {
                                id: cmd,
                                kind: CommandKind::Create,
                                since: Instant::now(),
                                unknown_since: None,
                            });
                            self.metrics().create("accepted");
                        }
                        Err(e) => {
                            warn!(server = %name, error = e.detail(), "create failed");
                            if e.may_have_been_processed() {
                                // Maybe bought: wait for the server under this name (adopted if
                                // it appears), report an error only after the grace period.
                                inst.create = CreateStatus::Uncertain;
                                inst.since = Instant::now();
                                self.metrics().create("uncertain");
                            } else {
                                inst.create = CreateStatus::Rejected;
                                self.metrics().create("rejected");
                                inst.error = Some(ErrorInfo {
                                    class: if e.is_quota() {
                                        ErrorClass::OutOfResources
                                    } else {
                                        ErrorClass::Other
                                    },
                                    code: if e.is_quota() {
                                        "QUOTA_EXCEEDED"
                                    } else {
                                        "CREATE_REJECTED"
                                    },
                                    message: e.safe_message().to_string(),
                                });
                            }
                        }
                    }
                    st.version += 1;
                }
                self.persist_logged().await;
            }
            Action::PowerOn { name, server_id } => {
                let result = client.power_on(&server_id).await;
                self.after_power_on(&name, result);
                self.persist_logged().await;
            }
            Action::PowerOff { name, server_id } => {
                let result = client.power_off(&server_id).await;
                self.after_delete_step(&name, CommandKind::PowerOff, result);
                self.persist_logged().await;
            }
            Action::Terminate { name, server_id } => {
                let result = client.terminate(&server_id).await;
                self.after_delete_step(&name, CommandKind::Terminate, result);
                self.persist_logged().await;
            }
        }
    }

    /// The guard decides on tags this process read from the API: tags it only has from the
    /// journal (a warm restart) are read now, once per server.
    async fn read_tags_before_mutation(&self, server_id: &str) {
        if self.lock().live_tags.contains(server_id) {
            return;
        }
        match self.inner.client.server_tags(server_id).await {
            Ok(tags) => {
                let mut st = self.lock();
                st.tags.insert(server_id.to_string(), tags);
                st.live_tags.insert(server_id.to_string());
            }
            Err(e) => {
                debug!(
                    server_id,
                    error = e.detail(),
                    "cannot read the tags of a server to mutate; the guard decides on what it has"
                )
            }
        }
    }

    fn after_power_on(&self, name: &str, result: std::result::Result<String, KamateraError>) {
        let mut st = self.lock();
        st.version += 1;
        let Some(inst) = st.instances.get_mut(name) else {
            return;
        };
        inst.action_in_flight = false;
        inst.since = Instant::now();
        match result {
            Ok(cmd) => {
                info!(server = %name, command = %cmd, "power-on of parked server accepted");
                self.metrics().power_on("accepted");
                inst.command = Some(Pending {
                    id: cmd,
                    kind: CommandKind::PowerOn,
                    since: Instant::now(),
                    unknown_since: None,
                });
            }
            Err(e) if e.may_have_been_processed() => {
                // The listing tells: running once on, POWER_ON_FAILED after the grace.
                warn!(server = %name, error = e.detail(), "power-on outcome unknown; watching the server");
                self.metrics().power_on("uncertain");
            }
            Err(e) => {
                warn!(server = %name, error = e.detail(), "power-on refused");
                self.metrics().power_on("rejected");
                inst.error = Some(ErrorInfo {
                    class: if e.is_quota() {
                        ErrorClass::OutOfResources
                    } else {
                        ErrorClass::Other
                    },
                    code: "POWER_ON_REJECTED",
                    message: e.safe_message().to_string(),
                });
            }
        }
    }

    fn after_delete_step(
        &self,
        name: &str,
        kind: CommandKind,
        result: std::result::Result<String, KamateraError>,
    ) {
        let mut st = self.lock();
        st.version += 1;
        let Some(inst) = st.instances.get_mut(name) else {
            return;
        };
        inst.action_in_flight = false;
        match result {
            Ok(cmd) => {
                info!(server = %name, command = %cmd, step = ?kind, "delete step started");
                inst.command = Some(Pending {
                    id: cmd,
                    kind,
                    since: Instant::now(),
                    unknown_since: None,
                });
            }
            Err(e) if e.class == kamatera::ErrorClass::NotFound => {
                // Already gone.
                inst.terminated = true;
                inst.server_id = None;
                self.metrics().delete("completed");
            }
            Err(e) => {
                // The next reconcile tries again (Deleting with no command).
                warn!(server = %name, step = ?kind, error = e.detail(), "delete step failed");
                self.metrics().delete("failed");
                inst.error = Some(ErrorInfo {
                    class: ErrorClass::Other,
                    code: "DELETE_FAILED",
                    message: e.safe_message().to_string(),
                });
            }
        }
    }
}

fn result_label(r: &str) -> crate::telemetry::ResultLabel {
    crate::telemetry::ResultLabel { result: r.into() }
}
