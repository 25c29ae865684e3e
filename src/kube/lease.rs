//! Leader election on a `coordination.k8s.io` Lease.

use super::*;

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
