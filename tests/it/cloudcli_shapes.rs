//! The simulator held to the fact sheet of the real cloudcli server
//! (`../shared/reference/cloudcli-server.md`): one test per row of its tables (§0 routes, §4.3
//! create fields and failures, §4.8 options, §5 failure matrix), plus the parsing rules of §2
//! and §4.5 that the client depends on. Each test sends raw HTTP to the simulator and checks the
//! status and body the server would give; where the client reads that path, it also checks what
//! the client makes of it, so a change on either side shows up here.
//!
//! Rows the simulator does not model say so in their test (`capabilities`, `sizes`, `reboot`).

use std::time::Duration;

use kamatera_ca_provider::kamatera::{
    AbsenceSign, Client, ClientSettings, ErrorClass, Lookup, Polled, RetryPolicy, Timeouts,
};
use kamatera_ca_provider::secret::Secret;
use kamatera_ca_provider::sim::{
    self, DEMO_CLIENT_ID, DEMO_SECRET, Endpoint, EndpointFaults, SeedServer, SimHandle, Timing,
};
use serde_json::{Value, json};

use crate::common;

/// The simulator with raw HTTP at hand.
struct Api {
    sim: SimHandle,
    http: reqwest::Client,
}

const GENERIC_CREATE: &str = "Failed to run command method (createServer)";
const NOT_LOGGED_IN: &str = "you are not logged in (1)";
/// The first image's id in every simulated datacenter, without the datacenter.
const IMAGE_ID: &str = "6000C290000000000000000000000000";

/// A create body the server accepts; tests change one field.
fn create_body() -> Value {
    json!({
        "name": "shape-0123456789a", "password": "Secr3t!pw", "datacenter": "US-NY2",
        "image": "ubuntu_server_24.04_64-bit", "cpu": "2B", "ram": "2048",
        "disk": "size=20", "network": "name=wan,ip=auto", "tag": "k8sca-a k8scang-b",
    })
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    if value.is_null() {
        body.as_object_mut().map(|m| m.remove(key));
    } else {
        body[key] = value;
    }
    body
}

