//! Kubernetes access against a fake API server (an HTTP server in the test that serves and
//! records Node GET/PATCH): only the autoscaler's taints are removed, conflicts are retried within
//! a bound, providerIDs are set only where empty, and no access means no calls and no errors.

mod common;

use std::time::Duration;

use common::fake_kube::FakeKube;
use kamatera_ca_provider::kube::{self, ConflictRetry, Kube, ProviderIdSet, Released};

const TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
const CANDIDATE: &str = "DeletionCandidateOfClusterAutoscaler";

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

#[tokio::test]
async fn release_removes_only_the_autoscalers_taints() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.add_node(
        "w-1",
        &[
            ("dedicated", "NoSchedule"),
            (TO_BE_DELETED, "NoSchedule"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            (CANDIDATE, "PreferNoSchedule"),
        ],
        true,
        "kamatera://w-1",
    );
    let before = fake.node("w-1").expect("node");

    let r = k.release_node("w-1").await.expect("release");
    assert_eq!(
        r,
        Released::Updated {
            removed_taints: vec![TO_BE_DELETED.into(), CANDIDATE.into()],
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
    assert_eq!(after["spec"]["providerID"], "kamatera://w-1");
    assert_eq!(after["spec"]["taints"][0], before["spec"]["taints"][0]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);

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
    assert!(body["spec"].get("providerID").is_none(), "{body}");

    // Nothing left to remove: read, no write.
    assert_eq!(
        k.release_node("w-1").await.expect("again"),
        Released::Unchanged
    );
    assert_eq!(fake.calls().len(), 3);
}

#[tokio::test]
async fn release_retries_conflicts_then_gives_up_changing_nothing() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.add_node("w-2", &[(TO_BE_DELETED, "NoSchedule")], false, "");

    fake.conflict_next(2);
    let r = k.release_node("w-2").await.expect("third try wins");
    assert!(matches!(r, Released::Updated { .. }), "{r:?}");
    assert!(fake.taint_keys("w-2").is_empty());
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

    fake.add_node("w-3", &[(CANDIDATE, "PreferNoSchedule")], false, "");
    fake.conflict_next(5);
    let e = k.release_node("w-3").await.expect_err("bounded");
    assert_eq!(
        e.to_string(),
        "node w-3 kept changing under us (3 conflicting updates); giving up"
    );
    assert_eq!(fake.taint_keys("w-3"), [CANDIDATE], "unchanged");
}

#[tokio::test]
async fn missing_node_is_not_an_error() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    assert_eq!(
        k.release_node("never-joined").await.expect("ok"),
        Released::NotFound
    );
    assert_eq!(
        k.set_provider_id("never-joined", "kamatera://never-joined")
            .await
            .expect("ok"),
        ProviderIdSet::NotFound
    );
    assert!(
        fake.calls().iter().all(|c| c.starts_with("GET ")),
        "{:?}",
        fake.calls()
    );
}

#[tokio::test]
async fn provider_id_is_set_only_when_empty() {
    let fake = FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let k = client(&fake, &dir).await;
    fake.add_node("w-4", &[], false, "");
    fake.add_node("w-5", &[], false, "rke2://w-5");

    assert_eq!(
        k.set_provider_id("w-4", "kamatera://w-4")
            .await
            .expect("set"),
        ProviderIdSet::Set
    );
    assert_eq!(
        fake.node("w-4").expect("node")["spec"]["providerID"],
        "kamatera://w-4"
    );
    assert_eq!(
        k.set_provider_id("w-5", "kamatera://w-5")
            .await
            .expect("kept"),
        ProviderIdSet::AlreadySet("rke2://w-5".into())
    );
    assert_eq!(
        fake.node("w-5").expect("node")["spec"]["providerID"],
        "rke2://w-5"
    );
    let patches: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("PATCH"))
        .collect();
    assert_eq!(patches, ["PATCH /api/v1/nodes/w-4"]);
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
    let e = k.release_node("w").await.expect_err("unreachable");
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

    assert!(k.cordon("w-6", true).await.expect("cordon"));
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
    assert!(k.cordon("w-6", false).await.expect("uncordon"));
    assert!(!fake.unschedulable("w-6"));
    assert!(!k.cordon("missing", true).await.expect("no node"));
}
