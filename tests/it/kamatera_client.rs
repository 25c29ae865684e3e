//! The Kamatera REST client against a real HTTP server on loopback (wiremock): requests, response
//! shapes, retries, error classes, and secret hygiene.

use std::time::Duration;

use kamatera_ca_provider::kamatera::{
    Billing, Client, ClientSettings, CommandState, CreateServer, ErrorClass, Polled, Power,
    RetryPolicy,
};
use kamatera_ca_provider::secret::Secret;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SECRET: &str = "api-secret-Q7X9";

fn client_for(server: &MockServer, attempts: u32, timeout: Duration) -> Client {
    Client::new(ClientSettings {
        // A trailing slash must be tolerated.
        base_url: format!("{}/", server.uri()),
        client_id: "client-1".into(),
        secret: Secret::new(SECRET),
        timeouts: kamatera_ca_provider::kamatera::Timeouts::uniform(timeout),
        retry: RetryPolicy::immediate(attempts),
        metrics: Default::default(),
        in_process: None,
    })
    .expect("client")
}

fn client(server: &MockServer) -> Client {
    client_for(server, 4, Duration::from_secs(5))
}

/// What a node group's create requests carry (owned; [`Spec::request`] borrows it).
struct Spec {
    password: Option<Secret>,
    ssh_key: String,
    disks: Vec<String>,
    networks: Vec<String>,
    script: Option<Secret>,
    tags: Vec<String>,
}

impl Spec {
    fn request<'a>(&'a self, name: &'a str) -> CreateServer<'a> {
        CreateServer {
            name,
            password: self.password.as_ref(),
            ssh_key: &self.ssh_key,
            datacenter: "US-NY2",
            image: "ubuntu_server_24.04_64-bit",
            cpu: "2B",
            ram_mb: 4096,
            disks: &self.disks,
            networks: &self.networks,
            daily_backup: false,
            managed: true,
            billing: Billing::Monthly,
            monthly_package: "t5000",
            script: self.script.as_ref(),
            tags: &self.tags,
            power_on: true,
        }
    }
}

fn server_config() -> Spec {
    Spec {
        password: None,
        ssh_key: "ssh-ed25519 AAAA me".into(),
        disks: vec!["size=40".into(), "size=100".into()],
        networks: vec!["name=wan,ip=auto".into(), "name=lan-1,ip=auto".into()],
        script: Some(Secret::new("#!/bin/sh\necho script-SECRET-7\n")),
        tags: vec!["k8sca-demo".into(), "k8scang-general".into()],
    }
}

/// Answers `times` requests to `endpoint` with `status` and a JSON body (the count is checked
/// when the server drops).
async fn answer(
    server: &MockServer,
    endpoint: &str,
    status: u16,
    body: serde_json::Value,
    times: u64,
) {
    Mock::given(path(endpoint))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .expect(times)
        .mount(server)
        .await;
}

fn requests_to(reqs: &[Request], p: &str) -> usize {
    reqs.iter().filter(|r| r.url.path() == p).count()
}

#[tokio::test]
async fn list_servers_sends_auth_and_parses_power() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/service/servers"))
        .and(header("AuthClientId", "client-1"))
        .and(header("AuthSecret", SECRET))
        .and(header("Accept", "application/json"))
        .and(header("Content-Type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "A", "name": "demo-general-aaaaaaaaaaa", "datacenter": "US-NY2", "power": "on"},
            {"id": "B", "name": "demo-general-bbbbbbbbbbb", "datacenter": "US-NY2", "power": "off"},
            {"id": "C", "name": "demo-x", "datacenter": "EU", "power": "suspended"},
            {"id": "D", "name": "other-server", "datacenter": "EU", "power": "on"},
        ])))
        .expect(1)
        .mount(&server)
        .await;

    let servers = client(&server).list_servers("demo-").await.expect("list");
    assert_eq!(servers.len(), 3, "the name prefix filters other-server out");
    assert_eq!(servers[0].id, "A");
    assert_eq!(servers[0].name, "demo-general-aaaaaaaaaaa");
    assert_eq!(servers[0].datacenter, "US-NY2");
    assert_eq!(servers[0].power, Power::On);
    assert_eq!(servers[1].power, Power::Off);
    assert_eq!(servers[2].power, Power::Unknown("suspended".into()));

    let reqs = server.received_requests().await.expect("recorded");
    let ua = reqs[0]
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ua.starts_with("kamatera-ca-provider/"), "user agent {ua:?}");
}

