//! The Grafana dashboard's queries, evaluated by a real Prometheus (Debian's `prometheus`) that
//! scraped a provider through a scale-up (with its journal unwritable at first), a burst of API
//! errors and a scale-down against the simulator: every query of every panel must return data.
//! Ignored by a plain `cargo test` (it needs the prometheus binary); `.ci/run` installs it and
//! runs this test with `--ignored`.

use std::time::Duration;

use kamatera_ca_provider::proto::externalgrpc as pb;
use serde_json::Value;

use crate::common;

type Rpc = kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient<
    tonic::transport::Channel,
>;

/// A free loopback port (bound and released: Prometheus takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(dir: &std::path::Path, target: std::net::SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kamatera-ca-provider\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package) must be installed: .ci/run installs it");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Value {
    let encoded: String = expr
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let resp = http
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
        .expect("query");
    resp.json().await.expect("json")
}

/// The instances of `group`, after a Refresh.
async fn nodes(ca: &mut Rpc, group: &str) -> Vec<pb::Instance> {
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    ca.node_group_nodes(pb::NodeGroupNodesRequest { id: group.into() })
        .await
        .expect("nodes")
        .into_inner()
        .instances
}

fn as_nodes(instances: &[pb::Instance]) -> Vec<pb::ExternalGrpcNode> {
    instances
        .iter()
        .map(|i| pb::ExternalGrpcNode {
            provider_id: i.id.clone(),
            name: i.id.clone(),
            ..Default::default()
        })
        .collect()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs Debian's prometheus; .ci/run installs it and runs this with --ignored"]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The journal's place is a directory at first: creates are refused, then it heals.
    let state = dir.path().join("state.json");
    std::fs::create_dir(&state).expect("mkdir");
    let app =
        common::build_app(&["--simulate", "--state-file", state.to_str().expect("utf-8")]).await;
    let sim = app.simulator().expect("simulated").url();
    let (addr, admin) = (app.grpc_addr(), app.admin_addr());
    let _stop = common::run_app(app);
    let _prometheus_dir = tempfile::tempdir().expect("tempdir");
    let prometheus = start_prometheus(_prometheus_dir.path(), admin);
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let http = reqwest::Client::new();
    let mut ca = common::ca::Ca::connect(addr).await.rpc;

    // A scale-up that the unwritable journal holds back.
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: "highmem".into(),
    })
    .await
    .expect("increase");
    until("creates held by the journal", async || {
        nodes(&mut ca, "highmem")
            .await
            .iter()
            .filter(|i| {
                i.status
                    .as_ref()
                    .and_then(|s| s.error_info.as_ref())
                    .is_some_and(|e| e.error_code == "JOURNAL_UNAVAILABLE")
            })
            .count()
            == 2
    })
    .await;
    // Healed; the autoscaler cleans up and asks again.
    std::fs::remove_dir(&state).expect("rmdir");
    let errored = nodes(&mut ca, "highmem").await;
    ca.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
        nodes: as_nodes(&errored),
        id: "highmem".into(),
    })
    .await
    .expect("delete errored");
    // A burst of listing errors meanwhile.
    http.put(format!("{sim}/_sim/faults"))
        .body(r#"{"endpoints": {"list_servers": {"error_rate": 1.0}}}"#)
        .send()
        .await
        .expect("faults");
    let _ = ca.refresh(pb::RefreshRequest {}).await;
    http.put(format!("{sim}/_sim/faults"))
        .body("{}")
        .send()
        .await
        .expect("faults");
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: "highmem".into(),
    })
    .await
    .expect("increase");
    until("two servers running", async || {
        nodes(&mut ca, "highmem")
            .await
            .iter()
            .filter(|i| i.status.as_ref().map(|s| s.instance_state) == Some(1))
            .count()
            == 2
    })
    .await;
    // A scale-down of one.
    let running = nodes(&mut ca, "highmem").await;
    ca.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
        nodes: as_nodes(&running[..1]),
        id: "highmem".into(),
    })
    .await
    .expect("scale-down");
    until("one server left", async || {
        nodes(&mut ca, "highmem").await.len() == 1
    })
    .await;

    // Every query of every panel, once Prometheus has scraped all of it.
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana-dashboard.json"),
    )
    .expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("JSON");
    let queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    title.clone(),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    let mut empty = queries.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !empty.is_empty() {
        let mut still = Vec::new();
        for (title, expr) in empty {
            let answer = query(&http, &prometheus.url, &expr).await;
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            let data = answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            if !data {
                still.push((title, expr));
            }
        }
        empty = still;
        if !empty.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "queries without data: {empty:#?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