impl Api {
    async fn new() -> Api {
        let sim = common::start_sim(Timing::fast(), Default::default()).await;
        kamatera_ca_provider::kamatera::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http");
        Api { sim, http }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn authed(&self, req: reqwest::RequestBuilder, secret: &str) -> reqwest::RequestBuilder {
        req.header("AuthClientId", DEMO_CLIENT_ID)
            .header("AuthSecret", secret)
    }

    async fn post_as(&self, path: &str, body: Value, secret: &str) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.sim.url()))
            .json(&body);
        self.send(self.authed(req, secret)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_as(path, body, DEMO_SECRET).await
    }

    async fn get_as(&self, path: &str, secret: &str) -> (u16, Value) {
        let req = self.http.get(format!("{}{path}", self.sim.url()));
        self.send(self.authed(req, secret)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, DEMO_SECRET).await
    }

    fn client_as(&self, secret: &str) -> Client {
        Client::new(ClientSettings {
            timeouts: Timeouts::uniform(Duration::from_secs(5)),
            retry: RetryPolicy::immediate(2),
            ..ClientSettings::new(
                self.sim.url(),
                DEMO_CLIENT_ID,
                Secret::new(secret),
                Default::default(),
            )
        })
        .expect("client")
    }

    fn client(&self) -> Client {
        self.client_as(DEMO_SECRET)
    }

    fn seed(&self, name: &str, on: bool) -> String {
        self.sim.seed_server(SeedServer {
            name: name.into(),
            datacenter: "US-NY2".into(),
            power_on: on,
            tags: vec!["k8sca-a".into(), "k8scang-b".into()],
            cpu: "2B".into(),
            ram_mb: 2048,
        })
    }

    /// Creates with `body` and returns the command id.
    async fn create(&self, body: Value) -> String {
        let (code, answer) = self.post("/service/server", body).await;
        assert_eq!(code, 200, "{answer}");
        answer[0].as_str().expect("a command id string").to_string()
    }

    /// The simulated server named `name`, from the admin state.
    fn server(&self, name: &str) -> Option<Value> {
        self.sim.snapshot()["servers"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["name"] == name).cloned())
    }

    fn servers(&self) -> usize {
        self.sim.snapshot()["servers"]
            .as_array()
            .map_or(0, Vec::len)
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Sends a create of `shape-0123456789a` (image by description) through the client.
async fn client_create(
    c: &Client,
) -> Result<String, kamatera_ca_provider::kamatera::KamateraError> {
    let (disks, networks) = (["size=20".to_string()], ["name=wan".to_string()]);
    c.create_server(kamatera_ca_provider::kamatera::CreateServer {
        name: "shape-0123456789a",
        password: None,
        ssh_key: "",
        datacenter: "US-NY2",
        image: "ubuntu_server_24.04_64-bit",
        cpu: "2B",
        ram_mb: 2048,
        disks: &disks,
        networks: &networks,
        daily_backup: false,
        managed: false,
        billing: kamatera_ca_provider::kamatera::Billing::Hourly,
        monthly_package: "",
        script: None,
        tags: &[],
        power_on: true,
    })
    .await
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    k.sort();
    k
}

// ---- §0: the routes ----

#[tokio::test]
async fn route_list_servers() {
    let api = Api::new().await;
    api.seed("k8s-list", true);
    let (code, body) = api.get("/service/servers").await;
    assert_eq!(code, 200);
    assert_eq!(keys(&body[0]), ["datacenter", "id", "name", "power"]);
    assert_eq!(body[0]["power"], "on");
    let listed = api.client().list_servers("").await.expect("list");
    assert_eq!(listed[0].name, "k8s-list");
}

#[tokio::test]
async fn route_server_info() {
    let api = Api::new().await;
    let id = api.seed("k8s-info", true);
    let (code, body) = api
        .post("/service/server/info", json!({"name": "k8s-info"}))
        .await;
    assert_eq!(code, 200, "{body}");
    let s = &body[0];
    assert_eq!(s["id"], id.as_str());
    for k in ["priceMonthlyOn", "priceHourlyOn", "priceHourlyOff"] {
        assert!(s[k].is_string(), "{k} is a string: {s}");
    }
    assert_eq!(s["priceHourlyOff"], s["priceHourlyOn"], "the server's bug");
    assert!(s["networks"][0]["network"].is_string());
    // A dry run names what would be read.
    let (_, dry) = api
        .post(
            "/service/server/info",
            json!({"name": "k8s-.*", "dryrun": "yes"}),
        )
        .await;
    assert_eq!(dry, json!({"dryrun": true, "server-names": ["k8s-info"]}));
}

#[tokio::test]
async fn route_create() {
    let api = Api::new().await;
    let (code, body) = api.post("/service/server", create_body()).await;
    assert_eq!(code, 200);
    assert!(
        body[0].is_string(),
        "a list of one command id string: {body}"
    );
    assert_eq!(body.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn route_power() {
    let api = Api::new().await;
    let id = api.seed("k8s-power", true);
    for path in ["/service/server/poweroff", "/service/server/poweron"] {
        let (code, body) = api.post(path, json!({"id": id})).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert!(body[0].is_string(), "{body}");
        api.settle().await;
    }
    // `reboot` shares the template; no client of ours uses it, and the simulator has no route.
    let (code, _) = api.post("/service/server/reboot", json!({"id": id})).await;
    assert_eq!(code, 404, "not simulated");
}

#[tokio::test]
async fn route_terminate() {
    let api = Api::new().await;
    let id = api.seed("k8s-term", true);
    let cmd = api.client().terminate(&id).await.expect("terminate");
    assert!(!cmd.is_empty());
    api.settle().await;
    assert!(api.server("k8s-term").is_none());
}

#[tokio::test]
async fn route_tags() {
    let api = Api::new().await;
    let id = api.seed("k8s-tags", true);
    let (code, body) = api.post("/server/tags", json!({"id": id})).await;
    assert_eq!(code, 200);
    assert_eq!(body[0], json!({"id": id, "tagName": "k8sca-a"}));
    // No `/service` prefix on this one.
    let (code, _) = api.post("/service/server/tags", json!({"id": id})).await;
    assert_eq!(code, 404);
    assert_eq!(
        api.client().server_tags(&id).await.expect("tags"),
        ["k8sca-a", "k8scang-b"]
    );
}

#[tokio::test]
async fn route_queue() {
    let api = Api::new().await;
    let cmd = api.create(create_body()).await;
    let (code, body) = api.get(&format!("/service/queue?id={cmd}")).await;
    assert_eq!(code, 200);
    for k in ["id", "status", "server", "description", "added", "log"] {
        assert!(body[0].get(k).is_some(), "{k}: {body}");
    }
    // Several ids: one value, space-separated, answered in the order given.
    let other = api
        .create(with(create_body(), "name", json!("shape-0123456789b")))
        .await;
    let (code, body) = api.get(&format!("/service/queue?id={other}+{cmd}")).await;
    assert_eq!(code, 200);
    assert_eq!(body[0]["id"].to_string(), other);
    assert_eq!(body[1]["id"].to_string(), cmd);
}

#[tokio::test]
async fn route_options() {
    let api = Api::new().await;
    let (code, body) = api.get("/service/server?datacenter=1").await;
    assert_eq!(code, 200);
    assert_eq!(keys(&body[0]), ["category", "id", "name", "subCategory"]);
}

#[tokio::test]
async fn route_root() {
    let api = Api::new().await;
    // No credentials needed: no upstream call.
    let (code, body) = api.send(api.http.get(format!("{}/", api.sim.url()))).await;
    assert_eq!((code, body), (200, json!({"ready": true})));
}

// ---- §2 and §4.5: how requests are read ----

#[tokio::test]
async fn parsing_json_without_a_json_content_type_is_no_fields() {
    let api = Api::new().await;
    let req = api
        .http
        .post(format!("{}/service/server", api.sim.url()))
        .header("Content-Type", "text/plain")
        .body(create_body().to_string());
    let (code, body) = api.send(api.authed(req, DEMO_SECRET)).await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (name)"))
    );
}

#[tokio::test]
async fn parsing_strings_are_trimmed_and_empty_is_missing() {
    let api = Api::new().await;
    let (code, body) = api
        .post("/service/server", with(create_body(), "image", json!("  ")))
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (image)"))
    );
    let cmd = api
        .create(with(create_body(), "name", json!("  shape-0123456789c ")))
        .await;
    assert!(!cmd.is_empty());
    assert!(api.server("shape-0123456789c").is_some(), "trimmed");
}

#[tokio::test]
async fn parsing_a_trailing_slash_is_redirected() {
    let api = Api::new().await;
    let resp = api
        .http
        .get(format!("{}/service/servers/", api.sim.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 301);
    assert_eq!(
        resp.headers().get("location").and_then(|l| l.to_str().ok()),
        Some("/service/servers")
    );
}

#[tokio::test]
async fn parsing_repeated_query_keys_keep_the_last() {
    let api = Api::new().await;
    let a = api.create(create_body()).await;
    let (code, body) = api.get(&format!("/service/queue?id=999&id={a}")).await;
    assert_eq!(code, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn terminate_force_only_for_true_and_dryrun_for_any_truthy_value() {
    let api = Api::new().await;
    let id = api.seed("k8s-force", true);
    // "1" and "yes" are not true to PHP's loose `== "true"`: a running server is refused.
    for force in [json!("1"), json!(1), json!("yes")] {
        let (code, _) = api
            .post(
                "/service/server/terminate",
                json!({"id": id, "force": force}),
            )
            .await;
        assert_eq!(code, 500, "force {force}");
    }
    // "false" is truthy: a dry run, nothing terminated.
    let (code, body) = api
        .post(
            "/service/server/terminate",
            json!({"id": id, "force": true, "dryrun": "false"}),
        )
        .await;
    assert_eq!((code, &body["dryrun"]), (200, &json!(true)));
    api.settle().await;
    assert!(api.server("k8s-force").is_some());
    let (code, _) = api
        .post(
            "/service/server/terminate",
            json!({"id": id, "force": "true"}),
        )
        .await;
    assert_eq!(code, 200);
}

// ---- §4.3: create fields ----

#[tokio::test]
async fn create_field_name() {
    let api = Api::new().await;
    let (code, body) = api.post("/service/server", json!({})).await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (name)")),
        "the first missing flag only"
    );
}

#[tokio::test]
async fn create_field_password() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "password", Value::Null),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (password)"))
    );
    // An ssh key stands in for it.
    let body = with(
        with(create_body(), "password", Value::Null),
        "ssh-key",
        json!("ssh-ed25519 AAAA me"),
    );
    api.create(body).await;
    // `__generate__` alone generates one (`passwordValidate` is not read).
    let (code, body) = api
        .post(
            "/service/server",
            with(
                with(create_body(), "password", json!("__generate__")),
                "name",
                json!("shape-0123456789d"),
            ),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["password"].as_str().map(str::len), Some(20));
    assert!(body["commandIds"][0].is_string());
}

