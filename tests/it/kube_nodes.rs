//! Kubernetes access against a fake API server (an HTTP server in the test that serves, records
//! and enforces resourceVersion on Node GET/PATCH/DELETE): labels are only added, never changed;
//! a conflicting Node or one of another server is left alone; Nodes of gone servers are deleted
//! only when tied to the server and not Ready; conflicts are retried within a bound; no access
//! means no calls and no errors.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::fake_kube::FakeKube;
use kamatera_ca_provider::kube::{
    self, Completed, Completion, ConflictRetry, Kube, NodeDeletion, Tie,
};

async fn client(fake: &FakeKube, dir: &tempfile::TempDir) -> Kube {
    kamatera_ca_provider::kamatera::install_crypto_provider();
    Kube::from_kubeconfig_file(&fake.kubeconfig(dir.path()))
        .await
        .expect("kube client")
        .with_retry(ConflictRetry {
            attempts: 3,
            delay: Duration::from_millis(10),
        })
}

fn tie(server: &str) -> Tie {
    Tie {
        server: server.into(),
        provider_id: format!("kamatera://{server}"),
    }
}

fn wanted() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kamatera.com/node-group".to_string(), "workers".to_string()),
        (
            "node.kubernetes.io/instance-type".to_string(),
            "2B-4096".to_string(),
        ),
        (
            "topology.kubernetes.io/region".to_string(),
            "EU".to_string(),
        ),
        ("team".to_string(), "data".to_string()),
    ])
}

