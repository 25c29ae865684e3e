//! The warm pool through the simulator over gRPC: `poweroff-on-scale-down` (off/on) × the cap
//! `poweroff-on-scale-down-max-servers` (0/1/2) × one and two node groups. Each case scales every
//! group up by 3, deletes all 3 nodes, checks which servers ended parked (tagged, powered off,
//! invisible to the autoscaler) and which were terminated, then scales up by 3 again and checks
//! that exactly the parked servers were powered on and only the rest bought. Then the Kubernetes
//! side (the provider as Kamatera's node controller): parked and terminated servers' Nodes are
//! deleted (never while their kubelet reports Ready, never a Node of an unconfirmed or foreign
//! server), the Node a parked server registers again at power-on gets its template's labels, a
//! node registered without a providerID gets one, and without Kubernetes access parking still
//! works.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::ca::{self, Ca};
use common::fake_kube::FakeKube;
use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::provider::{Provider, ProviderOptions};
use kamatera_ca_provider::sim::{Endpoint, EndpointFaults, Quota, SimHandle, Timing};
use kamatera_ca_provider::telemetry::Metrics;
use pb::instance_status::InstanceState;

const PREFIX: &str = "kamatera://";
const GROUPS: [&str; 2] = ["a", "b"];
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
struct Case {
    power: bool,
    cap: u32,
    groups: usize,
}

fn config_text(api_url: &str, case: Case) -> String {
    let mut cfg =
        common::TestConfig::new(api_url, "wp", "wp-", "US-NY2").global("default-min-size = 0");
    for g in &GROUPS[..case.groups] {
        cfg = cfg.group(
            g,
            &format!(
                "name-prefix = wp-{g}
max-size = 6
cpu = 2B
ram = 2048
disk = size=20
poweroff-on-scale-down = {power}
poweron-on-scale-up = {power}
poweroff-on-scale-down-max-servers = {cap}",
                power = case.power,
                cap = case.cap,
            ),
        );
    }
    cfg.text()
}

struct Env {
    sim: SimHandle,
    ca: Ca,
    metrics: Arc<Metrics>,
    provider: Provider,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn env(case: Case, kube: Option<kamatera_ca_provider::kube::Kube>) -> Env {
    let sim = common::start_sim(Timing::fast(), Quota::default()).await;
    let cfg =
        CloudConfig::parse("wp.ini", &config_text(&sim.url(), case), &|_| None).expect("config");
    let metrics = Arc::new(Metrics::new());
    let client = common::test_client(&cfg, metrics.clone());
    let provider = Provider::new(
        cfg,
        client,
        ProviderOptions {
            reconcile_interval: Duration::from_secs(3600),
            vanish: kamatera_ca_provider::provider::VanishRule {
                misses: 1,
                after: Duration::ZERO,
            },
            kube,
            ..ProviderOptions::default()
        },
    );
    provider.start_node_controller();
    let (addr, stop) = common::serve(provider.clone(), ServeOptions::default()).await;
    let mut ca = Ca::connect(addr).await;
    ca.refresh().await;
    Env {
        sim,
        ca,
        metrics,
        provider,
        _stop: stop,
    }
}

impl Env {
    /// (name, powered on) of the simulator's servers carrying the group's tags.
    fn servers(&self, group: &str) -> Vec<(String, bool)> {
        let tag = format!("k8scang-{group}");
        self.sim.with_state(|s| {
            s.servers
                .iter()
                .filter(|srv| srv.tags.contains(&tag) && srv.tags.contains(&"k8sca-wp".to_string()))
                .map(|srv| (srv.name.clone(), srv.power == "on"))
                .collect()
        })
    }

    /// Scales the group up by `n` and waits until `n` more instances run; returns all names.
    async fn scale_up(&mut self, group: &str, n: usize) -> BTreeSet<String> {
        self.ca.increase(group, n as i32).await.expect("increase");
        let nodes = self
            .ca
            .until(group, "servers running", WAIT, |nodes| {
                nodes.len() == n
                    && nodes
                        .iter()
                        .all(|i| ca::state(i) == InstanceState::InstanceRunning)
            })
            .await;
        nodes
            .iter()
            .map(|i| i.id.trim_start_matches(PREFIX).to_string())
            .collect()
    }

