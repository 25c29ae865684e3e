//! The pure transitions of one instance in a reconcile pass: a command's outcome, a command the
//! queue stopped reporting, and what the listing shows.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::kamatera::{CommandState, CommandStatus, Power, is_quota_message};

/// Why `step` forgets an instance whose server it parked.
pub(super) const PARKED: &str = "parked: powered off and kept for reuse";
/// Why `step` forgets a create for the standby pool whose server is ready in the pool.
pub(super) const STANDBY_READY: &str = "standby: created powered off, now in the pool";
/// Why `step` forgets a create for the standby pool that bought nothing.
pub(super) const STANDBY_FAILED: &str = "standby: the create for the pool failed";
/// Why `step` forgets an instance whose server is confirmed gone.
pub(super) const GONE: &str =
    "server gone: missing from the listings and a lookup found no sign of it";

/// A command the queue does not report: after `limit`, give it up and move on from what the
/// listing shows.
pub(super) fn unknown_command(
    inst: &mut Instance,
    cmd: &Pending,
    limit: Duration,
    now: Instant,
    actions: &mut Vec<Action>,
) {
    let since = cmd.unknown_since.unwrap_or(now);
    if let Some(c) = inst.command.as_mut() {
        c.unknown_since = Some(since);
    }
    if now.saturating_duration_since(since) < limit {
        return;
    }
    inst.command = None;
    match cmd.kind {
        CommandKind::Create if !inst.seen => {
            inst.create = CreateStatus::Uncertain;
            inst.since = now;
            if inst.phase() == Phase::Creating {
                inst.error = Some(uncertain_error(&format!(
                    "the API no longer reports create command {} and the server is not listed",
                    cmd.id
                )));
            }
        }
        CommandKind::Create => {}
        // `step` goes by the listing: running once on, an error after the grace otherwise.
        CommandKind::PowerOn => inst.since = now,
        // Listed off: the power-off did happen; `step` parks it.
        CommandKind::PowerOff
            if inst.parking() && inst.power.as_ref().is_some_and(|p| *p != Power::On) =>
        {
            inst.powered_off(now);
        }
        CommandKind::PowerOff => {
            if let Some(id) = inst.server_id.clone() {
                inst.stop_parking();
                inst.action_in_flight = true;
                actions.push(Action::Terminate {
                    name: inst.name.clone(),
                    server_id: id,
                });
            }
        }
        // The next pass terminates again if the server is still listed.
        CommandKind::Terminate => {}
    }
}

