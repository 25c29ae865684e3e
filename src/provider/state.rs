//! The provider's memory: every instance it knows, and the pure transitions that a Kamatera
//! snapshot (listing + command statuses) causes. No I/O here: transitions return the cloud
//! actions to start, and the caller runs them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::kamatera::{CommandStatus, Power};

mod instance;
mod steps;

pub use instance::{
    CommandKind, CreateStatus, ErrorInfo, Instance, InstanceErrorClass, Leaving, Life, Pending,
    Phase,
};
use steps::{GONE, PARKED, STANDBY_FAILED, STANDBY_READY, command_result, step, unknown_command};

/// Why a server's Node is to be deleted by the node controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Terminated by the provider.
    Terminated,
    /// Powered off and kept (warm pool or hibernation).
    Parked,
    /// Not known to this process (a Node left "being deleted" by an earlier run): missing from
    /// the listings over the vanish window, and its exact name matches no server.
    Vanished,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Terminated => "terminated",
            Gone::Parked => "parked",
            Gone::Vanished => "vanished",
        }
    }

    pub fn parse(s: &str) -> Option<Gone> {
        match s {
            "terminated" => Some(Gone::Terminated),
            "parked" => Some(Gone::Parked),
            "vanished" => Some(Gone::Vanished),
            _ => None,
        }
    }
}

/// The most gone servers whose Nodes are queued at once (older entries are dropped first).
pub const NODE_QUEUE_MAX: usize = 10_000;

/// A cloud call to start after the state lock is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create { name: String, group: String },
    PowerOn { name: String, server_id: String },
    PowerOff { name: String, server_id: String },
    Terminate { name: String, server_id: String },
}

/// A known server a listing lacks (see [`State::missing_known`]).
#[derive(Debug, Clone)]
pub struct Missing {
    /// Its last known state, marked presumed.
    pub observed: Observed,
    /// How long it has been missing.
    pub absence: Absence,
    /// Its absence is expected: this provider's terminate of it was accepted (the listing may
    /// drop it before the queue reports the command complete). It never makes a listing suspect.
    pub expected: bool,
}

/// How long a known server has been missing from the listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Absence {
    /// Listings in a row without it, this one included.
    pub misses: u32,
    /// When the first of them was read.
    pub since: Instant,
}

/// What makes a known server that the listings lack gone (ARCHITECTURE.md, invariant 6): it
/// must be missing from `misses` listings in a row spanning at least `after` before it is looked
/// up at all, and only a lookup that gets a sign of absence ([`crate::kamatera::Lookup`]) then
/// makes it gone. A completed terminate of the provider's own is the other proof, and needs no
/// lookup. Until then the server is presumed: it counts toward the target and max-size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VanishRule {
    pub misses: u32,
    pub after: Duration,
}

impl Absence {
    /// One more listing without each of `missing` (server ids or names): each one's count goes
    /// up (starting now), and every other key is forgotten (listed again, or no longer asked
    /// about). Returns the absences of `missing`, in its order. The one place absences are
    /// counted, for known servers and for the servers of stale Nodes alike.
    pub fn count(
        absences: &mut HashMap<String, Absence>,
        missing: &[&str],
        now: Instant,
    ) -> Vec<Absence> {
        let set: std::collections::HashSet<&str> = missing.iter().copied().collect();
        absences.retain(|k, _| set.contains(k.as_str()));
        missing
            .iter()
            .map(|k| {
                let a = absences.entry((*k).to_string()).or_insert(Absence {
                    misses: 0,
                    since: now,
                });
                a.misses += 1;
                *a
            })
            .collect()
    }
}

impl VanishRule {
    /// Whether a missing server is due its lookup.
    pub fn due(&self, a: &Absence, now: Instant) -> bool {
        a.misses >= self.misses.max(1) && now.saturating_duration_since(a.since) >= self.after
    }
}

/// A listed server with its tags, for one reconcile.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub power: Power,
    /// `None` when the tags could not be read this time.
    pub tags: Option<Vec<String>>,
    /// Not in this listing, but not confirmed gone either: the last known state, kept. (A
    /// listing that omits a server is no proof; only a lookup by id or a completed terminate is.)
    pub presumed: bool,
}

/// Where a node group's hibernation stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HibernationPhase {
    #[default]
    Awake,
    /// Cordoning and evicting, then removing the servers.
    Draining {
        since: jiff::Timestamp,
    },
    Hibernating {
        since: jiff::Timestamp,
    },
}

