//! The simulated Kamatera account: servers, tags, the command queue on a clock, quota, and the
//! fault knobs. Pure state, no HTTP: handlers lock it, call one method, and render the result.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Datacenters the simulated account can use: (id, name, category, sub-category).
pub const DATACENTERS: &[(&str, &str, &str, &str)] = &[
    ("US-NY2", "New York", "America", "US"),
    ("US-SC", "Santa Clara", "America", "US"),
    ("US-TX", "Dallas", "America", "US"),
    ("CA-TR", "Toronto", "America", "CA"),
    ("EU", "Amsterdam", "Europe", "NL"),
    ("EU-FR", "Frankfurt", "Europe", "DE"),
    ("EU-LO", "London", "Europe", "GB"),
    ("IL", "Rosh Haayin", "Middle East", "IL"),
    ("IL-TA", "Tel Aviv", "Middle East", "IL"),
    ("AS", "Hong Kong", "Asia", "HK"),
];

/// Image descriptions available in every datacenter.
pub const IMAGES: &[&str] = &[
    "ubuntu_server_24.04_64-bit",
    "ubuntu_server_22.04_64-bit",
    "debian_server_12_64-bit",
    "rockylinux_server_9_64-bit",
];

/// The image id of `IMAGES[index]` in a datacenter, e.g. `US-NY2:6000C29...`.
pub fn image_id(datacenter: &str, index: usize) -> String {
    format!("{datacenter}:6000C29{index:025x}")
}

/// How long commands take (before [`Timing::scale`] applies).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    #[serde(with = "millis")]
    pub create: Duration,
    /// A power-off.
    #[serde(with = "millis")]
    pub power: Duration,
    /// A power-on of a server that has booted before (parked).
    #[serde(with = "millis")]
    pub boot: Duration,
    /// A power-on of a server that has never booted (created powered off): the first boot
    /// installs and runs the init script.
    #[serde(with = "millis")]
    pub first_boot: Duration,
    #[serde(with = "millis")]
    pub terminate: Duration,
    /// Share of a command's duration spent `pending` before `progress`.
    pub pending_share: f64,
    /// Multiplies every duration: 0.01 runs a 20 s create in 200 ms.
    pub scale: f64,
}

impl Default for Timing {
    /// Realistic enough for demos: a create takes about 20 s.
    fn default() -> Self {
        Timing {
            create: Duration::from_secs(20),
            power: Duration::from_secs(5),
            boot: Duration::from_secs(5),
            first_boot: Duration::from_secs(10),
            terminate: Duration::from_secs(5),
            pending_share: 0.2,
            scale: 1.0,
        }
    }
}

impl Timing {
    /// Millisecond commands for tests.
    pub fn fast() -> Self {
        Timing {
            create: Duration::from_millis(60),
            power: Duration::from_millis(30),
            boot: Duration::from_millis(30),
            first_boot: Duration::from_millis(30),
            terminate: Duration::from_millis(30),
            pending_share: 0.3,
            scale: 1.0,
        }
    }

    fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.scale.max(0.0))
    }
}

/// Account limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Quota {
    pub max_servers: Option<u32>,
    pub max_cpu_cores: Option<u32>,
    pub max_ram_mb: Option<u64>,
}

/// Faults for one endpoint (or all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointFaults {
    /// Probability of `500 {"message": "Failed to run command method (...)"}`.
    pub error_rate: f64,
    /// Probability of a plain-text `504 Gateway Timeout`.
    pub gateway_timeout_rate: f64,
    /// Probability of `429` (rate limited).
    pub rate_limit_rate: f64,
    /// Probability that the connection drops in the middle of the answer, before the request is
    /// handled (nothing happens).
    pub drop_rate: f64,
    /// Probability that the request is handled (a create buys its server) but the answer is lost:
    /// the connection drops mid-response. The trap that makes retried creates buy twice.
    pub lost_response_rate: f64,
    /// Added before the request is handled (a slow gateway: nothing happens until it passes).
    pub latency_ms: u64,
    /// Added after the request was handled, before the answer goes out (the work is done even
    /// if the client gives up waiting).
    pub answer_delay_ms: u64,
}

