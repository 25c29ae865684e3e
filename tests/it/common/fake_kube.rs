//! A fake Kubernetes API server: serves Nodes by name (GET), lists and watches them (a list
//! carries the resourceVersion to watch from; a watch replays what changed since and streams
//! what changes next, as newline-delimited events; watches can be dropped, and history expired so
//! that an old resourceVersion answers 410 Expired), applies JSON merge patches (PATCH) with the
//! resourceVersion precondition the real API server enforces, deletes with uid/resourceVersion
//! preconditions, records every request, and can answer the next PATCHes with 409 Conflict.
//! Pods: listed by node (field selector), evicted (429 while a "disruption budget" blocks the
//! pod), deleted.

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

struct Inner {
    nodes: HashMap<String, Value>,
    /// Every Node change as a watch event line, with its resourceVersion.
    history: Vec<(u64, String)>,
    /// Changes from now on, to the open watches.
    changes: tokio::sync::broadcast::Sender<(u64, String)>,
    /// Bumped to end every open watch.
    drop_watches: tokio::sync::watch::Sender<u64>,
    /// A watch from a resourceVersion below this answers 410 Expired.
    compacted: u64,
    pods: Vec<FakePod>,
    /// (node, reason, type) of the Events posted.
    events: Vec<(String, String, String)>,
    log: Vec<Recorded>,
    conflicts: u32,
    version: u64,
    /// Namespaced objects (ConfigMaps, Leases) by (resource, namespace, name).
    objects: HashMap<(&'static str, String, String), Value>,
    /// ConfigMap requests answer 503 (the API server is unreachable for them).
    configmaps_down: bool,
    /// The next ConfigMap writes answer 409 (someone else wrote it meanwhile).
    configmap_conflicts: u32,
}

impl Inner {
    fn new() -> Inner {
        Inner {
            nodes: HashMap::new(),
            history: Vec::new(),
            changes: tokio::sync::broadcast::channel(1024).0,
            drop_watches: tokio::sync::watch::channel(0).0,
            compacted: 0,
            pods: Vec::new(),
            events: Vec::new(),
            log: Vec::new(),
            conflicts: 0,
            version: 0,
            objects: HashMap::new(),
            configmaps_down: false,
            configmap_conflicts: 0,
        }
    }

