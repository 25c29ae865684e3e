//! Logs, Prometheus metrics and the HTTP admin endpoints (`/healthz`, `/readyz`, `/metrics`).
//!
//! [`Metrics`] is a leaf: the Kamatera client, the provider and the gRPC service record into it;
//! gauges that describe the provider's state are filled just before each scrape by a callback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter used when `RUST_LOG` is not set: our own events at info, libraries at warn.
pub const DEFAULT_LOG_FILTER: &str = "warn,kamatera_ca_provider=info";

/// Installs the global subscriber: `RUST_LOG`-style filter (default [`DEFAULT_LOG_FILTER`]),
/// text (colours on a terminal) or one JSON object per line, on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointOutcome {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Endpoint {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Evidence {
    pub evidence: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResult {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Group {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupState {
    pub group: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindReason {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupClass {
    pub group: String,
    pub class: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~21 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

/// Characters of an outside value shown in a log line or an error message, at most.
const SHOWN_CHARS: usize = 200;

/// An outside value (an RPC field, a journal entry, an API answer) for a log line or an error
/// message: control characters escaped (no forged log lines), cut to 200 characters (no
/// megabyte lines or status messages), no quotes.
pub fn safe(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push_str(&format!("… ({} characters)", s.chars().count()));
            return out;
        }
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`safe`], in double quotes.
pub fn quoted(s: &str) -> String {
    format!("\"{}\"", safe(s))
}

/// Every metric the process exports, prefixed `kamatera_ca_`.
pub struct Metrics {
    registry: Registry,
    pub grpc_requests: Family<MethodCode, Counter>,
    pub grpc_duration: Family<Method, Histogram>,
    pub api_requests: Family<EndpointOutcome, Counter>,
    pub api_duration: Family<Endpoint, Histogram>,
    pub api_in_flight: Gauge,
    pub creates: Family<ResultLabel, Counter>,
    pub deletes: Family<ResultLabel, Counter>,
    pub reconciles: Family<ResultLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub group_size: Family<GroupKind, Gauge>,
    pub instances: Family<GroupState, Gauge>,
    pub instances_in_error: Family<GroupClass, Gauge>,
    pub pending_commands: Gauge,
    pub parked: Family<Group, Gauge>,
    pub standby: Family<GroupState, Gauge>,
    pub standby_refills: Family<ResultLabel, Counter>,
    pub standby_removed: Counter,
    pub power_ons: Family<ResultLabel, Counter>,
    pub parks: Counter,
    pub suspect_listings: Counter,
    pub journal_writable: Gauge,
    pub journal_writes: Family<ResultLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub scale_up_duration: Histogram,
    pub leader: Gauge,
    pub server_lookups: Family<ResultLabel, Counter>,
    pub gone_servers: Family<Evidence, Counter>,
    pub refused_mutations: Family<KindReason, Counter>,
    pub watched_names: Gauge,
    pub node_updates: Family<KindResult, Counter>,
    pub schedule_window: Family<Group, Gauge>,
    pub hibernation_state: Family<Group, Gauge>,
    pub next_transition: Family<Group, Gauge>,
    pub oldest_pending_command_age: Gauge<f64, AtomicU64>,
    pub staleness: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn config_reload(&self, result: &str) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// One server stopped counting as the group's: it is gone, by this evidence.
    pub fn gone(&self, evidence: &str, n: u64) {
        if n > 0 {
            self.gone_servers
                .get_or_create(&Evidence {
                    evidence: evidence.into(),
                })
                .inc_by(n);
        }
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kamatera_ca");
        let m = Metrics {
            grpc_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency_histogram),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(latency_histogram),
            api_in_flight: Gauge::default(),
            creates: Family::default(),
            deletes: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: latency_histogram(),
            group_size: Family::default(),
            instances: Family::default(),
            instances_in_error: Family::default(),
            pending_commands: Gauge::default(),
            parked: Family::default(),
            standby: Family::default(),
            standby_refills: Family::default(),
            standby_removed: Counter::default(),
            power_ons: Family::default(),
            parks: Counter::default(),
            suspect_listings: Counter::default(),
            journal_writable: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            journal_writes: Family::default(),
            config_reloads: Family::default(),
            // 1 s to ~2.3 h: from IncreaseSize to the server listed powered on.
            scale_up_duration: Histogram::new(exponential_buckets(1.0, 1.5, 22)),
            leader: Gauge::default(),
            server_lookups: Family::default(),
            gone_servers: Family::default(),
            refused_mutations: Family::default(),
            watched_names: Gauge::default(),
            node_updates: Family::default(),
            schedule_window: Family::default(),
            hibernation_state: Family::default(),
            next_transition: Family::default(),
            oldest_pending_command_age: Gauge::default(),
            staleness: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_requests",
            "gRPC requests from the autoscaler, by method and status code",
            m.grpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a gRPC request",
            m.grpc_duration.clone(),
        );
        registry.register(
            "api_requests",
            "Kamatera API HTTP requests (each attempt), by endpoint and outcome",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Duration of one Kamatera API HTTP request",
            m.api_duration.clone(),
        );
        registry.register(
            "api_requests_in_flight",
            "Kamatera API requests on the wire now",
            m.api_in_flight.clone(),
        );
        registry.register(
            "creates",
            "Server creates by result (accepted, rejected, uncertain, failed, cancelled)",
            m.creates.clone(),
        );
        registry.register(
            "deletes",
            "Server deletions by result (started, completed, failed)",
            m.deletes.clone(),
        );
        registry.register(
            "reconciles",
            "Reconcile passes by result",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile pass",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "node_group_size",
            "Node group sizes: min, max and target",
            m.group_size.clone(),
        );
        registry.register(
            "instances",
            "Instances by node group and state",
            m.instances.clone(),
        );
        registry.register(
            "instances_in_error",
            "Instances carrying error info, by node group and class",
            m.instances_in_error.clone(),
        );
        registry.register(
            "parked_servers",
            "Parked servers: powered-off servers with a node group's tags that have run before (parked on scale-down, by this or an earlier run) or were left behind; standby servers are counted by standby_servers",
            m.parked.clone(),
        );
        registry.register(
            "standby_servers",
            "A node group's standby pool by state: ready (powered off, never booted), creating (bought for the pool, not ready yet), wanted (the pool size in force; parked servers count toward it)",
            m.standby.clone(),
        );
        registry.register(
            "standby_refills",
            "Creates for the standby pool, by result: requested, ready (in the pool), failed (nothing bought)",
            m.standby_refills.clone(),
        );
        registry.register(
            "standby_removed",
            "Standby servers terminated because the pool in force became smaller (a window closed, hibernation, a config change)",
            m.standby_removed.clone(),
        );
        registry.register(
            "power_ons",
            "Power-ons of parked and standby servers on scale-up, by result (accepted, rejected, uncertain, failed)",
            m.power_ons.clone(),
        );
        registry.register(
            "parks",
            "Servers parked (powered off and kept) on scale-down",
            m.parks.clone(),
        );
        registry.register(
            "suspect_listings",
            "Kamatera listings that lacked at least half of the known servers; their last known state was kept",
            m.suspect_listings.clone(),
        );
        registry.register(
            "journal_writable",
            "1 while the restart journal can be written (or none is used); 0 while it cannot, and no create is sent",
            m.journal_writable.clone(),
        );
        registry.register(
            "journal_writes",
            "Writes of the restart journal (file or ConfigMap), by result (ok, failed)",
            m.journal_writes.clone(),
        );
        registry.register(
            "config_reloads",
            "Changes of the cloud config file, by result: applied, or refused (the previous config stays)",
            m.config_reloads.clone(),
        );
        registry.register(
            "scale_up_duration_seconds",
            "From the IncreaseSize that asked for an instance to its server listed powered on (creates and power-ons)",
            m.scale_up_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica may act (it holds the Lease, or there is no leader election), 0 while it stands by",
            m.leader.clone(),
        );
        registry.register(
            "server_lookups",
            "Lookups of known servers the listings lacked for the vanish window, by result (exists, absent, inconclusive)",
            m.server_lookups.clone(),
        );
        registry.register(
            "gone_servers",
            "Known servers the provider stopped counting because they are gone, by evidence (terminate_completed, id_and_name, id_only)",
            m.gone_servers.clone(),
        );
        registry.register(
            "refused_mutations",
            "Cloud mutations refused by the guard, by kind (create, power_on, power_off, terminate) and reason",
            m.refused_mutations.clone(),
        );
        registry.register(
            "watched_names",
            "Names of creates with an unknown outcome still watched, so a server that appears late is terminated",
            m.watched_names.clone(),
        );
        registry.register(
            "kube_node_updates",
            "Kubernetes Node updates by kind (label, delete, release, watch) and result",
            m.node_updates.clone(),
        );
        registry.register(
            "schedule_window",
            "The schedule entry in force per node group (1 = the first in the file; 0 = none)",
            m.schedule_window.clone(),
        );
        registry.register(
            "hibernation_state",
            "Hibernation per node group: 0 awake, 1 draining, 2 hibernating",
            m.hibernation_state.clone(),
        );
        registry.register(
            "next_transition_timestamp_seconds",
            "When a node group's schedule or hibernation next changes (Unix seconds; 0 = never)",
            m.next_transition.clone(),
        );
        registry.register(
            "pending_commands",
            "Kamatera commands started and not finished",
            m.pending_commands.clone(),
        );
        registry.register(
            "oldest_pending_command_age_seconds",
            "Age of the oldest unfinished Kamatera command",
            m.oldest_pending_command_age.clone(),
        );
        registry.register(
            "state_staleness_seconds",
            "Time since the last successful reconcile (-1 before the first)",
            m.staleness.clone(),
        );
        registry.register(
            "ready",
            "1 when Kamatera's state was read recently enough to serve",
            m.ready.clone(),
        );
        // Every result at 0 from the start: a pool that never refilled still has the series
        // (dashboards and rate() need them).
        for result in ["requested", "ready", "failed"] {
            let _ = m.standby_refills.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Records one Kamatera HTTP attempt.
    pub fn api_request(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.api_requests
            .get_or_create(&EndpointOutcome {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.api_duration
            .get_or_create(&Endpoint {
                endpoint: endpoint.to_string(),
            })
            .observe(seconds);
    }

    /// Records one answered gRPC request.
    pub fn grpc_request(&self, method: &str, code: &str, seconds: f64) {
        self.grpc_requests
            .get_or_create(&MethodCode {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.grpc_duration
            .get_or_create(&Method {
                method: method.to_string(),
            })
            .observe(seconds);
    }

    pub fn create(&self, result: &str) {
        self.creates
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn power_on(&self, result: &str) {
        self.power_ons
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn refused_mutation(&self, kind: &str, reason: &str) {
        self.refused_mutations
            .get_or_create(&KindReason {
                kind: kind.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn node_update(&self, kind: &str, result: &str) {
        self.node_updates
            .get_or_create(&KindResult {
                kind: kind.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn delete(&self, result: &str) {
        self.deletes
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

/// What the admin endpoints ask the rest of the process.
#[derive(Clone)]
pub struct AdminHooks {
    pub metrics: Arc<Metrics>,
    /// `Ok` when ready to serve (with a note on something held back); `Err(reason)` otherwise.
    pub ready: Arc<dyn Fn() -> Result<Option<String>, String> + Send + Sync>,
    /// Refreshes state gauges before a scrape.
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
}

/// The admin router: `/healthz` (alive), `/readyz` (state fresh), `/metrics`.
pub fn admin_router(hooks: AdminHooks) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(hooks)
}

async fn readyz(State(h): State<AdminHooks>) -> Response {
    match (h.ready)() {
        Ok(None) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Some(note)) => (StatusCode::OK, format!("ready; {note}\n")).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(h): State<AdminHooks>) -> Response {
    (h.before_scrape)();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
        .into_response()
}

/// Serves the admin router on `addr` until `shutdown` resolves; returns the bound address.
pub async fn serve_admin(
    addr: SocketAddr,
    hooks: AdminHooks,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, admin_router(hooks))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server stopped");
        }
    });
    Ok((bound, task))
}
