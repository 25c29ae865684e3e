//! Where the restart journal lives and how it is read and written: a ConfigMap (in a cluster:
//! it outlives the pod; optimistic writes) or a file (local runs; atomic writes). Reading checks
//! it against the config ([`journal::restore_text`]) and, after the first listing, against
//! Kamatera ([`journal::verify`]); writing keeps the write-ahead rule for creates.

use tokio::time::Instant;

use tracing::{info, warn};

use super::{Provider, Restored, journal};
use crate::kamatera;

/// The journal's bookkeeping, under one lock: where the ConfigMap stands and why the last write
/// failed, if it did.
#[derive(Debug)]
pub(super) struct JournalStatus {
    pub(super) map: MapVersion,
    /// `None` while the journal can be written. While set, no create is sent (each one's journal
    /// write fails first) and `/readyz` says so.
    pub(super) trouble: Option<String>,
}

/// What the provider knows of its ConfigMap journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MapVersion {
    /// Not there yet (or not used): the first write creates it.
    Absent,
    /// Read or written at this resourceVersion.
    At(String),
    /// Could not be read: nothing may overwrite it, no create may be sent.
    Unread,
}

impl Provider {
    /// Loads the journal (if configured) and resumes what it holds once the first listing has
    /// verified it (see `journal::verify`): creates that were only queued are sent then; creates
    /// that were on the wire are watched, never sent again. Entries that fail the config's rules
    /// are dropped, one log line each. Call once, before the first reconcile. A ConfigMap that
    /// cannot be read is tried again before each reconcile; until then no create is sent.
    pub async fn restore(&self) -> Restored {
        let cfg = self.config();
        let cfg = &*cfg;
        let prefix_of = |g: &str| cfg.node_group(g).map(|g| g.server.name_prefix.clone());
        let (restored, to_start, place) = if let Some(map) = &self.inner.options.state_configmap {
            let read = map.read().await;
            let place = map.to_string();
            let mut status = self.journal_status();
            let version = &mut status.map;
            match read {
                Err(e) => {
                    *version = MapVersion::Unread;
                    drop(status);
                    warn!(journal = %place, error = %e, "cannot read the journal; no create is sent until it is read (retried before each reconcile)");
                    return Restored {
                        discarded: Some(format!("cannot read {place}: {e}")),
                        ..Restored::default()
                    };
                }
                Ok(None) => {
                    *version = MapVersion::Absent;
                    return Restored::default();
                }
                Ok(Some((None, rv))) => {
                    // The ConfigMap exists (the manifests ship it empty): written in place.
                    *version = MapVersion::At(rv);
                    return Restored::default();
                }
                Ok(Some((Some(text), rv))) => {
                    *version = MapVersion::At(rv);
                    drop(status);
                    let mut st = self.lock();
                    match journal::restore_text(
                        &text,
                        &cfg.cluster_name,
                        &prefix_of,
                        &mut st,
                        Instant::now(),
                    ) {
                        Ok((r, a)) => (r, a, place),
                        Err(why) => (
                            Restored {
                                discarded: Some(format!("{why} (the next write replaces it)")),
                                ..Restored::default()
                            },
                            Vec::new(),
                            place,
                        ),
                    }
                }
            }
        } else if let Some(path) = &self.inner.options.state_file {
            let mut st = self.lock();
            let (r, a) =
                journal::restore(path, &cfg.cluster_name, &prefix_of, &mut st, Instant::now());
            (r, a, path.display().to_string())
        } else {
            return Restored::default();
        };
        match &restored.discarded {
            Some(why) => {
                warn!(journal = %place, "ignoring the journal: {why}; starting from Kamatera's listing")
            }
            None if restored.instances > 0 => info!(
                journal = %place,
                instances = restored.instances,
                resume = to_start.len(),
                "resumed in-flight work from the journal"
            ),
            None => {}
        }
        for why in &restored.dropped {
            warn!(journal = %place, "dropped a state file entry: {why}");
            self.metrics().refused_mutation("journal", "invalid_entry");
        }
        self.lock().reads.deferred.extend(to_start);
        restored
    }

    /// The journal's bookkeeping (a leaf lock: nothing else is taken while it is held).
    fn journal_status(&self) -> std::sync::MutexGuard<'_, JournalStatus> {
        self.inner
            .journal_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn journal_unread(&self) -> bool {
        self.journal_status().map == MapVersion::Unread
    }

