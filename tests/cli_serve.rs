//! `serve --simulate`, the README's run command, as a user starts it: a child process that logs
//! where it listens and answers a real gRPC client.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_simulate_answers_the_autoscaler() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args([
            "serve",
            "--simulate",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve --simulate");
    let stderr = child.stderr.take().expect("stderr");
    let _guard = Killed(child);

    // The first log line a new user reads names both addresses.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line within 30 s");
        if line.contains("provider listening on") {
            break line;
        }
    };
    assert!(
        line.contains("simulated Kamatera at http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("general (1..5)") && line.contains("highmem (0..3)"),
        "{line}"
    );
    let addr = line
        .split("provider listening on ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .expect("address in the log line")
        .to_string();

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
