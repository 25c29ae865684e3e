//! The provider behind its real gRPC server on loopback, driven by a real tonic client the way the
//! cluster-autoscaler drives it, against the Kamatera simulator.

use crate::common;

use common::ca::{Ca, error_code, state};
use common::req;
use std::time::Duration;

use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::k8s;
use kamatera_ca_provider::provider::{Provider, ProviderOptions};
use kamatera_ca_provider::sim::{self, Endpoint, EndpointFaults, Quota, SimHandle, Timing};
use pb::instance_status::InstanceState;
use prost::Message;
use tonic::Code;

const PREFIX: &str = "kamatera://";

struct Env {
    sim: SimHandle,
    ca: Ca,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn config_text(api_url: &str) -> String {
    common::TestConfig::new(api_url, "test", "test-", "US-NY2")
        .global("default-min-size = 0")
        .group(
            "alpha",
            "name-prefix = test-alpha
max-size = 5
cpu = 2B
ram = 4096
disk = size=40
template-label = example.com/pool=alpha
template-taint = dedicated=alpha:NoSchedule",
        )
        .group(
            "beta",
            "name-prefix = test-beta
max-size = 3
cpu = 4D
ram = 8192
disk = size=80
scale-down-unneeded-time = 5m
ignore-daemonsets-utilization = true",
        )
        .text()
}

async fn env_with(timing: Timing, quota: Quota) -> Env {
    let sim = common::start_sim(timing, quota).await;
    let cfg = CloudConfig::parse("test.ini", &config_text(&sim.url()), &|_| None).expect("config");
    let client = common::test_client(&cfg, Default::default());
    let provider = Provider::new(
        cfg,
        client,
        ProviderOptions {
            refresh_wait: Duration::from_secs(2),
            // Tests drive reconciles through Refresh.
            reconcile_interval: Duration::from_secs(3600),
            uncertain_create_watch: Duration::from_millis(500),
            // Three listings without a server, then its lookup, and it is gone.
            vanish: kamatera_ca_provider::provider::VanishRule {
                misses: 3,
                after: Duration::ZERO,
            },
            ..ProviderOptions::default()
        },
    );
    let (addr, stop) = common::serve(provider, ServeOptions::default()).await;
    let ca = Ca::connect(addr).await;
    Env {
        sim,
        ca,
        _stop: stop,
    }
}

async fn env() -> Env {
    env_with(Timing::fast(), Quota::default()).await
}

impl std::ops::Deref for Env {
    type Target = Ca;
    fn deref(&self) -> &Ca {
        &self.ca
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut Ca {
        &mut self.ca
    }
}

impl Env {
    /// Refreshes until `check` holds on the group's instances, or fails after 10 s.
    async fn until_10s<F>(&mut self, group: &str, what: &str, check: F) -> Vec<pb::Instance>
    where
        F: Fn(&[pb::Instance]) -> bool,
    {
        self.ca
            .until(group, what, Duration::from_secs(10), check)
            .await
    }

