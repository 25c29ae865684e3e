//! The standby pool through the simulator over gRPC: servers bought ahead, created powered off
//! and never booted, kept topped up to `standby` (parked servers counting), taken by a scale-up
//! after parked ones and before any purchase, never past max-size, never while hibernating,
//! emptied by hibernation, resized by a schedule window, kept across a restart by the journal
//! without buying twice; and no forged or foreign server is ever taken into it.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::ca::{self, Ca};
use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::provider::{Clock, Provider, ProviderOptions};
use kamatera_ca_provider::sim::{Endpoint, Quota, SeedServer, SimHandle, Timing};
use kamatera_ca_provider::telemetry::Metrics;
use pb::instance_status::InstanceState;

const WAIT: Duration = Duration::from_secs(20);
const TAGS: [&str; 2] = ["k8sca-sb", "k8scang-g"];

/// Creates slow enough to see a pool being bought; boots quick.
fn timing() -> Timing {
    Timing {
        create: Duration::from_millis(250),
        first_boot: Duration::from_millis(80),
        boot: Duration::from_millis(40),
        ..Timing::fast()
    }
}

fn config(api_url: &str, group: &str) -> CloudConfig {
    let text = common::TestConfig::new(api_url, "sb", "sb-", "US-NY2")
        .global("default-min-size = 0")
        .group(
            "g",
            &format!("name-prefix = sb-g\ncpu = 2B\nram = 2048\ndisk = size=20\n{group}"),
        )
        .group(
            "h",
            "name-prefix = sb-h\ncpu = 2B\nram = 2048\ndisk = size=20\nmax-size = 4",
        )
        .text();
    CloudConfig::parse("sb.ini", &text, &|_| None).expect("config")
}

/// A settable wall clock for schedules (Unix seconds).
#[derive(Clone)]
struct Wall(Arc<AtomicI64>);

impl Wall {
    fn at(time: &str) -> Wall {
        let w = Wall(Arc::new(AtomicI64::new(0)));
        w.set(time);
        w
    }

    fn set(&self, time: &str) {
        let t: jiff::Timestamp = time.parse().expect("timestamp");
        self.0.store(t.as_second(), Ordering::SeqCst);
    }

    fn clock(&self) -> Clock {
        let s = self.0.clone();
        Clock::new(move || jiff::Timestamp::from_second(s.load(Ordering::SeqCst)).expect("clock"))
    }
}

struct Env {
    sim: Arc<SimHandle>,
    ca: Ca,
    provider: Provider,
    metrics: Arc<Metrics>,
    /// What the journal held at start (with a state file), as `serve` restores it.
    restored: kamatera_ca_provider::provider::Restored,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn options() -> ProviderOptions {
    ProviderOptions {
        reconcile_interval: Duration::from_secs(3600),
        refresh_wait: Duration::from_secs(5),
        vanish: kamatera_ca_provider::provider::VanishRule {
            misses: 1,
            after: Duration::ZERO,
        },
        ..ProviderOptions::default()
    }
}

async fn provider_on(sim: &Arc<SimHandle>, cfg: CloudConfig, opts: ProviderOptions) -> Env {
    let metrics = Arc::new(Metrics::new());
    let client = common::test_client(&cfg, metrics.clone());
    let journaled = opts.state_file.is_some();
    let provider = Provider::new(cfg, client, opts);
    let restored = if journaled {
        provider.restore().await
    } else {
        Default::default()
    };
    let (addr, stop) = common::serve(provider.clone(), ServeOptions::default()).await;
    let ca = Ca::connect(addr).await;
    Env {
        sim: sim.clone(),
        ca,
        provider,
        metrics,
        restored,
        _stop: stop,
    }
}

async fn env(group: &str) -> Env {
    let sim = Arc::new(common::start_sim(timing(), Quota::default()).await);
    let cfg = config(&sim.url(), group);
    provider_on(&sim, cfg, options()).await
}

/// A simulated server: name, powered on, booted once, tags.
#[derive(Debug, Clone)]
struct Srv {
    name: String,
    on: bool,
    booted: bool,
    tags: Vec<String>,
}

impl Env {
    fn servers(&self) -> Vec<Srv> {
        self.sim.with_state(|s| {
            s.servers
                .iter()
                .map(|x| Srv {
                    name: x.name.clone(),
                    on: x.power == "on",
                    booted: x.booted,
                    tags: x.tags.clone(),
                })
                .collect()
        })
    }

    /// Servers carrying both tags of group g.
    fn group_servers(&self) -> Vec<Srv> {
        self.servers()
            .into_iter()
            .filter(|s| TAGS.iter().all(|t| s.tags.iter().any(|x| x == t)))
            .collect()
    }

