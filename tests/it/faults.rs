//! The fault matrix: for each Kamatera failure the simulator can produce, a small autoscaler
//! drives the provider over gRPC (Refresh, Nodes, IncreaseSize, DeleteNodes of errored and
//! unneeded instances) through the fault and out of it, and checks what it saw and the
//! invariants: no server bought twice, none orphaned (tagged but untracked), none left after a
//! completed delete.

use crate::common;

use common::req;
use std::collections::HashSet;
use std::time::Duration;

use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::kamatera::{Client, ClientSettings, RetryPolicy};
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use kamatera_ca_provider::provider::{Provider, ProviderOptions, VanishRule};
use kamatera_ca_provider::sim::{self, EndpointFaults, Faults, Quota, SimHandle, Timing};
use pb::instance_status::InstanceState;
use tonic::transport::Channel;

const GROUP: &str = "pool";
/// The vanish rule's time in these tests: three listings and this long without a server.
const VANISH_AFTER: Duration = Duration::from_millis(400);

struct Env {
    sim: SimHandle,
    metrics: std::sync::Arc<kamatera_ca_provider::telemetry::Metrics>,
    ca: CloudProviderClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn env() -> Env {
    env_sized(6).await
}

async fn env_sized(max_size: u32) -> Env {
    env_with(max_size, Duration::from_secs(20)).await
}

async fn env_with(max_size: u32, room_wait: Duration) -> Env {
    // Shown only for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kamatera_ca_provider=debug")
        .with_test_writer()
        .try_init();
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let cfg = common::TestConfig::new(&sim.url(), "faults", "f-", "EU")
        .group(
            GROUP,
            &format!(
                "name-prefix = f-pool
min-size = 0
max-size = {max_size}
cpu = 1B
ram = 2048
disk = size=20"
            ),
        )
        .parse();
    let metrics = std::sync::Arc::new(kamatera_ca_provider::telemetry::Metrics::new());
    let client = Client::new(ClientSettings {
        retry: RetryPolicy::immediate(3),
        timeouts: kamatera_ca_provider::kamatera::Timeouts::uniform(Duration::from_millis(800)),
        ..ClientSettings::new(
            &cfg.api_url,
            &cfg.api_client_id,
            cfg.api_secret.clone(),
            metrics.clone(),
        )
    })
    .expect("client");
    let provider = Provider::new(
        cfg,
        client,
        ProviderOptions {
            refresh_wait: Duration::from_millis(1500),
            reconcile_interval: Duration::from_secs(3600),
            uncertain_create_grace: Duration::from_millis(600),
            uncertain_create_watch: Duration::from_millis(1500),
            unknown_command_limit: Duration::from_millis(400),
            vanish: VanishRule {
                misses: 3,
                after: VANISH_AFTER,
            },
            room_wait,
            ..ProviderOptions::default()
        },
    );
    let (addr, stop) = common::serve(provider, ServeOptions::default()).await;
    let ca = common::ca::Ca::connect(addr).await.rpc;
    Env {
        sim,
        metrics,
        ca,
        _stop: stop,
    }
}

fn state(i: &pb::Instance) -> InstanceState {
    i.status
        .as_ref()
        .and_then(|s| InstanceState::try_from(s.instance_state).ok())
        .unwrap_or(InstanceState::Unspecified)
}

fn error_code(i: &pb::Instance) -> String {
    i.status
        .as_ref()
        .and_then(|s| s.error_info.as_ref())
        .map(|e| e.error_code.clone())
        .unwrap_or_default()
}

/// What the autoscaler saw during a run.
#[derive(Default, Debug)]
struct Seen {
    refresh_errors: Vec<tonic::Code>,
    error_codes: HashSet<String>,
    fake_deletes: usize,
}

impl Env {
    async fn nodes(&mut self) -> Vec<pb::Instance> {
        self.ca
            .node_group_nodes(req(pb::NodeGroupNodesRequest { id: GROUP.into() }))
            .await
            .expect("NodeGroupNodes never fails")
            .into_inner()
            .instances
    }

    async fn target(&mut self) -> i32 {
        self.ca
            .node_group_target_size(req(pb::NodeGroupTargetSizeRequest { id: GROUP.into() }))
            .await
            .expect("NodeGroupTargetSize never fails")
            .into_inner()
            .target_size
    }