    /// The next resourceVersion.
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Records a Node change for watches (`ADDED`, `MODIFIED`, `DELETED`).
    fn changed(&mut self, kind: &str, node: &Value) {
        let rv: u64 = node["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.version);
        let line = format!("{}\n", json!({"type": kind, "object": node}));
        self.history.push((rv, line.clone()));
        let _ = self.changes.send((rv, line));
    }

    /// Stores a Node (new or replaced) at a new resourceVersion and tells the watches.
    fn put(&mut self, mut node: Value) {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let rv = self.bump();
        node["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if self.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.changed(kind, &node);
        self.nodes.insert(name, node);
    }
}

/// The running fake; stops with the test's runtime.
#[derive(Clone)]
pub struct FakeKube {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let inner = Arc::new(Mutex::new(Inner::new()));
        let app = Router::new()
            .route("/api/v1/nodes", axum::routing::get(list_or_watch_nodes))
            .route(
                "/api/v1/nodes/{name}",
                axum::routing::get(get_node)
                    .patch(patch_node)
                    .delete(delete_node),
            )
            .route("/api/v1/pods", axum::routing::get(list_pods))
            .route(
                "/api/v1/namespaces/{ns}/configmaps",
                axum::routing::post(|st, p, b| create_object(CONFIGMAPS, st, p, b)),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                axum::routing::post(|st, p, b| create_object(LEASES, st, p, b)),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                axum::routing::get(|st, p| get_object(LEASES, st, p))
                    .put(|st, p, b| replace_object(LEASES, st, p, b)),
            )
            .route(
                "/api/v1/namespaces/{ns}/configmaps/{name}",
                axum::routing::get(|st, p| get_object(CONFIGMAPS, st, p))
                    .put(|st, p, b| replace_object(CONFIGMAPS, st, p, b)),
            )
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
        let mut g = self.lock();
        let uid = format!("uid-{name}-{}", g.version + 1);
        g.put(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "uid": uid,
                         "labels": {"kubernetes.io/hostname": name}},
            "spec": spec,
        }));
    }

    /// What a kubelet does when it starts: registers its Node with the providerID and the
    /// labels of its flags (plus its own `kubernetes.io/*` labels), Ready.
    pub fn register(&self, name: &str, provider_id: &str, labels: &[(&str, &str)]) {
        self.add_node(name, &[], false, provider_id);
        let mut g = self.lock();
        let Some(mut node) = g.nodes.get(name).cloned() else {
            return;
        };
        for (k, v) in [
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
        .iter()
        .chain(labels)
        {
            node["metadata"]["labels"][*k] = json!(v);
        }
        node["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        g.put(node);
    }

    /// Sets the Node's Ready condition (its kubelet heartbeating, or gone quiet).
    pub fn set_ready(&self, name: &str, ready: bool) {
        let mut g = self.lock();
        let Some(mut node) = g.nodes.get(name).cloned() else {
            return;
        };
        node["status"] = json!({"conditions": [{"type": "Ready",
            "status": if ready { "True" } else { "Unknown" }}]});
        g.put(node);
    }

    /// The Node's labels.
    pub fn labels(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        self.node(name)
            .and_then(|n| n["metadata"]["labels"].as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
            .collect()
    }

    /// Ends every open watch (as an API server restart or a load balancer would); the
    /// watchers resume from the last resourceVersion they saw.
    pub fn drop_watches(&self) {
        self.lock().drop_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the change history and ends every open watch: a watch from any resourceVersion
    /// seen so far answers 410 Expired, so the watcher must list again.
    pub fn expire_history(&self) {
        let mut g = self.lock();
        // Everything seen so far is too old; a fresh list (at this new version) is not.
        g.version += 1;
        g.compacted = g.version;
        g.history.clear();
        g.drop_watches.send_modify(|n| *n += 1);
    }

    /// The `data` entry `key` of a ConfigMap, if there is one.
    pub fn configmap_data(&self, ns: &str, name: &str, key: &str) -> Option<String> {
        self.lock()
            .objects
            .get(&(CONFIGMAPS, ns.to_string(), name.to_string()))
            .and_then(|cm| cm["data"][key].as_str().map(str::to_string))
    }

    /// ConfigMap requests answer 503 while `down`.
    pub fn configmaps_down(&self, down: bool) {
        self.lock().configmaps_down = down;
    }

    /// The next `n` ConfigMap writes answer 409 Conflict (and the ConfigMap changes version,
    /// as when someone else wrote it).
    pub fn configmap_conflict_next(&self, n: u32) {
        self.lock().configmap_conflicts = n;
    }

    /// The holder of a Lease, if any.
    pub fn lease_holder(&self, ns: &str, name: &str) -> Option<String> {
        self.lock()
            .objects
            .get(&(LEASES, ns.to_string(), name.to_string()))
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }

    /// Names of the Nodes there are, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().nodes.keys().cloned().collect();
        names.sort();
        names
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
        if let Some(n) = g.nodes.get(&name).cloned() {
            g.put(n);
        }
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    let Some(mut node) = g.nodes.get(&name).cloned() else {
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
    merge(&mut node, &patch);
    g.put(node);
    ok(&g.nodes[&name])
}

/// DELETE with the uid / resourceVersion preconditions of the request's DeleteOptions.
async fn delete_node(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().expect("lock");
    let options: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let Some(node) = g.nodes.get(&name).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
        );
    };
    for (field, key) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
        if let Some(want) = options["preconditions"][field].as_str()
            && node["metadata"][key].as_str() != Some(want)
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!("Precondition failed: {field} in precondition: {want}"),
            );
        }
    }
    g.nodes.remove(&name);
    let mut gone = node;
    let rv = g.bump();
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    g.changed("DELETED", &gone);
    ok(&gone)
}

