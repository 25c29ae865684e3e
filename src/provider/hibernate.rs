//! Hibernation: when a group's `hibernate` window opens (or `client hibernate` asks), its nodes
//! are cordoned and drained through the Kubernetes API (evictions respect PodDisruptionBudgets;
//! after the drain timeout, `force` deletes what is left, otherwise those nodes are kept), then
//! their servers go the way of any scale-down (parked in warm-pool mode, else terminated). While
//! hibernating the group advertises min 0 / max 0; when the window closes (or `client resume`)
//! its sizes come back and the autoscaler refills it. The phase is journaled, so a restart
//! resumes a drain or keeps the group hibernating.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use tracing::{info, warn};

use super::in_force::{Manual, open_hibernate_end};
use super::state::{GroupHibernation, HibernationPhase, Phase};
use super::{NodeRef, Provider, Result};
use crate::config::DEFAULT_DRAIN_TIMEOUT;
use crate::kube::{Eviction, Kube};

/// A group's hibernation as `client status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HibernationStatus {
    pub group: String,
    /// `awake`, `draining` or `hibernating`.
    pub phase: &'static str,
    pub manual: bool,
    pub min_size: u32,
    pub max_size: u32,
    /// The `schedule` entry in force, as written.
    pub window: Option<String>,
    pub next_change: Option<jiff::Timestamp>,
    /// Nodes a drain could not empty in time; kept running.
    pub kept: Vec<String>,
    /// Parked servers: powered off after running (warm pool).
    pub parked: u32,
    /// Standby servers ready: bought for the pool, powered off, never booted.
    pub standby: u32,
    /// Creates for the standby pool under way.
    pub standby_creating: u32,
    /// The standby pool in force (parked servers count toward it).
    pub standby_wanted: u32,
}

/// How a drain ended.
#[derive(Debug, Default)]
struct Drained {
    drained: Vec<String>,
    kept: Vec<String>,
    cancelled: bool,
}

impl Provider {
    /// `client hibernate`: hibernate the group now, until `resume`.
    pub async fn hibernate(&self, group: &str, force: bool) -> Result<HibernationStatus> {
        self.group(group)?;
        {
            let mut st = self.lock();
            st.edit_hibernation(group, |h| {
                h.manual = Manual {
                    hibernate: true,
                    force,
                    resumed_until: None,
                }
            });
        }
        info!(group, force, "hibernate requested");
        self.persist_logged().await;
        self.control_hibernation().await;
        self.hibernation_status(group)
    }

    /// `client resume`: wake the group now. During a scheduled hibernate window the resume
    /// holds until that window closes.
    pub async fn resume(&self, group: &str) -> Result<HibernationStatus> {
        let g = self.group(group)?;
        let now = self.inner.options.clock.now();
        let until = open_hibernate_end(&g.hibernate, &self.config().timezone, now);
        {
            let mut st = self.lock();
            st.edit_hibernation(group, |h| {
                h.manual = Manual {
                    hibernate: false,
                    force: false,
                    resumed_until: until,
                }
            });
        }
        info!(group, until = ?until.map(|u| u.to_string()), "resume requested");
        self.persist_logged().await;
        self.control_hibernation().await;
        self.hibernation_status(group)
    }

