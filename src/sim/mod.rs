//! A stateful fake of Kamatera's cloudcli API on a real HTTP server, for demos (`serve --simulate`,
//! `simulator`), tests and benchmarks.
//!
//! It answers the provider's endpoints with the API's shapes and errors (reference §2): `name`
//! parameters are anchored regular expressions, every mutating call queues a command that moves
//! `pending → progress → complete` (or `error` / `cancelled`) on a clock, created servers are
//! listed powered off during creation and on afterwards, terminated ones disappear when their
//! command completes. An account quota, seeded randomness and fault knobs (error rates, plain-text
//! 504s, 429s, dropped connections, lost answers, latency, failing or cancelled commands, an empty
//! queue, a listing lag, revoked credentials, servers vanishing out of band) make every failure
//! path reproducible.
//!
//! `/_sim/...` is an admin surface without authentication: `GET /_sim/state`,
//! `GET|PUT /_sim/faults`, `POST /_sim/servers` (seed one), `POST /_sim/servers/{id}/vanish`.

// Handlers return early with ready-made responses; boxing them buys nothing here.
#![allow(clippy::result_large_err)]

mod admin;
mod args;
mod request;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::{
    ApiError, CommandKind, DATACENTERS, Endpoint, EndpointFaults, Faults, IMAGES, NOT_LOGGED_IN,
    QUEUE_UNKNOWN_STATUS, QueuePolls, Quota, SeedServer, SimState, Timing, UNKNOWN_SERVER_ID,
};
use state::{NewServer, Selector, image_id, no_servers};

use admin::*;
pub use args::{SimArgsError, SimulatorArgs};
use request::*;

/// Credentials the simulator accepts unless told otherwise; `config/example.ini` uses them.
pub const DEMO_CLIENT_ID: &str = "demo-client-id";
pub const DEMO_SECRET: &str = "demo-secret";

/// How to build a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub client_id: String,
    pub secret: String,
    /// Seed of every random choice (ids, fault draws): the same seed and requests give the same
    /// answers.
    pub seed: u64,
    pub timing: Timing,
    pub quota: Quota,
    pub servers: Vec<SeedServer>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: DEMO_CLIENT_ID.into(),
            secret: DEMO_SECRET.into(),
            seed: 0,
            timing: Timing::default(),
            quota: Quota::default(),
            servers: Vec::new(),
        }
    }
}

struct Shared {
    state: Mutex<SimState>,
    client_id: String,
    secret: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock cannot leave the state half-written in a way that
        // matters for a simulator; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator.
pub struct SimHandle {
    /// Where it listens; `None` in process (see [`in_process`]).
    addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// Base URL for a client, e.g. `http://127.0.0.1:8788`.
    pub fn url(&self) -> String {
        match self.addr {
            Some(addr) => format!("http://{addr}"),
            // Never dialled: a client of an in-process simulator calls its router.
            None => "http://simulator.in-process.invalid".into(),
        }
    }

    /// The simulator's HTTP service, to be called in this process (no socket): what
    /// [`in_process`] simulators are reached through.
    pub fn router(&self) -> Router {
        router(self.shared.clone())
    }

    /// Runs `f` on the state (after applying finished commands). Keep it short: requests wait.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        let mut s = self.shared.lock();
        s.advance(Instant::now());
        f(&mut s)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.with_state(|s| s.faults = faults);
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        self.with_state(|s| f(&mut s.faults));
    }

    /// Sets the faults of one endpoint (replacing what it had).
    pub fn set_endpoint_faults(&self, endpoint: Endpoint, faults: EndpointFaults) {
        self.update_faults(|f| {
            f.endpoints.insert(endpoint.key().to_string(), faults);
        });
    }

    /// Requests received by one endpoint so far.
    pub fn requests(&self, e: Endpoint) -> u64 {
        self.with_state(|s| s.requests.get(e.key()).copied().unwrap_or(0))
    }

    /// The same JSON as `GET /_sim/state`.
    pub fn snapshot(&self) -> Value {
        self.with_state(|s| state_json(s))
    }

