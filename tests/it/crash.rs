//! kill -9 in the middle of a scale-up, restart on the same state file: exactly the servers the
//! autoscaler asked for, none bought twice.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::req;
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use kamatera_ca_provider::sim::{self, Endpoint, EndpointFaults, Timing};
use pb::instance_status::InstanceState;
use tonic::transport::Channel;

/// Where the journal of a `serve` process lives.
enum Journal {
    File(std::path::PathBuf),
    /// A ConfigMap `kube-system/crash-state` in a fake cluster (with its kubeconfig).
    ConfigMap(common::fake_kube::FakeKube, std::path::PathBuf),
}

impl Journal {
    fn args(&self) -> Vec<String> {
        match self {
            Journal::File(p) => vec!["--state-file".into(), p.display().to_string()],
            Journal::ConfigMap(_, kubeconfig) => vec![
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--state-configmap".into(),
                "kube-system/crash-state".into(),
            ],
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Journal::File(p) => std::fs::read_to_string(p).ok(),
            Journal::ConfigMap(fake, _) => {
                fake.configmap_data("kube-system", "crash-state", "journal.json")
            }
        }
    }
}

/// Starts `serve` on a config and a journal.
fn start_with(config: &Path, journal: &Journal) -> common::ServeProcess {
    let config = config.display().to_string();
    let mut args: Vec<String> = vec!["--cloud-config".into(), config];
    args.extend(journal.args());
    // A create journaled as sent whose request never left the dying process waits this long for
    // its server before it reports an error (120 s by default).
    args.extend(["--uncertain-create-grace-seconds".into(), "1".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::spawn_serve(&args)
}

/// Starts `serve` on a config and state file.
fn start(config: &Path, state: &Path) -> common::ServeProcess {
    start_with(config, &Journal::File(state.to_path_buf()))
}

async fn nodes(ca: &mut CloudProviderClient<Channel>) -> Vec<pb::Instance> {
    ca.node_group_nodes(req(pb::NodeGroupNodesRequest { id: "burst".into() }))
        .await
        .expect("nodes")
        .into_inner()
        .instances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_scale_up_then_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    kill_9_then_restart(dir.path(), Journal::File(dir.path().join("state.json"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_a_new_pod_on_the_same_configmap_buys_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = common::fake_kube::FakeKube::start().await;
    let kubeconfig = fake.kubeconfig(dir.path());
    kill_9_then_restart(dir.path(), Journal::ConfigMap(fake, kubeconfig)).await;
}

/// kill -9 in the middle of a scale-up of 10, a new process on the same journal: exactly 10
/// servers, none bought twice.
async fn kill_9_then_restart(dir: &Path, journal: Journal) {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    // Creates are carried out at once but answered slowly: the provider dies waiting.
    sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            answer_delay_ms: 400,
            ..Default::default()
        },
    );
    let config = write_config(dir, &sim);

    let mut first = start_with(&config, &journal);
    let addr = first.addr.clone();
    let mut ca = CloudProviderClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    ca.refresh(req(pb::RefreshRequest {}))
        .await
        .expect("refresh");
    ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
        delta: 10,
        id: "burst".into(),
    }))
    .await
    .expect("increase");
    // Some creates reached the API (8 at a time), none answered yet: kill -9 now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.requests(Endpoint::CreateServer) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no create reached the API"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill().expect("kill -9");
    let _ = first.child.wait();
    drop(first);
    let sent_before = sim.requests(Endpoint::CreateServer);
    assert!(
        sent_before < 10,
        "the crash must come mid scale-up ({sent_before} creates sent)"
    );
    let text = journal.text().expect("the journal exists");
    assert!(
        text.contains("\"sent\"") || text.contains("\"queued\""),
        "{text}"
    );

    sim.update_faults(|f| f.endpoints.clear());
    let second = start_with(&config, &journal);
    let addr = second.addr.clone();
    let mut ca = CloudProviderClient::connect(format!("http://{addr}"))
        .await
        .expect("reconnect");
    // The autoscaler keeps asking for 10 (it believes the target is 10).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        ca.refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
        let list = nodes(&mut ca).await;
        let failed: Vec<pb::ExternalGrpcNode> = list
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .and_then(|s| s.error_info.as_ref())
                    .is_some_and(|e| !e.error_code.is_empty())
            })
            .map(|i| pb::ExternalGrpcNode {
                provider_id: i.id.clone(),
                name: i.id.clone(),
                ..Default::default()
            })
            .collect();
        if !failed.is_empty() {
            ca.node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
                nodes: failed,
                id: "burst".into(),
            }))
            .await
            .expect("delete failed");
        }
        let target = ca
            .node_group_target_size(req(pb::NodeGroupTargetSizeRequest { id: "burst".into() }))
            .await
            .expect("target")
            .into_inner()
            .target_size;
        if target < 10 {
            ca.node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
                delta: 10 - target,
                id: "burst".into(),
            }))
            .await
            .expect("increase");
        }
        let running = list
            .iter()
            .filter(|i| {
                i.status.as_ref().map(|s| s.instance_state)
                    == Some(InstanceState::InstanceRunning as i32)
            })
            .count();
        // A create journaled as sent that never reached the API may linger as Deleting (its name
        // is watched); nothing may still be creating.
        let creating = list
            .iter()
            .filter(|i| {
                i.status.as_ref().map(|s| s.instance_state)
                    == Some(InstanceState::InstanceCreating as i32)
            })
            .count();
        if running == 10 && creating == 0 && target == 10 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let logs: Vec<String> = second.lines.try_iter().collect();
            panic!(
                "no steady state: {list:#?}\nsimulator: {:#}\nprovider log:\n{}",
                sim.snapshot()["servers"],
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let servers = sim.snapshot()["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: std::collections::HashSet<&str> =
        servers.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(servers.len(), 10, "exactly the 10 asked for: {servers:#?}");
    assert_eq!(names.len(), 10, "no name bought twice");
    assert_eq!(
        sim.requests(Endpoint::CreateServer),
        10,
        "no create sent twice across the restart"
    );
    assert_eq!(
        sim.requests(Endpoint::Terminate),
        0,
        "nothing bought to be thrown away"
    );
}

/// A config for group `burst` (name prefix `crash`) against `sim`, written to `dir`.
fn write_config(dir: &Path, sim: &sim::SimHandle) -> std::path::PathBuf {
    let config = dir.join("cloud.ini");
    std::fs::write(
        &config,
        format!(
            "[global]\nkamatera-api-client-id = {}\nkamatera-api-secret = {}\nkamatera-api-url = {}\n\
             cluster-name = crash\ndefault-datacenter = EU\ndefault-image = ubuntu_server_24.04_64-bit\n\
             default-network = name=wan,ip=auto\n\n[nodegroup \"burst\"]\nname-prefix = crash\n\
             min-size = 0\nmax-size = 20\ncpu = 1A\nram = 1024\ndisk = size=20\n",
            sim::DEMO_CLIENT_ID,
            sim::DEMO_SECRET,
            sim.url()
        ),
    )
    .expect("config");
    config
}

fn entry(name: &str, phase: &str, create: &str, server_id: Option<&str>) -> serde_json::Value {
    serde_json::json!({"name": name, "group": "burst", "phase": phase, "create": create,
        "server_id": server_id, "seen": server_id.is_some(), "terminated": false,
        "command_id": null, "command_kind": null})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_journal_mutates_nothing_and_each_entry_is_dropped_with_a_reason() {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let seed = |name: &str, tags: &[&str]| {
        sim.seed_server(sim::SeedServer {
            name: name.into(),
            datacenter: "EU".into(),
            power_on: true,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            cpu: "1A".into(),
            ram_mb: 1024,
        })
    };
    // Someone else's servers: one without tags (named like ours), one of another group.
    let untagged = seed("crash-0000000000a", &[]);
    let other_group = seed("crash-0000000000b", &["k8sca-crash", "k8scang-other"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &sim);
    let state = dir.path().join("state.json");
    let journal = serde_json::json!({"version": 1, "cluster": "crash", "instances": [
        entry("crash-0000000000a", "deleting", "adopted", Some(&untagged)),
        entry("crash-0000000000b", "deleting", "adopted", Some(&other_group)),
        entry("crash-0000000000c", "deleting", "adopted", Some(&untagged)),
        entry(".*", "creating", "queued", None),
    ]});
    std::fs::write(&state, journal.to_string()).expect("journal");

    let serve = start(&config, &state);
    let mut ca = CloudProviderClient::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");
    for _ in 0..5 {
        let _ = ca.refresh(req(pb::RefreshRequest {})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for e in [
        Endpoint::CreateServer,
        Endpoint::PowerOn,
        Endpoint::PowerOff,
        Endpoint::Terminate,
    ] {
        assert_eq!(sim.requests(e), 0, "{e:?}: nothing mutated");
    }
    assert!(
        nodes(&mut ca).await.is_empty(),
        "nothing of the journal is the group's"
    );
    let logs: Vec<String> = serve
        .earlier
        .iter()
        .cloned()
        .chain(std::iter::once(serve.line.clone()))
        .chain(serve.lines.try_iter())
        .filter(|l| l.contains("dropped a state file entry"))
        .collect();
    let has = |what: &str| logs.iter().any(|l| l.contains(what));
    assert!(
        has("\".*\": not a server name the provider makes for node group burst"),
        "{logs:#?}"
    );
    assert!(
        has(&format!(
            "server {untagged} lacks the tags k8sca-crash k8scang-burst"
        )),
        "{logs:#?}"
    );
    assert!(
        has(&format!("server {other_group} lacks the tags")),
        "{logs:#?}"
    );
    assert!(
        has(&format!(
            "server {untagged} is listed as \"crash-0000000000a\", not as this entry"
        )),
        "{logs:#?}"
    );
    assert_eq!(logs.len(), 4, "{logs:#?}");
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_command_ids_never_hold_readiness_hostage() {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &sim);
    let state = dir.path().join("state.json");
    let instances: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            let mut e = entry(&format!("crash-{i:011x}"), "creating", "accepted", None);
            e["command_id"] = serde_json::json!(format!("not-a-command-{i}"));
            e["command_kind"] = serde_json::json!("create");
            e
        })
        .collect();
    std::fs::write(
        &state,
        serde_json::json!({"version": 1, "cluster": "crash", "instances": instances}).to_string(),
    )
    .expect("journal");
    let started = std::time::Instant::now();
    let serve = start(&config, &state);
    let mut ca = CloudProviderClient::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");
    ca.refresh(req(pb::RefreshRequest {}))
        .await
        .expect("ready: the first listing is done");
    eprintln!(
        "ready {} ms after start with 1,000 unreadable command ids",
        started.elapsed().as_millis()
    );
    assert_eq!(
        sim.requests(Endpoint::Queue),
        0,
        "an unreadable id is never polled, so never waited for"
    );
    let listed = nodes(&mut ca).await;
    assert_eq!(listed.len(), 1000);
    assert!(listed.iter().all(|i| {
        i.status
            .as_ref()
            .and_then(|s| s.error_info.as_ref())
            .is_some_and(|e| e.error_code == "JOURNAL_UNREADABLE")
    }));
}

/// Every API request the simulator counted.
fn api_calls(sim: &sim::SimHandle) -> u64 {
    sim.with_state(|s| s.requests.values().sum())
}

/// An in-process provider on `config` with `options` (reconciling only when asked).
fn provider_with(
    config: &Path,
    options: kamatera_ca_provider::provider::ProviderOptions,
) -> kamatera_ca_provider::provider::Provider {
    let cfg = kamatera_ca_provider::config::CloudConfig::load(config).expect("config");
    let client = common::test_client(
        &cfg,
        std::sync::Arc::new(kamatera_ca_provider::telemetry::Metrics::new()),
    );
    kamatera_ca_provider::provider::Provider::new(
        cfg,
        client,
        kamatera_ca_provider::provider::ProviderOptions {
            reconcile_interval: Duration::from_secs(3600),
            ..options
        },
    )
}

/// An in-process provider on `config` with the journal at `state`.
fn provider(config: &Path, state: &Path) -> kamatera_ca_provider::provider::Provider {
    provider_with(
        config,
        kamatera_ca_provider::provider::ProviderOptions {
            state_file: Some(state.to_path_buf()),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_restart_reads_no_tags_it_has_seen() {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    for i in 0..2000 {
        // The group's servers and other workloads of the account.
        let tags = if i % 2 == 0 {
            vec!["k8sca-crash".to_string(), "k8scang-burst".to_string()]
        } else {
            Vec::new()
        };
        sim.seed_server(sim::SeedServer {
            name: format!("crash-{i:011x}"),
            datacenter: "EU".into(),
            power_on: true,
            tags,
            cpu: "1A".into(),
            ram_mb: 1024,
        });
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &sim);
    let state = dir.path().join("state.json");

    // Cold: one listing and one tag read per server.
    let cold = provider(&config, &state);
    cold.restore().await;
    let before = api_calls(&sim);
    let r = cold.reconcile().await.expect("cold reconcile");
    let cold_calls = api_calls(&sim) - before;
    assert_eq!((r.listed, r.tag_reads), (2000, 2000));
    assert_eq!(cold_calls, 2001);
    cold.persist().await.expect("journal written");
    assert_eq!(cold.target_size("burst").expect("target"), 1000);
    drop(cold);

    // Warm: the journal's tag cache makes the first pass one listing.
    let warm = provider(&config, &state);
    warm.restore().await;
    let before = api_calls(&sim);
    let started = std::time::Instant::now();
    let r = warm.reconcile().await.expect("warm reconcile");
    let warm_calls = api_calls(&sim) - before;
    eprintln!(
        "warm restart at 2,000 servers: {warm_calls} Kamatera calls, ready in {} ms",
        started.elapsed().as_millis()
    );
    assert!(warm_calls <= 3, "{warm_calls} calls before ready");
    assert_eq!(r.tag_reads, 0);
    assert!(warm.ready());
    assert_eq!(
        warm.target_size("burst").expect("target"),
        1000,
        "the same servers are the group's"
    );
    let size = std::fs::metadata(&state).expect("journal").len();
    eprintln!("journal with 2,000 servers' tags: {size} bytes");
    assert!(size < 200 * 1024, "{size} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configmap_journal_retries_conflicts_and_holds_creates_while_unreachable() {
    use kamatera_ca_provider::provider::ProviderOptions;
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let fake = common::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &sim);
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let kube = kamatera_ca_provider::kube::Kube::from_kubeconfig_file(&fake.kubeconfig(dir.path()))
        .await
        .expect("kube")
        .with_retry(kamatera_ca_provider::kube::ConflictRetry {
            attempts: 3,
            delay: Duration::from_millis(10),
        });
    let new_provider = || {
        provider_with(
            &config,
            ProviderOptions {
                state_configmap: Some(kube.journal_map("kube-system", "crash-state")),
                ..ProviderOptions::default()
            },
        )
    };
    let journal = || fake.configmap_data("kube-system", "crash-state", "journal.json");

    let p = new_provider();
    assert_eq!(p.restore().await, Default::default(), "no ConfigMap yet");
    p.reconcile().await.expect("reconcile");
    p.increase_size("burst", 2).await.expect("increase");
    let first = journal().expect("created with the first write");
    assert_eq!(first.matches("\"group\":\"burst\"").count(), 2, "{first}");

    // Someone else wrote the ConfigMap meanwhile: read its version, write again.
    fake.configmap_conflict_next(1);
    p.increase_size("burst", 1).await.expect("increase");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while journal().is_none_or(|j| j.matches("\"group\":\"burst\"").count() != 3) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", journal());
        p.persist().await.ok();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while sim.requests(Endpoint::CreateServer) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "creates not sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The API server is unreachable: a create that cannot be journaled is not sent, and says so.
    fake.configmaps_down(true);
    p.increase_size("burst", 1)
        .await
        .expect("the intent is accepted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = p
            .nodes("burst")
            .expect("nodes")
            .into_iter()
            .filter(|i| {
                i.error
                    .as_ref()
                    .is_some_and(|e| e.code == "JOURNAL_UNAVAILABLE")
            })
            .count();
        if held == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no JOURNAL_UNAVAILABLE"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sim.requests(Endpoint::CreateServer),
        3,
        "nothing unjournaled was sent"
    );

    // A new pod while the API is still down: it cannot read the journal, so it sends nothing.
    let q = new_provider();
    assert!(q.restore().await.discarded.is_some());
    q.reconcile().await.expect("listing works");
    q.increase_size("burst", 1).await.expect("intent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.requests(Endpoint::CreateServer), 3);
    // Back: the next pass reads the journal; its creates on the wire are known again.
    fake.configmaps_down(false);
    q.reconcile().await.expect("reconcile");
    let names: Vec<String> = q
        .nodes("burst")
        .expect("nodes")
        .into_iter()
        .map(|i| i.id)
        .collect();
    for i in p
        .nodes("burst")
        .expect("nodes")
        .into_iter()
        .filter(|i| i.error.is_none())
    {
        assert!(names.contains(&i.id), "{} restored: {names:?}", i.id);
    }
}

/// A provider with the journal in `kube-system/crash-state` and leader election on
/// `kube-system/crash-lease` as `identity` (2 s leases, renewed every 200 ms).
async fn replica(
    config: &Path,
    kubeconfig: &Path,
    identity: &str,
) -> kamatera_ca_provider::provider::Provider {
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let kube = kamatera_ca_provider::kube::Kube::from_kubeconfig_file(kubeconfig)
        .await
        .expect("kube");
    provider_with(
        config,
        kamatera_ca_provider::provider::ProviderOptions {
            state_configmap: Some(kube.journal_map("kube-system", "crash-state")),
            leader_elect: Some(std::sync::Arc::new(kube.lease(
                "kube-system",
                "crash-lease",
                identity,
                Duration::from_secs(2),
            ))),
            lease_retry: Duration::from_millis(200),
            uncertain_create_grace: Duration::from_secs(1),
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_leader_election_one_replica_acts_and_the_other_takes_over_without_buying_twice() {
    let sim = std::sync::Arc::new(common::start_sim(Timing::fast(), Default::default()).await);
    // Creates are carried out at once but answered slowly: the holder dies waiting.
    sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            answer_delay_ms: 400,
            ..Default::default()
        },
    );
    let fake = common::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &sim);
    let kubeconfig = fake.kubeconfig(dir.path());

    // Replica "a" runs in a runtime of its own: dropping it ends every task of it at once, as
    // a killed pod would (its lease is not released).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (die_tx, die_rx) = tokio::sync::oneshot::channel::<()>();
    let a = {
        let (config, kubeconfig, sim, fake) = (
            config.clone(),
            kubeconfig.clone(),
            sim.clone(),
            fake.clone(),
        );
        common::in_own_runtime(move || async move {
            let a = replica(&config, &kubeconfig, "a").await;
            a.start_leader_election();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !a.is_leader() {
                assert!(tokio::time::Instant::now() < deadline, "a never led");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                fake.lease_holder("kube-system", "crash-lease").as_deref(),
                Some("a")
            );
            a.refresh().await.expect("refresh");
            a.increase_size("burst", 4).await.expect("increase");
            while sim.requests(Endpoint::CreateServer) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = ready_tx.send(());
            let _ = die_rx.await;
            // The runtime drops here: replica a is gone mid scale-up.
        })
    };

    tokio::task::spawn_blocking(move || ready_rx.recv())
        .await
        .expect("join")
        .expect("a scaled up");
    let b = replica(&config, &kubeconfig, "b").await;
    b.start_leader_election();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // While a holds the lease, b stands by: not ready, and refuses to act.
    assert!(!b.is_leader());
    assert!(b.readiness().is_err(), "a standing-by replica is not ready");
    let err = b.increase_size("burst", 1).await.expect_err("standing by");
    assert!(
        matches!(
            err,
            kamatera_ca_provider::provider::ProviderError::StandingBy
        ),
        "{err:?}"
    );

    let _ = die_tx.send(());
    tokio::task::spawn_blocking(move || a.join())
        .await
        .expect("join")
        .expect("replica a");
    let creates_before_takeover = sim.requests(Endpoint::CreateServer);

    // b takes over once a's lease expires, from the journal a left.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !b.is_leader() {
        assert!(tokio::time::Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        fake.lease_holder("kube-system", "crash-lease").as_deref(),
        Some("b")
    );
    sim.update_faults(|f| f.endpoints.clear());
    // The autoscaler goes on asking for 4.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        b.refresh().await.expect("refresh");
        let nodes = b.nodes("burst").expect("nodes");
        let failed: Vec<kamatera_ca_provider::provider::NodeRef> = nodes
            .iter()
            .filter(|i| i.error.is_some())
            .map(|i| kamatera_ca_provider::provider::NodeRef {
                provider_id: i.id.clone(),
                name: i.id.clone(),
                ..Default::default()
            })
            .collect();
        if !failed.is_empty() {
            b.delete_nodes("burst", &failed)
                .await
                .expect("delete failed");
        }
        let target = b.target_size("burst").expect("target");
        if target < 4 {
            b.increase_size("burst", 4 - target as i32)
                .await
                .expect("increase");
        }
        let running = nodes
            .iter()
            .filter(|i| i.phase == kamatera_ca_provider::provider::Phase::Running)
            .count();
        if running == 4 && target == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no steady state: {nodes:?}\n{:#}",
            sim.snapshot()["servers"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let servers = sim.snapshot()["servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(servers.len(), 4, "exactly the 4 asked for: {servers:#?}");
    eprintln!(
        "creates: {creates_before_takeover} by a before it died, {} in all",
        sim.requests(Endpoint::CreateServer)
    );
}
