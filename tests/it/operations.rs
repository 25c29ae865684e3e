//! Operating the provider: mutual TLS (with rotation), health, readiness, metrics, log hygiene,
//! the `client` and `check --online` commands.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kamatera_ca_provider::config::CloudConfig;
use kamatera_ca_provider::grpc::ServeOptions;
use kamatera_ca_provider::grpc::client::{self as grpc_client, ClientTls};
use kamatera_ca_provider::grpc::tls::{ReloadingTls, TlsError, TlsFiles};

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::provider::{Provider, ProviderOptions};
use kamatera_ca_provider::sim::{self, Endpoint, EndpointFaults, SimHandle, Timing};
use kamatera_ca_provider::telemetry::Metrics;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PASSWORD: &str = "RootPassword-Zq81";
const SCRIPT_MARK: &str = "join-token-Vf55";
const SCRIPT_B64: &str = "IyEvYmluL3NoCmVjaG8gam9pbi10b2tlbi1WZjU1Cg==";
const SSH_MARK: &str = "AAAAC3NzaC1lZDI1NTE5SSHKEYMARKq7";

fn config_text(api_url: &str, secret: &str, image: &str) -> String {
    // The script is base64 of "#!/bin/sh\necho join-token-Vf55\n".
    format!(
        r#"[global]
kamatera-api-client-id = {id}
kamatera-api-secret = {secret}
kamatera-api-url = {api_url}
cluster-name = ops
default-datacenter = US-NY2
default-image = {image}
default-network = name=wan,ip=auto
default-min-size = 0
default-password = {PASSWORD}
default-ssh-key = ssh-ed25519 {SSH_MARK} ops@test
default-script-base64 = {SCRIPT_B64}

[nodegroup "web"]
name-prefix = ops-web
max-size = 4
cpu = 2B
ram = 4096
disk = size=40
"#,
        id = sim::DEMO_CLIENT_ID,
    )
}

async fn start_sim() -> SimHandle {
    common::start_sim(Timing::fast(), Default::default()).await
}

fn provider_for(sim: &SimHandle, metrics: Arc<Metrics>) -> Provider {
    provider_with_state(sim, metrics, None)
}

fn provider_with_state(
    sim: &SimHandle,
    metrics: Arc<Metrics>,
    state_file: Option<std::path::PathBuf>,
) -> Provider {
    let cfg = CloudConfig::parse(
        "ops.ini",
        &config_text(&sim.url(), sim::DEMO_SECRET, "ubuntu_server_24.04_64-bit"),
        &|_| None,
    )
    .expect("config");
    let client = common::test_client(&cfg, metrics);
    Provider::new(
        cfg,
        client,
        ProviderOptions {
            reconcile_interval: Duration::from_secs(3600),
            state_file,
            ..ProviderOptions::default()
        },
    )
}

// ---- certificates ----

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA; writes `<name>-ca.pem` and returns the issuer.
    fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(self.path(&format!("{name}-ca.pem")), issuer.pem()).expect("write CA");
        issuer
    }

    /// A leaf certificate for `sans`, signed by `ca`; writes `<name>.pem` and `<name>-key.pem`.
    fn leaf(
        &self,
        name: &str,
        sans: &[&str],
        server: bool,
        ca: &CertifiedIssuer<'static, KeyPair>,
    ) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}-key.pem")), key.serialize_pem())
            .expect("write key");
    }

    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: self.path("clients-ca.pem"),
        }
    }

    fn client_tls(&self, client: &str, server_ca: &str) -> ClientTls {
        ClientTls {
            cert: self.path(&format!("{client}.pem")),
            key: self.path(&format!("{client}-key.pem")),
            ca: self.path(&format!("{server_ca}-ca.pem")),
            server_name: Some("localhost".into()),
        }
    }
}

async fn groups_over(addr: SocketAddr, tls: Option<&ClientTls>) -> Result<Vec<String>, String> {
    let mut c = grpc_client::connect(&addr.to_string(), tls)
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.into_inner()
        .node_groups
        .into_iter()
        .map(|g| g.id)
        .collect())
}