    pub fn seed_server(&self, server: SeedServer) -> String {
        self.with_state(|s| s.seed_server(server))
    }

    /// Removes a server out of band.
    pub fn vanish(&self, id: &str) -> bool {
        self.with_state(|s| s.vanish(id))
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shared(config: SimConfig) -> Arc<Shared> {
    let mut state = SimState::new(config.seed, config.timing, config.quota);
    for s in config.servers {
        state.seed_server(s);
    }
    Arc::new(Shared {
        state: Mutex::new(state),
        client_id: config.client_id,
        secret: config.secret,
    })
}

/// A simulator that serves no socket: reached through [`SimHandle::router`] in this process.
/// Its clock is tokio's, so a test that pauses time runs its commands without waiting.
pub fn in_process(config: SimConfig) -> SimHandle {
    SimHandle {
        addr: None,
        shared: shared(config),
        shutdown: None,
        task: None,
    }
}

/// Binds `listen` (port 0 for an ephemeral port) and serves the simulator in the background.
pub async fn start(config: SimConfig, listen: SocketAddr) -> std::io::Result<SimHandle> {
    let shared = shared(config);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr: Some(addr),
        shared,
        shutdown: Some(tx),
        task: Some(task),
    })
}

fn router(shared: Arc<Shared>) -> Router {
    // A route's other methods answer as Laravel does (500), unknown paths 404.
    Router::new()
        .route("/", get(root).fallback(wrong_method))
        .route("/service/servers", get(list_servers).fallback(wrong_method))
        .route("/server/tags", post(server_tags).fallback(wrong_method))
        .route(
            "/service/server",
            post(create_server)
                .get(server_options)
                .fallback(wrong_method),
        )
        .route(
            "/service/server/poweron",
            post(power_on).fallback(wrong_method),
        )
        .route(
            "/service/server/poweroff",
            post(power_off).fallback(wrong_method),
        )
        .route(
            "/service/server/terminate",
            post(terminate).fallback(wrong_method),
        )
        .route(
            "/service/server/info",
            post(server_info).fallback(wrong_method),
        )
        .route("/service/queue", get(queue).fallback(wrong_method))
        .route("/_sim/state", get(admin_state))
        .route(
            "/_sim/faults",
            get(admin_get_faults)
                .put(admin_put_faults)
                .post(admin_put_faults),
        )
        .route("/_sim/servers", post(admin_seed))
        .route("/_sim/servers/{id}/vanish", post(admin_vanish))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            lose_responses,
        ))
        .with_state(shared)
}

/// The `lost_response_rate` and `answer_delay_ms` faults: the handler runs (its effects stay),
/// then the answer is lost or late.
async fn lose_responses(
    State(sim): Sim,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let endpoint = Endpoint::from_request(req.method().as_str(), req.uri().path());
    let response = next.run(req).await;
    let Some(e) = endpoint else { return response };
    let (lose, delay) = {
        let mut s = sim.lock();
        let f = s.faults.for_endpoint(e);
        (s.chance(f.lost_response_rate), f.answer_delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if lose { dropped_connection() } else { response }
}

type Sim = State<Arc<Shared>>;

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn api_error(e: ApiError, endpoint: Endpoint) -> Response {
    let status =
        |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match e {
        ApiError::BadRequest(m) => json_response(StatusCode::BAD_REQUEST, json!({ "message": m })),
        ApiError::Server(m) => {
            json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({ "message": m }))
        }
        ApiError::Generic => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "message": format!("Failed to run command method ({})", endpoint.method_name()) }),
        ),
        ApiError::Upstream {
            status: code,
            message,
        } => json_response(
            status(code),
            json!({ "json_decode_error": null, "message": message }),
        ),
        ApiError::Bare(code) => json_response(status(code), json!({ "json_decode_error": null })),
        ApiError::Wrapped(upstream) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "message": upstream.to_string() }),
        ),
    }
}

