//! The deployment files: every Kubernetes document parses into its k8s-openapi type, and the
//! invariants that make them work are checked in code (no kubectl needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kamatera_ca_provider::config::CloudConfig;
use serde::Deserialize;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every object of a manifest file, typed.
#[derive(Default)]
struct Manifest {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    leases: Vec<k8s_openapi::api::coordination::v1::Lease>,
    budgets: Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    /// cert-manager objects (no k8s-openapi type): kind and body.
    cert_manager: Vec<(String, Value)>,
}

fn typed<T: serde::de::DeserializeOwned>(doc: Value, file: &str) -> T {
    let kind = doc["kind"].as_str().unwrap_or_default().to_string();
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file}: a {kind} does not parse: {e}"))
}

fn load(file: &str) -> Manifest {
    let text = std::fs::read_to_string(root().join(file)).expect("read manifest");
    let mut m = Manifest::default();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"));
        if v.is_null() {
            continue;
        }
        match (
            v["apiVersion"].as_str().unwrap_or_default(),
            v["kind"].as_str().unwrap_or_default(),
        ) {
            ("v1", "ServiceAccount") => m.service_accounts.push(typed(v, file)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => m.cluster_roles.push(typed(v, file)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                m.cluster_role_bindings.push(typed(v, file))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => m.roles.push(typed(v, file)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => m.role_bindings.push(typed(v, file)),
            ("v1", "Secret") => m.secrets.push(typed(v, file)),
            ("v1", "ConfigMap") => m.config_maps.push(typed(v, file)),
            ("apps/v1", "Deployment") => m.deployments.push(typed(v, file)),
            ("v1", "Service") => m.services.push(typed(v, file)),
            ("coordination.k8s.io/v1", "Lease") => m.leases.push(typed(v, file)),
            ("policy/v1", "PodDisruptionBudget") => m.budgets.push(typed(v, file)),
            ("cert-manager.io/v1", kind @ ("Issuer" | "Certificate")) => {
                assert!(v["spec"].is_object(), "{file}: {kind} without spec");
                m.cert_manager.push((kind.to_string(), v));
            }
            (api, kind) => panic!("{file}: unexpected {api} {kind}"),
        }
    }
    m
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
}

fn container<'a>(d: &'a Deployment, name: &str) -> Option<&'a Container> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

fn args(c: &Container) -> Vec<String> {
    c.args.clone().unwrap_or_default()
}

/// The volume mounted at the directory holding `path`, as (volume name, key in it).
fn mounted<'a>(
    d: &'a Deployment,
    c: &Container,
    path: &str,
) -> (&'a k8s_openapi::api::core::v1::Volume, String) {
    let (dir, file) = path.rsplit_once('/').expect("an absolute path");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == dir)
        .unwrap_or_else(|| panic!("{path}: {dir} is not mounted in {}", c.name));
    let vol = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == mount.name))
        .unwrap_or_else(|| panic!("volume {} is not declared", mount.name));
    (vol, file.to_string())
}

/// The autoscaler's cloud-config for a Deployment: the ConfigMap behind `--cloud-config`.
fn ca_cloud_config(m: &Manifest, d: &Deployment) -> BTreeMap<String, String> {
    let ca = container(d, "cluster-autoscaler").expect("a cluster-autoscaler container");
    let a = args(ca);
    assert_eq!(flag(&a, "--cloud-provider"), Some("externalgrpc"), "{a:?}");
    let path = flag(&a, "--cloud-config").expect("--cloud-config");
    let (vol, key) = mounted(d, ca, path);
    let cm_name = &vol
        .config_map
        .as_ref()
        .expect("the cloud-config comes from a ConfigMap")
        .name;
    let cm = m
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(cm_name))
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} is not in the manifest"));
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .expect("the cloud-config key");
    serde_yaml_ng::from_str(text).expect("the cloud-config is YAML")
}

fn check_secure(d: &Deployment, file: &str) {
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(psc.run_as_non_root, Some(true), "{file}: runAsNonRoot");
    assert!(psc.run_as_user.is_some_and(|u| u != 0), "{file}: runAsUser");
    assert_eq!(
        psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{file}: seccomp"
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{file}: {} has no securityContext", c.name));
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{file}: {}",
            c.name
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{file}: {}",
            c.name
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()]),
            "{file}: {}",
            c.name
        );
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some(),
            "{file}: {} requests",
            c.name
        );
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some(),
            "{file}: {} limits",
            c.name
        );
    }
    assert_eq!(
        d.spec
            .as_ref()
            .and_then(|s| s.strategy.as_ref())
            .and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "{file}: one provider at a time"
    );
}

