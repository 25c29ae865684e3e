//! The one gate every cloud mutation passes, whoever asked for it (an RPC, the journal,
//! hibernation, the warm pool, the reconcile): [`check`] decides from the provider's evidence,
//! [`Provider::admit`] applies the decision under the state lock.
//!
//! - Power-on, power-off and terminate name a server id; the server must have been last listed
//!   carrying every tag of the instance's node group (the cluster tag and the group tag).
//!   The action must be about its instance: the server id is the one the instance tracks.
//! - A create must be for a queued instance of that node group that has no server yet (so no
//!   create is ever sent twice; a create for the standby pool is one of these too), carry a name of the provider's own pattern
//!   (`<name-prefix>-<11 hex>`: no regular-expression metacharacters, which the API would
//!   interpret), and must not take the group past its max-size (the schedule in force included),
//!   counting every server the cloud has shown with the group's tags (tracked, presumed, parked)
//!   and every create in flight.

use tracing::warn;

use super::Provider;
use super::state::{Action, CreateStatus, ErrorInfo, InstanceErrorClass, State};
use crate::config::NodeGroupConfig;

/// Why a mutation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The target server was not last listed with the group's tags.
    NotTheGroups { server_id: String, detail: String },
    /// The create's name is not one the provider makes.
    BadName(String),
    /// Sending the create would make the group hold more than max-size servers.
    OverMax { existing: usize, max: u32 },
    /// Not yet: the group is at max-size only because `leaving` deleted servers have not left
    /// yet. The create waits (still queued, no error) and is tried again each reconcile.
    NoRoomYet {
        existing: usize,
        leaving: usize,
        max: u32,
    },
    /// The instance or its node group is unknown.
    Unknown(String),
    /// The action does not fit its instance (another server, another group, a create already
    /// sent): the action is wrong, not the instance, which is left as it is.
    Mismatch(String),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotTheGroups { .. } => "not_the_groups",
            Refusal::BadName(_) => "bad_name",
            Refusal::OverMax { .. } => "over_max_size",
            Refusal::NoRoomYet { .. } => "no_room_yet",
            Refusal::Unknown(_) => "unknown",
            Refusal::Mismatch(_) => "mismatch",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotTheGroups { server_id, detail } => {
                write!(f, "server {server_id} {detail}")
            }
            Refusal::BadName(name) => write!(
                f,
                "{} is not a server name the provider makes",
                crate::telemetry::quoted(name)
            ),
            Refusal::OverMax { existing, max } => write!(
                f,
                "the node group already has {existing} servers (counting unlisted, parked and in-flight ones) and max-size is {max}"
            ),
            Refusal::NoRoomYet {
                existing,
                leaving,
                max,
            } => write!(
                f,
                "the node group has {existing} servers, {leaving} of them deleted and not gone yet, and max-size is {max}"
            ),
            Refusal::Unknown(what) | Refusal::Mismatch(what) => f.write_str(what),
        }
    }
}

/// The action's kind, for logs and metrics.
pub fn kind(action: &Action) -> &'static str {
    match action {
        Action::Create { .. } => "create",
        Action::PowerOn { .. } => "power_on",
        Action::PowerOff { .. } => "power_off",
        Action::Terminate { .. } => "terminate",
    }
}

/// Decides whether `action` may go to the cloud now. `group_of` finds a node group's config;
/// `max_size` is the group's max-size in force.
pub fn check<'c>(
    st: &State,
    action: &Action,
    group_of: &dyn Fn(&str) -> Option<(&'c NodeGroupConfig, u32)>,
) -> Result<(), Refusal> {
    match action {
        Action::Create { name, group } => {
            let (cfg, max) =
                group_of(group).ok_or_else(|| Refusal::Unknown(format!("node group {group}")))?;
            let inst = st
                .instance(name)
                .ok_or_else(|| Refusal::Unknown(format!("instance {name}")))?;
            if inst.group != *group {
                return Err(Refusal::Mismatch(format!(
                    "a create for node group {group} names an instance of node group {}",
                    inst.group
                )));
            }
            if inst.create != CreateStatus::Queued || inst.server_id.is_some() {
                return Err(Refusal::Mismatch(format!(
                    "the create of {name} is not waiting to be sent ({:?})",
                    inst.create
                )));
            }
            if !crate::kamatera::is_server_name(&cfg.server.name_prefix, name) {
                return Err(Refusal::BadName(name.clone()));
            }
            let existing = st.servers_of_group(group, name);
            if existing < max as usize {
                return Ok(());
            }
            let leaving = st.leaving_servers(group);
            // A create for the standby pool never waits for room: the pool is for spare room.
            if existing - leaving < max as usize && !inst.standby {
                return Err(Refusal::NoRoomYet {
                    existing,
                    leaving,
                    max,
                });
            }
            Err(Refusal::OverMax { existing, max })
        }
        Action::PowerOn { name, server_id }
        | Action::PowerOff { name, server_id }
        | Action::Terminate { name, server_id } => {
            let inst = st
                .instance(name)
                .ok_or_else(|| Refusal::Unknown(format!("instance {name}")))?;
            if inst.server_id.as_deref() != Some(server_id.as_str()) {
                return Err(Refusal::Mismatch(format!(
                    "server {server_id} is not the server of instance {name}"
                )));
            }
            let (cfg, _) = group_of(&inst.group)
                .ok_or_else(|| Refusal::Unknown(format!("node group {}", inst.group)))?;
            let tags = st.tags(server_id);
            let lacking: Vec<&String> = cfg
                .server
                .tags
                .iter()
                .filter(|t| !tags.is_some_and(|have| have.contains(t)))
                .collect();
            match (tags, lacking.is_empty()) {
                (Some(_), true) => Ok(()),
                (None, _) => Err(Refusal::NotTheGroups {
                    server_id: server_id.clone(),
                    detail: "was not in the last listing (or its tags could not be read)".into(),
                }),
                (Some(_), false) => Err(Refusal::NotTheGroups {
                    server_id: server_id.clone(),
                    detail: format!(
                        "was last listed without the tags {} of node group {}",
                        lacking
                            .iter()
                            .map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                        inst.group
                    ),
                }),
            }
        }
    }
}

