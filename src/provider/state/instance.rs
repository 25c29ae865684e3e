//! One instance: what the autoscaler sees of it (phase, error), how its create stands, the
//! command it waits for, and its life with the transitions between stages.

use tokio::time::Instant;

use crate::kamatera::Power;

/// The autoscaler's view of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Creating,
    Running,
    Deleting,
}

/// Error classes the autoscaler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceErrorClass {
    OutOfResources,
    Other,
}

impl InstanceErrorClass {
    /// The number on the wire (`cloudprovider.InstanceErrorClass`).
    pub fn code(self) -> i32 {
        match self {
            InstanceErrorClass::OutOfResources => 1,
            InstanceErrorClass::Other => 99,
        }
    }
}

/// Why an instance failed, as reported to the autoscaler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub class: InstanceErrorClass,
    /// Stable code, e.g. `QUOTA_EXCEEDED`.
    pub code: &'static str,
    pub message: String,
}

impl ErrorInfo {
    /// An error of class `Other` (not out of resources).
    pub fn other(code: &'static str, message: impl Into<String>) -> ErrorInfo {
        ErrorInfo {
            class: InstanceErrorClass::Other,
            code,
            message: message.into(),
        }
    }
}

/// Where the create request of an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreateStatus {
    /// Waiting for a request slot.
    Queued,
    /// The request is on the wire.
    Sent,
    /// The API answered with a command id.
    Accepted,
    /// The API refused it: nothing was bought.
    Rejected,
    /// The request failed in a way that leaves open whether a server was bought (timeout, 5xx,
    /// dropped connection). The name is watched: if a server with it ever appears, it is
    /// adopted while wanted and terminated otherwise.
    Uncertain,
    /// Adopted from the listing (not created by this process).
    Adopted,
    /// A parked server of the group, powered on instead of buying a new one.
    Reused,
}

/// A command we started and still wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub kind: CommandKind,
    /// When the command was started.
    pub since: Instant,
    /// Since when the API has not reported this command (while answering others).
    pub unknown_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Create,
    PowerOn,
    PowerOff,
    Terminate,
}

/// Where an instance is in its life. Each stage carries what only it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// Wanted and not running yet: being created, or a parked server being powered on.
    Creating,
    Running,
    /// The autoscaler deleted it (or a create it no longer wants): on its way out.
    Deleting(Leaving),
}

/// How a deleted instance leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leaving {
    /// Kept powered off (parked) instead of terminated; decided when the autoscaler deleted it.
    pub park: bool,
    /// When the power-off of a server to park completed (the listing may still show it on).
    pub powered_off_at: Option<Instant>,
    /// The terminate command completed.
    pub terminated: bool,
}

/// One server the provider manages (or is about to).
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub group: String,
    /// Where it is in its life; change it only through the transition methods.
    life: Life,
    pub server_id: Option<String>,
    /// Power in the last listing that had the server.
    pub power: Option<Power>,
    /// Listed at least once.
    pub seen: bool,
    pub create: CreateStatus,
    pub command: Option<Pending>,
    /// A delete step (power off / terminate) request, or a create waiting for room, is on its
    /// way to the guard or the wire.
    pub action_in_flight: bool,
    /// Since when a queued create waits for room: the group is at max-size only because
    /// deleted servers have not left yet (see `guard::Refusal::NoRoomYet`).
    pub waiting_for_room: Option<Instant>,
    /// A power-on of this reused server ended in error: never park it again.
    pub power_on_failed: bool,
    pub error: Option<ErrorInfo>,
    /// The standby pool's, not the autoscaler's: a create for the pool (the server is made
    /// powered off and never booted) or a pool server being removed. Not in the target size,
    /// not in NodeGroupNodes, not a node of any group.
    pub standby: bool,
    /// Taken by a scale-up while its create for the pool was under way: the server comes
    /// powered off, so it is powered on once its create completes.
    pub wake: bool,
    /// When the autoscaler asked for it (IncreaseSize), for the scale-up latency.
    pub asked: Instant,
    /// When the instance entered its current phase.
    pub since: Instant,
}

impl Instance {
    pub fn creating(name: String, group: String, now: Instant) -> Self {
        Instance {
            name,
            group,
            life: Life::Creating,
            server_id: None,
            power: None,
            seen: false,
            create: CreateStatus::Queued,
            command: None,
            action_in_flight: false,
            waiting_for_room: None,
            standby: false,
            wake: false,
            asked: now,
            power_on_failed: false,
            error: None,
            since: now,
        }
    }

    /// A server of the group's pool (listed powered off) that a cloud call is about to act on:
    /// `create` says how the provider came by it.
    pub fn from_pool(
        name: String,
        group: String,
        server_id: String,
        create: CreateStatus,
        now: Instant,
    ) -> Self {
        let mut inst = Instance::creating(name, group, now);
        inst.create = create;
        inst.server_id = Some(server_id);
        inst.power = Some(Power::Off);
        inst.seen = true;
        inst.action_in_flight = true;
        inst
    }

    /// Counts toward the target size.
    pub fn in_target(&self) -> bool {
        !self.standby && matches!(self.life, Life::Creating | Life::Running)
    }

    /// The autoscaler's view of where it is.
    pub fn phase(&self) -> Phase {
        match self.life {
            Life::Creating => Phase::Creating,
            Life::Running => Phase::Running,
            Life::Deleting(_) => Phase::Deleting,
        }
    }

    /// How it leaves, once deleted.
    pub fn leaving(&self) -> Option<Leaving> {
        match self.life {
            Life::Deleting(l) => Some(l),
            _ => None,
        }
    }

    /// Deleted and to be parked rather than terminated.
    pub fn parking(&self) -> bool {
        self.leaving().is_some_and(|l| l.park)
    }

    /// Its server exists or may exist: tracked (listed or presumed) and not terminated by the
    /// provider, or a create on the wire or accepted whose server is not listed yet.
    pub fn may_exist(&self) -> bool {
        match (&self.server_id, self.create) {
            (Some(_), _) => !self.terminated(),
            (None, CreateStatus::Sent | CreateStatus::Accepted | CreateStatus::Uncertain) => true,
            (None, _) => false,
        }
    }

    /// Deleted, and its terminate command completed.
    pub fn terminated(&self) -> bool {
        self.leaving().is_some_and(|l| l.terminated)
    }

    /// Creating → Running (the listing shows it powered on).
    pub fn run(&mut self, now: Instant) {
        if self.life == Life::Creating {
            self.life = Life::Running;
            self.since = now;
        }
    }

    /// Creating or Running → Deleting, parked (powered off and kept) or terminated.
    pub fn delete(&mut self, park: bool, now: Instant) {
        if !matches!(self.life, Life::Deleting(_)) {
            self.life = Life::Deleting(Leaving {
                park,
                ..Leaving::default()
            });
            self.since = now;
        }
    }

    /// Restores the stage of a journal entry as is (no transition, no clock).
    pub fn restore_life(&mut self, life: Life) {
        self.life = life;
    }

    /// Parking is off: the server is terminated instead (its power-off failed or did not hold).
    pub fn stop_parking(&mut self) {
        if let Life::Deleting(l) = &mut self.life {
            l.park = false;
        }
    }

    /// The power-off of a server to park completed.
    pub fn powered_off(&mut self, now: Instant) {
        if let Life::Deleting(l) = &mut self.life {
            l.powered_off_at = Some(now);
        }
    }

    /// Its terminate command completed.
    pub fn mark_terminated(&mut self) {
        if let Life::Deleting(l) = &mut self.life {
            l.terminated = true;
        }
    }
}