/// GET /api/v1/nodes: a NodeList, or with `watch=true` the changes after `resourceVersion`
/// (replayed from the history) and then as they happen, until the watches are dropped.
async fn list_or_watch_nodes(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let g = inner.lock().expect("lock");
    if !matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let mut items: Vec<&Value> = g.nodes.values().collect();
        items.sort_by_key(|n| {
            n["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        return ok(&json!({"apiVersion": "v1", "kind": "NodeList",
            "metadata": {"resourceVersion": g.version.to_string()}, "items": items}));
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream_of = |lines: Vec<String>| {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            axum::body::Body::from_stream(futures_util::stream::iter(
                lines
                    .into_iter()
                    .map(|l| Ok::<_, std::convert::Infallible>(Bytes::from(l))),
            )),
        )
            .into_response()
    };
    if from < g.compacted {
        let expired = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
            "message": format!("too old resource version: {from} ({})", g.compacted)}});
        return stream_of(vec![format!("{expired}\n")]);
    }
    let replay: Vec<String> = g
        .history
        .iter()
        .filter(|(rv, _)| *rv > from)
        .map(|(_, l)| l.clone())
        .collect();
    let changes = g.changes.subscribe();
    let dropped = g.drop_watches.subscribe();
    drop(g);
    let stream = futures_util::stream::unfold(
        (replay.into_iter(), changes, dropped),
        |(mut replay, mut changes, mut dropped)| async move {
            if let Some(line) = replay.next() {
                return Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                    (replay, changes, dropped),
                ));
            }
            tokio::select! {
                change = changes.recv() => match change {
                    Ok((_, line)) => Some((Ok(Bytes::from(line)), (replay, changes, dropped))),
                    Err(_) => None,
                },
                _ = dropped.changed() => None,
            }
        },
    );
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
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

fn unavailable() -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "the server is currently unable to handle the request",
    )
}

const CONFIGMAPS: &str = "configmaps";
const LEASES: &str = "leases";

/// ConfigMap requests meet the unreachable and conflict knobs; Leases never do.
fn knobs(g: &mut Inner, resource: &str, write: bool) -> Option<Response> {
    if resource != CONFIGMAPS {
        return None;
    }
    if g.configmaps_down {
        return Some(unavailable());
    }
    (write && g.configmap_conflicts > 0).then(|| {
        g.configmap_conflicts -= 1;
        status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        )
    })
}

async fn get_object(
    resource: &'static str,
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut g = inner.lock().expect("lock");
    if let Some(r) = knobs(&mut g, resource, false) {
        return r;
    }
    match g.objects.get(&(resource, ns, name.clone())) {
        Some(o) => ok(o),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{resource} \"{name}\" not found"),
        ),
    }
}

async fn create_object(
    resource: &'static str,
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().expect("lock");
    if let Some(r) = knobs(&mut g, resource, false) {
        return r;
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = (resource, ns, name.clone());
    if g.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{resource} \"{name}\" already exists"),
        );
    }
    let rv = g.bump();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    g.objects.insert(key, object.clone());
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        object.to_string(),
    )
        .into_response()
}

/// PUT with the resourceVersion precondition; a ConfigMap conflict injected by the test also
/// moves the stored version, as a concurrent writer would.
async fn replace_object(
    resource: &'static str,
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut g = inner.lock().expect("lock");
    let key = (resource, ns, name.clone());
    if let Some(r) = knobs(&mut g, resource, true) {
        if r.status() == StatusCode::CONFLICT {
            let rv = g.bump();
            if let Some(o) = g.objects.get_mut(&key) {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
            }
        }
        return r;
    }
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
    };
    let Some(current) = g.objects.get(&key).cloned() else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{resource} \"{name}\" not found"),
        );
    };
    if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    let rv = g.bump();
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    g.objects.insert(key, object.clone());
    ok(&object)
}

/// A fake API server and a client for it (through a kubeconfig written into `dir`).
pub async fn with_client(dir: &tempfile::TempDir) -> (FakeKube, kamatera_ca_provider::kube::Kube) {
    let fake = FakeKube::start().await;
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let kube = kamatera_ca_provider::kube::Kube::from_kubeconfig_file(&fake.kubeconfig(dir.path()))
        .await
        .expect("kube client");
    (fake, kube)
}
