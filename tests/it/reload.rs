//! Config reload, as `serve` runs it: the cloud config file changes under a running provider
//! (checked every second here) and is swapped in between reconciles, or refused whole.

use std::time::Duration;

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::sim::{self, Endpoint, SimHandle, Timing};

use crate::common;

type Rpc = kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient<
    tonic::transport::Channel,
>;

const WEB: &str = "name-prefix = r-web\nmin-size = 0\ncpu = 1B\nram = 1024\ndisk = size=20";

fn config(api: &str, cluster: &str, web_max: u32, batch: bool) -> String {
    let mut c = common::TestConfig::new(api, cluster, "r-", "EU")
        .group("web", &format!("{WEB}\nmax-size = {web_max}"));
    if batch {
        c = c.group(
            "batch",
            "name-prefix = r-batch\nmin-size = 0\nmax-size = 4\ncpu = 2B\nram = 2048\ndisk = size=20",
        );
    }
    c.text()
}

struct Env {
    sim: SimHandle,
    path: std::path::PathBuf,
    admin: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    ca: Rpc,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn env(text: impl Fn(&str) -> String) -> Env {
    env_with(text, None).await
}

/// [`env`], with Kubernetes access through `kube` (a fake cluster's kubeconfig) when given.
async fn env_with(text: impl Fn(&str) -> String, kubeconfig: Option<&std::path::Path>) -> Env {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cloud.ini");
    std::fs::write(&path, text(&sim.url())).expect("write");
    let mut flags = vec![
        "--cloud-config",
        path.to_str().expect("utf-8"),
        "--config-reload-seconds",
        "1",
    ];
    if let Some(k) = kubeconfig {
        flags.extend(["--kubeconfig", k.to_str().expect("utf-8")]);
    }
    let app = common::build_app(&flags).await;
    let (addr, admin) = (app.grpc_addr(), app.admin_addr());
    let stop = common::run_app(app);
    let mut ca = common::ca::Ca::connect(addr).await.rpc;
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    Env {
        sim,
        path,
        admin,
        grpc: addr,
        ca,
        _dir: dir,
        _stop: stop,
    }
}

impl Env {
    /// `kamatera-ca-provider client status` against this provider: exit code, stdout, stderr.
    async fn client_status(&self, extra: &[&str]) -> (Option<i32>, String, String) {
        let mut args = vec![
            "client".to_string(),
            "--address".into(),
            self.grpc.to_string(),
            "status".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
                .args(&args)
                .output()
                .expect("client")
        })
        .await
        .expect("join");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    async fn get(&self, path: &str) -> (u16, String) {
        kamatera_ca_provider::kamatera::install_crypto_provider();
        let r = reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .expect("get");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    async fn reloads(&self, result: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        let series = format!("kamatera_ca_config_reloads_total{{result=\"{result}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Writes the file and waits until the watcher applied or refused it.
    async fn rewrite(&self, text: &str, result: &str) {
        let before = self.reloads(result).await;
        std::fs::write(&self.path, text).expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.reloads(result).await <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change was not {result}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn groups(&mut self) -> Vec<(String, i32)> {
        self.ca
            .node_groups(pb::NodeGroupsRequest {})
            .await
            .expect("groups")
            .into_inner()
            .node_groups
            .into_iter()
            .map(|g| (g.id, g.max_size))
            .collect()
    }

    async fn increase(&mut self, group: &str, delta: i32) -> Result<(), tonic::Status> {
        self.ca
            .node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
                delta,
                id: group.into(),
            })
            .await
            .map(|_| ())
    }

    async fn running(&mut self, group: &str) -> usize {
        self.ca
            .refresh(pb::RefreshRequest {})
            .await
            .expect("refresh");
        self.ca
            .node_group_nodes(pb::NodeGroupNodesRequest { id: group.into() })
            .await
            .map(|r| r.into_inner().instances)
            .unwrap_or_default()
            .iter()
            .filter(|i| i.status.as_ref().map(|s| s.instance_state) == Some(1))
            .count()
    }

    async fn until_running(&mut self, group: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.running(group).await != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{group}: not {n} running"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn new_groups_and_sizes_apply_without_a_restart() {
    let mut e = env(|api| config(api, "rl", 2, false)).await;
    assert_eq!(e.groups().await, vec![("web".to_string(), 2)]);
    let err = e.increase("web", 3).await.expect_err("over max 2");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    e.rewrite(&config(&e.sim.url(), "rl", 5, true), "applied")
        .await;
    assert_eq!(
        e.groups().await,
        vec![("batch".to_string(), 4), ("web".to_string(), 5)]
    );
    e.increase("web", 3).await.expect("within the new max-size");
    e.increase("batch", 1).await.expect("the new group scales");
    e.until_running("web", 3).await;
    e.until_running("batch", 1).await;
    assert_eq!(e.sim.requests(Endpoint::CreateServer), 4);
}

#[tokio::test]
async fn a_file_that_does_not_validate_is_refused_whole_and_the_old_config_stays() {
    let mut e = env(|api| config(api, "rl", 2, false)).await;
    let broken = config(&e.sim.url(), "rl", 5, true).replace("cpu = 2B", "cpu = 2Q");
    e.rewrite(&broken, "refused").await;
    assert_eq!(e.groups().await, vec![("web".to_string(), 2)], "unchanged");
    let (code, body) = e.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("the cloud config's latest change was refused, the previous config stays"),
        "{body}"
    );
    // `client status` says so too: under the table, or on stderr where JSON keeps its shape.
    let (code, out, err) = e.client_status(&[]).await;
    assert_eq!(code, Some(0), "{err}");
    let note = out
        .lines()
        .find(|l| l.starts_with("note: the cloud config's latest change was refused"))
        .unwrap_or_else(|| panic!("no note in:\n{out}"));
    assert!(note.contains("cpu"), "the problem is named: {note}");
    let (code, out, err) = e.client_status(&["--output", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let groups: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(groups.is_array(), "{out}");
    assert!(
        err.contains("note: the cloud config's latest change was refused"),
        "{err}"
    );
    // Fixed: applied, and the note is gone.
    e.rewrite(&config(&e.sim.url(), "rl", 5, true), "applied")
        .await;
    assert_eq!(e.groups().await.len(), 2);
    assert_eq!(e.get("/readyz").await, (200, "ready\n".to_string()));
    let (_, out, err) = e.client_status(&[]).await;
    assert!(!out.contains("note:") && err.is_empty(), "{out}{err}");
}

/// With Kubernetes access, a refused change is a Warning Event on the provider's own Pod,
/// once per change.
#[tokio::test]
async fn a_refused_change_is_an_event_on_the_providers_pod() {
    let kdir = tempfile::tempdir().expect("tempdir");
    let fake = common::fake_kube::FakeKube::start().await;
    let kubeconfig = fake.kubeconfig(kdir.path());
    let e = env_with(|api| config(api, "rl", 2, false), Some(&kubeconfig)).await;
    let (_, pod) = kamatera_ca_provider::kube::own_pod().expect("this machine has a host name");
    let broken = config(&e.sim.url(), "rl", 5, true).replace("cpu = 2B", "cpu = 2Q");
    e.rewrite(&broken, "refused").await;
    let refused = || {
        fake.events()
            .into_iter()
            .filter(|(_, reason, _)| reason == "ConfigRefused")
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            fake.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused(),
        vec![(
            pod.clone(),
            "ConfigRefused".to_string(),
            "Warning".to_string()
        )]
    );
    // The unchanged file is not refused again, and posts nothing more.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(refused().len(), 1);
}

#[tokio::test]
async fn a_group_removed_from_the_file_keeps_its_servers_until_it_returns() {
    let mut e = env(|api| config(api, "rl", 2, true)).await;
    e.increase("web", 1).await.expect("increase");
    e.until_running("web", 1).await;
    // The web section vanishes (only batch is left).
    let only_batch = config(&e.sim.url(), "rl", 2, true)
        .replace(&format!("\n[nodegroup \"web\"]\n{WEB}\nmax-size = 2\n"), "");
    assert!(!only_batch.contains("\"web\""), "{only_batch}");
    e.rewrite(&only_batch, "applied").await;
    for _ in 0..5 {
        e.ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(e.groups().await, vec![("batch".to_string(), 4)]);
    assert_eq!(e.sim.requests(Endpoint::Terminate), 0, "never terminated");
    assert_eq!(e.sim.requests(Endpoint::PowerOff), 0, "never powered off");
    let on = e
        .sim
        .with_state(|s| s.servers.iter().filter(|v| v.power == "on").count());
    assert_eq!(on, 1);
    let (_, body) = e.get("/readyz").await;
    assert!(
        body.contains(
            "node group web is not in the config any more; its 1 server(s) are kept untouched"
        ),
        "{body}"
    );
    // The group returns: its server is its own again.
    e.rewrite(&config(&e.sim.url(), "rl", 2, true), "applied")
        .await;
    e.until_running("web", 1).await;
    assert_eq!(e.sim.requests(Endpoint::CreateServer), 1);
    assert_eq!(e.get("/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test]
async fn a_reload_during_a_scale_up_changes_nothing_bought() {
    let mut e = env(|api| config(api, "rl", 4, false)).await;
    e.sim
        .with_state(|s| s.timing.create = Duration::from_millis(1500));
    e.increase("web", 3).await.expect("increase");
    e.rewrite(&config(&e.sim.url(), "rl", 6, true), "applied")
        .await;
    e.until_running("web", 3).await;
    for _ in 0..5 {
        e.ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    }
    assert_eq!(
        e.sim.requests(Endpoint::CreateServer),
        3,
        "nothing bought twice"
    );
    assert_eq!(e.running("web").await, 3);
}

#[tokio::test]
async fn a_new_api_url_makes_a_new_client() {
    let mut e = env(|api| config(api, "rl", 2, false)).await;
    let other = common::start_sim(Timing::fast(), Default::default()).await;
    other.seed_server(sim::SeedServer {
        name: "r-web-00000000001".into(),
        datacenter: "EU".into(),
        power_on: true,
        tags: vec!["k8sca-rl".into(), "k8scang-web".into()],
        cpu: "1B".into(),
        ram_mb: 1024,
    });
    e.rewrite(&config(&other.url(), "rl", 2, false), "applied")
        .await;
    // The next reconcile lists the other account and adopts its server.
    e.until_running("web", 1).await;
    assert!(other.requests(Endpoint::ListServers) > 0);
}

#[tokio::test]
async fn the_cluster_name_cannot_change_while_running() {
    let mut e = env(|api| config(api, "rl", 2, false)).await;
    e.rewrite(&config(&e.sim.url(), "other", 5, true), "refused")
        .await;
    assert_eq!(e.groups().await, vec![("web".to_string(), 2)]);
    let (_, body) = e.get("/readyz").await;
    assert!(
        body.contains("cluster-name cannot change while the provider runs"),
        "{body}"
    );
}

/// With the periodic check off, SIGHUP reloads the file at once (`serve` as a process).
#[tokio::test]
async fn sighup_reloads_at_once() {
    let sim = common::start_sim(Timing::fast(), Default::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cloud.ini");
    std::fs::write(&path, config(&sim.url(), "rl", 2, false)).expect("write");
    let state = dir.path().join("state.json");
    let serve = common::spawn_serve(&[
        "--cloud-config",
        path.to_str().expect("utf-8"),
        "--state-file",
        state.to_str().expect("utf-8"),
        "--config-reload-seconds",
        "0",
    ]);
    let mut ca = Rpc::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    std::fs::write(&path, config(&sim.url(), "rl", 5, true)).expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let groups = |ca: &mut Rpc| {
        let mut ca = ca.clone();
        async move {
            ca.node_groups(pb::NodeGroupsRequest {})
                .await
                .expect("groups")
                .into_inner()
                .node_groups
                .len()
        }
    };
    assert_eq!(groups(&mut ca).await, 1, "no periodic check");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &serve.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while groups(&mut ca).await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
