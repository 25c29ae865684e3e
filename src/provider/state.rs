//! The provider's memory: every instance it knows, and the pure transitions that a Kamatera
//! snapshot (listing + command statuses) causes. No I/O here: transitions return the cloud
//! actions to start, and the caller runs them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::kamatera::{CommandState, CommandStatus, Power, is_quota_message};

/// The autoscaler's view of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Creating,
    Running,
    Deleting,
}

/// Error classes the autoscaler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceErrorClass {
    OutOfResources,
    Other,
}

impl InstanceErrorClass {
    /// The number on the wire (`cloudprovider.InstanceErrorClass`).
    pub fn code(self) -> i32 {
        match self {
            InstanceErrorClass::OutOfResources => 1,
            InstanceErrorClass::Other => 99,
        }
    }
}

/// Why an instance failed, as reported to the autoscaler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub class: InstanceErrorClass,
    /// Stable code, e.g. `QUOTA_EXCEEDED`.
    pub code: &'static str,
    pub message: String,
}

impl ErrorInfo {
    /// An error of class `Other` (not out of resources).
    pub fn other(code: &'static str, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            class: InstanceErrorClass::Other,
            code,
            message: message.into(),
        }
    }
}

/// Where the create request of an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateStatus {
    /// Waiting for a request slot.
    Queued,
    /// The request is on the wire.
    Sent,
    /// The API answered with a command id.
    Accepted,
    /// The API refused it: nothing was bought.
    Rejected,
    /// The request failed in a way that leaves open whether a server was bought (timeout, 5xx,
    /// dropped connection). The name is watched: if a server with it ever appears, it is
    /// adopted while wanted and terminated otherwise.
    Uncertain,
    /// Adopted from the listing (not created by this process).
    Adopted,
    /// A parked server of the group, powered on instead of buying a new one.
    Reused,
}

/// A command we started and still wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub kind: CommandKind,
    /// When the command was started.
    pub since: Instant,
    /// Since when the API has not reported this command (while answering others).
    pub unknown_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Create,
    PowerOn,
    PowerOff,
    Terminate,
}

/// Where an instance is in its life. Each stage carries what only it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Life {
    /// Wanted and not running yet: being created, or a parked server being powered on.
    Creating,
    Running,
    /// The autoscaler deleted it (or a create it no longer wants): on its way out.
    Deleting(Leaving),
}

/// How a deleted instance leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Leaving {
    /// Kept powered off (parked) instead of terminated; decided when the autoscaler deleted it.
    pub park: bool,
    /// When the power-off of a server to park completed (the listing may still show it on).
    pub powered_off_at: Option<Instant>,
    /// The terminate command completed.
    pub terminated: bool,
}

/// One server the provider manages (or is about to).
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub group: String,
    /// Where it is in its life; change it only through the transition methods.
    life: Life,
    pub server_id: Option<String>,
    /// Power in the last listing that had the server.
    pub power: Option<Power>,
    /// Listed at least once.
    pub seen: bool,
    pub create: CreateStatus,
    pub command: Option<Pending>,
    /// A delete step (power off / terminate) request is on the wire.
    pub action_in_flight: bool,
    /// A power-on of this reused server ended in error: never park it again.
    pub power_on_failed: bool,
    /// Consecutive listings without the server, once it had been seen (it is looked up by id
    /// once this reaches the provider's `vanish_misses`).
    pub missed: u32,
    pub error: Option<ErrorInfo>,
    /// When the instance entered its current phase.
    pub since: Instant,
}

impl Instance {
    pub fn creating(name: String, group: String, now: Instant) -> Self {
        Instance {
            name,
            group,
            life: Life::Creating,
            server_id: None,
            power: None,
            seen: false,
            create: CreateStatus::Queued,
            command: None,
            action_in_flight: false,
            power_on_failed: false,
            missed: 0,
            error: None,
            since: now,
        }
    }

    /// Counts toward the target size.
    pub fn in_target(&self) -> bool {
        matches!(self.life, Life::Creating | Life::Running)
    }

    /// The autoscaler's view of where it is.
    pub fn phase(&self) -> Phase {
        match self.life {
            Life::Creating => Phase::Creating,
            Life::Running => Phase::Running,
            Life::Deleting(_) => Phase::Deleting,
        }
    }