#[tokio::test]
async fn create_field_datacenter() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "datacenter", Value::Null),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (datacenter)"))
    );
    // Used as given: not upper-cased, so the upstream does not know it.
    let body = with(
        with(create_body(), "datacenter", json!("us-ny2")),
        "image",
        json!(IMAGE_ID),
    );
    let (code, body) = api.post("/service/server", body).await;
    assert_eq!(code, 500);
    assert_eq!(body["json_decode_error"], Value::Null);
    assert!(body.get("json_decode_error").is_some(), "{body}");
}

#[tokio::test]
async fn create_field_image() {
    let api = Api::new().await;
    // Letters and digits: an id in the datacenter.
    api.create(with(create_body(), "image", json!(IMAGE_ID)))
        .await;
    // One `:` whose prefix is another datacenter: an exception, answered generically.
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "image", json!(format!("EU:{IMAGE_ID}"))),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE))
    );
    // Anything else is a description, matched exactly.
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "image", json!("ubuntu_server")),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE))
    );
}

#[tokio::test]
async fn create_field_cpu() {
    let api = Api::new().await;
    api.create(with(create_body(), "cpu", Value::Null)).await;
    api.settle().await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["cpu"],
        "1B",
        "default"
    );
    let (code, body) = api
        .post(
            "/service/server",
            with(
                with(create_body(), "cpu", json!("9Q")),
                "name",
                json!("shape-0123456789e"),
            ),
        )
        .await;
    // Not checked by the server: the upstream's refusal comes back.
    assert_eq!(code, 500);
    assert_eq!(keys(&body), ["json_decode_error", "message"]);
}

