//! `serve --simulate`, the README's run command, as a user starts it: a child process that logs
//! where it listens and answers a real gRPC client.

use crate::common;

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;

#[tokio::test]
async fn serve_simulate_answers_the_autoscaler() {
    // The first log line a new user reads names both addresses.
    let serve = common::spawn_serve(&["--simulate"]);
    let line = &serve.line;
    assert!(
        line.contains("simulated Kamatera at http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("general (1..5)") && line.contains("highmem (0..3)"),
        "{line}"
    );
    // No cluster is touched in a demo, and the log says so.
    assert!(
        serve
            .earlier
            .iter()
            .any(|l| l.contains("no Kubernetes access in a simulated run")),
        "{:?}",
        serve.earlier
    );
    let addr = serve.addr.clone();

    let mut ca = CloudProviderClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    let groups = ca
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .expect("node groups")
        .into_inner()
        .node_groups;
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, vec!["general", "highmem"]);
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "general".into(),
    })
    .await
    .expect("increase");
    let target = ca
        .node_group_target_size(pb::NodeGroupTargetSizeRequest {
            id: "general".into(),
        })
        .await
        .expect("target")
        .into_inner()
        .target_size;
    assert_eq!(target, 1);
}

fn parking_config(dir: &std::path::Path, api_url: &str) -> std::path::PathBuf {
    let path = dir.join("park.ini");
    std::fs::write(
        &path,
        format!(
            "[global]\nkamatera-api-client-id = {id}\nkamatera-api-secret = {secret}\n\
             kamatera-api-url = {api_url}\ncluster-name = cli\ndefault-datacenter = US-NY2\n\
             default-image = ubuntu_server_24.04_64-bit\ndefault-network = name=wan,ip=auto\n\
             default-script-base64 = IyEvYmluL3NoCnRydWUK\n\n[nodegroup \"warm\"]\n\
             max-size = 3\ncpu = 2B\nram = 2048\ndisk = size=20\npoweroff-on-scale-down = true\n",
            id = kamatera_ca_provider::sim::DEMO_CLIENT_ID,
            secret = kamatera_ca_provider::sim::DEMO_SECRET,
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn without_kubernetes_access_a_parking_group_is_warned_about_once() {
    let sim = common::start_sim(
        kamatera_ca_provider::sim::Timing::fast(),
        kamatera_ca_provider::sim::Quota::default(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = parking_config(dir.path(), &sim.url());
    let state = dir.path().join("state.json");
    // spawn_serve removes KUBECONFIG and KUBERNETES_SERVICE_HOST: no access from anywhere.
    let serve = common::spawn_serve(&[
        "--cloud-config",
        config.to_str().expect("utf-8"),
        "--state-file",
        state.to_str().expect("utf-8"),
    ]);
    let warnings: Vec<&String> = serve
        .earlier
        .iter()
        .filter(|l| l.contains("no Kubernetes access"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", serve.earlier);
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("parked servers' Nodes stay NotReady")
            && warnings[0].contains("warm"),
        "{}",
        warnings[0]
    );
    // And the autoscaler gets answers, not errors.
    let mut ca = CloudProviderClient::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_kubeconfig_is_used_or_refused_clearly() {
    let fake = common::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = fake.kubeconfig(dir.path());
    let serve = common::spawn_serve(&[
        "--simulate",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let line = serve
        .earlier
        .iter()
        .find(|l| l.contains("Kubernetes access"))
        .unwrap_or_else(|| panic!("{:?}", serve.earlier));
    assert!(
        line.contains(&format!("http://{}", fake.addr)) && line.contains("kubeconfig.yaml"),
        "{line}"
    );
    drop(serve);

    let out = common::serve_output(&["--simulate", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot load the kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
}