#[tokio::test]
async fn list_servers_rejects_bad_shapes() {
    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "A", "power": "on"}])))
        .mount(&server)
        .await;
    let err = client(&server).list_servers("").await.expect_err("no name");
    assert_eq!(err.class, ErrorClass::BadResponse);
    assert!(
        err.to_string().contains("has no string name or id"),
        "{err}"
    );

    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"servers": []})))
        .mount(&server)
        .await;
    let err = client(&server)
        .list_servers("")
        .await
        .expect_err("not an array");
    assert_eq!(err.class, ErrorClass::BadResponse);
}

#[tokio::test]
async fn server_tags_by_id_in_both_field_spellings() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/server/tags"))
        .and(body_json(json!({"id": "srv-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "srv-1", "tagName": "k8sca-demo"},
            {"id": "srv-1", "tag name": "k8scang-general"},
        ])))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/server/tags"))
        .and(body_json(json!({"id": "srv-2"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(
        c.server_tags("srv-1").await.expect("tags"),
        vec!["k8sca-demo", "k8scang-general"]
    );
    assert!(c.server_tags("srv-2").await.expect("no tags").is_empty());
}

#[tokio::test]
async fn server_tags_500_is_retried_then_fails() {
    let server = MockServer::start().await;
    answer(
        &server,
        "/server/tags",
        500,
        json!({"message": "Failed to run command method (serverTags)"}),
        4,
    )
    .await;
    let err = client(&server).server_tags("x").await.expect_err("500");
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(
        err.to_string()
            .contains("Failed to run command method (serverTags)"),
        "{err}"
    );
    assert!(
        err.detail().contains("after 4 attempts"),
        "{}",
        err.detail()
    );
}

#[tokio::test]
async fn create_sends_the_fixed_body_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/service/server"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(["4242"])))
        .expect(1)
        .mount(&server)
        .await;
    let cfg = server_config();
    let id = client(&server)
        .create_server(cfg.request("demo-general-0123456789a"))
        .await
        .expect("create");
    assert_eq!(id, "4242");

    let reqs = server.received_requests().await.expect("recorded");
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).expect("json body");
    assert_eq!(
        body,
        json!({
            "name": "demo-general-0123456789a",
            "password": "__generate__",
            "passwordValidate": "__generate__",
            "ssh-key": "ssh-ed25519 AAAA me",
            "datacenter": "US-NY2",
            "image": "ubuntu_server_24.04_64-bit",
            "cpu": "2B",
            "ram": "4096",
            "disk": "size=40 size=100",
            "dailybackup": "no",
            "managed": "yes",
            "network": "name=wan,ip=auto name=lan-1,ip=auto",
            "quantity": 1,
            "billingcycle": "monthly",
            "monthlypackage": "t5000",
            "poweronaftercreate": "yes",
            "script-file": "#!/bin/sh\necho script-SECRET-7\n",
            "userdata-file": "",
            "tag": "k8sca-demo k8scang-general",
        })
    );
    assert!(
        body.get("billingCycle").is_none(),
        "upstream's camelCase key is not sent"
    );
}

#[tokio::test]
async fn create_accepts_every_id_shape() {
    let cfg = server_config();
    for (answer, expected) in [
        (json!(["11"]), "11"),
        (json!("12"), "12"),
        (json!([13]), "13"),
        (json!(14), "14"),
        (
            json!({"commandIds": ["15"], "password": "Gen3rated-PW!"}),
            "15",
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(path("/service/server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer.clone()))
            .mount(&server)
            .await;
        let id = client(&server)
            .create_server(cfg.request("n-00000000000"))
            .await
            .unwrap_or_else(|e| panic!("{answer}: {e}"));
        assert_eq!(id, expected, "{answer}");
    }
}

#[tokio::test]
async fn create_is_never_retried_on_500_or_timeout() {
    let cfg = server_config();
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server",
        500,
        json!({"message": "Failed to run command method (createServer)"}),
        1,
    )
    .await;
    let err = client(&server)
        .create_server(cfg.request("n-00000000000"))
        .await
        .expect_err("500");
    assert_eq!(err.class, ErrorClass::Transient);
    server.verify().await;

    let server = MockServer::start().await;
    Mock::given(path("/service/server"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!(["1"]))
                .set_delay(Duration::from_secs(2)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let err = client_for(&server, 5, Duration::from_millis(200))
        .create_server(cfg.request("n-00000000000"))
        .await
        .expect_err("timeout");
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn create_quota_message_is_classified() {
    let cfg = server_config();
    let server = MockServer::start().await;
    Mock::given(path("/service/server"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"json_decode_error": null, "message": "Server quota exceeded for this account (31)"}),
        ))
        .mount(&server)
        .await;
    let err = client(&server)
        .create_server(cfg.request("n-00000000000"))
        .await
        .expect_err("quota");
    assert_eq!(err.class, ErrorClass::QuotaOrCapacity);
    assert!(err.is_quota());
    assert!(err.to_string().contains("Server quota exceeded"), "{err}");
}

#[tokio::test]
async fn secrets_never_reach_error_messages() {
    let mut cfg = server_config();
    cfg.password = Some(Secret::new("RootPW-8d7f"));
    let server = MockServer::start().await;
    // An API that echoes what it was sent, secrets included.
    Mock::given(path("/service/server"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "message": format!("invalid flag value (password=RootPW-8d7f) secret={SECRET} script=echo script-SECRET-7")
        })))
        .mount(&server)
        .await;
    let err = client(&server)
        .create_server(cfg.request("n-00000000000"))
        .await
        .expect_err("400");
    assert_eq!(err.class, ErrorClass::InvalidRequest);
    for shown in [
        err.to_string(),
        err.detail().to_string(),
        format!("{err:?}"),
    ] {
        for secret in ["RootPW-8d7f", SECRET, "script-SECRET-7"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("redacted"), "{shown}");
    }
    let client_debug = format!("{:?}", client(&server));
    assert!(!client_debug.contains(SECRET), "{client_debug}");
}

#[tokio::test]
async fn power_and_terminate_by_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/service/server/poweron"))
        .and(body_json(json!({"id": "srv-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(["101"])))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/service/server/poweroff"))
        .and(body_json(json!({"id": "srv-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(["102"])))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/service/server/terminate"))
        .and(body_json(json!({"id": "srv-1", "force": true})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(["103"])))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.power_on("srv-1").await.expect("on"), "101");
    assert_eq!(c.power_off("srv-1").await.expect("off"), "102");
    assert_eq!(c.terminate("srv-1").await.expect("terminate"), "103");
}

#[tokio::test]
async fn mutating_calls_retry_on_429_only() {
    let server = MockServer::start().await;
    Mock::given(path("/service/server/poweroff"))
        .respond_with(ResponseTemplate::new(429).set_body_string("slow down"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(path("/service/server/poweroff"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(["7"])))
        .mount(&server)
        .await;
    Mock::given(path("/service/server/terminate"))
        .respond_with(ResponseTemplate::new(502).set_body_string("Bad Gateway"))
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.power_off("s").await.expect("after 429s"), "7");
    let err = c.terminate("s").await.expect_err("502");
    assert_eq!(err.class, ErrorClass::Transient);
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(requests_to(&reqs, "/service/server/poweroff"), 3);
    assert_eq!(
        requests_to(&reqs, "/service/server/terminate"),
        1,
        "a 502 may have been executed"
    );
}

#[tokio::test]
async fn mutating_call_retries_when_the_connection_never_opened() {
    // Bind a port, then close it: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let c = Client::new(ClientSettings {
        base_url: format!("http://{addr}"),
        client_id: "c".into(),
        secret: Secret::new(SECRET),
        timeouts: kamatera_ca_provider::kamatera::Timeouts::uniform(Duration::from_secs(2)),
        retry: RetryPolicy::immediate(3),
        metrics: Default::default(),
        in_process: None,
    })
    .expect("client");
    let err = c.power_on("s").await.expect_err("refused");
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.to_string().contains("could not connect"), "{err}");
    assert!(
        err.detail().contains("after 3 attempts"),
        "{}",
        err.detail()
    );
}

#[tokio::test]
async fn not_found_is_classified_and_not_retried() {
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server/terminate",
        500,
        json!({"message": "No servers found (name='x')"}),
        1,
    )
    .await;
    let err = client(&server).terminate("x").await.expect_err("not found");
    assert_eq!(err.class, ErrorClass::NotFound);
}

/// The queue, answering each id alone as the server does (`?id=<one id>`).
async fn queue_answers(server: &MockServer, answers: Vec<(&str, u16, serde_json::Value)>) {
    for (id, status, body) in answers {
        Mock::given(method("GET"))
            .and(path("/service/queue"))
            .and(query_param("id", id))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(server)
            .await;
    }
}

fn status_of(p: Polled) -> kamatera_ca_provider::kamatera::CommandStatus {
    match p {
        Polled::Status(s) => s,
        Polled::Unreported => panic!("unreported"),
    }
}

#[tokio::test]
async fn command_status_asks_one_id_per_request_and_parses_it() {
    let server = MockServer::start().await;
    queue_answers(
        &server,
        vec![
            ("1", 200, json!([{"id": 1, "status": "pending"}])),
            ("2", 200, json!([{"id": "2", "status": "executing"}])),
            ("3", 200, json!([{"id": 3, "status": "progress", "log": "Name: demo-1\nCreating..."}])),
            ("4", 200, json!([{"id": 4, "status": "complete", "log": "Name: demo-1\nPassword: Xy12!!\nDone"}])),
            ("5", 200, json!([{"id": 5, "status": "error", "log": "disk image not found"}])),
            ("6", 200, json!([{"id": 6, "status": "cancelled"}])),
            ("7", 200, json!([{"id": 7, "status": "paused"}])),
            // Without an id, matched by position.
            ("a", 200, json!([{"status": "complete"}])),
        ],
    )
    .await;
    let c = client(&server);
    let mut states = Vec::new();
    for id in 1..=7 {
        let st = status_of(c.command_status(&id.to_string()).await.expect("status"));
        assert_eq!(st.id, id.to_string());
        states.push(st);
    }
    assert_eq!(
        states.iter().map(|s| s.state.clone()).collect::<Vec<_>>(),
        vec![
            CommandState::Pending,
            CommandState::Executing,
            CommandState::Progress,
            CommandState::Complete,
            CommandState::Error,
            CommandState::Cancelled,
            CommandState::Unknown("paused".into()),
        ]
    );
    assert_eq!(states[2].log, "Name: demo-1\nCreating...");
    assert!(
        !states[3].log.contains("Xy12"),
        "password line kept: {}",
        states[3].log
    );
    assert_eq!(states[4].log, "disk image not found");
    let a = status_of(c.command_status("a").await.expect("positional"));
    assert_eq!((a.id.as_str(), a.state), ("a", CommandState::Complete));
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(reqs.len(), 8, "one request per id, no retries");
    for r in &reqs {
        let ids: Vec<String> = r
            .url
            .query_pairs()
            .filter(|(k, _)| k == "id")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(ids.len(), 1, "{}", r.url);
        assert!(!ids[0].contains(' '), "never a batch: {}", r.url);
        assert!(
            r.url.query_pairs().all(|(k, _)| k != "wait" && k != "log"),
            "wait and log empty the answer: {}",
            r.url
        );
    }
}

#[tokio::test]
async fn a_command_the_upstream_does_not_report_is_unreported_not_an_error() {
    let server = MockServer::start().await;
    queue_answers(
        &server,
        vec![
            // Not started yet: the upstream's 404, passed on with no message.
            ("fresh", 404, json!({"json_decode_error": null})),
            // The same shape with another upstream status.
            ("odd", 500, json!({"json_decode_error": null})),
            // The upstream's empty body: `[]` with HTTP 200.
            ("empty", 200, json!([])),
            // A generic failure of the server (upstream unreachable): nothing is known.
            (
                "down",
                500,
                json!({"message": "Failed to run command method (getQueue)"}),
            ),
            // Another command's status: a lie, not this one's.
            ("mixed", 200, json!([{"id": "other", "status": "complete"}])),
        ],
    )
    .await;
    let c = client_for(&server, 2, Duration::from_secs(5));
    for id in ["fresh", "odd", "empty"] {
        assert_eq!(
            c.command_status(id).await.expect(id),
            Polled::Unreported,
            "{id}"
        );
    }
    let down = c.command_status("down").await.expect_err("generic 500");
    assert_eq!(down.class, ErrorClass::Transient);
    let mixed = c.command_status("mixed").await.expect_err("wrong command");
    assert_eq!(mixed.class, ErrorClass::BadResponse);
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(
        reqs.len(),
        6,
        "refusals are not retried; the generic 500 is (2 attempts)"
    );
}

#[tokio::test]
async fn reads_retry_on_5xx_and_plain_text_504_then_fail() {
    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(504).set_body_string("Gateway Timeout"))
        .expect(3)
        .mount(&server)
        .await;
    let err = client_for(&server, 3, Duration::from_secs(5))
        .list_servers("")
        .await
        .expect_err("504");
    assert_eq!(err.class, ErrorClass::Transient);
    assert!(err.to_string().contains("HTTP 504"), "{err}");
    assert!(err.detail().contains("Gateway Timeout"), "{}", err.detail());
}

