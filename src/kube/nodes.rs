//! Node writes: completing labels and providerIDs, releasing from the autoscaler's scale-down,
//! deleting a gone server's Node, cordon and drain, Events.

use super::*;

/// What completing a Node's labels would do, decided from the Node as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The labels (keys) and/or the providerID to add, as a JSON merge patch.
    Add {
        patch: Value,
        labels: Vec<String>,
        provider_id: bool,
    },
    /// The Node has every label and a providerID.
    Complete,
    /// The Node carries one of the labels with another value: it is left alone entirely.
    Conflict {
        key: String,
        have: String,
        want: String,
    },
    /// The Node does not belong to the server (see [`Tie::mismatch`]).
    NotTied(String),
}

/// What [`Kube::complete_node`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// The patch was written.
    Added {
        labels: Vec<String>,
        provider_id: bool,
    },
    /// Nothing to write: complete, conflicting or not tied (see [`Completion`]).
    Unchanged(Completion),
    NotFound,
}

/// What releasing a Node from the autoscaler's scale-down did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Taints removed (their keys) and/or `unschedulable` cleared.
    Updated {
        removed_taints: Vec<String>,
        was_unschedulable: bool,
    },
    /// Nothing of the autoscaler's was on the Node.
    Unchanged,
    /// Left alone: the Node does not belong to the server.
    NotTied(String),
    NotFound,
}

/// What deleting a gone server's Node did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeDeletion {
    Deleted,
    NotFound,
    /// Left alone: the Node does not belong to the server.
    NotTied(String),
    /// Left alone for now: its kubelet still reports Ready (a live kubelet is never cut off).
    StillReady,
}

/// The labels and providerID a Node of `tie`'s server lacks; never changes a value it has.
pub fn completion(node: &Node, tie: &Tie, wanted: &BTreeMap<String, String>) -> Completion {
    if let Some(why) = tie.mismatch(node) {
        return Completion::NotTied(why);
    }
    let have = node.metadata.labels.clone().unwrap_or_default();
    let mut add = serde_json::Map::new();
    for (key, want) in wanted {
        match have.get(key) {
            Some(v) if v == want => {}
            Some(v) => {
                return Completion::Conflict {
                    key: key.clone(),
                    have: v.clone(),
                    want: want.clone(),
                };
            }
            None => {
                add.insert(key.clone(), Value::String(want.clone()));
            }
        }
    }
    let set_id = node
        .spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .is_none_or(str::is_empty);
    if add.is_empty() && !set_id {
        return Completion::Complete;
    }
    let labels: Vec<String> = add.keys().cloned().collect();
    let mut patch = json!({});
    if !add.is_empty() {
        patch["metadata"] = json!({ "labels": add });
    }
    if set_id {
        patch["spec"] = json!({ "providerID": tie.provider_id });
    }
    Completion::Add {
        patch,
        labels,
        provider_id: set_id,
    }
}

/// True when the Node's `Ready` condition is `True` (its kubelet is heartbeating).
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

impl Kube {
    /// Adds the labels of `wanted` and the providerID that the Node `name` lacks, when the Node
    /// belongs to `tie`'s server and no label has another value (see [`completion`]).
    pub async fn complete_node(
        &self,
        name: &str,
        tie: &Tie,
        wanted: &BTreeMap<String, String>,
    ) -> Result<Completed, KubeError> {
        let result = self
            .read_modify_write(name, |node| match completion(node, tie, wanted) {
                Completion::Add {
                    patch,
                    labels,
                    provider_id,
                } => Change::Write(
                    patch,
                    Completed::Added {
                        labels,
                        provider_id,
                    },
                ),
                other => Change::Keep(Completed::Unchanged(other)),
            })
            .await?;
        Ok(result.unwrap_or(Completed::NotFound))
    }

    /// Removes the autoscaler's scale-down taints and `unschedulable` from the Node `name` of
    /// `tie`'s server, keeping every other taint: a parked server powered on again before its
    /// old Node was deleted must take pods.
    pub async fn release_node(&self, name: &str, tie: &Tie) -> Result<Released, KubeError> {
        let result = self
            .read_modify_write(name, |node| {
                if let Some(why) = tie.mismatch(node) {
                    return Change::Keep(Released::NotTied(why));
                }
                let Some(patch) = release_patch(node) else {
                    return Change::Keep(Released::Unchanged);
                };
                let spec = node.spec.as_ref();
                Change::Write(
                    patch,
                    Released::Updated {
                        removed_taints: spec
                            .iter()
                            .flat_map(|s| s.taints.iter().flatten())
                            .filter(|t| CA_TAINTS.contains(&t.key.as_str()))
                            .map(|t| t.key.clone())
                            .collect(),
                        was_unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
                    },
                )
            })
            .await?;
        Ok(result.unwrap_or(Released::NotFound))
    }

