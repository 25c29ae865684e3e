//! The state gauges exported at each scrape: sizes (configured and in force), instances by state
//! and error class, parked servers, pending commands, staleness, schedules and hibernation.

use tokio::time::Instant;

use super::{InForce, InstanceErrorClass, Phase, Provider};

impl Provider {
    /// Fills the state gauges (sizes, instances by state, errors, commands, staleness,
    /// schedules and hibernation).
    pub fn export_gauges(&self) {
        let m = self.metrics();
        m.leader.set(i64::from(self.is_leader()));
        let timed: Vec<(String, InForce, u8)> = self
            .config()
            .node_groups
            .iter()
            .filter(|g| {
                !g.schedules.is_empty() || !g.hibernate.is_empty() || self.has_hibernation(&g.name)
            })
            .map(|g| {
                let phase = self
                    .lock()
                    .hibernation(&g.name)
                    .map(|h| u8::from(&h.phase))
                    .unwrap_or(0);
                (g.name.clone(), self.in_force_for(g), phase)
            })
            .collect();
        let st = self.lock();
        m.group_size.clear();
        m.instances.clear();
        m.parked.clear();
        m.standby.clear();
        m.schedule_window.clear();
        m.hibernation_state.clear();
        m.next_transition.clear();
        m.instances_in_error.clear();
        for g in &self.config().node_groups {
            let size = |kind: &str, v: usize| {
                m.group_size
                    .get_or_create(&crate::telemetry::GroupKind {
                        group: g.name.clone(),
                        kind: kind.into(),
                    })
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            };
            size("min", g.min_size as usize);
            size("max", g.max_size as usize);
            size("target", st.target_size(&g.name));
            if let Some((_, f, phase)) = timed.iter().find(|(n, _, _)| *n == g.name) {
                // Sizes in force (schedules, hibernation) next to the configured ones.
                size("min_in_force", f.min_size as usize);
                size("max_in_force", f.max_size as usize);
                let label = crate::telemetry::Group {
                    group: g.name.clone(),
                };
                m.schedule_window
                    .get_or_create(&label)
                    .set(f.schedule.map_or(0, |i| i as i64 + 1));
                m.hibernation_state
                    .get_or_create(&label)
                    .set(i64::from(*phase));
                m.next_transition
                    .get_or_create(&label)
                    .set(f.next_change.map_or(0, |t| t.as_second()));
            }
            let pool = st.pool_counts(&g.name);
            m.parked
                .get_or_create(&crate::telemetry::Group {
                    group: g.name.clone(),
                })
                .set(i64::try_from(pool.parked).unwrap_or(0));
            let wanted = timed
                .iter()
                .find(|(n, _, _)| *n == g.name)
                .map_or(g.standby, |(_, f, _)| f.standby);
            for (state, n) in [
                ("ready", pool.standby),
                ("creating", pool.creating),
                ("wanted", wanted as usize),
            ] {
                m.standby
                    .get_or_create(&crate::telemetry::GroupState {
                        group: g.name.clone(),
                        state: state.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            for (phase, label) in [
                (Phase::Creating, "creating"),
                (Phase::Running, "running"),
                (Phase::Deleting, "deleting"),
            ] {
                let n = st
                    .group_instances(&g.name)
                    .filter(|i| i.phase() == phase)
                    .count();
                m.instances
                    .get_or_create(&crate::telemetry::GroupState {
                        group: g.name.clone(),
                        state: label.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            for (class, label) in [
                (InstanceErrorClass::OutOfResources, "out_of_resources"),
                (InstanceErrorClass::Other, "other"),
            ] {
                let n = st
                    .group_instances(&g.name)
                    .filter(|i| i.error.as_ref().is_some_and(|e| e.class == class))
                    .count();
                m.instances_in_error
                    .get_or_create(&crate::telemetry::GroupClass {
                        group: g.name.clone(),
                        class: label.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let pending: Vec<Instant> = st
            .instances()
            .filter_map(|i| i.command.as_ref().map(|c| c.since))
            .collect();
        m.pending_commands
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        m.watched_names
            .set(i64::try_from(st.watched_count()).unwrap_or(i64::MAX));
        m.oldest_pending_command_age.set(
            pending
                .iter()
                .map(|t| t.elapsed().as_secs_f64())
                .fold(0.0, f64::max),
        );
        m.staleness.set(
            st.reads
                .last_success
                .map(|t| t.elapsed().as_secs_f64())
                .unwrap_or(-1.0),
        );
        drop(st);
        m.ready.set(i64::from(self.readiness().is_ok()));
        m.journal_writable
            .set(i64::from(self.journal_trouble().is_none()));
    }
}