/// The provider's journal: a ConfigMap shipped in the manifest (no state volume that dies with
/// the pod), which a Role bound to the provider's ServiceAccount lets it get and update, by name.
fn check_journal(m: &Manifest, d: &Deployment, file: &str, a: &[String]) {
    assert!(
        flag(a, "--state-file").is_none(),
        "{file}: the journal must outlive the pod"
    );
    let spec = flag(a, "--state-configmap").expect("--state-configmap");
    let (ns, name) = spec.split_once('/').expect("NAMESPACE/NAME");
    assert!(
        m.config_maps
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name)
                && c.metadata.namespace.as_deref() == Some(ns)),
        "{file}: ConfigMap {spec} is shipped"
    );
    let volumes = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.empty_dir.is_none()),
        "{file}: no state emptyDir"
    );
    let granted = configmap_verbs(m, &service_account(d, file), ns, name);
    for verb in ["get", "update"] {
        assert!(
            granted.contains(verb),
            "{file}: cannot {verb} {spec}: {granted:?}"
        );
    }
}

/// The verbs Roles bound to ServiceAccount `sa` grant on ConfigMap `ns/name`, by name.
fn configmap_verbs(m: &Manifest, sa: &str, ns: &str, name: &str) -> BTreeSet<String> {
    verbs_by_name(m, sa, ns, "", "configmaps", name)
}

/// The verbs Roles bound to ServiceAccount `sa` in `ns` grant on the object `name` of
/// `resource` in API group `group` ("" = core), by name.
fn verbs_by_name(
    m: &Manifest,
    sa: &str,
    ns: &str,
    group: &str,
    resource: &str,
    name: &str,
) -> BTreeSet<String> {
    m.role_bindings
        .iter()
        .filter(|b| {
            b.metadata.namespace.as_deref() == Some(ns)
                && b.subjects
                    .iter()
                    .flatten()
                    .any(|s| s.kind == "ServiceAccount" && s.name == sa)
        })
        .filter_map(|b| {
            m.roles.iter().find(|r| {
                b.role_ref.kind == "Role" && r.metadata.name.as_deref() == Some(&b.role_ref.name)
            })
        })
        .flat_map(|r| r.rules.iter().flatten())
        .filter(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.resource_names.iter().flatten().any(|n| n == name)
        })
        .flat_map(|r| r.verbs.clone())
        .collect()
}

/// The provider container: probes on its admin port, its INI passes `check`, the journal in a
/// ConfigMap.
fn check_provider(m: &Manifest, d: &Deployment, file: &str) -> Vec<String> {
    let p = container(d, "kamatera-ca-provider").expect("provider container");
    let a = args(p);
    assert_eq!(
        a.first().map(String::as_str),
        Some("serve"),
        "{file}: {a:?}"
    );
    let admin_port: i32 = flag(&a, "--metrics-listen")
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .expect("--metrics-listen with a port");
    for (what, probe, path) in [
        ("readiness", p.readiness_probe.as_ref(), "/readyz"),
        ("liveness", p.liveness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{file}: {what} probe"));
        assert_eq!(get.path.as_deref(), Some(path), "{file}: {what} probe path");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(admin_port),
            "{file}: {what} probe port is the admin server's"
        );
    }
    check_journal(m, d, file, &a);

    // The INI in the Secret passes `check` once the placeholders are filled in.
    let ini_path = flag(&a, "--cloud-config").expect("--cloud-config");
    let (vol, key) = mounted(d, p, ini_path);
    let secret_name = vol
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("the INI comes from a Secret");
    let secret = m
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&secret_name))
        .unwrap_or_else(|| panic!("{file}: Secret {secret_name} is not in the manifest"));
    let ini = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(&key))
        .expect("the INI key");
    assert!(
        ini.contains("REPLACE_ME"),
        "{file}: placeholders are visible"
    );
    let filled = ini
        .replace("REPLACE_ME_CLIENT_ID", "abc123")
        .replace("REPLACE_ME_SECRET", "s3cret")
        .replace("REPLACE_ME_CLUSTER", "prod");
    CloudConfig::parse(&format!("{file}: {secret_name}/{key}"), &filled, &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    check_node_access(m, d, file);
    a
}