    fn sim_servers(&self) -> Vec<(String, String)> {
        common::sim_servers(&self.sim)
            .into_iter()
            .map(|(name, power, _)| (name, power))
            .collect()
    }
}

fn error_class(i: &pb::Instance) -> i32 {
    i.status
        .as_ref()
        .and_then(|s| s.error_info.as_ref())
        .map(|e| e.instance_error_class)
        .unwrap_or_default()
}

fn count(nodes: &[pb::Instance], s: InstanceState) -> usize {
    nodes.iter().filter(|i| state(i) == s).count()
}

/// CA's fake node for an instance that never registered: name = providerID = instance id.
fn fake_node(id: &str) -> pb::ExternalGrpcNode {
    pb::ExternalGrpcNode {
        provider_id: id.into(),
        name: id.into(),
        annotations: [(
            "k8s.io/cluster-autoscaler/fake-node-reason".to_string(),
            "create-error".to_string(),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn real_node(provider_id: &str) -> pb::ExternalGrpcNode {
    pb::ExternalGrpcNode {
        provider_id: provider_id.into(),
        name: provider_id.trim_start_matches(PREFIX).into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn scaling_flow() {
    // Slow enough to see each step; a quota of 2 servers rejects the third create.
    let timing = Timing {
        create: Duration::from_millis(300),
        power: Duration::from_millis(60),
        terminate: Duration::from_millis(60),
        ..Timing::fast()
    };
    let mut e = env_with(
        timing,
        Quota {
            max_servers: Some(2),
            ..Quota::default()
        },
    )
    .await;
    e.refresh().await;
    assert_eq!(e.target("alpha").await, 0);

    // Scale up by 3: three Creating instances at once, target 3.
    e.increase("alpha", 3).await.expect("increase");
    assert_eq!(e.target("alpha").await, 3);
    let nodes = e.nodes("alpha").await;
    assert_eq!(count(&nodes, InstanceState::InstanceCreating), 3);
    assert!(
        nodes
            .iter()
            .all(|i| i.id.starts_with("kamatera://test-alpha-")),
        "{nodes:#?}"
    );

    // One create is rejected by the quota: OutOfResources with a stable code; the other two are
    // pending, their servers listed powered off.
    let nodes = e
        .until_10s("alpha", "one quota error", |n| {
            n.iter().any(|i| error_code(i) == "QUOTA_EXCEEDED")
        })
        .await;
    let failed: Vec<&pb::Instance> = nodes.iter().filter(|i| !error_code(i).is_empty()).collect();
    assert_eq!(failed.len(), 1, "{nodes:#?}");
    assert_eq!(error_class(failed[0]), 1);
    assert_eq!(state(failed[0]), InstanceState::InstanceCreating);
    assert_eq!(
        e.target("alpha").await,
        3,
        "errored instances count until deleted"
    );
    let servers = e.sim_servers();
    assert_eq!(servers.len(), 2);
    assert!(
        servers.iter().all(|(_, p)| p == "off"),
        "listed off while creating: {servers:?}"
    );
    assert_eq!(
        count(&e.nodes("alpha").await, InstanceState::InstanceRunning),
        0
    );

    // The autoscaler deletes the failed instance through a fake node: gone at once, target 2.
    let failed_id = failed[0].id.clone();
    e.delete("alpha", vec![fake_node(&failed_id)])
        .await
        .expect("delete fake node");
    assert_eq!(e.target("alpha").await, 2);
    assert!(e.nodes("alpha").await.iter().all(|i| i.id != failed_id));

    // Creates complete, servers power on: Running.
    let nodes = e
        .until_10s("alpha", "two running", |n| {
            count(n, InstanceState::InstanceRunning) == 2
        })
        .await;
    assert_eq!(nodes.len(), 2);
    assert!(e.sim_servers().iter().all(|(_, p)| p == "on"));
    assert_eq!(
        e.sim.requests(Endpoint::CreateServer),
        3,
        "each create sent exactly once"
    );

    // A node of the group is ours; NodeGroupForNode finds it by providerID and by name.
    let running = nodes[0].id.clone();
    for node in [
        real_node(&running),
        pb::ExternalGrpcNode {
            name: running.trim_start_matches(PREFIX).into(),
            ..Default::default()
        },
    ] {
        let g = e.ca.group_for(node).await;
        assert_eq!((g.id.as_str(), g.min_size, g.max_size), ("alpha", 0, 5));
    }

    // Scale down one: Deleting, then power off, terminate, removed; the server is gone.
    e.delete("alpha", vec![real_node(&running)])
        .await
        .expect("delete");
    assert_eq!(e.target("alpha").await, 1);
    let nodes = e.nodes("alpha").await;
    assert_eq!(
        nodes.iter().find(|i| i.id == running).map(state),
        Some(InstanceState::InstanceDeleting)
    );
    e.until_10s("alpha", "deleted node to disappear", |n| {
        n.iter().all(|i| i.id != running)
    })
    .await;
    let servers = e.sim_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_ne!(format!("{PREFIX}{}", servers[0].0), running);
    assert_eq!(e.sim.requests(Endpoint::PowerOff), 1);
    assert_eq!(e.sim.requests(Endpoint::Terminate), 1);

    // Deleting it again is harmless.
    e.delete("alpha", vec![real_node(&running)])
        .await
        .expect_err("not ours any more");
}

#[tokio::test]
async fn command_error_and_cancel_become_error_info() {
    let mut e = env().await;
    e.refresh().await;
    e.sim.update_faults(|f| f.command_error_rate = 1.0);
    e.increase("alpha", 1).await.expect("increase");
    let nodes = e
        .until_10s("alpha", "create failed", |n| {
            n.iter().any(|i| error_code(i) == "CREATE_FAILED")
        })
        .await;
    assert_eq!(error_class(&nodes[0]), 99);
    assert_eq!(state(&nodes[0]), InstanceState::InstanceCreating);
    assert!(
        nodes[0]
            .status
            .as_ref()
            .and_then(|s| s.error_info.as_ref())
            .is_some_and(|i| i.error_message.contains("ended error")),
        "{nodes:#?}"
    );
    let failed = nodes[0].id.clone();

    e.sim.update_faults(|f| {
        f.command_error_rate = 0.0;
        f.command_cancel_rate = 1.0;
    });
    e.increase("alpha", 1).await.expect("increase");
    e.until_10s("alpha", "create cancelled", |n| {
        n.iter().any(|i| error_code(i) == "CREATE_CANCELLED")
    })
    .await;
    assert_eq!(e.target("alpha").await, 2);

    // Both are cleaned up through fake nodes, with no API call (nothing was bought).
    let all: Vec<pb::ExternalGrpcNode> = e
        .nodes("alpha")
        .await
        .iter()
        .map(|i| fake_node(&i.id))
        .collect();
    e.delete("alpha", all).await.expect("delete fakes");
    assert_eq!(e.target("alpha").await, 0);
    assert!(e.nodes("alpha").await.is_empty());
    assert_eq!(
        e.sim.requests(Endpoint::PowerOff) + e.sim.requests(Endpoint::Terminate),
        0
    );
    assert!(e.sim_servers().is_empty());
    assert!(!failed.is_empty());
}

#[tokio::test]
async fn decrease_target_size_cancels_only_uncreated_capacity() {
    let mut e = env().await;
    e.refresh().await;
    e.increase("alpha", 1).await.expect("increase");
    e.until_10s("alpha", "one running", |n| {
        count(n, InstanceState::InstanceRunning) == 1
    })
    .await;

    // Two more whose create requests are slow: no server yet.
    e.sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            latency_ms: 400,
            ..Default::default()
        },
    );
    e.increase("alpha", 2).await.expect("increase");
    assert_eq!(e.target("alpha").await, 3);

    // Three is more than the two not yet created: refused, nothing changes.
    let err =
        e.ca.rpc
            .node_group_decrease_target_size(req(pb::NodeGroupDecreaseTargetSizeRequest {
                delta: -3,
                id: "alpha".into(),
            }))
            .await
            .expect_err("would delete a node");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(e.target("alpha").await, 3);
    // A positive delta is invalid.
    let err =
        e.ca.rpc
            .node_group_decrease_target_size(req(pb::NodeGroupDecreaseTargetSizeRequest {
                delta: 1,
                id: "alpha".into(),
            }))
            .await
            .expect_err("positive");
    assert_eq!(err.code(), Code::InvalidArgument);

    e.ca.rpc
        .node_group_decrease_target_size(req(pb::NodeGroupDecreaseTargetSizeRequest {
            delta: -2,
            id: "alpha".into(),
        }))
        .await
        .expect("decrease");
    assert_eq!(e.target("alpha").await, 1);

    // The cancelled creates were already on the wire: their servers are terminated when they
    // appear, and the running node is untouched.
    e.until_10s("alpha", "cancelled capacity cleaned up", |n| n.len() == 1)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.sim_servers().len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "servers left: {:?}",
            e.sim_servers()
        );
        e.refresh().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(&e.nodes("alpha").await, InstanceState::InstanceRunning),
        1
    );
}

#[tokio::test]
async fn two_groups_share_one_listing_and_poll_each_command_once() {
    let timing = Timing {
        create: Duration::from_millis(500),
        ..Timing::fast()
    };
    let mut e = env_with(timing, Quota::default()).await;
    e.refresh().await;
    e.increase("alpha", 2).await.expect("alpha");
    e.increase("beta", 2).await.expect("beta");
    // Wait until all four create requests were accepted (their commands are pending).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while e.sim.requests(Endpoint::CreateServer) < 4 || e.sim_servers().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (lists, queues, tags) = (
        e.sim.requests(Endpoint::ListServers),
        e.sim.requests(Endpoint::Queue),
        e.sim.requests(Endpoint::ServerTags),
    );
    e.refresh().await;
    assert_eq!(
        e.sim.requests(Endpoint::ListServers),
        lists + 1,
        "one listing per refresh"
    );
    assert_eq!(
        e.sim.requests(Endpoint::Queue),
        queues + 4,
        "each pending command of both groups polled once, alone"
    );
    assert_eq!(e.sim.with_state(|s| s.queue_polls.most_ids), 1);
    assert_eq!(
        e.sim.requests(Endpoint::ServerTags),
        tags,
        "no tag reads for servers we created"
    );
    let snapshot = e.sim.snapshot();
    assert_eq!(snapshot["commands"].as_array().map(Vec::len), Some(4));

    e.until_10s("alpha", "alpha running", |n| {
        count(n, InstanceState::InstanceRunning) == 2
    })
    .await;
    e.until_10s("beta", "beta running", |n| {
        count(n, InstanceState::InstanceRunning) == 2
    })
    .await;
    assert_eq!(e.target("alpha").await, 2);
    assert_eq!(e.target("beta").await, 2);
}

#[tokio::test]
async fn adopts_existing_tagged_servers_and_ignores_foreign_ones() {
    let mut e = env().await;
    let seed = |name: &str, tags: &[&str], on: bool| sim::SeedServer {
        name: name.into(),
        datacenter: "US-NY2".into(),
        power_on: on,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        cpu: "2B".into(),
        ram_mb: 4096,
    };
    e.sim.seed_server(seed(
        "test-alpha-aaaaaaaaaaa",
        &["k8sca-test", "k8scang-alpha"],
        true,
    ));
    e.sim.seed_server(seed(
        "test-alpha-parked0000",
        &["k8sca-test", "k8scang-alpha"],
        false,
    ));
    e.sim.seed_server(seed(
        "test-other-bbbbbbbbbbb",
        &["k8sca-other", "k8scang-alpha"],
        true,
    ));
    e.sim.seed_server(seed("unrelated-vm", &[], true));
    e.refresh().await;
    let nodes = e.nodes("alpha").await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0].id, "kamatera://test-alpha-aaaaaaaaaaa");
    assert_eq!(state(&nodes[0]), InstanceState::InstanceRunning);
    assert_eq!(e.target("alpha").await, 1);
    assert_eq!(
        e.sim.requests(Endpoint::ServerTags),
        3,
        "the filter prefix skips unrelated-vm"
    );

