//! The Kamatera REST client against a real HTTP server on loopback (wiremock): requests, response
//! shapes, retries, error classes, and secret hygiene.

use std::time::Duration;

use kamatera_ca_provider::kamatera::{
    Billing, Client, ClientSettings, CommandState, CreateServer, ErrorClass, Power, RetryPolicy,
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
        timeout,
        retry: RetryPolicy::immediate(attempts),
        metrics: Default::default(),
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
        timeout: Duration::from_secs(2),
        retry: RetryPolicy::immediate(3),
        metrics: Default::default(),
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

#[tokio::test]
async fn command_status_is_batched_and_parsed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/service/queue"))
        .and(query_param("id", "1 2 3 4 5 6 7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 1, "status": "pending"},
            {"id": "2", "status": "executing"},
            {"id": 3, "status": "progress", "log": "Name: demo-1\nCreating..."},
            {"id": 4, "status": "complete", "log": "Name: demo-1\nPassword: Xy12!!\nDone"},
            {"id": 5, "status": "error", "log": "disk image not found"},
            {"id": 6, "status": "cancelled"},
            {"id": 7, "status": "paused"},
        ])))
        .expect(1)
        .mount(&server)
        .await;
    let ids: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
    let st = client(&server).command_status(&ids).await.expect("status");
    let states: Vec<CommandState> = st.iter().map(|s| s.state.clone()).collect();
    assert_eq!(
        states,
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
    assert_eq!(st[1].id, "2");
    assert_eq!(st[2].log, "Name: demo-1\nCreating...");
    assert!(
        !st[3].log.contains("Xy12"),
        "password line kept: {}",
        st[3].log
    );
    assert_eq!(st[4].log, "disk image not found");
}

#[tokio::test]
async fn command_status_positional_and_empty_answers() {
    let server = MockServer::start().await;
    Mock::given(path("/service/queue"))
        .and(query_param("id", "a b"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"status": "complete"}, {"status": "error"}
        ])))
        .mount(&server)
        .await;
    Mock::given(path("/service/queue"))
        .and(query_param("id", "zzz"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let c = client(&server);
    let st = c
        .command_status(&["a".to_string(), "b".to_string()])
        .await
        .expect("status");
    assert_eq!(
        (st[0].id.as_str(), &st[0].state),
        ("a", &CommandState::Complete)
    );
    assert_eq!(
        (st[1].id.as_str(), &st[1].state),
        ("b", &CommandState::Error)
    );
    assert!(
        c.command_status(&["zzz".to_string()])
            .await
            .expect("[]")
            .is_empty()
    );
    assert!(
        c.command_status(&[])
            .await
            .expect("nothing asked")
            .is_empty()
    );
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(reqs.len(), 2, "no request for an empty id list");
}

#[tokio::test]
async fn command_status_splits_long_lists() {
    let server = MockServer::start().await;
    Mock::given(path("/service/queue"))
        .respond_with(|req: &Request| {
            let ids: Vec<serde_json::Value> = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| {
                    v.split(' ')
                        .map(|id| json!({"id": id, "status": "complete"}))
                        .collect()
                })
                .unwrap_or_default();
            ResponseTemplate::new(200).set_body_json(ids)
        })
        .mount(&server)
        .await;
    let ids: Vec<String> = (0..250).map(|i| format!("c{i}")).collect();
    let st = client(&server).command_status(&ids).await.expect("status");
    assert_eq!(st.len(), 250);
    assert_eq!(st[249].id, "c249");
    let reqs = server.received_requests().await.expect("recorded");
    assert_eq!(reqs.len(), 3, "100 ids per request");
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
    // 401 with the JSON-in-a-string body of the create endpoint.
    let server = MockServer::start().await;
    answer(
        &server,
        "/service/server/poweron",
        401,
        json!({"message": "{\"errors\":[{\"code\":1,\"info\":\"you are not logged in\"}]}"}),
        1,
    )
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
    let e3 = c.command_status(&["1".into()]).await.expect_err("403");
    assert_eq!(e3.class, ErrorClass::Unauthorized);
    assert!(e3.to_string().contains("refused the credentials"), "{e3}");
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