/// Every fault knob. Adjustable at runtime through `/_sim/faults` or in-process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Applies to every endpoint that has no entry in `endpoints`.
    pub all: EndpointFaults,
    /// Per endpoint, keyed by [`Endpoint::key`].
    pub endpoints: BTreeMap<String, EndpointFaults>,
    /// Probability that a new command ends in `error`.
    pub command_error_rate: f64,
    /// Probability that a new command ends `cancelled`.
    pub command_cancel_rate: f64,
    /// The queue answers `[]` whatever is asked (the upstream's empty body).
    pub queue_empty: bool,
    /// A new command is unknown to the queue (HTTP 404, `{"json_decode_error": null}`) for
    /// this long after it was queued: it has not started upstream yet.
    pub queue_lag_ms: u64,
    /// A new server shows up in the listing only this long after its create request.
    pub listing_lag_ms: u64,
    /// The listing answers `[]` (HTTP 200), whatever exists (a glitching API, a wrong account
    /// filter upstream). Lookups by id still find the servers.
    pub listing_empty: bool,
    /// Servers (by name) the listing leaves out although they exist.
    pub listing_hides: Vec<String>,
    /// Error answers quote the request body back (`invalid request (<body>)`), as some API
    /// errors echo a rejected field, secrets included.
    pub echo_request_in_errors: bool,
    /// Every request is refused as not logged in (revoked credentials).
    pub unauthorized: bool,
}

impl Faults {
    pub fn for_endpoint(&self, e: Endpoint) -> EndpointFaults {
        self.endpoints.get(e.key()).copied().unwrap_or(self.all)
    }
}

/// The API operations, for request counting and per-endpoint faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Root,
    ListServers,
    ServerTags,
    CreateServer,
    PowerOn,
    PowerOff,
    Terminate,
    Queue,
    ServerInfo,
    ServerOptions,
}

impl Endpoint {
    /// The endpoint a request addresses, if any.
    pub fn from_request(method: &str, path: &str) -> Option<Endpoint> {
        Some(match (method, path) {
            ("GET", "/") => Endpoint::Root,
            ("GET", "/service/servers") => Endpoint::ListServers,
            ("POST", "/server/tags") => Endpoint::ServerTags,
            ("POST", "/service/server") => Endpoint::CreateServer,
            ("GET", "/service/server") => Endpoint::ServerOptions,
            ("POST", "/service/server/poweron") => Endpoint::PowerOn,
            ("POST", "/service/server/poweroff") => Endpoint::PowerOff,
            ("POST", "/service/server/terminate") => Endpoint::Terminate,
            ("POST", "/service/server/info") => Endpoint::ServerInfo,
            ("GET", "/service/queue") => Endpoint::Queue,
            _ => return None,
        })
    }

    pub const ALL: [Endpoint; 10] = [
        Endpoint::Root,
        Endpoint::ListServers,
        Endpoint::ServerTags,
        Endpoint::CreateServer,
        Endpoint::PowerOn,
        Endpoint::PowerOff,
        Endpoint::Terminate,
        Endpoint::Queue,
        Endpoint::ServerInfo,
        Endpoint::ServerOptions,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Endpoint::Root => "root",
            Endpoint::ListServers => "list_servers",
            Endpoint::ServerTags => "server_tags",
            Endpoint::CreateServer => "create_server",
            Endpoint::PowerOn => "power_on",
            Endpoint::PowerOff => "power_off",
            Endpoint::Terminate => "terminate",
            Endpoint::Queue => "queue",
            Endpoint::ServerInfo => "server_info",
            Endpoint::ServerOptions => "server_options",
        }
    }

    /// The cloudcli-server handler name, as its generic error text shows it
    /// (`Failed to run command method (<name>)`).
    pub fn method_name(self) -> &'static str {
        match self {
            Endpoint::Root => "root",
            Endpoint::ListServers => "listServers",
            Endpoint::ServerTags => "serverTags",
            Endpoint::CreateServer => "createServer",
            Endpoint::PowerOn => "poweronServer",
            Endpoint::PowerOff => "poweroffServer",
            Endpoint::Terminate => "terminateServer",
            Endpoint::Queue => "getQueue",
            Endpoint::ServerInfo => "serversInfo",
            Endpoint::ServerOptions => "getServerOptions",
        }
    }
}