    // Tags are read once per server, not on every refresh.
    e.refresh().await;
    assert_eq!(e.sim.requests(Endpoint::ServerTags), 3);

    // Foreign nodes get an empty group, never an error.
    for node in [
        real_node("kamatera://test-other-bbbbbbbbbbb"),
        real_node("aws:///eu-west-1a/i-0123"),
        pb::ExternalGrpcNode::default(),
    ] {
        let g =
            e.ca.rpc
                .node_group_for_node(req(pb::NodeGroupForNodeRequest { node: Some(node) }))
                .await
                .expect("for node")
                .into_inner()
                .node_group
                .expect("present");
        assert_eq!(g.id, "");
    }
    let g =
        e.ca.rpc
            .node_group_for_node(req(pb::NodeGroupForNodeRequest { node: None }))
            .await
            .expect("no node")
            .into_inner();
    assert_eq!(g.node_group.map(|g| g.id), Some(String::new()));

    // A server that vanishes out of band leaves the group; target follows.
    let id = e.sim.snapshot()["servers"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"] == "test-alpha-aaaaaaaaaaa")
                .map(|s| s["id"].as_str().unwrap_or_default().to_string())
        })
        .expect("seeded id");
    assert!(e.sim.vanish(&id));
    for _ in 0..3 {
        e.refresh().await;
    }
    assert_eq!(e.target("alpha").await, 0);
}

