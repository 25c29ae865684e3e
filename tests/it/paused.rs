//! The provider's timing rules at their default values, on a paused clock: the simulator in
//! process (no socket, see `sim::in_process` and `kamatera::InProcess`), the provider and the
//! simulator both on tokio's clock, which moves only when every task waits. A rule of a minute
//! or ten takes milliseconds, and its edges are exact: one reconcile before the limit nothing
//! happens, at the limit it does.

use crate::common;

use std::time::Duration;

use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::provider::{Phase, Provider, ProviderOptions};
use kamatera_ca_provider::sim::{self, Endpoint, EndpointFaults, SimConfig, SimHandle, Timing};

/// The background loop's period: the passes below come this far apart, as they would with no
/// autoscaler Refresh in between.
const PASS: Duration = Duration::from_secs(15);

struct Paused {
    sim: SimHandle,
    provider: Provider,
}

fn paused(group: &str, timing: Timing) -> Paused {
    let sim = sim::in_process(SimConfig {
        timing,
        ..SimConfig::default()
    });
    let cfg: CloudConfig = common::TestConfig::new(&sim.url(), "pz", "pz-", "EU")
        .group(
            "g",
            &format!(
                "name-prefix = pz-g\nmin-size = 0\ncpu = 2B\nram = 2048\ndisk = size=20\n{group}"
            ),
        )
        .parse();
    let client = common::in_process_client(&sim);
    // Every timing rule at its default.
    let provider = Provider::new(cfg, client, ProviderOptions::default());
    Paused { sim, provider }
}

impl Paused {
    /// One reconcile, `PASS` after the last one.
    async fn pass(&self) {
        tokio::time::sleep(PASS).await;
        self.provider.reconcile().await.expect("reconcile");
    }

    fn target(&self) -> u32 {
        self.provider.target_size("g").expect("target")
    }

    fn running(&self) -> usize {
        self.provider
            .nodes("g")
            .expect("nodes")
            .iter()
            .filter(|i| i.phase == Phase::Running)
            .count()
    }

    fn errors(&self) -> Vec<&'static str> {
        self.provider
            .nodes("g")
            .expect("nodes")
            .iter()
            .filter_map(|i| i.error.as_ref().map(|e| e.code))
            .collect()
    }

    /// Scales up by `n` and passes until `n` more run (a create takes the simulator's 20 s).
    async fn scale_up(&self, n: i32) {
        let want = self.running() + n as usize;
        self.provider.increase_size("g", n).await.expect("increase");
        for _ in 0..10 {
            self.pass().await;
            if self.running() == want {
                return;
            }
        }
        panic!("not running after 10 passes");
    }
}

/// The vanish rule's defaults: a server deleted by hand is presumed for 3 listings spanning at
/// least 60 s; the pass at 45 s still counts it, the one at 60 s looks it up and lets it go.
#[tokio::test(start_paused = true)]
async fn a_server_deleted_by_hand_leaves_at_sixty_seconds_not_before() {
    let p = paused("max-size = 4", Timing::default());
    p.provider.reconcile().await.expect("first listing");
    p.scale_up(2).await;
    let victim = p.sim.snapshot()["servers"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(p.sim.vanish(&victim));
    // The first listing without it, then 15, 30 and 45 s later: presumed, counted.
    p.provider.reconcile().await.expect("reconcile");
    for _ in 0..3 {
        p.pass().await;
        assert_eq!(p.target(), 2, "presumed before 60 s");
    }
    assert_eq!(p.sim.requests(Endpoint::ServerInfo), 0, "no lookup yet");
    p.pass().await;
    assert_eq!(p.target(), 1, "gone at 60 s");
    assert_eq!(
        p.sim.requests(Endpoint::ServerInfo),
        2,
        "one lookup: the id path, then the name path"
    );
}

/// The uncertain-create grace's default: a create answered 5xx may have bought a server; it
/// waits 2 minutes for one to appear before it reports CREATE_UNCERTAIN.
#[tokio::test(start_paused = true)]
async fn a_create_whose_outcome_is_unknown_reports_after_two_minutes() {
    let p = paused("max-size = 4", Timing::default());
    p.provider.reconcile().await.expect("first listing");
    p.sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            error_rate: 1.0,
            ..EndpointFaults::default()
        },
    );
    p.provider.increase_size("g", 1).await.expect("increase");
    // Passes at 15 s … 105 s: waiting, no error.
    for _ in 0..7 {
        p.pass().await;
        assert!(p.errors().is_empty(), "{:?}", p.errors());
    }
    // At 120 s.
    p.pass().await;
    assert_eq!(p.errors(), ["CREATE_UNCERTAIN"]);
    assert_eq!(
        p.sim.requests(Endpoint::CreateServer),
        1,
        "never sent again"
    );
}