/// One simulated server.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimServer {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub power: String,
    pub tags: Vec<String>,
    pub cpu: String,
    pub ram_mb: u64,
    pub disks_gb: Vec<u64>,
    pub networks: Vec<String>,
    pub billing: String,
    pub image: String,
    /// Has been powered on at least once (a server created powered off has not).
    pub booted: bool,
    #[serde(skip)]
    pub created: Instant,
}

impl SimServer {
    fn cores(&self) -> u32 {
        self.cpu
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    Create,
    PowerOn,
    PowerOff,
    Terminate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Complete,
    Error,
    Cancelled,
}

/// One queued command.
#[derive(Debug, Clone, Serialize)]
pub struct SimCommand {
    pub id: String,
    pub kind: CommandKind,
    pub server_id: String,
    pub server_name: String,
    pub outcome: Outcome,
    /// `pending`, `progress`, or the outcome once done.
    pub status: String,
    /// True once the outcome's effect on the servers was applied.
    pub applied: bool,
    /// For creates: whether the server ends powered on.
    #[serde(skip)]
    power_on_after: bool,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    pending_for: Duration,
    #[serde(skip)]
    total: Duration,
    #[serde(skip)]
    added: String,
}

impl SimCommand {
    fn status_at(&self, now: Instant) -> &'static str {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed < self.pending_for {
            "pending"
        } else if elapsed < self.total {
            "progress"
        } else {
            match self.outcome {
                Outcome::Complete => "complete",
                Outcome::Error => "error",
                Outcome::Cancelled => "cancelled",
            }
        }
    }

    fn log(&self) -> String {
        let mut log = match self.kind {
            CommandKind::Create => format!("Name: {}\nCreating server...", self.server_name),
            CommandKind::PowerOn => format!("Powering on {}...", self.server_name),
            CommandKind::PowerOff => format!("Powering off {}...", self.server_name),
            CommandKind::Terminate => format!("Terminating {}...", self.server_name),
        };
        match self.status.as_str() {
            "complete" => log.push_str("\nDone"),
            "error" => log.push_str("\nError: the operation failed in the datacenter (simulated)"),
            "cancelled" => log.push_str("\nCancelled (simulated)"),
            _ => {}
        }
        log
    }
}

/// What the queue was asked and answered, for tests and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueuePolls {
    /// The most ids one request asked for.
    pub most_ids: usize,
    /// Requests that failed on an id the upstream did not report.
    pub unknown: u64,
    /// Answers that reported a create command `complete`.
    pub complete: u64,
}

/// The whole simulated account.
#[derive(Debug)]
pub struct SimState {
    pub servers: Vec<SimServer>,
    pub commands: BTreeMap<String, SimCommand>,
    /// Command ids in creation order.
    command_order: Vec<String>,
    pub requests: BTreeMap<&'static str, u64>,
    pub queue_polls: QueuePolls,
    pub faults: Faults,
    pub timing: Timing,
    pub quota: Quota,
    /// LAN names a create may attach besides `wan`.
    pub lans: Vec<String>,
    rng: StdRng,
    next_command: u64,
    epoch: Instant,
}

/// A failure the HTTP layer renders in the API's shapes (fact sheet §3-§5).
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// 400 `{"message": ...}`: the server's own validation (missing or malformed flags).
    BadRequest(String),
    /// 500 `{"message": ...}` with a specific text: the server's own (`No servers found
    /// (name='...')`, `Too many matching servers (...)`) or, on the paths that address servers
    /// (info, power, terminate, tags), the upstream's `<info> (<code>)`.
    Server(String),
    /// 500 `{"message": "Failed to run command method (<handler>)"}`: any exception in the
    /// server, from a bad yes/no flag to an unreachable upstream.
    Generic,
    /// The upstream refused a create: its status and `{"json_decode_error": null, "message": ..}`.
    Upstream { status: u16, message: String },
    /// The queue's failure: the upstream's status and `{"json_decode_error": null}`, no message.
    Bare(u16),
    /// Options by datacenter or images: 500 `{"message": "<the upstream body as a JSON string>"}`.
    Wrapped(serde_json::Value),
}