    /// Deletes every node of the group and waits until the autoscaler sees none and no server
    /// of the group is powered on.
    async fn scale_down_all(&mut self, group: &str) {
        let nodes: Vec<pb::ExternalGrpcNode> = self
            .ca
            .nodes(group)
            .await
            .iter()
            .map(|i| ca::node(&i.id, PREFIX))
            .collect();
        self.ca.delete(group, nodes).await.expect("delete");
        self.ca
            .until(group, "nodes gone", WAIT, |nodes| nodes.is_empty())
            .await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.servers(group).iter().any(|(_, on)| *on) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "servers still on: {:?}",
                self.servers(group)
            );
            self.ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the autoscaler does with an instance in error: deletes it through a fake node (name =
    /// providerID = instance id); waits until the group no longer lists it.
    async fn delete_fake_node(&mut self, group: &str, id: &str) {
        self.ca
            .delete(
                group,
                vec![pb::ExternalGrpcNode {
                    name: id.into(),
                    provider_id: id.into(),
                    ..Default::default()
                }],
            )
            .await
            .expect("delete");
        self.ca
            .until(group, "instance gone", WAIT, |n| n.is_empty())
            .await;
    }

    fn metric(&self, series: &str) -> f64 {
        self.provider.export_gauges();
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

async fn matrix_case(case: Case) {
    let mut e = env(case, None).await;
    let groups = &GROUPS[..case.groups];
    let expect_parked = if !case.power {
        0
    } else if case.cap == 0 {
        3
    } else {
        (case.cap as usize).min(3)
    };

    let mut first = Vec::new();
    for g in groups {
        first.push(e.scale_up(g, 3).await);
    }
    // Scale every group down at once, so that one reconcile sees all of their power-offs finish:
    // the in-tree provider then parked servers of the other groups even in terminate mode.
    for g in groups {
        let nodes: Vec<pb::ExternalGrpcNode> =
            e.ca.nodes(g)
                .await
                .iter()
                .map(|i| ca::node(&i.id, PREFIX))
                .collect();
        e.ca.delete(g, nodes).await.expect("delete");
    }
    for g in groups {
        e.scale_down_all(g).await;
    }

    let mut parked = Vec::new();
    for (g, names) in groups.iter().zip(&first) {
        // Terminations finish within a few reconciles.
        let deadline = tokio::time::Instant::now() + WAIT;
        while e.servers(g).len() != expect_parked {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{case:?} group {g}: expected {expect_parked} parked, have {:?}",
                e.servers(g)
            );
            e.ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = e.servers(g);
        assert!(
            left.iter().all(|(n, on)| !on && names.contains(n)),
            "{case:?} group {g}: parked servers are the group's own, powered off: {left:?}"
        );
        assert_eq!(
            e.ca.target(g).await,
            0,
            "{case:?}: parked servers are not CA's"
        );
        assert!(e.ca.nodes(g).await.is_empty());
        parked.push(
            left.into_iter()
                .map(|(n, _)| n)
                .collect::<BTreeSet<String>>(),
        );
    }
    assert_eq!(
        e.metric("kamatera_ca_parked_servers{group=\"a\"}") as usize,
        expect_parked,
        "{case:?}"
    );

    let creates = e.sim.requests(Endpoint::CreateServer);
    let power_ons = e.sim.requests(Endpoint::PowerOn);
    for (g, was_parked) in groups.iter().zip(&parked) {
        let names = e.scale_up(g, 3).await;
        assert!(
            was_parked.is_subset(&names),
            "{case:?} group {g}: every parked server is reused: parked {was_parked:?}, now {names:?}"
        );
        let servers = e.servers(g);
        assert_eq!(servers.len(), 3, "{case:?} group {g}: {servers:?}");
        assert!(servers.iter().all(|(_, on)| *on));
    }
    let groups_n = case.groups as u64;
    assert_eq!(
        e.sim.requests(Endpoint::PowerOn) - power_ons,
        groups_n * expect_parked as u64,
        "{case:?}: one power-on per parked server"
    );
    assert_eq!(
        e.sim.requests(Endpoint::CreateServer) - creates,
        groups_n * (3 - expect_parked as u64),
        "{case:?}: only the rest is bought"
    );
    // No Kubernetes access here: parking and terminating worked, and the deletion of each
    // scaled-down server's Node was skipped loudly (counted once the server is gone).
    let skipped = "kamatera_ca_kube_node_updates_total{kind=\"delete\",result=\"skipped\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while e.metric(skipped) as usize != case.groups * 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{case:?}: {} skipped",
            e.metric(skipped)
        );
        e.ca.refresh().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! matrix {
    ($($name:ident: $power:expr, $cap:expr, $groups:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            matrix_case(Case { power: $power, cap: $cap, groups: $groups }).await;
        }
    )*};
}

matrix! {
    terminate_cap0_one_group: false, 0, 1;
    terminate_cap1_one_group: false, 1, 1;
    terminate_cap2_one_group: false, 2, 1;
    terminate_cap0_two_groups: false, 0, 2;
    terminate_cap1_two_groups: false, 1, 2;
    terminate_cap2_two_groups: false, 2, 2;
    park_cap0_one_group: true, 0, 1;
    park_cap1_one_group: true, 1, 1;
    park_cap2_one_group: true, 2, 1;
    park_cap0_two_groups: true, 0, 2;
    park_cap1_two_groups: true, 1, 2;
    park_cap2_two_groups: true, 2, 2;
}

const TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
const CANDIDATE: &str = "DeletionCandidateOfClusterAutoscaler";

/// One node group (parking with `power`, at most `cap` parked) with Kubernetes access to a fake
/// cluster; the directory holds its kubeconfig.
async fn with_kube(power: bool, cap: u32) -> (Env, FakeKube, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, kube) = common::fake_kube::with_client(&dir).await;
    let e = env(
        Case {
            power,
            cap,
            groups: 1,
        },
        Some(kube),
    )
    .await;
    (e, fake, dir)
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refreshes (each one a reconcile) until `check` holds.
async fn refresh_until(e: &mut Env, what: &str, check: impl Fn(&Env) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check(e) {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        e.ca.refresh().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The labels group `a` of `config_text` promises beyond the join script's.
const PROVIDER_LABELS: [(&str, &str); 2] = [
    ("node.kubernetes.io/instance-type", "2B-2048"),
    ("topology.kubernetes.io/region", "US-NY2"),
];

#[tokio::test]
async fn gone_servers_nodes_are_deleted_and_a_reregistered_node_is_labelled() {
    let (mut e, fake, _dir) = with_kube(true, 1).await;
    let names: Vec<String> = e.scale_up("a", 2).await.into_iter().collect();
    for n in &names {
        // Joined with the shipped script, then tainted by the autoscaler's scale-down.
        fake.register(
            n,
            &format!("{PREFIX}{n}"),
            &[("kamatera.com/node-group", "a")],
        );
        fake.add_node(
            n,
            &[
                (TO_BE_DELETED, "NoSchedule"),
                (CANDIDATE, "PreferNoSchedule"),
            ],
            true,
            &format!("{PREFIX}{n}"),
        );
        fake.set_ready(n, true);
    }
    // A node of another cluster's Kamatera server, and one of another scheme named like ours.
    fake.add_node("other-cluster-1", &[], false, "kamatera://other-cluster-1");
    fake.add_node("rke-node", &[], false, "rke2://rke-node");

    e.scale_down_all("a").await;
    refresh_until(&mut e, "one parked, one terminated", |e| {
        e.servers("a").len() == 1
    })
    .await;
    let parked = e.servers("a")[0].0.clone();
    let terminated = names.iter().find(|n| **n != parked).expect("other").clone();
    // Their kubelets still report Ready (the grace before a node turns NotReady): kept.
    for _ in 0..5 {
        e.ca.refresh().await;
    }
    assert!(fake.node(&parked).is_some() && fake.node(&terminated).is_some());
    assert!(!fake.calls().iter().any(|c| c.starts_with("DELETE")));

    // Quiet now: both Nodes go, each with an Event saying why.
    fake.set_ready(&parked, false);
    fake.set_ready(&terminated, false);
    refresh_until(&mut e, "gone servers' Nodes deleted", |_| {
        fake.node(&parked).is_none() && fake.node(&terminated).is_none()
    })
    .await;
    assert_eq!(
        fake.node_names(),
        ["other-cluster-1", "rke-node"],
        "never a Node that is not ours"
    );
    // Counted once each delete's answer is back.
    let deleted = "kamatera_ca_kube_node_updates_total{kind=\"delete\",result=\"deleted\"}";
    until("deletes counted", || e.metric(deleted) == 2.0).await;
    until("events", || {
        fake.event_reasons(&parked) == ["Parked"]
            && fake.event_reasons(&terminated) == ["ServerTerminated"]
    })
    .await;

    // Powered on again, the server's kubelet registers afresh with its flags' labels only; the
    // provider adds what the template promised, within moments.
    e.ca.increase("a", 1).await.expect("increase");
    let registered = std::time::Instant::now();
    fake.register(
        &parked,
        &format!("{PREFIX}{parked}"),
        &[("kamatera.com/node-group", "a")],
    );
    until("re-registered node labelled", || {
        let labels = fake.labels(&parked);
        PROVIDER_LABELS
            .iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
    })
    .await;
    eprintln!(
        "a registered node was labelled {} ms after it registered",
        registered.elapsed().as_millis()
    );
    let again =
        e.ca.until("a", "the parked server running again", WAIT, |nodes| {
            nodes.len() == 1 && ca::state(&nodes[0]) == InstanceState::InstanceRunning
        })
        .await;
    assert_eq!(
        again[0].id,
        format!("{PREFIX}{parked}"),
        "reused, not bought"
    );
    assert_eq!(
        fake.labels("other-cluster-1").len(),
        1,
        "foreign node untouched"
    );
    assert_eq!(fake.labels("rke-node").len(), 1, "other scheme untouched");
}

#[tokio::test]
async fn a_server_powered_on_before_its_node_went_keeps_a_released_node() {
    let (mut e, fake, _dir) = with_kube(true, 0).await;
    let name = e.scale_up("a", 1).await.into_iter().next().expect("one");
    fake.add_node(
        &name,
        &[
            ("dedicated", "NoSchedule"),
            (TO_BE_DELETED, "NoSchedule"),
            (CANDIDATE, "PreferNoSchedule"),
        ],
        true,
        &format!("{PREFIX}{name}"),
    );
    fake.set_ready(&name, true);
    e.scale_down_all("a").await;
    refresh_until(&mut e, "parked", |e| {
        e.metric("kamatera_ca_parked_servers{group=\"a\"}") == 1.0
    })
    .await;
    // Its Node still reports Ready (the kubelet's last status has not expired) when the
    // autoscaler wants the capacity back.
    let again = e.scale_up("a", 1).await;
    assert_eq!(again.into_iter().collect::<Vec<_>>(), vec![name.clone()]);
    refresh_until(&mut e, "old Node released", |_| {
        fake.taint_keys(&name) == ["dedicated"]
    })
    .await;
    let node = fake.node(&name).expect("the Node is kept");
    assert!(node["spec"].get("unschedulable").is_none(), "{node}");
    for _ in 0..3 {
        e.ca.refresh().await;
    }
    assert!(
        fake.node(&name).is_some(),
        "a server that is back keeps its Node"
    );
    assert!(!fake.calls().iter().any(|c| c.starts_with("DELETE")));
}

#[tokio::test]
async fn an_unconfirmed_servers_node_is_kept_a_confirmed_gone_ones_is_deleted() {
    let (mut e, fake, _dir) = with_kube(false, 0).await;
    let name = e.scale_up("a", 1).await.into_iter().next().expect("one");
    fake.add_node(&name, &[], false, &format!("{PREFIX}{name}"));
    // The listings stop showing the server, but it exists (a lookup by id finds it).
    e.sim
        .update_faults(|f| f.listing_hides = vec![name.clone()]);
    for _ in 0..5 {
        e.ca.refresh().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(e.ca.nodes("a").await.len(), 1, "still the group's");
    assert!(
        fake.node(&name).is_some(),
        "the Node of an unconfirmed server is kept"
    );
    assert!(!fake.calls().iter().any(|c| c.starts_with("DELETE")));

    // Now it really is gone (removed outside the provider): the lookup says so.
    let id = e.sim.with_state(|s| {
        s.servers
            .iter()
            .find(|srv| srv.name == name)
            .map(|srv| srv.id.clone())
            .expect("server")
    });
    assert!(e.sim.vanish(&id));
    e.ca.until("a", "instance forgotten", WAIT, |n| n.is_empty())
        .await;
    refresh_until(&mut e, "the confirmed-gone server's Node deleted", |_| {
        fake.node(&name).is_none()
    })
    .await;
}

#[tokio::test]
async fn node_matched_by_name_gets_its_provider_id_once() {
    let (mut e, fake, _dir) = with_kube(false, 0).await;
    let name = e.scale_up("a", 1).await.into_iter().next().expect("one");
    fake.add_node(&name, &[], false, "");
    let by_name = pb::ExternalGrpcNode {
        name: name.clone(),
        ..Default::default()
    };
    assert_eq!(e.ca.group_of(by_name.clone()).await, "a");
    until("providerID set", || {
        fake.node(&name).expect("node")["spec"]["providerID"] == format!("{PREFIX}{name}")
    })
    .await;
    // The autoscaler asks every loop (its informer may lag) and reconciles run: no second write.
    for _ in 0..3 {
        assert_eq!(e.ca.group_of(by_name.clone()).await, "a");
        e.ca.refresh().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{:?}", fake.calls());
    // One write: providerID and the template's labels together.
    let body = patches[0].body.clone().expect("body");
    assert_eq!(
        body["metadata"]["labels"]["kamatera.com/node-group"], "a",
        "{body}"
    );

    // A node with another scheme's providerID is matched by name and left alone.
    let other = format!("rke2://{name}");
    let before = fake.calls().len();
    assert_eq!(
        e.ca.group_of(pb::ExternalGrpcNode {
            name: name.clone(),
            provider_id: other,
            ..Default::default()
        })
        .await,
        "a"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.calls().len(), before);
}

/// A parking group with one server, scaled up and down again: one parked server.
async fn one_parked_server() -> (Env, String) {
    let mut e = env(
        Case {
            power: true,
            cap: 0,
            groups: 1,
        },
        None,
    )
    .await;
    let name = e.scale_up("a", 1).await.into_iter().next().expect("one");
    e.scale_down_all("a").await;
    (e, name)
}

#[tokio::test]
async fn failed_power_on_is_error_info_and_that_server_is_terminated() {
    let (mut e, name) = one_parked_server().await;
    assert_eq!(e.servers("a"), vec![(name.clone(), false)], "parked");

    // Every command now fails: the power-on of the parked server ends in error.
    e.sim.update_faults(|f| f.command_error_rate = 1.0);
    e.ca.increase("a", 1).await.expect("increase");
    let nodes =
        e.ca.until("a", "power-on error", WAIT, |n| {
            n.len() == 1 && ca::error_code(&n[0]) == "POWER_ON_FAILED"
        })
        .await;
    assert_eq!(nodes[0].id, format!("{PREFIX}{name}"));
    assert_eq!(ca::state(&nodes[0]), InstanceState::InstanceCreating);
    assert_eq!(
        e.ca.target("a").await,
        1,
        "counts until the autoscaler deletes it"
    );
    assert_eq!(
        e.sim.requests(Endpoint::CreateServer),
        1,
        "nothing bought instead"
    );

    // The autoscaler cleans up with a fake node; a server that failed to start is not parked
    // again but terminated.
    e.sim.update_faults(|f| f.command_error_rate = 0.0);
    let id = nodes[0].id.clone();
    e.delete_fake_node("a", &id).await;
    until("terminated", || e.servers("a").is_empty()).await;
}

#[tokio::test]
async fn a_refused_power_on_is_error_info_and_keeps_the_server_parked() {
    let (mut e, name) = one_parked_server().await;
    // The power-on request is refused (429 on every attempt): nothing was done to the server.
    e.sim.set_endpoint_faults(
        Endpoint::PowerOn,
        EndpointFaults {
            rate_limit_rate: 1.0,
            ..EndpointFaults::default()
        },
    );
    e.ca.increase("a", 1).await.expect("increase");
    let nodes =
        e.ca.until("a", "refusal recorded", WAIT, |n| {
            n.len() == 1 && ca::error_code(&n[0]) == "POWER_ON_REJECTED"
        })
        .await;
    e.sim
        .set_endpoint_faults(Endpoint::PowerOn, EndpointFaults::default());
    let id = nodes[0].id.clone();
    e.delete_fake_node("a", &id).await;
    for _ in 0..3 {
        e.ca.refresh().await;
    }
    assert_eq!(
        e.servers("a"),
        vec![(name.clone(), false)],
        "nothing happened to it: still parked"
    );
    assert_eq!(e.sim.requests(Endpoint::Terminate), 0);
    // And it is reused by the next scale-up.
    e.sim
        .set_endpoint_faults(Endpoint::PowerOn, EndpointFaults::default());
    let again = e.scale_up("a", 1).await;
    assert!(again.contains(&name));
}
