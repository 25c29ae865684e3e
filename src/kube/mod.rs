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

mod journal_map;
mod lease;
mod nodes;
#[cfg(test)]
mod tests;

pub use journal_map::{JOURNAL_KEY, JournalMap};
pub use lease::{LeaseLock, LeaseState};
pub use nodes::{
    Completed, Completion, Cordoned, EVENT_SOURCE, Eviction, Involved, NodeDeletion, PodRef,
    Released, completion, is_ready, release_patch,
};

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
    Request {
        object: String,
        message: String,
        /// The request ran out of time (no answer), as opposed to failing outright.
        timed_out: bool,
    },
    #[error("{node} kept changing under us ({attempts} conflicting updates); giving up")]
    Conflicts { node: String, attempts: u32 },
}

/// What a failed Kubernetes call means to its caller: retry later, fix the RBAC, re-read and
/// try again, or nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeErrorKind {
    /// No answer in time (a client timeout, or the API server's 408 / 504).
    Timeout,
    /// The credentials were refused (401).
    Unauthenticated,
    /// The service account may not do this (403): an RBAC rule is missing.
    Forbidden,
    /// The object changed since it was read (409), or kept changing.
    Conflict,
    /// The object does not exist (404).
    NotFound,
    /// Throttled (429).
    RateLimited,
    /// The API server failed (other 5xx) or could not be reached.
    Unavailable,
    /// A configuration problem (kubeconfig, client) or another answer.
    Other,
}

impl KubeError {
    pub fn kind(&self) -> KubeErrorKind {
        match self {
            KubeError::Api { code, .. } => match code {
                401 => KubeErrorKind::Unauthenticated,
                403 => KubeErrorKind::Forbidden,
                404 => KubeErrorKind::NotFound,
                408 | 504 => KubeErrorKind::Timeout,
                409 => KubeErrorKind::Conflict,
                429 => KubeErrorKind::RateLimited,
                500..=599 => KubeErrorKind::Unavailable,
                _ => KubeErrorKind::Other,
            },
            KubeError::Request { timed_out, .. } => {
                if *timed_out {
                    KubeErrorKind::Timeout
                } else {
                    KubeErrorKind::Unavailable
                }
            }
            KubeError::Conflicts { .. } => KubeErrorKind::Conflict,
            KubeError::Kubeconfig { .. } | KubeError::Client(_) => KubeErrorKind::Other,
        }
    }
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

/// The namespace this pod runs in, from its service account (in-cluster only).
/// This process's own Pod, for Events about the provider itself: its name from `POD_NAME`
/// (the downward API), else `HOSTNAME` or the kernel's host name (a Pod's host name is its
/// name); its namespace from `POD_NAMESPACE`, else the service account's, else `default`.
/// `None` when no name can be found.
pub fn own_pod() -> Option<(String, String)> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let name = env("POD_NAME").or_else(|| env("HOSTNAME")).or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })?;
    let namespace = env("POD_NAMESPACE")
        .or_else(pod_namespace)
        .unwrap_or_else(|| "default".into());
    Some((namespace, name))
}

pub fn pod_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
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
            timed_out: timed_out(&other),
            message: other.to_string(),
        },
    }
}

/// Whether an error, or any of its causes, is a timeout (an I/O timeout, or the client's own
/// deadline, whose error says it elapsed or timed out).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        let text = c.to_string().to_ascii_lowercase();
        if text.contains("timed out") || text.contains("elapsed") || text.contains("timeout") {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    fn api(code: u16) -> KubeError {
        let mut status = kube::core::Status::failure("denied", "Reason");
        status.code = code;
        api_error("node w-1", kube::Error::Api(status.boxed()))
    }

    #[test]
    fn a_caller_tells_a_timeout_from_a_403_from_a_conflict() {
        assert_eq!(api(403).kind(), KubeErrorKind::Forbidden);
        assert_eq!(api(401).kind(), KubeErrorKind::Unauthenticated);
        assert_eq!(api(409).kind(), KubeErrorKind::Conflict);
        assert_eq!(api(404).kind(), KubeErrorKind::NotFound);
        assert_eq!(api(429).kind(), KubeErrorKind::RateLimited);
        assert_eq!(api(504).kind(), KubeErrorKind::Timeout);
        assert_eq!(api(500).kind(), KubeErrorKind::Unavailable);
        let timeout = api_error(
            "node w-1",
            kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "read",
            ))),
        );
        assert_eq!(timeout.kind(), KubeErrorKind::Timeout);
        let refused = api_error(
            "node w-1",
            kube::Error::Service(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connect",
            ))),
        );
        assert_eq!(refused.kind(), KubeErrorKind::Unavailable);
        assert_eq!(
            KubeError::Conflicts {
                node: "w-1".into(),
                attempts: 5
            }
            .kind(),
            KubeErrorKind::Conflict
        );
    }
}
