//! The restart journal: in-flight intent (instances not yet Running: creates queued, sent or
//! accepted with their command ids; deletions under way) written atomically to a small JSON file,
//! so a restarted provider neither forgets a pending create (the autoscaler would scale up again:
//! duplicate servers) nor loses a delete.
//!
//! Writes go to `<file>.tmp`, are fsynced, renamed over the file, and the directory is fsynced.
//! Running instances are not written: their servers carry both tags and are adopted from the
//! listing. A corrupt or foreign file is set aside (`<file>.corrupt`) with one clear log line and
//! the provider starts from Kamatera's truth.

use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

use serde::{Deserialize, Serialize};

use super::in_force::Manual;
use super::state::{
    Action, CommandKind, CreateStatus, GroupHibernation, HibernationPhase, Instance, Leaving, Life,
    Pending, Phase, State,
};

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the state file {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("cannot write the journal: {0}")]
    Kube(crate::kube::KubeError),
    #[error(
        "the journal has not been read yet (its store was unreachable at startup); nothing that needs it is sent"
    )]
    Unread,
    #[error("this replica does not hold the lease; the journal is the holder's")]
    NotLeader,
}

impl From<crate::kube::KubeError> for JournalError {
    fn from(e: crate::kube::KubeError) -> Self {
        JournalError::Kube(e)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    cluster: String,
    instances: Vec<Entry>,
    /// Hibernation of node groups (absent in older files: every group awake).
    #[serde(default)]
    groups: Vec<GroupEntry>,
    /// Tags of the servers seen, grouped by tag set, so that a restart reads tags only of
    /// servers it has never seen (absent in older files: a cold start).
    #[serde(default)]
    tags: Vec<TagSet>,
    /// The node controller's queue: servers whose Node is still to be deleted (absent in older
    /// files: none), so a restart does not leave a terminated server's Node behind.
    #[serde(default)]
    nodes: Vec<NodeEntry>,
    /// Standby servers: bought for a node group's pool, powered off, never booted (absent in
    /// older files: none; such servers then count as parked).
    #[serde(default)]
    standby: Vec<StandbyEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StandbyEntry {
    server: String,
    group: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct NodeEntry {
    server: String,
    /// `terminated` or `parked`.
    why: String,
}

/// Servers (ids) that carry exactly these tags.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct TagSet {
    tags: Vec<String>,
    ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    /// `awake`, `draining` or `hibernating`.
    phase: String,
    /// Unix seconds the phase began.
    since: Option<i64>,
    manual_hibernate: bool,
    manual_force: bool,
    /// Unix seconds until which a manual resume holds.
    resumed_until: Option<i64>,
    kept: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    name: String,
    group: String,
    phase: String,
    create: String,
    server_id: Option<String>,
    seen: bool,
    terminated: bool,
    command_id: Option<String>,
    command_kind: Option<String>,
    /// Scale-down decided to park the server (absent in older files: terminate).
    #[serde(default)]
    park: bool,
    /// The power-off before parking completed.
    #[serde(default)]
    powered_off: bool,
    #[serde(default)]
    power_on_failed: bool,
    /// The standby pool's, not the autoscaler's (absent in older files: the autoscaler's).
    #[serde(default)]
    standby: bool,
    /// Taken by a scale-up while created powered off for the pool: powered on once created.
    #[serde(default)]
    wake: bool,
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Creating => "creating",
        Phase::Running => "running",
        Phase::Deleting => "deleting",
    }
}

fn create_str(c: CreateStatus) -> &'static str {
    match c {
        CreateStatus::Queued => "queued",
        CreateStatus::Sent => "sent",
        CreateStatus::Accepted => "accepted",
        CreateStatus::Rejected => "rejected",
        CreateStatus::Uncertain => "uncertain",
        CreateStatus::Adopted => "adopted",
        CreateStatus::Reused => "reused",
    }
}

fn kind_str(k: CommandKind) -> &'static str {
    match k {
        CommandKind::Create => "create",
        CommandKind::PowerOn => "poweron",
        CommandKind::PowerOff => "poweroff",
        CommandKind::Terminate => "terminate",
    }
}

