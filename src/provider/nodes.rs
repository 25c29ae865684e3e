//! Kamatera's node controller: what a cloud-controller-manager does for Nodes on other clouds,
//! for the servers this provider manages. Kamatera has none, so without this a cluster keeps
//! NotReady Nodes of terminated and parked servers for ever (the autoscaler counts them, stops
//! scaling once too many are unready, and takes a parked server's old Node for one already
//! registered), and new Nodes lack the labels the template promised.
//!
//! - **Gone servers lose their Nodes.** A server the provider terminated (the terminate completed
//!   or the API says the server does not exist) or parked (powered off, confirmed by the listing)
//!   is queued here by the reconcile (the queue is `State`'s, so the journal carries it over a
//!   restart); the queue is worked after every reconcile until the Node is
//!   deleted, is not there, turns out not to be the server's, or [`GONE_WINDOW`] passes. A Node
//!   whose kubelet still reports Ready is never deleted (it is tried again later). A server
//!   merely missing from listings is not gone: its Node is kept. A parked server powered on
//!   again before its Node went keeps that Node, released from the autoscaler's scale-down
//!   taints and cordon so it takes pods. After each reconcile the watcher's copy is also searched
//!   for Nodes of parked servers in the pool (parked by an earlier run, or before this
//!   controller existed): they are queued the same way.
//! - **Nodes of the provider's servers get the template's labels.** A kube-runtime watcher keeps
//!   a copy of every Node; each Node tied to a tracked server (providerID
//!   `<provider-id-prefix><server>`, or no providerID and the server's name) gets the labels of
//!   [`crate::config::NodeGroupConfig::node_labels`] it lacks and the providerID. Existing values
//!   are never changed: a Node with a conflicting value is logged and counted once, and left
//!   alone. Nodes are looked at on every watch event and again after every reconcile (a server
//!   the provider learns of later, e.g. adopted after a restart).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use super::state::{Gone, NODE_QUEUE_MAX};
use super::{Phase, Provider};
use crate::kube::{Completed, Completion, NodeDeletion, Tie, completion};

/// How long the Node of a gone server is looked for: long enough for its kubelet's last Ready
/// to expire (the node lifecycle grace is 40 s by default) and a few failed attempts.
pub const GONE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Watch failures are logged at most this often (each is counted).
const WATCH_WARN_EVERY: Duration = Duration::from_secs(60);

/// The Event posted on a deleted Node, by why its server is gone.
fn event(why: Gone) -> (&'static str, &'static str) {
    match why {
        Gone::Terminated => (
            "ServerTerminated",
            "the Kamatera server was terminated; its Node was deleted",
        ),
        Gone::Parked => (
            "Parked",
            "the Kamatera server was powered off and kept for reuse; its Node was deleted (the kubelet registers it again at power-on)",
        ),
        Gone::Vanished => (
            "ServerGone",
            "the Node was left being deleted by an earlier scale-down and its Kamatera server no longer exists; the Node was deleted",
        ),
    }
}

/// Where a queued server stands when its Node's turn comes.
enum Standing {
    /// Still terminated, or still parked: delete its Node.
    Gone,
    /// Tracked again (a parked server powered on): keep its Node, release it.
    Back,
    /// No longer parked and not tracked: no proof either way; keep its Node.
    Unknown,
    /// Terminated, yet a server of that name is still listed (the listing has not caught up,
    /// or the queue entry came from a journal that claims more than is true): not now.
    StillListed,
}

/// Node work shared by the reconcile (which learns that servers are gone) and the watcher. The
/// queue itself is `State`'s (journaled).
#[derive(Default)]
pub(super) struct NodeWork {
    /// A sweep of the queue is running.
    sweeping: bool,
    /// Servers were queued while a sweep ran (it works on the batch it took): sweep again.
    queued_meanwhile: bool,
    /// The watcher's copy of every Node; `None` until the node controller starts.
    store: Option<Store<Node>>,
    /// Nodes whose conflicting label was reported (node name, key), so it is counted once.
    conflicts: HashSet<(String, String)>,
    /// Nodes with a label write on the wire.
    labelling: HashSet<String>,
    /// Servers of stale Nodes being looked up.
    looking_up: HashSet<String>,
}