    /// One autoscaler loop: Refresh, clean up failed creates through fake nodes, scale to
    /// `desired` (up only; scale-down is explicit).
    async fn ca_loop(&mut self, desired: i32, seen: &mut Seen) {
        if let Err(s) = self.ca.refresh(req(pb::RefreshRequest {})).await {
            seen.refresh_errors.push(s.code());
            return;
        }
        let nodes = self.nodes().await;
        let failed: Vec<pb::ExternalGrpcNode> = nodes
            .iter()
            .filter(|i| state(i) == InstanceState::InstanceCreating && !error_code(i).is_empty())
            .map(|i| {
                seen.error_codes.insert(error_code(i));
                pb::ExternalGrpcNode {
                    provider_id: i.id.clone(),
                    name: i.id.clone(),
                    ..Default::default()
                }
            })
            .collect();
        if !failed.is_empty() {
            seen.fake_deletes += failed.len();
            self.ca
                .node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
                    nodes: failed,
                    id: GROUP.into(),
                }))
                .await
                .expect("deleting fake nodes of failed creates is always accepted");
        }
        let target = self.target().await;
        if target < desired {
            self.ca
                .node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
                    delta: desired - target,
                    id: GROUP.into(),
                }))
                .await
                .expect("increase within max is accepted");
        }
    }

    /// Loops until `desired` instances run with no error and nothing is deleting, or panics.
    async fn converge(&mut self, desired: i32, seen: &mut Seen, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            self.ca_loop(desired, seen).await;
            let nodes = self.nodes().await;
            let running = nodes
                .iter()
                .filter(|i| state(i) == InstanceState::InstanceRunning)
                .count();
            if running == desired as usize
                && nodes.len() == desired as usize
                && self.target().await == desired
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: did not converge to {desired}: {nodes:#?}\nsimulator: {:#}",
                self.sim.snapshot()["servers"]
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Runs `loops` autoscaler loops (the fault is active meanwhile).
    async fn run_loops(&mut self, desired: i32, loops: usize, seen: &mut Seen) {
        for _ in 0..loops {
            self.ca_loop(desired, seen).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The invariants, checked at steady state.
    async fn check_invariants(&mut self, desired: usize, what: &str) {
        let servers = common::sim_servers(&self.sim);
        let names: HashSet<&String> = servers.iter().map(|s| &s.0).collect();
        assert_eq!(
            names.len(),
            servers.len(),
            "{what}: a server name was bought twice: {servers:?}"
        );
        assert_eq!(
            servers.len(),
            desired,
            "{what}: servers in the account: {servers:?}"
        );
        let tracked: HashSet<String> = self
            .nodes()
            .await
            .into_iter()
            .map(|i| i.id.trim_start_matches("kamatera://").to_string())
            .collect();
        for (name, power, tags) in &servers {
            assert!(
                tags.contains(&"k8scang-pool".to_string()),
                "{what}: {name} lacks its tags"
            );
            assert!(
                tracked.contains(name),
                "{what}: {name} is orphaned (tagged, untracked)"
            );
            assert_eq!(power, "on", "{what}: {name} is not running");
        }
    }

    async fn scale_down_one(&mut self, seen: &mut Seen, what: &str) {
        let victim = self.nodes().await[0].id.clone();
        self.ca
            .node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
                nodes: vec![pb::ExternalGrpcNode {
                    provider_id: victim.clone(),
                    name: victim.trim_start_matches("kamatera://").into(),
                    ..Default::default()
                }],
                id: GROUP.into(),
            }))
            .await
            .expect("scale-down accepted");
        // Some loops under the fault, then the fault clears.
        self.run_loops(0, 10, seen).await;
        self.sim.set_faults(Faults::default());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            self.ca_loop(0, seen).await;
            let gone_in_provider = self.nodes().await.iter().all(|i| i.id != victim);
            let name = victim.trim_start_matches("kamatera://");
            let gone_in_account = !self.sim.snapshot()["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x["name"] == name));
            if gone_in_provider && gone_in_account {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let nodes = self.nodes().await;
                panic!(
                    "{what}: deleted server {victim} left behind; provider: {nodes:#?}; simulator: {:#}",
                    self.sim.snapshot()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn on(endpoint: &str, f: EndpointFaults) -> Faults {
    let mut faults = Faults::default();
    faults.endpoints.insert(endpoint.into(), f);
    faults
}

/// The common shape: scale to 3 through the fault, clear it, converge, check, scale down one
/// through the fault, check again.
async fn matrix_case(what: &str, faults: Faults) -> Seen {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.run_loops(0, 1, &mut seen).await;
    e.sim.set_faults(faults.clone());
    e.run_loops(3, 12, &mut seen).await;
    e.sim.set_faults(Faults::default());
    e.converge(3, &mut seen, what).await;
    e.check_invariants(3, what).await;
    e.sim.set_faults(faults);
    e.scale_down_one(&mut seen, what).await;
    e.converge(2, &mut seen, what).await;
    e.check_invariants(2, what).await;
    seen
}

#[tokio::test]
async fn listing_5xx_burst() {
    let seen = matrix_case(
        "5xx on the listing",
        on(
            "list_servers",
            EndpointFaults {
                error_rate: 1.0,
                ..Default::default()
            },
        ),
    )
    .await;
    assert!(
        seen.refresh_errors.is_empty(),
        "Refresh kept answering: {:?}",
        seen.refresh_errors
    );
}

#[tokio::test]
async fn create_5xx_is_uncertain_and_never_retried() {
    let seen = matrix_case(
        "5xx on create",
        on(
            "create_server",
            EndpointFaults {
                error_rate: 1.0,
                ..Default::default()
            },
        ),
    )
    .await;
    assert!(seen.error_codes.contains("CREATE_UNCERTAIN"), "{seen:?}");
}

#[tokio::test]
async fn create_429_is_rejected_not_uncertain() {
    let seen = matrix_case(
        "429 on create",
        on(
            "create_server",
            EndpointFaults {
                rate_limit_rate: 1.0,
                ..Default::default()
            },
        ),
    )
    .await;
    assert!(seen.error_codes.contains("CREATE_REJECTED"), "{seen:?}");
    assert!(!seen.error_codes.contains("CREATE_UNCERTAIN"), "{seen:?}");
}

#[tokio::test]
async fn plain_text_504_everywhere() {
    let f = Faults {
        all: EndpointFaults {
            gateway_timeout_rate: 0.4,
            ..Default::default()
        },
        ..Faults::default()
    };
    matrix_case("plain-text 504s", f).await;
}

#[tokio::test]
async fn lost_create_answers_never_buy_twice() {
    // The create is carried out but its answer is lost: the classic double-buy trap.
    let seen = matrix_case(
        "lost create answers",
        on(
            "create_server",
            EndpointFaults {
                lost_response_rate: 1.0,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_eq!(
        seen.fake_deletes, 0,
        "servers that appeared were adopted, not failed: {seen:?}"
    );
}

#[tokio::test]
async fn timeouts_longer_than_the_autoscaler_deadline() {
    let f = Faults {
        all: EndpointFaults {
            latency_ms: 1200,
            ..Default::default()
        },
        ..Faults::default()
    };
    let seen = matrix_case("slow API", f).await;
    assert!(seen.refresh_errors.is_empty(), "{:?}", seen.refresh_errors);
}

#[tokio::test]
async fn revoked_credentials() {
    let f = Faults {
        unauthorized: true,
        ..Faults::default()
    };
    let seen = matrix_case("auth failure", f).await;
    assert!(
        seen.refresh_errors.is_empty(),
        "Refresh serves the last state: {:?}",
        seen.refresh_errors
    );
    // The group's image is a description, which the server looks up before the create and
    // whose failure it answers generically: the outcome looks open, never bought twice.
    assert!(seen.error_codes.contains("CREATE_UNCERTAIN"), "{seen:?}");
}

#[tokio::test]
async fn queue_errors_cancellations_and_empty_answers() {
    matrix_case(
        "queue 5xx",
        on(
            "queue",
            EndpointFaults {
                error_rate: 1.0,
                ..Default::default()
            },
        ),
    )
    .await;
    let seen = matrix_case(
        "cancelled commands",
        Faults {
            command_cancel_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    assert!(seen.error_codes.contains("CREATE_CANCELLED"), "{seen:?}");
    matrix_case(
        "queue answers []",
        Faults {
            queue_empty: true,
            ..Faults::default()
        },
    )
    .await;
    let seen = matrix_case(
        "failing commands",
        Faults {
            command_error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    assert!(seen.error_codes.contains("CREATE_FAILED"), "{seen:?}");
}

#[tokio::test]
async fn listing_lag() {
    matrix_case(
        "listing lag",
        Faults {
            listing_lag_ms: 500,
            ..Faults::default()
        },
    )
    .await;
}

#[tokio::test]
async fn dropped_connections() {
    let f = Faults {
        all: EndpointFaults {
            drop_rate: 0.3,
            ..Default::default()
        },
        ..Faults::default()
    };
    matrix_case("dropped connections", f).await;
}

#[tokio::test]
async fn quota_exhaustion_mid_scale_up() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.sim.with_state(|s| {
        s.quota = Quota {
            max_servers: Some(2),
            ..Quota::default()
        }
    });
    e.run_loops(3, 15, &mut seen).await;
    assert!(seen.error_codes.contains("QUOTA_EXCEEDED"), "{seen:?}");
    assert_eq!(
        e.sim.snapshot()["servers"].as_array().map(Vec::len),
        Some(2)
    );
    e.sim.with_state(|s| s.quota = Quota::default());
    e.converge(3, &mut seen, "quota raised").await;
    e.check_invariants(3, "quota raised").await;
}

/// A counter of the provider's metrics (0 when the series does not exist yet).
fn counter(e: &Env, series: &str) -> f64 {
    e.metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
        .unwrap_or(0.0)
}

/// Lookups the provider made (each one is an info request).
fn lookups(e: &Env) -> u64 {
    e.sim.requests(sim::Endpoint::ServerInfo)
}

async fn refresh(e: &mut Env) {
    e.ca.refresh(req(pb::RefreshRequest {}))
        .await
        .expect("refresh");
}

/// Deleted by hand: gone from the listings, and the id path answers as the real server does
/// (HTTP 500 with the upstream's text). It leaves after three listings and the vanish time, on
/// a lookup by id and by name, and the autoscaler's next IncreaseSize buys its replacement.
#[tokio::test]
async fn a_server_deleted_by_hand_leaves_within_the_window_and_is_replaced() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(3, &mut seen, "before").await;
    let victim = e.sim.snapshot()["servers"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let started = tokio::time::Instant::now();
    assert!(e.sim.vanish(&victim));
    let before = lookups(&e);
    for _ in 0..3 {
        refresh(&mut e).await;
    }
    if started.elapsed() < VANISH_AFTER {
        assert_eq!(e.target().await, 3, "three quick listings are not enough");
        assert_eq!(lookups(&e), before, "no lookup before the window");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.target().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a server deleted by hand still counts"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        refresh(&mut e).await;
    }
    assert!(
        started.elapsed() >= VANISH_AFTER,
        "left before the vanish time"
    );
    assert_eq!(
        lookups(&e) - before,
        2,
        "one lookup: the id path, then the name path"
    );
    assert_eq!(
        counter(
            &e,
            r#"kamatera_ca_gone_servers_total{evidence="id_and_name"}"#
        ),
        1.0
    );
    assert_eq!(
        counter(&e, r#"kamatera_ca_server_lookups_total{result="absent"}"#),
        1.0
    );
    let creates = e.sim.requests(sim::Endpoint::CreateServer);
    e.converge(3, &mut seen, "after a vanished server").await;
    e.check_invariants(3, "vanished server").await;
    assert_eq!(
        e.sim.requests(sim::Endpoint::CreateServer) - creates,
        1,
        "one replacement"
    );
    assert_eq!(
        e.sim.requests(sim::Endpoint::Terminate),
        0,
        "nothing sent to the vanished server"
    );
    // A scale-down the provider sees through: gone by its own completed terminate.
    e.scale_down_one(&mut seen, "a scale-down after").await;
    assert_eq!(
        counter(
            &e,
            r#"kamatera_ca_gone_servers_total{evidence="terminate_completed"}"#
        ),
        1.0
    );
}

/// A terminate that the API carries out but whose answer is lost: the server leaves the
/// listing, the instance leaves by the vanish rule, and no terminate is sent to a server that is
/// not listed (against the real API each would be refused, for ever).
#[tokio::test]
async fn a_terminate_whose_answer_is_lost_ends_without_a_terminate_loop() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(2, &mut seen, "before").await;
    e.sim.set_faults(on(
        "terminate",
        EndpointFaults {
            lost_response_rate: 1.0,
            ..Default::default()
        },
    ));
    let victim = e.nodes().await[0].id.clone();
    e.ca.node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
        nodes: vec![pb::ExternalGrpcNode {
            provider_id: victim.clone(),
            name: victim.trim_start_matches("kamatera://").into(),
            ..Default::default()
        }],
        id: GROUP.into(),
    }))
    .await
    .expect("scale-down");
    let name = victim.trim_start_matches("kamatera://").to_string();
    let listed = |e: &Env| {
        e.sim.snapshot()["servers"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["name"] == name.as_str()))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listed(&e) {
        assert!(tokio::time::Instant::now() < deadline, "never terminated");
        refresh(&mut e).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminates = e.sim.requests(sim::Endpoint::Terminate);
    while e.nodes().await.iter().any(|i| i.id == victim) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance never left"
        );
        refresh(&mut e).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        refresh(&mut e).await;
    }
    assert_eq!(
        e.sim.requests(sim::Endpoint::Terminate),
        terminates,
        "no terminate once the server was gone from the listing"
    );
    assert_eq!(e.target().await, 1);
    assert_eq!(
        counter(
            &e,
            r#"kamatera_ca_gone_servers_total{evidence="id_and_name"}"#
        ),
        1.0,
        "gone by the vanish rule, not by a terminate it saw complete"
    );
    e.sim.set_faults(Faults::default());
    e.check_invariants(1, "after the lost terminate").await;
}

/// One listing that misses a server, then lists it again: nothing forgotten, nothing looked up,
/// nothing bought; the count starts again from zero.
#[tokio::test]
async fn one_listing_glitch_forgets_nothing() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(3, &mut seen, "before").await;
    let hidden = e.nodes().await[0]
        .id
        .trim_start_matches("kamatera://")
        .to_string();
    let (creates, before) = (e.sim.requests(sim::Endpoint::CreateServer), lookups(&e));
    for misses in [2, 2, 1] {
        e.sim
            .update_faults(|f| f.listing_hides = vec![hidden.clone()]);
        for _ in 0..misses {
            refresh(&mut e).await;
            assert_eq!(e.target().await, 3);
        }
        e.sim.update_faults(|f| f.listing_hides.clear());
        refresh(&mut e).await;
        tokio::time::sleep(VANISH_AFTER).await;
    }
    e.run_loops(3, 3, &mut seen).await;
    assert_eq!(e.target().await, 3);
    assert_eq!(lookups(&e), before, "never three misses in a row");
    assert_eq!(e.sim.requests(sim::Endpoint::CreateServer), creates);
    e.check_invariants(3, "after the glitches").await;
}

/// Servers of the group in the simulated account, whatever their power.
fn group_servers(e: &Env) -> usize {
    e.sim.with_state(|s| {
        s.servers
            .iter()
            .filter(|v| v.tags.contains(&"k8scang-pool".to_string()))
            .count()
    })
}

#[tokio::test]
async fn empty_listings_never_shrink_the_group_nor_let_it_grow_past_max() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(5, &mut seen, "before").await;
    // The listing answers [] (HTTP 200) three times in a row.
    e.sim.update_faults(|f| f.listing_empty = true);
    for _ in 0..3 {
        e.ca.refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
        assert_eq!(e.target().await, 5, "an empty listing is no proof");
        assert_eq!(e.nodes().await.len(), 5);
    }
    // The autoscaler asks for more than the room left: refused, nothing sent.
    let err =
        e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
            delta: 6,
            id: GROUP.into(),
        }))
        .await
        .expect_err("over max-size");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Up to max is accepted (the group still has its 5).
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: GROUP.into(),
    }))
    .await
    .expect("within max");
    e.run_loops(6, 10, &mut seen).await;
    assert!(group_servers(&e) <= 6, "never past max-size");
    // The listing recovers: exactly max-size servers, none bought twice.
    e.sim.set_faults(Faults::default());
    e.converge(6, &mut seen, "after the empty listings").await;
    e.check_invariants(6, "after the empty listings").await;
    assert_eq!(group_servers(&e), 6);
}