#[tokio::test]
async fn reads_recover_after_transient_errors() {
    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy error</html>"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let servers = client(&server)
        .list_servers("")
        .await
        .expect("third try works");
    assert!(servers.is_empty());
    assert_eq!(server.received_requests().await.expect("recorded").len(), 3);
}

#[tokio::test]
async fn reads_retry_on_timeout() {
    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(2)),
        )
        .expect(2)
        .mount(&server)
        .await;
    let err = client_for(&server, 2, Duration::from_millis(150))
        .list_servers("")
        .await
        .expect_err("timeout");
    assert_eq!(err.class, ErrorClass::Transient);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/servers",
        400,
        json!({"message": "missing required flag (name)"}),
        1,
    )
    .await;
    let err = client(&server).list_servers("").await.expect_err("400");
    assert_eq!(err.class, ErrorClass::InvalidRequest);
    assert!(
        err.to_string().contains("missing required flag (name)"),
        "{err}"
    );
}

#[tokio::test]
async fn auth_failures_in_every_shape() {
    // By id, the upstream's text with HTTP 500 (fact sheet §5).
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server/poweron",
        500,
        json!({"message": "you are not logged in (1)"}),
        1,
    )
    .await;
    // The options by datacenter: the upstream's body as a JSON string, HTTP 500.
    Mock::given(path("/service/server"))
        .and(query_param("datacenter", "1"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"message": "{\"errors\":[{\"code\":1,\"info\":\"you are not logged in\"}]}"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    // 200 with an errors object, as proxied GETs answer.
    answer(
        &server,
        "/service/servers",
        200,
        json!({"errors": [{"code": 1, "info": "you are not logged in"}]}),
        1,
    )
    .await;
    // A bare 403.
    Mock::given(path("/service/queue"))
        .respond_with(ResponseTemplate::new(403))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let e1 = c.power_on("s").await.expect_err("401");
    assert_eq!(e1.class, ErrorClass::Unauthorized);
    assert!(e1.to_string().contains("you are not logged in (1)"), "{e1}");
    let e2 = c.list_servers("").await.expect_err("200 errors");
    assert_eq!(e2.class, ErrorClass::Unauthorized);
    let e3 = c.command_status("1").await.expect_err("403");
    assert_eq!(e3.class, ErrorClass::Unauthorized);
    assert!(e3.to_string().contains("refused the credentials"), "{e3}");
    let e4 = c
        .datacenters()
        .await
        .expect_err("500 with the upstream body");
    assert_eq!(e4.class, ErrorClass::Unauthorized);
    assert!(!e1.may_have_been_processed() && !e4.may_have_been_processed());
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_cap() {
    let server = MockServer::start().await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(path("/service/servers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    client(&server).list_servers("").await.expect("after 429");
    assert_eq!(server.received_requests().await.expect("recorded").len(), 2);
}

#[tokio::test]
async fn options_endpoints() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/service/server"))
        .and(query_param("datacenter", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "US-NY2", "name": "New York", "category": "America", "subCategory": "US"},
            {"id": "EU", "name": "Amsterdam", "category": "Europe", "subCategory": "NL"},
        ])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/service/server"))
        .and(query_param("images", "1"))
        .and(query_param("datacenter", "US-NY2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": "US-NY2:6000C29a", "description": "ubuntu_server_24.04_64-bit", "datacenter": "US-NY2"},
        ])))
        .mount(&server)
        .await;
    let c = client(&server);
    let dcs = c.datacenters().await.expect("datacenters");
    assert_eq!(dcs.len(), 2);
    assert_eq!(
        (dcs[0].id.as_str(), dcs[0].name.as_str()),
        ("US-NY2", "New York")
    );
    let images = c.images("US-NY2").await.expect("images");
    assert_eq!(images[0].id, "US-NY2:6000C29a");
    assert_eq!(images[0].description, "ubuntu_server_24.04_64-bit");
}