/// The upstream's answer for a server id it does not have. The real text is not known (fact
/// sheet §8); this one has the `<info> (<code>)` shape, and no client may depend on its words.
pub const UNKNOWN_SERVER_ID: &str = "Server not found (6)";
/// The upstream's refusal of a request without valid credentials (`<info> (<code>)`).
pub const NOT_LOGGED_IN: &str = "you are not logged in (1)";
/// The upstream's status for a command id it does not report (not yet visible, or unknown).
pub const QUEUE_UNKNOWN_STATUS: u16 = 404;

/// The upstream's refusal of a create (HTTP 500, `<info> (<code>)`).
pub fn refused(message: impl Into<String>) -> ApiError {
    ApiError::Upstream {
        status: 500,
        message: message.into(),
    }
}

/// How a request names servers: by anchored regex or by id.
pub enum Selector {
    Name(String),
    Id(String),
}

/// One server to place in the account directly (seeding and tests).
#[derive(Debug, Clone)]
pub struct SeedServer {
    pub name: String,
    pub datacenter: String,
    pub power_on: bool,
    pub tags: Vec<String>,
    pub cpu: String,
    pub ram_mb: u64,
}

/// What a create request asks for, already validated.
pub struct NewServer {
    pub name: String,
    pub datacenter: String,
    pub image: String,
    pub cpu: String,
    pub ram_mb: u64,
    pub disks_gb: Vec<u64>,
    pub networks: Vec<String>,
    pub billing: String,
    pub power_on_after: bool,
    pub tags: Vec<String>,
}

impl SimState {
    pub fn new(seed: u64, timing: Timing, quota: Quota) -> Self {
        SimState {
            servers: Vec::new(),
            commands: BTreeMap::new(),
            command_order: Vec::new(),
            requests: BTreeMap::new(),
            queue_polls: QueuePolls::default(),
            faults: Faults::default(),
            timing,
            quota,
            lans: vec!["lan-demo-private".to_string()],
            rng: StdRng::seed_from_u64(seed),
            next_command: 1_000_001,
            epoch: Instant::now(),
        }
    }

    pub fn count(&mut self, e: Endpoint) {
        *self.requests.entry(e.key()).or_insert(0) += 1;
    }

    /// A draw from the seeded generator, for probabilistic faults.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn new_uuid(&mut self) -> String {
        let a: u64 = self.rng.random();
        let b: u64 = self.rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn seed_server(&mut self, s: SeedServer) -> String {
        let id = self.new_uuid();
        self.servers.push(SimServer {
            id: id.clone(),
            name: s.name,
            datacenter: s.datacenter,
            power: if s.power_on { "on" } else { "off" }.into(),
            tags: s.tags,
            cpu: s.cpu,
            ram_mb: s.ram_mb,
            disks_gb: vec![20],
            networks: vec!["wan".into()],
            billing: "hourly".into(),
            image: image_id("US-NY2", 0),
            // Seeded servers ran before (a powered-off one was parked by an earlier run).
            booted: true,
            // Seeded servers are visible at once, whatever the listing lag.
            created: self.epoch,
        });
        id
    }

    /// Applies the effects of every command that reached its end by `now`.
    pub fn advance(&mut self, now: Instant) {
        let mut finished = Vec::new();
        for id in &self.command_order {
            let Some(cmd) = self.commands.get_mut(id) else {
                continue;
            };
            if cmd.applied {
                continue;
            }
            let status = cmd.status_at(now);
            cmd.status = status.to_string();
            if matches!(status, "complete" | "error" | "cancelled") {
                cmd.applied = true;
                finished.push((
                    cmd.kind,
                    cmd.outcome,
                    cmd.server_id.clone(),
                    cmd.power_on_after,
                ));
            }
        }
        for (kind, outcome, server_id, power_on_after) in finished {
            let idx = self.servers.iter().position(|s| s.id == server_id);
            match (kind, outcome, idx) {
                (_, _, None) => {}
                (CommandKind::Create, Outcome::Complete, Some(i)) if power_on_after => {
                    self.servers[i].power = "on".into();
                    self.servers[i].booted = true;
                }
                (CommandKind::Create, Outcome::Complete, Some(_)) => {}
                // A failed or cancelled create leaves nothing behind.
                (CommandKind::Create, _, Some(i)) => {
                    self.servers.remove(i);
                }
                (CommandKind::PowerOn, Outcome::Complete, Some(i)) => {
                    self.servers[i].power = "on".into();
                    self.servers[i].booted = true;
                }
                (CommandKind::PowerOff, Outcome::Complete, Some(i)) => {
                    self.servers[i].power = "off".into();
                }
                (CommandKind::Terminate, Outcome::Complete, Some(i)) => {
                    self.servers.remove(i);
                }
                _ => {}
            }
        }
    }

