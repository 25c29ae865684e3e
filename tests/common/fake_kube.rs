//! A fake Kubernetes API server: serves Nodes by name (GET), applies JSON merge patches (PATCH)
//! with the resourceVersion precondition the real API server enforces, records every request,
//! and can answer the next PATCHes with 409 Conflict.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
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

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, Value>,
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
            .fallback(fallback)
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

fn record(inner: &mut Inner, method: &Method, path: String, headers: &HeaderMap, body: &[u8]) {
    inner.log.push(Recorded {
        method: method.to_string(),
        path,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(body).ok(),
    });
}

async fn get_node(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut g = inner.lock().expect("lock");
    record(
        &mut g,
        &Method::GET,
        format!("/api/v1/nodes/{name}"),
        &headers,
        &[],
    );
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().expect("lock");
    record(
        &mut g,
        &Method::PATCH,
        format!("/api/v1/nodes/{name}"),
        &headers,
        &body,
    );
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