impl Provider {
    /// Passes `action` through [`check`] under the state lock `st`. A refusal is logged and
    /// counted, and the instance is settled: a create over max-size becomes error info
    /// (`MAX_SIZE_REACHED`, the autoscaler backs the group off), anything that is not the
    /// group's is forgotten (it never was the provider's to touch).
    pub(super) fn admit(&self, st: &mut State, action: &Action) -> bool {
        if !self.is_leader() {
            // Lost the lease meanwhile: the holder carries the work on from the journal.
            warn!(
                action = kind(action),
                "not the lease holder any more: refused a cloud mutation"
            );
            self.metrics().refused_mutation(kind(action), "not_leader");
            return false;
        }
        let now = self.inner.options.clock.now();
        let manual = |group: &str| {
            st.hibernation(group)
                .map(|h| h.manual.clone())
                .unwrap_or_default()
        };
        let config = self.config();
        let config = &*config;
        let group_of = |g: &str| -> Option<(&NodeGroupConfig, u32)> {
            let cfg = config.node_group(g)?;
            let max = super::in_force::in_force(cfg, &config.timezone, now, &manual(g)).max_size;
            Some((cfg, max))
        };
        let refusal = match check(st, action, &group_of) {
            Ok(()) => return true,
            Err(Refusal::NoRoomYet { .. }) => {
                // Waits, still queued and without error: each reconcile tries it again.
                if let Action::Create { name, .. } = action {
                    st.edit(name, |inst| {
                        inst.action_in_flight = false;
                        if inst.waiting_for_room.is_none() {
                            tracing::info!(server = %name, group = %inst.group,
                                "create waits for deleted servers to leave (the group is at max-size until they do)");
                            inst.waiting_for_room = Some(tokio::time::Instant::now());
                        }
                    });
                }
                return false;
            }
            Err(r) => r,
        };
        let (name, kind) = match action {
            Action::Create { name, .. }
            | Action::PowerOn { name, .. }
            | Action::PowerOff { name, .. }
            | Action::Terminate { name, .. } => (name.clone(), kind(action)),
        };
        warn!(server = %name, action = kind, reason = %refusal, "refused a cloud mutation");
        self.metrics().refused_mutation(kind, refusal.reason());
        match (&refusal, st.contains(&name)) {
            (Refusal::OverMax { .. }, true) => {
                st.edit(&name, |inst| {
                    inst.create = CreateStatus::Rejected;
                    inst.error = Some(ErrorInfo {
                        class: InstanceErrorClass::OutOfResources,
                        code: "MAX_SIZE_REACHED",
                        message: format!("create of {name} not sent: {refusal}"),
                    });
                });
            }
            (Refusal::Mismatch(_), _) | (_, false) => {}
            (_, true) => {
                st.remove(&name);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::config::{CloudConfig, EXAMPLE_CONFIG};
    use crate::provider::state::Instance;

    fn config() -> CloudConfig {
        CloudConfig::parse("example.ini", EXAMPLE_CONFIG, &|_| None).expect("example config")
    }

    fn decide(st: &State, cfg: &CloudConfig, action: &Action) -> Result<(), Refusal> {
        check(st, action, &|g| cfg.node_group(g).map(|c| (c, c.max_size)))
    }

    /// A server of node group `general` the provider tracks, listed with the group's tags.
    fn tracked(st: &mut State, cfg: &CloudConfig, name: &str, id: &str) {
        let mut i = Instance::creating(name.into(), "general".into(), Instant::now());
        i.create = CreateStatus::Adopted;
        i.server_id = Some(id.into());
        st.insert(name.into(), i);
        let tags = cfg
            .node_group("general")
            .expect("general")
            .server
            .tags
            .clone();
        st.record_tags(id, tags, true);
    }

    #[test]
    fn a_power_or_terminate_names_its_own_instances_server() {
        let cfg = config();
        let mut st = State::default();
        tracked(&mut st, &cfg, "a", "id-a");
        tracked(&mut st, &cfg, "b", "id-b");
        let terminate = |name: &str, id: &str| Action::Terminate {
            name: name.into(),
            server_id: id.into(),
        };
        assert_eq!(decide(&st, &cfg, &terminate("a", "id-a")), Ok(()));
        // Another server of the same group, carrying the same tags: still not a's.
        assert!(matches!(
            decide(&st, &cfg, &terminate("a", "id-b")),
            Err(Refusal::Mismatch(_))
        ));
        let power_off = Action::PowerOff {
            name: "a".into(),
            server_id: "id-elsewhere".into(),
        };
        assert!(matches!(
            decide(&st, &cfg, &power_off),
            Err(Refusal::Mismatch(_))
        ));
        // Its own server, but not listed with the group's tags.
        let mut untagged = Instance::creating("c".into(), "general".into(), Instant::now());
        untagged.server_id = Some("id-c".into());
        st.insert("c".into(), untagged);
        assert!(matches!(
            decide(&st, &cfg, &terminate("c", "id-c")),
            Err(Refusal::NotTheGroups { .. })
        ));
        assert!(matches!(
            decide(&st, &cfg, &terminate("nobody", "id-a")),
            Err(Refusal::Unknown(_))
        ));
    }

    #[test]
    fn a_create_goes_out_once_for_a_queued_instance_of_its_group() {
        let cfg = config();
        let prefix = cfg
            .node_group("general")
            .expect("general")
            .server
            .name_prefix
            .clone();
        let name = crate::kamatera::new_server_name(&prefix);
        let mut st = State::default();
        st.insert(
            name.clone(),
            Instance::creating(name.clone(), "general".into(), Instant::now()),
        );
        let create = |group: &str| Action::Create {
            name: name.clone(),
            group: group.into(),
        };
        assert_eq!(decide(&st, &cfg, &create("general")), Ok(()));
        // Filed under another group: its max-size and name pattern would be the wrong ones.
        assert!(matches!(
            decide(&st, &cfg, &create("highmem")),
            Err(Refusal::Mismatch(_))
        ));
        // Already on the wire, accepted, or with a server: never sent again.
        for status in [
            CreateStatus::Sent,
            CreateStatus::Accepted,
            CreateStatus::Uncertain,
        ] {
            st.edit(&name, |i| i.create = status);
            assert!(
                matches!(
                    decide(&st, &cfg, &create("general")),
                    Err(Refusal::Mismatch(_))
                ),
                "{status:?}"
            );
        }
        st.edit(&name, |i| {
            i.create = CreateStatus::Queued;
            i.server_id = Some("id-x".into());
        });
        assert!(matches!(
            decide(&st, &cfg, &create("general")),
            Err(Refusal::Mismatch(_))
        ));
        // A name the provider does not make (the API would read it as a pattern).
        st.insert(
            ".*".into(),
            Instance::creating(".*".into(), "general".into(), Instant::now()),
        );
        assert!(matches!(
            decide(
                &st,
                &cfg,
                &Action::Create {
                    name: ".*".into(),
                    group: "general".into()
                }
            ),
            Err(Refusal::BadName(_))
        ));
    }

    /// Max-size 5, five servers: a create waits when deleted servers will make room (and only
    /// those that terminate, not those to be parked), and is refused when nothing will.
    #[test]
    fn a_create_at_max_size_waits_only_for_room_that_deletions_will_free() {
        let cfg = config();
        let mut st = State::default();
        for n in 0..5 {
            tracked(&mut st, &cfg, &format!("s{n}"), &format!("id-{n}"));
        }
        let prefix = &cfg
            .node_group("general")
            .expect("general")
            .server
            .name_prefix;
        let name = crate::kamatera::new_server_name(prefix);
        st.insert(
            name.clone(),
            Instance::creating(name.clone(), "general".into(), Instant::now()),
        );
        let create = Action::Create {
            name,
            group: "general".into(),
        };
        assert_eq!(
            decide(&st, &cfg, &create),
            Err(Refusal::OverMax {
                existing: 5,
                max: 5
            })
        );
        // Deleted to be parked: still the group's server afterwards, no room.
        st.edit("s0", |i| i.delete(true, Instant::now()));
        assert!(matches!(
            decide(&st, &cfg, &create),
            Err(Refusal::OverMax { .. })
        ));
        // Deleted to be terminated: room comes when it leaves.
        st.edit("s1", |i| i.delete(false, Instant::now()));
        assert_eq!(
            decide(&st, &cfg, &create),
            Err(Refusal::NoRoomYet {
                existing: 5,
                leaving: 1,
                max: 5
            })
        );
        // It left (its terminate completed): the create goes.
        st.edit("s1", |i| i.mark_terminated());
        assert_eq!(decide(&st, &cfg, &create), Ok(()));
    }
}
