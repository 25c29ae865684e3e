//! Client of Kamatera's cloudcli REST API (`https://cloudcli.cloudwm.com`): list servers, read
//! tags, create, power on/off, terminate, poll the command queue, look up a server the listing
//! lacks, and read server options. What the server behind it does on each path is in
//! `../shared/reference/cloudcli-server.md`; the simulator (`crate::sim`) answers the same way.
//!
//! # Timeouts and retries
//!
//! Every request carries `AuthClientId`/`AuthSecret`, JSON headers, our `User-Agent`, and a
//! timeout by kind ([`Timeouts`]): reads 30 s, power changes and terminate 60 s, create 5
//! minutes (the server makes several upstream calls for one create, and sets no timeout of its
//! own). What happens on failure depends on what repeating the request could do:
//!
//! - **Reads and status polls** (`list_servers`, `server_tags`, `command_status`, lookups,
//!   options) are retried on connection errors, timeouts, HTTP 429, generic 5xx and non-JSON
//!   (gateway) bodies, with exponential backoff and jitter, bounded in attempts and in total time
//!   ([`RetryPolicy`]). A refusal with a reason ([`ErrorClass::Refused`]) is not retried.
//! - **`create_server` is never retried.** A request that timed out may still have bought a server;
//!   a second one could buy another. The caller learns the outcome from the listing instead.
//! - **`power_on`, `power_off`, `terminate`** are retried only when the error proves the API did
//!   not accept the request: the connection was never established, or HTTP 429.
//! - Other 4xx answers are never retried, and neither are answers that say what is wrong
//!   (not logged in, no such server, quota, the upstream's refusal).
//!
//! Errors are classified ([`ErrorClass`]) and carry a message safe for the autoscaler and a
//! detailed one for our log; both have credentials, passwords and init scripts redacted. An
//! error leaves the outcome open ([`KamateraError::may_have_been_processed`]) unless its answer
//! proves nothing was done: a 4xx, a 429, a refused connection, or a refusal with a reason.
//! Mutations address servers by id, never by name: the API treats `name` as a regular
//! expression and acts on every match.

mod error;
mod preflight;
mod retry;
mod types;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tracing::{debug, warn};

pub use crate::names::{is_server_name, new_server_name};
use crate::secret::Secret;
use crate::telemetry::Metrics;

use error::ErrorBody;
pub use error::{ErrorClass, KamateraError, QUOTA_PATTERNS, Redactor, is_quota_message};
pub use preflight::{CheckResult, Placement, preflight};
pub use retry::{Idempotency, RetryPolicy};
pub use types::{
    AbsenceSign, CommandState, CommandStatus, Datacenter, Image, Lookup, Polled, Power, Server,
};

use types::{command_ids, id_of, str_field};

/// How long one request may take, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Listings, tags, lookups, queue polls, options.
    pub read: Duration,
    /// Power on, power off, terminate.
    pub power: Duration,
    /// Create (never retried: a create that times out is "maybe bought").
    pub create: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            read: Duration::from_secs(30),
            power: Duration::from_secs(60),
            create: Duration::from_secs(5 * 60),
        }
    }
}

impl Timeouts {
    /// The same limit for every kind of request (tests).
    pub fn uniform(d: Duration) -> Self {
        Timeouts {
            read: d,
            power: d,
            create: d,
        }
    }
}
/// Characters of a response body kept in an error's detail.
const DETAIL_BODY_CHARS: usize = 1000;
/// Characters of an API message kept in a safe message.
const SAFE_MESSAGE_CHARS: usize = 300;

/// Where and how to reach the API.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Base URL; a trailing `/` is ignored.
    pub base_url: String,
    pub client_id: String,
    pub secret: Secret,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// Where request counts and latencies go.
    pub metrics: Arc<Metrics>,
    /// Send every request to this service in the process instead of over HTTP to `base_url`
    /// (the simulator, in tests that run on a paused clock); `None` for the real API.
    pub in_process: Option<InProcess>,
}

/// An HTTP service called in this process instead of over a connection: the same requests and
/// answers, no socket, and the request timeout on tokio's clock, so a test may pause time.
#[derive(Clone)]
pub struct InProcess(pub axum::Router);

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess")
    }
}

impl ClientSettings {
    /// The API at `base_url` with these credentials, the default timeout and retry policy, and
    /// request figures recorded into `metrics`.
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        secret: Secret,
        metrics: Arc<Metrics>,
    ) -> Self {
        ClientSettings {
            base_url: base_url.into(),
            client_id: client_id.into(),
            secret,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            metrics,
            in_process: None,
        }
    }
}