/// The info endpoint answering by id and by name as the server does.
async fn info_answers(
    server: &MockServer,
    by_id: (u16, serde_json::Value),
    by_name: Option<serde_json::Value>,
) {
    Mock::given(method("POST"))
        .and(path("/service/server/info"))
        .and(body_json(json!({"id": "srv-1"})))
        .respond_with(ResponseTemplate::new(by_id.0).set_body_json(by_id.1))
        .mount(server)
        .await;
    if let Some(answer) = by_name {
        Mock::given(method("POST"))
            .and(path("/service/server/info"))
            .and(body_json(
                json!({"name": "k8s-pool\\.x_1-0123456789a", "allow-no-servers": "yes"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .mount(server)
            .await;
    }
}

const LISTED: &str = "k8s-pool.x_1-0123456789a";

fn info_of(id: &str) -> serde_json::Value {
    json!([{"id": id, "name": LISTED, "datacenter": "EU", "power": "on", "cpu": "2B", "ram": 4096,
            "priceMonthlyOn": "20.0", "priceHourlyOn": "0.03", "priceHourlyOff": "0.03"}])
}

#[tokio::test]
async fn a_lookup_needs_both_paths_to_call_a_server_absent() {
    use kamatera_ca_provider::kamatera::{AbsenceSign, Lookup};
    let refused = (500, json!({"message": "Server not found (6)"}));
    // The id refused with the upstream's text, the exact escaped name matches nothing.
    let server = MockServer::start().await;
    info_answers(&server, refused.clone(), Some(json!([]))).await;
    let c = client(&server);
    assert_eq!(
        c.lookup_server("srv-1", LISTED).await.expect("lookup"),
        Lookup::Absent(AbsenceSign::IdAndName)
    );
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(
        reqs.len(),
        2,
        "one request per path, the refusal not retried"
    );

    // A name that cannot be asked for exactly: the id's refusal stands alone.
    assert_eq!(
        c.lookup_server("srv-1", "weird(name)")
            .await
            .expect("lookup"),
        Lookup::Absent(AbsenceSign::IdOnly)
    );

    // The name path still lists it under the same id: it exists.
    let server = MockServer::start().await;
    info_answers(&server, refused.clone(), Some(info_of("srv-1"))).await;
    let found = client(&server)
        .lookup_server("srv-1", LISTED)
        .await
        .expect("lookup");
    assert!(matches!(found, Lookup::Exists(s) if s.id == "srv-1"));

    // ... under another id: the paths disagree, nothing is known.
    let server = MockServer::start().await;
    info_answers(&server, refused.clone(), Some(info_of("srv-2"))).await;
    let e = client(&server)
        .lookup_server("srv-1", LISTED)
        .await
        .expect_err("disagree");
    assert_eq!(e.class, ErrorClass::BadResponse);

    // The id path finds it: it exists, the name is not asked.
    let server = MockServer::start().await;
    info_answers(&server, (200, info_of("srv-1")), None).await;
    let found = client(&server)
        .lookup_server("srv-1", LISTED)
        .await
        .expect("lookup");
    assert!(matches!(found, Lookup::Exists(s) if s.name == LISTED));

    // No sign at all: generic failures, gateways, rate limits, timeouts, auth.
    for (status, body) in [
        (
            500,
            json!({"message": "Failed to run command method (serversInfo)"}),
        ),
        (500, json!({"message": "json decode error: Syntax error"})),
        (502, json!({"json_decode_error": "Syntax error"})),
        (429, json!({"message": "Too Many Attempts."})),
        (500, json!({"message": "you are not logged in (1)"})),
    ] {
        let server = MockServer::start().await;
        info_answers(&server, (status, body.clone()), Some(json!([]))).await;
        let e = client_for(&server, 2, Duration::from_secs(5))
            .lookup_server("srv-1", LISTED)
            .await
            .expect_err("no sign");
        assert!(
            !matches!(e.class, ErrorClass::Refused | ErrorClass::NotFound),
            "{status} {body}: {:?}",
            e.class
        );
        let reqs = server.received_requests().await.expect("recorded");
        assert!(
            reqs.iter()
                .all(|r| !String::from_utf8_lossy(&r.body).contains("allow-no-servers")),
            "the name path is asked only after the id refused"
        );
    }
    let server = MockServer::start().await;
    Mock::given(path("/service/server/info"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let e = client_for(&server, 1, Duration::from_millis(300))
        .lookup_server("srv-1", LISTED)
        .await
        .expect_err("timeout");
    assert_eq!(e.class, ErrorClass::Transient);
}

#[tokio::test]
async fn refusals_with_a_reason_are_definite_and_generic_failures_are_not() {
    let spec = server_config();
    // The upstream refused the create, with its text: nothing was bought.
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server",
        500,
        json!({"json_decode_error": null, "message": "Invalid CPU 3Q (7)"}),
        1,
    )
    .await;
    let e = client(&server)
        .create_server(spec.request("k8s-a"))
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::Refused);
    assert!(!e.may_have_been_processed(), "{e}");
    assert!(e.to_string().contains("Invalid CPU 3Q (7)"), "{e}");

    // The server's generic text covers an upstream that timed out mid-create: maybe bought.
    for body in [
        json!({"message": "Failed to run command method (createServer)"}),
        json!({"json_decode_error": null, "message": ""}),
        json!({"json_decode_error": "Syntax error"}),
        json!({"message": "Invalid response from server: {}", "res": {}}),
    ] {
        let server = MockServer::start().await;
        answer(&server, "/service/server", 500, body.clone(), 1).await;
        let e = client(&server)
            .create_server(spec.request("k8s-a"))
            .await
            .expect_err("500");
        assert!(e.may_have_been_processed(), "{body}: {e}");
    }

    // A power change the upstream refused by id: definite, and not retried.
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server/poweroff",
        500,
        json!({"message": "Server is already powered off (15)"}),
        1,
    )
    .await;
    let e = client(&server)
        .power_off("srv-1")
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::Refused);
    assert!(!e.may_have_been_processed());

    // Laravel's own error page: the route never ran.
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server/terminate",
        500,
        json!({"error": true, "message": "The GET method is not supported for this route. Supported methods: POST."}),
        1,
    )
    .await;
    let e = client(&server)
        .terminate("srv-1")
        .await
        .expect_err("not routed");
    assert!(!e.may_have_been_processed(), "{e}");
}

#[tokio::test]
async fn each_kind_of_request_has_its_own_timeout() {
    use kamatera_ca_provider::kamatera::Timeouts;
    let server = MockServer::start().await;
    for p in [
        "/service/servers",
        "/service/server",
        "/service/server/poweron",
    ] {
        let body = if p == "/service/servers" {
            json!([])
        } else {
            json!(["77"])
        };
        Mock::given(path(p))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(body)
                    .set_delay(Duration::from_millis(1500)),
            )
            .mount(&server)
            .await;
    }
    let c = Client::new(ClientSettings {
        base_url: server.uri(),
        client_id: "client-1".into(),
        secret: Secret::new(SECRET),
        timeouts: Timeouts {
            read: Duration::from_millis(500),
            power: Duration::from_secs(5),
            create: Duration::from_secs(5),
        },
        retry: RetryPolicy::immediate(1),
        metrics: Default::default(),
        in_process: None,
    })
    .expect("client");
    let spec = server_config();
    assert_eq!(
        c.create_server(spec.request("k8s-a"))
            .await
            .expect("create waits"),
        "77"
    );
    assert_eq!(c.power_on("srv-1").await.expect("power waits"), "77");
    let e = c.list_servers("").await.expect_err("read times out");
    assert!(e.to_string().contains("timed out"), "{e}");
}