    /// Deletes the Node `name` of a server that is gone, if it belongs to `tie`'s server and its
    /// kubelet no longer reports Ready. The delete carries the Node's uid and resourceVersion as
    /// preconditions, so a Node that changed after it was checked is checked again.
    pub async fn delete_gone_node(&self, name: &str, tie: &Tie) -> Result<NodeDeletion, KubeError> {
        self.retry_conflicts(name, || async {
            let Some(node) = self.get_node(name).await? else {
                return Ok(Some(NodeDeletion::NotFound));
            };
            if let Some(why) = tie.mismatch(&node) {
                return Ok(Some(NodeDeletion::NotTied(why)));
            }
            if is_ready(&node) {
                return Ok(Some(NodeDeletion::StillReady));
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: node.metadata.uid.clone(),
                    resource_version: node.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            written(
                self.nodes.delete(name, &params).await,
                name,
                NodeDeletion::Deleted,
                NodeDeletion::NotFound,
            )
        })
        .await
    }

    /// Every Node, then every change to them: a kube-runtime watcher (list, then watch from the
    /// list's resourceVersion; a dropped watch resumes from the last version seen, an expired one
    /// lists again), with the standard backoff between failed attempts.
    pub fn watch_nodes(
        &self,
    ) -> impl futures_util::Stream<
        Item = Result<kube::runtime::watcher::Event<Node>, kube::runtime::watcher::Error>,
    > + Send
    + use<> {
        use kube::runtime::WatchStreamExt;
        kube::runtime::watcher(
            self.nodes.clone(),
            kube::runtime::watcher::Config::default(),
        )
        .default_backoff()
    }

    /// GET the Node, let `change` decide on a merge patch (or to keep the Node as it is), PATCH
    /// it with the resourceVersion as precondition; on a conflict start over, a bounded number of
    /// times. `None` when there is no such Node.
    async fn read_modify_write<T>(
        &self,
        name: &str,
        change: impl Fn(&Node) -> Change<T>,
    ) -> Result<Option<T>, KubeError> {
        self.retry_conflicts(name, || async {
            let Some(node) = self.get_node(name).await? else {
                return Ok(Some(None));
            };
            let (mut patch, result) = match change(&node) {
                Change::Write(patch, result) => (patch, result),
                Change::Keep(result) => return Ok(Some(Some(result))),
            };
            if let Some(rv) = &node.metadata.resource_version {
                patch["metadata"]["resourceVersion"] = json!(rv);
            }
            let r = self
                .nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            written(r, name, Some(result), None)
        })
        .await
    }

    async fn get_node(&self, name: &str) -> Result<Option<Node>, KubeError> {
        self.nodes
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("node {name}"), e))
    }

    /// Runs `attempt` (read the Node, decide, write conditionally) until it meets no conflict
    /// (`Ok(None)` means one), at most `retry.attempts` times, `retry.delay` apart.
    async fn retry_conflicts<T, F>(
        &self,
        name: &str,
        attempt: impl Fn() -> F,
    ) -> Result<T, KubeError>
    where
        F: std::future::Future<Output = Result<Option<T>, KubeError>>,
    {
        let attempts = self.retry.attempts.max(1);
        for n in 1..=attempts {
            if let Some(done) = attempt().await? {
                return Ok(done);
            }
            if n < attempts {
                tracing::debug!(
                    node = name,
                    attempt = n,
                    "node changed while we wrote it; retrying"
                );
                tokio::time::sleep(self.retry.delay).await;
            }
        }
        Err(KubeError::Conflicts {
            node: format!("node {name}"),
            attempts,
        })
    }
}

/// A pod a drain has to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Already being deleted: wait for it, do not evict again.
    pub terminating: bool,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What cordoning (or uncordoning) a server's Node did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cordoned {
    /// The Node is (now) as asked.
    Done,
    NotFound,
    /// Left alone: the Node does not belong to the server (see [`Tie::mismatch`]).
    NotTied(String),
}

/// What an eviction request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    Evicted,
    /// A PodDisruptionBudget does not allow it now (HTTP 429); try again later.
    Blocked(String),
    /// The pod is gone already.
    Gone,
}