/// A pooled, cheaply cloneable API client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    in_process: Option<InProcess>,
    base_url: String,
    client_id: String,
    secret: Secret,
    timeouts: Timeouts,
    retry: RetryPolicy,
    redactor: Redactor,
    metrics: Arc<Metrics>,
}

/// What one create request asks for, in the API's terms.
#[derive(Debug, Clone, Copy)]
pub struct CreateServer<'a> {
    /// The full server name, see [`new_server_name`].
    pub name: &'a str,
    /// `None` lets the API generate one.
    pub password: Option<&'a Secret>,
    pub ssh_key: &'a str,
    pub datacenter: &'a str,
    pub image: &'a str,
    /// `<cores><type>`, for example `2B`.
    pub cpu: &'a str,
    pub ram_mb: u32,
    /// Disk specs such as `size=20`.
    pub disks: &'a [String],
    /// Network specs such as `name=wan,ip=auto`.
    pub networks: &'a [String],
    pub daily_backup: bool,
    pub managed: bool,
    pub billing: Billing,
    pub monthly_package: &'a str,
    /// The init script, sent as is.
    pub script: Option<&'a Secret>,
    pub tags: &'a [String],
    /// Power the server on when it is created (`poweronaftercreate`); off for a standby
    /// server, which is powered on (and boots for the first time) when a scale-up takes it.
    pub power_on: bool,
}

/// How a server is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    Hourly,
    Monthly,
}

impl Billing {
    fn as_str(self) -> &'static str {
        match self {
            Billing::Hourly => "hourly",
            Billing::Monthly => "monthly",
        }
    }
}

/// Installs ring as the process's rustls crypto provider (reqwest is built without one; tonic
/// uses ring too). Idempotent; any HTTPS client built outside [`Client`] must call it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One request as the retry loop sees it.
struct Call<'a> {
    /// Short operation name for logs, e.g. `list servers`.
    op: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
    idempotency: Idempotency,
    timeout: Duration,
    redactor: &'a Redactor,
}