#[tokio::test]
async fn create_field_ram() {
    let api = Api::new().await;
    // `"0"` is empty to PHP: the default.
    api.create(with(create_body(), "ram", json!("0"))).await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["ram_mb"],
        1024
    );
}

#[tokio::test]
async fn create_field_disk() {
    let api = Api::new().await;
    for (disk, message) in [
        ("size", "invalid flag value (disk=size)"),
        ("id=4,size=20", "invalid item id: 4 (disk=id=4,size=20)"),
        (
            "id=0,size=20 id=0,size=30",
            "duplicate item id: 0 (disk=id=0,size=20 id=0,size=30)",
        ),
    ] {
        let (code, body) = api
            .post("/service/server", with(create_body(), "disk", json!(disk)))
            .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (400, Some(message)),
            "{disk}"
        );
    }
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "disk", json!("id=1")),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE)),
        "no size"
    );
    // Items without an id take the free ids in order.
    api.create(with(create_body(), "disk", json!("size=40 id=0,size=20")))
        .await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["disks_gb"],
        json!([20, 40])
    );
}

#[tokio::test]
async fn create_field_network() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "network", json!("ip=auto")),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE)),
        "no name"
    );
    api.create(with(
        create_body(),
        "network",
        json!("name=wan name=lan-demo-private"),
    ))
    .await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["networks"],
        json!(["wan", "lan-demo-private"])
    );
}

#[tokio::test]
async fn create_field_yes_no_flags() {
    let api = Api::new().await;
    for key in ["dailybackup", "managed", "poweronaftercreate"] {
        let (code, body) = api
            .post("/service/server", with(create_body(), key, json!("maybe")))
            .await;
        assert_eq!(
            (code, body["message"].as_str()),
            (500, Some(GENERIC_CREATE)),
            "{key}"
        );
    }
    let cmd = api
        .create(with(create_body(), "poweronaftercreate", json!("NO")))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, q) = api.get(&format!("/service/queue?id={cmd}")).await;
        if q[0]["status"] == "complete" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["power"],
        "off"
    );
}

