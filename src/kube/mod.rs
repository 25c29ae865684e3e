//! Optional Kubernetes access: what Kamatera's missing cloud controller would do to Nodes, and
//! the hibernation drain.
//!
//! - Labelling: a Node of one of the provider's servers gets the labels its group's template
//!   promises and the providerID when it has none. Labels are only added, never overwritten or
//!   removed ([`completion`] decides, from the Node as read).
//! - Node lifecycle: the Node of a server that is gone (terminated, or parked = powered off) is
//!   deleted, once its kubelet no longer reports Ready, so no NotReady ghost makes the
//!   autoscaler think the cluster unhealthy or a parked server still registered.
//! - Hibernation drains a node group: cordon, evict pods (respecting PodDisruptionBudgets:
//!   the API answers 429 while a budget forbids it), delete them only when forced.
//!
//! Node writes are read-modify-write with the Node's resourceVersion as precondition (a JSON merge
//! patch carrying `metadata.resourceVersion`; a delete carrying uid and resourceVersion
//! preconditions), retried a bounded number of times on a conflict. Where the access comes from:
//! `--kubeconfig` / `KUBECONFIG`, else the in-cluster service account, else none (the features
//! are then skipped with a warning; the autoscaler never sees an error).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// Taints the cluster-autoscaler puts on nodes it scales down.
pub const CA_TAINTS: [&str; 2] = [
    "ToBeDeletedByClusterAutoscaler",
    "DeletionCandidateOfClusterAutoscaler",
];

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot load the kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes API answered {code} for {object}: {message}")]
    Api {
        object: String,
        code: u16,
        message: String,
    },
    #[error("Kubernetes API request for {object} failed: {message}")]
    Request { object: String, message: String },
    #[error("{node} kept changing under us ({attempts} conflicting updates); giving up")]
    Conflicts { node: String, attempts: u32 },
}

/// Where the Kubernetes credentials came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--kubeconfig` or `KUBECONFIG` (may be a list of files, as kubectl reads it).
    Kubeconfig(String),
    /// The pod's service account.
    InCluster,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Kubeconfig(p) => write!(f, "kubeconfig {p}"),
            Source::InCluster => f.write_str("in-cluster service account"),
        }
    }
}

/// How hard to try when the Node changes between read and write.
#[derive(Debug, Clone, Copy)]
pub struct ConflictRetry {
    pub attempts: u32,
    pub delay: Duration,
}

impl Default for ConflictRetry {
    /// Five tries 750 ms apart: about the in-tree provider's 5 s bound.
    fn default() -> Self {
        ConflictRetry {
            attempts: 5,
            delay: Duration::from_millis(750),
        }
    }
}

/// Which server a Node must belong to before the provider writes to it: the providerID must be
/// exactly `provider_id`, or empty on a Node named like the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tie {
    pub server: String,
    pub provider_id: String,
}

impl Tie {
    /// `None` when the Node belongs to this server; otherwise why not.
    pub fn mismatch(&self, node: &Node) -> Option<String> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .unwrap_or_default();
        if current == self.provider_id || (current.is_empty() && name == self.server) {
            None
        } else if current.is_empty() {
            Some(format!(
                "node {name} has no providerID and is not named like server {}",
                self.server
            ))
        } else {
            Some(format!(
                "node {name} has providerID {current}, not {}",
                self.provider_id
            ))
        }
    }
}

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

/// A Kubernetes client limited to what the provider does with Nodes.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    nodes: Api<Node>,
    source: Source,
    cluster_url: String,
    retry: ConflictRetry,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("source", &self.source)
            .field("cluster_url", &self.cluster_url)
            .finish_non_exhaustive()
    }
}

/// Finds Kubernetes credentials: `kubeconfig` (the `--kubeconfig` flag) first, then the
/// `KUBECONFIG` variable if `use_environment`, then the in-cluster service account if
/// `use_environment`. `Ok(None)` when there is none; an error when one was named but is unusable.
pub async fn connect(
    kubeconfig: Option<&Path>,
    use_environment: bool,
) -> Result<Option<Kube>, KubeError> {
    if let Some(path) = kubeconfig {
        return Kube::from_kubeconfig_file(path).await.map(Some);
    }
    if !use_environment {
        return Ok(None);
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let shown = list.to_string_lossy().into_owned();
        let kc = Kubeconfig::from_env()
            .map_err(|e| KubeError::Kubeconfig {
                path: shown.clone(),
                message: e.to_string(),
            })?
            .ok_or_else(|| KubeError::Kubeconfig {
                path: shown.clone(),
                message: "no file".into(),
            })?;
        return Kube::from_kubeconfig(kc, Source::Kubeconfig(shown))
            .await
            .map(Some);
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return Ok(None);
    }
    let config = kube::Config::incluster().map_err(|e| KubeError::Client(e.to_string()))?;
    Kube::from_config(config, Source::InCluster).map(Some)
}