#[tokio::test]
async fn bad_requests_fail_without_side_effects() {
    let mut e = env().await;
    e.refresh().await;
    let creates = e.sim.requests(Endpoint::CreateServer);

    let err = e.increase("alpha", 0).await.expect_err("delta 0");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("delta must be positive"), "{err:?}");
    let err = e.increase("alpha", -1).await.expect_err("negative");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = e.increase("alpha", 6).await.expect_err("over max");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("max 5"), "{err:?}");
    let err = e.increase("nope", 1).await.expect_err("unknown group");
    assert_eq!(err.code(), Code::NotFound);
    for (code, result) in [
        (
            Code::NotFound,
            e.ca.rpc
                .node_group_target_size(req(pb::NodeGroupTargetSizeRequest { id: "nope".into() }))
                .await
                .map(|_| ()),
        ),
        (
            Code::NotFound,
            e.ca.rpc
                .node_group_nodes(req(pb::NodeGroupNodesRequest { id: "".into() }))
                .await
                .map(|_| ()),
        ),
        (
            Code::NotFound,
            e.ca.rpc
                .node_group_template_node_info(req(pb::NodeGroupTemplateNodeInfoRequest {
                    id: "nope".into(),
                }))
                .await
                .map(|_| ()),
        ),
        (
            Code::NotFound,
            e.ca.rpc
                .node_group_get_options(req(pb::NodeGroupAutoscalingOptionsRequest {
                    id: "nope".into(),
                    defaults: None,
                }))
                .await
                .map(|_| ()),
        ),
    ] {
        assert_eq!(result.expect_err("unknown group").code(), code);
    }
    assert_eq!(e.target("alpha").await, 0);
    assert!(e.nodes("alpha").await.is_empty());
    assert_eq!(
        e.sim.requests(Endpoint::CreateServer),
        creates,
        "no API call was made"
    );

    // A delete naming one of our nodes and one foreign node changes nothing.
    e.increase("alpha", 1).await.expect("increase");
    let nodes = e
        .until_10s("alpha", "running", |n| {
            count(n, InstanceState::InstanceRunning) == 1
        })
        .await;
    let err = e
        .delete(
            "alpha",
            vec![
                real_node(&nodes[0].id),
                real_node("kamatera://test-alpha-notours00"),
            ],
        )
        .await
        .expect_err("foreign node");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("does not belong to node group alpha"),
        "{err:?}"
    );
    // Nor does deleting it through the wrong group.
    let err = e
        .delete("beta", vec![real_node(&nodes[0].id)])
        .await
        .expect_err("other group");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        count(&e.nodes("alpha").await, InstanceState::InstanceRunning),
        1
    );
    assert_eq!(
        e.sim.requests(Endpoint::PowerOff) + e.sim.requests(Endpoint::Terminate),
        0
    );

    // Pricing is not configured.
    let err =
        e.ca.rpc
            .pricing_node_price(req(pb::PricingNodePriceRequest::default()))
            .await
            .expect_err("pricing");
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn refresh_answers_within_the_deadline_when_kamatera_hangs() {
    let mut e = env().await;
    e.refresh().await;
    e.increase("alpha", 1).await.expect("increase");
    e.until_10s("alpha", "running", |n| {
        count(n, InstanceState::InstanceRunning) == 1
    })
    .await;

    // Every listing now takes 8 s, longer than the autoscaler's 5 s deadline.
    e.sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            latency_ms: 8000,
            ..Default::default()
        },
    );
    for _ in 0..2 {
        e.ca.rpc
            .refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh answers in time, with the last known state");
        // Reads still answer from memory while the reconcile hangs.
        assert_eq!(e.target("alpha").await, 1);
        assert_eq!(
            count(&e.nodes("alpha").await, InstanceState::InstanceRunning),
            1
        );
    }
}