/// The wait for room's default: a scale-up at max-size while deleted servers are still being
/// terminated waits, without error, and reports MAX_SIZE_REACHED after 10 minutes.
#[tokio::test(start_paused = true)]
async fn a_create_waiting_for_room_gives_up_after_ten_minutes() {
    let p = paused(
        "max-size = 1",
        Timing {
            // Terminates that outlast the wait.
            terminate: Duration::from_secs(3600),
            ..Timing::default()
        },
    );
    p.provider.reconcile().await.expect("first listing");
    p.scale_up(1).await;
    let node = p.provider.nodes("g").expect("nodes").remove(0);
    p.provider
        .delete_nodes(
            "g",
            &[kamatera_ca_provider::provider::NodeRef {
                provider_id: node.id.clone(),
                name: node.id.trim_start_matches("kamatera://").into(),
                group_label: String::new(),
            }],
        )
        .await
        .expect("delete");
    p.pass().await;
    p.provider
        .increase_size("g", 1)
        .await
        .expect("room will come");
    p.pass().await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10 * 60) - PASS {
        assert!(p.errors().is_empty(), "{:?}", p.errors());
        p.pass().await;
    }
    // The pass that crosses 10 minutes.
    p.pass().await;
    p.pass().await;
    assert_eq!(p.errors(), ["MAX_SIZE_REACHED"]);
    assert_eq!(
        p.sim.requests(Endpoint::CreateServer),
        1,
        "the second never went out"
    );
}

/// A create for the standby pool whose outcome is unknown (answered 5xx) may have bought a
/// server: it keeps its place in the pool for the whole watch period (30 minutes by default),
/// so nothing is bought in its stead meanwhile; then one replacement is bought.
#[tokio::test(start_paused = true)]
async fn a_pool_create_whose_outcome_is_unknown_is_not_bought_again_for_thirty_minutes() {
    let p = paused("max-size = 4\nstandby = 1", Timing::default());
    p.sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            error_rate: 1.0,
            ..EndpointFaults::default()
        },
    );
    p.provider.reconcile().await.expect("first listing");
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30 * 60) - PASS {
        p.pass().await;
        assert_eq!(p.sim.requests(Endpoint::CreateServer), 1, "bought again");
    }
    p.sim
        .set_endpoint_faults(Endpoint::CreateServer, EndpointFaults::default());
    for _ in 0..4 {
        p.pass().await;
    }
    assert_eq!(p.sim.requests(Endpoint::CreateServer), 2, "one replacement");
    assert_eq!(p.target(), 0, "never the autoscaler's");
}

/// The standby pool at the benchmark's timings (create 180 s, first boot 60 s): filled in
/// the background, a scale-up of 2 from it runs within the first boot and one pass, buying
/// nothing; then the pool is bought again.
#[tokio::test(start_paused = true)]
async fn a_pooled_scale_up_runs_within_the_first_boot_and_buys_nothing() {
    let p = paused(
        "max-size = 6\nstandby = 2",
        Timing {
            create: Duration::from_secs(180),
            first_boot: Duration::from_secs(60),
            boot: Duration::from_secs(40),
            ..Timing::default()
        },
    );
    p.provider.reconcile().await.expect("first listing");
    // Bought at the first pass, ready once the 180 s creates are done.
    for _ in 0..14 {
        p.pass().await;
    }
    let pool = p.provider.hibernation_status("g").expect("status");
    assert_eq!((pool.standby, pool.standby_creating), (2, 0));
    assert_eq!(p.sim.requests(Endpoint::CreateServer), 2);
    let asked = tokio::time::Instant::now();
    p.provider.increase_size("g", 2).await.expect("increase");
    while p.running() < 2 {
        p.pass().await;
        assert!(
            asked.elapsed() <= Duration::from_secs(60) + PASS,
            "not running within the first boot and a pass"
        );
    }
    assert_eq!(
        p.sim.requests(Endpoint::CreateServer),
        2,
        "nothing bought for it"
    );
    assert_eq!(p.sim.requests(Endpoint::PowerOn), 2);
    // Replacements after the scale-up.
    p.pass().await;
    assert_eq!(p.sim.requests(Endpoint::CreateServer), 4);
}