#[tokio::test]
async fn a_partial_listing_never_changes_the_target() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(4, &mut seen, "before").await;
    let hidden: Vec<String> = e
        .nodes()
        .await
        .iter()
        .take(2)
        .map(|i| i.id.trim_start_matches("kamatera://").to_string())
        .collect();
    e.sim.update_faults(|f| f.listing_hides = hidden.clone());
    for _ in 0..6 {
        e.ca.refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
        assert_eq!(
            e.target().await,
            4,
            "a listing that drops servers is no proof"
        );
        let ids: Vec<String> = e.nodes().await.into_iter().map(|i| i.id).collect();
        for h in &hidden {
            assert!(
                ids.contains(&format!("kamatera://{h}")),
                "{h} still the group's"
            );
        }
    }
    // An autoscaler that keeps asking for 4 buys nothing meanwhile.
    let creates = e.sim.requests(sim::Endpoint::CreateServer);
    e.run_loops(4, 5, &mut seen).await;
    assert_eq!(e.sim.requests(sim::Endpoint::CreateServer), creates);
    e.sim.set_faults(Faults::default());
    e.check_invariants(4, "after the partial listings").await;
}

#[tokio::test]
async fn max_size_caps_what_exists_parked_servers_included() {
    let mut e = env().await;
    // A powered-off server with the group's tags (parked by an earlier run): not the
    // autoscaler's, but it exists.
    e.sim.seed_server(sim::SeedServer {
        name: "f-pool-parked".into(),
        datacenter: "EU".into(),
        power_on: false,
        tags: vec!["k8sca-faults".into(), "k8scang-pool".into()],
        cpu: "1B".into(),
        ram_mb: 2048,
    });
    e.ca.refresh(req(pb::RefreshRequest {}))
        .await
        .expect("refresh");
    assert_eq!(e.target().await, 0);
    // The target may not reach max-size: the parked server holds a place. Refused at once,
    // not promised and then refused at send time.
    let err =
        e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
            delta: 6,
            id: GROUP.into(),
        }))
        .await
        .expect_err("the parked server counts");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("counting 1 server(s) of the group the autoscaler does not see"),
        "{}",
        err.message()
    );
    assert_eq!(e.sim.requests(sim::Endpoint::CreateServer), 0);
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 5,
        id: GROUP.into(),
    }))
    .await
    .expect("five fit");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while e.sim.requests(sim::Endpoint::CreateServer) < 5 {
        refresh(&mut e).await;
        assert!(tokio::time::Instant::now() < deadline, "not created");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    refresh(&mut e).await;
    assert!(
        e.nodes().await.iter().all(|i| error_code(i).is_empty()),
        "nothing refused"
    );
    assert_eq!(group_servers(&e), 6, "five bought, one parked: six");
}