#[tokio::test]
async fn completing_a_node_adds_only_what_is_missing_in_one_conditional_patch() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    // What a join script registers: the group label, no providerID.
    fake.register("w-1", "", &[("kamatera.com/node-group", "workers")]);
    let before = fake.node("w-1").expect("node");

    let r = k
        .complete_node("w-1", &tie("w-1"), &wanted())
        .await
        .expect("complete");
    assert_eq!(
        r,
        Completed::Added {
            labels: vec![
                "node.kubernetes.io/instance-type".into(),
                "team".into(),
                "topology.kubernetes.io/region".into()
            ],
            provider_id: true
        }
    );
    let labels = fake.labels("w-1");
    for (k, v) in wanted() {
        assert_eq!(labels.get(&k), Some(&v), "{k}");
    }
    assert_eq!(
        labels["kubernetes.io/hostname"], "w-1",
        "existing labels kept"
    );
    let after = fake.node("w-1").expect("node");
    assert_eq!(after["spec"]["providerID"], "kamatera://w-1");

    assert_eq!(
        fake.calls(),
        ["GET /api/v1/nodes/w-1", "PATCH /api/v1/nodes/w-1"]
    );
    let patch = &fake.requests()[1];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    let body = patch.body.clone().expect("json body");
    assert_eq!(
        body["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the write is conditional on the version read"
    );
    assert!(
        body["metadata"]["labels"]
            .get("kamatera.com/node-group")
            .is_none(),
        "a label the node has is not written again: {body}"
    );

    // Nothing left to add: read, no write.
    assert_eq!(
        k.complete_node("w-1", &tie("w-1"), &wanted())
            .await
            .expect("again"),
        Completed::Unchanged(Completion::Complete)
    );
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn a_conflicting_or_foreign_node_is_left_alone() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.register("w-2", "kamatera://w-2", &[("team", "web")]);
    fake.register("w-3", "rke2://w-3", &[]);
    fake.register("w-4", "kamatera://other", &[]);
    let before: Vec<_> = ["w-2", "w-3", "w-4"]
        .iter()
        .map(|n| fake.node(n).expect("node"))
        .collect();

    assert_eq!(
        k.complete_node("w-2", &tie("w-2"), &wanted())
            .await
            .expect("conflict"),
        Completed::Unchanged(Completion::Conflict {
            key: "team".into(),
            have: "web".into(),
            want: "data".into()
        })
    );
    for n in ["w-3", "w-4"] {
        let r = k
            .complete_node(n, &tie(n), &wanted())
            .await
            .expect("not tied");
        assert!(
            matches!(&r, Completed::Unchanged(Completion::NotTied(why)) if why.contains("providerID")),
            "{r:?}"
        );
    }
    let after: Vec<_> = ["w-2", "w-3", "w-4"]
        .iter()
        .map(|n| fake.node(n).expect("node"))
        .collect();
    assert_eq!(before, after, "nothing changed");
    assert!(
        fake.calls().iter().all(|c| c.starts_with("GET ")),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn writes_retry_conflicts_then_give_up_changing_nothing() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.add_node("w-2", &[], false, "kamatera://w-2");

    fake.conflict_next(2);
    let r = k
        .complete_node("w-2", &tie("w-2"), &wanted())
        .await
        .expect("third try wins");
    assert!(matches!(r, Completed::Added { .. }), "{r:?}");
    assert_eq!(fake.labels("w-2")["team"], "data");
    assert_eq!(
        fake.calls(),
        [
            "GET /api/v1/nodes/w-2",
            "PATCH /api/v1/nodes/w-2",
            "GET /api/v1/nodes/w-2",
            "PATCH /api/v1/nodes/w-2",
            "GET /api/v1/nodes/w-2",
            "PATCH /api/v1/nodes/w-2"
        ]
    );

    fake.add_node("w-3", &[], false, "kamatera://w-3");
    let before = fake.labels("w-3");
    fake.conflict_next(5);
    let e = k
        .complete_node("w-3", &tie("w-3"), &wanted())
        .await
        .expect_err("bounded");
    assert_eq!(
        e.to_string(),
        "node w-3 kept changing under us (3 conflicting updates); giving up"
    );
    assert_eq!(fake.labels("w-3"), before, "unchanged");
}

#[tokio::test]
async fn a_gone_servers_node_is_deleted_only_when_tied_and_not_ready() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.register("gone-1", "kamatera://gone-1", &[]);
    fake.add_node("other", &[], false, "kamatera://somebody-else");
    fake.add_node("rke", &[], false, "rke2://rke");

    // Its kubelet still reports Ready: kept.
    assert_eq!(
        k.delete_gone_node("gone-1", &tie("gone-1"))
            .await
            .expect("ready"),
        NodeDeletion::StillReady
    );
    assert!(fake.node("gone-1").is_some());
    // Quiet now: deleted, with the uid and version read as preconditions.
    fake.set_ready("gone-1", false);
    let read = fake.node("gone-1").expect("node");
    assert_eq!(
        k.delete_gone_node("gone-1", &tie("gone-1"))
            .await
            .expect("delete"),
        NodeDeletion::Deleted
    );
    assert!(fake.node("gone-1").is_none());
    let delete = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("a delete");
    let body = delete.body.expect("delete options");
    assert_eq!(body["preconditions"]["uid"], read["metadata"]["uid"]);
    assert_eq!(
        body["preconditions"]["resourceVersion"],
        read["metadata"]["resourceVersion"]
    );
    assert_eq!(
        k.delete_gone_node("gone-1", &tie("gone-1"))
            .await
            .expect("again"),
        NodeDeletion::NotFound
    );

    // Named like the server but another's: never deleted.
    for (node, server) in [("other", "other"), ("rke", "rke")] {
        let r = k
            .delete_gone_node(node, &tie(server))
            .await
            .expect("not tied");
        assert!(matches!(r, NodeDeletion::NotTied(_)), "{r:?}");
    }
    assert_eq!(fake.node_names(), ["other", "rke"]);
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("DELETE"))
            .count(),
        1
    );
}

