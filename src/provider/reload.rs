//! Config reload: a changed cloud config, already validated as `check` validates it, is swapped
//! in between reconciles. Its identity (cluster name, name filter, providerID prefix) cannot
//! change while running: every server's membership hangs on it. A node group removed from the
//! file keeps its servers untouched: its instances stay tracked, the guard refuses any mutation
//! for a group it does not know, and the group is reported until its servers are gone or it
//! returns.

use super::*;

impl Provider {
    /// Swaps in `config` (and `client`, when the API URL, credentials or timeouts changed),
    /// between reconciles. Errors, changing nothing, when the config's identity changed.
    pub async fn reload(
        &self,
        config: CloudConfig,
        client: Option<Client>,
    ) -> std::result::Result<Reloaded, String> {
        // Between reconciles: a pass runs on one config from its start to its end.
        let _pass = self.inner.reconcile_lock.lock().await;
        let old = self.config();
        for (what, before, after) in [
            ("cluster-name", &old.cluster_name, &config.cluster_name),
            (
                "filter-name-prefix",
                &old.filter_name_prefix,
                &config.filter_name_prefix,
            ),
            (
                "provider-id-prefix",
                &old.provider_id_prefix,
                &config.provider_id_prefix,
            ),
        ] {
            if before != after {
                let why = format!(
                    "{what} cannot change while the provider runs (every server's membership hangs on it); restart to change it"
                );
                self.reload_refused(why.clone());
                return Err(why);
            }
        }
        let names = |c: &CloudConfig| -> Vec<String> {
            c.node_groups.iter().map(|g| g.name.clone()).collect()
        };
        let (before, after) = (names(&old), names(&config));
        let reloaded = Reloaded {
            added: after
                .iter()
                .filter(|n| !before.contains(n))
                .cloned()
                .collect(),
            removed: before
                .iter()
                .filter(|n| !after.contains(n))
                .cloned()
                .collect(),
            changed: config
                .node_groups
                .iter()
                .filter(|g| old.node_group(&g.name).is_some_and(|o| o != *g))
                .map(|g| g.name.clone())
                .collect(),
            new_client: client.is_some(),
        };
        {
            let mut live = self.inner.live.write().unwrap_or_else(|p| p.into_inner());
            live.config = Arc::new(config);
            if let Some(c) = client {
                live.client = c;
            }
            live.refused = None;
        }
        self.metrics().config_reload("applied");
        info!(
            added = ?reloaded.added,
            removed = ?reloaded.removed,
            changed = ?reloaded.changed,
            new_client = reloaded.new_client,
            "cloud config reloaded"
        );
        for g in &reloaded.removed {
            let servers = self.lock().group_all(g).count();
            warn!(group = %g, servers,
                "node group removed from the config: its servers are kept untouched (not scaled, not terminated) until they are gone or the group returns");
        }
        Ok(reloaded)
    }

    /// Records that the config file's latest change was refused: the config in force stays.
    /// With Kubernetes access, a Warning Event `ConfigRefused` on the provider's own Pod says so
    /// once per refused change.
    pub fn reload_refused(&self, why: String) {
        self.metrics().config_reload("refused");
        if let (Some(kube), Some((namespace, pod))) = (
            self.inner.options.kube.clone(),
            self.inner.options.own_pod.clone(),
        ) {
            let message =
                format!("the cloud config's change was refused, the previous config stays: {why}");
            tokio::spawn(async move {
                let about = crate::kube::Involved {
                    kind: "Pod",
                    namespace: Some(&namespace),
                    name: &pod,
                };
                if let Err(e) = kube.event(&about, true, "ConfigRefused", &message).await {
                    tracing::debug!(error = %e, "cannot post the event about a refused config");
                }
            });
        }
        self.inner
            .live
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .refused = Some(why);
    }

    /// Notes for `/readyz`: a refused reload, and node groups removed from the config that
    /// still have servers.
    pub(super) fn config_notes(&self) -> Vec<String> {
        let config = self.config();
        let mut notes = Vec::new();
        if let Some(why) = self
            .inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .refused
            .clone()
        {
            notes.push(format!(
                "the cloud config's latest change was refused, the previous config stays: {why}"
            ));
        }
        let st = self.lock();
        let mut orphans: Vec<(String, usize)> = Vec::new();
        for i in st.instances() {
            if config.node_group(&i.group).is_none() {
                match orphans.iter_mut().find(|(g, _)| *g == i.group) {
                    Some((_, n)) => *n += 1,
                    None => orphans.push((i.group.clone(), 1)),
                }
            }
        }
        for (g, n) in orphans {
            notes.push(format!(
                "node group {g} is not in the config any more; its {n} server(s) are kept untouched"
            ));
        }
        notes
    }
}