/// The journal text for a state: every instance that is not Running.
pub fn render(cluster: &str, state: &State) -> String {
    let instances = state
        .instances()
        .filter(|i| i.phase() != Phase::Running)
        .map(|i| Entry {
            name: i.name.clone(),
            group: i.group.clone(),
            phase: phase_str(i.phase()).into(),
            create: create_str(i.create).into(),
            server_id: i.server_id.clone(),
            seen: i.seen,
            terminated: i.terminated(),
            command_id: i.command.as_ref().map(|c| c.id.clone()),
            command_kind: i.command.as_ref().map(|c| kind_str(c.kind).into()),
            park: i.parking(),
            powered_off: i.leaving().is_some_and(|l| l.powered_off_at.is_some()),
            power_on_failed: i.power_on_failed,
            standby: i.standby,
            wake: i.wake,
        })
        // Watched names: deleted creates whose server may still appear.
        .chain(state.watched().map(|(name, group)| Entry {
            name: name.clone(),
            group: group.clone(),
            phase: "deleting".into(),
            create: "uncertain".into(),
            server_id: None,
            seen: false,
            terminated: false,
            command_id: None,
            command_kind: None,
            park: false,
            powered_off: false,
            power_on_failed: false,
            standby: false,
            wake: false,
        }))
        .collect();
    let groups = state
        .hibernations()
        .map(|(name, h)| {
            let (phase, since) = match h.phase {
                HibernationPhase::Awake => ("awake", None),
                HibernationPhase::Draining { since } => ("draining", Some(since.as_second())),
                HibernationPhase::Hibernating { since } => ("hibernating", Some(since.as_second())),
            };
            GroupEntry {
                name: name.clone(),
                phase: phase.into(),
                since,
                manual_hibernate: h.manual.hibernate,
                manual_force: h.manual.force,
                resumed_until: h.manual.resumed_until.map(|t| t.as_second()),
                kept: h.kept.clone(),
            }
        })
        .collect();
    let mut sets: std::collections::BTreeMap<&Vec<String>, Vec<String>> =
        std::collections::BTreeMap::new();
    for (id, tags) in state.all_tags() {
        sets.entry(tags).or_default().push(id.clone());
    }
    let tags = sets
        .into_iter()
        .map(|(tags, mut ids)| {
            ids.sort();
            TagSet {
                tags: tags.clone(),
                ids,
            }
        })
        .collect();
    let nodes = state
        .node_queue()
        .map(|(server, why)| NodeEntry {
            server: server.clone(),
            why: why.as_str().into(),
        })
        .collect();
    let standby = state
        .fresh()
        .map(|(server, group)| StandbyEntry {
            server: server.clone(),
            group: group.clone(),
        })
        .collect();
    let file = File {
        version: VERSION,
        cluster: cluster.to_string(),
        instances,
        groups,
        tags,
        nodes,
        standby,
    };
    // Compact: at 10,000 servers the tag cache must fit a ConfigMap (1 MiB) with room to spare.
    serde_json::to_string(&file).unwrap_or_default()
}

/// Writes `text` to `path` atomically and durably (blocking; call off the runtime).
pub fn write_atomic(path: &Path, text: &str) -> Result<(), JournalError> {
    let err = |error| JournalError::Write {
        path: path.display().to_string(),
        error,
    };
    let tmp = tmp_path(path);
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        // The default place (/var/lib/kamatera-ca-provider) may not exist yet.
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Checks that the journal can be written at `path` without touching an existing journal.
pub fn probe(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    let mut p = path.as_os_str().to_owned();
    p.push(".probe");
    let probe = PathBuf::from(p);
    write_atomic(&probe, "probe").map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// What loading the journal found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub instances: usize,
    /// Set when the file was unusable; the text says why.
    pub discarded: Option<String>,
    /// Entries dropped because they fail the config's rules, each with why.
    pub dropped: Vec<String>,
}

/// A journal entry's server id as the API makes them (a UUID): letters, digits and dashes.
fn valid_server_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A command id as the API makes them: digits.
fn valid_command_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.chars().all(|c| c.is_ascii_digit())
}

