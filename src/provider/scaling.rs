//! The autoscaler's mutations: IncreaseSize, DeleteNodes and DecreaseTargetSize. Each validates,
//! changes the in-memory state (journal first for creates), starts its cloud calls as tasks and
//! returns.

use super::*;

impl Provider {
    /// Posts an Event on a Node, best effort (no Kubernetes access: nothing; failures: debug log).
    pub(super) fn node_event(
        &self,
        node: &str,
        warning: bool,
        reason: &'static str,
        message: String,
    ) {
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

    /// Adds `delta` Creating instances at once and starts their cloud calls. A scale-up takes,
    /// in this order: parked servers of the group (they have run before; with
    /// `poweron-on-scale-up` or a standby pool), then standby servers, then creates for the
    /// standby pool still under way (powered on once created), and buys the rest. Writes the
    /// intent to the journal before answering.
    pub async fn increase_size(&self, group: &str, delta: i32) -> Result<()> {
        let cfg = self.group(group)?;
        self.acting()?;
        if delta <= 0 {
            return Err(ProviderError::BadDelta {
                delta,
                positive: true,
            });
        }
        let delta = u32::try_from(delta).unwrap_or(u32::MAX);
        let now = Instant::now();
        let actions = {
            let mut st = self.lock();
            // Evaluated under the same lock as the target size, so a hibernate request cannot
            // slip in between.
            let in_force = self.in_force_for_locked(&st, &cfg);
            let target = u32::try_from(st.target_size(group)).unwrap_or(u32::MAX);
            // What the group will hold once its deletions are done and its queued creates sent:
            // an increase the guard would refuse at send time is refused now, not promised.
            // What the pool gives is there already; only purchases add to it.
            let to_come = u32::try_from(st.servers_to_come(group)).unwrap_or(u32::MAX);
            let pool = st.reusable(group, cfg.powers_on_pool());
            let claimable = st.standby_creates(group);
            let takeable = u32::try_from(pool.len() + claimable.len()).unwrap_or(u32::MAX);
            let current = target.max(to_come);
            let desired = current.saturating_add(delta.saturating_sub(takeable));
            if desired > in_force.max_size {
                let limit = if in_force.hibernate {
                    MaxLimit::Hibernating
                } else if in_force.max_size != cfg.max_size {
                    MaxLimit::Schedule
                } else if to_come > target {
                    MaxLimit::Unseen(to_come - target)
                } else {
                    MaxLimit::Config
                };
                return Err(ProviderError::OverMax {
                    current,
                    desired,
                    max: in_force.max_size,
                    limit,
                });
            }
            let mut actions = Vec::new();
            let mut taken = 0usize;
            for p in pool.into_iter().take(delta as usize) {
                let inst = Instance::from_pool(
                    p.name.clone(),
                    group.to_string(),
                    p.id.clone(),
                    CreateStatus::Reused,
                    now,
                );
                st.insert(p.name.clone(), inst);
                actions.push(Action::PowerOn {
                    name: p.name,
                    server_id: p.id,
                });
                taken += 1;
            }
            let mut claimed = Vec::new();
            for name in claimable
                .into_iter()
                .take((delta as usize).saturating_sub(taken))
            {
                // The autoscaler's from now on; a create not sent yet goes out powering on.
                st.edit(&name, |inst| {
                    inst.standby = false;
                    inst.wake = inst.create != CreateStatus::Queued;
                    inst.asked = now;
                });
                claimed.push(name);
            }
            let mut names = Vec::new();
            while names.len() + taken + claimed.len() < delta as usize {
                let name = kamatera::new_server_name(&cfg.server.name_prefix);
                if st.contains(&name) {
                    continue;
                }
                st.insert(
                    name.clone(),
                    Instance::creating(name.clone(), group.to_string(), now),
                );
                names.push(name);
            }
            if !claimed.is_empty() {
                info!(group, taken = ?claimed, "scale-up takes servers being created for the standby pool");
            }
            for name in names {
                actions.push(Action::Create {
                    name,
                    group: group.to_string(),
                });
            }
            actions
        };
        let (powered_on, created): (Vec<&Action>, Vec<&Action>) = actions
            .iter()
            .partition(|a| matches!(a, Action::PowerOn { .. }));
        let names = |list: Vec<&Action>| -> Vec<String> {
            list.into_iter()
                .map(|a| match a {
                    Action::Create { name, .. }
                    | Action::PowerOn { name, .. }
                    | Action::PowerOff { name, .. }
                    | Action::Terminate { name, .. } => name.clone(),
                })
                .collect()
        };
        let (powered_on, created) = (names(powered_on), names(created));
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
                        return Err(ProviderError::NotInGroup {
                            node: node.clone(),
                            group: group.to_string(),
                        });
                    }
                }
            }
            let cap = cfg.poweroff_on_scale_down_max_servers as usize;
            let mut parking = st.parked_or_parking(group);
            for name in names {
                let then = st.edit(&name, |inst| {
                    if inst.phase() == Phase::Deleting {
                        return Then::Nothing; // already going
                    }
                    // Only a server that exists can be parked; one still being bought is
                    // terminated if it appears. A server whose power-on failed is not trusted
                    // with a second life.
                    let park = cfg.poweroff_on_scale_down
                        && inst.server_id.is_some()
                        && inst.create != CreateStatus::Rejected
                        && !inst.power_on_failed
                        && (cap == 0 || parking < cap);
                    inst.delete(park, now);
                    if inst.parking() {
                        parking += 1;
                    }
                    let off = inst
                        .power
                        .as_ref()
                        .is_some_and(|p| *p != kamatera::Power::On);
                    match (&inst.server_id, inst.create) {
                        // Never bought (request refused, or its command failed and the API
                        // removed what it began): forget it now.
                        (_, CreateStatus::Rejected) => Then::Forget,
                        // Maybe bought, never seen: leaves the autoscaler's view (and the error
                        // gauge) now; its name stays watched, so a late server is terminated.
                        (None, CreateStatus::Uncertain) if inst.command.is_none() => Then::Watch,
                        // Listed off already and to be parked: the next reconcile parks it.
                        (Some(_), _) if inst.parking() && off => Then::Nothing,
                        (Some(server_id), _)
                            if inst.command.is_none() && !inst.action_in_flight =>
                        {
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
                            inst.action_in_flight = true;
                            Then::Nothing
                        }
                        // A create or power-on still running, or a create whose outcome is
                        // unknown: the reconcile goes on from what the listing shows.
                        _ => Then::Nothing,
                    }
                });
                match then {
                    Some(Then::Forget) => {
                        st.remove(&name);
                    }
                    Some(Then::Watch) => {
                        st.watch_uncertain(&name, now);
                    }
                    Some(Then::Nothing) | None => {}
                }
            }
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
            return Err(ProviderError::BadDelta {
                delta,
                positive: false,
            });
        }
        self.decrease_locked(group, delta)?;
        self.persist_logged().await;
        Ok(())
    }

    pub(super) fn decrease_locked(&self, group: &str, delta: i32) -> Result<()> {
        let want = delta.unsigned_abs() as usize;
        let now = Instant::now();
        let mut st = self.lock();
        let mut candidates: Vec<(u8, Instant, String)> = st
            .group_instances(group)
            .filter(|i| i.phase() == Phase::Creating && i.server_id.is_none())
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
            return Err(ProviderError::WouldDeleteExisting {
                target,
                uncreated: candidates.len(),
                delta,
            });
        }
        // Failed and unsent first, then the newest requests.
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        for (_, _, name) in candidates.into_iter().take(want) {
            let rejected = st.edit(&name, |inst| {
                let rejected = inst.create == CreateStatus::Rejected;
                if !rejected {
                    inst.delete(false, now);
                }
                rejected
            });
            match rejected {
                Some(true) => {
                    st.remove(&name);
                }
                Some(false) => {
                    st.watch_uncertain(&name, now);
                }
                None => {}
            }
        }
        info!(group, delta, "target size decreased");
        Ok(())
    }
}

/// What a scale-down does with an instance after marking it deleted.
enum Then {
    Nothing,
    /// Never bought: forgotten at once.
    Forget,
    /// Maybe bought, never seen: its name is watched.
    Watch,
}