    pub fn hibernation_status(&self, group: &str) -> Result<HibernationStatus> {
        let g = self.group(group)?;
        let f = self.in_force_for(&g);
        let (h, pool) = {
            let st = self.lock();
            let pool = st.pool_counts(group);
            (st.hibernation(group).cloned().unwrap_or_default(), pool)
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(HibernationStatus {
            group: group.to_string(),
            phase: match h.phase {
                HibernationPhase::Awake => "awake",
                HibernationPhase::Draining { .. } => "draining",
                HibernationPhase::Hibernating { .. } => "hibernating",
            },
            manual: h.manual.hibernate,
            min_size: f.min_size,
            max_size: f.max_size,
            window: f.schedule.map(|i| g.schedules[i].text.clone()),
            next_change: f.next_change,
            kept: h.kept,
            parked: count(pool.parked),
            standby: count(pool.standby),
            standby_creating: count(pool.creating),
            standby_wanted: f.standby,
        })
    }

    /// One step of the hibernation controller: starts drains whose window opened, wakes groups
    /// whose window closed. Runs every second in the background; cheap when nothing changes.
    pub async fn control_hibernation(&self) {
        let now = self.inner.options.clock.now();
        let mut wake = Vec::new();
        let mut start = Vec::new();
        for g in &self.config().node_groups {
            let f = self.in_force_for(g);
            let mut st = self.lock();
            let h = st.hibernation(&g.name).cloned().unwrap_or_default();
            match (f.hibernate, &h.phase) {
                (true, HibernationPhase::Awake) => {
                    st.edit_hibernation(&g.name, |e| {
                        e.phase = HibernationPhase::Draining { since: now }
                    });
                    start.push((g.name.clone(), f.hibernate_entry));
                }
                (true, HibernationPhase::Draining { .. }) => {
                    // After a restart: the drain task is gone; start it again.
                    if !self.draining().contains(&g.name) {
                        start.push((g.name.clone(), f.hibernate_entry));
                    }
                }
                (
                    false,
                    HibernationPhase::Draining { .. } | HibernationPhase::Hibernating { .. },
                ) => {
                    let (kept, no_manual) = st.edit_hibernation(&g.name, |e| {
                        e.phase = HibernationPhase::Awake;
                        (std::mem::take(&mut e.kept), e.manual == Manual::default())
                    });
                    // Awake and without manual controls: nothing left to remember.
                    if no_manual {
                        st.forget_hibernation(&g.name);
                    }
                    wake.push((g.name.clone(), kept));
                }
                _ => {
                    // Forget an expired resume.
                    if h.manual.resumed_until.is_some_and(|u| now >= u) {
                        let idle = st.edit_hibernation(&g.name, |e| {
                            e.manual.resumed_until = None;
                            *e == GroupHibernation::default()
                        });
                        if idle {
                            st.forget_hibernation(&g.name);
                        }
                    }
                }
            }
        }
        for (group, kept) in wake {
            info!(group = %group, "hibernation over: the group's sizes are back");
            if let Some(kube) = self.inner.options.kube.clone() {
                // Nodes a drain left cordoned (a cancelled drain, or kept ones) take pods again.
                let names: Vec<String> = {
                    let st = self.lock();
                    st.group_instances(&group)
                        .filter(|i| i.phase() != Phase::Deleting)
                        .map(|i| i.name.clone())
                        .chain(kept)
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect()
                };
                let ties: Vec<crate::kube::Tie> = names.iter().map(|n| self.tie(n)).collect();
                tokio::spawn(async move {
                    for tie in ties {
                        let n = tie.server.clone();
                        match kube.cordon(&tie, false).await {
                            Ok(crate::kube::Cordoned::Done) => {
                                let _ = kube
                                    .node_event(
                                        &n,
                                        false,
                                        "HibernationOver",
                                        "node group awake: node uncordoned",
                                    )
                                    .await;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(node = %n, error = %e, "cannot uncordon the node after hibernation")
                            }
                        }
                    }
                });
            }
        }
        for (group, entry) in start {
            let (force, timeout) = {
                let manual = self
                    .lock()
                    .hibernation(&group)
                    .map(|h| h.manual.clone())
                    .unwrap_or_default();
                match (manual.hibernate, entry) {
                    (false, Some(i)) => self
                        .config()
                        .node_group(&group)
                        .and_then(|g| g.hibernate.get(i))
                        .map(|e| (e.force, e.drain_timeout))
                        .unwrap_or((false, DEFAULT_DRAIN_TIMEOUT)),
                    _ => (manual.force, DEFAULT_DRAIN_TIMEOUT),
                }
            };
            self.draining().insert(group.clone());
            let p = self.clone();
            tokio::spawn(async move {
                p.hibernate_group(&group, force, timeout).await;
                p.draining().remove(&group);
            });
        }
        self.persist_logged().await;
    }

    fn draining(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.inner
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn wants_hibernation(&self, group: &str) -> bool {
        self.in_force(group).is_ok_and(|f| f.hibernate)
    }

    /// Drains the group's nodes and removes their servers, unless the hibernation is called off
    /// meanwhile.
    async fn hibernate_group(&self, group: &str, force: bool, timeout: Duration) {
        info!(
            group,
            force,
            timeout_s = timeout.as_secs(),
            "hibernating: draining the node group"
        );
        // Capacity not bought yet is simply cancelled.
        let (nodes, unbought) = {
            let st = self.lock();
            let nodes: Vec<String> = st
                .group_instances(group)
                .filter(|i| i.phase() != Phase::Deleting && i.server_id.is_some())
                .map(|i| i.name.clone())
                .collect();
            let unbought = st
                .group_instances(group)
                .filter(|i| i.phase() == Phase::Creating && i.server_id.is_none())
                .count();
            (nodes, unbought)
        };
        if unbought > 0
            && let Err(e) = self.decrease_locked(group, -(unbought as i32))
        {
            warn!(group, error = %e, "cannot cancel the group's pending creates");
        }

        let result = match self.inner.options.kube.clone() {
            Some(kube) => {
                self.drain(&kube, group, &nodes, Instant::now() + timeout, force)
                    .await
            }
            None if force => {
                warn!(
                    group,
                    "no Kubernetes access: hibernating without draining (force)"
                );
                Drained {
                    drained: nodes,
                    ..Drained::default()
                }
            }
            None => {
                warn!(
                    group,
                    "no Kubernetes access: cannot drain, so the servers are kept (hibernate with force=true to remove them undrained); the group stays at max-size 0"
                );
                Drained {
                    kept: nodes,
                    ..Drained::default()
                }
            }
        };
        if result.cancelled || !self.wants_hibernation(group) {
            info!(group, "hibernation called off during the drain");
            return;
        }
        if !result.drained.is_empty() {
            for n in &result.drained {
                self.node_event(
                    n,
                    false,
                    "HibernationDrained",
                    format!("node group {group} hibernates: node drained, its server removed"),
                );
            }
            let refs: Vec<NodeRef> = result
                .drained
                .iter()
                .map(|n| NodeRef {
                    provider_id: self.provider_id(n),
                    name: n.clone(),
                    group_label: String::new(),
                })
                .collect();
            if let Err(e) = self.delete_nodes(group, &refs).await {
                warn!(group, error = %e, "cannot remove the drained servers");
            }
        }
        {
            let mut st = self.lock();
            let now = self.inner.options.clock.now();
            st.edit_hibernation(group, |h| {
                if matches!(h.phase, HibernationPhase::Draining { .. }) {
                    h.phase = HibernationPhase::Hibernating { since: now };
                    h.kept = result.kept.clone();
                }
            });
        }
        self.persist_logged().await;
        if result.kept.is_empty() {
            info!(group, removed = result.drained.len(), "hibernating");
        } else {
            warn!(group, removed = result.drained.len(), kept = ?result.kept,
                "hibernating, but some nodes could not be drained in time and keep running");
        }
    }

    async fn drain(
        &self,
        kube: &Kube,
        group: &str,
        nodes: &[String],
        deadline: Instant,
        force: bool,
    ) -> Drained {
        let mut out = Drained::default();
        // A Node's pods are evicted only once its cordon established that it is the server's
        // Node; a Node whose cordon failed is tried again each round.
        let mut uncordoned: Vec<String> = nodes.to_vec();
        let mut pending: Vec<String> = Vec::new();
        // One event per blocked pod and drain, not one per retry.
        let mut reported = BTreeSet::new();
        loop {
            if !self.wants_hibernation(group) {
                out.cancelled = true;
                return out;
            }
            let mut failed = Vec::new();
            for n in uncordoned {
                match kube.cordon(&self.tie(&n), true).await {
                    Ok(crate::kube::Cordoned::NotTied(why)) => {
                        // Not this server's Node: neither cordoned nor emptied; the server goes
                        // the way of any scale-down.
                        warn!(node = %n, %why, "not draining a Node that is not the server's");
                        out.drained.push(n);
                    }
                    Ok(_) => {
                        self.node_event(
                            &n,
                            false,
                            "Hibernating",
                            format!(
                                "node group {group} hibernates: node cordoned, pods being evicted"
                            ),
                        );
                        pending.push(n);
                    }
                    Err(e) => {
                        warn!(node = %n, error = %e, "cannot cordon the node; its pods are left alone until it works");
                        failed.push(n);
                    }
                }
            }
            uncordoned = failed;
            let mut still = Vec::new();
            let mut left = Vec::new();
            for n in &pending {
                match kube.pods_to_evict(n).await {
                    Ok(pods) if pods.is_empty() => out.drained.push(n.clone()),
                    Ok(pods) => {
                        for p in pods.iter().filter(|p| !p.terminating) {
                            match kube.evict(p).await {
                                Ok(Eviction::Blocked(why)) => {
                                    info!(pod = %p, node = %n, why, "eviction blocked by a disruption budget; retrying");
                                    if reported.insert(p.to_string()) {
                                        self.node_event(
                                            n,
                                            true,
                                            "EvictionBlocked",
                                            format!(
                                                "pod {p}: {why} (retrying until the drain timeout)"
                                            ),
                                        );
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => warn!(pod = %p, error = %e, "eviction failed; retrying"),
                            }
                        }
                        still.push(n.clone());
                        left.push((n.clone(), pods));
                    }
                    Err(e) => {
                        warn!(node = %n, error = %e, "cannot list the node's pods; retrying");
                        still.push(n.clone());
                        left.push((n.clone(), Vec::new()));
                    }
                }
            }
            pending = still;
            if pending.is_empty() && uncordoned.is_empty() {
                return out;
            }
            if Instant::now() >= deadline {
                for n in std::mem::take(&mut uncordoned) {
                    // Never known to be the server's Node: kept, whatever `force` says.
                    warn!(node = %n, "drain timed out before the node could be cordoned: the node keeps running");
                    out.kept.push(n);
                }
                if force {
                    for (n, pods) in left {
                        for p in pods {
                            if let Err(e) = kube.delete_pod(&p).await {
                                warn!(pod = %p, error = %e, "cannot delete the pod");
                            }
                        }
                        warn!(node = %n, "drain timed out: remaining pods deleted (force)");
                        self.node_event(
                            &n,
                            true,
                            "HibernationForced",
                            "drain timed out: remaining pods deleted (force=true)".into(),
                        );
                        out.drained.push(n);
                    }
                } else {
                    for n in pending {
                        warn!(node = %n, "drain timed out: the node keeps running (no force)");
                        self.node_event(
                            &n,
                            true,
                            "HibernationKept",
                            "drain timed out: node kept running and uncordoned (force=false)"
                                .into(),
                        );
                        if let Err(e) = kube.cordon(&self.tie(&n), false).await {
                            warn!(node = %n, error = %e, "cannot uncordon the node");
                        }
                        out.kept.push(n);
                    }
                }
                return out;
            }
            tokio::time::sleep(self.inner.options.drain_poll).await;
        }
    }
}

impl From<&HibernationPhase> for u8 {
    fn from(p: &HibernationPhase) -> u8 {
        match p {
            HibernationPhase::Awake => 0,
            HibernationPhase::Draining { .. } => 1,
            HibernationPhase::Hibernating { .. } => 2,
        }
    }
}