    /// The listing: servers old enough to be visible under the listing-lag fault.
    pub fn listing(&self, now: Instant) -> Vec<&SimServer> {
        if self.faults.listing_empty {
            return Vec::new();
        }
        let lag = Duration::from_millis(self.faults.listing_lag_ms);
        self.servers
            .iter()
            .filter(|s| now.saturating_duration_since(s.created) >= lag)
            .filter(|s| !self.faults.listing_hides.contains(&s.name))
            .collect()
    }

    /// Servers matched by a selector. Names are regular expressions, as in the API; ids are
    /// compared exactly.
    pub fn select(&self, sel: &Selector) -> Result<Vec<usize>, ApiError> {
        match sel {
            Selector::Id(id) => Ok(self
                .servers
                .iter()
                .position(|s| &s.id == id)
                .into_iter()
                .collect()),
            Selector::Name(pattern) => {
                // PHP's `preg_match('/^' . name . '$/', ...)`: not escaped, not grouped (so
                // `a|b` is "starts with a or ends with b"), `$` also before a final newline, and
                // a `/` or a bad pattern is a PHP warning, which the server answers generically.
                if pattern.contains('/') {
                    return Err(ApiError::Generic);
                }
                let re = regex::Regex::new(&format!("^{pattern}\\n?\\z"))
                    .map_err(|_| ApiError::Generic)?;
                Ok(self
                    .servers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| re.is_match(&s.name))
                    .map(|(i, _)| i)
                    .collect())
            }
        }
    }

    fn enqueue(&mut self, kind: CommandKind, server: usize, now: Instant) -> String {
        let outcome = if self.chance(self.faults.command_error_rate) {
            Outcome::Error
        } else if self.chance(self.faults.command_cancel_rate) {
            Outcome::Cancelled
        } else {
            Outcome::Complete
        };
        let base = match kind {
            CommandKind::Create => self.timing.create,
            CommandKind::PowerOn if self.servers[server].booted => self.timing.boot,
            CommandKind::PowerOn => self.timing.first_boot,
            CommandKind::PowerOff => self.timing.power,
            CommandKind::Terminate => self.timing.terminate,
        };
        let total = self.timing.scaled(base);
        let pending_for = total.mul_f64(self.timing.pending_share.clamp(0.0, 1.0));
        let id = self.next_command.to_string();
        self.next_command += 1;
        let s = &self.servers[server];
        self.commands.insert(
            id.clone(),
            SimCommand {
                id: id.clone(),
                kind,
                server_id: s.id.clone(),
                server_name: s.name.clone(),
                outcome,
                status: "pending".into(),
                applied: false,
                power_on_after: true,
                started: now,
                pending_for,
                total,
                added: crate::time::queue_timestamp(std::time::SystemTime::now()),
            },
        );
        self.command_order.push(id.clone());
        id
    }

    /// Starts creating a server; the server is listed (powered off) at once.
    pub fn create(&mut self, req: NewServer, now: Instant) -> Result<String, ApiError> {
        let cores: u32 = req
            .cpu
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse()
            .unwrap_or(0);
        let used_servers = u32::try_from(self.servers.len()).unwrap_or(u32::MAX);
        let used_cores: u32 = self.servers.iter().map(SimServer::cores).sum();
        let used_ram: u64 = self.servers.iter().map(|s| s.ram_mb).sum();
        if let Some(max) = self.quota.max_servers
            && used_servers + 1 > max
        {
            return Err(refused(format!(
                "Server quota exceeded: the account may have at most {max} servers (31)"
            )));
        }
        if let Some(max) = self.quota.max_cpu_cores
            && used_cores + cores > max
        {
            return Err(refused(format!(
                "CPU quota exceeded: {used_cores} of {max} cores in use, {cores} requested (31)"
            )));
        }
        if let Some(max) = self.quota.max_ram_mb
            && used_ram + req.ram_mb > max
        {
            return Err(refused(format!(
                "RAM quota exceeded: {used_ram} of {max} MB in use, {} requested (31)",
                req.ram_mb
            )));
        }
        let id = self.new_uuid();
        self.servers.push(SimServer {
            id,
            name: req.name,
            datacenter: req.datacenter,
            power: "off".into(),
            tags: req.tags,
            cpu: req.cpu,
            ram_mb: req.ram_mb,
            disks_gb: req.disks_gb,
            networks: req.networks,
            billing: req.billing,
            image: req.image,
            booted: false,
            created: now,
        });
        let idx = self.servers.len() - 1;
        let cmd = self.enqueue(CommandKind::Create, idx, now);
        if let Some(c) = self.commands.get_mut(&cmd) {
            c.power_on_after = req.power_on_after;
        }
        Ok(cmd)
    }

    /// Starts a power or terminate command on every selected server, one after another as
    /// the server does (upstream refusals come back as the upstream's text).
    pub fn server_command(
        &mut self,
        kind: CommandKind,
        sel: &Selector,
        force: bool,
        now: Instant,
    ) -> Result<Vec<String>, ApiError> {
        let matched = self.select(sel)?;
        if matched.is_empty() {
            return Err(no_servers(sel));
        }
        if kind == CommandKind::Terminate
            && !force
            && matched.iter().any(|i| self.servers[*i].power == "on")
        {
            // The upstream refuses to terminate a running server without force.
            return Err(ApiError::Server(
                "Server must be powered off before it is terminated (12)".into(),
            ));
        }
        Ok(matched
            .into_iter()
            .map(|i| self.enqueue(kind, i, now))
            .collect())
    }

    /// Queue entries in request order, one upstream lookup per id as the server makes them:
    /// the first id the upstream does not report (unknown, or not started within the
    /// `queue_lag_ms` fault) fails the whole request with its status and no message.
    pub fn queue(
        &mut self,
        ids: &[&str],
        now: Instant,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        self.queue_polls.most_ids = self.queue_polls.most_ids.max(ids.len());
        if self.faults.queue_empty {
            return Ok(Vec::new());
        }
        let lag = Duration::from_millis(self.faults.queue_lag_ms);
        let answer: Result<Vec<serde_json::Value>, ApiError> = ids
            .iter()
            .map(|id| {
                let cmd = self
                    .commands
                    .get(*id)
                    .filter(|c| now.saturating_duration_since(c.started) >= lag)
                    .ok_or(ApiError::Bare(QUEUE_UNKNOWN_STATUS))?;
                Ok(serde_json::json!({
                    "id": cmd.id.parse::<u64>().unwrap_or(0),
                    "status": cmd.status,
                    "server": cmd.server_name,
                    "description": match cmd.kind {
                        CommandKind::Create => "Create server",
                        CommandKind::PowerOn => "Power on",
                        CommandKind::PowerOff => "Power off",
                        CommandKind::Terminate => "Terminate server",
                    },
                    "added": cmd.added,
                    "executed": cmd.added,
                    "completed": if cmd.applied { cmd.added.clone() } else { String::new() },
                    "log": cmd.log(),
                }))
            })
            .collect();
        match &answer {
            Ok(_) => {
                let done = ids
                    .iter()
                    .filter_map(|id| self.commands.get(*id))
                    .filter(|c| c.kind == CommandKind::Create && c.status == "complete")
                    .count();
                self.queue_polls.complete += done as u64;
            }
            Err(_) => self.queue_polls.unknown += 1,
        }
        answer
    }

    /// Removes a server out of band (as if deleted in the console).
    pub fn vanish(&mut self, id: &str) -> bool {
        let before = self.servers.len();
        self.servers.retain(|s| s.id != id);
        before != self.servers.len()
    }
}

/// What the server answers when a selector matches nothing: its own text for a name (the name
/// path lists servers first), the upstream's for an id (the id path asks the upstream blindly).
pub fn no_servers(sel: &Selector) -> ApiError {
    match sel {
        Selector::Name(n) => ApiError::Server(format!("No servers found (name='{n}')")),
        Selector::Id(_) => ApiError::Server(UNKNOWN_SERVER_ID.into()),
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