impl Provider {
    fn node_work(&self) -> std::sync::MutexGuard<'_, NodeWork> {
        self.inner
            .node_work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queues the Nodes of servers just terminated or parked for deletion and starts a sweep.
    pub(super) fn servers_gone(&self, terminated: Vec<String>, parked: Vec<String>) {
        if terminated.is_empty() && parked.is_empty() {
            return;
        }
        if self.inner.options.kube.is_none() {
            for name in &parked {
                warn!(server = %name,
                    "parked the server, but without Kubernetes access its Node stays in the cluster NotReady (delete it, or the autoscaler counts it as registered and unready)");
            }
            let m = self.metrics();
            for _ in terminated.iter().chain(&parked) {
                m.node_update("delete", "skipped");
            }
            return;
        }
        let now = Instant::now();
        {
            let mut st = self.lock();
            for name in terminated {
                st.queue_node_deletion(name, Gone::Terminated, now);
            }
            for name in parked {
                st.queue_node_deletion(name, Gone::Parked, now);
            }
        }
        self.sweep_gone_nodes();
    }

    /// Works the queue of gone servers' Nodes in the background (one sweep at a time).
    pub(super) fn sweep_gone_nodes(&self) {
        let Some(kube) = self.inner.options.kube.clone() else {
            return;
        };
        if !self.is_leader() {
            return;
        }
        let batch: Vec<(String, Gone)> = {
            let batch = self.lock().node_queue_within(GONE_WINDOW);
            let mut w = self.node_work();
            if w.sweeping {
                w.queued_meanwhile = true;
                return;
            }
            if batch.is_empty() {
                return;
            }
            w.sweeping = true;
            batch
        };
        let p = self.clone();
        tokio::spawn(async move {
            let m = p.metrics();
            for (server, why) in batch {
                let tie = p.tie(&server);
                match p.standing(&server, why) {
                    Standing::Gone => {}
                    Standing::Back => {
                        // Powered on again before its old Node could go: that Node stays, so it
                        // must lose the autoscaler's scale-down taints to take pods.
                        p.lock().forget_node_deletion(&server);
                        let node = p.node_name_for(&tie);
                        match kube.release_node(&node, &tie).await {
                            Ok(crate::kube::Released::Updated {
                                removed_taints,
                                was_unschedulable,
                            }) => {
                                info!(node = %node, server = %server, removed_taints = ?removed_taints, was_unschedulable,
                                    "parked server powered on again before its Node was deleted; released the Node from the autoscaler's scale-down");
                                m.node_update("release", "updated");
                            }
                            Ok(_) => {}
                            Err(e) => {
                                warn!(node = %node, server = %server, error = %e, kind = ?e.kind(), "cannot remove the autoscaler's taints from the Node of a server powered on again");
                                m.node_update("release", "error");
                            }
                        }
                        continue;
                    }
                    Standing::Unknown => {
                        debug!(server = %server, "parked server no longer in the pool; its Node is kept");
                        p.lock().forget_node_deletion(&server);
                        continue;
                    }
                    Standing::StillListed => {
                        debug!(server = %server, "a server of that name is still listed; its Node is kept for now");
                        continue;
                    }
                }
                let node = p.node_name_for(&tie);
                let done = match kube.delete_gone_node(&node, &tie).await {
                    Ok(NodeDeletion::Deleted) => {
                        info!(node = %node, server = %server, reason = ?why, "deleted the Node of a server that is gone");
                        m.node_update("delete", "deleted");
                        let (reason, message) = event(why);
                        let _ = kube.node_event(&node, false, reason, message).await;
                        true
                    }
                    Ok(NodeDeletion::NotFound) => {
                        m.node_update("delete", "not_found");
                        true
                    }
                    Ok(NodeDeletion::NotTied(detail)) => {
                        info!(node = %node, server = %server, %detail, "not deleting a Node that is not the server's");
                        m.node_update("delete", "not_tied");
                        true
                    }
                    Ok(NodeDeletion::StillReady) => {
                        debug!(node = %node, server = %server, "the Node still reports Ready; trying again later");
                        false
                    }
                    Err(e) => {
                        warn!(node = %node, server = %server, error = %e, kind = ?e.kind(), "cannot delete the Node of a server that is gone; trying again later");
                        m.node_update("delete", "error");
                        false
                    }
                };
                if done {
                    p.lock().forget_node_deletion(&server);
                }
            }
            let again = {
                let mut w = p.node_work();
                w.sweeping = false;
                std::mem::take(&mut w.queued_meanwhile)
            };
            if again {
                p.sweep_gone_nodes();
            }
        });
    }

