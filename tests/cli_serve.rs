//! `serve --simulate`, the README's run command, as a user starts it: a child process that logs
//! where it listens and answers a real gRPC client.

mod common;

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