/// The upstream's error body for a request without valid credentials.
fn not_logged_in_body() -> Value {
    json!({ "errors": [{ "code": 1, "info": "you are not logged in" }] })
}

/// What a request meets before its handler: counting, latency, gateway and app faults. `Ok`
/// says whether the credentials are the account's: the server itself checks nothing, so each
/// handler shows a refusal where the upstream's answer would surface (fact sheet §1, §5).
async fn gate(shared: &Shared, endpoint: Endpoint, headers: &HeaderMap) -> Result<bool, Response> {
    enum Verdict {
        Pass,
        Drop,
        Gateway,
        RateLimit,
        Error,
    }
    let (verdict, latency, authorized) = {
        let mut s = shared.lock();
        s.count(endpoint);
        let f = s.faults.for_endpoint(endpoint);
        let verdict = if s.chance(f.drop_rate) {
            Verdict::Drop
        } else if s.chance(f.gateway_timeout_rate) {
            Verdict::Gateway
        } else if s.chance(f.rate_limit_rate) {
            Verdict::RateLimit
        } else if s.chance(f.error_rate) {
            Verdict::Error
        } else {
            Verdict::Pass
        };
        let authorized = !s.faults.unauthorized && authorized(shared, headers);
        (verdict, Duration::from_millis(f.latency_ms), authorized)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match verdict {
        Verdict::Pass => Ok(authorized),
        Verdict::Drop => Err(dropped_connection()),
        Verdict::Gateway => Err((
            StatusCode::GATEWAY_TIMEOUT,
            [(header::CONTENT_TYPE, "text/plain")],
            "Gateway Timeout",
        )
            .into_response()),
        Verdict::RateLimit => Err((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({ "message": "Too Many Attempts." })),
        )
            .into_response()),
        Verdict::Error => Err(api_error(ApiError::Generic, endpoint)),
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    // Header names are case-insensitive, as in the server.
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    get("AuthClientId") == Some(shared.client_id.as_str())
        && get("AuthSecret") == Some(shared.secret.as_str())
}

/// A 200 whose body breaks off: the client sees the connection drop mid-answer.
fn dropped_connection() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"[{\"id\":")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated drop",
        )),
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A POST handler's start: the gate, then the request's fields as the server reads them.
/// `Ok` also says whether the credentials are the account's.
async fn open(
    shared: &Shared,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Fields, bool), Response> {
    match gate(shared, endpoint, headers).await {
        Ok(authorized) => Ok((Fields::read(headers, body), authorized)),
        Err(refused) => {
            if !shared.lock().faults.echo_request_in_errors {
                return Err(refused);
            }
            // The fault: the error quotes every field of the request back, as an API that
            // complains about a field value does.
            let fields: Vec<String> = Fields::read(headers, body)
                .raw()
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_string)
                    )
                })
                .collect();
            Err(json_response(
                StatusCode::BAD_REQUEST,
                json!({ "message": format!("invalid flag value ({})", fields.join(", ")) }),
            ))
        }
    }
}

/// The server's answer to a route it has with another method (a Laravel exception, so 500).
async fn wrong_method(method: axum::http::Method) -> Response {
    let allowed = if method == axum::http::Method::GET {
        "POST"
    } else {
        "GET, HEAD"
    };
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({ "error": true, "message": format!("The {method} method is not supported for this route. Supported methods: {allowed}.") }),
    )
}

/// Unknown paths: 404 from the router; a trailing slash is redirected away first (`.htaccess`).
async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if path.len() > 1 && path.ends_with('/') {
        let target = match uri.query() {
            Some(q) => format!("{}?{q}", path.trim_end_matches('/')),
            None => path.trim_end_matches('/').to_string(),
        };
        return (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, target)]).into_response();
    }
    json_response(
        StatusCode::NOT_FOUND,
        json!({ "error": true, "message": "Not Found" }),
    )
}

