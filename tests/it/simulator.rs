//! The Kamatera client driven against the simulator over loopback: full lifecycles, the API's
//! name-regex semantics, auth and quota failures, every fault knob, and determinism.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use kamatera_ca_provider::kamatera::{
    Billing, Client, ClientSettings, CommandState, CreateServer, ErrorClass, Polled, Power,
    RetryPolicy, Server,
};
use kamatera_ca_provider::secret::Secret;
use kamatera_ca_provider::sim::{
    self, DEMO_CLIENT_ID, DEMO_SECRET, Endpoint, EndpointFaults, Faults, Quota, SeedServer,
    SimConfig, SimHandle, Timing,
};
use serde_json::{Value, json};

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start_sim(seed: u64, quota: Quota) -> SimHandle {
    start_sim_timed(seed, quota, Timing::fast()).await
}

async fn start_sim_timed(seed: u64, quota: Quota, timing: Timing) -> SimHandle {
    sim::start(
        SimConfig {
            seed,
            timing,
            quota,
            ..SimConfig::default()
        },
        localhost(),
    )
    .await
    .expect("simulator")
}

fn client_with(sim: &SimHandle, secret: &str, attempts: u32, timeout: Duration) -> Client {
    Client::new(ClientSettings {
        base_url: sim.url(),
        client_id: DEMO_CLIENT_ID.into(),
        secret: Secret::new(secret),
        timeouts: kamatera_ca_provider::kamatera::Timeouts::uniform(timeout),
        retry: RetryPolicy::immediate(attempts),
        metrics: Default::default(),
        in_process: None,
    })
    .expect("client")
}

fn client(sim: &SimHandle) -> Client {
    client_with(sim, DEMO_SECRET, 3, Duration::from_secs(5))
}

async fn create(
    c: &Client,
    name: &str,
) -> Result<String, kamatera_ca_provider::kamatera::KamateraError> {
    let script = Secret::new("#!/bin/sh\ntrue\n");
    let (disks, networks) = (["size=40".to_string()], ["name=wan,ip=auto".to_string()]);
    let tags = ["k8sca-demo".to_string(), "k8scang-general".to_string()];
    c.create_server(CreateServer {
        name,
        password: None,
        ssh_key: "",
        datacenter: "US-NY2",
        image: "ubuntu_server_24.04_64-bit",
        cpu: "2B",
        ram_mb: 4096,
        disks: &disks,
        networks: &networks,
        daily_backup: false,
        managed: false,
        billing: Billing::Hourly,
        monthly_package: "",
        script: Some(&script),
        tags: &tags,
        power_on: true,
    })
    .await
}

/// Polls `f` until it returns Some, or panics after five seconds.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn polled(c: &Client, id: &str) -> kamatera_ca_provider::kamatera::CommandStatus {
    match c.command_status(id).await.expect("status") {
        Polled::Status(s) => s,
        Polled::Unreported => panic!("command {id} unreported"),
    }
}

async fn status(c: &Client, id: &str) -> CommandState {
    polled(c, id).await.state
}

async fn wait_state(c: &Client, id: &str, want: CommandState) {
    eventually(&format!("command {id} {want:?}"), || async {
        (status(c, id).await == want).then_some(())
    })
    .await;
}

async fn find(c: &Client, name: &str) -> Option<Server> {
    c.list_servers("")
        .await
        .expect("list")
        .into_iter()
        .find(|s| s.name == name)
}