#[tokio::test]
async fn create_field_billingcycle() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "billingcycle", json!("weekly")),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE))
    );
    api.create(with(create_body(), "billingcycle", json!(" Monthly ")))
        .await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["billing"],
        "monthly"
    );
}

#[tokio::test]
async fn create_field_monthlypackage() {
    let api = Api::new().await;
    api.create(with(create_body(), "monthlypackage", json!("t10000")))
        .await;
}

#[tokio::test]
async fn create_field_file_contents() {
    let api = Api::new().await;
    let body = with(
        with(create_body(), "script-file", json!("#!/bin/sh\ntrue\n")),
        "userdata-file",
        json!(""),
    );
    api.create(body).await;
}

#[tokio::test]
async fn create_field_tag() {
    let api = Api::new().await;
    api.create(create_body()).await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["tags"],
        json!(["k8sca-a", "k8scang-b"])
    );
}

#[tokio::test]
async fn create_field_quantity_is_ignored() {
    let api = Api::new().await;
    api.create(with(create_body(), "quantity", json!(3))).await;
    assert_eq!(api.servers(), 1);
}

#[tokio::test]
async fn create_field_anything_else_is_ignored() {
    let api = Api::new().await;
    // The camel-case spelling the in-tree provider sends is not read: hourly stays.
    let body = with(
        with(create_body(), "billingCycle", json!("monthly")),
        "passwordValidate",
        json!("something else"),
    );
    api.create(body).await;
    assert_eq!(
        api.server("shape-0123456789a").expect("created")["billing"],
        "hourly"
    );
}

// ---- §4.3: create failures ----

#[tokio::test]
async fn create_failure_missing_flag() {
    let api = Api::new().await;
    let (code, body) = api
        .post("/service/server", json!({"name": "x", "password": "y"}))
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("missing required flag (datacenter)"))
    );
    let e = api.client().list_servers("").await.map(|_| ()).err();
    assert!(e.is_none(), "unrelated reads unaffected");
}

#[tokio::test]
async fn create_failure_bad_item_syntax() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "network", json!("wan")),
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("invalid flag value (network=wan)"))
    );
}

#[tokio::test]
async fn create_failure_hidden_exception() {
    let api = Api::new().await;
    let (code, body) = api
        .post(
            "/service/server",
            with(create_body(), "managed", json!("sure")),
        )
        .await;
    assert_eq!(code, 500);
    assert_eq!(
        body,
        json!({"message": GENERIC_CREATE}),
        "the detail is hidden"
    );
}

#[tokio::test]
async fn create_failure_upstream_refusal() {
    let api = Api::new().await;
    api.sim.with_state(|s| s.quota.max_servers = Some(0));
    let (code, body) = api.post("/service/server", create_body()).await;
    assert_eq!(code, 500);
    assert_eq!(body["json_decode_error"], Value::Null);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("(31)")),
        "{body}"
    );
}

#[tokio::test]
async fn create_failure_upstream_answer_without_one_id() {
    // The simulated upstream always answers one id; what the client makes of the server's
    // `Invalid response from server` is checked against wiremock: maybe bought.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::path("/service/server"))
        .respond_with(wiremock::ResponseTemplate::new(500).set_body_json(
            json!({"message": "Invalid response from server: [1,2]", "res": [1, 2]}),
        ))
        .mount(&server)
        .await;
    let c = Client::new(ClientSettings::new(
        server.uri(),
        "id",
        Secret::new("s"),
        Default::default(),
    ))
    .expect("client");
    let e = client_create(&c).await.expect_err("500");
    assert!(e.may_have_been_processed(), "{e}");
}

// ---- §4.8: options ----

#[tokio::test]
async fn options_datacenter() {
    let api = Api::new().await;
    let dcs = api.client().datacenters().await.expect("datacenters");
    assert!(dcs.iter().any(|d| d.id == "US-NY2" && d.name == "New York"));
}

