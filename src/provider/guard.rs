//! The one gate every cloud mutation passes, whoever asked for it (an RPC, the journal,
//! hibernation, the warm pool, the reconcile): [`check`] decides from the provider's evidence,
//! [`Provider::admit`] applies the decision under the state lock.
//!
//! - Power-on, power-off and terminate name a server id; the server must have been last listed
//!   carrying every tag of the instance's node group (the cluster tag and the group tag).
//! - A create must carry a name of the provider's own pattern (`<name-prefix>-<11 hex>`: no
//!   regular-expression metacharacters, which the API would interpret), and must not take the
//!   group past its max-size (the schedule in force included), counting every server the cloud
//!   has shown with the group's tags (tracked, presumed, parked) and every create in flight.

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
    /// The instance or its node group is unknown.
    Unknown(String),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NotTheGroups { .. } => "not_the_groups",
            Refusal::BadName(_) => "bad_name",
            Refusal::OverMax { .. } => "over_max_size",
            Refusal::Unknown(_) => "unknown",
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
            Refusal::Unknown(what) => f.write_str(what),
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
            if !crate::kamatera::is_server_name(&cfg.server.name_prefix, name) {
                return Err(Refusal::BadName(name.clone()));
            }
            let existing = st.servers_of_group(group, name);
            if existing + 1 > max as usize {
                return Err(Refusal::OverMax { existing, max });
            }
            Ok(())
        }
        Action::PowerOn { name, server_id }
        | Action::PowerOff { name, server_id }
        | Action::Terminate { name, server_id } => {
            let inst = st
                .instance(name)
                .ok_or_else(|| Refusal::Unknown(format!("instance {name}")))?;
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
        let config = &self.inner.config;
        let group_of = |g: &str| -> Option<(&NodeGroupConfig, u32)> {
            let cfg = config.node_group(g)?;
            let max = super::in_force::in_force(cfg, &config.timezone, now, &manual(g)).max_size;
            Some((cfg, max))
        };
        let Err(refusal) = check(st, action, &group_of) else {
            return true;
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
            (_, true) => {
                st.remove(&name);
            }
            (_, false) => {}
        }
        false
    }
}