#[tokio::test]
async fn full_lifecycle() {
    // Slow enough that "still running" is observable on a loaded machine.
    let timing = Timing {
        create: Duration::from_millis(400),
        power: Duration::from_millis(100),
        terminate: Duration::from_millis(400),
        ..Timing::fast()
    };
    let sim = start_sim_timed(1, Quota::default(), timing).await;
    let c = client(&sim);

    let cmd = create(&c, "demo-general-00000000001")
        .await
        .expect("create");
    // Listed at once, powered off, while the command runs.
    let s = find(&c, "demo-general-00000000001")
        .await
        .expect("listed during creation");
    assert_eq!(s.power, Power::Off);
    assert_eq!(s.datacenter, "US-NY2");
    assert!(!status(&c, &cmd).await.is_terminal());
    assert_eq!(
        c.server_tags(&s.id).await.expect("tags"),
        vec!["k8sca-demo", "k8scang-general"]
    );

    wait_state(&c, &cmd, CommandState::Complete).await;
    assert_eq!(
        find(&c, "demo-general-00000000001").await.map(|s| s.power),
        Some(Power::On)
    );

    let off = c.power_off(&s.id).await.expect("power off");
    wait_state(&c, &off, CommandState::Complete).await;
    assert_eq!(
        find(&c, "demo-general-00000000001").await.map(|s| s.power),
        Some(Power::Off)
    );

    let on = c.power_on(&s.id).await.expect("power on");
    wait_state(&c, &on, CommandState::Complete).await;
    assert_eq!(
        find(&c, "demo-general-00000000001").await.map(|s| s.power),
        Some(Power::On)
    );

    let term = c.terminate(&s.id).await.expect("terminate");
    // Still listed until the command completes.
    assert!(find(&c, "demo-general-00000000001").await.is_some());
    wait_state(&c, &term, CommandState::Complete).await;
    assert!(
        find(&c, "demo-general-00000000001").await.is_none(),
        "gone after terminate"
    );

    // Every step was one request; the counters say so.
    assert_eq!(sim.requests(Endpoint::CreateServer), 1);
    assert_eq!(sim.requests(Endpoint::Terminate), 1);
    let state = sim.snapshot();
    assert_eq!(state["servers"].as_array().map(Vec::len), Some(0));
    assert_eq!(state["commands"].as_array().map(Vec::len), Some(4));
}