    /// How it leaves, once deleted.
    pub fn leaving(&self) -> Option<Leaving> {
        match self.life {
            Life::Deleting(l) => Some(l),
            _ => None,
        }
    }

    /// Deleted and to be parked rather than terminated.
    pub fn parking(&self) -> bool {
        self.leaving().is_some_and(|l| l.park)
    }

    /// Deleted, and its terminate command completed.
    pub fn terminated(&self) -> bool {
        self.leaving().is_some_and(|l| l.terminated)
    }

    /// Creating → Running (the listing shows it powered on).
    pub fn run(&mut self, now: Instant) {
        if self.life == Life::Creating {
            self.life = Life::Running;
            self.since = now;
        }
    }

    /// Creating or Running → Deleting, parked (powered off and kept) or terminated.
    pub fn delete(&mut self, park: bool, now: Instant) {
        if !matches!(self.life, Life::Deleting(_)) {
            self.life = Life::Deleting(Leaving {
                park,
                ..Leaving::default()
            });
            self.since = now;
        }
    }

    /// Restores the stage of a journal entry as is (no transition, no clock).
    pub fn restore_life(&mut self, life: Life) {
        self.life = life;
    }

    /// Parking is off: the server is terminated instead (its power-off failed or did not hold).
    pub fn stop_parking(&mut self) {
        if let Life::Deleting(l) = &mut self.life {
            l.park = false;
        }
    }

    /// The power-off of a server to park completed.
    pub fn powered_off(&mut self, now: Instant) {
        if let Life::Deleting(l) = &mut self.life {
            l.powered_off_at = Some(now);
        }
    }