/// What the provider does in the cluster: the node controller (watch nodes, label them and set
/// providerIDs, delete those of gone servers), hibernation drains (cordon, list, evict, forced
/// delete), Events about Nodes.
const PROVIDER_NEEDS: [&str; 9] = [
    "create events",
    "get nodes",
    "list nodes",
    "watch nodes",
    "patch nodes",
    "delete nodes",
    "list pods",
    "create pods/eviction",
    "delete pods",
];

/// `verb resource` pairs a rule grants on the core API group, for any object name.
fn core_grants(r: &k8s_openapi::api::rbac::v1::PolicyRule) -> Vec<String> {
    if !r.api_groups.iter().flatten().any(|g| g.is_empty()) || r.resource_names.is_some() {
        return Vec::new();
    }
    r.resources
        .iter()
        .flatten()
        .flat_map(|res| r.verbs.iter().map(move |v| format!("{v} {res}")))
        .collect()
}

/// The provider's ServiceAccount may do what the provider does in the cluster (warm-pool taint
/// cleanup, providerIDs, hibernation drains) through ClusterRoles bound to it.
fn check_node_access(m: &Manifest, d: &Deployment, file: &str) {
    let sa = service_account(d, file);
    let granted: BTreeSet<String> = bound_cluster_roles(m, &sa)
        .into_iter()
        .flat_map(|r| r.rules.iter().flatten())
        .flat_map(core_grants)
        .collect();
    for need in PROVIDER_NEEDS {
        assert!(
            granted.contains(need),
            "{file}: ServiceAccount {sa} (the provider's) cannot {need}: {granted:?}"
        );
    }
}

/// The ServiceAccount a Deployment's pods run as.
fn service_account(d: &Deployment, file: &str) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| panic!("{file}: the Deployment names its ServiceAccount"))
}

/// The ClusterRoles bound to a ServiceAccount.
fn bound_cluster_roles<'m>(m: &'m Manifest, sa: &str) -> Vec<&'m ClusterRole> {
    m.cluster_role_bindings
        .iter()
        .filter(|b| b.subjects.iter().flatten().any(|s| s.name == sa))
        .filter_map(|b| {
            m.cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
        })
        .collect()
}