/// A raw request with the demo credentials.
async fn raw(sim: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let resp = {
        kamatera_ca_provider::kamatera::install_crypto_provider();
        reqwest::Client::new()
    }
    .post(format!("{}{path}", sim.url()))
    .header("AuthClientId", DEMO_CLIENT_ID)
    .header("AuthSecret", DEMO_SECRET)
    .json(&body)
    .send()
    .await
    .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

fn seed(name: &str) -> SeedServer {
    SeedServer {
        name: name.into(),
        datacenter: "EU".into(),
        power_on: true,
        tags: vec!["k8sca-x".into()],
        cpu: "1A".into(),
        ram_mb: 1024,
    }
}

#[tokio::test]
async fn names_are_anchored_regular_expressions() {
    let sim = start_sim(3, Quota::default()).await;
    sim.seed_server(seed("web-1"));
    sim.seed_server(seed("web-10"));
    sim.seed_server(seed("webx1"));

    // "web.1" is a regex: it matches "web-1" and "webx1", but not "web-10" (anchored).
    let (code, body) = raw(&sim, "/service/server/poweroff", json!({"name": "web.1"})).await;
    assert_eq!(code, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");

    // Tags need exactly one match.
    let (code, body) = raw(&sim, "/server/tags", json!({"name": "web-1.*"})).await;
    assert_eq!(code, 500);
    assert_eq!(
        body["message"],
        "Too many matching servers (name='web-1.*')"
    );
    let (code, body) = raw(&sim, "/server/tags", json!({"name": "web-1"})).await;
    assert_eq!(code, 200);
    assert_eq!(body[0]["tagName"], "k8sca-x");

    let (code, body) = raw(
        &sim,
        "/service/server/terminate",
        json!({"name": "nothing", "force": true}),
    )
    .await;
    assert_eq!(code, 500);
    assert_eq!(body["message"], "No servers found (name='nothing')");

    // Both name and id: the API fails generically.
    let (code, body) = raw(
        &sim,
        "/service/server/poweron",
        json!({"name": "web-1", "id": "x"}),
    )
    .await;
    assert_eq!(code, 500);
    assert_eq!(
        body["message"],
        "Failed to run command method (poweronServer)"
    );

    // Terminating a running server needs force.
    let (code, _) = raw(&sim, "/service/server/terminate", json!({"name": "web-10"})).await;
    assert_eq!(code, 500);

    let (code, body) = raw(&sim, "/service/server/info", json!({"name": "web-10"})).await;
    assert_eq!(code, 200);
    assert_eq!(body[0]["name"], "web-10");
    assert_eq!(body[0]["cpu"], "1A");
}

#[tokio::test]
async fn create_validation_uses_the_api_shapes() {
    let sim = start_sim(4, Quota::default()).await;
    let base = json!({
        "name": "demo-1", "password": "__generate__", "passwordValidate": "__generate__",
        "datacenter": "US-NY2", "image": "ubuntu_server_24.04_64-bit", "cpu": "2B", "ram": "2048",
        "disk": "size=20", "network": "name=wan,ip=auto", "tag": "k8sca-a k8scang-b",
    });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let (code, body) = raw(&sim, "/service/server", base.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["commandIds"][0].is_string(), "{body}");
    assert_eq!(body["password"].as_str().map(str::len), Some(20));

    for (req, code, message) in [
        (with("name", json!("")), 400, "missing required flag (name)"),
        // The image is a description: looked up in the datacenter first, which fails.
        (
            with("datacenter", json!("MARS")),
            500,
            "Failed to run command method (createServer)",
        ),
        // The server checks no cpu or ram: the upstream refuses, its text passed on.
        (with("cpu", json!("2X")), 500, "Invalid CPU 2X (7)"),
        (with("ram", json!("lots")), 500, "Invalid RAM size lots (8)"),
        (
            with("disk", json!("size")),
            400,
            "invalid flag value (disk=size)",
        ),
        (
            with("image", json!("no-such-image")),
            500,
            "Failed to run command method (createServer)",
        ),
        (
            with("dailybackup", json!("maybe")),
            500,
            "Failed to run command method (createServer)",
        ),
        (
            with("billingcycle", json!("weekly")),
            500,
            "Failed to run command method (createServer)",
        ),
        (
            with("network", json!("name=lan-unknown")),
            500,
            "Network lan-unknown not found (10)",
        ),
        (
            with("network", json!("ip=auto")),
            500,
            "Failed to run command method (createServer)",
        ),
    ] {
        let (got, body) = raw(&sim, "/service/server", req.clone()).await;
        assert_eq!(
            (got, body["message"].as_str()),
            (code, Some(message)),
            "{req}"
        );
    }
    // With an explicit password the answer is the plain list of command ids.
    let (code, body) = raw(
        &sim,
        "/service/server",
        with("password", json!("Secr3t!pw")),
    )
    .await;
    assert_eq!(code, 200);
    assert!(body[0].is_string(), "{body}");
}

#[tokio::test]
async fn auth_failure_in_each_shape() {
    let sim = start_sim(5, Quota::default()).await;
    let c = client_with(&sim, "wrong-secret", 3, Duration::from_secs(5));
    let e = c.list_servers("").await.expect_err("list");
    assert_eq!(e.class, ErrorClass::Unauthorized, "{e}");
    // An image given as a description is looked up first, which fails generically: the
    // outcome looks open. The upstream's own refusal needs an image id.
    let e = create(&c, "demo-x-00000000000").await.expect_err("create");
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert!(e.may_have_been_processed(), "{e}");
    let e = c.power_off("x").await.expect_err("power");
    assert_eq!(e.class, ErrorClass::Unauthorized, "{e}");
    assert!(e.to_string().contains("you are not logged in"), "{e}");
    assert_eq!(sim.snapshot()["servers"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn quota_failure_is_classified() {
    let sim = start_sim(
        6,
        Quota {
            max_servers: Some(2),
            ..Quota::default()
        },
    )
    .await;
    let c = client(&sim);
    create(&c, "demo-general-00000000001").await.expect("1");
    create(&c, "demo-general-00000000002").await.expect("2");
    let e = create(&c, "demo-general-00000000003")
        .await
        .expect_err("over quota");
    assert_eq!(e.class, ErrorClass::QuotaOrCapacity, "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
    assert_eq!(
        sim.requests(Endpoint::CreateServer),
        3,
        "create is not retried"
    );

    let sim = start_sim(
        7,
        Quota {
            max_cpu_cores: Some(3),
            ..Quota::default()
        },
    )
    .await;
    let c = client(&sim);
    create(&c, "demo-general-00000000001")
        .await
        .expect("2 cores");
    let e = create(&c, "demo-general-00000000002")
        .await
        .expect_err("4 > 3 cores");
    assert_eq!(e.class, ErrorClass::QuotaOrCapacity, "{e}");
}

#[tokio::test]
async fn fault_error_rate() {
    let sim = start_sim(8, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let c = client(&sim);
    let e = c.list_servers("").await.expect_err("500s");
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(
        e.to_string()
            .contains("Failed to run command method (listServers)"),
        "{e}"
    );
    assert_eq!(
        sim.requests(Endpoint::ListServers),
        3,
        "retried up to the policy"
    );
    // Other endpoints are unaffected.
    create(&c, "demo-general-00000000001")
        .await
        .expect("create unaffected");
}

#[tokio::test]
async fn fault_plain_text_504() {
    let sim = start_sim(9, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::ServerTags,
        EndpointFaults {
            gateway_timeout_rate: 1.0,
            ..Default::default()
        },
    );
    let e = client(&sim).server_tags("x").await.expect_err("504");
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(e.to_string().contains("HTTP 504"), "{e}");
    assert!(e.detail().contains("Gateway Timeout"), "{}", e.detail());
}

#[tokio::test]
async fn fault_rate_limit() {
    let sim = start_sim(10, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::PowerOff,
        EndpointFaults {
            rate_limit_rate: 1.0,
            ..Default::default()
        },
    );
    let c = client_with(&sim, DEMO_SECRET, 2, Duration::from_secs(5));
    let e = c.power_off("x").await.expect_err("429");
    assert!(e.to_string().contains("HTTP 429"), "{e}");
    assert_eq!(
        sim.requests(Endpoint::PowerOff),
        2,
        "power calls retry on 429"
    );
}

#[tokio::test]
async fn fault_dropped_connection() {
    let sim = start_sim(11, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::ListServers,
        EndpointFaults {
            drop_rate: 1.0,
            ..Default::default()
        },
    );
    let e = client(&sim).list_servers("").await.expect_err("dropped");
    assert_eq!(e.class, ErrorClass::Transient, "{e}");
    assert_eq!(sim.requests(Endpoint::ListServers), 3);
}

#[tokio::test]
async fn fault_latency() {
    let sim = start_sim(12, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::Queue,
        EndpointFaults {
            latency_ms: 400,
            ..Default::default()
        },
    );
    let c = client_with(&sim, DEMO_SECRET, 1, Duration::from_millis(100));
    let e = c.command_status("1").await.expect_err("too slow");
    assert!(e.to_string().contains("timed out"), "{e}");
    // Without the fault the same call answers.
    sim.set_faults(Faults::default());
    let c = client(&sim);
    let cmd = create(&c, "demo-general-00000000001")
        .await
        .expect("create");
    assert_eq!(polled(&c, &cmd).await.id, cmd);
}

#[tokio::test]
async fn fault_command_error_and_cancel() {
    let sim = start_sim(13, Quota::default()).await;
    let c = client(&sim);
    sim.update_faults(|f| f.command_error_rate = 1.0);
    let failed = create(&c, "demo-general-0000000000e")
        .await
        .expect("accepted");
    wait_state(&c, &failed, CommandState::Error).await;
    let st = polled(&c, &failed).await;
    assert!(st.log.contains("Error"), "{}", st.log);
    assert!(
        find(&c, "demo-general-0000000000e").await.is_none(),
        "a failed create leaves nothing"
    );

    sim.update_faults(|f| {
        f.command_error_rate = 0.0;
        f.command_cancel_rate = 1.0;
    });
    let cancelled = create(&c, "demo-general-0000000000c")
        .await
        .expect("accepted");
    wait_state(&c, &cancelled, CommandState::Cancelled).await;
    assert!(find(&c, "demo-general-0000000000c").await.is_none());
}

#[tokio::test]
async fn fault_queue_empty() {
    let sim = start_sim(14, Quota::default()).await;
    let c = client(&sim);
    let cmd = create(&c, "demo-general-00000000001")
        .await
        .expect("create");
    sim.update_faults(|f| f.queue_empty = true);
    assert_eq!(
        c.command_status(&cmd).await.expect("[]"),
        Polled::Unreported
    );
    sim.update_faults(|f| f.queue_empty = false);
    assert_eq!(polled(&c, &cmd).await.id, cmd);
}

#[tokio::test]
async fn fault_vanish_and_listing_lag() {
    let sim = start_sim(15, Quota::default()).await;
    let c = client(&sim);
    let id = sim.seed_server(seed("demo-old"));
    assert!(find(&c, "demo-old").await.is_some());
    assert!(sim.vanish(&id));
    assert!(find(&c, "demo-old").await.is_none(), "vanished out of band");
    assert!(!sim.vanish(&id));

    sim.update_faults(|f| f.listing_lag_ms = 600);
    create(&c, "demo-general-0000000000f")
        .await
        .expect("create");
    assert!(
        find(&c, "demo-general-0000000000f").await.is_none(),
        "hidden by the lag"
    );
    eventually("server to be listed after the lag", || async {
        find(&c, "demo-general-0000000000f").await.map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn faults_are_adjustable_over_http() {
    let sim = start_sim(16, Quota::default()).await;
    let http = {
        kamatera_ca_provider::kamatera::install_crypto_provider();
        reqwest::Client::new()
    };
    let resp = http
        .put(format!("{}/_sim/faults", sim.url()))
        .json(&json!({"endpoints": {"list_servers": {"error_rate": 1.0}}, "queue_empty": true}))
        .send()
        .await
        .expect("put faults");
    assert_eq!(resp.status().as_u16(), 200);
    let e = client(&sim)
        .list_servers("")
        .await
        .expect_err("now failing");
    assert_eq!(e.class, ErrorClass::Transient);
    let state: Value = http
        .get(format!("{}/_sim/state", sim.url()))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(state["requests"]["list_servers"], 3);
    assert_eq!(state["faults"]["queue_empty"], true);

    let bad = http
        .put(format!("{}/_sim/faults", sim.url()))
        .body("{\"queue_empty\": \"sometimes\"}")
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status().as_u16(), 400);
}

/// Runs the same script against a fresh simulator and returns what the client saw.
async fn scripted_run(seed: u64) -> Vec<String> {
    let sim = start_sim(seed, Quota::default()).await;
    sim.set_endpoint_faults(
        Endpoint::ServerTags,
        EndpointFaults {
            error_rate: 0.5,
            ..Default::default()
        },
    );
    let c = client_with(&sim, DEMO_SECRET, 1, Duration::from_secs(5));
    let mut seen = Vec::new();
    for i in 0..6 {
        let cmd = create(&c, &format!("demo-general-0000000000{i}"))
            .await
            .expect("create");
        seen.push(cmd);
    }
    for s in c.list_servers("").await.expect("list") {
        seen.push(s.id.clone());
        seen.push(match c.server_tags(&s.id).await {
            Ok(t) => t.join(","),
            Err(e) => format!("error: {}", e.class.as_str()),
        });
    }
    seen
}

#[tokio::test]
async fn deterministic_with_a_fixed_seed() {
    let a = scripted_run(42).await;
    let b = scripted_run(42).await;
    assert_eq!(a, b);
    assert!(
        a.iter().any(|s| s.starts_with("error")),
        "the 50% fault fired: {a:?}"
    );
    assert!(
        a.iter().any(|s| s.starts_with("k8sca-")),
        "and sometimes did not: {a:?}"
    );
    let c = scripted_run(43).await;
    assert_ne!(a, c, "another seed gives other ids");
}
