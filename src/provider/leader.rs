//! Fail-over between provider replicas (`--leader-elect`): a `coordination.k8s.io` Lease that
//! one replica holds at a time. Only the holder reconciles, mutates and answers the autoscaler;
//! the others report NOT_SERVING (gRPC health) and not-ready (`/readyz`), so a Service sends
//! them nothing, and refuse every mutation.
//!
//! The holder renews every `lease_retry`; when it cannot renew for two thirds of the lease's
//! duration it stops mutating, before the lease can expire and another replica take over. A
//! replica that acquires the lease starts from the journal (in its ConfigMap, where the
//! previous holder left it), never from what it had in memory.

use std::time::Duration;

use tokio::time::Instant;

use tracing::{info, warn};

use super::Provider;
use crate::kube::LeaseState;

impl Provider {
    /// True while this process may act: it holds the Lease, or there is no leader election.
    pub fn is_leader(&self) -> bool {
        *self.inner.leader.borrow()
    }

    /// Changes whenever this process gains or loses the Lease.
    pub fn subscribe_leadership(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.leader.subscribe()
    }

    fn set_leader(&self, leader: bool) {
        self.inner.leader.send_if_modified(|l| {
            let changed = *l != leader;
            *l = leader;
            changed
        });
    }

    /// Starts competing for the Lease (with `leader_elect`); `None` without. Runs until the
    /// returned task is aborted.
    pub fn start_leader_election(&self) -> Option<tokio::task::JoinHandle<()>> {
        let lock = self.inner.options.leader_elect.clone()?;
        let period = self.inner.options.lease_retry;
        let deadline = lock.duration * 2 / 3;
        let p = self.clone();
        Some(tokio::spawn(async move {
            let mut renewed: Option<Instant> = None;
            let mut last_warn: Option<Instant> = None;
            loop {
                let attempt = tokio::time::timeout(deadline / 2, lock.try_acquire_or_renew()).await;
                match attempt {
                    Ok(Ok(LeaseState::Held)) => {
                        renewed = Some(Instant::now());
                        if !p.is_leader() {
                            info!(lease = %lock, identity = %lock.identity, "acquired the lease: taking over from the journal");
                            p.take_over().await;
                        }
                    }
                    Ok(Ok(LeaseState::HeldBy(holder))) => {
                        if p.is_leader() {
                            warn!(lease = %lock, holder = %holder, "lost the lease: standing by");
                            p.set_leader(false);
                        }
                        renewed = None;
                    }
                    Ok(Err(e)) => warn_now_and_then(&mut last_warn, &lock, &e.to_string()),
                    Err(_) => warn_now_and_then(&mut last_warn, &lock, "the API did not answer"),
                }
                if p.is_leader() && renewed.is_none_or(|t| t.elapsed() >= deadline) {
                    // Stop before the lease can expire and another replica act.
                    warn!(lease = %lock, "cannot renew the lease in time: standing by");
                    p.set_leader(false);
                }
                tokio::time::sleep(period).await;
            }
        }))
    }

    /// Becomes the acting replica: forgets what it had in memory, restores the journal the
    /// previous holder left, and reconciles.
    async fn take_over(&self) {
        // Deferred work and the loop's bookkeeping go with it.
        *self.lock() = super::state::State::default();
        *self.inner.journal.lock().await = (0, None);
        self.restore().await;
        self.set_leader(true);
        self.trigger();
    }
}

fn warn_now_and_then(last: &mut Option<Instant>, lock: &crate::kube::LeaseLock, error: &str) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        warn!(lease = %lock, error, "cannot read or renew the lease; retrying");
        *last = Some(Instant::now());
    }
}