/// The RBAC names a Deployment's autoscaler needs: its lease and status ConfigMap.
fn check_rbac(m: &Manifest, d: &Deployment, file: &str) -> (String, String) {
    let ca = container(d, "cluster-autoscaler").expect("autoscaler");
    let a = args(ca);
    let lease = flag(&a, "--leader-elect-resource-name")
        .unwrap_or("cluster-autoscaler")
        .to_string();
    let status = flag(&a, "--status-config-map-name")
        .unwrap_or("cluster-autoscaler-status")
        .to_string();
    let sa = service_account(d, file);
    assert!(
        m.service_accounts
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(&sa)),
        "{file}: ServiceAccount {sa}"
    );
    let allows = |rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
                  resource: &str,
                  name: &str,
                  verb: &str| {
        rules.iter().any(|r| {
            r.resources.iter().flatten().any(|x| x == resource)
                && r.resource_names.iter().flatten().any(|x| x == name)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    assert!(
        bound_cluster_roles(m, &sa).iter().any(|r| allows(
            r.rules.as_deref().unwrap_or_default(),
            "leases",
            &lease,
            "update"
        )),
        "{file}: the lease {lease} is not granted"
    );
    let bound_roles: Vec<&Role> = m
        .role_bindings
        .iter()
        .filter(|b| b.subjects.iter().flatten().any(|s| s.name == sa))
        .filter_map(|b| {
            m.roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
        })
        .collect();
    assert!(
        bound_roles.iter().any(|r| allows(
            r.rules.as_deref().unwrap_or_default(),
            "configmaps",
            &status,
            "update"
        )),
        "{file}: the status ConfigMap {status} is not granted"
    );
    (lease, status)
}

#[test]
fn sidecar_deployment() {
    let file = "examples/deployment.yaml";
    let m = load(file);
    assert_eq!(m.deployments.len(), 1);
    let d = &m.deployments[0];
    check_secure(d, file);
    let cc = ca_cloud_config(&m, d);
    let provider_args = check_provider(&m, d, file);
    assert_eq!(
        flag(&provider_args, "--listen"),
        cc.get("address").map(String::as_str),
        "{file}: the provider listens where the autoscaler dials"
    );
    assert_eq!(
        cc.get("address").map(String::as_str),
        Some("127.0.0.1:8086")
    );
    let (lease, status) = check_rbac(&m, d, file);
    assert_eq!(
        (lease.as_str(), status.as_str()),
        ("cluster-autoscaler", "cluster-autoscaler-status")
    );
}

#[test]
fn fallback_deployment_has_its_own_names_and_a_delay() {
    let file = "examples/deployment-fallback.yaml";
    let m = load(file);
    let d = &m.deployments[0];
    check_secure(d, file);
    let cc = ca_cloud_config(&m, d);
    let provider_args = check_provider(&m, d, file);
    assert_eq!(
        flag(&provider_args, "--listen"),
        cc.get("address").map(String::as_str)
    );
    let (lease, status) = check_rbac(&m, d, file);
    let primary = load("examples/deployment.yaml");
    let (p_lease, p_status) = check_rbac(
        &primary,
        &primary.deployments[0],
        "examples/deployment.yaml",
    );
    assert_ne!(
        lease, p_lease,
        "distinct leases, or the two autoscalers fight for one"
    );
    assert_ne!(
        status, p_status,
        "distinct status ConfigMaps, or they overwrite each other"
    );
    let a = args(container(d, "cluster-autoscaler").expect("autoscaler"));
    assert_eq!(flag(&a, "--new-pod-scale-up-delay"), Some("600s"), "{a:?}");
    // Every object has a name distinct from the primary's, so both can be applied together.
    let names = |m: &Manifest| -> Vec<String> {
        m.deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap_or_default())
            .chain(
                m.secrets
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap_or_default()),
            )
            .chain(
                m.config_maps
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap_or_default()),
            )
            .chain(
                m.cluster_roles
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap_or_default()),
            )
            .chain(
                m.service_accounts
                    .iter()
                    .map(|s| s.metadata.name.clone().unwrap_or_default()),
            )
            .collect()
    };
    let theirs = names(&primary);
    for n in names(&m) {
        assert!(
            !theirs.contains(&n),
            "{n} clashes with the primary's manifest"
        );
    }
}