#[tokio::test]
async fn refresh_is_unavailable_until_kamatera_was_read_once() {
    let mut e = env().await;
    e.sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let err =
        e.ca.rpc
            .refresh(req(pb::RefreshRequest {}))
            .await
            .expect_err("no state yet");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("Failed to run command method (listServers)"),
        "{err:?}"
    );
    assert!(!err.message().contains(sim::DEMO_SECRET));
    e.sim.update_faults(|f| f.endpoints.clear());
    e.refresh().await;
    // Later failures do not fail Refresh.
    e.sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    e.refresh().await;
}

#[tokio::test]
async fn template_node_decodes_to_the_expected_node() {
    let mut e = env().await;
    let resp =
        e.ca.rpc
            .node_group_template_node_info(req(pb::NodeGroupTemplateNodeInfoRequest {
                id: "alpha".into(),
            }))
            .await
            .expect("template")
            .into_inner();
    assert!(!resp.node_bytes.is_empty(), "never an empty OK answer");
    assert_eq!(
        resp.legacy_node_info, resp.node_bytes,
        "the same Node for old autoscalers"
    );
    let node = k8s::Node::decode(resp.node_bytes.as_slice()).expect("decode Node");
    let meta = node.metadata.expect("metadata");
    assert_eq!(meta.name.as_deref(), Some("template-node-for-alpha"));
    let label = |k: &str| meta.labels.get(k).map(String::as_str);
    assert_eq!(label("kubernetes.io/os"), Some("linux"));
    assert_eq!(label("kubernetes.io/arch"), Some("amd64"));
    // No Kubernetes access here: nothing would set instance type and region on the nodes, so
    // the template does not promise them; the join script's labels it does.
    assert_eq!(label("node.kubernetes.io/instance-type"), None);
    assert_eq!(label("topology.kubernetes.io/region"), None);
    assert_eq!(label("kamatera.com/node-group"), Some("alpha"));
    assert_eq!(label("example.com/pool"), Some("alpha"));
    assert_eq!(meta.labels.len(), 5, "{:?}", meta.labels);
    let spec = node.spec.expect("spec");
    assert_eq!(spec.taints.len(), 1);
    assert_eq!(spec.taints[0].key.as_deref(), Some("dedicated"));
    assert_eq!(spec.taints[0].value.as_deref(), Some("alpha"));
    assert_eq!(spec.taints[0].effect.as_deref(), Some("NoSchedule"));
    let status = node.status.expect("status");
    let q = |m: &std::collections::BTreeMap<String, k8s::Quantity>, k: &str| {
        m.get(k).and_then(|q| q.string.clone())
    };
    assert_eq!(q(&status.capacity, "cpu").as_deref(), Some("2"));
    assert_eq!(q(&status.capacity, "memory").as_deref(), Some("4096Mi"));
    assert_eq!(q(&status.capacity, "pods").as_deref(), Some("110"));
    assert_eq!(
        q(&status.capacity, "ephemeral-storage").as_deref(),
        Some("40Gi")
    );
    assert_eq!(q(&status.allocatable, "cpu").as_deref(), Some("1900m"));
    assert_eq!(q(&status.allocatable, "memory").as_deref(), Some("3840Mi"));
    assert_eq!(q(&status.allocatable, "pods").as_deref(), Some("110"));
    assert_eq!(
        q(&status.allocatable, "ephemeral-storage").as_deref(),
        Some("36864Mi")
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.r#type.as_deref() == Some("Ready"))
        .expect("Ready");
    assert_eq!(ready.status.as_deref(), Some("True"));
}

#[tokio::test]
async fn get_options_absent_unless_overridden() {
    let mut e = env().await;
    let defaults = pb::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: 0.5,
        scale_down_gpu_utilization_threshold: 0.6,
        scale_down_unneeded_duration: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        scale_down_unready_duration: Some(prost_types::Duration {
            seconds: 1200,
            nanos: 0,
        }),
        // An old client sends only the legacy field for this one.
        legacy_max_node_provision_time: Some(pb::K8sDuration {
            duration: 900_000_000_000,
        }),
        ..Default::default()
    };
    let alpha =
        e.ca.rpc
            .node_group_get_options(req(pb::NodeGroupAutoscalingOptionsRequest {
                id: "alpha".into(),
                defaults: Some(defaults),
            }))
            .await
            .expect("alpha options")
            .into_inner();
    assert_eq!(
        alpha.node_group_autoscaling_options, None,
        "no overrides: field absent"
    );

    let beta =
        e.ca.rpc
            .node_group_get_options(req(pb::NodeGroupAutoscalingOptionsRequest {
                id: "beta".into(),
                defaults: Some(defaults),
            }))
            .await
            .expect("beta options")
            .into_inner()
            .node_group_autoscaling_options
            .expect("beta overrides something");
    assert_eq!(
        beta.scale_down_utilization_threshold, 0.5,
        "defaults echoed"
    );
    assert_eq!(beta.scale_down_gpu_utilization_threshold, 0.6);
    assert!(beta.ignore_daemon_sets_utilization, "override");
    assert!(!beta.zero_or_max_node_scaling);
    let secs = |d: &Option<prost_types::Duration>| d.as_ref().map(|d| d.seconds);
    let legacy_secs = |d: &Option<pb::K8sDuration>| d.as_ref().map(|d| d.duration / 1_000_000_000);
    assert_eq!(
        secs(&beta.scale_down_unneeded_duration),
        Some(300),
        "override 5m"
    );
    assert_eq!(
        legacy_secs(&beta.legacy_scale_down_unneeded_time),
        Some(300)
    );
    assert_eq!(secs(&beta.scale_down_unready_duration), Some(1200));
    assert_eq!(
        legacy_secs(&beta.legacy_scale_down_unready_time),
        Some(1200)
    );
    assert_eq!(
        secs(&beta.max_node_provision_duration),
        Some(900),
        "legacy default read"
    );
    assert_eq!(legacy_secs(&beta.legacy_max_node_provision_time), Some(900));
}

