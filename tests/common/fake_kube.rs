//! A fake Kubernetes API server: serves Nodes by name (GET), applies JSON merge patches (PATCH)
//! with the resourceVersion precondition the real API server enforces, records every request,
//! and can answer the next PATCHes with 409 Conflict. Pods: listed by node (field selector),
//! evicted (429 while a "disruption budget" blocks the pod), deleted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: Option<Value>,
}

/// A pod of the fake, as the test sets it up.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// Kind of its owner (`DaemonSet`, `ReplicaSet`), if any.
    pub owner: Option<String>,
    /// Evictions answer 429, as when a PodDisruptionBudget allows no disruption.
    pub blocked: bool,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, Value>,
    pods: Vec<FakePod>,
    /// (node, reason, type) of the Events posted.
    events: Vec<(String, String, String)>,
    log: Vec<Recorded>,
    conflicts: u32,
    version: u64,
}

/// The running fake; stops with the test's runtime.
#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/api/v1/nodes/{name}",
                axum::routing::get(get_node).patch(patch_node),
            )
            .route("/api/v1/pods", axum::routing::get(list_pods))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/eviction",
                axum::routing::post(evict_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                axum::routing::delete(delete_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/events",
                axum::routing::post(post_event),
            )
            .fallback(fallback)
            .layer(axum::middleware::from_fn_with_state(inner.clone(), record))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube { inner, addr }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake kube lock")
    }

    /// Adds (or replaces) a Node with these taints (`(key, effect)`), `unschedulable` and
    /// providerID.
    pub fn add_node(
        &self,
        name: &str,
        taints: &[(&str, &str)],
        unschedulable: bool,
        provider_id: &str,
    ) {
        let mut g = self.lock();
        g.version += 1;
        let mut spec = json!({});
        if !taints.is_empty() {
            spec["taints"] = taints
                .iter()
                .map(|(k, e)| json!({"key": k, "value": "1700000000", "effect": e}))
                .collect();
        }
        if unschedulable {
            spec["unschedulable"] = json!(true);
        }
        if !provider_id.is_empty() {
            spec["providerID"] = json!(provider_id);
        }
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "resourceVersion": g.version.to_string(),
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
        });
        g.nodes.insert(name.to_string(), node);
    }

    /// (node, reason, type) of every Event posted, in order.
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.lock().events.clone()
    }

    /// Reasons of the Events posted about one node, in order.
    pub fn event_reasons(&self, node: &str) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|(n, _, _)| n == node)
            .map(|(_, r, _)| r)
            .collect()
    }

    pub fn add_pod(&self, pod: FakePod) {
        self.lock().pods.push(pod);
    }

    /// `namespace/name` of the pods still there, in order.
    pub fn pods(&self) -> Vec<String> {
        self.lock()
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    /// Lets evictions of a blocked pod through (its budget allows a disruption again).
    pub fn unblock(&self, name: &str) {
        for p in self.lock().pods.iter_mut().filter(|p| p.name == name) {
            p.blocked = false;
        }
    }

    pub fn unschedulable(&self, node: &str) -> bool {
        self.node(node)
            .is_some_and(|n| n["spec"]["unschedulable"] == json!(true))
    }

    pub fn node(&self, name: &str) -> Option<Value> {
        self.lock().nodes.get(name).cloned()
    }

    /// Taint keys of a Node, in order.
    pub fn taint_keys(&self, name: &str) -> Vec<String> {
        self.node(name)
            .and_then(|n| n["spec"]["taints"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|t| t["key"].as_str().map(str::to_string))
            .collect()
    }

    /// Answers the next `n` PATCHes with 409 Conflict (and changes the Node's resourceVersion,
    /// as a concurrent writer would).
    pub fn conflict_next(&self, n: u32) {
        self.lock().conflicts = n;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    /// `METHOD path` of every request, in order.
    pub fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// A kubeconfig file (in `dir`) whose current context points at this server.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig.yaml");
        let text = format!(
            r#"apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
contexts:
- name: fake
  context:
    cluster: fake
    user: tester
current-context: fake
users:
- name: tester
  user:
    token: fake-token
"#,
            addr = self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

fn ok(node: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        node.to_string(),
    )
        .into_response()
}

/// Records every request (method, path, content type, JSON body) before it is handled.
async fn record(
    State(inner): State<Arc<Mutex<Inner>>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    inner.lock().expect("lock").log.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        content_type: parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(&bytes).ok(),
    });
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

async fn get_node(State(inner): State<Arc<Mutex<Inner>>>, Path(name): Path<String>) -> Response {
    let g = inner.lock().expect("lock");
    match g.nodes.get(&name) {
        Some(n) => ok(n),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        ),
    }
}

async fn patch_node(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().expect("lock");
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    if g.conflicts > 0 {
        g.conflicts -= 1;
        // Someone else wrote the node meanwhile.
        g.version += 1;
        let v = g.version.to_string();
        if let Some(n) = g.nodes.get_mut(&name) {
            n["metadata"]["resourceVersion"] = json!(v);
        }
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    g.version += 1;
    let next = g.version.to_string();
    let Some(node) = g.nodes.get_mut(&name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        );
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
        && node["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    if let Some(current) = node["spec"]["providerID"].as_str()
        && let Some(wanted) = patch["spec"]["providerID"].as_str()
        && current != wanted
    {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.providerID: Forbidden: node updates may not change providerID except from \"\" to valid",
        );
    }
    merge(node, &patch);
    node["metadata"]["resourceVersion"] = json!(next);
    ok(node)
}

fn pod_json(p: &FakePod) -> Value {
    let mut meta =
        json!({"name": p.name, "namespace": p.namespace, "uid": format!("uid-{}", p.name)});
    if let Some(kind) = &p.owner {
        meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": "owner",
            "uid": "owner-uid", "controller": true}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
           "spec": {"nodeName": p.node, "containers": [{"name": "c", "image": "busybox"}]},
           "status": {"phase": "Running"}})
}

async fn list_pods(State(inner): State<Arc<Mutex<Inner>>>, uri: axum::http::Uri) -> Response {
    let g = inner.lock().expect("lock");
    let query = uri.query().unwrap_or_default().replace("%3D", "=");
    let node = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("fieldSelector="))
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string);
    let items: Vec<Value> = g
        .pods
        .iter()
        .filter(|p| node.as_ref().is_none_or(|n| *n == p.node))
        .map(pod_json)
        .collect();
    ok(
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

async fn evict_pod(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut g = inner.lock().expect("lock");
    let Some(i) = g
        .pods
        .iter()
        .position(|p| p.namespace == ns && p.name == name)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    if g.pods[i].blocked {
        return status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
    }
    g.pods.remove(i);
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
            .to_string(),
    )
        .into_response()
}

async fn delete_pod(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut g = inner.lock().expect("lock");
    let Some(i) = g
        .pods
        .iter()
        .position(|p| p.namespace == ns && p.name == name)
    else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        );
    };
    let p = g.pods.remove(i);
    ok(&pod_json(&p))
}

async fn post_event(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> Response {
    let mut g = inner.lock().expect("lock");
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let field = |v: &Value| v.as_str().unwrap_or_default().to_string();
    g.events.push((
        field(&event["involvedObject"]["name"]),
        field(&event["reason"]),
        field(&event["type"]),
    ));
    let n = g.events.len();
    event["metadata"]["name"] = json!(format!("{}{n}", field(&event["metadata"]["generateName"])));
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        event.to_string(),
    )
        .into_response()
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the fake serves nodes only, not {method} {uri}"),
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}