/// A node group's hibernation: manual controls and the phase reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupHibernation {
    pub manual: super::in_force::Manual,
    pub phase: HibernationPhase,
    /// Nodes that could not be drained in time (without `force`): kept running, uncordoned.
    pub kept: Vec<String>,
}

/// Everything the provider knows, keyed by server name (the providerID is prefix + name).
///
/// What the journal records (instances, tags, hibernation, watched names) is private: it
/// changes only through the methods below, and each of them bumps [`State::version`] when it
/// changes something, so the journal is written exactly when there is something new to write.
/// Instances go in and out only through [`State::insert`] and [`State::remove`], which keep the
/// per-group index that makes every read a lookup, not a scan.
#[derive(Debug, Default)]
pub struct State {
    instances: BTreeMap<String, Instance>,
    by_group: HashMap<String, std::collections::BTreeSet<String>>,
    /// Tags by server id, read once per server (or restored from the journal).
    tags: HashMap<String, Vec<String>>,
    /// Ids whose tags this process read from the API (or set when creating the server):
    /// the only tags the mutation guard trusts.
    live_tags: std::collections::HashSet<String>,
    /// Where the round-robin re-reading of cached tags stands.
    recheck_cursor: usize,
    /// Per group: servers with the group's tags that are powered off and not tracked: the warm
    /// pool (parked on scale-down, by this or an earlier provider), or servers left behind.
    /// Rebuilt from every listing; sorted by name.
    parked: HashMap<String, Vec<ParkedServer>>,
    /// Standby servers: bought for a group's pool powered off and never booted (name → node
    /// group). Journaled; an entry counts only while the group's pool holds a server of that
    /// name with exactly the group's tags, and is dropped once the server is neither in the
    /// pool nor being powered on from it.
    fresh: BTreeMap<String, String>,
    /// Per node group with any hibernation state; absent = awake, no manual controls.
    hibernation: BTreeMap<String, GroupHibernation>,
    /// The node controller's queue: servers whose Node is to be deleted (name → why, since
    /// when). Journaled, so a restart does not leave a terminated server's Node behind.
    node_queue: BTreeMap<String, (Gone, Instant)>,
    /// Bumped on every change the journal must capture.
    version: u64,
    /// Instances restored from the journal and not yet confirmed by a listing (see
    /// `journal::verify`); their servers' tags are read, never assumed.
    unverified: std::collections::BTreeSet<String>,
    /// Names of deleted creates whose outcome is unknown: no longer the autoscaler's (not in
    /// NodeGroupNodes, not in error), but a server that appears under one is terminated. Name →
    /// node group, since when.
    watched: BTreeMap<String, (String, Instant)>,
    /// The reconcile loop's own bookkeeping; not journaled.
    pub reads: Reads,
}

/// How the reconcile loop has been doing: nothing here is journaled.
#[derive(Debug, Default)]
pub struct Reads {
    pub last_success: Option<Instant>,
    pub last_error: Option<String>,
    pub reconciles: u64,
    /// When a cached tag was last read again.
    pub last_recheck: Option<Instant>,
    /// Command outcomes seen by `apply`, for metrics; the caller takes and resets them.
    pub outcomes: Outcomes,
    /// The last listing lacked most known servers (warned once per episode).
    pub suspect_listing: bool,
    /// Known servers missing from the listings, by server id (see [`State::missing_known`]).
    pub absences: HashMap<String, Absence>,
    /// When the last reconcile finished (the background loop skips its turn after a recent one).
    pub last_pass: Option<tokio::time::Instant>,
    /// Work restored from the journal, started once the first listing verified it.
    pub deferred: Vec<Action>,
    /// Names in the last listing (with the name filter): a server still listed is not gone,
    /// whatever a queue entry says.
    pub listed_names: std::collections::HashSet<String>,
    /// When a create for a group's standby pool last failed: the pool buys nothing more for
    /// `ProviderOptions::standby_retry` after it (a quota is not hammered).
    pub standby_failed_at: HashMap<String, Instant>,
    /// Nodes left "being deleted" whose server this process does not know, by server name:
    /// how long the listings have lacked the server (see `Provider::stale_nodes`).
    pub stale_nodes: HashMap<String, Absence>,
}

