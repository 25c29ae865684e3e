//! Optional Kubernetes access: the two Node writes the warm pool and node matching need.
//!
//! - When a server is parked (powered off and kept), its Node loses the autoscaler's taints
//!   (`ToBeDeletedByClusterAutoscaler`, `DeletionCandidateOfClusterAutoscaler`) and
//!   `unschedulable`, so that the server comes back usable when it is powered on again. Other
//!   taints are kept.
//! - When the autoscaler's node matches a server only by name and has no providerID yet, the
//!   providerID is set.
//!
//! Both are read-modify-write with the Node's resourceVersion as precondition (a JSON merge patch
//! carrying `metadata.resourceVersion`), retried a bounded number of times on a conflict. Where the
//! access comes from: `--kubeconfig` / `KUBECONFIG`, else the in-cluster service account, else
//! none (the features are then skipped with a warning; the autoscaler never sees an error).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams};
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
    #[error("Kubernetes API answered {code} for node {node}: {message}")]
    Api {
        node: String,
        code: u16,
        message: String,
    },
    #[error("Kubernetes API request for node {node} failed: {message}")]
    Request { node: String, message: String },
    #[error("node {node} kept changing under us ({attempts} conflicting updates); giving up")]
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

/// What releasing a parked server's Node did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Taints removed (their keys) and/or `unschedulable` cleared.
    Updated {
        removed_taints: Vec<String>,
        was_unschedulable: bool,
    },
    /// Nothing of the autoscaler's was on the Node.
    Unchanged,
    /// No Node of that name (never joined, or already deleted).
    NotFound,
}

/// What setting a providerID did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderIdSet {
    Set,
    /// The Node already has one (the API server refuses to change it).
    AlreadySet(String),
    NotFound,
}

/// A Kubernetes client limited to what the provider does with Nodes.
#[derive(Clone)]
pub struct Kube {
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
        let cluster_url = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))?;
        Ok(Kube {
            nodes: Api::all(client),
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

    /// Removes the autoscaler's scale-down taints and `unschedulable` from the Node, keeping every
    /// other taint.
    pub async fn release_node(&self, name: &str) -> Result<Released, KubeError> {
        let result = self
            .read_modify_write(name, |node| {
                let patch = release_patch(node)?;
                let removed = node
                    .spec
                    .iter()
                    .flat_map(|s| s.taints.iter().flatten())
                    .filter(|t| CA_TAINTS.contains(&t.key.as_str()))
                    .map(|t| t.key.clone())
                    .collect();
                let was_unschedulable = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false);
                Some((
                    patch,
                    Released::Updated {
                        removed_taints: removed,
                        was_unschedulable,
                    },
                ))
            })
            .await?;
        Ok(match result {
            Outcome::Written(r) => r,
            Outcome::NoChange(_) => Released::Unchanged,
            Outcome::NotFound => Released::NotFound,
        })
    }

    /// Sets the Node's providerID if it has none.
    pub async fn set_provider_id(
        &self,
        name: &str,
        provider_id: &str,
    ) -> Result<ProviderIdSet, KubeError> {
        let result = self
            .read_modify_write(name, |node| {
                let current = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.provider_id.clone())
                    .unwrap_or_default();
                if !current.is_empty() {
                    return None;
                }
                Some((
                    json!({ "spec": { "providerID": provider_id } }),
                    ProviderIdSet::Set,
                ))
            })
            .await?;
        Ok(match result {
            Outcome::Written(r) => r,
            Outcome::NoChange(node) => {
                ProviderIdSet::AlreadySet(node.spec.and_then(|s| s.provider_id).unwrap_or_default())
            }
            Outcome::NotFound => ProviderIdSet::NotFound,
        })
    }

    /// GET the Node, let `change` build a merge patch (or `None`: nothing to do), PATCH it with
    /// the resourceVersion as precondition; on a conflict start over, a bounded number of times.
    async fn read_modify_write<T>(
        &self,
        name: &str,
        change: impl Fn(&Node) -> Option<(Value, T)>,
    ) -> Result<Outcome<T>, KubeError> {
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            let node = match self.nodes.get_opt(name).await {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(Outcome::NotFound),
                Err(e) => return Err(api_error(name, e)),
            };
            let Some((mut patch, result)) = change(&node) else {
                return Ok(Outcome::NoChange(Box::new(node)));
            };
            if let Some(rv) = &node.metadata.resource_version {
                patch["metadata"] = json!({ "resourceVersion": rv });
            }
            match self
                .nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(Outcome::Written(result)),
                Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Outcome::NotFound),
                Err(kube::Error::Api(s)) if s.is_conflict() && attempt < attempts => {
                    tracing::debug!(
                        node = name,
                        attempt,
                        "node changed while we wrote it; retrying"
                    );
                    tokio::time::sleep(self.retry.delay).await;
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => {
                    return Err(KubeError::Conflicts {
                        node: name.to_string(),
                        attempts,
                    });
                }
                Err(e) => return Err(api_error(name, e)),
            }
        }
        Err(KubeError::Conflicts {
            node: name.to_string(),
            attempts,
        })
    }
}

enum Outcome<T> {
    Written(T),
    NoChange(Box<Node>),
    NotFound,
}

fn api_error(node: &str, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(s) => KubeError::Api {
            node: node.to_string(),
            code: s.code,
            message: s.message.clone(),
        },
        other => KubeError::Request {
            node: node.to_string(),
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