#[test]
fn mtls_deployment_wires_certificates_to_both_sides() {
    let file = "examples/deployment-mtls.yaml";
    let m = load(file);
    assert_eq!(m.deployments.len(), 2);
    let ca = m
        .deployments
        .iter()
        .find(|d| container(d, "cluster-autoscaler").is_some())
        .expect("autoscaler");
    let provider = m
        .deployments
        .iter()
        .find(|d| container(d, "kamatera-ca-provider").is_some())
        .expect("provider");
    check_secure(ca, file);
    check_secure(provider, file);
    let cc = ca_cloud_config(&m, ca);
    let pa = check_provider(&m, provider, file);

    // Two replicas, one acting: the lease is shipped, its RBAC is by name, a budget keeps one
    // replica through drains.
    assert_eq!(provider.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(pa.iter().any(|a| a == "--leader-elect"), "{pa:?}");
    let lease = flag(&pa, "--leader-elect-lease").expect("--leader-elect-lease");
    let (ns, name) = lease.split_once('/').expect("NAMESPACE/NAME");
    assert!(
        m.leases
            .iter()
            .any(|l| l.metadata.name.as_deref() == Some(name)
                && l.metadata.namespace.as_deref() == Some(ns))
    );
    let sa = service_account(provider, file);
    let lease_verbs = verbs_by_name(&m, &sa, ns, "coordination.k8s.io", "leases", name);
    assert!(
        lease_verbs.contains("get") && lease_verbs.contains("update"),
        "{lease_verbs:?}"
    );
    let pod_labels = provider
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let pdb = m.budgets.first().expect("a PodDisruptionBudget");
    let spec = pdb.spec.as_ref().expect("spec");
    assert_eq!(
        spec.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let selects = spec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(
        !selects.is_empty() && selects.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the budget selects the provider's pods"
    );
    assert!(
        container(provider, "kamatera-ca-provider")
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
            .iter()
            .any(|e| e.name == "POD_NAME"),
        "each replica names itself in the lease"
    );

    // The autoscaler dials the Service; the Service reaches the provider's gRPC port.
    let address = cc.get("address").expect("address");
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let svc_name = host.split('.').next().expect("service name");
    let svc = m
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(svc_name))
        .expect("the Service");
    let svc_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.iter().find(|p| p.port.to_string() == port))
        .expect("the Service port");
    let listen_port = flag(&pa, "--listen")
        .and_then(|l| l.rsplit_once(':'))
        .map(|(_, p)| p)
        .expect("--listen");
    let target = match &svc_port.target_port {
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(named)) => {
            container(provider, "kamatera-ca-provider")
                .and_then(|c| c.ports.as_ref())
                .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(named)))
                .map(|p| p.container_port.to_string())
        }
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
            Some(n.to_string())
        }
        None => Some(port.to_string()),
    };
    assert_eq!(
        target.as_deref(),
        Some(listen_port),
        "the Service reaches --listen"
    );

    // Server side: the three TLS flags point into the server Certificate's Secret, whose DNS names
    // include the host the autoscaler dials.
    let certs: Vec<&Value> = m
        .cert_manager
        .iter()
        .filter(|(k, _)| k == "Certificate")
        .map(|(_, v)| v)
        .collect();
    let cert_for = |secret: &str| {
        certs
            .iter()
            .find(|c| c["spec"]["secretName"] == secret)
            .unwrap_or_else(|| panic!("no Certificate writes Secret {secret}"))
    };
    let pc = container(provider, "kamatera-ca-provider").expect("provider");
    let mut server_secret = None;
    for f in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
        let path = flag(&pa, f).unwrap_or_else(|| panic!("{f}"));
        let (vol, _) = mounted(provider, pc, path);
        server_secret = vol.secret.as_ref().and_then(|s| s.secret_name.clone());
    }
    let server = cert_for(&server_secret.expect("server secret"));
    let dns: Vec<&str> = server["spec"]["dnsNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns.contains(&host),
        "the server certificate names {host}: {dns:?}"
    );
    assert!(server["spec"]["usages"].to_string().contains("server auth"));

    // Client side: cert, key and cacert come from the client Certificate's Secret.
    let cac = container(ca, "cluster-autoscaler").expect("autoscaler");
    let mut client_secret = None;
    for key in ["cert", "key", "cacert"] {
        let path = cc.get(key).unwrap_or_else(|| panic!("cloud-config {key}"));
        let (vol, _) = mounted(ca, cac, path);
        client_secret = vol.secret.as_ref().and_then(|s| s.secret_name.clone());
    }
    let client = cert_for(&client_secret.expect("client secret"));
    assert!(client["spec"]["usages"].to_string().contains("client auth"));
    assert_eq!(
        client["spec"]["issuerRef"], server["spec"]["issuerRef"],
        "one CA signs both"
    );
}