/// Reads the journal into `state`. The journal is input, not truth: an entry is dropped (with
/// the reason in [`Restored::dropped`]) when its node group is not in the config, its name is
/// not one the provider makes for that group, its server id is malformed, or its phase or
/// create status is unknown; an unreadable command id becomes error info on its instance rather
/// than a command to wait for. Every restored instance is then *unverified* until the first
/// listing confirms it (see [`verify`]). Creates that were on the wire when the process stopped
/// become uncertain (their server may exist): they are watched, never sent again. Returned, to
/// be started once verified: creates that were only queued, and power-ons of reused servers
/// with no command on record (powering on is harmless to repeat).
pub fn restore(
    path: &Path,
    cluster: &str,
    name_prefix_of: &dyn Fn(&str) -> Option<String>,
    state: &mut State,
    now: Instant,
) -> (Restored, Vec<Action>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Restored::default(), Vec::new());
        }
        Err(e) => {
            return (
                Restored {
                    discarded: Some(format!("cannot read {}: {e}", path.display())),
                    ..Restored::default()
                },
                Vec::new(),
            );
        }
    };
    match restore_text(&text, cluster, name_prefix_of, state, now) {
        Ok(r) => r,
        Err(why) => (set_aside(path, why), Vec::new()),
    }
}

/// [`restore`] from the journal's text, wherever it was kept; `Err` says why the whole text is
/// unusable (not a journal, another version, another cluster).
pub fn restore_text(
    text: &str,
    cluster: &str,
    name_prefix_of: &dyn Fn(&str) -> Option<String>,
    state: &mut State,
    now: Instant,
) -> Result<(Restored, Vec<Action>), String> {
    let file: File = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return Err(format!("not a valid state file ({e})")),
    };
    if file.version != VERSION {
        return Err(format!(
            "state file version {} is not {VERSION}",
            file.version
        ));
    }
    if file.cluster != cluster {
        return Err(format!(
            "state file belongs to cluster {:?}, not {cluster:?}",
            file.cluster
        ));
    }
    let mut to_send = Vec::new();
    let mut restored = 0;
    let at = |s: Option<i64>| {
        s.and_then(|s| jiff::Timestamp::from_second(s).ok())
            .unwrap_or_else(jiff::Timestamp::now)
    };
    let mut dropped = Vec::new();
    let plain_tag = |t: &String| (1..=128).contains(&t.len()) && !t.chars().any(char::is_control);
    for set in file.tags {
        if !set.tags.iter().all(plain_tag) {
            dropped.push("a cached tag set with a malformed tag".to_string());
            continue;
        }
        for id in set.ids {
            if valid_server_id(&id) {
                state.record_tags(&id, set.tags.clone(), false);
            } else {
                dropped.push(format!(
                    "cached tags of malformed server id {}",
                    crate::telemetry::quoted(&id)
                ));
            }
        }
    }
    // Queued Nodes: a claim like the rest. The sweep deletes a Node only if it is tied to the
    // server, no longer Ready, and the server is not tracked (or, parked, still in the pool).
    for n in file.nodes.into_iter().take(super::state::NODE_QUEUE_MAX) {
        let plain = (1..=64).contains(&n.server.len())
            && n.server
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        match (plain, super::state::Gone::parse(&n.why)) {
            (true, Some(why)) => state.queue_node_deletion(n.server, why, now),
            _ => dropped.push(format!(
                "a queued Node of server {} ({})",
                crate::telemetry::quoted(&n.server),
                crate::telemetry::quoted(&n.why)
            )),
        }
    }
    // Standby servers: a claim too. One counts as standby only while its group's pool holds
    // a powered-off server of that name with exactly the group's tags (`State::apply`).
    for e in file.standby {
        match name_prefix_of(&e.group) {
            Some(prefix) if crate::kamatera::is_server_name(&prefix, &e.server) => {
                state.mark_fresh(e.server, e.group);
            }
            Some(_) => dropped.push(format!(
                "standby server {}: not a server name the provider makes for node group {}",
                crate::telemetry::quoted(&e.server),
                crate::telemetry::quoted(&e.group)
            )),
            None => dropped.push(format!(
                "standby server {}: node group {} is not in the config",
                crate::telemetry::quoted(&e.server),
                crate::telemetry::quoted(&e.group)
            )),
        }
    }
    for g in file.groups {
        if name_prefix_of(&g.name).is_none() {
            dropped.push(format!(
                "hibernation state of node group {}: not in the config",
                crate::telemetry::quoted(&g.name)
            ));
            continue;
        }
        let phase = match g.phase.as_str() {
            "draining" => HibernationPhase::Draining { since: at(g.since) },
            "hibernating" => HibernationPhase::Hibernating { since: at(g.since) },
            _ => HibernationPhase::Awake,
        };
        state.edit_hibernation(&g.name, |h| {
            *h = GroupHibernation {
                manual: Manual {
                    hibernate: g.manual_hibernate,
                    force: g.manual_force,
                    resumed_until: g
                        .resumed_until
                        .and_then(|s| jiff::Timestamp::from_second(s).ok()),
                },
                phase,
                kept: g.kept,
            }
        });
    }
    for e in file.instances {
        let entry = crate::telemetry::quoted(&e.name);
        let Some(prefix) = name_prefix_of(&e.group) else {
            dropped.push(format!(
                "{entry}: node group {} is not in the config",
                crate::telemetry::quoted(&e.group)
            ));
            continue;
        };
        if !crate::kamatera::is_server_name(&prefix, &e.name) {
            dropped.push(format!(
                "{entry}: not a server name the provider makes for node group {}",
                e.group
            ));
            continue;
        }
        if let Some(id) = e.server_id.as_deref().filter(|id| !valid_server_id(id)) {
            dropped.push(format!(
                "{entry}: malformed server id {}",
                crate::telemetry::quoted(id)
            ));
            continue;
        }
        let mut inst = Instance::creating(e.name.clone(), e.group.clone(), now);
        let life = match e.phase.as_str() {
            "deleting" => Life::Deleting(Leaving {
                park: e.park,
                powered_off_at: e.powered_off.then_some(now),
                terminated: e.terminated,
            }),
            "creating" => Life::Creating,
            other => {
                dropped.push(format!(
                    "{entry}: unknown phase {}",
                    crate::telemetry::quoted(other)
                ));
                continue;
            }
        };
        // Ages restart at zero: the watch periods count from the restart (conservative).
        inst.server_id = e.server_id;
        inst.seen = e.seen;
        inst.restore_life(life);
        inst.power_on_failed = e.power_on_failed;
        inst.standby = e.standby;
        inst.wake = e.wake;
        inst.create = match e.create.as_str() {
            "queued" => CreateStatus::Queued,
            "accepted" => CreateStatus::Accepted,
            "rejected" => CreateStatus::Rejected,
            "adopted" => CreateStatus::Adopted,
            "reused" => CreateStatus::Reused,
            // On the wire at the crash, or unknown already: the server may exist.
            "sent" | "uncertain" => CreateStatus::Uncertain,
            other => {
                dropped.push(format!(
                    "{entry}: unknown create status {}",
                    crate::telemetry::quoted(other)
                ));
                continue;
            }
        };
        let kind = match e.command_kind.as_deref() {
            None => None,
            Some("create") => Some(CommandKind::Create),
            Some("poweron") => Some(CommandKind::PowerOn),
            Some("poweroff") => Some(CommandKind::PowerOff),
            Some("terminate") => Some(CommandKind::Terminate),
            Some(other) => {
                dropped.push(format!(
                    "{entry}: unknown command kind {}",
                    crate::telemetry::quoted(other)
                ));
                continue;
            }
        };
        let unreadable = e.command_id.clone().filter(|id| !valid_command_id(id));
        if let Some(id) = &unreadable {
            // Never waited for: whatever that command did, the listing tells.
            inst.error = Some(super::state::ErrorInfo::other(
                "JOURNAL_UNREADABLE",
                format!(
                    "the state file holds an unreadable command id {} for this instance",
                    crate::telemetry::quoted(id)
                ),
            ));
            if inst.create == CreateStatus::Accepted && inst.phase() == Phase::Creating {
                inst.create = CreateStatus::Uncertain;
            }
        }
        inst.command = match (e.command_id.filter(|_| unreadable.is_none()), kind) {
            (Some(id), Some(kind)) => Some(Pending {
                id,
                kind,
                since: now,
                unknown_since: None,
            }),
            _ => None,
        };
        match inst.create {
            // Waits for its server (adopted if it appears); reports an error after the grace.
            CreateStatus::Uncertain => {}
            CreateStatus::Rejected => {
                inst.error = Some(super::state::ErrorInfo::other(
                    "CREATE_REJECTED",
                    "create failed before the provider restarted",
                ));
            }
            CreateStatus::Queued if inst.phase() == Phase::Creating => {
                to_send.push(Action::Create {
                    name: e.name.clone(),
                    group: e.group.clone(),
                })
            }
            CreateStatus::Reused if inst.phase() == Phase::Creating && inst.command.is_none() => {
                if let Some(server_id) = inst.server_id.clone() {
                    inst.action_in_flight = true;
                    to_send.push(Action::PowerOn {
                        name: e.name.clone(),
                        server_id,
                    });
                }
            }
            _ => {}
        }
        state.mark_unverified(&e.name);
        state.insert(e.name.clone(), inst);
        if state.watch_uncertain(&e.name, now) {
            state.mark_verified(&e.name);
        }
        restored += 1;
    }
    Ok((
        Restored {
            instances: restored,
            discarded: None,
            dropped,
        },
        to_send,
    ))
}