/// The real server may take a minute for a create (several upstream calls, no timeout of its
/// own): with the default timeouts, a create answered after 61 s is accepted, not uncertain;
/// and one answered after the create timeout (5 minutes) is uncertain. Against the simulator in
/// process, on a paused clock: the minute passes at once.
#[tokio::test(start_paused = true)]
async fn a_create_answered_after_a_minute_is_accepted() {
    use kamatera_ca_provider::sim::{self, Endpoint, EndpointFaults, SimConfig};
    let sim = sim::in_process(SimConfig::default());
    let client = || crate::common::in_process_client(&sim);
    let delay = |ms: u64| {
        sim.set_endpoint_faults(
            Endpoint::CreateServer,
            EndpointFaults {
                answer_delay_ms: ms,
                ..EndpointFaults::default()
            },
        )
    };
    let spec = Spec {
        networks: vec!["name=wan,ip=auto".into()],
        ..server_config()
    };
    delay(61_000);
    let started = tokio::time::Instant::now();
    let id = client()
        .create_server(spec.request("k8s-a"))
        .await
        .expect("accepted");
    assert!(!id.is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(61),
        "the answer was late"
    );
    // Past the 5-minute create timeout: uncertain (maybe bought), never retried.
    delay(301_000);
    let e = client()
        .create_server(spec.request("k8s-b"))
        .await
        .expect_err("timed out");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(e.may_have_been_processed(), "{e:?}");
    assert_eq!(sim.requests(Endpoint::CreateServer), 2, "sent once each");
}