#[test]
fn helm_values_run_the_provider_as_a_native_sidecar() {
    let text = std::fs::read_to_string(root().join("deploy/helm/cluster-autoscaler-values.yaml"))
        .expect("read");
    let v: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(v["cloudProvider"], "externalgrpc");
    assert!(
        v["autoDiscovery"]["clusterName"].is_string(),
        "the chart renders nothing without it"
    );
    let sidecar: Container =
        serde_json::from_value(v["initContainers"][0].clone()).expect("a Container");
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "native sidecar"
    );
    let a = args(&sidecar);
    let cm: ConfigMap = serde_json::from_value(v["extraObjects"][0].clone()).expect("a ConfigMap");
    let cc: BTreeMap<String, String> = serde_yaml_ng::from_str(
        cm.data
            .as_ref()
            .and_then(|d| d.get("cloud-config"))
            .expect("cloud-config"),
    )
    .expect("YAML");
    assert_eq!(flag(&a, "--listen"), cc.get("address").map(String::as_str));
    let path = v["extraArgs"]["cloud-config"]
        .as_str()
        .expect("cloud-config arg");
    let dir = path.rsplit_once('/').map(|(d, _)| d).expect("dir");
    assert!(
        v["extraVolumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == dir),
        "{dir} is mounted"
    );
    // The provider's own RBAC: a ClusterRole for nodes bound to the chart's ServiceAccount.
    let sa = v["rbac"]["serviceAccount"]["name"]
        .as_str()
        .expect("a fixed ServiceAccount name");
    let objects = v["extraObjects"].as_array().expect("extraObjects");
    // Its journal: a ConfigMap among the extra objects, readable and writable by name, and no
    // state volume that would die with the pod.
    let mut extra = Manifest::default();
    for o in objects {
        match o["kind"].as_str() {
            Some("ConfigMap") => extra.config_maps.push(typed(o.clone(), "helm values")),
            Some("Role") => extra.roles.push(typed(o.clone(), "helm values")),
            Some("RoleBinding") => extra.role_bindings.push(typed(o.clone(), "helm values")),
            _ => {}
        }
    }
    let spec = flag(&a, "--state-configmap").expect("--state-configmap");
    let (ns, name) = spec.split_once('/').expect("NAMESPACE/NAME");
    assert!(
        extra
            .config_maps
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name))
    );
    let verbs = configmap_verbs(&extra, sa, ns, name);
    assert!(
        verbs.contains("get") && verbs.contains("update"),
        "{verbs:?}"
    );
    assert!(
        v["extraVolumes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|vol| vol.get("emptyDir").is_none()),
        "no state emptyDir"
    );
    let role: ClusterRole = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .map(|o| serde_json::from_value(o.clone()).expect("a ClusterRole"))
        .expect("the provider's ClusterRole");
    let binding: ClusterRoleBinding = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRoleBinding")
        .map(|o| serde_json::from_value(o.clone()).expect("a ClusterRoleBinding"))
        .expect("its binding");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.name == sa && s.namespace.as_deref() == Some("kube-system"))
    );
    let granted: BTreeSet<String> = role.rules.iter().flatten().flat_map(core_grants).collect();
    for need in PROVIDER_NEEDS {
        assert!(
            granted.contains(need),
            "helm values: cannot {need}: {granted:?}"
        );
    }

    let sc = sidecar.security_context.expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
}