/// Why an attempt failed, and whether another attempt may help.
struct Failure {
    error: KamateraError,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Client {
    pub fn new(settings: ClientSettings) -> Result<Client, KamateraError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "kamatera-ca-provider/",
                env!("CARGO_PKG_VERSION"),
                " (+https://github.com/kubernetes/autoscaler externalgrpc)"
            ))
            .connect_timeout(settings.timeouts.read.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                KamateraError::new(
                    ErrorClass::InvalidRequest,
                    "cannot build the Kamatera HTTP client".into(),
                    format!("cannot build the Kamatera HTTP client: {e}"),
                )
            })?;
        let redactor = Redactor::new([settings.secret.expose().to_string()]);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                in_process: settings.in_process,
                base_url: settings.base_url.trim_end_matches('/').to_string(),
                client_id: settings.client_id,
                secret: settings.secret,
                timeouts: settings.timeouts,
                retry: settings.retry,
                redactor,
                metrics: settings.metrics,
            }),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The metrics this client records into (shared with whoever built it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// `GET /service/servers`, keeping servers whose name starts with `name_prefix`.
    pub async fn list_servers(&self, name_prefix: &str) -> Result<Vec<Server>, KamateraError> {
        let v = self
            .call(self.read("list servers", Method::GET, "/service/servers", None))
            .await?;
        types::decode_servers(&v, name_prefix)
            .map_err(|(what, at)| self.shape("list servers", what, &at))
    }

    /// Looks up a server the listing lacks (`POST /service/server/info`), by id and by name.
    ///
    /// The id path asks the upstream blindly: a server that does not exist comes back as a 500
    /// with the upstream's text, which is a refusal with a reason, not a proof. The name path
    /// lists the account first and answers `[]` (with `allow-no-servers`) when nothing matches,
    /// which a listing that came back empty by mistake would also do. So the sign of absence
    /// needs both: the id refused and the exact, escaped name matching nothing. A name that
    /// cannot be asked for safely leaves the id's refusal alone. Either path that finds the
    /// server means it exists. Any other answer is an error: nothing is known.
    pub async fn lookup_server(&self, id: &str, name: &str) -> Result<Lookup, KamateraError> {
        let by_id = self
            .call(self.read(
                "server lookup",
                Method::POST,
                "/service/server/info",
                Some(json!({ "id": id })),
            ))
            .await;
        match by_id {
            Ok(v) => {
                let servers = types::decode_servers(&v, "")
                    .map_err(|(what, at)| self.shape("server lookup", what, &at))?;
                return servers
                    .into_iter()
                    .find(|s| s.id == id)
                    .map(Lookup::Exists)
                    .ok_or_else(|| {
                        self.shape("server lookup", "the server asked for is not in it", &v)
                    });
            }
            Err(e) if matches!(e.class, ErrorClass::Refused | ErrorClass::NotFound) => {}
            Err(e) => return Err(e),
        }
        let Some(servers) = self.lookup_name(name).await? else {
            return Ok(Lookup::Absent(AbsenceSign::IdOnly));
        };
        if servers.is_empty() {
            return Ok(Lookup::Absent(AbsenceSign::IdAndName));
        }
        match servers.into_iter().find(|s| s.id == id) {
            Some(s) => Ok(Lookup::Exists(s)),
            // The name is another server's now: the two paths disagree, nothing is proven.
            None => Err(KamateraError::new(
                ErrorClass::BadResponse,
                "Kamatera server lookup: the id is refused but its name is listed under another id"
                    .into(),
                format!(
                    "server lookup of {id}: the id path refused, the name {name} is listed under another id"
                ),
            )),
        }
    }

    /// The servers named exactly `name` (`POST /service/server/info` with the escaped name and
    /// `allow-no-servers`): empty when none matches, which is also what a listing that came back
    /// empty by mistake would say, so alone it is a weak sign. `None` when the name cannot be
    /// asked for exactly (characters the provider does not escape).
    pub async fn lookup_name(&self, name: &str) -> Result<Option<Vec<Server>>, KamateraError> {
        let Some(pattern) = name_pattern(name) else {
            return Ok(None);
        };
        let v = self
            .call(self.read(
                "server lookup",
                Method::POST,
                "/service/server/info",
                Some(json!({ "name": pattern, "allow-no-servers": "yes" })),
            ))
            .await?;
        let servers = types::decode_servers(&v, "")
            .map_err(|(what, at)| self.shape("server lookup", what, &at))?;
        Ok(Some(
            servers.into_iter().filter(|s| s.name == name).collect(),
        ))
    }

    /// `POST /server/tags` for one server, by id. Accepts `tagName` and the older `tag name`.
    pub async fn server_tags(&self, server_id: &str) -> Result<Vec<String>, KamateraError> {
        let v = self
            .call(self.read(
                "server tags",
                Method::POST,
                "/server/tags",
                Some(json!({ "id": server_id })),
            ))
            .await?;
        types::decode_tags(&v).map_err(|(what, at)| self.shape("server tags", what, &at))
    }

    /// `POST /service/server`: starts creating one server and returns its command id. Sent
    /// exactly once, whatever happens.
    pub async fn create_server(&self, req: CreateServer<'_>) -> Result<String, KamateraError> {
        let s = req;
        let password = s
            .password
            .map(|p| p.expose().to_string())
            .unwrap_or_else(|| "__generate__".to_string());
        let script = s.script.map(|x| x.expose().to_string()).unwrap_or_default();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let body = json!({
            "name": req.name,
            "password": password,
            "passwordValidate": password,
            "ssh-key": s.ssh_key,
            "datacenter": s.datacenter,
            "image": s.image,
            "cpu": s.cpu,
            "ram": s.ram_mb.to_string(),
            "disk": s.disks.join(" "),
            "dailybackup": yes_no(s.daily_backup),
            "managed": yes_no(s.managed),
            "network": s.networks.join(" "),
            "quantity": 1,
            "billingcycle": s.billing.as_str(),
            "monthlypackage": s.monthly_package,
            "poweronaftercreate": yes_no(s.power_on),
            "script-file": script,
            "userdata-file": "",
            "tag": s.tags.join(" "),
        });
        let redactor = self
            .inner
            .redactor
            .with([password, script, s.ssh_key.to_string()]);
        let v = self
            .call(Call {
                op: "create server",
                method: Method::POST,
                path: "/service/server".into(),
                body: Some(body),
                idempotency: Idempotency::Create,
                timeout: self.inner.timeouts.create,
                redactor: &redactor,
            })
            .await?;
        // A generated password may be in the answer; it is read past and dropped here.
        self.single_command("create server", &v, &redactor)
    }

    /// `POST /service/server/poweron` by server id.
    pub async fn power_on(&self, server_id: &str) -> Result<String, KamateraError> {
        self.server_command(
            "power on",
            "/service/server/poweron",
            json!({ "id": server_id }),
        )
        .await
    }

    /// `POST /service/server/poweroff` by server id.
    pub async fn power_off(&self, server_id: &str) -> Result<String, KamateraError> {
        self.server_command(
            "power off",
            "/service/server/poweroff",
            json!({ "id": server_id }),
        )
        .await
    }

    /// `POST /service/server/terminate` by server id, forced (works on a running server).
    pub async fn terminate(&self, server_id: &str) -> Result<String, KamateraError> {
        self.server_command(
            "terminate",
            "/service/server/terminate",
            json!({ "id": server_id, "force": true }),
        )
        .await
    }

    /// `GET /service/queue?id=<id>`: one command's status. One id per request, as every real
    /// client polls: the server asks the upstream once per id and fails the whole request on the
    /// first id the upstream does not report, so a batch is only as good as its newest command.
    /// An id the upstream does not report (not started yet, or unknown), and the empty answer
    /// the server gives for an empty upstream body, are [`Polled::Unreported`].
    pub async fn command_status(&self, command_id: &str) -> Result<Polled, KamateraError> {
        let path = format!("/service/queue?id={}", url_escape(command_id));
        let v = match self
            .call(self.read("command status", Method::GET, &path, None))
            .await
        {
            Ok(v) => v,
            Err(e) if e.class == ErrorClass::Refused => return Ok(Polled::Unreported),
            Err(e) => return Err(e),
        };
        let asked = [command_id.to_string()];
        let decoded = types::decode_queue(&v, &asked)
            .map_err(|(what, at)| self.shape("command status", what, &at))?;
        match decoded.as_slice() {
            [] => Ok(Polled::Unreported),
            [one] if one.id == command_id => {
                let mut status = one.clone();
                status.log = self.inner.redactor.clean(&status.log, 4000);
                Ok(Polled::Status(status))
            }
            _ => Err(self.shape("command status", "expected the one command asked for", &v)),
        }
    }

    /// `GET /service/server?datacenter=1`: the datacenters this account can use.
    pub async fn datacenters(&self) -> Result<Vec<Datacenter>, KamateraError> {
        let v = self
            .call(self.read(
                "datacenters",
                Method::GET,
                "/service/server?datacenter=1",
                None,
            ))
            .await?;
        Ok(named_entries(&v, "name")
            .ok_or_else(|| self.shape("datacenters", "expected a list of datacenters", &v))?
            .into_iter()
            .map(|(id, name)| Datacenter { id, name })
            .collect())
    }

    /// `GET /service/server?images=1&datacenter=X`: the disk images of a datacenter.
    pub async fn images(&self, datacenter: &str) -> Result<Vec<Image>, KamateraError> {
        let path = format!(
            "/service/server?images=1&datacenter={}",
            url_escape(datacenter)
        );
        let v = self
            .call(self.read("images", Method::GET, &path, None))
            .await?;
        // The server's `name` is the upstream's description (`code` is the upstream's name).
        Ok(named_entries(&v, "name")
            .ok_or_else(|| self.shape("images", "expected a list of images", &v))?
            .into_iter()
            .map(|(id, description)| Image { id, description })
            .collect())
    }

    async fn server_command(
        &self,
        op: &'static str,
        path: &str,
        body: Value,
    ) -> Result<String, KamateraError> {
        let v = self
            .call(Call {
                op,
                method: Method::POST,
                path: path.to_string(),
                body: Some(body),
                idempotency: Idempotency::Mutating,
                timeout: self.inner.timeouts.power,
                redactor: &self.inner.redactor,
            })
            .await?;
        self.single_command(op, &v, &self.inner.redactor)
    }

    fn single_command(
        &self,
        op: &'static str,
        v: &Value,
        redactor: &Redactor,
    ) -> Result<String, KamateraError> {
        match command_ids(v) {
            Some(ids) if ids.len() == 1 => Ok(ids.into_iter().next().unwrap_or_default()),
            Some(ids) if ids.len() > 1 => Err(KamateraError::new(
                // The request was carried out (HTTP 200), whatever the answer means.
                ErrorClass::BadResponse,
                format!(
                    "Kamatera {op} returned {} command ids where one was expected",
                    ids.len()
                ),
                format!("Kamatera {op} returned command ids {ids:?} where one was expected"),
            )
            .maybe_processed(true)),
            _ => Err(KamateraError::new(
                ErrorClass::BadResponse,
                format!("unexpected answer from the Kamatera {op} API (no command id)"),
                format!(
                    "unexpected answer from the Kamatera {op} API (no command id): {}",
                    redactor.clean(&v.to_string(), DETAIL_BODY_CHARS)
                ),
            )
            .maybe_processed(true)),
        }
    }

    fn read<'a>(
        &'a self,
        op: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Call<'a> {
        Call {
            op,
            method,
            path: path.to_string(),
            body,
            idempotency: Idempotency::Read,
            timeout: self.inner.timeouts.read,
            redactor: &self.inner.redactor,
        }
    }

    fn shape(&self, op: &str, what: &str, v: &Value) -> KamateraError {
        KamateraError::new(
            ErrorClass::BadResponse,
            format!("unexpected answer from the Kamatera {op} API: {what}"),
            format!(
                "unexpected answer from the Kamatera {op} API: {what}: {}",
                self.inner.redactor.clean(&v.to_string(), DETAIL_BODY_CHARS)
            ),
        )
    }

    /// Sends a request under the retry policy and returns the JSON of a successful answer.
    async fn call(&self, call: Call<'_>) -> Result<Value, KamateraError> {
        let policy = self.inner.retry;
        let max_attempts = match call.idempotency {
            Idempotency::Create => 1,
            _ => policy.max_attempts.max(1),
        };
        let started = Instant::now();
        let mut attempt = 1;
        loop {
            let failure = match self.measured_attempt(&call).await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let delay = failure
                .retry_after
                .map(|d| d.min(policy.max_delay))
                .unwrap_or_else(|| policy.delay(attempt));
            let out_of_budget =
                attempt >= max_attempts || started.elapsed() + delay > policy.max_total;
            if !failure.retryable || out_of_budget {
                let e = failure.error;
                if attempt > 1 {
                    let detail = format!("{} (after {attempt} attempts)", e.detail());
                    return Err(e.with_detail(detail));
                }
                return Err(e);
            }
            warn!(
                op = call.op,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                error = failure.error.detail(),
                "Kamatera API call failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One attempt, counted and timed (the in-flight gauge drops even if the future is dropped).
    async fn measured_attempt(&self, call: &Call<'_>) -> Result<Value, Failure> {
        struct InFlight<'a>(&'a Metrics);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.api_in_flight.dec();
            }
        }
        let metrics = &self.inner.metrics;
        metrics.api_in_flight.inc();
        let _guard = InFlight(metrics);
        let started = Instant::now();
        let result = self.attempt(call).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(f) => f.error.class.as_str().replace(' ', "_"),
        };
        metrics.api_request(
            &call.op.replace(' ', "_"),
            &outcome,
            started.elapsed().as_secs_f64(),
        );
        result
    }

    /// One HTTP exchange, classified.
    async fn attempt(&self, call: &Call<'_>) -> Result<Value, Failure> {
        debug!(op = call.op, method = %call.method, path = %call.path, "Kamatera API request");
        let (status, retry_after, text) = match &self.inner.in_process {
            Some(service) => self.exchange_in_process(service, call).await?,
            None => self.exchange(call).await?,
        };
        self.classify(call, status, retry_after, &text)
    }

    /// Sends the request over HTTP: the status, the `Retry-After` of the answer, its body.
    async fn exchange(
        &self,
        call: &Call<'_>,
    ) -> Result<(StatusCode, Option<Duration>, String), Failure> {
        let url = format!("{}{}", self.inner.base_url, call.path);
        let mut secret = reqwest::header::HeaderValue::from_str(self.inner.secret.expose())
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        // Kept out of HPACK tables and Debug output.
        secret.set_sensitive(true);
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), &url)
            .timeout(call.timeout)
            .header("AuthClientId", &self.inner.client_id)
            .header("AuthSecret", secret)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json");
        if let Some(body) = &call.body {
            req = req.body(body.to_string());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failure(call, &e)),
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Err(self.transport_failure(call, &e)),
        };
        Ok((status, retry_after, text))
    }

    /// Sends the request to a service in this process, with the same headers and body, under
    /// the same timeout (on tokio's clock).
    async fn exchange_in_process(
        &self,
        service: &InProcess,
        call: &Call<'_>,
    ) -> Result<(StatusCode, Option<Duration>, String), Failure> {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            .header("AuthClientId", &self.inner.client_id)
            .header("AuthSecret", self.inner.secret.expose())
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .body(axum::body::Body::from(
                call.body.as_ref().map(Value::to_string).unwrap_or_default(),
            ));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Err(self.transport_error(call, "could not connect", &e.to_string()));
            }
        };
        let answer = async {
            let resp = service
                .0
                .clone()
                .oneshot(req)
                .await
                .unwrap_or_else(|e| match e {});
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
            let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await;
            (status, retry_after, body)
        };
        match tokio::time::timeout(call.timeout, answer).await {
            Err(_) => Err(self.transport_error(call, "timed out", "no answer in time")),
            Ok((_, _, Err(e))) => {
                Err(self.transport_error(call, "connection failed", &e.to_string()))
            }
            Ok((status, retry_after, Ok(bytes))) => Ok((
                status,
                retry_after,
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
        }
    }

    /// Classifies an answer: the JSON of a success, or the failure it means.
    fn classify(
        &self,
        call: &Call<'_>,
        status: StatusCode,
        retry_after: Option<Duration>,
        text: &str,
    ) -> Result<Value, Failure> {
        let json: Option<Value> = serde_json::from_str(text).ok();
        let body_detail = call.redactor.clean(text, DETAIL_BODY_CHARS);
        let detail = |what: &str| {
            format!(
                "{} {} ({}): {what}; HTTP {}; body: {body_detail}",
                call.method,
                call.path,
                call.op,
                status.as_u16()
            )
        };

        if status.is_success() {
            return match json {
                Some(v) => match api_error_message(&v) {
                    // 200 with an error object: the cloudcli proxy passes upstream errors on.
                    Some(msg) if !v.is_array() => {
                        let msg = call.redactor.clean(&msg, SAFE_MESSAGE_CHARS);
                        let class = classify_message(&msg).unwrap_or(ErrorClass::BadResponse);
                        Err(Failure {
                            error: KamateraError::new(
                                class,
                                format!("Kamatera {} failed: {msg}", call.op),
                                detail("error object in a 200 answer"),
                            ),
                            retryable: false,
                            retry_after: None,
                        })
                    }
                    _ => Ok(v),
                },
                None => Err(Failure {
                    error: KamateraError::new(
                        ErrorClass::BadResponse,
                        format!(
                            "the Kamatera API answered {} with a body that is not JSON",
                            call.op
                        ),
                        detail("body is not JSON"),
                    )
                    .maybe_processed(true),
                    retryable: call.idempotency == Idempotency::Read,
                    retry_after: None,
                }),
            };
        }

        let message = json
            .as_ref()
            .and_then(api_error_message)
            .map(|m| call.redactor.clean(&m, SAFE_MESSAGE_CHARS));
        let by_message = message.as_deref().and_then(classify_message);
        let body = ErrorBody::of(status.as_u16(), json.as_ref());
        let class = match (status, by_message) {
            (_, Some(class)) => class,
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => ErrorClass::Unauthorized,
            (StatusCode::TOO_MANY_REQUESTS, None) => ErrorClass::Transient,
            _ if body == ErrorBody::Refusal => ErrorClass::Refused,
            (s, None) if s.is_server_error() => ErrorClass::Transient,
            _ => ErrorClass::InvalidRequest,
        };
        let retryable = match call.idempotency {
            Idempotency::Create => false,
            Idempotency::Mutating => status == StatusCode::TOO_MANY_REQUESTS,
            Idempotency::Read => {
                class == ErrorClass::Transient
                    && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            }
        };
        let safe = match (&message, class) {
            (Some(m), _) if !m.is_empty() => format!(
                "Kamatera {} failed (HTTP {}): {m}",
                call.op,
                status.as_u16()
            ),
            (_, ErrorClass::Unauthorized) => format!(
                "Kamatera {} failed: the API refused the credentials (HTTP {})",
                call.op,
                status.as_u16()
            ),
            _ => format!("Kamatera {} failed: HTTP {}", call.op, status.as_u16()),
        };
        // A 5xx leaves open whether the request was carried out, unless its answer gives the
        // reason nothing was done, or the route never ran.
        let open = status.is_server_error() && by_message.is_none() && body == ErrorBody::Unclear;
        Err(Failure {
            error: KamateraError::new(class, safe, detail(class.as_str())).maybe_processed(open),
            retryable,
            retry_after: if status == StatusCode::TOO_MANY_REQUESTS {
                retry_after
            } else {
                None
            },
        })
    }

    fn transport_failure(&self, call: &Call<'_>, e: &reqwest::Error) -> Failure {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "connection failed"
        };
        self.transport_error(call, what, &error_chain(e))
    }

    /// A request that got no answer: `what` is `timed out`, `could not connect` (the request
    /// was not received: a mutation may be retried) or `connection failed`.
    fn transport_error(&self, call: &Call<'_>, what: &'static str, text: &str) -> Failure {
        let unsent = what == "could not connect";
        let retryable = match call.idempotency {
            Idempotency::Read => true,
            // Only a connection that never opened proves the request was not received.
            Idempotency::Mutating => unsent,
            Idempotency::Create => false,
        };
        let err_text = self.inner.redactor.clean(text, DETAIL_BODY_CHARS);
        Failure {
            error: KamateraError::new(
                ErrorClass::Transient,
                format!("Kamatera {}: {what} ({})", call.op, self.inner.base_url),
                format!(
                    "{} {} ({}): {what}: {err_text}",
                    call.method, call.path, call.op
                ),
            )
            .maybe_processed(!unsent),
            retryable,
            retry_after: None,
        }
    }
}