impl Kube {
    /// A client from one kubeconfig file (its current context).
    pub async fn from_kubeconfig_file(path: &Path) -> Result<Kube, KubeError> {
        let shown = path.display().to_string();
        let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Kube::from_kubeconfig(kc, Source::Kubeconfig(shown)).await
    }

    async fn from_kubeconfig(kc: Kubeconfig, source: Source) -> Result<Kube, KubeError> {
        let path = match &source {
            Source::Kubeconfig(p) => p.clone(),
            Source::InCluster => String::new(),
        };
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Kubeconfig {
                path,
                message: e.to_string(),
            })?;
        Kube::from_config(config, source)
    }

    fn from_config(mut config: kube::Config, source: Source) -> Result<Kube, KubeError> {
        // Every call here is small; never let one hang a task.
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(15));
        config.write_timeout = Some(Duration::from_secs(15));
        // Our callers retry on their own schedule; an eviction's 429 (a disruption budget) must
        // come back at once, not after the client's backoff.
        config.default_retry = false;
        let cluster_url = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))?;
        Ok(Kube {
            nodes: Api::all(client.clone()),
            client,
            source,
            cluster_url,
            retry: ConflictRetry::default(),
        })
    }

    /// Changes how conflicts are retried (tests use a short delay).
    pub fn with_retry(mut self, retry: ConflictRetry) -> Kube {
        self.retry = retry;
        self
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn cluster_url(&self) -> &str {
        &self.cluster_url
    }

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

/// What a conditional write's answer means: `done` when written, `gone` when the Node is not
/// there, `None` on a conflict (read again and retry), an error otherwise.
fn written<T, R>(
    r: Result<R, kube::Error>,
    name: &str,
    done: T,
    gone: T,
) -> Result<Option<T>, KubeError> {
    match r {
        Ok(_) => Ok(Some(done)),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Some(gone)),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(None),
        Err(e) => Err(api_error(&format!("node {name}"), e)),
    }
}

/// What a read-modify-write does with the Node it read.
enum Change<T> {
    Write(Value, T),
    Keep(T),
}

/// The data key of the journal in its ConfigMap.
pub const JOURNAL_KEY: &str = "journal.json";

/// A ConfigMap that holds the restart journal, written optimistically: each write carries the
/// resourceVersion it last read or wrote.
#[derive(Clone)]
pub struct JournalMap {
    api: Api<k8s_openapi::api::core::v1::ConfigMap>,
    pub namespace: String,
    pub name: String,
    retry: ConflictRetry,
}

impl std::fmt::Debug for JournalMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JournalMap({self})")
    }
}

impl std::fmt::Display for JournalMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

impl JournalMap {
    /// The journal text (`None` when the ConfigMap holds none yet, as the empty one the
    /// manifests ship) and the ConfigMap's resourceVersion; `None` when there is no ConfigMap.
    pub async fn read(&self) -> Result<Option<(Option<String>, String)>, KubeError> {
        let cm = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_error(&self.to_string(), e))?;
        Ok(cm.map(|cm| {
            let rv = cm.metadata.resource_version.clone().unwrap_or_default();
            let text = cm.data.and_then(|d| d.get(JOURNAL_KEY).cloned());
            (text, rv)
        }))
    }

    /// Stores `text`, conditional on `version` (the resourceVersion last read or written;
    /// `None`: the ConfigMap is created if missing). On a conflict the current version is read
    /// and the write tried again, a bounded number of times: this process is the journal's only
    /// writer, as long as `still_writer` says so (checked before every retry: a replica that
    /// lost its lease meanwhile must not write over the new holder's journal). Returns the new
    /// resourceVersion.
    pub async fn write(
        &self,
        text: &str,
        version: Option<String>,
        still_writer: &(dyn Fn() -> bool + Sync),
    ) -> Result<String, KubeError> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let mut version = version;
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            if attempt > 1 && !still_writer() {
                return Err(KubeError::Request {
                    object: self.to_string(),
                    message: "no longer this replica's to write (the lease was lost)".into(),
                });
            }
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    resource_version: version.clone(),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_string(),
                        EVENT_SOURCE.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    JOURNAL_KEY.to_string(),
                    text.to_string(),
                )])),
                ..ConfigMap::default()
            };
            let result = match &version {
                Some(_) => {
                    self.api
                        .replace(&self.name, &PostParams::default(), &cm)
                        .await
                }
                None => self.api.create(&PostParams::default(), &cm).await,
            };
            match result {
                Ok(written) => return Ok(written.metadata.resource_version.unwrap_or_default()),
                Err(kube::Error::Api(s))
                    if (s.is_conflict() || s.code == 409 || s.is_not_found())
                        && attempt < attempts =>
                {
                    // Changed (or created, or deleted) by someone else since: take the current
                    // version and write ours over it.
                    version = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .map_err(|e| api_error(&self.to_string(), e))?
                        .and_then(|cm| cm.metadata.resource_version);
                    tokio::time::sleep(self.retry.delay).await;
                }
                Err(kube::Error::Api(s)) if s.is_conflict() || s.code == 409 => break,
                Err(e) => return Err(api_error(&self.to_string(), e)),
            }
        }
        Err(KubeError::Conflicts {
            node: self.to_string(),
            attempts,
        })
    }
}