#[tokio::test]
async fn mutual_tls_accepts_known_clients_only_and_picks_up_rotation() {
    let pki = Pki::new();
    let server_ca = pki.ca("servers");
    let clients_ca = pki.ca("clients");
    let rogue_ca = pki.ca("rogue");
    pki.leaf("server", &["localhost", "127.0.0.1"], true, &server_ca);
    pki.leaf("autoscaler", &[], false, &clients_ca);
    pki.leaf("intruder", &[], false, &rogue_ca);

    let sim = start_sim().await;
    let tls = ReloadingTls::load(pki.server_files()).expect("load TLS");
    let (addr, _stop) = common::serve(
        provider_for(&sim, Arc::new(Metrics::new())),
        ServeOptions {
            tls: Some(tls.clone()),
        },
    )
    .await;

    // The autoscaler's client certificate is accepted.
    assert_eq!(
        groups_over(addr, Some(&pki.client_tls("autoscaler", "servers"))).await,
        Ok(vec!["web".to_string()])
    );
    // A certificate from another CA is refused.
    let rogue = groups_over(addr, Some(&pki.client_tls("intruder", "servers"))).await;
    assert!(rogue.is_err(), "unknown client accepted: {rogue:?}");
    // Plaintext is refused.
    let plain = groups_over(addr, None).await;
    assert!(plain.is_err(), "plaintext accepted: {plain:?}");

    // Rotation: a new server certificate from a new CA, written in place.
    let new_ca = pki.ca("servers2");
    pki.leaf("server", &["localhost", "127.0.0.1"], true, &new_ca);
    // A client that trusts only the new CA fails until the files are re-read...
    assert!(
        groups_over(addr, Some(&pki.client_tls("autoscaler", "servers2")))
            .await
            .is_err()
    );
    assert!(
        tls.reload_if_changed().expect("reload"),
        "the change is noticed"
    );
    assert!(!tls.reload_if_changed().expect("reload"), "and only once");
    // ...and succeeds after, without a restart.
    assert_eq!(
        groups_over(addr, Some(&pki.client_tls("autoscaler", "servers2"))).await,
        Ok(vec!["web".to_string()])
    );

    // A broken file is reported and the working configuration kept.
    std::fs::write(pki.path("server-key.pem"), "not a key").expect("break key");
    assert!(tls.reload_if_changed().is_err());
    // A certificate cut short: the error names the missing end line as text, not as bytes.
    let cert = std::fs::read_to_string(pki.path("server.pem")).expect("cert");
    let cut = &cert[..cert.find("-----END").expect("end line")];
    std::fs::write(pki.path("server.pem"), cut).expect("cut cert");
    let err = tls
        .reload_if_changed()
        .expect_err("cut certificate")
        .to_string();
    assert!(
        err.contains("has no end line \"-----END CERTIFICATE-----\""),
        "{err}"
    );
    assert!(!err.contains("[45, 45"), "{err}");
    assert_eq!(
        groups_over(addr, Some(&pki.client_tls("autoscaler", "servers2"))).await,
        Ok(vec!["web".to_string()])
    );
}

/// The watcher re-reads rotated files on its period, not before, and keeps a broken set out: on
/// a paused clock, so the test waits for no period.
#[tokio::test(start_paused = true)]
async fn the_tls_watcher_picks_up_rotation_on_its_period() {
    let pki = Pki::new();
    let server_ca = pki.ca("servers");
    pki.ca("clients");
    pki.leaf("server", &["localhost"], true, &server_ca);
    let tls = ReloadingTls::load(pki.server_files()).expect("load TLS");
    let period = Duration::from_secs(30);
    let watcher = tls.spawn_watcher(period);
    // Lets the watcher run whatever is due at the current (paused) instant.
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    settle().await; // the first tick, at once: nothing changed
    let first = tls.current();

    // A longer certificate: the files' stamps differ even within the same second.
    pki.leaf(
        "server",
        &["localhost", "provider.example.com", "127.0.0.1"],
        true,
        &pki.ca("servers2"),
    );
    tokio::time::advance(period - Duration::from_secs(1)).await;
    settle().await;
    assert!(Arc::ptr_eq(&first, &tls.current()), "not before its period");
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    let rotated = tls.current();
    assert!(!Arc::ptr_eq(&first, &rotated), "re-read on its period");

    // A broken key: reported, and the working configuration kept through later periods.
    std::fs::write(pki.path("server-key.pem"), "not a key").expect("break key");
    tokio::time::advance(period * 3).await;
    settle().await;
    assert!(
        Arc::ptr_eq(&rotated, &tls.current()),
        "the broken set is kept out"
    );
    watcher.abort();
}