#[tokio::test]
async fn a_deleted_uncertain_create_leaves_at_once_and_stays_watched() {
    let mut e = env().await;
    e.ca.refresh(req(pb::RefreshRequest {}))
        .await
        .expect("refresh");
    // The create is answered 5xx: maybe bought.
    e.sim.set_faults(on(
        "create_server",
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    ));
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: GROUP.into(),
    }))
    .await
    .expect("increase");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        e.ca.refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
        if let Some(i) = e
            .nodes()
            .await
            .into_iter()
            .find(|i| error_code(i) == "CREATE_UNCERTAIN")
        {
            break i.id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CREATE_UNCERTAIN"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // The autoscaler deletes it through a fake node: gone from its view at once (no refresh
    // in between), so no instance in error lingers for the watch period.
    e.ca.node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
        nodes: vec![pb::ExternalGrpcNode {
            provider_id: id.clone(),
            name: id.clone(),
            ..Default::default()
        }],
        id: GROUP.into(),
    }))
    .await
    .expect("fake-node delete");
    assert!(e.nodes().await.is_empty(), "left NodeGroupNodes at once");
    assert_eq!(e.target().await, 0);
    // Its name is still watched: a server that shows up late under it is terminated.
    e.sim.set_faults(Faults::default());
    e.sim.seed_server(sim::SeedServer {
        name: id.trim_start_matches("kamatera://").into(),
        datacenter: "EU".into(),
        power_on: true,
        tags: vec!["k8sca-faults".into(), "k8scang-pool".into()],
        cpu: "1B".into(),
        ram_mb: 2048,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while group_servers(&e) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late server survived"
        );
        e.ca.refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(e.sim.requests(sim::Endpoint::Terminate), 1);
}

