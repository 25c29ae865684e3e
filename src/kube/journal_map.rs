//! The restart journal in a ConfigMap, written optimistically.

use super::*;

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
                    timed_out: false,
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