impl Kube {
    /// The journal's ConfigMap `namespace/name`.
    pub fn journal_map(&self, namespace: &str, name: &str) -> JournalMap {
        JournalMap {
            api: Api::namespaced(self.client.clone(), namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            retry: self.retry,
        }
    }
}

/// A `coordination.k8s.io` Lease held by one provider replica at a time (`--leader-elect`).
/// Expiry is judged by this process's own clock: a lease whose resourceVersion has not changed
/// for its duration, as observed here, is free (no trust in another machine's clock).
pub struct LeaseLock {
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    /// The resourceVersion last seen and when it was first seen.
    observed: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseLock({self})")
    }
}

impl std::fmt::Display for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease {}/{}", self.namespace, self.name)
    }
}

/// Who holds a lease, as far as one attempt found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// This process holds it (acquired or renewed just now).
    Held,
    /// Another holder, whose lease has not expired.
    HeldBy(String),
}

impl LeaseLock {
    /// Acquires the lease if it is free or expired, renews it if this process holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<LeaseState, KubeError> {
        use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| api_error(&self.to_string(), e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(LeaseState::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(LeaseState::HeldBy(
                    "another replica (it was just created)".into(),
                )),
                Err(e) => Err(api_error(&self.to_string(), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let expired = {
            let mut seen = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            match &*seen {
                Some((v, at)) if *v == rv => {
                    let limit = spec
                        .lease_duration_seconds
                        .map_or(self.duration, |s| Duration::from_secs(s.max(1) as u64));
                    at.elapsed() >= limit
                }
                _ => {
                    *seen = Some((rv, std::time::Instant::now()));
                    false
                }
            }
        };
        if holder != self.identity && !holder.is_empty() && !expired {
            return Ok(LeaseState::HeldBy(holder));
        }
        let taking = holder != self.identity;
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if taking {
                Some(now.clone())
            } else {
                spec.acquire_time
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(taking)),
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(LeaseState::Held),
            // Someone renewed or took it between our read and write.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(LeaseState::HeldBy(holder)),
            Err(e) => Err(api_error(&self.to_string(), e)),
        }
    }
}

impl Kube {
    /// The Lease `namespace/name`, held as `identity` for `duration` at a time.
    pub fn lease(
        &self,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(self.client.clone(), namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: std::sync::Mutex::new(None),
        }
    }
}

/// The namespace this pod runs in, from its service account (in-cluster only).
pub fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
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
        let now = Time(jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{node}.")),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                uid: Some(node.to_string()),
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
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.create(&PostParams::default(), &event)
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("event for node {node}"), e))
    }
}

/// `object` names what the request was about, e.g. `node w-1` or `pod ns/web-0`.
fn api_error(object: &str, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(s) => KubeError::Api {
            object: object.to_string(),
            code: s.code,
            message: s.message.clone(),
        },
        other => KubeError::Request {
            object: object.to_string(),
            message: other.to_string(),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: Some("1700000000".into()),
            time_added: None,
        }
    }

    fn node(taints: Vec<Taint>, unschedulable: Option<bool>) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                unschedulable,
                ..NodeSpec::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn removes_only_the_autoscalers_taints() {
        let n = node(
            vec![
                taint("dedicated", "NoSchedule"),
                taint("ToBeDeletedByClusterAutoscaler", "NoSchedule"),
                taint("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule"),
                taint("node.kubernetes.io/unreachable", "NoExecute"),
            ],
            Some(true),
        );
        let p = release_patch(&n).expect("a patch");
        let keys: Vec<&str> = p["spec"]["taints"]
            .as_array()
            .expect("taints")
            .iter()
            .map(|t| t["key"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(keys, ["dedicated", "node.kubernetes.io/unreachable"]);
        assert_eq!(p["spec"]["taints"][0]["value"], "1700000000");
        assert!(p["spec"]["unschedulable"].is_null());
        assert!(
            p["spec"]
                .as_object()
                .is_some_and(|o| o.contains_key("unschedulable"))
        );
    }

    #[test]
    fn last_taint_removed_clears_the_list() {
        let n = node(
            vec![taint("ToBeDeletedByClusterAutoscaler", "NoSchedule")],
            None,
        );
        let p = release_patch(&n).expect("a patch");
        assert!(p["spec"]["taints"].is_null());
        assert!(
            !p["spec"]
                .as_object()
                .is_some_and(|o| o.contains_key("unschedulable"))
        );
    }

    #[test]
    fn nothing_to_do_is_no_patch() {
        assert_eq!(
            release_patch(&node(vec![taint("dedicated", "NoSchedule")], Some(false))),
            None
        );
        assert_eq!(release_patch(&Node::default()), None);
    }
}