#[test]
fn alerts_use_metrics_that_exist() {
    let text = std::fs::read_to_string(root().join("deploy/prometheus-rules.yaml")).expect("read");
    let v: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(v["kind"], "PrometheusRule");
    // Families appear in the exposition once they hold a series: give each one.
    let metrics = kamatera_ca_provider::telemetry::Metrics::new();
    metrics.api_request("list_servers", "ok", 0.01);
    metrics.grpc_request("Refresh", "OK", 0.01);
    metrics.create("accepted");
    metrics.delete("started");
    metrics
        .reconciles
        .get_or_create(&kamatera_ca_provider::telemetry::ResultLabel {
            result: "ok".into(),
        })
        .inc();
    let group = |kind: &str| kamatera_ca_provider::telemetry::GroupKind {
        group: "g".into(),
        kind: kind.into(),
    };
    metrics.group_size.get_or_create(&group("target")).set(1);
    metrics
        .instances
        .get_or_create(&kamatera_ca_provider::telemetry::GroupState {
            group: "g".into(),
            state: "running".into(),
        })
        .set(1);
    metrics
        .instances_in_error
        .get_or_create(&kamatera_ca_provider::telemetry::GroupClass {
            group: "g".into(),
            class: "other".into(),
        })
        .set(0);
    metrics
        .hibernation_state
        .get_or_create(&kamatera_ca_provider::telemetry::Group { group: "g".into() })
        .set(2);
    let exposed = metrics.encode();
    // Hibernation keeps evicted pods Pending all night: that alert is silent meanwhile.
    let pending = v["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["alert"] == "PodsPendingTooLong")
        .expect("PodsPendingTooLong");
    assert!(
        pending["expr"]
            .as_str()
            .expect("expr")
            .ends_with("unless on() (max(kamatera_ca_hibernation_state) > 0)"),
        "{}",
        pending["expr"]
    );
    let mut checked = 0;
    for rule in v["spec"]["groups"][0]["rules"].as_array().expect("rules") {
        let expr = rule["expr"].as_str().expect("expr");
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("kamatera_ca_") {
                let base = name.trim_end_matches("_total");
                assert!(
                    exposed.contains(&format!("# TYPE kamatera_ca_{base} ")),
                    "alert {} uses kamatera_ca_{name}, which the provider does not export",
                    rule["alert"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "the alerts reference our metrics");
}

#[test]
fn cloud_config_example_and_join_scripts() {
    let text = std::fs::read_to_string(root().join("examples/cloud-config.yaml")).expect("read");
    let v: BTreeMap<String, String> = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(v.get("address").map(String::as_str), Some("127.0.0.1:8086"));
    for script in [
        "server-init-kubeadm.sh",
        "server-init-rke2.sh",
        "server-init-rancher.sh",
    ] {
        let path = root().join("examples").join(script);
        let body = std::fs::read_to_string(&path).expect("read script");
        assert!(body.starts_with("#!/bin/bash\n"), "{script}");
        assert!(
            body.contains("kamatera.com/node-group="),
            "{script}: the group label the template promises"
        );
        let out = std::process::Command::new("bash")
            .arg("-n")
            .arg(&path)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs a join script with the group's `check` values pasted into its one per-group place, in
/// its dry-run mode (prints what the node would register with, installs nothing).
fn dry_run(script: &str, labels: &str, taints: &str, prefix: Option<&str>) -> String {
    let body = std::fs::read_to_string(root().join("examples").join(script)).expect("read");
    let mut pasted = 0;
    let body: String = body
        .lines()
        .map(|l| {
            if l.starts_with("NODE_LABELS=") {
                pasted += 1;
                format!("NODE_LABELS=\"{labels}\"")
            } else if l.starts_with("NODE_TAINTS=") {
                pasted += 1;
                format!("NODE_TAINTS=\"{taints}\"")
            } else if let Some(p) = prefix.filter(|_| l.starts_with("PROVIDER_ID_PREFIX=")) {
                format!("PROVIDER_ID_PREFIX=\"{p}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        pasted, 2,
        "{script}: one NODE_LABELS and one NODE_TAINTS line"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&body)
        .env("KAMATERA_JOIN_DRY_RUN", "1")
        .env("NODE_NAME", "jn-1")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn join_scripts_register_what_the_template_promises() {
    let cfg = CloudConfig::parse(
        "join.ini",
        "[global]\nkamatera-api-client-id = a\nkamatera-api-secret = s\ncluster-name = c\n\
         default-datacenter = EU\ndefault-image = i\ndefault-network = name=wan\n\n\
         [nodegroup \"batch\"]\ncpu = 4B\nram = 8192\ndisk = size=50\nmax-size = 3\n\
         template-label = team=data\ntemplate-taint = dedicated=batch:NoSchedule\n\
         template-taint = spot:PreferNoSchedule\n",
        &|_| None,
    )
    .expect("config");
    let g = &cfg.node_groups[0];
    let (labels, taints) = (g.join_script_labels_value(), g.join_script_taints_value());
    let promised: BTreeSet<String> = g
        .join_script_labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let wanted_taints: BTreeSet<String> = ["dedicated=batch:NoSchedule", "spot:PreferNoSchedule"]
        .map(String::from)
        .into();
    let set = |items: Vec<String>| items.into_iter().collect::<BTreeSet<String>>();

    // kubeadm: the kubelet's flags in the JoinConfiguration.
    let join: Value =
        serde_yaml_ng::from_str(&dry_run("server-init-kubeadm.sh", &labels, &taints, None))
            .expect("JoinConfiguration");
    let arg = |name: &str| {
        join["nodeRegistration"]["kubeletExtraArgs"]
            .as_array()
            .expect("kubeletExtraArgs")
            .iter()
            .find(|a| a["name"] == name)
            .and_then(|a| a["value"].as_str())
            .unwrap_or_else(|| panic!("{name} in {join}"))
            .to_string()
    };
    assert_eq!(arg("provider-id"), "kamatera://jn-1");
    let split = |v: String| set(v.split(',').map(String::from).collect());
    assert_eq!(split(arg("node-labels")), promised);
    assert_eq!(split(arg("register-with-taints")), wanted_taints);

    // RKE2: its config file; the providerID through the kubelet when the prefix is not rke2://.
    for prefix in ["rke2://", "kamatera://"] {
        let conf: Value = serde_yaml_ng::from_str(&dry_run(
            "server-init-rke2.sh",
            &labels,
            &taints,
            Some(prefix),
        ))
        .expect("RKE2 config");
        let list = |k: &str| {
            set(conf[k]
                .as_array()
                .unwrap_or_else(|| panic!("{k} in {conf}"))
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect())
        };
        assert_eq!(conf["node-name"], "jn-1");
        assert_eq!(list("node-label"), promised);
        assert_eq!(list("node-taint"), wanted_taints);
        if prefix == "rke2://" {
            assert!(
                conf.get("kubelet-arg").is_none(),
                "RKE2 sets rke2://jn-1 itself"
            );
        } else {
            assert_eq!(
                list("kubelet-arg"),
                set(vec!["provider-id=kamatera://jn-1".into()])
            );
        }
    }

    // Rancher: the system agent's arguments.
    let args: Vec<String> = dry_run("server-init-rancher.sh", &labels, &taints, None)
        .lines()
        .map(String::from)
        .collect();
    let after = |flag: &str| {
        set(args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect())
    };
    assert_eq!(after("--node-name"), set(vec!["jn-1".into()]));
    assert_eq!(after("--label"), promised);
    assert_eq!(after("--taints"), wanted_taints);

    // A group without labels or taints of its own: the group label only, no taint.
    let plain = dry_run(
        "server-init-rke2.sh",
        "kamatera.com/node-group=web",
        "",
        None,
    );
    assert!(!plain.contains("node-taint"), "{plain}");
}

#[test]
fn dockerfile_runs_as_non_root() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read");
    assert!(text.contains("USER 65532:65532"));
    assert!(text.contains("ENTRYPOINT [\"/kamatera-ca-provider\"]"));
    assert!(text.contains("--locked"));
}

#[test]
fn kustomize_overlays_reference_what_exists() {
    // Rendering needs kubectl (deploy/check-overlays.sh, run by .ci/run when it is installed,
    // compares each rendered overlay with its examples/ file); here, without it, the tree itself.
    let base = load("examples/deployment.yaml");
    let base_names: Vec<(String, String)> = base
        .deployments
        .iter()
        .map(|d| {
            (
                "Deployment".to_string(),
                d.metadata.name.clone().unwrap_or_default(),
            )
        })
        .chain(base.cluster_roles.iter().map(|r| {
            (
                "ClusterRole".to_string(),
                r.metadata.name.clone().unwrap_or_default(),
            )
        }))
        .chain(base.roles.iter().map(|r| {
            (
                "Role".to_string(),
                r.metadata.name.clone().unwrap_or_default(),
            )
        }))
        .chain(base.config_maps.iter().map(|c| {
            (
                "ConfigMap".to_string(),
                c.metadata.name.clone().unwrap_or_default(),
            )
        }))
        .collect();
    for dir in [
        "examples",
        "deploy/overlays/primary",
        "deploy/overlays/fallback",
        "deploy/overlays/mtls",
    ] {
        let path = root().join(dir).join("kustomization.yaml");
        let k: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).expect("kustomization"))
                .unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(k["kind"], "Kustomization", "{dir}");
        for r in k["resources"].as_array().expect("resources") {
            let target = root().join(dir).join(r.as_str().expect("path"));
            assert!(
                target.is_file() || target.join("kustomization.yaml").is_file(),
                "{dir}: resource {r} does not exist"
            );
        }
        for p in k["patches"].as_array().into_iter().flatten() {
            let kind = p["target"]["kind"]
                .as_str()
                .expect("target kind")
                .to_string();
            let name = p["target"]["name"]
                .as_str()
                .expect("target name")
                .to_string();
            assert!(
                base_names.contains(&(kind.clone(), name.clone())),
                "{dir}: patch target {kind} {name} is not in the base"
            );
        }
    }
    // The mTLS overlay's extra objects are the provider side of examples/deployment-mtls.yaml.
    let extra = load("deploy/overlays/mtls/provider.yaml");
    assert_eq!(extra.deployments.len(), 1);
    assert_eq!(extra.services.len(), 1);
    assert_eq!(extra.cert_manager.len(), 5);
}