#[tokio::test]
async fn options_images() {
    let api = Api::new().await;
    let (code, body) = api.get("/service/server?images=1&datacenter=IL").await;
    assert_eq!(code, 200);
    assert_eq!(
        keys(&body[0]),
        [
            "code",
            "datacenter",
            "id",
            "name",
            "os",
            "osDiskSizeGB",
            "ramMBMin"
        ]
    );
    // Without a datacenter: EU.
    let (_, body) = api.get("/service/server?images=1").await;
    assert_eq!(body[0]["datacenter"], "EU");
    // The client reads the description from `name`.
    let images = api.client().images("US-NY2").await.expect("images");
    assert!(
        images
            .iter()
            .any(|i| i.description == "ubuntu_server_24.04_64-bit")
    );
    // An unknown datacenter: the upstream's error body as a JSON string, HTTP 500.
    let (code, body) = api.get("/service/server?images=1&datacenter=MARS").await;
    assert_eq!(code, 500);
    let inner: Value =
        serde_json::from_str(body["message"].as_str().expect("a string")).expect("JSON inside");
    assert!(inner["errors"].is_array());
}

#[tokio::test]
async fn options_capabilities_and_sizes_are_not_simulated() {
    let api = Api::new().await;
    for q in ["capabilities=1&datacenter=EU", "sizes=1&datacenter=EU"] {
        let (code, body) = api.get(&format!("/service/server?{q}")).await;
        assert_eq!(
            (code, body["message"].as_str()),
            (500, Some("Failed to run command method (getServerOptions)")),
            "{q}"
        );
    }
}

#[tokio::test]
async fn options_bare() {
    let api = Api::new().await;
    let (code, body) = api.get("/service/server").await;
    assert_eq!(code, 200);
    assert_eq!(
        keys(&body),
        [
            "billing",
            "cpu",
            "datacenters",
            "disk",
            "diskImages",
            "networks",
            "ram",
            "traffic"
        ]
    );
}

// ---- §5: the failure matrix ----

#[tokio::test]
async fn matrix_bad_credentials_list_and_bare_options() {
    let api = Api::new().await;
    for path in ["/service/servers", "/service/server"] {
        let (code, body) = api.get_as(path, "wrong").await;
        assert_eq!(code, 200, "{path}");
        assert!(body["errors"].is_array(), "{path}: {body}");
    }
    let e = api
        .client_as("wrong")
        .list_servers("")
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::Unauthorized);
}

#[tokio::test]
async fn matrix_bad_credentials_by_id() {
    let api = Api::new().await;
    let id = api.seed("k8s-auth", true);
    for path in [
        "/service/server/info",
        "/service/server/poweroff",
        "/service/server/terminate",
        "/server/tags",
    ] {
        let (code, body) = api.post_as(path, json!({"id": id}), "wrong").await;
        assert_eq!(
            (code, body),
            (500, json!({"message": NOT_LOGGED_IN})),
            "{path}"
        );
    }
    let e = api
        .client_as("wrong")
        .power_off(&id)
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::Unauthorized);
    assert!(!e.may_have_been_processed());
}

#[tokio::test]
async fn matrix_bad_credentials_by_name() {
    let api = Api::new().await;
    api.seed("k8s-auth", true);
    let (code, body) = api
        .post_as(
            "/service/server/poweroff",
            json!({"name": "k8s-auth"}),
            "wrong",
        )
        .await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some("Failed to run command method (poweroffServer)"))
    );
}

#[tokio::test]
async fn matrix_bad_credentials_create() {
    let api = Api::new().await;
    let by_id = with(create_body(), "image", json!(IMAGE_ID));
    let (code, body) = api.post_as("/service/server", by_id, "wrong").await;
    assert_eq!(
        (code, body),
        (
            500,
            json!({"json_decode_error": null, "message": NOT_LOGGED_IN})
        )
    );
    // An image given as a description is looked up first: generic.
    let (code, body) = api.post_as("/service/server", create_body(), "wrong").await;
    assert_eq!(
        (code, body["message"].as_str()),
        (500, Some(GENERIC_CREATE))
    );
    assert_eq!(api.servers(), 0);
}

#[tokio::test]
async fn matrix_bad_credentials_queue() {
    let api = Api::new().await;
    let cmd = api.create(create_body()).await;
    let (code, body) = api
        .get_as(&format!("/service/queue?id={cmd}"), "wrong")
        .await;
    assert_eq!((code, body), (500, json!({"json_decode_error": null})));
}