    /// Its terminate command completed.
    pub fn mark_terminated(&mut self) {
        if let Life::Deleting(l) = &mut self.life {
            l.terminated = true;
        }
    }
}

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
    /// Listings in a row without it, this one included.
    pub misses: u32,
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
    /// Per node group with any hibernation state; absent = awake, no manual controls.
    hibernation: BTreeMap<String, GroupHibernation>,
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
    /// or a lookup by id found no such server): their Nodes are deleted.
    pub gone: Vec<String>,
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

    pub fn group_instances<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
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

    /// Parked servers of the group plus the scale-downs already decided to park: what the
    /// `poweroff-on-scale-down-max-servers` cap counts.
    pub fn parked_or_parking(&self, group: &str) -> usize {
        self.parked.get(group).map_or(0, Vec::len)
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
            .group_instances(group)
            .filter(|i| i.name != except)
            .filter(|i| match (&i.server_id, i.create) {
                (Some(_), _) => !i.terminated(),
                (None, CreateStatus::Sent | CreateStatus::Accepted | CreateStatus::Uncertain) => {
                    true
                }
                (None, _) => false,
            })
            .count();
        tracked + self.parked.get(group).map_or(0, Vec::len)
    }

    /// Parked servers power-on scale-up may take for the group (exact tag set, not yet taken).
    pub fn reusable(&self, group: &str) -> Vec<ParkedServer> {
        self.parked
            .get(group)
            .into_iter()
            .flatten()
            .filter(|p| p.exact && !self.instances.contains_key(&p.name))
            .cloned()
            .collect()
    }

    /// Command ids to poll.
    pub fn pending_commands(&self) -> Vec<String> {
        self.instances
            .values()
            .filter_map(|i| i.command.as_ref().map(|c| c.id.clone()))
            .collect()
    }

    /// Servers the provider knows exist (tracked and listed once, not terminated by it, or in a
    /// group's pool) that `listed` lacks, with their last known state: presumed to exist until a
    /// lookup by id says otherwise. `misses` counts the listings in a row that lacked it, this
    /// one included (pool servers: 1, nothing is counted for them).
    pub fn missing_known(&self, listed: &std::collections::HashSet<&str>) -> (Vec<Missing>, usize) {
        let mut known = 0;
        let mut missing = Vec::new();
        for i in self.instances.values() {
            let Some(id) = i.server_id.as_ref().filter(|_| i.seen && !i.terminated()) else {
                continue;
            };
            known += 1;
            if !listed.contains(id.as_str()) {
                missing.push(Missing {
                    observed: Observed {
                        id: id.clone(),
                        name: i.name.clone(),
                        power: i.power.clone().unwrap_or(Power::Off),
                        tags: self.tags.get(id).cloned(),
                        presumed: true,
                    },
                    misses: i.missed + 1,
                });
            }
        }
        for p in self.parked.values().flatten() {
            known += 1;
            if !listed.contains(p.id.as_str()) {
                missing.push(Missing {
                    observed: Observed {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        power: Power::Off,
                        tags: self.tags.get(&p.id).cloned(),
                        presumed: true,
                    },
                    misses: 1,
                });
            }
        }
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
                inst.missed = if s.presumed { inst.missed + 1 } else { 0 };
            } else if inst.seen {
                inst.missed += 1;
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
            step(inst, server, limits, now, &mut actions, &mut remove);
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
            let inst = self.remove(&name);
            if why == GONE || inst.is_some_and(|i| i.terminated()) {
                // Gone by the provider's own completed terminate, or confirmed by a lookup.
                self.reads.outcomes.gone.push(name);
            }
        }

        self.parked.clear();
        // Tagged servers nobody tracks: servers created before a restart, or by an earlier
        // instance of the provider. Powered-on ones are the group's; powered-off ones are its
        // warm pool (parked), never adopted as running capacity.
        for s in listed {
            if self.instances.contains_key(&s.name) {
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
                self.parked
                    .entry(group.name.to_string())
                    .or_default()
                    .push(ParkedServer {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        exact,
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
            (&i.name, &i.group, i.life, i.create, &i.server_id, i.seen).hash(&mut h);
            (
                i.command.as_ref().map(|c| (&c.id, c.kind)),
                i.power_on_failed,
                i.action_in_flight,
            )
                .hash(&mut h);
        }
        self.watched.keys().for_each(|n| n.hash(&mut h));
        h.finish()
    }
}

/// Why `step` forgets an instance whose server it parked.
const PARKED: &str = "parked: powered off and kept for reuse";
/// Why `step` forgets an instance whose server is confirmed gone.
const GONE: &str = "server gone: the API has no server with its id";

/// A command the queue does not report: after `limit`, give it up and move on from what the
/// listing shows.
fn unknown_command(
    inst: &mut Instance,
    cmd: &Pending,
    limit: Duration,
    now: Instant,
    actions: &mut Vec<Action>,
) {
    let since = cmd.unknown_since.unwrap_or(now);
    if let Some(c) = inst.command.as_mut() {
        c.unknown_since = Some(since);
    }
    if now.saturating_duration_since(since) < limit {
        return;
    }
    inst.command = None;
    match cmd.kind {
        CommandKind::Create if !inst.seen => {
            inst.create = CreateStatus::Uncertain;
            inst.since = now;
            if inst.phase() == Phase::Creating {
                inst.error = Some(uncertain_error(&format!(
                    "the API no longer reports create command {} and the server is not listed",
                    cmd.id
                )));
            }
        }
        CommandKind::Create => {}
        // `step` goes by the listing: running once on, an error after the grace otherwise.
        CommandKind::PowerOn => inst.since = now,
        // Listed off: the power-off did happen; `step` parks it.
        CommandKind::PowerOff
            if inst.parking() && inst.power.as_ref().is_some_and(|p| *p != Power::On) =>
        {
            inst.powered_off(now);
        }
        CommandKind::PowerOff => {
            if let Some(id) = inst.server_id.clone() {
                inst.stop_parking();
                inst.action_in_flight = true;
                actions.push(Action::Terminate {
                    name: inst.name.clone(),
                    server_id: id,
                });
            }
        }
        // The next pass terminates again if the server is still listed.
        CommandKind::Terminate => {}
    }
}

/// Handles the end of a command.
fn command_result(
    inst: &mut Instance,
    cmd: &Pending,
    st: &CommandStatus,
    now: Instant,
    actions: &mut Vec<Action>,
    outcomes: &mut Outcomes,
) {
    match (cmd.kind, &st.state) {
        (_, s) if !s.is_terminal() => {}
        (CommandKind::Create, CommandState::Complete) => inst.command = None,
        (CommandKind::Create, state) => {
            inst.command = None;
            // The API removes what a failed create began; nothing was bought.
            inst.create = CreateStatus::Rejected;
            if *state == CommandState::Cancelled {
                outcomes.creates_cancelled += 1;
            } else {
                outcomes.creates_failed += 1;
            }
            let detail = first_line(&st.log);
            inst.error = Some(if is_quota_message(&st.log) {
                ErrorInfo {
                    class: InstanceErrorClass::OutOfResources,
                    code: "QUOTA_EXCEEDED",
                    message: format!(
                        "create command {} ended {}: {detail}",
                        cmd.id,
                        state.as_str()
                    ),
                }
            } else {
                ErrorInfo::other(
                    if *state == CommandState::Cancelled {
                        "CREATE_CANCELLED"
                    } else {
                        "CREATE_FAILED"
                    },
                    format!(
                        "create command {} ended {}: {detail}",
                        cmd.id,
                        state.as_str()
                    ),
                )
            });
        }
        (CommandKind::PowerOn, CommandState::Complete) => {
            // Running once the listing shows it on (see `step`).
            inst.command = None;
            inst.since = now;
        }
        (CommandKind::PowerOn, state) => {
            inst.command = None;
            inst.power_on_failed = true;
            outcomes.power_ons_failed += 1;
            inst.error = Some(ErrorInfo::other(
                "POWER_ON_FAILED",
                format!(
                    "power-on command {} of parked server {} ended {}: {}",
                    cmd.id,
                    inst.name,
                    state.as_str(),
                    first_line(&st.log)
                ),
            ));
        }
        (CommandKind::PowerOff, CommandState::Complete) if inst.parking() => {
            // Parked once the listing shows it off (see `step`).
            inst.command = None;
            inst.powered_off(now);
        }
        (CommandKind::PowerOff, state) => {
            // Whether the power-off worked or not, a forced terminate finishes the job. A server
            // whose power-off failed is not parked: its state is unknown.
            if inst.parking() {
                tracing::warn!(server = %inst.name, command = %cmd.id, state = state.as_str(),
                    "power-off before parking failed; terminating the server instead");
                inst.stop_parking();
            }
            inst.command = None;
            if let Some(id) = &inst.server_id {
                inst.action_in_flight = true;
                actions.push(Action::Terminate {
                    name: inst.name.clone(),
                    server_id: id.clone(),
                });
            }
        }
        (CommandKind::Terminate, CommandState::Complete) => {
            outcomes.deletes_completed += 1;
            inst.command = None;
            inst.mark_terminated();
            inst.error = None;
        }
        (CommandKind::Terminate, state) => {
            // Tried again on the next reconcile (see `step`).
            outcomes.deletes_failed += 1;
            inst.command = None;
            inst.error = Some(ErrorInfo::other(
                "TERMINATE_FAILED",
                format!(
                    "terminate command {} ended {}: {}",
                    cmd.id,
                    state.as_str(),
                    first_line(&st.log)
                ),
            ));
        }
    }
}

/// Phase transitions from what the listing shows.
fn step(
    inst: &mut Instance,
    server: Option<&Observed>,
    limits: Limits,
    now: Instant,
    actions: &mut Vec<Action>,
    remove: &mut Vec<(String, &'static str)>,
) {
    match inst.phase() {
        Phase::Creating => {
            if server.is_none()
                && inst.create == CreateStatus::Uncertain
                && !inst.seen
                && inst.error.is_none()
                && now.saturating_duration_since(inst.since) >= limits.uncertain_grace
            {
                inst.error = Some(uncertain_error(&format!(
                    "no server named {} appeared after a create whose outcome is unknown",
                    inst.name
                )));
            }
            if server.is_none() && inst.seen && inst.command.is_none() && inst.error.is_none() {
                // Listed once, confirmed gone since (a server that is merely missing from a
                // listing is presumed), nothing running that explains it.
                inst.error = Some(ErrorInfo::other(
                    "SERVER_GONE",
                    format!("server {} no longer exists", inst.name),
                ));
            }
            if let Some(s) = server {
                if inst.create == CreateStatus::Uncertain {
                    // The uncertain create did buy the server: it is ours after all.
                    inst.create = CreateStatus::Accepted;
                    inst.error = None;
                }
                let failed = inst.error.is_some();
                let starting = matches!(
                    inst.command,
                    Some(Pending {
                        kind: CommandKind::Create | CommandKind::PowerOn,
                        ..
                    })
                );
                if s.power == Power::On && !failed {
                    // Powered on in the listing: created (or woken), whatever the queue says.
                    if starting {
                        inst.command = None;
                    }
                    inst.run(now);
                } else if inst.create == CreateStatus::Reused
                    && !starting
                    && !failed
                    && !inst.action_in_flight
                    && now.saturating_duration_since(inst.since) >= limits.uncertain_grace
                {
                    inst.power_on_failed = true;
                    inst.error = Some(ErrorInfo::other(
                        "POWER_ON_FAILED",
                        format!(
                            "parked server {} is still powered off {} s after its power-on",
                            inst.name,
                            limits.uncertain_grace.as_secs()
                        ),
                    ));
                }
            }
        }
        Phase::Running => {
            if server.is_none() && inst.seen {
                // Removed outside the provider (confirmed): no longer the autoscaler's to count.
                remove.push((inst.name.clone(), GONE));
            }
        }
        Phase::Deleting => {
            if inst.action_in_flight {
                return;
            }
            match &inst.command {
                // A create or power-on that is still running: wait for it to finish (listed
                // powered on), whatever the queue says, then go on below.
                Some(Pending {
                    kind: CommandKind::Create | CommandKind::PowerOn,
                    ..
                }) => {
                    if server.is_some_and(|s| s.power == Power::On) {
                        inst.command = None;
                    } else {
                        return;
                    }
                }
                // The server is gone although its power-off or terminate was never reported.
                Some(_) if server.is_none() && inst.seen => {
                    // Gone (confirmed) before its power-off or terminate was reported.
                    remove.push((inst.name.clone(), GONE));
                    return;
                }
                Some(_) => return,
                None => {}
            }
            match server {
                Some(_) if inst.terminated() => {} // terminated, listing not caught up yet
                Some(s) if inst.parking() => {
                    if s.power != Power::On {
                        // Off in the listing: parked. Forgetting it makes it part of the
                        // group's pool (rebuilt from the listing), invisible to the autoscaler.
                        remove.push((inst.name.clone(), PARKED));
                    } else if let Some(at) = inst.leaving().and_then(|l| l.powered_off_at) {
                        if now.saturating_duration_since(at) >= limits.uncertain_grace {
                            tracing::warn!(server = %inst.name,
                                "still listed powered on long after its power-off completed; terminating it instead of parking");
                            inst.stop_parking();
                            inst.action_in_flight = true;
                            actions.push(Action::Terminate {
                                name: inst.name.clone(),
                                server_id: s.id.clone(),
                            });
                        }
                    } else {
                        inst.action_in_flight = true;
                        actions.push(Action::PowerOff {
                            name: inst.name.clone(),
                            server_id: s.id.clone(),
                        });
                    }
                }
                Some(s) => {
                    // A server that should go: created after its instance was cancelled, or a
                    // terminate that failed. Terminate (forced) now.
                    inst.action_in_flight = true;
                    actions.push(Action::Terminate {
                        name: inst.name.clone(),
                        server_id: s.id.clone(),
                    });
                }
                None => {
                    // A server once seen and now absent is gone for certain (terminated by the
                    // provider, or confirmed by a lookup; one merely missing is presumed).
                    let gone = inst.seen && !inst.terminated();
                    let waiting_for_server = !inst.seen
                        && match inst.create {
                            CreateStatus::Queued | CreateStatus::Sent => true,
                            // Bought (or maybe bought) but never listed: watch for the server a
                            // bounded time, then forget the name.
                            CreateStatus::Accepted | CreateStatus::Uncertain => {
                                !inst.seen
                                    && now.saturating_duration_since(inst.since)
                                        < limits.uncertain_watch
                            }
                            CreateStatus::Rejected
                            | CreateStatus::Adopted
                            | CreateStatus::Reused => false,
                        };
                    if gone {
                        remove.push((inst.name.clone(), GONE));
                    } else if !waiting_for_server {
                        remove.push((
                            inst.name.clone(),
                            "deleted (or never bought) and not listed",
                        ));
                    }
                }
            }
        }
    }
}

fn first_line(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no log");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
