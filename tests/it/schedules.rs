//! Schedules, hibernation and pricing through the real gRPC server, against the simulator and a
//! fake Kubernetes API server, with a clock the test moves.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::ca::{self, Ca};
use common::fake_kube::{FakeKube, FakePod};
use common::req;
use jiff::Timestamp;
use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::proto::admin as apb;
use kamatera_ca_provider::proto::admin::admin_client::AdminClient;
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::k8s;
use kamatera_ca_provider::provider::{Clock, Provider, ProviderOptions};
use kamatera_ca_provider::sim::{Quota, SimHandle, Timing};
use pb::instance_status::InstanceState;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const PREFIX: &str = "kamatera://";
const WAIT: Duration = Duration::from_secs(20);

fn config_text(api_url: &str, group_extra: &str, global_extra: &str) -> String {
    common::TestConfig::new(api_url, "sched", "sc-", "US-NY2")
        .global(global_extra)
        .group(
            "dev",
            &format!(
                "name-prefix = sc-dev
min-size = 1
max-size = 4
cpu = 2B
ram = 4096
disk = size=20
{group_extra}"
            ),
        )
        .text()
}

/// A clock the test sets, in Unix seconds.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn at(cfg: &CloudConfig, local: &str) -> TestClock {
        let c = TestClock(Arc::new(AtomicI64::new(0)));
        c.set(cfg, local);
        c
    }

    /// Sets the clock to a local time of the config's time zone, e.g. `2026-11-23T08:00`.
    fn set(&self, cfg: &CloudConfig, local: &str) {
        let dt: jiff::civil::DateTime = local.parse().expect("civil time");
        let t = dt
            .to_zoned(cfg.timezone.tz().clone())
            .expect("zoned")
            .timestamp();
        self.0.store(t.as_second(), Ordering::SeqCst);
    }

    fn clock(&self) -> Clock {
        let a = self.0.clone();
        Clock::new(move || Timestamp::from_second(a.load(Ordering::SeqCst)).expect("valid time"))
    }
}

struct Env {
    sim: Arc<SimHandle>,
    cfg: CloudConfig,
    clock: TestClock,
    provider: Provider,
    ca: Ca,
    admin: AdminClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

struct Setup<'a> {
    group_extra: &'a str,
    global_extra: &'a str,
    start: &'a str,
    kube: Option<kamatera_ca_provider::kube::Kube>,
    state_file: Option<std::path::PathBuf>,
    sim: Option<Arc<SimHandle>>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            group_extra: "",
            global_extra: "",
            start: "2026-11-23T07:00",
            kube: None,
            state_file: None,
            sim: None,
        }
    }
}