/// Time limits of the state machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a name whose create outcome is unknown is watched.
    pub uncertain_watch: Duration,
    /// How long a command may go unreported by the queue before it is given up.
    pub unknown_command: Duration,
    /// How long a create whose outcome is unknown may wait for its server before it reports
    /// an error (so the autoscaler backs off and cleans up).
    pub uncertain_grace: Duration,
    /// How long a create may wait for deleted servers to leave before it reports
    /// `MAX_SIZE_REACHED`.
    pub room_wait: Duration,
}

/// Error info of a create whose outcome is unknown.
pub fn uncertain_error(why: &str) -> ErrorInfo {
    ErrorInfo::other("CREATE_UNCERTAIN", why.to_string())
}

/// A powered-off server with a group's tags that the provider does not track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedServer {
    pub id: String,
    pub name: String,
    /// Its tag set equals the group's exactly: the only servers power-on scale-up reuses (a
    /// server someone tagged further is left alone).
    pub exact: bool,
    /// A standby server: bought for the pool by this provider (journaled), never booted.
    /// Otherwise parked: it has run (and joined) before.
    pub standby: bool,
}

/// A group's pool of powered-off servers as `client status` and the gauges show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Standby servers ready (powered off, never booted, exact tags).
    pub standby: usize,
    /// Creates for the pool under way.
    pub creating: usize,
    /// Parked servers (have run before), exact tags or not.
    pub parked: usize,
}

/// What the standby controller does for one group this pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyPlan {
    /// Servers to buy for the pool.
    pub create: usize,
    /// Standby servers beyond what is wanted, to terminate.
    pub trim: Vec<ParkedServer>,
}

/// The standby pool a group wants now, and what limits it (see [`State::standby_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyWanted {
    /// Powered-off servers to keep ready (parked ones count).
    pub servers: usize,
    /// The group's max-size in force.
    pub max: usize,
    /// Servers beyond `servers` are kept off rather than terminated (hibernating in
    /// power-off mode).
    pub keep_excess: bool,
    /// Buying is allowed this pass (no recent failure of a create for the pool).
    pub may_buy: bool,
}

/// Command outcomes since they were last taken.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcomes {
    pub creates_failed: u64,
    pub creates_cancelled: u64,
    pub deletes_completed: u64,
    pub deletes_failed: u64,
    pub power_ons_failed: u64,
    /// Servers parked (powered off, kept) by this pass: their Nodes are deleted.
    pub parked: Vec<String>,
    /// Servers this pass forgot because they are gone for certain (the provider terminated them,
    /// or a lookup gave a sign of absence): their Nodes are deleted.
    pub gone: Vec<String>,
    /// How many of `gone` left by the provider's own completed terminate.
    pub gone_terminated: u64,
    /// Scale-ups that completed this pass: from the IncreaseSize to Running.
    pub scaled_up: Vec<Duration>,
    /// Creates for the standby pool whose servers are now in the pool (names).
    pub standby_ready: Vec<String>,
    /// Groups whose create for the standby pool failed this pass (one entry per create).
    pub standby_failed: Vec<String>,
}

/// What one node group needs for membership decisions.
pub struct GroupTags<'a> {
    pub name: &'a str,
    pub tags: &'a [String],
}