/// The class an API message implies by its words, if any.
fn classify_message(message: &str) -> Option<ErrorClass> {
    if message.contains("No servers found") {
        Some(ErrorClass::NotFound)
    } else if error::is_auth_message(message) {
        Some(ErrorClass::Unauthorized)
    } else if is_quota_message(message) {
        Some(ErrorClass::QuotaOrCapacity)
    } else {
        None
    }
}

/// The error text of an API error body: `{"message": ..}` (possibly holding JSON-encoded
/// upstream errors) or `{"errors": [{"code": .., "info": ..}]}`.
fn api_error_message(v: &Value) -> Option<String> {
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                let info = str_field(e, "info")
                    .or_else(|| str_field(e, "message"))
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                match e.get("code") {
                    Some(code) if !code.is_null() => format!("{info} ({code})"),
                    _ => info,
                }
            })
            .collect();
        return Some(parts.join(". "));
    }
    let message = str_field(v, "message")?;
    if let Ok(inner) = serde_json::from_str::<Value>(message)
        && let Some(m) = api_error_message(&inner)
    {
        return Some(m);
    }
    Some(message.to_string())
}

/// Entries of an options answer: an array of objects with `id` and a name-like field, or an
/// object mapping id to name.
fn named_entries(v: &Value, name_key: &str) -> Option<Vec<(String, String)>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let id = item.get("id").and_then(id_of)?;
                let name = str_field(item, name_key)
                    .or_else(|| str_field(item, "name"))
                    .or_else(|| str_field(item, "description"))
                    .unwrap_or_default();
                Some((id, name.to_string()))
            })
            .collect(),
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A server name as an exact `name` selector: the server pastes it into `/^...$/` unescaped, so
/// a dot is escaped and only letters, digits, `-`, `_` and `.` are asked for at all (`None`
/// otherwise: a name that cannot be asked for exactly).
/// An answer's `Retry-After`, in whole seconds (the only form the API's proxies send).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn name_pattern(name: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!name.is_empty() && name.chars().all(plain)).then(|| name.replace('.', "\\."))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            // PROPTEST_CASES runs it longer.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn error_and_option_decoders_never_panic(v in types::json_value()) {
            let _ = api_error_message(&v);
            let _ = named_entries(&v, "name");
            let _ = classify_message(&v.to_string());
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            api_error_message(
                &json!({"message": "{\"errors\":[{\"code\":1,\"info\":\"you are not logged in\"}]}"})
            ),
            Some("you are not logged in (1)".into())
        );
        assert_eq!(
            api_error_message(&json!({"errors": [{"code": 5, "info": "a"}, {"info": "b"}]})),
            Some("a (5). b".into())
        );
        assert_eq!(api_error_message(&json!(["1"])), None);
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
        assert_eq!(name_pattern("k8s-a.b_1"), Some("k8s-a\\.b_1".into()));
        for unsafe_name in ["", "a|b", "a/b", "a(b)", "a b", "a$", "é"] {
            assert_eq!(name_pattern(unsafe_name), None, "{unsafe_name}");
        }
    }
}