    /// Where a queued server stands now.
    fn standing(&self, server: &str, why: Gone) -> Standing {
        let st = self.lock();
        if st.contains(server) {
            // Tracked again: a parked server powered on (or, for a terminated one, a name the
            // provider would never reuse; keep its Node either way).
            return Standing::Back;
        }
        match why {
            Gone::Terminated | Gone::Vanished if st.reads.listed_names.contains(server) => {
                Standing::StillListed
            }
            Gone::Terminated | Gone::Vanished => Standing::Gone,
            Gone::Parked if st.all_parked().any(|p| p.name == server) => Standing::Gone,
            // Neither tracked nor in the pool: removed outside the provider, or a listing that
            // omits it. Not proof of anything.
            Gone::Parked => Standing::Unknown,
        }
    }

    /// The name of the Node tied to `tie`'s server: found by providerID in the watcher's copy,
    /// else the server's name (a kubelet registers under the hostname, which is the server name).
    fn node_name_for(&self, tie: &Tie) -> String {
        let w = self.node_work();
        w.store
            .as_ref()
            .and_then(|store| {
                store.state().into_iter().find_map(|n| {
                    let pid = n.spec.as_ref()?.provider_id.as_deref()?;
                    (pid == tie.provider_id).then(|| n.metadata.name.clone())?
                })
            })
            .unwrap_or_else(|| tie.server.clone())
    }

    /// The tracked server a Node belongs to, with its group: by providerID (exactly the
    /// configured prefix + a tracked server's name), or by name when it has no providerID.
    /// Servers being deleted are not labelled.
    fn node_owner(&self, node: &Node) -> Option<(Tie, String)> {
        let provider_id = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .unwrap_or_default();
        let server = if provider_id.is_empty() {
            node.metadata.name.as_deref()?
        } else {
            provider_id.strip_prefix(self.config().provider_id_prefix.as_str())?
        };
        let st = self.lock();
        let inst = st.instance(server)?;
        if inst.phase() == Phase::Deleting {
            return None;
        }
        Some((self.tie(server), inst.group.clone()))
    }

    /// Adds what the Node of one of the provider's servers lacks (in the background); reports a
    /// conflicting label once. Nodes of no tracked server are never touched.
    fn label_node(&self, node: &Node) {
        let Some(kube) = self.inner.options.kube.clone() else {
            return;
        };
        if !self.is_leader() {
            return;
        }
        let Some((tie, group)) = self.node_owner(node) else {
            return;
        };
        let Ok(cfg) = self.group(&group) else {
            return;
        };
        let wanted = cfg.node_labels();
        let name = node.metadata.name.clone().unwrap_or_default();
        match completion(node, &tie, &wanted) {
            Completion::Add { .. } => {}
            Completion::Conflict { key, have, want } => {
                self.report_conflict(&name, &key, &have, &want);
                return;
            }
            Completion::Complete | Completion::NotTied(_) => return,
        }
        if !self.node_work().labelling.insert(name.clone()) {
            return; // a write is on the wire; the watcher shows its result
        }
        let p = self.clone();
        tokio::spawn(async move {
            let m = p.metrics();
            match kube.complete_node(&name, &tie, &wanted).await {
                Ok(Completed::Added {
                    labels,
                    provider_id,
                }) => {
                    info!(node = %name, server = %tie.server, group = %group, labels = ?labels, provider_id,
                        "labelled the node as its node group's template promises");
                    m.node_update("label", "updated");
                }
                Ok(Completed::Unchanged(Completion::Conflict { key, have, want })) => {
                    p.report_conflict(&name, &key, &have, &want);
                }
                Ok(Completed::Unchanged(_)) | Ok(Completed::NotFound) => {}
                Err(e) => {
                    warn!(node = %name, error = %e, kind = ?e.kind(), "cannot label the node");
                    m.node_update("label", "error");
                }
            }
            p.node_work().labelling.remove(&name);
        });
    }