#[tokio::test]
async fn node_groups_and_gpu_answers() {
    let mut e = env().await;
    let groups =
        e.ca.rpc
            .node_groups(req(pb::NodeGroupsRequest {}))
            .await
            .expect("groups")
            .into_inner()
            .node_groups;
    let ids: Vec<(&str, i32, i32)> = groups
        .iter()
        .map(|g| (g.id.as_str(), g.min_size, g.max_size))
        .collect();
    assert_eq!(ids, vec![("alpha", 0, 5), ("beta", 0, 3)]);
    let label =
        e.ca.rpc
            .gpu_label(req(pb::GpuLabelRequest {}))
            .await
            .expect("gpu label")
            .into_inner();
    assert_eq!(label.label, "");
    let types =
        e.ca.rpc
            .get_available_gpu_types(req(pb::GetAvailableGpuTypesRequest {}))
            .await
            .expect("gpu types")
            .into_inner();
    assert!(types.gpu_types.is_empty());
    e.ca.rpc
        .cleanup(req(pb::CleanupRequest {}))
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn extreme_inputs_are_refused_cleanly() {
    let mut e = env().await;
    e.refresh().await;
    let err = e.increase("alpha", i32::MAX).await.expect_err("huge delta");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = e
        .increase("alpha", i32::MIN)
        .await
        .expect_err("most negative delta");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        e.ca.rpc
            .node_group_decrease_target_size(req(pb::NodeGroupDecreaseTargetSizeRequest {
                delta: i32::MIN,
                id: "alpha".into(),
            }))
            .await
            .expect_err("huge decrease");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A very large delete: 20,000 foreign nodes and one real one; refused as a whole.
    e.increase("alpha", 1).await.expect("increase");
    let nodes = e
        .until_10s("alpha", "running", |n| {
            count(n, InstanceState::InstanceRunning) == 1
        })
        .await;
    let mut many: Vec<pb::ExternalGrpcNode> = (0..20_000)
        .map(|i| real_node(&format!("kamatera://test-alpha-foreign{i:05}")))
        .collect();
    many.push(real_node(&nodes[0].id));
    let err = e.delete("alpha", many).await.expect_err("foreign nodes");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        count(&e.nodes("alpha").await, InstanceState::InstanceRunning),
        1
    );
    assert_eq!(
        e.sim.requests(Endpoint::PowerOff) + e.sim.requests(Endpoint::Terminate),
        0
    );

    // An empty delete is a no-op; a node with huge labels is simply not ours.
    e.delete("alpha", Vec::new()).await.expect("empty delete");
    let labels = (0..5_000)
        .map(|i| (format!("label-{i}"), "x".repeat(64)))
        .collect();
    let g =
        e.ca.rpc
            .node_group_for_node(req(pb::NodeGroupForNodeRequest {
                node: Some(pb::ExternalGrpcNode {
                    name: "huge".into(),
                    labels,
                    ..Default::default()
                }),
            }))
            .await
            .expect("for node")
            .into_inner()
            .node_group
            .expect("present");
    assert_eq!(g.id, "");
    assert_eq!(e.target("alpha").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rpcs_while_kamatera_hangs() {
    let mut e = env().await;
    e.refresh().await;
    e.increase("alpha", 2).await.expect("increase");
    e.until_10s("alpha", "running", |n| {
        count(n, InstanceState::InstanceRunning) == 2
    })
    .await;
    // Every listing now hangs 3 s: reconciles stay in flight while the autoscaler calls.
    e.sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            latency_ms: 3000,
            ..Default::default()
        },
    );
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut ca = e.ca.rpc.clone();
        tasks.push(tokio::spawn(async move {
            match i % 5 {
                0 => ca.refresh(req(pb::RefreshRequest {})).await.map(|_| ()),
                1 => ca
                    .node_group_target_size(req(pb::NodeGroupTargetSizeRequest {
                        id: "alpha".into(),
                    }))
                    .await
                    .map(|_| ()),
                2 => ca
                    .node_group_nodes(req(pb::NodeGroupNodesRequest { id: "alpha".into() }))
                    .await
                    .map(|_| ()),
                3 => ca
                    .node_groups(req(pb::NodeGroupsRequest {}))
                    .await
                    .map(|_| ()),
                _ => ca
                    .node_group_template_node_info(req(pb::NodeGroupTemplateNodeInfoRequest {
                        id: "beta".into(),
                    }))
                    .await
                    .map(|_| ()),
            }
        }));
    }
    for t in tasks {
        t.await
            .expect("task")
            .expect("every RPC answers inside the 5 s deadline");
    }
    // Mutations also answer while a reconcile hangs.
    e.increase("beta", 1).await.expect("increase while hanging");
    assert_eq!(e.target("beta").await, 1);
    assert_eq!(e.target("alpha").await, 2);
}