/// A 20-server scale-up whose commands the queue does not know until they start (the
/// upstream's 404, which fails a whole batch): each command is polled alone and followed to
/// its end, and no poll fails as a batch.
#[tokio::test]
async fn a_scale_up_whose_commands_start_late_is_polled_one_id_at_a_time() {
    let mut e = env_sized(20).await;
    e.sim.with_state(|s| {
        s.timing.create = Duration::from_millis(600);
    });
    e.sim.update_faults(|f| f.queue_lag_ms = 250);
    refresh(&mut e).await;
    let before = e.sim.requests(sim::Endpoint::Queue);
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 20,
        id: GROUP.into(),
    }))
    .await
    .expect("increase");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Seen::default();
    loop {
        e.ca_loop(20, &mut seen).await;
        let nodes = e.nodes().await;
        let running = nodes
            .iter()
            .filter(|i| state(i) == InstanceState::InstanceRunning)
            .count();
        let polled = e.sim.with_state(|s| s.queue_polls.clone());
        let finished = polled.complete >= 20;
        if running == 20 && finished {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} running; queue answers so far: {polled:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let polls = e.sim.with_state(|s| s.queue_polls.clone());
    assert_eq!(polls.most_ids, 1, "one id per request: {polls:?}");
    assert!(polls.unknown > 0, "the lag was met: {polls:?}");
    assert!(seen.error_codes.is_empty(), "{seen:?}");
    assert!(e.sim.requests(sim::Endpoint::Queue) > before);
    e.check_invariants(20, "after the late-starting scale-up")
        .await;
}

/// The provider terminates every server of the group at once: the listing drops them before
/// the queue reports the terminates complete, and that is no suspect listing.
#[tokio::test]
async fn terminating_its_own_servers_is_no_suspect_listing() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(4, &mut seen, "before").await;
    delete_all(&mut e).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !e.nodes().await.is_empty() || group_servers(&e) != 0 {
        assert!(tokio::time::Instant::now() < deadline, "not deleted");
        refresh(&mut e).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counter(&e, "kamatera_ca_suspect_listings_total"), 0.0);
    assert_eq!(
        counter(
            &e,
            r#"kamatera_ca_gone_servers_total{evidence="terminate_completed"}"#
        ),
        4.0
    );
}