async fn env(s: Setup<'_>) -> Env {
    let sim = match s.sim {
        Some(sim) => sim,
        None => Arc::new(common::start_sim(Timing::fast(), Quota::default()).await),
    };
    let cfg = CloudConfig::parse(
        "sched.ini",
        &config_text(&sim.url(), s.group_extra, s.global_extra),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let clock = TestClock::at(&cfg, s.start);
    let client = common::test_client(&cfg, Default::default());
    let provider = Provider::new(
        cfg.clone(),
        client,
        ProviderOptions {
            reconcile_interval: Duration::from_secs(3600),
            vanish: kamatera_ca_provider::provider::VanishRule {
                misses: 1,
                after: Duration::ZERO,
            },
            kube: s.kube,
            clock: clock.clock(),
            drain_poll: Duration::from_millis(30),
            state_file: s.state_file,
            ..ProviderOptions::default()
        },
    );
    provider.restore().await;
    let (addr, stop) = common::serve(provider.clone(), ServeOptions::default()).await;
    let mut ca = Ca::connect(addr).await;
    ca.refresh().await;
    let admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin");
    Env {
        sim,
        cfg,
        clock,
        provider,
        ca,
        admin,
        _stop: stop,
    }
}

impl Env {
    async fn sizes(&mut self) -> (i32, i32) {
        let groups = self
            .ca
            .rpc
            .node_groups(req(pb::NodeGroupsRequest {}))
            .await
            .expect("node groups")
            .into_inner()
            .node_groups;
        (groups[0].min_size, groups[0].max_size)
    }

    fn at(&self, local: &str) {
        self.clock.set(&self.cfg, local);
    }

    async fn scale_up(&mut self, n: usize) -> Vec<String> {
        self.ca.increase("dev", n as i32).await.expect("increase");
        self.ca
            .until("dev", "running", WAIT, |nodes| {
                nodes.len() == n
                    && nodes
                        .iter()
                        .all(|i| ca::state(i) == InstanceState::InstanceRunning)
            })
            .await
            .iter()
            .map(|i| i.id.trim_start_matches(PREFIX).to_string())
            .collect()
    }

    /// Names of the simulator's servers of the group, with power.
    fn servers(&self) -> Vec<(String, bool)> {
        self.sim.with_state(|s| {
            s.servers
                .iter()
                .filter(|srv| srv.tags.iter().any(|t| t == "k8scang-dev"))
                .map(|srv| (srv.name.clone(), srv.power == "on"))
                .collect()
        })
    }

    async fn status(&mut self) -> apb::GroupStatus {
        self.admin
            .status(apb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .groups
            .remove(0)
    }

    /// Runs the hibernation controller and reconciles until `check` holds.
    async fn until(&mut self, what: &str, check: impl Fn(&Env) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.provider.control_hibernation().await;
            self.ca.refresh().await;
            if check(self) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn node_groups_follow_the_schedule_exactly_at_its_boundaries() {
    let mut e = env(Setup {
        global_extra: "timezone = Europe/Berlin",
        group_extra: "schedule = \"cron=0 8 * * 1-5; duration=10h; min-size=2; max-size=3; scale-down-unneeded-time=30m\"\n\
                      schedule = \"cron=30 8 * * 1-5; duration=30m; min-size=3\"",
        ..Setup::default()
    })
    .await;
    let options = |e: &mut Env| {
        let mut rpc = e.ca.rpc.clone();
        async move {
            rpc.node_group_get_options(req(pb::NodeGroupAutoscalingOptionsRequest {
                id: "dev".into(),
                defaults: None,
            }))
            .await
            .expect("options")
            .into_inner()
            .node_group_autoscaling_options
            .and_then(|o| o.scale_down_unneeded_duration)
            .map(|d| d.seconds)
        }
    };
    // Monday 2026-11-23, Berlin.
    e.at("2026-11-23T07:59:59");
    assert_eq!(e.sizes().await, (1, 4));
    assert_eq!(options(&mut e).await, None, "the autoscaler's defaults");
    e.at("2026-11-23T08:00");
    assert_eq!(e.sizes().await, (2, 3));
    assert_eq!(options(&mut e).await, Some(1800));
    e.at("2026-11-23T08:30");
    assert_eq!(
        e.sizes().await,
        (3, 3),
        "the later-opened peak's min wins; its max comes from the day window"
    );
    e.at("2026-11-23T09:00");
    assert_eq!(e.sizes().await, (2, 3));
    e.at("2026-11-23T17:59:59");
    assert_eq!(e.sizes().await, (2, 3));
    e.at("2026-11-23T18:00");
    assert_eq!(e.sizes().await, (1, 4));
    // Saturday: no window.
    e.at("2026-11-28T09:00");
    assert_eq!(e.sizes().await, (1, 4));

    // The max in force bounds IncreaseSize, with the reason.
    e.at("2026-11-23T10:00");
    let err = e.ca.increase("dev", 4).await.expect_err("over max 3");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("max 3 (max-size of the schedule in force)"),
        "{}",
        err.message()
    );
    assert!(e.ca.nodes("dev").await.is_empty(), "nothing changed");
    // NodeGroupForNode reports the sizes in force too.
    let names = e.scale_up(1).await;
    let node = ca::node(&format!("{PREFIX}{}", names[0]), PREFIX);
    let g = e.ca.group_for(node).await;
    assert_eq!((g.min_size, g.max_size), (2, 3));

    let s = e.status().await;
    assert_eq!(
        s.window,
        "cron=0 8 * * 1-5; duration=10h; min-size=2; max-size=3; scale-down-unneeded-time=30m"
    );
    assert_eq!(s.next_change, "2026-11-23T17:00:00Z", "18:00 Berlin");
}

fn pod_bytes(containers: &[(&str, &str)]) -> Vec<u8> {
    let q = |s: &str| k8s::Quantity {
        string: Some(s.into()),
    };
    k8s::Pod {
        metadata: None,
        spec: Some(k8s::PodSpec {
            containers: containers
                .iter()
                .map(|(cpu, mem)| k8s::Container {
                    name: Some("c".into()),
                    resources: Some(k8s::ResourceRequirements {
                        requests: [("cpu".to_string(), q(cpu)), ("memory".to_string(), q(mem))]
                            .into_iter()
                            .collect(),
                        limits: Default::default(),
                    }),
                })
                .collect(),
            init_containers: vec![],
            overhead: Default::default(),
        }),
    }
    .encode_to_vec()
}

impl Env {
    async fn node_price(&mut self, r: pb::PricingNodePriceRequest) -> Result<f64, tonic::Status> {
        self.ca
            .rpc
            .pricing_node_price(req(r))
            .await
            .map(|r| r.into_inner().price)
    }

    async fn pod_price(&mut self, r: pb::PricingPodPriceRequest) -> Result<f64, tonic::Status> {
        self.ca
            .rpc
            .pricing_pod_price(req(r))
            .await
            .map(|r| r.into_inner().price)
    }
}

fn ts(s: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

#[tokio::test]
async fn pricing_answers_when_every_group_has_a_price() {
    let mut e = env(Setup {
        group_extra: "price-per-hour = 0.04",
        ..Setup::default()
    })
    .await;
    let names = e.scale_up(1).await;
    let start = 1_800_000_000;
    // A real node (by providerID), two hours, the current fields.
    let price = e
        .node_price(pb::PricingNodePriceRequest {
            node: Some(ca::node(&format!("{PREFIX}{}", names[0]), PREFIX)),
            start_timestamp: ts(start),
            end_timestamp: ts(start + 7200),
            ..Default::default()
        })
        .await
        .expect("node price");
    assert!((price - 0.08).abs() < 1e-12, "{price}");
    // A template node (the autoscaler's option for scaling up), by label, legacy fields (≤ 1.34).
    let template = pb::ExternalGrpcNode {
        name: "template-node-for-dev-123".into(),
        labels: [("kamatera.com/node-group".to_string(), "dev".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let price = e
        .node_price(pb::PricingNodePriceRequest {
            node: Some(template.clone()),
            legacy_start_time: ts(start),
            legacy_end_time: ts(start + 1800),
            ..Default::default()
        })
        .await
        .expect("template price");
    assert!((price - 0.02).abs() < 1e-12, "{price}");
    // A pod: derived rates are half the group's price per core (2) and half per GiB (4):
    // 0.01 per core-hour, 0.005 per GiB-hour. 1.5 cores and 2 GiB for one hour.
    let price = e
        .pod_price(pb::PricingPodPriceRequest {
            pod_bytes: pod_bytes(&[("1", "1Gi"), ("500m", "1Gi")]),
            start_timestamp: ts(start),
            end_timestamp: ts(start + 3600),
            ..Default::default()
        })
        .await
        .expect("pod price");
    assert!(
        (price - (1.5 * 0.01 + 2.0 * 0.005)).abs() < 1e-12,
        "{price}"
    );
    // Legacy pod field.
    let legacy = e
        .pod_price(pb::PricingPodPriceRequest {
            legacy_pod: pod_bytes(&[("1", "1Gi"), ("500m", "1Gi")]),
            legacy_start_time: ts(start),
            legacy_end_time: ts(start + 3600),
            ..Default::default()
        })
        .await
        .expect("legacy pod price");
    assert_eq!(legacy, price);

    // Bad input: clear errors.
    let err = e
        .node_price(pb::PricingNodePriceRequest {
            node: Some(template.clone()),
            start_timestamp: ts(start + 10),
            end_timestamp: ts(start),
            ..Default::default()
        })
        .await
        .expect_err("end before start");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("is before start time"),
        "{}",
        err.message()
    );
    let err = e
        .node_price(pb::PricingNodePriceRequest {
            node: Some(pb::ExternalGrpcNode {
                name: "stranger".into(),
                provider_id: "aws:///stranger".into(),
                ..Default::default()
            }),
            start_timestamp: ts(start),
            end_timestamp: ts(start + 10),
            ..Default::default()
        })
        .await
        .expect_err("foreign node");
    assert_eq!(err.code(), Code::NotFound);
    let err = e
        .pod_price(pb::PricingPodPriceRequest {
            pod_bytes: vec![0xff, 0xff, 0xff],
            start_timestamp: ts(start),
            end_timestamp: ts(start + 10),
            ..Default::default()
        })
        .await
        .expect_err("not a pod");
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn pricing_is_unimplemented_without_prices() {
    let mut e = env(Setup::default()).await;
    let err = e
        .node_price(pb::PricingNodePriceRequest::default())
        .await
        .expect_err("no prices");
    assert_eq!(err.code(), Code::Unimplemented);
    let err = e
        .pod_price(pb::PricingPodPriceRequest::default())
        .await
        .expect_err("no prices");
    assert_eq!(err.code(), Code::Unimplemented);
}

fn pod(name: &str, node: &str, owner: Option<&str>, blocked: bool) -> FakePod {
    FakePod {
        namespace: "apps".into(),
        name: name.into(),
        node: node.into(),
        owner: owner.map(str::to_string),
        blocked,
    }
}

/// Nodes for the servers, each with a workload pod and a DaemonSet pod; the first node's
/// workload is held by a disruption budget.
fn register(fake: &FakeKube, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        fake.add_node(n, &[], false, &format!("{PREFIX}{n}"));
        fake.add_pod(pod(&format!("web-{i}"), n, Some("ReplicaSet"), i == 0));
        fake.add_pod(pod(&format!("agent-{i}"), n, Some("DaemonSet"), false));
    }
}

/// The drain cordoned the node: a PATCH of it that set `unschedulable`.
fn was_cordoned(fake: &FakeKube, node: &str) -> bool {
    fake.requests().iter().any(|r| {
        r.method == "PATCH"
            && r.path == format!("/api/v1/nodes/{node}")
            && r.body
                .as_ref()
                .is_some_and(|b| b["spec"]["unschedulable"] == serde_json::json!(true))
    })
}

async fn until_true(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const DEV_NIGHTS: &str =
    "hibernate = \"cron=0 20 * * 1-5; duration=12h; force=true; drain-timeout=1s\"";

#[tokio::test]
async fn hibernation_drains_removes_servers_and_resumes_at_the_window_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, kube) = common::fake_kube::with_client(&dir).await;
    let mut e = env(Setup {
        group_extra: DEV_NIGHTS,
        start: "2026-11-23T19:00",
        kube: Some(kube),
        ..Setup::default()
    })
    .await;
    let names = e.scale_up(2).await;
    register(&fake, &names);
    assert_eq!(e.sizes().await, (1, 4));

    // 20:00: the window opens. Sizes drop at once; the drain runs.
    e.at("2026-11-23T20:00");
    assert_eq!(e.sizes().await, (0, 0));
    let err = e.ca.increase("dev", 1).await.expect_err("hibernating");
    assert!(err.message().contains("hibernating"), "{}", err.message());
    e.until("hibernating and servers gone", |e| e.servers().is_empty())
        .await;
    let s = e.status().await;
    assert_eq!((s.phase.as_str(), s.manual), ("hibernating", false));
    assert!(s.kept.is_empty());
    // Cordoned, workloads evicted, DaemonSet pods left alone; the budget-held pod was retried
    // until the timeout, then deleted (force). The terminated servers' Nodes are deleted, so
    // no NotReady ghost stays behind all night.
    for n in &names {
        assert!(was_cordoned(&fake, n), "{n} cordoned");
    }
    // Reconciles (Refresh) see the servers gone; their Nodes follow.
    e.until("the gone servers' Nodes deleted", |_| {
        names.iter().all(|n| fake.node(n).is_none())
    })
    .await;
    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == "POST /api/v1/namespaces/apps/pods/web-1/eviction")
    );
    assert!(
        calls
            .iter()
            .filter(|c| *c == "POST /api/v1/namespaces/apps/pods/web-0/eviction")
            .count()
            >= 2,
        "a blocked eviction is retried: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c == "DELETE /api/v1/namespaces/apps/pods/web-0")
    );
    assert!(!calls.iter().any(|c| c.contains("agent-")), "{calls:?}");
    assert_eq!(fake.pods(), ["apps/agent-0", "apps/agent-1"]);
    assert!(e.ca.nodes("dev").await.is_empty());
    // What happened shows on the Nodes (kubectl describe node).
    // (Posted in the background, so their order is not asserted.)
    let sorted = |node: &str| {
        let mut r = fake.event_reasons(node);
        r.sort();
        r
    };
    until_true("events posted", || {
        sorted(&names[0])
            == [
                "EvictionBlocked",
                "Hibernating",
                "HibernationDrained",
                "HibernationForced",
                "ServerTerminated",
            ]
            && sorted(&names[1]) == ["Hibernating", "HibernationDrained", "ServerTerminated"]
    })
    .await;
    assert!(
        fake.events()
            .iter()
            .all(|(_, r, t)| (t == "Warning")
                == (r == "EvictionBlocked" || r == "HibernationForced")),
        "{:?}",
        fake.events()
    );

    // 08:00 next day: the window closes, sizes come back, the autoscaler can refill.
    e.at("2026-11-24T08:00");
    assert_eq!(e.sizes().await, (1, 4));
    e.until("awake", |_| true).await;
    assert_eq!(e.status().await.phase, "awake");
    e.scale_up(1).await;
}

#[tokio::test]
async fn without_force_undrainable_nodes_are_kept_and_uncordoned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, kube) = common::fake_kube::with_client(&dir).await;
    let mut e = env(Setup {
        group_extra: "hibernate = \"cron=0 20 * * *; duration=12h; drain-timeout=1s\"",
        start: "2026-11-23T19:00",
        kube: Some(kube),
        ..Setup::default()
    })
    .await;
    let names = e.scale_up(2).await;
    register(&fake, &names);
    e.at("2026-11-23T21:00");
    e.until("hibernating", |e| e.servers().len() == 1).await;
    let s = e.status().await;
    assert_eq!(s.phase, "hibernating");
    assert_eq!(s.kept, vec![names[0].clone()], "the budget-held node stays");
    assert!(!fake.unschedulable(&names[0]), "and takes pods again");
    assert_eq!(e.servers(), vec![(names[0].clone(), true)]);
    assert!(
        fake.pods().contains(&"apps/web-0".to_string()),
        "never deleted without force"
    );
    until_true("kept event", || {
        fake.event_reasons(&names[0])
            .contains(&"HibernationKept".to_string())
    })
    .await;
}

/// A Node whose cordon keeps failing was never shown to be the server's Node: its pods are left
/// alone (no eviction, no delete, even with force) and its server is kept.
#[tokio::test]
async fn a_node_that_cannot_be_cordoned_is_neither_emptied_nor_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, kube) = common::fake_kube::with_client(&dir).await;
    let kube = kube.with_retry(kamatera_ca_provider::kube::ConflictRetry {
        attempts: 2,
        delay: Duration::from_millis(10),
    });
    let mut e = env(Setup {
        group_extra: DEV_NIGHTS,
        start: "2026-11-23T19:00",
        kube: Some(kube),
        ..Setup::default()
    })
    .await;
    let names = e.scale_up(1).await;
    register(&fake, &names);
    // Every Node write conflicts: the cordon never gets through.
    fake.conflict_next(u32::MAX);
    e.at("2026-11-23T20:00");
    let node = names[0].clone();
    e.until("the drain ended", |e| {
        e.provider
            .hibernation_status("dev")
            .is_ok_and(|s| s.phase == "hibernating")
    })
    .await;
    assert_eq!(
        e.status().await.kept,
        vec![node.clone()],
        "the node is kept"
    );
    let calls = fake.calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("/eviction") || c.starts_with("DELETE /api/v1/namespaces")),
        "pods were touched: {calls:?}"
    );
    assert!(fake.pods().contains(&"apps/web-0".to_string()));
    assert_eq!(e.servers(), vec![(node, true)], "the server runs on");
}