#[tokio::test]
async fn tls_files_are_all_or_nothing() {
    assert_eq!(TlsFiles::from_flags(None, None, None).expect("none"), None);
    let err = TlsFiles::from_flags(Some("c".into()), None, Some("a".into())).expect_err("partial");
    assert!(matches!(err, TlsError::Partial(_)));
    assert!(err.to_string().contains("missing --tls-key"), "{err}");
    assert!(
        err.to_string()
            .contains("refusing to fall back to plaintext"),
        "{err}"
    );
    let err = ReloadingTls::load(TlsFiles {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        client_ca: "/nonexistent/ca.pem".into(),
    })
    .err()
    .expect("missing files");
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");

    // The CLI refuses a partial set at startup.
    let out = common::serve_output(&["--simulate", "--tls-cert", "x.pem"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing --tls-key, --tls-client-ca"),
        "{stderr}"
    );
}

#[tokio::test]
async fn health_serves_after_the_first_reconcile() {
    let sim = start_sim().await;
    sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let provider = provider_for(&sim, Arc::new(Metrics::new()));
    let (addr, _stop) = common::serve(provider.clone(), ServeOptions::default()).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = |name: &str| HealthCheckRequest {
        service: name.to_string(),
    };
    let service = "clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider";

    let _ = provider.reconcile().await;
    let r = health
        .check(status(service))
        .await
        .expect("check")
        .into_inner();
    assert_eq!(r.status, ServingStatus::NotServing as i32);

    sim.update_faults(|f| f.endpoints.clear());
    provider.reconcile().await.expect("reconcile");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = health
            .check(status(service))
            .await
            .expect("check")
            .into_inner();
        let overall = health.check(status("")).await.expect("check").into_inner();
        if r.status == ServingStatus::Serving as i32
            && overall.status == ServingStatus::Serving as i32
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never turned SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Reflection answers too (what grpcurl uses).
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut stream = reflection
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("message")
        .expect("one answer");
    let listed = format!("{:?}", resp.message_response);
    assert!(listed.contains(service), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let r = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("get");
    let code = r.status().as_u16();
    (code, r.text().await.expect("body"))
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn readiness_and_metrics_after_a_scripted_scale_up() {
    // Assembled the way `serve` assembles it, with a fake cluster and a journal file named
    // explicitly (so nothing of this machine's environment is used).
    let sim = start_sim().await;
    let fake = common::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &config_text(&sim.url(), sim::DEMO_SECRET, "ubuntu_server_24.04_64-bit"),
    );
    let kubeconfig = fake.kubeconfig(dir.path());
    let state = dir.path().join("state.json");
    let app = common::build_app(&[
        "--cloud-config",
        config.to_str().expect("utf-8"),
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
        "--state-file",
        state.to_str().expect("utf-8"),
    ])
    .await;
    let (addr, admin) = (app.grpc_addr(), app.admin_addr());

    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("has not been read yet"), "{body}");
    let _stop = common::run_app(app);

    let mut ca = grpc_client::connect(&addr.to_string(), None)
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: "web".into(),
    })
    .await
    .expect("increase");
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 9,
        id: "web".into(),
    })
    .await
    .expect_err("over max");
    // Until both servers run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        let nodes = ca
            .node_group_nodes(pb::NodeGroupNodesRequest { id: "web".into() })
            .await
            .expect("nodes")
            .into_inner()
            .instances;
        if nodes
            .iter()
            .filter(|i| i.status.as_ref().map(|s| s.instance_state) == Some(1))
            .count()
            == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scale-up did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (code, text) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no series {s} in:\n{text}"));
    assert_eq!(
        m(r#"kamatera_ca_grpc_requests_total{method="NodeGroupIncreaseSize",code="OK"}"#),
        1.0
    );
    assert_eq!(
        m(
            r#"kamatera_ca_grpc_requests_total{method="NodeGroupIncreaseSize",code="FailedPrecondition"}"#
        ),
        1.0
    );
    assert!(m(r#"kamatera_ca_grpc_request_duration_seconds_count{method="Refresh"}"#) >= 2.0);
    assert_eq!(
        m(r#"kamatera_ca_api_requests_total{endpoint="create_server",outcome="ok"}"#),
        2.0
    );
    assert!(m(r#"kamatera_ca_api_requests_total{endpoint="list_servers",outcome="ok"}"#) >= 2.0);
    assert_eq!(m("kamatera_ca_api_requests_in_flight"), 0.0);
    assert_eq!(m(r#"kamatera_ca_creates_total{result="accepted"}"#), 2.0);
    assert_eq!(
        m(r#"kamatera_ca_node_group_size{group="web",kind="target"}"#),
        2.0
    );
    assert_eq!(
        m(r#"kamatera_ca_node_group_size{group="web",kind="max"}"#),
        4.0
    );
    assert_eq!(
        m(r#"kamatera_ca_instances{group="web",state="running"}"#),
        2.0
    );
    assert_eq!(
        m(r#"kamatera_ca_instances{group="web",state="creating"}"#),
        0.0
    );
    assert_eq!(
        m(r#"kamatera_ca_instances_in_error{group="web",class="other"}"#),
        0.0
    );
    assert_eq!(m("kamatera_ca_pending_commands"), 0.0);
    assert_eq!(m("kamatera_ca_ready"), 1.0);
    assert!(m("kamatera_ca_state_staleness_seconds") >= 0.0);
    assert!(m(r#"kamatera_ca_reconciles_total{result="ok"}"#) >= 2.0);
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text");
}

/// A `Write` that appends to a shared buffer, for capturing logs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's log output (text format) at `filter` while the guard lives.
fn capture_logs(filter: &str) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn logs_of_a_full_scale_up_and_down_hold_no_secret() {
    let (captured, _guard) = capture_logs("trace");

    let sim = start_sim().await;
    // Errors echo what they were sent, to tempt a leak.
    let (addr, _stop) = common::serve(
        provider_for(&sim, Arc::new(Metrics::new())),
        ServeOptions::default(),
    )
    .await;
    let mut ca = grpc_client::connect(&addr.to_string(), None)
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "web".into(),
    })
    .await
    .expect("increase");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let running = loop {
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        let nodes = ca
            .node_group_nodes(pb::NodeGroupNodesRequest { id: "web".into() })
            .await
            .expect("nodes")
            .into_inner()
            .instances;
        if let Some(i) = nodes
            .iter()
            .find(|i| i.status.as_ref().map(|s| s.instance_state) == Some(1))
        {
            break i.id.clone();
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ca.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
        nodes: vec![pb::ExternalGrpcNode {
            provider_id: running,
            ..Default::default()
        }],
        id: "web".into(),
    })
    .await
    .expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sim.snapshot()["servers"]
        .as_array()
        .is_some_and(Vec::is_empty)
    {
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A failing create whose error body echoes the request, every field of it.
    sim.set_endpoint_faults(
        Endpoint::CreateServer,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    sim.update_faults(|f| f.echo_request_in_errors = true);
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "web".into(),
    })
    .await
    .expect("increase");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answers = loop {
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        let nodes = ca
            .node_group_nodes(pb::NodeGroupNodesRequest { id: "web".into() })
            .await
            .expect("nodes")
            .into_inner();
        let text = format!("{nodes:?}");
        if text.contains("CREATE_REJECTED") {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        answers.contains("redacted"),
        "the echo reached the answer, redacted: {answers}"
    );

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).to_string();
    assert!(logs.contains("scale-up"), "logs were captured");
    assert!(logs.contains("create accepted"), "{logs}");
    assert!(
        logs.contains("HTTP 400"),
        "the echoing error was logged: {logs}"
    );
    for secret in [
        sim::DEMO_SECRET,
        PASSWORD,
        SCRIPT_MARK,
        SCRIPT_B64,
        SSH_MARK,
    ] {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
        assert!(
            !answers.contains(secret),
            "{secret:?} appears in a gRPC answer"
        );
    }
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("cloud.ini");
    std::fs::write(&p, text).expect("write config");
    p
}

fn run_cli(args: Vec<String>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(args)
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .output()
        .expect("run")
}

/// `kamatera-ca-provider client --address ADDR <args>`: exit code, standard output and error.
fn client_at(
    addr: SocketAddr,
    args: &[&str],
) -> impl std::future::Future<Output = (Option<i32>, String, String)> + use<> {
    let mut all = vec!["client".to_string(), "--address".into(), addr.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    async move {
        let out = tokio::task::spawn_blocking(move || run_cli(all))
            .await
            .expect("join");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_command_against_a_served_simulator() {
    let sim = start_sim().await;
    let provider = provider_for(&sim, Arc::new(Metrics::new()));
    provider.reconcile().await.expect("reconcile");
    let (addr, _stop) = common::serve(provider, ServeOptions::default()).await;
    let cli = |args: &[&str]| client_at(addr, args);
    let (code, out, _) = cli(&["groups"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("GROUP") && out.contains("web") && out.contains("4"),
        "{out}"
    );

    let (code, out, _) = cli(&["increase", "web", "2"]).await;
    assert_eq!(code, Some(0), "{out}");
    let (_, out, _) = cli(&["target", "web"]).await;
    assert_eq!(out.trim(), "2");
    let (_, out, _) = cli(&["nodes", "web"]).await;
    assert_eq!(out.matches("kamatera://ops-web-").count(), 2, "{out}");
    assert!(out.contains("creating"), "{out}");

    let (code, out, _) = cli(&["template", "web"]).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"kamatera.com/node-group\": \"web\""),
        "{out}"
    );
    assert!(out.contains("\"memory\": \"4096Mi\""), "{out}");
    let (_, out, _) = cli(&["template", "web", "--output", "json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(json["status"]["capacity"]["cpu"], "2");
    let (_, out, _) = cli(&["options", "web"]).await;
    assert!(out.contains("defaults apply"), "{out}");

    let (code, _, err) = cli(&["target", "nope"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cli(&["delete", "web", "kamatera://not-ours"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("does not belong"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_show_counts_and_print_json_and_errors_read_code_then_message() {
    let sim = start_sim().await;
    let provider = provider_for(&sim, Arc::new(Metrics::new()));
    provider.reconcile().await.expect("reconcile");
    let (addr, _stop) = common::serve(provider, ServeOptions::default()).await;
    let cli = |args: &[&str]| client_at(addr, args);
    let (code, out, err) = cli(&["increase", "web", "2"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "asked node group web for 2 more node(s)");

    // groups: sizes, target, instances by state, parked.
    let (code, out, err) = cli(&["groups"]).await;
    assert_eq!(code, Some(0), "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "GROUP", "MIN", "MAX", "TARGET", "CREATING", "RUNNING", "DELETING", "PARKED", "STANDBY"
        ],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row: {out}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["web", "0", "4", "2"], "{out}");
    let counted: u32 = row[4..7]
        .iter()
        .map(|c| c.parse::<u32>().expect("count"))
        .sum();
    assert_eq!(counted, 2, "both instances are counted once: {out}");
    assert_eq!(row[7], "0", "{out}");
    assert_eq!(row[8], "-", "no standby pool: {out}");

    // --output json on every read.
    let json = |out: &str| -> serde_json::Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };
    let (_, out, _) = cli(&["groups", "--output", "json"]).await;
    let v = json(&out);
    assert_eq!(v[0]["group"], "web");
    assert_eq!(v[0]["targetSize"], 2);
    assert_eq!(v[0]["maxSize"], 4);
    assert_eq!(v[0]["parked"], 0);
    let (_, out, _) = cli(&["--output", "json", "nodes", "web"]).await;
    let v = json(&out);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{out}");
    assert!(
        v[0]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("kamatera://ops-web-")),
        "{out}"
    );
    let (_, out, _) = cli(&["target", "web", "--output", "json"]).await;
    assert_eq!(
        json(&out),
        serde_json::json!({"group": "web", "targetSize": 2})
    );
    let (_, out, _) = cli(&["options", "web", "--output", "json"]).await;
    assert_eq!(
        json(&out),
        serde_json::json!({"group": "web", "options": null})
    );
    let (_, out, _) = cli(&["status", "--output", "json"]).await;
    let v = json(&out);
    assert_eq!(v[0]["group"], "web");
    assert_eq!(v[0]["phase"], "awake");
    let (_, out, _) = cli(&["groups", "--output", "yaml"]).await;
    assert!(out.contains("\"targetSize\": 2"), "{out}");

    // Errors read `Code: message`, once.
    let (code, out, err) = cli(&["increase", "web", "9"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(err.starts_with("error: FailedPrecondition: "), "{err}");
    let (code, _, err) = cli(&["target", "nope"]).await;
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: NotFound: "), "{err}");
    // Deltas are positive numbers; a negative one is refused by the parser, naming the value.
    let (code, _, err) = cli(&["increase", "web", "-1"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value '-1'"), "{err}");
    let (code, _, err) = cli(&["increase", "web", "0"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid value '0'"), "{err}");
    assert_eq!(
        cli(&["target", "web"]).await.1.trim(),
        "2",
        "a refused delta changes nothing"
    );
    // A connection error says where and why, without repeating itself.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let out = tokio::task::spawn_blocking(move || {
        run_cli(vec![
            "client".into(),
            "--address".into(),
            dead_addr,
            "groups".into(),
        ])
    })
    .await
    .expect("join");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.starts_with("error: cannot connect to 127.0.0.1:"),
        "{err}"
    );
    let first = err.lines().next().unwrap_or_default();
    let parts: Vec<&str> = first.split(": ").collect();
    let mut distinct = parts.clone();
    distinct.dedup();
    assert_eq!(parts, distinct, "a cause repeated: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_against_the_simulator() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |text: String| {
        let path = write_config(dir.path(), &text);
        async move {
            let args = vec![
                "check".into(),
                "--cloud-config".into(),
                path.display().to_string(),
                "--online".into(),
            ];
            let out = tokio::task::spawn_blocking(move || run_cli(args))
                .await
                .expect("join");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        }
    };
    let (code, out) = check(config_text(
        &sim.url(),
        sim::DEMO_SECRET,
        "ubuntu_server_24.04_64-bit",
    ))
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok    account          credentials"), "{out}");
    assert!(
        out.contains("ok    web              datacenter   US-NY2 (New York)"),
        "{out}"
    );
    assert!(
        out.contains(
            "ok    web              image        ubuntu_server_24.04_64-bit (US-NY2:6000C29"
        ),
        "{out}"
    );

    let (code, out) = check(config_text(&sim.url(), sim::DEMO_SECRET, "windows_95")).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("FAIL  web              image        windows_95 is not an image"),
        "{out}"
    );

    let (code, out) = check(config_text(
        &sim.url(),
        "wrong-secret",
        "ubuntu_server_24.04_64-bit",
    ))
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("FAIL  account          credentials"), "{out}");
    assert!(out.contains("not logged in"), "{out}");
    assert!(!out.contains("wrong-secret"), "{out}");
}

#[tokio::test]
async fn the_journal_is_written_only_when_in_flight_work_changes() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    let provider = provider_with_state(&sim, Arc::new(Metrics::new()), Some(path.clone()));
    provider.reconcile().await.expect("reconcile");
    assert!(
        path.exists(),
        "the first reconcile writes the (empty) journal"
    );
    std::fs::remove_file(&path).expect("remove");
    for _ in 0..3 {
        provider.reconcile().await.expect("reconcile");
    }
    assert!(!path.exists(), "an idle provider does not rewrite it");
    provider.increase_size("web", 1).await.expect("increase");
    let text = std::fs::read_to_string(&path).expect("written before IncreaseSize answers");
    assert!(text.contains("ops-web-"), "{text}");
}

/// Sends raw bytes as a request body: what a broken or hostile client does.
struct RawCodec;

struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn malformed_and_hostile_requests_get_honest_bounded_answers() {
    let (captured, _guard) = capture_logs("kamatera_ca_provider=debug");
    let sim = start_sim().await;
    let (addr, _stop) = common::serve(
        provider_for(&sim, Arc::new(Metrics::new())),
        ServeOptions::default(),
    )
    .await;

    // Bytes that are no protobuf message: the caller's mistake.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.expect("ready");
    let err = raw
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff]),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/clusterautoscaler.cloudprovider.v1.externalgrpc.CloudProvider/NodeGroupTargetSize",
            ),
            RawCodec,
        )
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let mut ca = grpc_client::connect(&addr.to_string(), None)
        .await
        .expect("connect");
    // A 1 MB node group id: NotFound with a bounded message (never RESOURCE_EXHAUSTED on the
    // client because the id came back in the status).
    let huge = "x".repeat(1 << 20);
    let err = ca
        .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: huge.clone() })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().len() < 400, "{} bytes", err.message().len());
    // A node group id that would forge a log line.
    let err = ca
        .node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
            delta: 1,
            id: "web\nERROR forged: all servers deleted".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).to_string();
    assert!(logs.contains("NodeGroupIncreaseSize"), "{logs}");
    assert!(
        !logs.lines().any(|l| l.starts_with("ERROR forged")),
        "a forged line: {logs}"
    );
    assert!(
        logs.lines().all(|l| l.len() < 4096),
        "an unbounded log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_make_the_background_reconcile_skip_its_turn() {
    let sim = start_sim().await;
    let cfg = CloudConfig::parse(
        "ops.ini",
        &config_text(&sim.url(), sim::DEMO_SECRET, "ubuntu_server_24.04_64-bit"),
        &|_| None,
    )
    .expect("config");
    let provider = Provider::new(
        cfg.clone(),
        common::test_client(&cfg, Arc::new(Metrics::new())),
        ProviderOptions {
            reconcile_interval: Duration::from_millis(600),
            ..ProviderOptions::default()
        },
    );
    let background = provider.start_background();
    let (addr, _stop) = common::serve(provider, ServeOptions::default()).await;
    let mut ca = grpc_client::connect(&addr.to_string(), None)
        .await
        .expect("connect");
    // Let the background loop run its first pass, then an autoscaler refreshes faster than
    // the interval: every listing is a Refresh's.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = sim.requests(Endpoint::ListServers);
    let mut refreshes = 0;
    for _ in 0..20 {
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        refreshes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sim.requests(Endpoint::ListServers) - before, refreshes);
    // Without refreshes the background loop lists on its own.
    let quiet = sim.requests(Endpoint::ListServers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sim.requests(Endpoint::ListServers) > quiet);
    background.abort();
}

/// The built-in example config is only ever served against the embedded simulator: settings
/// built in code without a config file and without `simulate` are refused.
#[tokio::test]
async fn the_example_config_never_reaches_the_real_api() {
    let mut settings =
        kamatera_ca_provider::app::Settings::from_flags(["--simulate"]).expect("flags");
    settings.simulate = false;
    let err = kamatera_ca_provider::app::App::build(settings)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "--cloud-config is required without --simulate"
    );
}