#[tokio::test]
async fn matrix_bad_credentials_options_datacenter_and_images() {
    let api = Api::new().await;
    for q in ["datacenter=1", "images=1&datacenter=EU"] {
        let (code, body) = api.get_as(&format!("/service/server?{q}"), "wrong").await;
        assert_eq!(code, 500, "{q}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("not logged in")),
            "{q}: {body}"
        );
    }
    let e = api
        .client_as("wrong")
        .datacenters()
        .await
        .expect_err("refused");
    assert_eq!(e.class, ErrorClass::Unauthorized);
}

#[tokio::test]
async fn matrix_server_id_does_not_exist() {
    let api = Api::new().await;
    for path in [
        "/service/server/info",
        "/service/server/poweron",
        "/service/server/terminate",
        "/server/tags",
    ] {
        let (code, body) = api
            .post(path, json!({"id": "no-such-id", "force": true}))
            .await;
        assert_eq!(code, 500, "{path}");
        assert_eq!(keys(&body), ["message"], "{path}: {body}");
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("No servers found"),
            "the id path has no text of the server's own: {body}"
        );
    }
    // The client reads it as a refusal: not a proof on its own, but a sign.
    let c = api.client();
    let e = c.terminate("no-such-id").await.expect_err("refused");
    assert_eq!(e.class, ErrorClass::Refused);
    assert_eq!(
        c.lookup_server("no-such-id", "k8s-gone-0123456789a")
            .await
            .expect("lookup"),
        Lookup::Absent(AbsenceSign::IdAndName)
    );
    assert_eq!(
        api.sim.requests(Endpoint::ServerInfo),
        3,
        "one raw request, then the lookup by id and by name"
    );
}

#[tokio::test]
async fn matrix_name_matches_nothing_info() {
    let api = Api::new().await;
    let (code, body) = api
        .post("/service/server/info", json!({"name": "k8s-none"}))
        .await;
    assert_eq!(
        (code, body),
        (
            500,
            json!({"message": "No servers found (name='k8s-none')"})
        )
    );
    let (code, body) = api
        .post(
            "/service/server/info",
            json!({"name": "k8s-none", "allow-no-servers": "yes"}),
        )
        .await;
    assert_eq!((code, body), (200, json!([])));
}

#[tokio::test]
async fn matrix_name_matches_nothing_power_terminate_tags() {
    let api = Api::new().await;
    for path in [
        "/service/server/poweron",
        "/service/server/terminate",
        "/server/tags",
    ] {
        let (code, body) = api.post(path, json!({"name": "k8s-none"})).await;
        assert_eq!(
            (code, body),
            (
                500,
                json!({"message": "No servers found (name='k8s-none')"})
            ),
            "{path}"
        );
    }
}