async fn root(State(sim): Sim, headers: HeaderMap) -> Response {
    // Answered without an upstream call: no credentials needed.
    if let Err(r) = gate(&sim, Endpoint::Root, &headers).await {
        return r;
    }
    json_response(StatusCode::OK, json!({ "ready": true }))
}

async fn list_servers(State(sim): Sim, headers: HeaderMap) -> Response {
    match gate(&sim, Endpoint::ListServers, &headers).await {
        Err(r) => return r,
        // The upstream's error body is passed on as it is, with HTTP 200.
        Ok(false) => return json_response(StatusCode::OK, not_logged_in_body()),
        Ok(true) => {}
    }
    let now = Instant::now();
    let mut s = sim.lock();
    s.advance(now);
    let list: Vec<Value> = s
        .listing(now)
        .into_iter()
        .map(|srv| {
            json!({ "id": srv.id, "name": srv.name, "datacenter": srv.datacenter, "power": srv.power })
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(list))
}

/// The refusal of a request that addresses servers without valid credentials: the upstream's
/// text by id, a generic failure by name (the listing it starts with gets an error object).
fn unauthorized_select(sel: &Selector) -> ApiError {
    match sel {
        Selector::Id(_) => ApiError::Server(state::NOT_LOGGED_IN.into()),
        Selector::Name(_) => ApiError::Generic,
    }
}

/// A dry run's answer: the names a selector matches (none for an id).
fn dry_run(s: &SimState, sel: &Selector) -> Result<Response, ApiError> {
    let names: Vec<&str> = match sel {
        Selector::Id(_) => Vec::new(),
        Selector::Name(_) => s
            .select(sel)?
            .into_iter()
            .map(|i| s.servers[i].name.as_str())
            .collect(),
    };
    Ok(json_response(
        StatusCode::OK,
        json!({ "dryrun": true, "server-names": names }),
    ))
}

async fn server_tags(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::ServerTags;
    let (m, authorized) = match open(&sim, e, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut s = sim.lock();
    s.advance(Instant::now());
    let result = (|| {
        let sel = m.selector()?;
        if !authorized {
            return Err(unauthorized_select(&sel));
        }
        // The info flow runs first: existence is checked, and exactly one server is needed.
        let matched = s.select(&sel)?;
        let idx = match matched.as_slice() {
            [] if m.truthy("allow-no-servers") => return Err(ApiError::Generic),
            [] => return Err(no_servers(&sel)),
            [one] => *one,
            _ => {
                let Selector::Name(n) = &sel else {
                    return Err(ApiError::Generic);
                };
                return Err(ApiError::Server(format!(
                    "Too many matching servers (name='{n}')"
                )));
            }
        };
        let srv = &mut s.servers[idx];
        if let Some(add) = m.present("add")
            && !srv.tags.contains(&add)
        {
            srv.tags.push(add);
        }
        if let Some(remove) = m.present("remove") {
            srv.tags.retain(|t| *t != remove);
        }
        Ok(srv
            .tags
            .iter()
            .map(|t| json!({ "id": srv.id, "tagName": t }))
            .collect::<Vec<_>>())
    })();
    match result {
        Ok(tags) => json_response(StatusCode::OK, Value::Array(tags)),
        Err(err) => api_error(err, e),
    }
}

async fn create_server(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::CreateServer;
    let (m, authorized) = match open(&sim, e, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let now = Instant::now();
    let mut s = sim.lock();
    s.advance(now);
    let result = parse_create(&m, &s.lans, authorized).and_then(|(req, generate)| {
        let cmd = s.create(req, now)?;
        Ok((cmd, generate))
    });
    match result {
        Ok((cmd, true)) => {
            let seed: u64 = cmd.parse().unwrap_or(7);
            json_response(
                StatusCode::OK,
                json!({ "commandIds": [cmd], "password": generated_password(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) }),
            )
        }
        Ok((cmd, false)) => json_response(StatusCode::OK, json!([cmd])),
        Err(err) => api_error(err, e),
    }
}

async fn server_command(
    sim: &Shared,
    e: Endpoint,
    kind: CommandKind,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let (m, authorized) = match open(sim, e, headers, body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let now = Instant::now();
    let mut s = sim.lock();
    s.advance(now);
    let result = m.selector().and_then(|sel| {
        if !authorized {
            return Err(unauthorized_select(&sel));
        }
        if m.truthy("dryrun") {
            return dry_run(&s, &sel);
        }
        // PHP's loose `== "true"`: only JSON true or the string "true" force.
        let ids = s.server_command(kind, &sel, m.loosely_true("force"), now)?;
        Ok(json_response(StatusCode::OK, json!(ids)))
    });
    result.unwrap_or_else(|err| api_error(err, e))
}

async fn power_on(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    server_command(
        &sim,
        Endpoint::PowerOn,
        CommandKind::PowerOn,
        &headers,
        &body,
    )
    .await
}

async fn power_off(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    server_command(
        &sim,
        Endpoint::PowerOff,
        CommandKind::PowerOff,
        &headers,
        &body,
    )
    .await
}

async fn terminate(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    server_command(
        &sim,
        Endpoint::Terminate,
        CommandKind::Terminate,
        &headers,
        &body,
    )
    .await
}

async fn server_info(State(sim): Sim, headers: HeaderMap, body: Bytes) -> Response {
    let e = Endpoint::ServerInfo;
    let (m, authorized) = match open(&sim, e, &headers, &body).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut s = sim.lock();
    s.advance(Instant::now());
    let result = m.selector().and_then(|sel| {
        if !authorized {
            return Err(unauthorized_select(&sel));
        }
        if m.truthy("dryrun") {
            return dry_run(&s, &sel);
        }
        let matched = s.select(&sel)?;
        if matched.is_empty() {
            // By id the upstream is asked blindly and fails; by name the server's own answer.
            return match sel {
                Selector::Name(_) if m.truthy("allow-no-servers") => {
                    Ok(json_response(StatusCode::OK, json!([])))
                }
                _ => Err(no_servers(&sel)),
            };
        }
        let list: Vec<Value> = matched
            .into_iter()
            .map(|i| {
                let srv = &s.servers[i];
                json!({
                    "id": srv.id, "name": srv.name, "datacenter": srv.datacenter, "power": srv.power,
                    "cpu": srv.cpu, "ram": srv.ram_mb, "diskSizes": srv.disks_gb,
                    "networks": srv.networks.iter().map(|n| json!({"network": n, "ips": []})).collect::<Vec<_>>(),
                    "billing": srv.billing, "traffic": "t5000", "managed": "0", "backup": "0",
                    // Strings, as the server formats them; hourly-off repeats hourly-on (its bug).
                    "priceMonthlyOn": "20.0", "priceHourlyOn": "0.03", "priceHourlyOff": "0.03",
                })
            })
            .collect();
        Ok(json_response(StatusCode::OK, Value::Array(list)))
    });
    result.unwrap_or_else(|err| api_error(err, e))
}

async fn queue(
    State(sim): Sim,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let e = Endpoint::Queue;
    let authorized = match gate(&sim, e, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let truthy = |key: &str| query_truthy(&q, key);
    // Split on spaces; empty parts and the id 0 are skipped. No id: no upstream call, `[]`.
    let ids_text = query_value(&q, "id").unwrap_or_default();
    let ids: Vec<&str> = ids_text
        .split(' ')
        .filter(|i| !i.is_empty() && *i != "0")
        .collect();
    if ids.is_empty() {
        return json_response(StatusCode::OK, json!([]));
    }
    if !authorized {
        return api_error(ApiError::Bare(500), e);
    }
    let now = Instant::now();
    let mut s = sim.lock();
    s.advance(now);
    match s.queue(&ids, now) {
        // `wait` empties every item and drops it; `log` keeps only the log.
        Ok(_) if truthy("wait") => json_response(StatusCode::OK, json!([])),
        Ok(list) if truthy("log") => json_response(
            StatusCode::OK,
            Value::Array(
                list.into_iter()
                    .map(|item| json!({ "log": item["log"] }))
                    .collect(),
            ),
        ),
        Ok(list) => json_response(StatusCode::OK, Value::Array(list)),
        Err(err) => api_error(err, e),
    }
}

async fn server_options(
    State(sim): Sim,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let e = Endpoint::ServerOptions;
    let authorized = match gate(&sim, e, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let value = |key: &str| query_value(&q, key).filter(|v| v != "0");
    // Tested by truthiness in this order: capabilities, sizes, images, datacenter, bare.
    if value("capabilities").is_some() || value("sizes").is_some() {
        // Not simulated (no client of ours asks): the server's generic failure.
        return api_error(ApiError::Generic, e);
    }
    if value("images").is_some() {
        if !authorized {
            return api_error(ApiError::Wrapped(not_logged_in_body()), e);
        }
        let dc = value("datacenter").unwrap_or_else(|| "EU".into());
        if !DATACENTERS.iter().any(|(id, ..)| *id == dc) {
            return api_error(
                ApiError::Wrapped(
                    json!({ "errors": [{ "code": 4, "info": format!("Unknown datacenter {dc}") }] }),
                ),
                e,
            );
        }
        let list: Vec<Value> = IMAGES
            .iter()
            .enumerate()
            .map(|(i, d)| {
                // `name` is the upstream's description, `code` its name.
                json!({ "datacenter": dc, "os": d.split('_').next().unwrap_or(d), "id": image_id(&dc, i),
                        "name": d, "code": d.replace("_server", ""), "osDiskSizeGB": 20,
                        "ramMBMin": {"A": 256, "B": 512, "D": 1024, "T": 256} })
            })
            .collect();
        return json_response(StatusCode::OK, Value::Array(list));
    }
    if value("datacenter").is_some() {
        if !authorized {
            return api_error(ApiError::Wrapped(not_logged_in_body()), e);
        }
        let list: Vec<Value> = DATACENTERS
            .iter()
            .map(|(id, name, cat, sub)| json!({ "id": id, "name": name, "category": cat, "subCategory": sub }))
            .collect();
        return json_response(StatusCode::OK, Value::Array(list));
    }
    if !authorized {
        return json_response(StatusCode::OK, not_logged_in_body());
    }
    let dcs: Map<String, Value> = DATACENTERS
        .iter()
        .map(|(id, name, ..)| (id.to_string(), json!(name)))
        .collect();
    let images: Map<String, Value> = DATACENTERS
        .iter()
        .map(|(dc, ..)| {
            let list: Vec<Value> = IMAGES
                .iter()
                .enumerate()
                .map(|(i, d)| json!({ "id": image_id(dc, i), "description": d }))
                .collect();
            (dc.to_string(), Value::Array(list))
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "datacenters": dcs,
            "cpu": ["1A", "2A", "1B", "2B", "4B", "8B", "2D", "4D", "8D", "1T", "2T"],
            "ram": [256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144],
            "disk": [5, 10, 20, 40, 50, 60, 80, 100, 150, 200, 250, 300, 500, 1000, 2000],
            "diskImages": images,
            "traffic": ["t5000", "t10000"],
            "networks": ["wan"],
            "billing": ["hourly", "monthly"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_have_the_api_shape() {
        let p = generated_password(42);
        assert_eq!(p.len(), 20);
        assert_eq!(p.chars().filter(char::is_ascii_lowercase).count(), 7);
        assert_eq!(p.chars().filter(char::is_ascii_uppercase).count(), 7);
        assert_eq!(p.chars().filter(char::is_ascii_digit).count(), 4);
        assert_ne!(generated_password(1), generated_password(2));
    }

    #[test]
    fn spec_parsing() {
        let items = spec_items("id=0,size=20 size=100", &["id", "size"]).expect("valid");
        assert_eq!(items.len(), 2);
        assert!(spec_items("size", &["id", "size"]).is_none());
        assert!(spec_items("colour=red", &["id", "size"]).is_none());
    }
}
