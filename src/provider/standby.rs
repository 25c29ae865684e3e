//! The standby controller: keeps each node group's pool of powered-off servers topped up to the
//! `standby` size in force, by buying servers that are created powered off and never booted,
//! and terminates standby servers beyond it. It runs at the end of each reconcile, on the state
//! that pass built; what to do is decided by [`State::standby_plan`], and every create and
//! terminate it starts goes through the journal and the guard like any other.

use tokio::time::Instant;

use tracing::info;

use super::Provider;
use super::actions::result_label;
use super::state::{Action, CreateStatus, Instance, StandbyWanted};
use crate::kamatera;

impl Provider {
    /// One pass over every node group of the config in force. Returns the cloud calls to start
    /// (the instances they act on are in the state already).
    pub(super) fn tend_standby(&self) -> Vec<Action> {
        let config = self.config();
        let now = Instant::now();
        let retry = self.inner.options.standby_retry;
        let mut actions = Vec::new();
        let mut st = self.lock();
        for g in &config.node_groups {
            let f = self.in_force_for_locked(&st, g);
            let may_buy = st
                .reads
                .standby_failed_at
                .get(&g.name)
                .is_none_or(|t| now.saturating_duration_since(*t) >= retry);
            let plan = st.standby_plan(
                &g.name,
                StandbyWanted {
                    servers: f.standby as usize,
                    max: f.max_size as usize,
                    // Hibernating in power-off mode: the pool is kept off, not terminated.
                    keep_excess: f.hibernate && g.poweroff_on_scale_down,
                    may_buy,
                },
            );
            if plan.create > 0 {
                info!(group = %g.name, buy = plan.create, wanted = f.standby,
                    "standby pool: buying servers, created powered off");
            }
            for _ in 0..plan.create {
                let name = loop {
                    let name = kamatera::new_server_name(&g.server.name_prefix);
                    if !st.contains(&name) {
                        break name;
                    }
                };
                let mut inst = Instance::creating(name.clone(), g.name.clone(), now);
                inst.standby = true;
                inst.action_in_flight = true;
                st.insert(name.clone(), inst);
                self.metrics()
                    .standby_refills
                    .get_or_create(&result_label("requested"))
                    .inc();
                actions.push(Action::Create {
                    name,
                    group: g.name.clone(),
                });
            }
            if !plan.trim.is_empty() {
                info!(group = %g.name, terminate = ?plan.trim.iter().map(|p| &p.name).collect::<Vec<_>>(),
                    wanted = f.standby, "standby pool: terminating standby servers beyond the pool in force");
            }
            for p in plan.trim {
                let mut inst = Instance::from_pool(
                    p.name.clone(),
                    g.name.clone(),
                    p.id.clone(),
                    CreateStatus::Adopted,
                    now,
                );
                inst.standby = true;
                inst.delete(false, now);
                st.insert(p.name.clone(), inst);
                self.metrics().standby_removed.inc();
                actions.push(Action::Terminate {
                    name: p.name,
                    server_id: p.id,
                });
            }
        }
        actions
    }
}