/// Handles the end of a command.
pub(super) fn command_result(
    inst: &mut Instance,
    cmd: &Pending,
    st: &CommandStatus,
    now: Instant,
    actions: &mut Vec<Action>,
    outcomes: &mut Outcomes,
) {
    match (cmd.kind, &st.state) {
        (_, s) if !s.is_terminal() => {}
        (CommandKind::Create, CommandState::Complete) => inst.command = None,
        (CommandKind::Create, state) => {
            inst.command = None;
            // The API removes what a failed create began; nothing was bought.
            inst.create = CreateStatus::Rejected;
            if *state == CommandState::Cancelled {
                outcomes.creates_cancelled += 1;
            } else {
                outcomes.creates_failed += 1;
            }
            let detail = first_line(&st.log);
            inst.error = Some(if is_quota_message(&st.log) {
                ErrorInfo {
                    class: InstanceErrorClass::OutOfResources,
                    code: "QUOTA_EXCEEDED",
                    message: format!(
                        "create command {} ended {}: {detail}",
                        cmd.id,
                        state.as_str()
                    ),
                }
            } else {
                ErrorInfo::other(
                    if *state == CommandState::Cancelled {
                        "CREATE_CANCELLED"
                    } else {
                        "CREATE_FAILED"
                    },
                    format!(
                        "create command {} ended {}: {detail}",
                        cmd.id,
                        state.as_str()
                    ),
                )
            });
        }
        (CommandKind::PowerOn, CommandState::Complete) => {
            // Running once the listing shows it on (see `step`).
            inst.command = None;
            inst.since = now;
        }
        (CommandKind::PowerOn, state) => {
            inst.command = None;
            inst.power_on_failed = true;
            outcomes.power_ons_failed += 1;
            inst.error = Some(ErrorInfo::other(
                "POWER_ON_FAILED",
                format!(
                    "power-on command {} of parked server {} ended {}: {}",
                    cmd.id,
                    inst.name,
                    state.as_str(),
                    first_line(&st.log)
                ),
            ));
        }
        (CommandKind::PowerOff, CommandState::Complete) if inst.parking() => {
            // Parked once the listing shows it off (see `step`).
            inst.command = None;
            inst.powered_off(now);
        }
        (CommandKind::PowerOff, state) => {
            // Whether the power-off worked or not, a forced terminate finishes the job. A server
            // whose power-off failed is not parked: its state is unknown.
            if inst.parking() {
                tracing::warn!(server = %inst.name, command = %cmd.id, state = state.as_str(),
                    "power-off before parking failed; terminating the server instead");
                inst.stop_parking();
            }
            inst.command = None;
            if let Some(id) = &inst.server_id {
                inst.action_in_flight = true;
                actions.push(Action::Terminate {
                    name: inst.name.clone(),
                    server_id: id.clone(),
                });
            }
        }
        (CommandKind::Terminate, CommandState::Complete) => {
            outcomes.deletes_completed += 1;
            inst.command = None;
            inst.mark_terminated();
            inst.error = None;
        }
        (CommandKind::Terminate, state) => {
            // Tried again on the next reconcile (see `step`).
            outcomes.deletes_failed += 1;
            inst.command = None;
            inst.error = Some(ErrorInfo::other(
                "TERMINATE_FAILED",
                format!(
                    "terminate command {} ended {}: {}",
                    cmd.id,
                    state.as_str(),
                    first_line(&st.log)
                ),
            ));
        }
    }
}