    fn report_conflict(&self, node: &str, key: &str, have: &str, want: &str) {
        if self
            .node_work()
            .conflicts
            .insert((node.to_string(), key.to_string()))
        {
            warn!(
                node,
                label = key,
                have,
                want,
                "the node carries a label of its node group's template with another value; leaving the node alone"
            );
            self.metrics().node_update("label", "conflict");
        }
    }

    /// Looks at every Node the watcher knows after a reconcile: servers may have become ours
    /// (labels), and a Node may belong to a parked server of the pool (left by an earlier run, or
    /// by a provider that kept such Nodes): it is queued for deletion like any parked server's.
    fn after_reconcile(&self) {
        let nodes = match &self.node_work().store {
            Some(store) => store.state(),
            None => return,
        };
        let parked: HashSet<String> = {
            let st = self.lock();
            let prefix = self.config().provider_id_prefix.clone();
            st.all_parked()
                .map(|p| format!("{prefix}{}", p.name))
                .collect()
        };
        let mut ghosts = Vec::new();
        for node in nodes {
            self.label_node(&node);
            let provider_id = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .unwrap_or_default();
            if parked.contains(provider_id)
                && let Some(server) =
                    provider_id.strip_prefix(self.config().provider_id_prefix.as_str())
            {
                ghosts.push(server.to_string());
            }
        }
        let now = Instant::now();
        let queued = {
            let mut st = self.lock();
            let mut queued = 0;
            for server in ghosts {
                if !st.node_queued(&server) && st.node_queue().count() < NODE_QUEUE_MAX {
                    st.queue_node_deletion(server, Gone::Parked, now);
                    queued += 1;
                }
            }
            queued
        };
        if queued > 0 {
            debug!(
                nodes = queued,
                "Nodes of parked servers found; deleting them once not Ready"
            );
            self.sweep_gone_nodes();
        }
    }