#[tokio::test]
async fn release_removes_only_the_autoscalers_taints_of_the_servers_node() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    let taints = [
        ("dedicated", "NoSchedule"),
        ("ToBeDeletedByClusterAutoscaler", "NoSchedule"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule"),
    ];
    fake.add_node("w-1", &taints, true, "kamatera://w-1");
    fake.add_node("x-1", &taints, true, "kamatera://somebody-else");
    let before = fake.node("w-1").expect("node");

    let r = k.release_node("w-1", &tie("w-1")).await.expect("release");
    assert_eq!(
        r,
        kube::Released::Updated {
            removed_taints: vec![
                "ToBeDeletedByClusterAutoscaler".into(),
                "DeletionCandidateOfClusterAutoscaler".into()
            ],
            was_unschedulable: true
        }
    );
    assert_eq!(
        fake.taint_keys("w-1"),
        ["dedicated", "node.kubernetes.io/unreachable"],
        "other taints kept, in order"
    );
    let after = fake.node("w-1").expect("node");
    assert!(after["spec"].get("unschedulable").is_none());
    assert_eq!(after["spec"]["taints"][0], before["spec"]["taints"][0]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    assert_eq!(
        k.release_node("w-1", &tie("w-1")).await.expect("again"),
        kube::Released::Unchanged
    );

    // Another server's Node named like ours: untouched.
    let other = fake.node("x-1").expect("node");
    let r = k.release_node("x-1", &tie("x-1")).await.expect("not tied");
    assert!(matches!(r, kube::Released::NotTied(_)), "{r:?}");
    assert_eq!(fake.node("x-1"), Some(other));
    assert_eq!(
        fake.calls()
            .iter()
            .filter(|c| c.starts_with("PATCH"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_journal_write_retries_a_conflict_only_while_it_is_still_the_writer() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    let map = k.journal_map("kube-system", "j");
    let data = || fake.configmap_data("kube-system", "j", "journal.json");
    let rv = map.write("one", None, &|| true).await.expect("created");
    // Someone else wrote it meanwhile: while still the writer, read the version and write.
    fake.configmap_conflict_next(1);
    let rv2 = map.write("two", Some(rv), &|| true).await.expect("retried");
    assert_eq!(data().as_deref(), Some("two"));
    // A replica that lost its lease meanwhile gives up instead of writing over the new one.
    fake.configmap_conflict_next(1);
    let e = map
        .write("stale", Some(rv2), &|| false)
        .await
        .expect_err("no longer the writer");
    assert!(e.to_string().contains("the lease was lost"), "{e}");
    assert_eq!(data().as_deref(), Some("two"), "nothing overwritten");
}

#[tokio::test]
async fn missing_node_is_not_an_error() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    assert_eq!(
        k.complete_node("never-joined", &tie("never-joined"), &wanted())
            .await
            .expect("ok"),
        Completed::NotFound
    );
    assert_eq!(
        k.delete_gone_node("never-joined", &tie("never-joined"))
            .await
            .expect("ok"),
        NodeDeletion::NotFound
    );
    assert!(
        fake.calls().iter().all(|c| c.starts_with("GET ")),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An API server that is not there at all.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let path = dir.path().join("kubeconfig.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .expect("write");
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let k = Kube::from_kubeconfig_file(&path).await.expect("client");
    let e = k
        .complete_node("w", &tie("w"), &wanted())
        .await
        .expect_err("unreachable");
    assert!(
        e.to_string()
            .starts_with("Kubernetes API request for node w failed"),
        "{e}"
    );
}

#[tokio::test]
async fn no_kubeconfig_means_no_access() {
    // Environment lookups off (as in a simulated run) and no flag: no client, no error.
    assert!(
        kube::connect(None, false)
            .await
            .expect("not an error")
            .is_none()
    );
    // A named kubeconfig that cannot be read is an error that names it.
    let e = kube::connect(Some(std::path::Path::new("/nonexistent/kubeconfig")), true)
        .await
        .expect_err("unreadable");
    assert!(
        e.to_string()
            .starts_with("cannot load the kubeconfig /nonexistent/kubeconfig"),
        "{e}"
    );
}

#[tokio::test]
async fn drain_primitives_cordon_list_evict_delete() {
    use common::fake_kube::FakePod;
    use kamatera_ca_provider::kube::Eviction;
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.add_node("w-6", &[], false, "");
    let pod = |name: &str, owner: Option<&str>, blocked: bool| FakePod {
        namespace: "apps".into(),
        name: name.into(),
        node: "w-6".into(),
        owner: owner.map(str::to_string),
        blocked,
    };
    fake.add_pod(pod("web", Some("ReplicaSet"), false));
    fake.add_pod(pod("db", None, true));
    fake.add_pod(pod("agent", Some("DaemonSet"), false));
    fake.add_pod(FakePod {
        node: "elsewhere".into(),
        ..pod("other", None, false)
    });

    fake.add_node("w-7", &[], false, "kamatera://somebody-else");
    assert_eq!(
        k.cordon(&tie("w-6"), true).await.expect("cordon"),
        kube::Cordoned::Done
    );
    assert!(
        matches!(
            k.cordon(&tie("w-7"), true).await.expect("not tied"),
            kube::Cordoned::NotTied(_)
        ),
        "another server's Node is not cordoned"
    );
    assert!(!fake.unschedulable("w-7"));
    assert!(fake.unschedulable("w-6"));
    let pods = k.pods_to_evict("w-6").await.expect("list");
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["web", "db"],
        "DaemonSet pods and other nodes' pods are not drained"
    );
    assert_eq!(k.evict(&pods[0]).await.expect("evict"), Eviction::Evicted);
    assert!(matches!(
        k.evict(&pods[1]).await.expect("blocked"),
        Eviction::Blocked(_)
    ));
    assert_eq!(k.evict(&pods[0]).await.expect("again"), Eviction::Gone);
    k.delete_pod(&pods[1]).await.expect("delete");
    assert_eq!(fake.pods(), ["apps/agent", "apps/other"]);
    assert_eq!(
        k.cordon(&tie("w-6"), false).await.expect("uncordon"),
        kube::Cordoned::Done
    );
    assert!(!fake.unschedulable("w-6"));
    assert_eq!(
        k.cordon(&tie("missing"), true).await.expect("no node"),
        kube::Cordoned::NotFound
    );
}

/// The provider as Kamatera's node controller: a simulated account, a fake cluster, the
/// provider with Kubernetes access and its Node watcher running, served over loopback.
mod controller {
    use super::*;
    use crate::common::ca::Ca;
    use kamatera_ca_provider::grpc::ServeOptions;
    use kamatera_ca_provider::proto::externalgrpc as pb;
    use kamatera_ca_provider::provider::{Provider, ProviderOptions};
    use kamatera_ca_provider::sim::{Quota, SimHandle, Timing};
    use kamatera_ca_provider::telemetry::Metrics;
    use prost::Message;
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(20);

    pub struct World {
        pub sim: SimHandle,
        pub fake: FakeKube,
        pub ca: Ca,
        pub provider: Provider,
        pub metrics: Arc<Metrics>,
        _dir: tempfile::TempDir,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    /// The node group `workers` of cluster `nc` at the simulator `api`.
    fn config(api: &str) -> kamatera_ca_provider::config::CloudConfig {
        common::TestConfig::new(api, "nc", "nc-", "EU")
            .group(
                "workers",
                "name-prefix = nc-w
max-size = 8
cpu = 2B
ram = 4096
disk = size=20
template-label = team=data",
            )
            .parse()
    }

    pub async fn world() -> World {
        world_with(ProviderOptions::default().vanish).await
    }

    /// [`world`] with its own vanish rule.
    pub async fn world_with(vanish: kamatera_ca_provider::provider::VanishRule) -> World {
        let sim = common::start_sim(Timing::fast(), Quota::default()).await;
        let fake = FakeKube::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(&sim.url());
        let metrics = Arc::new(Metrics::new());
        let provider = Provider::new(
            cfg.clone(),
            common::test_client(&cfg, metrics.clone()),
            ProviderOptions {
                reconcile_interval: Duration::from_secs(3600),
                kube: Some(client(&fake, &dir).await),
                vanish,
                ..ProviderOptions::default()
            },
        );
        assert!(provider.start_node_controller().is_some());
        let (addr, stop) = common::serve(provider.clone(), ServeOptions::default()).await;
        let mut ca = Ca::connect(addr).await;
        ca.refresh().await;
        World {
            sim,
            fake,
            ca,
            provider,
            metrics,
            _dir: dir,
            _stop: stop,
        }
    }

    impl World {
        /// Asks for `n` servers; their names (the instances exist at once, Creating).
        pub async fn buy(&mut self, n: i32) -> Vec<String> {
            let before: Vec<String> = self.names().await;
            self.ca.increase("workers", n).await.expect("increase");
            self.names()
                .await
                .into_iter()
                .filter(|n| !before.contains(n))
                .collect()
        }

        async fn names(&mut self) -> Vec<String> {
            self.ca
                .nodes("workers")
                .await
                .iter()
                .map(|i| i.id.trim_start_matches("kamatera://").to_string())
                .collect()
        }

        /// What the shipped join script registers: the providerID and the group label.
        pub fn join(&self, name: &str) {
            self.fake.register(
                name,
                &format!("kamatera://{name}"),
                &[("kamatera.com/node-group", "workers")],
            );
        }

        pub fn metric(&self, series: &str) -> f64 {
            self.metrics
                .encode()
                .lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(0.0)
        }
    }

    /// The labels the template promises with Kubernetes access, beyond the kubelet's.
    pub fn promised() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kamatera.com/node-group".into(), "workers".into()),
            ("node.kubernetes.io/instance-type".into(), "2B-4096".into()),
            ("topology.kubernetes.io/region".into(), "EU".into()),
            ("team".into(), "data".into()),
        ])
    }

    pub fn has_promised(fake: &FakeKube, node: &str) -> bool {
        let labels = fake.labels(node);
        promised().iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    pub async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_joined_node_gets_the_missing_template_labels_within_moments() {
        let mut w = world().await;
        let name = w.buy(1).await.remove(0);
        let joined = std::time::Instant::now();
        w.join(&name);
        until("labelled", || has_promised(&w.fake, &name)).await;
        let took = joined.elapsed();
        eprintln!("labelled {} ms after registration", took.as_millis());
        assert_eq!(
            w.fake.labels(&name)["kubernetes.io/os"],
            "linux",
            "kubelet's kept"
        );
        // Counted once the write's answer is back (the fake shows the labels a moment before).
        let updated = "kamatera_ca_kube_node_updates_total{kind=\"label\",result=\"updated\"}";
        until("counted", || w.metric(updated) == 1.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(w.metric(updated), 1.0, "one write");

        // With Kubernetes access the template promises exactly these, plus the kubelet's.
        let resp =
            w.ca.rpc
                .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest {
                    id: "workers".into(),
                })
                .await
                .expect("template")
                .into_inner();
        let node = kamatera_ca_provider::proto::k8s::Node::decode(resp.node_bytes.as_slice())
            .expect("node");
        let labels: BTreeMap<String, String> = node
            .metadata
            .expect("metadata")
            .labels
            .into_iter()
            .filter(|(k, _)| !k.starts_with("kubernetes.io/"))
            .collect();
        assert_eq!(labels, promised());
    }

    #[tokio::test]
    async fn a_conflicting_node_is_counted_once_and_left_alone() {
        let mut w = world().await;
        let name = w.buy(1).await.remove(0);
        w.fake.register(
            &name,
            &format!("kamatera://{name}"),
            &[("team", "web"), ("kamatera.com/node-group", "workers")],
        );
        let conflicts = "kamatera_ca_kube_node_updates_total{kind=\"label\",result=\"conflict\"}";
        until("conflict seen", || w.metric(conflicts) == 1.0).await;
        let before = w.fake.node(&name);
        for _ in 0..3 {
            w.ca.refresh().await; // every reconcile looks at every node again
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(w.fake.node(&name), before, "left alone");
        assert_eq!(w.metric(conflicts), 1.0, "counted once");
        assert!(!w.fake.calls().iter().any(|c| c.starts_with("PATCH")));
    }

    #[tokio::test]
    async fn nodes_of_other_clusters_and_schemes_are_never_touched() {
        let mut w = world().await;
        let ours = w.buy(1).await.remove(0);
        // Another cluster's Kamatera server, a node of another scheme named like our server,
        // and a node with no providerID whose name is no server of ours.
        w.fake.register("nc-other-1", "kamatera://nc-other-1", &[]);
        w.fake
            .add_node(&ours, &[], false, &format!("rke2://{ours}"));
        w.fake.register("stranger", "", &[]);
        let before: Vec<_> = w.fake.node_names().iter().map(|n| w.fake.node(n)).collect();
        for _ in 0..3 {
            w.ca.refresh().await;
        }
        // And one of ours, to know the controller was looking all along.
        let second = w.buy(1).await.remove(0);
        w.join(&second);
        until("our node labelled", || has_promised(&w.fake, &second)).await;
        for (n, b) in ["nc-other-1", ours.as_str(), "stranger"]
            .iter()
            .zip(&before)
        {
            assert_eq!(&w.fake.node(n), b, "{n} untouched");
        }
        let patched: Vec<String> = w
            .fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("PATCH"))
            .collect();
        assert_eq!(patched, [format!("PATCH /api/v1/nodes/{second}")]);
    }

    #[tokio::test]
    async fn a_watch_that_drops_or_expires_misses_no_node() {
        let mut w = world().await;
        let names = w.buy(3).await;
        w.join(&names[0]);
        until("first labelled", || has_promised(&w.fake, &names[0])).await;

        // The watch ends (API server restart); a node registers before it resumes.
        w.fake.drop_watches();
        w.join(&names[1]);
        until("registered during a dropped watch: labelled", || {
            has_promised(&w.fake, &names[1])
        })
        .await;

        // The history expires: resuming answers 410, the watcher lists again.
        w.fake.expire_history();
        w.join(&names[2]);
        until("registered while the history expired: labelled", || {
            has_promised(&w.fake, &names[2])
        })
        .await;
        let watches = w
            .fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/nodes")
            .count();
        assert!(
            watches >= 4,
            "listed, watched, resumed, listed again: {watches}"
        );
        let _ = &w.provider;
    }

    #[tokio::test]
    async fn nodes_left_by_parked_servers_of_an_earlier_run_are_deleted() {
        let mut w = world().await;
        // Parked before this provider started (by an earlier version, or the in-tree provider
        // whose Nodes stayed NotReady), and a powered-off server of another cluster.
        let seed = |name: &str, tags: &[&str]| {
            w.sim.seed_server(kamatera_ca_provider::sim::SeedServer {
                name: name.into(),
                datacenter: "EU".into(),
                power_on: false,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                cpu: "2B".into(),
                ram_mb: 4096,
            })
        };
        seed("nc-w-parked", &["k8sca-nc", "k8scang-workers"]);
        seed("nc-w-foreign", &["k8sca-other", "k8scang-workers"]);
        for n in ["nc-w-parked", "nc-w-foreign"] {
            w.fake.add_node(n, &[], false, &format!("kamatera://{n}"));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while w.fake.node("nc-w-parked").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ghost Node is still there"
            );
            w.ca.refresh().await; // each reconcile looks for Nodes of parked servers
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(w.fake.node_names(), ["nc-w-foreign"]);
    }

    /// A provider on `state` (the same simulated account and cluster as `w`), serving on its own.
    async fn restarted(
        w: &World,
        state: &std::path::Path,
        dir: &tempfile::TempDir,
    ) -> (Provider, Ca, tokio::sync::oneshot::Sender<()>) {
        let cfg = config(&w.sim.url());
        let provider = Provider::new(
            cfg.clone(),
            common::test_client(&cfg, Arc::new(Metrics::new())),
            ProviderOptions {
                reconcile_interval: Duration::from_secs(3600),
                kube: Some(client(&w.fake, dir).await),
                state_file: Some(state.to_path_buf()),
                ..ProviderOptions::default()
            },
        );
        // As `serve` does: the journal first.
        provider.restore().await;
        assert!(provider.start_node_controller().is_some());
        let (addr, stop) = common::serve(provider.clone(), ServeOptions::default()).await;
        let mut ca = Ca::connect(addr).await;
        ca.refresh().await;
        (provider, ca, stop)
    }

    /// A terminated server whose Node still reports Ready when the provider stops: the queue of
    /// Nodes to delete is journaled, and the restarted provider deletes the Node once it is no
    /// longer Ready.
    #[tokio::test]
    async fn the_queue_of_nodes_to_delete_survives_a_restart() {
        let w = world().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        let (first, mut ca, stop) = restarted(&w, &state, &dir).await;
        ca.increase("workers", 1).await.expect("increase");
        let name = loop {
            ca.refresh().await;
            let nodes = ca.nodes("workers").await;
            if let Some(i) = nodes
                .iter()
                .find(|i| i.status.as_ref().map(|s| s.instance_state) == Some(1))
            {
                break i.id.trim_start_matches("kamatera://").to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        w.join(&name);
        w.fake.set_ready(&name, true);
        ca.delete(
            "workers",
            vec![pb::ExternalGrpcNode {
                provider_id: format!("kamatera://{name}"),
                name: name.clone(),
                ..Default::default()
            }],
        )
        .await
        .expect("scale-down");
        // Until the server is gone and the journal holds its Node in the queue (still Ready).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            ca.refresh().await;
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            if ca.nodes("workers").await.is_empty()
                && text.contains(&format!("\"server\":\"{name}\""))
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not queued: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(w.fake.node(&name).is_some(), "a Ready Node is kept");
        // The provider stops; its successor restores the queue.
        drop(stop);
        drop(ca);
        drop(first);
        let (_second, mut ca, _stop) = restarted(&w, &state, &dir).await;
        w.fake.set_ready(&name, false);
        let deadline = tokio::time::Instant::now() + WAIT;
        while w.fake.node(&name).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the terminated server's Node was left behind after the restart"
            );
            ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A journal that claims a server was terminated while a server of that name is still
    /// listed: its Node is kept, even when not Ready.
    #[tokio::test]
    async fn a_queued_node_of_a_server_still_listed_is_kept() {
        let w = world().await;
        w.sim.seed_server(kamatera_ca_provider::sim::SeedServer {
            name: "nc-w-claimed".into(),
            datacenter: "EU".into(),
            power_on: true,
            tags: vec!["k8sca-other".into(), "k8scang-workers".into()],
            cpu: "2B".into(),
            ram_mb: 4096,
        });
        w.fake
            .add_node("nc-w-claimed", &[], false, "kamatera://nc-w-claimed");
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state.json");
        std::fs::write(
            &state,
            r#"{"version": 1, "cluster": "nc", "instances": [],
                "nodes": [{"server": "nc-w-claimed", "why": "terminated"}]}"#,
        )
        .expect("journal");
        let (_p, mut ca, _stop) = restarted(&w, &state, &dir).await;
        for _ in 0..10 {
            ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            w.fake.node("nc-w-claimed").is_some(),
            "the Node of a listed server was deleted on a journal's word"
        );
    }

    /// Nodes an earlier run's scale-downs left "being deleted" (the autoscaler's taint, NotReady)
    /// whose servers this run never knew: deleted once the vanish rule makes them due and the
    /// exact name matches no server; never a Ready one, one without the taint, one whose server
    /// exists (listed, or omitted from the listing but found by name), or one of another name
    /// pattern.
    #[tokio::test]
    async fn nodes_left_being_deleted_by_an_earlier_run_are_cleaned_up_once_their_servers_are_gone()
    {
        let mut w = world_with(kamatera_ca_provider::provider::VanishRule {
            misses: 3,
            after: Duration::ZERO,
        })
        .await;
        let taint = [("ToBeDeletedByClusterAutoscaler", "NoSchedule")];
        let seed = |name: &str| {
            w.sim.seed_server(kamatera_ca_provider::sim::SeedServer {
                name: name.into(),
                datacenter: "EU".into(),
                power_on: true,
                tags: vec!["k8sca-other".into(), "k8scang-x".into()],
                cpu: "2B".into(),
                ram_mb: 4096,
            })
        };
        // Gone for good: cleaned up.
        w.fake.add_node(
            "nc-w-00000000aa1",
            &taint,
            true,
            "kamatera://nc-w-00000000aa1",
        );
        // Its kubelet still reports Ready: kept.
        w.fake.add_node(
            "nc-w-00000000aa2",
            &taint,
            true,
            "kamatera://nc-w-00000000aa2",
        );
        w.fake.set_ready("nc-w-00000000aa2", true);
        // Not being deleted by the autoscaler: kept.
        w.fake.add_node(
            "nc-w-00000000aa3",
            &[],
            false,
            "kamatera://nc-w-00000000aa3",
        );
        // Its server exists (another cluster's, so not tracked): kept.
        seed("nc-w-00000000aa4");
        w.fake.add_node(
            "nc-w-00000000aa4",
            &taint,
            true,
            "kamatera://nc-w-00000000aa4",
        );
        // Its server exists but the listing omits it: the name lookup finds it; kept.
        seed("nc-w-00000000aa5");
        w.sim
            .update_faults(|f| f.listing_hides = vec!["nc-w-00000000aa5".into()]);
        w.fake.add_node(
            "nc-w-00000000aa5",
            &taint,
            true,
            "kamatera://nc-w-00000000aa5",
        );
        // Not a name this provider makes: kept.
        w.fake.add_node("web-1", &taint, true, "kamatera://web-1");

        // Two listings are not enough.
        w.ca.refresh().await;
        w.ca.refresh().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            w.fake.node("nc-w-00000000aa1").is_some(),
            "deleted too early"
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while w.fake.node("nc-w-00000000aa1").is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stale Node is still there"
            );
            w.ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            w.fake
                .event_reasons("nc-w-00000000aa1")
                .contains(&"ServerGone".to_string()),
            "{:?}",
            w.fake.events()
        );
        for _ in 0..5 {
            w.ca.refresh().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut left = w.fake.node_names();
        left.sort();
        assert_eq!(
            left,
            [
                "nc-w-00000000aa2",
                "nc-w-00000000aa3",
                "nc-w-00000000aa4",
                "nc-w-00000000aa5",
                "web-1"
            ]
        );
        assert!(w.metric("kamatera_ca_server_lookups_total{result=\"exists\"}") >= 1.0);
    }
}