/// Phase transitions from what the listing shows.
pub(super) fn step(
    inst: &mut Instance,
    server: Option<&Observed>,
    limits: Limits,
    now: Instant,
    actions: &mut Vec<Action>,
    remove: &mut Vec<(String, &'static str)>,
) {
    match inst.phase() {
        Phase::Creating if inst.standby => standby_step(inst, server, limits, now, remove),
        Phase::Creating => {
            if let Some(since) = inst.waiting_for_room
                && inst.create == CreateStatus::Queued
                && !inst.action_in_flight
            {
                let waited = now.saturating_duration_since(since);
                if waited >= limits.room_wait {
                    inst.waiting_for_room = None;
                    inst.create = CreateStatus::Rejected;
                    inst.error = Some(ErrorInfo {
                        class: InstanceErrorClass::OutOfResources,
                        code: "MAX_SIZE_REACHED",
                        message: format!(
                            "create of {} not sent: the node group stayed at max-size for {} s waiting for deleted servers to leave",
                            inst.name,
                            waited.as_secs()
                        ),
                    });
                } else {
                    // Try again: the guard decides on the state this pass built.
                    inst.action_in_flight = true;
                    actions.push(Action::Create {
                        name: inst.name.clone(),
                        group: inst.group.clone(),
                    });
                }
            }
            if server.is_none()
                && inst.create == CreateStatus::Uncertain
                && !inst.seen
                && inst.error.is_none()
                && now.saturating_duration_since(inst.since) >= limits.uncertain_grace
            {
                inst.error = Some(uncertain_error(&format!(
                    "no server named {} appeared after a create whose outcome is unknown",
                    inst.name
                )));
            }
            if server.is_none() && inst.seen && inst.command.is_none() && inst.error.is_none() {
                // Listed once, confirmed gone since (a server that is merely missing from a
                // listing is presumed), nothing running that explains it.
                inst.error = Some(ErrorInfo::other(
                    "SERVER_GONE",
                    format!("server {} no longer exists", inst.name),
                ));
            }
            if let Some(s) = server {
                if inst.create == CreateStatus::Uncertain {
                    // The uncertain create did buy the server: it is ours after all.
                    inst.create = CreateStatus::Accepted;
                    inst.error = None;
                }
                if inst.wake
                    && inst.command.is_none()
                    && !inst.action_in_flight
                    && inst.error.is_none()
                    && !s.presumed
                    && s.power != Power::On
                {
                    // Taken from the pool while being created: created powered off, so
                    // powered on now, as any standby server a scale-up takes.
                    inst.wake = false;
                    inst.create = CreateStatus::Reused;
                    inst.since = now;
                    inst.action_in_flight = true;
                    actions.push(Action::PowerOn {
                        name: inst.name.clone(),
                        server_id: s.id.clone(),
                    });
                    return;
                }
                let failed = inst.error.is_some();
                let starting = matches!(
                    inst.command,
                    Some(Pending {
                        kind: CommandKind::Create | CommandKind::PowerOn,
                        ..
                    })
                );
                if s.power == Power::On && !failed {
                    // Powered on in the listing: created (or woken), whatever the queue says.
                    if starting {
                        inst.command = None;
                    }
                    inst.run(now);
                } else if inst.create == CreateStatus::Reused
                    && !starting
                    && !failed
                    && !inst.action_in_flight
                    && now.saturating_duration_since(inst.since) >= limits.uncertain_grace
                {
                    inst.power_on_failed = true;
                    inst.error = Some(ErrorInfo::other(
                        "POWER_ON_FAILED",
                        format!(
                            "parked server {} is still powered off {} s after its power-on",
                            inst.name,
                            limits.uncertain_grace.as_secs()
                        ),
                    ));
                }
            }
        }
        Phase::Running => {
            if server.is_none() && inst.seen {
                // Removed outside the provider (confirmed): no longer the autoscaler's to count.
                remove.push((inst.name.clone(), GONE));
            }
        }
        Phase::Deleting => {
            // Its own terminate completed and the listing lacks it: gone now, not one pass
            // later (it is kept as presumed only while no proof is at hand).
            let server = server.filter(|s| !(s.presumed && inst.terminated()));
            if inst.action_in_flight {
                return;
            }
            if inst.create == CreateStatus::Queued && inst.server_id.is_none() {
                // Deleted before its create was sent (a create waiting for room, or restored
                // and not started yet): nothing was bought, nothing to wait for.
                remove.push((inst.name.clone(), "deleted before its create was sent"));
                return;
            }
            match &inst.command {
                // A create or power-on that is still running: wait for it to finish (listed
                // powered on), whatever the queue says, then go on below.
                Some(Pending {
                    kind: CommandKind::Create | CommandKind::PowerOn,
                    ..
                }) => {
                    if server.is_some_and(|s| s.power == Power::On) {
                        inst.command = None;
                    } else {
                        return;
                    }
                }
                // The server is gone although its power-off or terminate was never reported.
                Some(_) if server.is_none() && inst.seen => {
                    // Gone (confirmed) before its power-off or terminate was reported.
                    remove.push((inst.name.clone(), GONE));
                    return;
                }
                Some(_) => return,
                None => {}
            }
            match server {
                Some(_) if inst.terminated() => {} // terminated, listing not caught up yet
                // Missing from the listings, not yet proven gone: a power-off or terminate sent
                // to it now would only be refused (or repeat one whose answer was lost). The
                // vanish rule decides; a server that is listed again is acted on then.
                Some(s) if s.presumed => {}
                Some(s) if inst.parking() => {
                    if s.power != Power::On {
                        // Off in the listing: parked. Forgetting it makes it part of the
                        // group's pool (rebuilt from the listing), invisible to the autoscaler.
                        remove.push((inst.name.clone(), PARKED));
                    } else if let Some(at) = inst.leaving().and_then(|l| l.powered_off_at) {
                        if now.saturating_duration_since(at) >= limits.uncertain_grace {
                            tracing::warn!(server = %inst.name,
                                "still listed powered on long after its power-off completed; terminating it instead of parking");
                            inst.stop_parking();
                            inst.action_in_flight = true;
                            actions.push(Action::Terminate {
                                name: inst.name.clone(),
                                server_id: s.id.clone(),
                            });
                        }
                    } else {
                        inst.action_in_flight = true;
                        actions.push(Action::PowerOff {
                            name: inst.name.clone(),
                            server_id: s.id.clone(),
                        });
                    }
                }
                Some(s) => {
                    // A server that should go: created after its instance was cancelled, or a
                    // terminate that failed. Terminate (forced) now.
                    inst.action_in_flight = true;
                    actions.push(Action::Terminate {
                        name: inst.name.clone(),
                        server_id: s.id.clone(),
                    });
                }
                None => {
                    // A server once seen and now absent is gone for certain (terminated by the
                    // provider, or confirmed by a lookup; one merely missing is presumed).
                    let gone = inst.seen && !inst.terminated();
                    let waiting_for_server = !inst.seen
                        && match inst.create {
                            CreateStatus::Queued | CreateStatus::Sent => true,
                            // Bought (or maybe bought) but never listed: watch for the server a
                            // bounded time, then forget the name.
                            CreateStatus::Accepted | CreateStatus::Uncertain => {
                                !inst.seen
                                    && now.saturating_duration_since(inst.since)
                                        < limits.uncertain_watch
                            }
                            CreateStatus::Rejected
                            | CreateStatus::Adopted
                            | CreateStatus::Reused => false,
                        };
                    if gone {
                        remove.push((inst.name.clone(), GONE));
                    } else if !waiting_for_server {
                        remove.push((
                            inst.name.clone(),
                            "deleted (or never bought) and not listed",
                        ));
                    }
                }
            }
        }
    }
}

/// A create for the standby pool: its server joins the pool once created (listed, its create
/// command done); a create that bought nothing is forgotten; one whose outcome stays unknown
/// for the whole watch period is given up as any such create is (its name watched, a late
/// server terminated).
fn standby_step(
    inst: &mut Instance,
    server: Option<&Observed>,
    limits: Limits,
    now: Instant,
    remove: &mut Vec<(String, &'static str)>,
) {
    if inst.action_in_flight {
        return;
    }
    if inst.error.is_some() && inst.command.is_none() {
        if inst.create == CreateStatus::Rejected {
            remove.push((inst.name.clone(), STANDBY_FAILED));
        } else {
            // Maybe bought: leaves through the watch (see `State::watch_uncertain`).
            inst.delete(false, now);
        }
        return;
    }
    match server.filter(|s| !s.presumed) {
        None => {
            // Nobody waits for a pool server: a create that may have bought one is waited for
            // as long as its name is watched (not the autoscaler's short grace), and counts as
            // the pool's meanwhile, so no second server is bought for it.
            if inst.create == CreateStatus::Uncertain
                && !inst.seen
                && now.saturating_duration_since(inst.since) >= limits.uncertain_watch
            {
                inst.delete(false, now);
            } else if inst.seen && server.is_none() && inst.command.is_none() {
                // Listed once, gone since (by proof): nothing to keep.
                remove.push((inst.name.clone(), GONE));
            }
        }
        Some(s) => {
            if inst.create == CreateStatus::Uncertain {
                inst.create = CreateStatus::Accepted;
            }
            if inst.command.is_some() {
                return; // still being created
            }
            if s.power == Power::On {
                // Not what was asked (created powered off): it may have booted and joined.
                // Parked like a scale-down's server, so it is powered off and kept; it is no
                // standby server (it ran).
                tracing::warn!(server = %inst.name,
                    "a server created powered off for the standby pool is listed powered on; powering it off and keeping it as parked");
                inst.delete(true, now);
            } else {
                remove.push((inst.name.clone(), STANDBY_READY));
            }
        }
    }
}

fn first_line(log: &str) -> String {
    let line = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no log");
    line.chars().take(200).collect()
}