/// The autoscaler deletes every node of the group at once.
async fn delete_all(e: &mut Env) {
    let nodes = e
        .nodes()
        .await
        .iter()
        .map(|i| pb::ExternalGrpcNode {
            provider_id: i.id.clone(),
            name: i.id.trim_start_matches("kamatera://").into(),
            ..Default::default()
        })
        .collect();
    e.ca.node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
        nodes,
        id: GROUP.into(),
    }))
    .await
    .expect("scale-down");
}

/// Max-size 3 with three running servers whose terminates take `terminate`: the autoscaler
/// deletes all three and at once asks for `delta` more (answered OK: room comes as they leave).
async fn churn_at_max(terminate: Duration, delta: i32, seen: &mut Seen) -> Env {
    let mut e = env_sized(3).await;
    e.converge(3, seen, "before").await;
    e.sim.with_state(|s| s.timing.terminate = terminate);
    delete_all(&mut e).await;
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta,
        id: GROUP.into(),
    }))
    .await
    .expect("room comes as the deletions complete");
    e
}

/// Max-size 3, three running servers: the autoscaler deletes all three and at once asks for
/// three more. The creates wait (Creating, no error) and go out as the deletions complete:
/// three new servers, never more than three at a time, nothing refused.
#[tokio::test]
async fn a_scale_up_during_deletions_waits_for_room() {
    let mut seen = Seen::default();
    let mut e = churn_at_max(Duration::from_millis(700), 3, &mut seen).await;
    let creates = e.sim.requests(sim::Endpoint::CreateServer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        e.ca_loop(3, &mut seen).await;
        assert!(group_servers(&e) <= 3, "more than max-size servers exist");
        let nodes = e.nodes().await;
        for i in &nodes {
            assert_eq!(error_code(i), "", "no create refused: {nodes:#?}");
        }
        let running = nodes
            .iter()
            .filter(|i| state(i) == InstanceState::InstanceRunning)
            .count();
        if running == 3 && e.sim.requests(sim::Endpoint::CreateServer) - creates == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not converge: {nodes:#?}\n{:#}",
            e.sim.snapshot()["servers"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.error_codes.is_empty(), "{seen:?}");
    e.check_invariants(3, "after the churn").await;
}

/// The same with a storm of single increases: exactly as many are answered OK as the group
/// will have room for; the others are refused at once, not promised and then failed.
#[tokio::test]
async fn an_increase_storm_during_deletions_is_answered_truthfully() {
    let mut e = env_sized(3).await;
    let mut seen = Seen::default();
    e.converge(3, &mut seen, "before").await;
    delete_all(&mut e).await;
    let calls = (0..60).map(|_| {
        let mut ca = e.ca.clone();
        async move {
            ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
                delta: 1,
                id: GROUP.into(),
            }))
            .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(ok, 3, "{answers:?}");
    assert!(answers.iter().all(|a| {
        a.as_ref()
            .err()
            .is_none_or(|s| s.code() == tonic::Code::FailedPrecondition)
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        refresh(&mut e).await;
        assert!(group_servers(&e) <= 3, "more than max-size servers exist");
        let nodes = e.nodes().await;
        assert!(nodes.iter().all(|i| error_code(i).is_empty()), "{nodes:#?}");
        if nodes
            .iter()
            .filter(|i| state(i) == InstanceState::InstanceRunning)
            .count()
            == 3
            && group_servers(&e) == 3
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{nodes:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.check_invariants(3, "after the storm").await;
}

/// Room that never comes (the deleted servers' terminates keep failing): the waiting creates
/// report MAX_SIZE_REACHED after the bounded wait, and none was sent.
#[tokio::test]
async fn a_create_that_never_gets_room_fails_clearly_after_the_wait() {
    let mut e = env_with(3, Duration::from_millis(800)).await;
    let mut seen = Seen::default();
    e.converge(3, &mut seen, "before").await;
    e.sim.update_faults(|f| f.command_error_rate = 1.0);
    delete_all(&mut e).await;
    e.ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: GROUP.into(),
    }))
    .await
    .expect("increase");
    let creates = e.sim.requests(sim::Endpoint::CreateServer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let errors = loop {
        refresh(&mut e).await;
        let errors: Vec<String> = e
            .nodes()
            .await
            .iter()
            .filter(|i| error_code(i) == "MAX_SIZE_REACHED")
            .map(|i| format!("{:?}", i.status))
            .collect();
        if errors.len() == 2 {
            break errors;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error after the wait"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert!(
        errors[0].contains("waiting for deleted servers to leave"),
        "{errors:?}"
    );
    assert_eq!(e.sim.requests(sim::Endpoint::CreateServer), creates);
    assert_eq!(group_servers(&e), 3);
}

/// The Refresh whose reconcile first sees a terminated server gone (its terminate reported
/// complete in the same pass) no longer reports it in NodeGroupNodes.
#[tokio::test]
async fn a_terminated_server_leaves_in_the_pass_that_sees_it_gone() {
    let mut e = env().await;
    let mut seen = Seen::default();
    e.converge(2, &mut seen, "before").await;
    e.sim
        .with_state(|s| s.timing.terminate = Duration::from_millis(300));
    let victim = e.nodes().await[0].id.clone();
    let name = victim.trim_start_matches("kamatera://").to_string();
    e.ca.node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
        nodes: vec![pb::ExternalGrpcNode {
            provider_id: victim.clone(),
            name: name.clone(),
            ..Default::default()
        }],
        id: GROUP.into(),
    }))
    .await
    .expect("scale-down");
    // Reconciles until the terminate goes out (after the power-off), then none until the
    // account no longer has the server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.sim.requests(sim::Endpoint::Terminate) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no terminate sent");
        refresh(&mut e).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        e.nodes().await.iter().any(|i| i.id == victim),
        "still the group's while its terminate runs"
    );
    while e.sim.snapshot()["servers"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x["name"] == name.as_str()))
    {
        assert!(tokio::time::Instant::now() < deadline, "never terminated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    refresh(&mut e).await;
    assert!(
        e.nodes().await.iter().all(|i| i.id != victim),
        "still reported after the pass that saw it gone"
    );
    assert_eq!(
        counter(
            &e,
            r#"kamatera_ca_gone_servers_total{evidence="terminate_completed"}"#
        ),
        1.0
    );
}

/// Creates waiting for room that the autoscaler takes back (DecreaseTargetSize) leave at once:
/// nothing was sent, nothing is waited for.
#[tokio::test]
async fn waiting_creates_taken_back_leave_at_once() {
    let mut seen = Seen::default();
    let mut e = churn_at_max(Duration::from_secs(30), 3, &mut seen).await;
    for _ in 0..3 {
        refresh(&mut e).await;
    }
    let creates = e.sim.requests(sim::Endpoint::CreateServer);
    let waiting: Vec<String> = e
        .nodes()
        .await
        .into_iter()
        .filter(|i| state(i) == InstanceState::InstanceCreating)
        .map(|i| i.id)
        .collect();
    assert_eq!(waiting.len(), 3, "waiting for room");
    e.ca.node_group_decrease_target_size(req(pb::NodeGroupDecreaseTargetSizeRequest {
        delta: -3,
        id: GROUP.into(),
    }))
    .await
    .expect("the waiting creates are taken back");
    refresh(&mut e).await;
    let left: Vec<pb::Instance> = e
        .nodes()
        .await
        .into_iter()
        .filter(|i| waiting.contains(&i.id))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
    assert_eq!(e.target().await, 0);
    assert_eq!(
        e.sim.requests(sim::Endpoint::CreateServer),
        creates,
        "none sent"
    );
}