#[tokio::test]
async fn manual_hibernate_and_resume_through_the_admin_service() {
    // No Kubernetes access and force: servers removed without a drain.
    let mut e = env(Setup {
        start: "2026-11-23T12:00",
        ..Setup::default()
    })
    .await;
    e.scale_up(1).await;
    let s = e
        .admin
        .hibernate(apb::HibernateRequest {
            group: "dev".into(),
            force: true,
        })
        .await
        .expect("hibernate")
        .into_inner();
    assert!(s.manual);
    assert_eq!((s.min_size, s.max_size), (0, 0));
    e.until("servers gone", |e| e.servers().is_empty()).await;
    assert_eq!(e.status().await.phase, "hibernating");

    let err = e
        .admin
        .hibernate(apb::HibernateRequest {
            group: "nope".into(),
            force: false,
        })
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), Code::NotFound);

    let s = e
        .admin
        .resume(apb::GroupRequest {
            group: "dev".into(),
        })
        .await
        .expect("resume")
        .into_inner();
    assert_eq!((s.phase.as_str(), s.min_size, s.max_size), ("awake", 1, 4));
    assert_eq!(e.sizes().await, (1, 4));
}

#[tokio::test]
async fn resume_during_a_window_holds_until_it_closes() {
    let mut e = env(Setup {
        group_extra: "hibernate = \"cron=0 20 * * *; duration=12h; force=true\"",
        start: "2026-11-23T21:00",
        ..Setup::default()
    })
    .await;
    assert_eq!(e.sizes().await, (0, 0));
    e.admin
        .resume(apb::GroupRequest {
            group: "dev".into(),
        })
        .await
        .expect("resume");
    assert_eq!(e.sizes().await, (1, 4), "woken inside the window");
    e.at("2026-11-24T07:59");
    assert_eq!(e.sizes().await, (1, 4));
    e.at("2026-11-24T20:00");
    assert_eq!(e.sizes().await, (0, 0), "the next window hibernates again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_drain_resumes_the_drain_and_keeps_hibernating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let fake = FakeKube::start().await;
    let kubeconfig = fake.kubeconfig(dir.path());
    let sim = Arc::new(common::start_sim(Timing::fast(), Quota::default()).await);
    let group_extra = "hibernate = \"cron=0 20 * * *; duration=12h; drain-timeout=1h\"";
    let kube = |path: std::path::PathBuf| async move {
        kamatera_ca_provider::kamatera::install_crypto_provider();
        kamatera_ca_provider::kube::Kube::from_kubeconfig_file(&path)
            .await
            .expect("kube client")
    };

    // The first process runs in a runtime of its own; dropping that runtime kills every task
    // of it, drain included, as a crash would.
    let first = {
        let (sim, fake, state, kubeconfig) =
            (sim.clone(), fake.clone(), state.clone(), kubeconfig.clone());
        common::in_own_runtime(move || async move {
            let mut e = env(Setup {
                group_extra,
                start: "2026-11-23T19:00",
                kube: Some(kube(kubeconfig).await),
                state_file: Some(state.clone()),
                sim: Some(sim),
                ..Setup::default()
            })
            .await;
            let names = e.scale_up(2).await;
            register(&fake, &names);
            e.at("2026-11-23T20:00");
            e.until("one node drained, the other held by its budget", |_| {
                fake.pods().len() == 3
            })
            .await;
            assert_eq!(e.status().await.phase, "draining");
            let journal = std::fs::read_to_string(&state).expect("journal");
            assert!(journal.contains("\"draining\""), "{journal}");
            names
        })
    };
    let names = tokio::task::spawn_blocking(move || first.join())
        .await
        .expect("join")
        .expect("first process");
    assert_eq!(
        sim.requests(kamatera_ca_provider::sim::Endpoint::Terminate),
        0
    );

    // A new process starts from the journal, against the same Kamatera and cluster.
    let mut e = env(Setup {
        group_extra,
        start: "2026-11-23T20:30",
        kube: Some(kube(kubeconfig).await),
        state_file: Some(state.clone()),
        sim: Some(sim),
        ..Setup::default()
    })
    .await;
    assert_eq!(e.status().await.phase, "draining", "restored");
    assert_eq!(e.sizes().await, (0, 0));
    assert_eq!(
        e.servers().len(),
        2,
        "nothing removed before the drain ends"
    );
    fake.unblock("web-0");
    e.until("hibernating", |e| e.servers().is_empty()).await;
    assert_eq!(e.status().await.phase, "hibernating");
    assert!(fake.pods().iter().all(|p| p.contains("agent-")));
    for n in &names {
        assert!(was_cordoned(&fake, n), "{n} cordoned");
    }
    // Reconciles (Refresh) see the servers gone; their Nodes follow.
    e.until("the gone servers' Nodes deleted", |_| {
        names.iter().all(|n| fake.node(n).is_none())
    })
    .await;
}
