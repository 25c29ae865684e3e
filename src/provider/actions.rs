//! Cloud calls as tasks: create, power on/off, terminate, each under the request limit, with
//! its outcome recorded back into the state.

use super::*;

impl Provider {
    /// Runs one cloud call as a task, under the request limit, and records its outcome.
    pub(super) fn spawn(&self, action: Action) {
        let p = self.clone();
        tokio::spawn(async move {
            let _permit = p.inner.requests.clone().acquire_owned().await;
            p.run(action).await;
        });
    }

    pub(super) async fn run(&self, action: Action) {
        let client = self.client();
        let client = &client;
        if let Action::PowerOn { server_id, .. }
        | Action::PowerOff { server_id, .. }
        | Action::Terminate { server_id, .. } = &action
        {
            self.read_tags_before_mutation(server_id).await;
        }
        let admitted = {
            let mut st = self.lock();
            if let Action::Create { name, .. } = &action {
                match st.instance(name) {
                    // Cancelled before its request went out: nothing to send.
                    Some(i) if i.phase() == Phase::Deleting => {
                        st.remove(name);
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
            // Every mutation passes the guard, under the lock that marks a create sent, so
            // the max-size count includes the creates admitted before it.
            let admitted = self.admit(&mut st, &action);
            let mut power_on = true;
            if let (true, Action::Create { name, .. }) = (admitted, &action) {
                st.edit(name, |i| {
                    i.create = CreateStatus::Sent;
                    i.action_in_flight = false;
                    i.waiting_for_room = None;
                    // Decided with "sent", under one lock: a scale-up that takes this create
                    // from the pool later knows it comes powered off (`Instance::wake`).
                    power_on = !i.standby;
                });
            }
            (admitted, power_on)
        };
        let (admitted, power_on) = admitted;
        if !admitted {
            self.persist_logged().await;
            return;
        }
        match action {
            Action::Create { name, group } => {
                let Ok(cfg) = self.group(&group) else { return };
                // Write-ahead: a crash from here on leaves "sent" in the journal, so the restarted
                // provider watches for the server instead of buying another. A create whose
                // journal entry could not be stored is not sent: nothing is bought.
                if let Err(e) = self.persist().await {
                    // One warning per episode comes from the journal's own bookkeeping.
                    debug!(server = %name, error = %e, "not sending a create the journal could not record");
                    self.metrics()
                        .refused_mutation("create", "journal_unavailable");
                    self.lock().edit(&name, |inst| {
                        inst.create = CreateStatus::Rejected;
                        inst.error = Some(ErrorInfo::other(
                            "JOURNAL_UNAVAILABLE",
                            format!("create of {name} not sent: {e}"),
                        ));
                    });
                    return;
                }
                let result = client
                    .create_server(create_request(&name, &cfg.server, power_on))
                    .await;
                if self
                    .lock()
                    .edit(&name, |inst| match result {
                        Ok(cmd) => {
                            info!(server = %name, command = %cmd, "create accepted");
                            inst.create = CreateStatus::Accepted;
                            inst.command = Some(Pending {
                                id: cmd,
                                kind: CommandKind::Create,
                                since: Instant::now(),
                                unknown_since: None,
                            });
                            self.metrics().create("accepted");
                        }
                        Err(e) => {
                            warn!(server = %name, error = e.detail(), "create failed");
                            if e.may_have_been_processed() {
                                // Maybe bought: wait for the server under this name (adopted if
                                // it appears), report an error only after the grace period.
                                inst.create = CreateStatus::Uncertain;
                                inst.since = Instant::now();
                                self.metrics().create("uncertain");
                            } else {
                                inst.create = CreateStatus::Rejected;
                                self.metrics().create("rejected");
                                let code = if e.is_quota() {
                                    "QUOTA_EXCEEDED"
                                } else {
                                    "CREATE_REJECTED"
                                };
                                inst.error = Some(refused(&e, code));
                            }
                        }
                    })
                    .is_none()
                {
                    return;
                }
                self.persist_logged().await;
            }
            Action::PowerOn { name, server_id } => {
                let result = client.power_on(&server_id).await;
                self.after_power_on(&name, result);
                self.persist_logged().await;
            }
            Action::PowerOff { name, server_id } => {
                let result = client.power_off(&server_id).await;
                self.after_delete_step(&name, CommandKind::PowerOff, result);
                self.persist_logged().await;
            }
            Action::Terminate { name, server_id } => {
                let result = client.terminate(&server_id).await;
                self.after_delete_step(&name, CommandKind::Terminate, result);
                self.persist_logged().await;
            }
        }
    }

    /// The guard decides on tags this process read from the API: tags it only has from the
    /// journal (a warm restart) are read now, once per server.
    pub(super) async fn read_tags_before_mutation(&self, server_id: &str) {
        if self.lock().has_live_tags(server_id) {
            return;
        }
        match self.client().server_tags(server_id).await {
            Ok(tags) => {
                self.lock().record_tags(server_id, tags, true);
            }
            Err(e) => {
                debug!(
                    server_id,
                    error = e.detail(),
                    "cannot read the tags of a server to mutate; the guard decides on what it has"
                )
            }
        }
    }

    pub(super) fn after_power_on(
        &self,
        name: &str,
        result: std::result::Result<String, KamateraError>,
    ) {
        self.lock().edit(name, |inst| {
            inst.action_in_flight = false;
            inst.since = Instant::now();
            match result {
                Ok(cmd) => {
                    info!(server = %name, command = %cmd, "power-on of parked server accepted");
                    self.metrics().power_on("accepted");
                    inst.command = Some(Pending {
                        id: cmd,
                        kind: CommandKind::PowerOn,
                        since: Instant::now(),
                        unknown_since: None,
                    });
                }
                Err(e) if e.may_have_been_processed() => {
                    // The listing tells: running once on, POWER_ON_FAILED after the grace.
                    warn!(server = %name, error = e.detail(), "power-on outcome unknown; watching the server");
                    self.metrics().power_on("uncertain");
                }
                Err(e) => {
                    warn!(server = %name, error = e.detail(), "power-on refused");
                    self.metrics().power_on("rejected");
                    inst.error = Some(refused(&e, "POWER_ON_REJECTED"));
                }
            }
        });
    }

    pub(super) fn after_delete_step(
        &self,
        name: &str,
        kind: CommandKind,
        result: std::result::Result<String, KamateraError>,
    ) {
        self.lock().edit(name, |inst| {
            inst.action_in_flight = false;
            match result {
                Ok(cmd) => {
                    info!(server = %name, command = %cmd, step = ?kind, "delete step started");
                    inst.command = Some(Pending {
                        id: cmd,
                        kind,
                        since: Instant::now(),
                        unknown_since: None,
                    });
                }
                Err(e) => {
                    // The next reconcile tries again (Deleting with no command) while the server
                    // is listed; one that is not listed any more leaves by the vanish rule.
                    warn!(server = %name, step = ?kind, error = e.detail(), "delete step failed");
                    self.metrics().delete("failed");
                    inst.error = Some(ErrorInfo::other(
                        "DELETE_FAILED",
                        e.safe_message().to_string(),
                    ));
                }
            }
        });
    }
}

pub(super) fn result_label(r: &str) -> crate::telemetry::ResultLabel {
    crate::telemetry::ResultLabel { result: r.into() }
}

/// The error info of a request the API refused: out of resources when it was the quota.
fn refused(e: &KamateraError, code: &'static str) -> ErrorInfo {
    ErrorInfo {
        class: if e.is_quota() {
            InstanceErrorClass::OutOfResources
        } else {
            InstanceErrorClass::Other
        },
        code,
        message: e.safe_message().to_string(),
    }
}

/// The API's create request for a server of `server`'s node group, named `name`.
pub(super) fn create_request<'a>(
    name: &'a str,
    server: &'a crate::config::ServerConfig,
    power_on: bool,
) -> CreateServer<'a> {
    CreateServer {
        name,
        password: server.password.as_ref(),
        ssh_key: &server.ssh_key,
        datacenter: &server.datacenter,
        image: &server.image,
        cpu: &server.cpu,
        ram_mb: server.ram_mb,
        disks: &server.disks,
        networks: &server.networks,
        daily_backup: server.daily_backup,
        managed: server.managed,
        billing: match server.billing_cycle {
            crate::config::BillingCycle::Hourly => kamatera::Billing::Hourly,
            crate::config::BillingCycle::Monthly => kamatera::Billing::Monthly,
        },
        monthly_package: &server.monthly_package,
        script: server.script.as_ref(),
        tags: &server.tags,
        power_on,
    }
}