impl State {
    /// Changes each time something the journal records changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.instances.contains_key(name)
    }

    /// Every instance, by name.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    /// Changes one instance (not its name or group); bumps the version. `None` when there is
    /// no such instance.
    pub fn edit<R>(&mut self, name: &str, f: impl FnOnce(&mut Instance) -> R) -> Option<R> {
        let inst = self.instances.get_mut(name)?;
        self.version += 1;
        Some(f(inst))
    }

    /// The cached tags of a server id.
    pub fn tags(&self, server_id: &str) -> Option<&Vec<String>> {
        self.tags.get(server_id)
    }

    /// Every cached tag list, by server id.
    pub fn all_tags(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.tags.iter()
    }

    /// Whether this process read the server's tags itself (the only tags the guard trusts).
    pub fn has_live_tags(&self, server_id: &str) -> bool {
        self.live_tags.contains(server_id)
    }

    /// Caches a server's tags; `live` when this process read them from the API. Bumps the
    /// version when they differ from the cached ones.
    pub fn record_tags(&mut self, server_id: &str, tags: Vec<String>, live: bool) {
        if live {
            self.live_tags.insert(server_id.to_string());
        }
        if self.tags.get(server_id) != Some(&tags) {
            self.tags.insert(server_id.to_string(), tags);
            self.version += 1;
        }
    }

    /// Marks cached tags as read by this process.
    pub fn mark_live(&mut self, server_ids: impl IntoIterator<Item = String>) {
        self.live_tags.extend(server_ids);
    }

    /// Forgets the tags of servers `keep` does not accept (no longer listed).
    pub fn retain_tags(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.tags.len();
        self.tags.retain(|id, _| keep(id));
        self.live_tags.retain(|id| keep(id));
        if self.tags.len() != before {
            self.version += 1;
        }
    }

    /// The group's parked servers (the warm pool), sorted by name.
    pub fn parked(&self, group: &str) -> &[ParkedServer] {
        self.parked.get(group).map_or(&[], Vec::as_slice)
    }

    /// Every group's parked servers.
    pub fn all_parked(&self) -> impl Iterator<Item = &ParkedServer> {
        self.parked.values().flatten()
    }

    pub fn hibernation(&self, group: &str) -> Option<&GroupHibernation> {
        self.hibernation.get(group)
    }

    /// Groups with any hibernation state.
    pub fn hibernations(&self) -> impl Iterator<Item = (&String, &GroupHibernation)> {
        self.hibernation.iter()
    }

    /// Changes a group's hibernation state (created awake when absent); bumps the version.
    pub fn edit_hibernation<R>(
        &mut self,
        group: &str,
        f: impl FnOnce(&mut GroupHibernation) -> R,
    ) -> R {
        self.version += 1;
        f(self.hibernation.entry(group.to_string()).or_default())
    }

    /// Drops a group's hibernation state (awake, no manual controls); bumps the version.
    pub fn forget_hibernation(&mut self, group: &str) {
        if self.hibernation.remove(group).is_some() {
            self.version += 1;
        }
    }

    /// Queues a server's Node for deletion (replacing an older reason); drops the oldest entries
    /// beyond [`NODE_QUEUE_MAX`]. Bumps the version.
    pub fn queue_node_deletion(&mut self, server: String, why: Gone, now: Instant) {
        self.node_queue.insert(server, (why, now));
        while self.node_queue.len() > NODE_QUEUE_MAX {
            let oldest = self
                .node_queue
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                self.node_queue.remove(&n);
            }
        }
        self.version += 1;
    }

    /// The Node of this server needs no more work. Bumps the version when it was queued.
    pub fn forget_node_deletion(&mut self, server: &str) {
        if self.node_queue.remove(server).is_some() {
            self.version += 1;
        }
    }

    /// Drops queued entries older than `window`; returns the rest, oldest first.
    pub fn node_queue_within(&mut self, window: Duration) -> Vec<(String, Gone)> {
        let before = self.node_queue.len();
        self.node_queue
            .retain(|_, (_, since)| since.elapsed() < window);
        if self.node_queue.len() != before {
            self.version += 1;
        }
        let mut entries: Vec<(&String, &(Gone, Instant))> = self.node_queue.iter().collect();
        entries.sort_by_key(|(_, (_, since))| *since);
        entries
            .into_iter()
            .map(|(n, (g, _))| (n.clone(), *g))
            .collect()
    }

    /// Whether this server's Node is queued.
    pub fn node_queued(&self, server: &str) -> bool {
        self.node_queue.contains_key(server)
    }

    /// The queue, for the journal.
    pub fn node_queue(&self) -> impl Iterator<Item = (&String, Gone)> {
        self.node_queue.iter().map(|(n, (g, _))| (n, *g))
    }

    /// How many deleted creates' names are watched.
    pub fn watched_count(&self) -> usize {
        self.watched.len()
    }

    /// Watched names with their group (restored or in flight): for the journal.
    pub fn watched(&self) -> impl Iterator<Item = (&String, &String)> {
        self.watched.iter().map(|(name, (group, _))| (name, group))
    }

    /// Restored from the journal and not confirmed by a listing yet.
    pub fn is_unverified(&self, name: &str) -> bool {
        self.unverified.contains(name)
    }

    pub fn unverified(&self) -> Vec<String> {
        self.unverified.iter().cloned().collect()
    }

    pub fn all_verified(&self) -> bool {
        self.unverified.is_empty()
    }

    /// Marks a restored instance as not yet confirmed by a listing.
    pub fn mark_unverified(&mut self, name: &str) {
        self.unverified.insert(name.to_string());
    }

    /// A restored instance is decided (confirmed or dropped).
    pub fn mark_verified(&mut self, name: &str) {
        self.unverified.remove(name);
    }

    /// Adds an instance (replacing one of the same name). Bumps the journal version.
    pub fn insert(&mut self, name: String, inst: Instance) {
        self.version += 1;
        if let Some(old) = self.remove(&name) {
            tracing::debug!(server = %name, group = %old.group, "instance replaced");
        }
        self.by_group
            .entry(inst.group.clone())
            .or_default()
            .insert(name.clone());
        self.instances.insert(name, inst);
    }

    /// Forgets an instance. Bumps the journal version.
    pub fn remove(&mut self, name: &str) -> Option<Instance> {
        let inst = self.instances.remove(name)?;
        self.version += 1;
        if let Some(set) = self.by_group.get_mut(&inst.group) {
            set.remove(name);
        }
        Some(inst)
    }

    /// The autoscaler's instances of the group (the standby pool's are left out).
    pub fn group_instances<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        self.group_all(group).filter(|i| !i.standby)
    }

    /// Every instance of the group, the standby pool's included: what exists or may exist.
    pub fn group_all<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.by_group
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(|name| self.instances.get(name))
    }

    pub fn target_size(&self, group: &str) -> usize {
        self.group_instances(group)
            .filter(|i| i.in_target())
            .count()
    }

    /// Parked servers of the group (standby ones are not) plus the scale-downs already decided
    /// to park: what the `poweroff-on-scale-down-max-servers` cap counts.
    pub fn parked_or_parking(&self, group: &str) -> usize {
        self.parked(group).iter().filter(|p| !p.standby).count()
            + self.group_instances(group).filter(|i| i.parking()).count()
    }

    /// Up to `n` listed ids (`listed`, in listing order) whose cached tags are to be read again:
    /// first those this process never read itself (restored from the journal), then the rest
    /// in turn. `skip` are read anyway.
    pub fn recheck(&mut self, listed: &[String], skip: &[String], n: usize) -> Vec<String> {
        let cached = |id: &String| self.tags.contains_key(id) && !skip.contains(id);
        let mut out: Vec<String> = listed
            .iter()
            .filter(|id| cached(id) && !self.live_tags.contains(*id))
            .take(n)
            .cloned()
            .collect();
        let mut tries = listed.len();
        while out.len() < n && tries > 0 {
            tries -= 1;
            let id = &listed[self.recheck_cursor % listed.len()];
            self.recheck_cursor = self.recheck_cursor.wrapping_add(1);
            if cached(id) && !out.contains(id) {
                out.push(id.clone());
            }
        }
        out
    }

    /// Moves a deleted instance whose create outcome is unknown and whose server was never seen
    /// from the instances to the watched names, at once. True when it did.
    pub fn watch_uncertain(&mut self, name: &str, now: Instant) -> bool {
        let qualifies = self.instances.get(name).is_some_and(|i| {
            i.phase() == Phase::Deleting
                && i.create == CreateStatus::Uncertain
                && !i.seen
                && i.command.is_none()
        });
        if !qualifies {
            return false;
        }
        if let Some(inst) = self.remove(name) {
            self.watched.insert(name.to_string(), (inst.group, now));
        }
        true
    }

    /// Servers of the group that exist or may exist, for the max-size cap: tracked servers
    /// (listed or presumed) not terminated by the provider, the group's parked pool, and creates
    /// on the wire or accepted whose server is not listed yet; `except` (the create being
    /// decided) is not counted.
    pub fn servers_of_group(&self, group: &str, except: &str) -> usize {
        let tracked = self
            .group_all(group)
            .filter(|i| i.name != except && i.may_exist())
            .count();
        // A pool server a scale-up took is an instance now (the pool is rebuilt from the next
        // listing): counted once.
        let pooled = self
            .parked(group)
            .iter()
            .filter(|p| !self.instances.contains_key(&p.name))
            .count();
        tracked + pooled
    }

    /// Of [`State::servers_of_group`], those on their way out: deleted and not to be parked.
    /// The room they hold comes free as their deletions complete.
    pub fn leaving_servers(&self, group: &str) -> usize {
        self.group_all(group)
            .filter(|i| i.phase() == Phase::Deleting && !i.parking() && i.may_exist())
            .count()
    }

    /// The servers the group will hold once every deletion is done and every create the
    /// provider has queued is sent: what an IncreaseSize must fit under max-size.
    pub fn servers_to_come(&self, group: &str) -> usize {
        let queued = self
            .group_all(group)
            .filter(|i| i.phase() == Phase::Creating && i.create == CreateStatus::Queued)
            .count();
        self.servers_of_group(group, "") - self.leaving_servers(group) + queued
    }

    /// Pool servers a scale-up may take for the group (exact tag set, not yet taken), in the
    /// order it takes them: parked servers (they have run before: images pulled, joined once)
    /// when `parked_too`, then standby ones, each by name.
    pub fn reusable(&self, group: &str, parked_too: bool) -> Vec<ParkedServer> {
        let mut out: Vec<ParkedServer> = self
            .parked(group)
            .iter()
            .filter(|p| p.exact && (p.standby || parked_too))
            .filter(|p| !self.instances.contains_key(&p.name))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.standby, &a.name).cmp(&(b.standby, &b.name)));
        out
    }

    /// The group's pool: standby servers ready, creates for it under way, parked servers.
    pub fn pool_counts(&self, group: &str) -> PoolCounts {
        let pool = self.parked(group);
        let taken = |p: &&ParkedServer| self.instances.contains_key(&p.name);
        PoolCounts {
            standby: pool.iter().filter(|p| p.standby && !taken(p)).count(),
            creating: self.standby_creates(group).len(),
            parked: pool.iter().filter(|p| !p.standby && !taken(p)).count(),
        }
    }

    /// Creates for the group's standby pool under way (not failed), oldest request first.
    pub fn standby_creates(&self, group: &str) -> Vec<String> {
        let mut v: Vec<&Instance> = self
            .group_all(group)
            .filter(|i| i.standby && i.phase() == Phase::Creating && i.error.is_none())
            .collect();
        v.sort_by_key(|i| i.asked);
        v.into_iter().map(|i| i.name.clone()).collect()
    }

    /// What the standby controller does for `group` now (pure; the caller acts on it):
    /// - the pool counts every powered-off server a scale-up may take (parked ones too, so a
    ///   lost journal never makes it buy again what is there) plus creates for it under way;
    /// - below `wanted.servers` it buys the difference, but only when buying is allowed, no
    ///   scale-up of the autoscaler's is under way (replacements come after the scale-up,
    ///   never before it) and the group has room under its max-size in force, counting
    ///   everything that exists or may exist;
    /// - above it, standby servers (never parked ones: their cap is
    ///   `poweroff-on-scale-down-max-servers`) are terminated, unless `keep_excess`.
    pub fn standby_plan(&self, group: &str, wanted: StandbyWanted) -> StandbyPlan {
        let reusable = self.reusable(group, true);
        let creating = self.standby_creates(group).len();
        let have = reusable.len() + creating;
        let mut plan = StandbyPlan::default();
        if have > wanted.servers {
            if !wanted.keep_excess {
                // Newest names last: the last ones go (any order would do; this one is stable).
                let standby: Vec<ParkedServer> =
                    reusable.into_iter().filter(|p| p.standby).collect();
                let excess = (have - wanted.servers).min(standby.len());
                plan.trim = standby[standby.len() - excess..].to_vec();
            }
            return plan;
        }
        let scaling_up = self
            .group_instances(group)
            .any(|i| i.phase() == Phase::Creating && i.error.is_none());
        if !wanted.may_buy || scaling_up {
            return plan;
        }
        let room = wanted.max.saturating_sub(self.servers_to_come(group));
        plan.create = (wanted.servers - have).min(room);
        plan
    }

    /// Standby servers the journal records (name, node group).
    pub fn fresh(&self) -> impl Iterator<Item = (&String, &String)> {
        self.fresh.iter()
    }

    /// Records a standby server (bought for the pool, never booted). Bumps the version.
    pub fn mark_fresh(&mut self, name: String, group: String) {
        if self.fresh.get(&name) != Some(&group) {
            self.fresh.insert(name, group);
            self.version += 1;
        }
    }

    /// Command ids to poll.
    pub fn pending_commands(&self) -> Vec<String> {
        self.instances
            .values()
            .filter_map(|i| i.command.as_ref().map(|c| c.id.clone()))
            .collect()
    }

    /// Servers the provider knows exist (tracked and listed once, not terminated by it, or in a
    /// group's pool) that `listed` lacks, with their last known state: presumed to exist until
    /// the [`VanishRule`] and a lookup say otherwise. Each one's absence is counted here, once per
    /// listing, and forgotten as soon as a listing has it again (or it is no longer known).
    /// Returns them and how many servers are known, not counting those whose absence is
    /// expected (see [`Missing::expected`]).
    pub fn missing_known(
        &mut self,
        listed: &std::collections::HashSet<&str>,
        now: Instant,
    ) -> (Vec<Missing>, usize) {
        let mut known = 0;
        let mut missing = Vec::new();
        let tracked = self.instances.values().filter_map(|i| {
            let id = i.server_id.as_ref().filter(|_| i.seen && !i.terminated())?;
            let terminating = i
                .command
                .as_ref()
                .is_some_and(|c| c.kind == CommandKind::Terminate);
            Some((
                id,
                &i.name,
                i.power.clone().unwrap_or(Power::Off),
                terminating,
            ))
        });
        let pooled = self
            .parked
            .values()
            .flatten()
            .map(|p| (&p.id, &p.name, Power::Off, false));
        for (id, name, power, terminating) in tracked.chain(pooled) {
            known += usize::from(!terminating);
            if listed.contains(id.as_str()) {
                continue;
            }
            missing.push((
                Observed {
                    id: id.clone(),
                    name: name.clone(),
                    power,
                    tags: self.tags.get(id).cloned(),
                    presumed: true,
                },
                terminating,
            ));
        }
        let ids: Vec<String> = missing.iter().map(|(o, _)| o.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let absences = Absence::count(&mut self.reads.absences, &ids, now);
        let missing = missing
            .into_iter()
            .zip(absences)
            .map(|((observed, expected), absence)| Missing {
                observed,
                absence,
                expected,
            })
            .collect();
        (missing, known)
    }

    /// Applies a snapshot: the listing (servers that pass the name filter, with tags) and the
    /// statuses of pending commands. Returns the cloud calls to start.
    /// `unanswered` holds polled command ids the API did not report while it answered others.
    pub fn apply(
        &mut self,
        listed: &[Observed],
        statuses: &[CommandStatus],
        unanswered: &[String],
        groups: &[GroupTags<'_>],
        limits: Limits,
        now: Instant,
    ) -> Vec<Action> {
        let before = self.journal_digest();
        let by_name: HashMap<&str, &Observed> =
            listed.iter().map(|s| (s.name.as_str(), s)).collect();
        let by_command: HashMap<&str, &CommandStatus> =
            statuses.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut actions = Vec::new();
        let mut remove: Vec<(String, &'static str)> = Vec::new();

        // A watched name that shows up: the uncertain create did buy a server, which nobody
        // wants any more; tracked again as Deleting, it is terminated (through the guard).
        let appeared: Vec<(String, String)> = self
            .watched
            .iter()
            .filter(|(name, _)| by_name.get(name.as_str()).is_some_and(|s| !s.presumed))
            .map(|(name, (group, _))| (name.clone(), group.clone()))
            .collect();
        for (name, group) in appeared {
            self.watched.remove(&name);
            let mut inst = Instance::creating(name.clone(), group, now);
            inst.delete(false, now);
            inst.create = CreateStatus::Accepted;
            tracing::info!(server = %name, "a server appeared under the name of a deleted create whose outcome was unknown; terminating it");
            self.insert(name, inst);
        }
        let watch = limits.uncertain_watch;
        self.watched
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < watch);
        let outcomes = &mut self.reads.outcomes;
        for (name, inst) in self.instances.iter_mut() {
            let server = by_name.get(name.as_str()).copied();
            if let Some(s) = server {
                inst.server_id = Some(s.id.clone());
                inst.power = Some(s.power.clone());
                inst.seen = true;
            }
            if let Some(cmd) = inst.command.clone() {
                if let Some(st) = by_command.get(cmd.id.as_str()) {
                    if let Some(c) = inst.command.as_mut() {
                        c.unknown_since = None;
                    }
                    command_result(inst, &cmd, st, now, &mut actions, outcomes);
                } else if unanswered.contains(&cmd.id) {
                    unknown_command(inst, &cmd, limits.unknown_command, now, &mut actions);
                }
            }
            let creating = inst.phase() == Phase::Creating;
            step(inst, server, limits, now, &mut actions, &mut remove);
            if creating && inst.phase() == Phase::Running {
                outcomes
                    .scaled_up
                    .push(now.saturating_duration_since(inst.asked));
            }
        }
        let uncertain: Vec<String> = self
            .instances
            .keys()
            .filter(|n| !remove.iter().any(|(r, _)| r == *n))
            .cloned()
            .collect();
        for name in uncertain {
            self.watch_uncertain(&name, now);
        }
        for (name, why) in remove {
            tracing::debug!(server = %name, why, "instance forgotten");
            if why == PARKED {
                self.reads.outcomes.parked.push(name.clone());
            }
            if let Some(group) = self.instances.get(&name).map(|i| i.group.clone()) {
                if why == STANDBY_READY {
                    self.reads.outcomes.standby_ready.push(name.clone());
                    self.mark_fresh(name.clone(), group);
                } else if why == STANDBY_FAILED {
                    self.reads.outcomes.standby_failed.push(group);
                }
            }
            let inst = self.remove(&name);
            let terminated = inst.is_some_and(|i| i.terminated());
            if why == GONE || terminated {
                // Gone by the provider's own completed terminate, or by the vanish rule.
                self.reads.outcomes.gone.push(name);
                if terminated {
                    self.reads.outcomes.gone_terminated += 1;
                }
            }
        }

        let pooled: std::collections::HashSet<String> =
            self.all_parked().map(|p| p.id.clone()).collect();
        self.parked.clear();
        // Tagged servers nobody tracks: servers created before a restart, or by an earlier
        // instance of the provider. Powered-on ones are the group's; powered-off ones are its
        // warm pool (parked), never adopted as running capacity.
        for s in listed {
            if self.instances.contains_key(&s.name) {
                continue;
            }
            // A presumed server (missing from this listing) stays in the pool it was in; one
            // whose instance this pass forgot (its terminate completed) is not taken back.
            if s.presumed && !pooled.contains(&s.id) {
                continue;
            }
            let Some(tags) = &s.tags else { continue };
            let Some(group) = groups
                .iter()
                .find(|g| g.tags.iter().all(|t| tags.contains(t)))
            else {
                continue;
            };
            if s.power != Power::On {
                let exact =
                    tags.len() == group.tags.len() && tags.iter().all(|t| group.tags.contains(t));
                // Standby only by the journal's word for this very group, on a server that
                // carries exactly its tags; any other powered-off server is parked.
                let standby = exact && self.fresh.get(&s.name).is_some_and(|g| g == group.name);
                self.parked
                    .entry(group.name.to_string())
                    .or_default()
                    .push(ParkedServer {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        exact,
                        standby,
                    });
                continue;
            }
            let mut inst = Instance::creating(s.name.clone(), group.name.to_string(), now);
            inst.run(now);
            inst.server_id = Some(s.id.clone());
            inst.power = Some(s.power.clone());
            inst.seen = true;
            inst.create = CreateStatus::Adopted;
            self.insert(s.name.clone(), inst);
        }
        for pool in self.parked.values_mut() {
            pool.sort_by(|a, b| a.name.cmp(&b.name));
        }
        // A standby server stays one while it is in its group's pool or being powered on from
        // it (a refused power-on gives it back); once it has run, or is gone, it is not.
        let before_fresh = self.fresh.len();
        let parked = &self.parked;
        let instances = &self.instances;
        self.fresh.retain(|name, group| {
            parked
                .get(group)
                .is_some_and(|pool| pool.iter().any(|p| p.name == *name))
                || instances.get(name).is_some_and(|i| {
                    i.phase() == Phase::Creating && i.create == CreateStatus::Reused
                })
        });
        if self.fresh.len() != before_fresh {
            self.version += 1;
        }
        if self.journal_digest() != before {
            self.version += 1;
        }
        actions
    }

    /// A digest of what the journal records of the instances and watched names (the journal
    /// leaves out running instances): a pass that changes none of it needs no journal write.
    fn journal_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for i in self
            .instances
            .values()
            .filter(|i| i.phase() != Phase::Running)
        {
            // The fields of a journal entry (`journal::render`), no more.
            let leaving = i.leaving().unwrap_or_default();
            (&i.name, &i.group, i.phase(), i.create, &i.server_id, i.seen).hash(&mut h);
            (i.standby, i.wake).hash(&mut h);
            (
                leaving.park,
                leaving.powered_off_at.is_some(),
                leaving.terminated,
                i.command.as_ref().map(|c| (&c.id, c.kind)),
                i.power_on_failed,
            )
                .hash(&mut h);
        }
        self.watched.keys().for_each(|n| n.hash(&mut h));
        h.finish()
    }
}

#[cfg(test)]
mod tests;