    /// Nodes left "being deleted" for ever by scale-downs of an earlier run or version: a Node
    /// with the autoscaler's `ToBeDeletedByClusterAutoscaler` taint, not Ready, whose providerID
    /// names a server of one of the node groups' name patterns that this process neither tracks,
    /// nor has in a pool, nor sees in the listing. Called after each successful listing: each
    /// such server's absence is counted, and once the vanish rule makes it due (missing from
    /// enough listings over enough time) its exact name is looked up; only when that matches no
    /// server is the Node queued for deletion (tied to the server and not Ready, as every
    /// deletion). The server's id is unknown here, so the name's answer is the only one asked;
    /// a Ready Node is never deleted, and a server found by name resets the count.
    pub(super) fn find_stale_nodes(&self) {
        if self.inner.options.kube.is_none() || !self.is_leader() {
            return;
        }
        let nodes = match &self.node_work().store {
            Some(store) => store.state(),
            None => return,
        };
        let config = self.config();
        let ours = |server: &str| {
            config
                .node_groups
                .iter()
                .any(|g| crate::kamatera::is_server_name(&g.server.name_prefix, server))
        };
        let stale: Vec<String> = nodes
            .iter()
            .filter(|n| !crate::kube::is_ready(n))
            .filter(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| t.iter().any(|t| t.key == crate::kube::CA_TAINTS[0]))
            })
            .filter_map(|n| {
                let pid = n.spec.as_ref()?.provider_id.as_deref()?;
                let server = pid.strip_prefix(config.provider_id_prefix.as_str())?;
                ours(server).then(|| server.to_string())
            })
            .collect();
        let now = Instant::now();
        let rule = self.inner.options.vanish;
        let due: Vec<String> = {
            let mut st = self.lock();
            let unknown: Vec<String> = stale
                .into_iter()
                .filter(|s| {
                    !st.contains(s)
                        && !st.node_queued(s)
                        && !st.reads.listed_names.contains(s)
                        && !st.all_parked().any(|p| p.name == *s)
                })
                .collect();
            let keys: Vec<&str> = unknown.iter().map(String::as_str).collect();
            let absences = super::state::Absence::count(&mut st.reads.stale_nodes, &keys, now);
            unknown
                .iter()
                .zip(absences)
                .filter(|(_, a)| rule.due(a, now))
                .map(|(s, _)| s.clone())
                .collect()
        };
        let due: Vec<String> = {
            let mut w = self.node_work();
            due.into_iter()
                .filter(|s| w.looking_up.insert(s.clone()))
                .take(super::LOOKUPS_PER_RECONCILE)
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let p = self.clone();
        tokio::spawn(async move {
            let client = p.client();
            let lookups = &p.metrics().server_lookups;
            let label = |r: &str| super::actions::result_label(r);
            let mut gone = Vec::new();
            for server in due {
                match client.lookup_name(&server).await {
                    Ok(Some(found)) if found.is_empty() => {
                        info!(server = %server, "a Node was left being deleted and its server matches no Kamatera server; deleting the Node once it is not Ready");
                        lookups.get_or_create(&label("absent")).inc();
                        gone.push(server.clone());
                    }
                    Ok(Some(_)) => {
                        debug!(server = %server, "the server of a Node left being deleted exists; keeping the Node");
                        lookups.get_or_create(&label("exists")).inc();
                        p.lock().reads.stale_nodes.remove(&server);
                    }
                    Ok(None) => {
                        debug!(server = %server, "cannot ask for this server name exactly; keeping its Node");
                        lookups.get_or_create(&label("inconclusive")).inc();
                    }
                    Err(e) => {
                        debug!(server = %server, error = e.detail(), "cannot look up the server of a Node left being deleted");
                        lookups.get_or_create(&label("inconclusive")).inc();
                    }
                }
                p.node_work().looking_up.remove(&server);
            }
            if !gone.is_empty() {
                let now = Instant::now();
                {
                    let mut st = p.lock();
                    for server in gone {
                        st.reads.stale_nodes.remove(&server);
                        st.queue_node_deletion(server, Gone::Vanished, now);
                    }
                }
                p.persist_logged().await;
                p.sweep_gone_nodes();
            }
        });
    }

    /// Starts the node controller: the Node watcher that labels the provider's nodes and keeps
    /// the copy the gone-Node sweep finds Nodes in. `None` without Kubernetes access. Runs until
    /// the returned task is aborted.
    pub fn start_node_controller(&self) -> Option<tokio::task::JoinHandle<()>> {
        let kube = self.inner.options.kube.clone()?;
        let (store, writer) = reflector::store::<Node>();
        self.node_work().store = Some(store);
        let p = self.clone();
        Some(tokio::spawn(async move {
            let events = reflector::reflector(writer, kube.watch_nodes());
            futures_util::pin_mut!(events);
            let mut reconciles = p.subscribe_reconciles();
            let mut last_warn: Option<Instant> = None;
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                            p.label_node(&node);
                        }
                        Some(Ok(watcher::Event::Delete(node))) => {
                            let name = node.metadata.name.unwrap_or_default();
                            p.node_work().conflicts.retain(|(n, _)| *n != name);
                        }
                        Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                        Some(Err(e)) => {
                            p.metrics().node_update("watch", "error");
                            if last_warn.is_none_or(|t| t.elapsed() >= WATCH_WARN_EVERY) {
                                warn!(error = %e, "watching Nodes failed; retrying (nodes are labelled once it works)");
                                last_warn = Some(Instant::now());
                            } else {
                                debug!(error = %e, "watching Nodes failed");
                            }
                        }
                        None => break,
                    },
                    changed = reconciles.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        p.after_reconcile();
                    }
                }
            }
        }))
    }
}
