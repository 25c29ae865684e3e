//! One reconcile pass for all node groups (a listing, tags of new servers, the command queue),
//! the background loop that runs it, and `refresh`.

use super::actions::result_label;
use super::*;

impl Provider {
    /// Triggers a reconcile and waits for it up to `refresh_wait`. Errors only while the
    /// provider has never seen Kamatera's state (it cannot answer truthfully then).
    pub async fn refresh(&self) -> Result<()> {
        self.acting()?;
        let mut rx = self.inner.finished.subscribe();
        let seen = *rx.borrow_and_update();
        self.trigger();
        let waited = tokio::time::timeout(self.inner.options.refresh_wait, async {
            while *rx.borrow_and_update() == seen {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let st = self.lock();
        if st.reads.last_success.is_none() {
            let why = st
                .reads
                .last_error
                .clone()
                .unwrap_or_else(|| "the first listing is still in progress".into());
            return Err(ProviderError::NoStateYet { why });
        }
        if waited.is_err() {
            debug!("refresh answered before the reconcile finished");
        }
        Ok(())
    }

    /// Starts a reconcile in the background unless one is already queued behind the running one.
    pub fn trigger(&self) {
        let p = self.clone();
        if let Ok(guard) = self.inner.reconcile_lock.try_lock() {
            drop(guard);
            tokio::spawn(async move {
                let _ = p.reconcile().await;
            });
        }
        // A reconcile is running: its result is what the waiter gets.
    }

    /// Reconciles on `reconcile_interval` when nothing else did within it (Refresh), and runs
    /// the hibernation controller every `hibernation_tick` once Kamatera was read, until the
    /// returned task is aborted.
    pub fn start_background(&self) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(p.inner.options.reconcile_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut hib = tokio::time::interval(p.inner.options.hibernation_tick);
            hib.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // Only when no Refresh reconciled within the interval: an autoscaler
                        // looping every 10 s already keeps the state fresh.
                        let recent = p
                            .lock()
                            .reads
                            .last_pass
                            .is_some_and(|t| t.elapsed() < p.inner.options.reconcile_interval);
                        if !recent && p.is_leader() {
                            let _ = p.reconcile().await;
                        }
                    }
                    _ = hib.tick() => {
                        // Drains need the instances: only after the first listing.
                        if p.ready() && p.is_leader() {
                            p.control_hibernation().await;
                        }
                    }
                }
            }
        })
    }

    /// One full pass: list, read new tags, poll pending commands, apply, start follow-ups.
    pub async fn reconcile(&self) -> std::result::Result<ReconcileReport, KamateraError> {
        let guard = self.inner.reconcile_lock.lock().await;
        let started = Instant::now();
        let result = self.reconcile_locked().await;
        {
            let mut st = self.lock();
            st.reads.reconciles += 1;
            match &result {
                Ok(_) => {
                    st.reads.last_success = Some(Instant::now());
                    st.reads.last_error = None;
                }
                Err(e) => st.reads.last_error = Some(e.safe_message().to_string()),
            }
            st.reads.last_pass = Some(tokio::time::Instant::now());
        }
        // Unlock before announcing: a `refresh` that sees this announcement must be able to start
        // a new pass rather than find the lock still held and wait for nothing.
        drop(guard);
        self.inner.finished.send_modify(|n| *n += 1);
        let m = self.metrics();
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        m.reconciles
            .get_or_create(&crate::telemetry::ResultLabel {
                result: if result.is_ok() { "ok" } else { "error" }.into(),
            })
            .inc();
        match &result {
            Ok(r) => debug!(
                listed = r.listed,
                tag_reads = r.tag_reads,
                commands = r.commands_polled,
                actions = r.actions,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "reconciled"
            ),
            Err(e) => warn!(
                error = e.detail(),
                stale_s = self.staleness().map(|d| d.as_secs()),
                "reconcile failed; serving the last known state"
            ),
        }
        result
    }

    pub(super) async fn reconcile_locked(
        &self,
    ) -> std::result::Result<ReconcileReport, KamateraError> {
        if self.journal_unread() {
            // The journal may hold creates on the wire before a restart: read it before
            // anything could buy them again.
            self.restore().await;
        }
        let cfg = self.config();
        let cfg = &*cfg;
        let client = self.client();
        let client = &client;
        let mut servers = client.list_servers(&cfg.filter_name_prefix).await?;
        self.lock().reads.listed_names = servers.iter().map(|s| s.name.clone()).collect();
        // Known servers this listing lacks are presumed to exist until a lookup by id says
        // otherwise; a few are looked up per pass.
        let presumed = self.verify_missing(&mut servers).await;

        // Tags: cached per server id; servers we created carry their group's tags already.
        let (mut known, unknown) = {
            let mut st = self.lock();
            let listed_ids: std::collections::HashSet<&str> = servers
                .iter()
                .map(|s| s.id.as_str())
                .chain(presumed.iter().map(|o| o.id.as_str()))
                .collect();
            st.retain_tags(|id| listed_ids.contains(id));
            let mut known = std::collections::HashMap::new();
            let mut unknown = Vec::new();
            for s in &servers {
                // A name from the journal is only a claim: its server's tags are read.
                let claimed = st.is_unverified(&s.name);
                if let Some(t) = st.tags(&s.id).filter(|_| !claimed) {
                    known.insert(s.id.clone(), t.clone());
                } else if let Some(inst) = st.instance(&s.name)
                    && !claimed
                    && let Some(g) = cfg.node_group(&inst.group)
                {
                    // Named by this process: created with the group's tags.
                    known.insert(s.id.clone(), g.server.tags.clone());
                    st.mark_live([s.id.clone()]);
                } else {
                    unknown.push(s.id.clone());
                }
            }
            // Cached tags (a warm restart takes them from the journal) are read again, one
            // server a minute once the provider is ready, so a tag changed by hand is noticed
            // without multiplying the steady API cost.
            if st.reads.last_recheck.is_none() {
                // The clock starts with the first pass: none in the first minute.
                st.reads.last_recheck = Some(Instant::now());
            } else if st
                .reads
                .last_recheck
                .is_some_and(|t| t.elapsed() >= RECHECK_EVERY)
            {
                let ids: Vec<String> = servers.iter().map(|s| s.id.clone()).collect();
                let again = st.recheck(&ids, &unknown, 1);
                if !again.is_empty() {
                    st.reads.last_recheck = Some(Instant::now());
                }
                unknown.extend(again);
            }
            (known, unknown)
        };
        let tag_reads = unknown.len();
        let fetched = per_server(
            unknown,
            self.inner.options.max_concurrent_tag_reads,
            |id| async move { client.server_tags(&id).await },
        )
        .await;
        let mut live = Vec::new();
        for (id, r) in fetched {
            match r {
                Ok(tags) => {
                    if known.get(&id).is_some_and(|had| *had != tags) {
                        info!(server_id = %id, tags = ?tags, "a server's tags changed");
                    }
                    live.push(id.clone());
                    known.insert(id, tags);
                }
                Err(e) => {
                    warn!(server_id = %id, error = e.detail(), "cannot read server tags; skipping it this time")
                }
            }
        }

        // The journal is a claim: what it restored must match this listing before it acts.
        let restored_settled = self.verify_restored(&servers, &known);

        let pending = self.lock().pending_commands();
        let (statuses, unanswered) = self.poll(&pending).await;

        let observed: Vec<Observed> = servers
            .iter()
            .map(|s| Observed {
                id: s.id.clone(),
                name: s.name.clone(),
                power: s.power.clone(),
                tags: known.get(&s.id).cloned(),
                presumed: false,
            })
            .chain(presumed)
            .collect();
        let groups: Vec<GroupTags<'_>> = cfg
            .node_groups
            .iter()
            .map(|g| GroupTags {
                name: &g.name,
                tags: &g.server.tags,
            })
            .collect();
        let actions = {
            let mut st = self.lock();
            for o in &observed {
                if let Some(t) = &o.tags {
                    st.record_tags(&o.id, t.clone(), false);
                }
            }
            st.mark_live(live);
            let actions = st.apply(
                &observed,
                &statuses,
                &unanswered,
                &groups,
                Limits {
                    uncertain_watch: self.inner.options.uncertain_create_watch,
                    unknown_command: self.inner.options.unknown_command_limit,
                    uncertain_grace: self.inner.options.uncertain_create_grace,
                    room_wait: self.inner.options.room_wait,
                },
                Instant::now(),
            );
            let o = std::mem::take(&mut st.reads.outcomes);
            drop(st);
            let m = self.metrics();
            m.parks.inc_by(o.parked.len() as u64);
            m.gone("terminate_completed", o.gone_terminated);
            for d in &o.scaled_up {
                m.scale_up_duration.observe(d.as_secs_f64());
            }
            m.power_ons
                .get_or_create(&result_label("failed"))
                .inc_by(o.power_ons_failed);
            for name in &o.parked {
                info!(server = %name, "parked: powered off and kept for reuse");
            }
            for name in &o.standby_ready {
                info!(server = %name, "standby: created powered off, ready in the pool");
            }
            m.standby_refills
                .get_or_create(&result_label("ready"))
                .inc_by(o.standby_ready.len() as u64);
            m.standby_refills
                .get_or_create(&result_label("failed"))
                .inc_by(o.standby_failed.len() as u64);
            if !o.standby_failed.is_empty() {
                let now = Instant::now();
                let mut st = self.lock();
                for g in &o.standby_failed {
                    warn!(group = %g, retry_s = self.inner.options.standby_retry.as_secs(),
                        "a create for the standby pool bought nothing; the pool buys again after a pause");
                    st.reads.standby_failed_at.insert(g.clone(), now);
                }
            }
            self.servers_gone(o.gone, o.parked);
            m.creates
                .get_or_create(&result_label("failed"))
                .inc_by(o.creates_failed);
            m.creates
                .get_or_create(&result_label("cancelled"))
                .inc_by(o.creates_cancelled);
            m.deletes
                .get_or_create(&result_label("completed"))
                .inc_by(o.deletes_completed);
            m.deletes
                .get_or_create(&result_label("failed"))
                .inc_by(o.deletes_failed);
            actions
        };
        let report = ReconcileReport {
            listed: servers.len(),
            tag_reads,
            commands_polled: pending.len(),
            actions: actions.len(),
        };
        for a in actions {
            self.spawn(a);
        }
        if restored_settled {
            // Work the journal restored, verified now, and checked by the guard against the
            // state this pass built.
            let deferred = std::mem::take(&mut self.lock().reads.deferred);
            for a in deferred {
                self.spawn(a);
            }
            // The standby pool is topped up (or trimmed) only on a state the journal's claims
            // were checked against: a restart never buys what it already has.
            for a in self.tend_standby() {
                self.spawn(a);
            }
        }
        // Nodes of gone servers that could not be deleted yet (still Ready, API errors).
        self.sweep_gone_nodes();
        // Nodes an earlier run left being deleted, whose servers this one never knew.
        self.find_stale_nodes();
        self.persist_logged().await;
        Ok(report)
    }

    /// Sorts the known servers a listing lacks. Those the [`VanishRule`] makes due (missing
    /// from enough listings over enough time) are looked up, up to [`LOOKUPS_PER_RECONCILE`]
    /// per pass, longest missing first. A lookup that gets a sign of absence makes the server
    /// gone (left out of what is returned, so the listing's absence now counts); one that finds
    /// it adds it to `servers` (the listing omitted it); the rest are returned as presumed:
    /// their last known state is kept. A listing that lacks at least half of the known servers (two or more) is
    /// suspect: counted, and warned about once until a listing is trusted again.
    pub(super) async fn verify_missing(
        &self,
        servers: &mut Vec<kamatera::Server>,
    ) -> Vec<Observed> {
        let now = Instant::now();
        let (mut missing, known) = {
            let mut st = self.lock();
            let listed: std::collections::HashSet<&str> =
                servers.iter().map(|s| s.id.as_str()).collect();
            st.missing_known(&listed, now)
        };
        // Servers this provider is terminating are expected to leave: they never make a
        // listing look suspect.
        let unexpected = missing.iter().filter(|m| !m.expected).count();
        let suspect = unexpected >= 2 && unexpected * 2 >= known;
        {
            let mut st = self.lock();
            if suspect {
                self.metrics().suspect_listings.inc();
                if !st.reads.suspect_listing {
                    warn!(
                        missing = unexpected,
                        known,
                        "the Kamatera listing lacks most known servers; keeping their last known state until lookups confirm they are gone"
                    );
                }
            } else if st.reads.suspect_listing {
                info!("the Kamatera listing is complete again");
            }
            st.reads.suspect_listing = suspect;
        }
        let rule = self.inner.options.vanish;
        missing.sort_by_key(|m| m.absence.since);
        let names: std::collections::HashMap<String, String> = missing
            .iter()
            .filter(|m| rule.due(&m.absence, now))
            .take(LOOKUPS_PER_RECONCILE)
            .map(|m| (m.observed.id.clone(), m.observed.name.clone()))
            .collect();
        let client = self.client();
        let client = &client;
        let names = &names;
        let answers = per_server(
            names.keys().cloned().collect(),
            LOOKUPS_PER_RECONCILE,
            |id| async move {
                let name = names.get(&id).map(String::as_str).unwrap_or_default();
                client.lookup_server(&id, name).await
            },
        )
        .await;
        let mut gone = Vec::new();
        let lookups = &self.metrics().server_lookups;
        for (id, answer) in answers {
            match answer {
                Ok(kamatera::Lookup::Absent(sign)) => {
                    info!(server_id = %id, evidence = sign.as_str(), "a server missing from the listings does not exist any more");
                    lookups.get_or_create(&result_label("absent")).inc();
                    self.metrics().gone(sign.as_str(), 1);
                    gone.push(id);
                }
                Ok(kamatera::Lookup::Exists(server)) => {
                    debug!(server = %server.name, server_id = %id, "the listing omitted a server that exists");
                    lookups.get_or_create(&result_label("exists")).inc();
                    servers.push(server);
                }
                Err(e) => {
                    lookups.get_or_create(&result_label("inconclusive")).inc();
                    debug!(server_id = %id, error = e.detail(), "cannot look up a server missing from the listings; presuming it exists")
                }
            }
        }
        missing
            .into_iter()
            .map(|m| m.observed)
            .filter(|o| !gone.contains(&o.id) && !servers.iter().any(|s| s.id == o.id))
            .collect()
    }

    /// Polls commands, one id per request and a bounded number at once, as every real client
    /// does (a batch fails whole on the first command the upstream does not report yet).
    /// Returns the statuses and the ids the API answered without reporting (not started yet,
    /// or unknown: they count toward the unknown-command limit); ids whose poll failed are in
    /// neither and are polled again next time.
    pub(super) async fn poll(&self, pending: &[String]) -> (Vec<CommandStatus>, Vec<String>) {
        let client = self.client();
        let client = &client;
        let answers = per_server(
            pending.to_vec(),
            self.inner.options.max_concurrent_requests,
            |id| async move { client.command_status(&id).await },
        )
        .await;
        let mut statuses = Vec::new();
        let mut unreported = Vec::new();
        let mut failed = 0;
        let mut last_error = None;
        for (id, r) in answers {
            match r {
                Ok(kamatera::Polled::Status(s)) => statuses.push(s),
                Ok(kamatera::Polled::Unreported) => unreported.push(id),
                Err(e) => {
                    failed += 1;
                    last_error = Some(e);
                }
            }
        }
        if let Some(e) = last_error {
            warn!(
                failed,
                polled = pending.len(),
                error = e.detail(),
                "cannot poll some commands; trying again next time"
            );
        }
        (statuses, unreported)
    }
}

/// One request per server id, at most `limit` in flight; each answer with its id.
async fn per_server<T, F, Fut>(ids: Vec<String>, limit: usize, request: F) -> Vec<(String, T)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures_util::stream::iter(ids)
        .map(|id| {
            let answer = request(id.clone());
            async move { (id, answer.await) }
        })
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}
