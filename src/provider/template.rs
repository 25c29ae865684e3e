//! The template node of a node group: what the autoscaler's scheduler simulation assumes a new
//! server will look like (labels, taints, capacity, allocatable) when the group has no live node.

use std::collections::BTreeMap;

pub use crate::config::GROUP_LABEL;
use crate::config::{NodeGroupConfig, TemplateTaint};

/// Pods per node, as upstream providers and the kubelet default.
pub const MAX_PODS: u32 = 110;
/// Share of the first disk kept free by the kubelet's default `nodefs.available` eviction.
const EPHEMERAL_EVICTION_PERCENT: u64 = 10;

/// A provider-side description of a node; the gRPC layer encodes it as a Kubernetes `Node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<TemplateTaint>,
    /// Resource name → quantity string (`cpu` → `2`, `memory` → `4096Mi`).
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
}

/// The template of `group`. It promises only labels something will set: the kubelet's own, and
/// either every label of [`NodeGroupConfig::node_labels`] when `provider_labels` (the provider
/// has Kubernetes access and adds what a node lacks), or only those the shipped join scripts
/// register ([`NodeGroupConfig::join_script_labels`]).
pub fn build(group: &NodeGroupConfig, provider_labels: bool) -> TemplateNode {
    let s = &group.server;
    let name = format!("template-node-for-{}", group.name);
    let mut labels = BTreeMap::from([
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("kubernetes.io/hostname".to_string(), name.clone()),
    ]);
    labels.extend(if provider_labels {
        group.node_labels()
    } else {
        group.join_script_labels()
    });

    let cores = u64::from(s.cpu_cores());
    let ram_mib = u64::from(s.ram_mb);
    let disk_gib = u64::from(s.first_disk_gb().unwrap_or(0));
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), cores.to_string()),
        ("memory".to_string(), format!("{ram_mib}Mi")),
        ("pods".to_string(), MAX_PODS.to_string()),
    ]);
    let cpu_alloc = (cores * 1000).saturating_sub(u64::from(group.reserved_cpu_millis));
    let mem_alloc = ram_mib.saturating_sub(u64::from(group.reserved_memory_mib));
    let mut allocatable = BTreeMap::from([
        ("cpu".to_string(), millis(cpu_alloc)),
        ("memory".to_string(), format!("{mem_alloc}Mi")),
        ("pods".to_string(), MAX_PODS.to_string()),
    ]);
    if disk_gib > 0 {
        capacity.insert("ephemeral-storage".into(), format!("{disk_gib}Gi"));
        let disk_mib = disk_gib * 1024;
        allocatable.insert(
            "ephemeral-storage".into(),
            format!(
                "{}Mi",
                disk_mib - disk_mib * EPHEMERAL_EVICTION_PERCENT / 100
            ),
        );
    }
    TemplateNode {
        name,
        labels,
        taints: group.template_taints.clone(),
        capacity,
        allocatable,
    }
}

/// Millicores as a Kubernetes quantity: whole cores without a suffix.
fn millis(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}