/// Checks the instances restored from the journal against the first listing: an entry naming
/// a server id must find that server listed under the entry's name with every tag of its node
/// group; an entry without one whose name is listed must find the group's tags on that server.
/// Returns the entries dropped, each with why; entries whose server's tags could not be read
/// stay unverified for the next pass. `tags` holds the tags read per server id.
pub fn verify(
    state: &mut State,
    listed: &[crate::kamatera::Server],
    tags: &std::collections::HashMap<String, Vec<String>>,
    group_tags: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Vec<(String, String)> {
    let mut dropped = Vec::new();
    let names: Vec<String> = state.unverified();
    for name in names {
        let verdict = match state.instance(&name) {
            None => Ok(()),
            Some(inst) => check_entry(&name, inst, listed, tags, group_tags),
        };
        match verdict {
            // Tags not read this time: decided on the next pass.
            Err(None) => continue,
            Err(Some(why)) => {
                state.remove(&name);
                dropped.push((name.clone(), why));
            }
            Ok(()) => {}
        }
        state.mark_verified(&name);
    }
    dropped
}

/// One restored entry against the listing: `Ok` when it holds, `Err(Some(why))` when it does
/// not, `Err(None)` when its server's tags are not known yet.
fn check_entry(
    name: &str,
    inst: &Instance,
    listed: &[crate::kamatera::Server],
    tags: &std::collections::HashMap<String, Vec<String>>,
    group_tags: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<(), Option<String>> {
    let server = match &inst.server_id {
        Some(id) => match listed.iter().find(|s| &s.id == id) {
            Some(s) if s.name == name => s,
            Some(s) => {
                return Err(Some(format!(
                    "server {id} is listed as {}, not as this entry",
                    crate::telemetry::quoted(&s.name)
                )));
            }
            None => return Err(Some(format!("server {id} is not listed"))),
        },
        // A create that may have bought a server: nothing to check until one is listed.
        None => match listed.iter().find(|s| s.name == name) {
            Some(s) => s,
            None => return Ok(()),
        },
    };
    let want = group_tags(&inst.group).unwrap_or_default();
    match tags.get(&server.id) {
        None => Err(None),
        Some(have) if want.iter().all(|t| have.contains(t)) => Ok(()),
        Some(_) => Err(Some(format!(
            "server {} lacks the tags {} of its node group",
            server.id,
            want.join(" ")
        ))),
    }
}

fn set_aside(path: &Path, why: String) -> Restored {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let moved = std::fs::rename(path, PathBuf::from(&aside)).is_ok();
    Restored {
        instances: 0,
        dropped: Vec::new(),
        discarded: Some(if moved {
            format!("{why}; moved to {}", PathBuf::from(aside).display())
        } else {
            why
        }),
    }
}

#[cfg(test)]
mod tests;