    fn creates(&self) -> u64 {
        self.sim.requests(Endpoint::CreateServer)
    }

    fn power_ons(&self) -> u64 {
        self.sim.requests(Endpoint::PowerOn)
    }

    /// (standby ready, creating, parked, wanted) of group g.
    fn pool(&self) -> (u32, u32, u32, u32) {
        let s = self.provider.hibernation_status("g").expect("status");
        (s.standby, s.standby_creating, s.parked, s.standby_wanted)
    }

    /// Refreshes until `check` holds, failing after `WAIT` with `what`.
    async fn until(&mut self, what: &str, check: impl Fn(&Env) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.ca.refresh().await;
            if check(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: pool {:?}, servers {:#?}",
                self.pool(),
                self.servers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the pool of g holds `n` ready standby servers and nothing is being bought.
    async fn pool_ready(&mut self, n: u32) {
        self.until(&format!("{n} standby servers ready"), |e| {
            let (ready, creating, _, _) = e.pool();
            ready == n && creating == 0
        })
        .await;
    }

    /// Scales g up by `n` and waits for `n` more running instances; on every refresh while
    /// any instance is still starting, `during` is checked.
    async fn scale_up(&mut self, n: usize, during: impl Fn(&Env)) {
        let before = self.ca.nodes("g").await.len();
        self.ca.increase("g", n as i32).await.expect("increase");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.ca.refresh().await;
            let nodes = self.ca.nodes("g").await;
            let running = nodes
                .iter()
                .filter(|i| ca::state(i) == InstanceState::InstanceRunning)
                .count();
            if running == before + n {
                return;
            }
            during(self);
            assert!(
                tokio::time::Instant::now() < deadline,
                "scale-up not done: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn metric(&self, line_start: &str) -> Option<f64> {
        self.provider.export_gauges();
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

#[tokio::test]
async fn the_pool_fills_at_start_with_servers_that_never_booted_and_the_autoscaler_never_sees() {
    let mut e = env("max-size = 6\nstandby = 3").await;
    e.pool_ready(3).await;
    let pool = e.group_servers();
    assert_eq!(pool.len(), 3, "{pool:#?}");
    for s in &pool {
        assert!(
            !s.on && !s.booted,
            "created powered off, never booted: {s:?}"
        );
        assert_eq!(s.tags, TAGS, "tagged exactly like the group's servers");
        assert!(s.name.starts_with("sb-g-"), "named like them: {}", s.name);
    }
    assert_eq!(e.ca.target("g").await, 0, "not in the target size");
    assert!(e.ca.nodes("g").await.is_empty(), "not in NodeGroupNodes");
    // A standby server is no node of any group: the autoscaler cannot delete it either.
    let prefix = "kamatera://";
    assert_eq!(
        e.ca.group_of(ca::node(&format!("{prefix}{}", pool[0].name), prefix))
            .await,
        ""
    );
    let err =
        e.ca.delete(
            "g",
            vec![ca::node(&format!("{prefix}{}", pool[0].name), prefix)],
        )
        .await
        .expect_err("not a node of the group");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("does not belong to node group g"),
        "{}",
        err.message()
    );
    for _ in 0..5 {
        e.ca.refresh().await;
    }
    assert_eq!(e.creates(), 3, "a full pool buys nothing more");
    assert_eq!(e.group_servers().len(), 3, "and nothing was deleted");
    assert_eq!(e.pool(), (3, 0, 0, 3));
    assert_eq!(
        e.metric("kamatera_ca_standby_servers{group=\"g\",state=\"ready\"}"),
        Some(3.0)
    );
    assert_eq!(
        e.metric("kamatera_ca_standby_servers{group=\"g\",state=\"wanted\"}"),
        Some(3.0)
    );
    assert_eq!(
        e.metric("kamatera_ca_standby_refills_total{result=\"ready\"}"),
        Some(3.0)
    );
    assert_eq!(
        e.metric("kamatera_ca_parked_servers{group=\"g\"}"),
        Some(0.0),
        "standby servers are not parked ones"
    );
}

#[tokio::test]
async fn a_scale_up_takes_the_pool_without_buying_and_the_pool_refills_only_after_it() {
    let mut e = env("max-size = 10\nstandby = 3").await;
    e.pool_ready(3).await;
    let mut pool: Vec<String> = e.group_servers().into_iter().map(|s| s.name).collect();
    pool.sort();
    e.scale_up(3, |e| {
        assert_eq!(
            e.creates(),
            3,
            "no purchase during the scale-up, no refill before it"
        )
    })
    .await;
    assert_eq!(e.power_ons(), 3);
    let mut running: Vec<String> =
        e.ca.nodes("g")
            .await
            .iter()
            .map(|i| i.id.trim_start_matches("kamatera://").to_string())
            .collect();
    running.sort();
    assert_eq!(running, pool, "the pool's servers are the new nodes");
    assert!(
        e.group_servers()
            .iter()
            .filter(|s| running.contains(&s.name))
            .all(|s| s.on && s.booted),
        "their first boot done"
    );
    // Then the pool is bought again.
    e.pool_ready(3).await;
    assert_eq!(e.creates(), 6);
    assert_eq!(e.ca.target("g").await, 3);
}

#[tokio::test]
async fn a_scale_up_takes_parked_servers_first_then_standby_then_buys() {
    let mut e = env("max-size = 10\nstandby = 2\npoweroff-on-scale-down = true").await;
    e.pool_ready(2).await;
    // One server of the group that ran before and was parked (by an earlier run).
    e.sim.seed_server(SeedServer {
        name: "sb-g-00000000a01".into(),
        datacenter: "US-NY2".into(),
        power_on: false,
        tags: TAGS.iter().map(|t| t.to_string()).collect(),
        cpu: "2B".into(),
        ram_mb: 2048,
    });
    e.until("the parked server in the pool", |e| e.pool().2 == 1)
        .await;
    // Two standby + one parked for a pool of two: one standby server goes.
    e.until("the pool trimmed to its size", |e| {
        e.pool() == (1, 0, 1, 2) && e.group_servers().len() == 2
    })
    .await;
    // Scale up by 3: the parked one, the standby one, one purchase.
    e.scale_up(3, |e| assert!(e.creates() <= 3)).await;
    let nodes = e.ca.nodes("g").await;
    let names: Vec<&str> = nodes
        .iter()
        .map(|i| i.id.trim_start_matches("kamatera://"))
        .collect();
    assert!(names.contains(&"sb-g-00000000a01"), "{names:?}");
    assert_eq!(nodes.len(), 3);
    assert_eq!(e.power_ons(), 2, "parked and standby powered on");
    assert!(
        e.creates() >= 3,
        "two for the pool at start, one for the scale-up"
    );
}

#[tokio::test]
async fn the_pool_never_takes_the_group_past_max_size() {
    let mut e = env("max-size = 4\nstandby = 3").await;
    e.pool_ready(3).await;
    // Four asked for: three from the pool, one bought; then no room is left for a pool.
    e.scale_up(4, |e| assert!(e.group_servers().len() <= 4))
        .await;
    for _ in 0..5 {
        e.ca.refresh().await;
        assert!(e.group_servers().len() <= 4);
    }
    assert_eq!(e.creates(), 4, "three for the pool, one for the scale-up");
    assert_eq!(e.pool(), (0, 0, 0, 3));
    let err = e.ca.increase("g", 1).await.expect_err("at max");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // Two nodes deleted: the pool takes the room they leave, no more.
    let nodes: Vec<pb::ExternalGrpcNode> = e.ca.nodes("g").await[..2]
        .iter()
        .map(|i| ca::node(&i.id, "kamatera://"))
        .collect();
    e.ca.delete("g", nodes).await.expect("delete");
    let mut most = 0;
    e.until("two standby servers in the freed room", |e| {
        let (ready, creating, _, _) = e.pool();
        ready == 2 && creating == 0
    })
    .await;
    for _ in 0..5 {
        e.ca.refresh().await;
        most = most.max(e.group_servers().len());
    }
    assert!(most <= 4, "{most} servers");
    assert_eq!(e.creates(), 6);
}

#[tokio::test]
async fn an_increase_is_refused_when_the_pool_cannot_cover_it_within_max_size() {
    let mut e = env("max-size = 5\nstandby = 3").await;
    e.pool_ready(3).await;
    // Three pooled + three to buy would be six.
    let err = e.ca.increase("g", 6).await.expect_err("over max");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("parked or standby"),
        "{}",
        err.message()
    );
    assert_eq!(e.ca.target("g").await, 0, "nothing changed");
    assert_eq!(e.creates(), 3);
    assert_eq!(e.power_ons(), 0);
    // Five fit: three from the pool, two bought.
    e.scale_up(5, |_| {}).await;
    assert_eq!(e.creates(), 5);
}

#[tokio::test]
async fn hibernation_empties_the_pool_and_never_refills_it_while_hibernating() {
    let mut e = env("max-size = 6\nstandby = 2").await;
    e.pool_ready(2).await;
    e.provider.hibernate("g", true).await.expect("hibernate");
    e.until("the pool terminated", |e| e.group_servers().is_empty())
        .await;
    for _ in 0..5 {
        e.ca.refresh().await;
    }
    assert_eq!(e.creates(), 2, "nothing bought while hibernating");
    assert_eq!(e.pool(), (0, 0, 0, 0));
    assert_eq!(
        e.metric("kamatera_ca_standby_removed_total"),
        Some(2.0),
        "counted"
    );
    e.provider.resume("g").await.expect("resume");
    e.pool_ready(2).await;
    assert_eq!(e.creates(), 4, "refilled once awake");
}

#[tokio::test]
async fn hibernation_in_power_off_mode_keeps_the_pool_off() {
    let mut e = env("max-size = 6\nstandby = 2\npoweroff-on-scale-down = true").await;
    e.pool_ready(2).await;
    e.provider.hibernate("g", true).await.expect("hibernate");
    for _ in 0..8 {
        e.ca.refresh().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let pool = e.group_servers();
    assert_eq!(pool.len(), 2, "kept: {pool:#?}");
    assert!(pool.iter().all(|s| !s.on && !s.booted));
    assert_eq!(e.creates(), 2);
    assert_eq!(e.sim.requests(Endpoint::Terminate), 0);
    assert_eq!(e.pool().3, 0, "none wanted while hibernating");
}

#[tokio::test]
async fn a_schedule_window_grows_the_pool_and_its_end_shrinks_it() {
    let sim = Arc::new(common::start_sim(timing(), Quota::default()).await);
    let wall = Wall::at("2026-12-07T06:00:00Z");
    let cfg = config(
        &sim.url(),
        "max-size = 8\nstandby = 1\nschedule = \"cron=0 7 * * *; duration=1h; standby=3\"",
    );
    let mut e = provider_on(
        &sim,
        cfg,
        ProviderOptions {
            clock: wall.clock(),
            ..options()
        },
    )
    .await;
    e.pool_ready(1).await;
    wall.set("2026-12-07T07:00:00Z");
    e.pool_ready(3).await;
    assert_eq!(e.pool().3, 3);
    assert_eq!(e.creates(), 3);
    wall.set("2026-12-07T08:00:00Z");
    e.until("the pool back to one", |e| {
        e.pool() == (1, 0, 0, 1) && e.group_servers().len() == 1
    })
    .await;
    assert_eq!(e.creates(), 3, "nothing bought to shrink");
    assert_eq!(e.metric("kamatera_ca_standby_removed_total"), Some(2.0));
}

/// Provider options with the journal in `state`.
fn journaled(state: &std::path::Path) -> ProviderOptions {
    ProviderOptions {
        state_file: Some(state.to_path_buf()),
        ..options()
    }
}

// Multi-threaded: the simulator keeps answering while the test waits for the first run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_pool_from_the_journal_and_buys_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("journal.json");
    let sim = Arc::new(
        common::start_sim(
            Timing {
                create: Duration::from_millis(1500),
                ..timing()
            },
            Quota::default(),
        )
        .await,
    );
    let group = "max-size = 6\nstandby = 3";
    // The first run sends the pool's three creates and dies while they are under way.
    {
        let sim = sim.clone();
        let cfg = config(&sim.url(), group);
        let state = state.clone();
        common::in_own_runtime(move || async move {
            let e = provider_on(&sim, cfg, journaled(&state)).await;
            e.provider.reconcile().await.expect("reconcile");
            let deadline = std::time::Instant::now() + WAIT;
            while e.sim.requests(Endpoint::CreateServer) < 3
                || !std::fs::read_to_string(&state)
                    .is_ok_and(|t| t.matches("\"command_id\":\"").count() == 3)
            {
                assert!(std::time::Instant::now() < deadline, "creates not sent");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .join()
        .expect("first run");
    }
    assert_eq!(sim.requests(Endpoint::CreateServer), 3);
    // The second run finds them in the journal, waits for them, and buys nothing.
    let mut e = provider_on(&sim, config(&sim.url(), group), journaled(&state)).await;
    e.pool_ready(3).await;
    assert_eq!(e.creates(), 3, "not bought twice");
    drop(e);
    // A third run, with the pool ready: they are standby servers (from the journal).
    let mut e = provider_on(&sim, config(&sim.url(), group), journaled(&state)).await;
    e.pool_ready(3).await;
    assert_eq!(e.pool(), (3, 0, 0, 3));
    for _ in 0..3 {
        e.ca.refresh().await;
    }
    assert_eq!(e.creates(), 3);
    drop(e);
    // Even without the journal nothing is bought again: the servers are there (taken for
    // parked ones, since nothing says they never booted).
    let mut e = provider_on(
        &sim,
        config(&sim.url(), group),
        journaled(&dir.path().join("lost.json")),
    )
    .await;
    e.until("the pool seen", |e| e.pool().2 == 3).await;
    for _ in 0..3 {
        e.ca.refresh().await;
    }
    assert_eq!(e.creates(), 3, "a lost journal buys nothing either");
    assert_eq!(e.pool(), (0, 0, 3, 3));
}

#[tokio::test]
async fn a_scale_up_while_the_pool_is_bought_takes_the_creates_under_way() {
    let sim = Arc::new(
        common::start_sim(
            Timing {
                create: Duration::from_millis(600),
                ..timing()
            },
            Quota::default(),
        )
        .await,
    );
    let mut e = provider_on(
        &sim,
        config(&sim.url(), "max-size = 3\nstandby = 3"),
        options(),
    )
    .await;
    e.ca.refresh().await;
    e.until("the pool's creates sent", |e| e.creates() == 3)
        .await;
    // At max-size with the pool under way: the scale-up takes it instead of being refused.
    e.scale_up(3, |e| assert_eq!(e.creates(), 3)).await;
    assert_eq!(e.power_ons(), 3, "powered on once created");
    assert!(e.group_servers().iter().all(|s| s.on && s.booted));
    assert_eq!(e.pool(), (0, 0, 0, 3));
}

#[tokio::test]
async fn a_forged_or_foreign_powered_off_server_is_never_taken_into_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("journal.json");
    let sim = Arc::new(common::start_sim(timing(), Quota::default()).await);
    let seed = |name: &str, tags: &[&str]| {
        sim.seed_server(SeedServer {
            name: name.into(),
            datacenter: "US-NY2".into(),
            power_on: false,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            cpu: "2B".into(),
            ram_mb: 2048,
        })
    };
    // Tagged further by someone (foreign), another cluster's, another group's.
    seed("sb-g-0000000e001", &["k8sca-sb", "k8scang-g", "someone"]);
    seed("sb-g-0000000f001", &["k8sca-other", "k8scang-g"]);
    seed("sb-h-00000000001", &["k8sca-sb", "k8scang-h"]);
    // A journal that claims all three (and a name g never makes) as g's standby servers.
    std::fs::write(
        &state,
        r#"{"version":1,"cluster":"sb","instances":[],"standby":[
            {"server":"sb-g-0000000e001","group":"g"},
            {"server":"sb-g-0000000f001","group":"g"},
            {"server":"sb-h-00000000001","group":"g"},
            {"server":"evil","group":"g"}]}"#,
    )
    .expect("journal");
    let mut e = provider_on(
        &sim,
        config(&sim.url(), "max-size = 8\nstandby = 2"),
        journaled(&state),
    )
    .await;
    assert!(
        e.restored.dropped.iter().any(|d| d.contains("\"evil\"")),
        "{:?}",
        e.restored.dropped
    );
    // Another group's server is refused by its name already; the other two claims are kept
    // and judged against the listing's tags.
    assert!(
        e.restored
            .dropped
            .iter()
            .any(|d| d.contains("sb-h-00000000001")),
        "{:?}",
        e.restored.dropped
    );
    assert_eq!(e.restored.dropped.len(), 2, "{:?}", e.restored.dropped);
    e.pool_ready(2).await;
    assert_eq!(e.creates(), 2, "none of them counts: two bought");
    let (_, _, parked, _) = e.pool();
    assert_eq!(
        parked, 1,
        "only the further-tagged one is g's (parked, never reused)"
    );
    e.scale_up(3, |_| {}).await;
    let names: Vec<String> =
        e.ca.nodes("g")
            .await
            .iter()
            .map(|i| i.id.trim_start_matches("kamatera://").to_string())
            .collect();
    for foreign in ["sb-g-0000000e001", "sb-g-0000000f001", "sb-h-00000000001"] {
        assert!(
            !names.contains(&foreign.to_string()),
            "{foreign} taken: {names:?}"
        );
    }
    assert!(
        e.servers()
            .iter()
            .filter(|s| !s.name.starts_with("sb-g-") || s.tags.len() != 2)
            .all(|s| !s.on),
        "no foreign server powered on: {:#?}",
        e.servers()
    );
    assert_eq!(e.power_ons(), 2, "only the pool's own");
}