    /// Checks what the journal restored against the listing (after the first listing, and
    /// again for entries whose tags could not be read). True once nothing restored is left
    /// unverified: the work the journal deferred may start.
    pub(super) fn verify_restored(
        &self,
        servers: &[kamatera::Server],
        tags: &std::collections::HashMap<String, Vec<String>>,
    ) -> bool {
        let cfg = self.config();
        let cfg = &*cfg;
        let (dropped, settled) = {
            let mut st = self.lock();
            if st.all_verified() {
                (Vec::new(), true)
            } else {
                let dropped = journal::verify(&mut st, servers, tags, &|g| {
                    cfg.node_group(g).map(|g| g.server.tags.clone())
                });
                (dropped, st.all_verified())
            }
        };
        for (name, why) in &dropped {
            warn!(server = %name, "dropped a state file entry that the listing contradicts: {why}");
            self.metrics().refused_mutation("journal", "contradicted");
        }
        settled
    }

    /// Writes the journal if the in-flight work changed since the last write (coalesced, off
    /// the runtime's threads; an idle provider writes nothing): to its ConfigMap, conditional on
    /// the version last read or written, or atomically to its file. No-op without either.
    pub async fn persist(&self) -> std::result::Result<(), journal::JournalError> {
        let map = self.inner.options.state_configmap.as_ref();
        let path = self.inner.options.state_file.clone();
        if map.is_none() && path.is_none() {
            return Ok(());
        }
        let mut written = self.inner.journal.lock().await;
        if self.journal_unread() {
            drop(written);
            let e = journal::JournalError::Unread;
            self.note_journal(Some(&e));
            return Err(e);
        }
        if !self.is_leader() {
            // The journal is the holder's: a replica standing by never overwrites it (not a
            // trouble of the journal's).
            return Err(journal::JournalError::NotLeader);
        }
        let (version, text) = {
            let st = self.lock();
            if written.1.is_some() && st.version() <= written.0 {
                return Ok(());
            }
            (
                st.version(),
                journal::render(&self.config().cluster_name, &st),
            )
        };
        if written.1.as_deref() == Some(text.as_str()) {
            written.0 = version;
            return Ok(());
        }
        let result = if let Some(map) = map {
            let at = match &self.journal_status().map {
                MapVersion::At(rv) => Some(rv.clone()),
                _ => None,
            };
            match map.write(&text, at, &|| self.is_leader()).await {
                Ok(rv) => {
                    self.journal_status().map = MapVersion::At(rv);
                    Ok(())
                }
                Err(e) => Err(journal::JournalError::Kube(e)),
            }
        } else if let Some(path) = path {
            let to_write = text.clone();
            tokio::task::spawn_blocking(move || journal::write_atomic(&path, &to_write))
                .await
                .unwrap_or_else(|e| {
                    Err(journal::JournalError::Write {
                        path: String::new(),
                        error: std::io::Error::other(e.to_string()),
                    })
                })
        } else {
            Ok(())
        };
        if result.is_ok() {
            *written = (version, Some(text));
        }
        drop(written);
        self.metrics()
            .journal_writes
            .get_or_create(&crate::telemetry::ResultLabel {
                result: if result.is_ok() { "ok" } else { "failed" }.into(),
            })
            .inc();
        self.note_journal(result.as_ref().err());
        result
    }

    /// Why the journal could not be written at the last try, if it could not.
    pub fn journal_trouble(&self) -> Option<String> {
        self.journal_status().trouble.clone()
    }

    /// The one rule for a journal that cannot be written, whatever the cause (a directory, a
    /// read-only or full disk, an unreachable ConfigMap): an episode starts with the first
    /// failed write (one warning) and ends with the next write that succeeds (one line). Meanwhile no create is sent: each one's write-ahead fails.
    fn note_journal(&self, error: Option<&journal::JournalError>) {
        let mut status = self.journal_status();
        let trouble = &mut status.trouble;
        match (error, trouble.is_some()) {
            (Some(e), false) => {
                warn!(error = %e, "cannot write the journal; no create is sent until it can be (retried each reconcile)");
                *trouble = Some(e.to_string());
            }
            (Some(e), true) => *trouble = Some(e.to_string()),
            (None, true) => {
                info!("the journal can be written again; creates go out again");
                *trouble = None;
            }
            (None, false) => {}
        }
        // `kamatera_ca_journal_writable` is derived from this at each scrape (gauges.rs).
    }

    /// Writes the journal; a failure is [`Provider::note_journal`]'s to report.
    pub(super) async fn persist_logged(&self) {
        if let Err(e) = self.persist().await {
            tracing::debug!(error = %e, "journal not written");
        }
    }
}