#[tokio::test]
async fn matrix_name_matches_several() {
    let api = Api::new().await;
    api.seed("web-1", false);
    api.seed("webx1", false);
    api.seed("web-10", false);
    // Unescaped and unanchored groups: `web.1` is a pattern; `$` anchors the end.
    let (code, body) = api
        .post("/service/server/info", json!({"name": "web.1"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    let (code, body) = api
        .post("/service/server/poweron", json!({"name": "web.1"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        body.as_array().map(Vec::len),
        Some(2),
        "acts on all of them"
    );
    // `a|b` is "starts with a, or ends with b".
    let (_, body) = api
        .post(
            "/service/server/info",
            json!({"name": "web-1|x1", "dryrun": "1"}),
        )
        .await;
    assert_eq!(body["server-names"], json!(["web-1", "webx1", "web-10"]));
}

#[tokio::test]
async fn matrix_name_matches_several_tags() {
    let api = Api::new().await;
    api.seed("web-1", false);
    api.seed("web-2", false);
    let (code, body) = api.post("/server/tags", json!({"name": "web-.*"})).await;
    assert_eq!(
        (code, body),
        (
            500,
            json!({"message": "Too many matching servers (name='web-.*')"})
        )
    );
}

#[tokio::test]
async fn matrix_both_or_neither_of_id_and_name() {
    let api = Api::new().await;
    let id = api.seed("k8s-both", true);
    for (path, handler) in [
        ("/service/server/info", "serversInfo"),
        ("/service/server/poweroff", "poweroffServer"),
        ("/service/server/terminate", "terminateServer"),
        ("/server/tags", "serverTags"),
    ] {
        for body in [json!({"id": id, "name": "k8s-both"}), json!({})] {
            let (code, answer) = api.post(path, body).await;
            assert_eq!(
                (code, answer["message"].as_str()),
                (
                    500,
                    Some(format!("Failed to run command method ({handler})").as_str())
                ),
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn matrix_command_id_unknown_or_not_yet_visible() {
    let api = Api::new().await;
    api.sim.update_faults(|f| f.queue_lag_ms = 60_000);
    let cmd = api.create(create_body()).await;
    for id in [cmd.as_str(), "424242"] {
        let (code, body) = api.get(&format!("/service/queue?id={id}")).await;
        assert_eq!(
            (code, body),
            (404, json!({"json_decode_error": null})),
            "{id}"
        );
    }
    // One such id fails a whole batch.
    api.sim.update_faults(|f| f.queue_lag_ms = 0);
    let (code, _) = api.get(&format!("/service/queue?id={cmd}%20424242")).await;
    assert_eq!(code, 404);
    // No id at all: nothing asked upstream, `[]`.
    let (code, body) = api.get("/service/queue").await;
    assert_eq!((code, body), (200, json!([])));
    assert_eq!(
        api.client()
            .command_status("424242")
            .await
            .expect("answered"),
        Polled::Unreported
    );
}

#[tokio::test]
async fn matrix_create_validation_and_quota() {
    let api = Api::new().await;
    api.sim.with_state(|s| s.quota.max_servers = Some(0));
    let e = client_create(&api.client()).await.expect_err("quota");
    assert_eq!(e.class, ErrorClass::QuotaOrCapacity);
    assert!(!e.may_have_been_processed());
}

#[tokio::test]
async fn matrix_upstream_down() {
    let api = Api::new().await;
    api.sim.set_endpoint_faults(
        Endpoint::Terminate,
        EndpointFaults {
            error_rate: 1.0,
            ..Default::default()
        },
    );
    let id = api.seed("k8s-down", true);
    let (code, body) = api
        .post(
            "/service/server/terminate",
            json!({"id": id, "force": true}),
        )
        .await;
    assert_eq!(
        (code, body),
        (
            500,
            json!({"message": "Failed to run command method (terminateServer)"})
        )
    );
    let e = api.client().terminate(&id).await.expect_err("generic");
    assert_eq!(e.class, ErrorClass::Transient);
    assert!(e.may_have_been_processed());
}

#[tokio::test]
async fn matrix_upstream_empty_body() {
    let api = Api::new().await;
    api.seed("k8s-empty", true);
    let cmd = api.create(create_body()).await;
    api.sim.update_faults(|f| {
        f.listing_empty = true;
        f.queue_empty = true;
    });
    assert_eq!(api.get("/service/servers").await, (200, json!([])));
    assert_eq!(
        api.get(&format!("/service/queue?id={cmd}")).await,
        (200, json!([]))
    );
    // The client takes the listing as it is (the vanish rule guards against it) and knows
    // the queue's `[]` is no status.
    assert!(
        api.client()
            .list_servers("")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        api.client().command_status(&cmd).await.expect("answered"),
        Polled::Unreported
    );
}

#[tokio::test]
async fn matrix_wrong_http_method() {
    let api = Api::new().await;
    let (code, body) = api.get("/service/server/terminate").await;
    assert_eq!(code, 500);
    assert_eq!(body["error"], true);
    assert_eq!(
        body["message"],
        "The GET method is not supported for this route. Supported methods: POST."
    );
}

#[tokio::test]
async fn matrix_unknown_path() {
    let api = Api::new().await;
    let (code, body) = api.get("/service/nothing").await;
    assert_eq!(
        (code, body),
        (404, json!({"error": true, "message": "Not Found"}))
    );
    // The names the simulator's admin surface uses are not the API's.
    assert!(sim::Endpoint::from_request("GET", "/service/nothing").is_none());
}