impl Kube {
    /// Marks the Node of `tie`'s server (named like it) unschedulable (`on`) or schedulable
    /// again; a Node that is not the server's is left alone.
    pub async fn cordon(&self, tie: &Tie, on: bool) -> Result<Cordoned, KubeError> {
        let r = self
            .read_modify_write(&tie.server, |node| {
                if let Some(why) = tie.mismatch(node) {
                    return Change::Keep(Cordoned::NotTied(why));
                }
                let now = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                if now == on {
                    Change::Keep(Cordoned::Done)
                } else {
                    Change::Write(
                        json!({ "spec": { "unschedulable": if on { json!(true) } else { Value::Null } } }),
                        Cordoned::Done,
                    )
                }
            })
            .await?;
        Ok(r.unwrap_or(Cordoned::NotFound))
    }

    /// The pods on a node that a drain must move: not DaemonSet pods, not static (mirror) pods,
    /// not finished ones.
    pub async fn pods_to_evict(&self, node: &str) -> Result<Vec<PodRef>, KubeError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| api_error(&format!("pods on node {node}"), e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                let daemon = p
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "DaemonSet");
                let mirror = p
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
                let finished = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
                !daemon && !mirror && !finished
            })
            .map(|p| PodRef {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect())
    }

    /// Asks the API to evict a pod (the eviction honours PodDisruptionBudgets).
    pub async fn evict(&self, pod: &PodRef) -> Result<Eviction, KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.evict(&pod.name, &EvictParams::default()).await {
            Ok(_) => Ok(Eviction::Evicted),
            Err(kube::Error::Api(s)) if s.code == 429 => Ok(Eviction::Blocked(s.message.clone())),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Eviction::Gone),
            Err(e) => Err(api_error(&format!("pod {pod}"), e)),
        }
    }

    /// Deletes a pod outright (a forced drain: budgets are not asked).
    pub async fn delete_pod(&self, pod: &PodRef) -> Result<(), KubeError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.delete(&pod.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(api_error(&format!("pod {pod}"), e)),
        }
    }
}

/// Component name on the Events the provider posts.
pub const EVENT_SOURCE: &str = "kamatera-ca-provider";

impl Kube {
    /// Posts an Event about a Node (in the `default` namespace, where events of cluster-scoped
    /// objects go), so `kubectl describe node` shows what the provider did to it.
    pub async fn node_event(
        &self,
        node: &str,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        self.event(
            &Involved {
                kind: "Node",
                namespace: None,
                name: node,
            },
            warning,
            reason,
            message,
        )
        .await
    }

    /// Posts an Event about `about` (in its namespace; cluster-scoped objects' in `default`,
    /// where `kubectl describe` looks for them).
    pub async fn event(
        &self,
        about: &Involved<'_>,
        warning: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        let now = Time(jiff::Timestamp::now());
        let namespace = about.namespace.unwrap_or("default");
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", about.name)),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some(about.kind.into()),
                name: Some(about.name.to_string()),
                namespace: about.namespace.map(str::to_string),
                // A Node's uid is its name as far as `kubectl describe node` matches events.
                uid: about.namespace.is_none().then(|| about.name.to_string()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(EVENT_SOURCE.into()),
                host: None,
            }),
            reporting_component: Some(EVENT_SOURCE.into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|e| {
                api_error(
                    &format!("event for {} {}", about.kind.to_lowercase(), about.name),
                    e,
                )
            })
    }
}

/// What an Event is about: a Node (no namespace) or a namespaced object such as the provider's
/// own Pod.
#[derive(Debug, Clone, Copy)]
pub struct Involved<'a> {
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
}

/// The merge patch that removes the autoscaler's taints and `unschedulable` from `node`, keeping
/// every other taint in order; `None` when there is nothing to remove.
pub fn release_patch(node: &Node) -> Option<Value> {
    let spec = node.spec.as_ref()?;
    let taints: &[Taint] = spec.taints.as_deref().unwrap_or_default();
    let kept: Vec<&Taint> = taints
        .iter()
        .filter(|t| !CA_TAINTS.contains(&t.key.as_str()))
        .collect();
    let unschedulable = spec.unschedulable.unwrap_or(false);
    if kept.len() == taints.len() && !unschedulable {
        return None;
    }
    let mut patch = json!({ "spec": {} });
    if kept.len() != taints.len() {
        // A merge patch replaces a list whole; `null` removes the field when nothing is left.
        patch["spec"]["taints"] = if kept.is_empty() {
            Value::Null
        } else {
            serde_json::to_value(&kept).unwrap_or(Value::Null)
        };
    }
    if unschedulable {
        patch["spec"]["unschedulable"] = Value::Null;
    }
    Some(patch)
}
