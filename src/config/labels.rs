//! The labels a node group's nodes carry, and who puts each one there: the kubelet itself
//! (`kubernetes.io/os|arch|hostname`), the join script (`--node-labels`), or the provider's node
//! controller (with Kubernetes access it adds what a node of the group lacks, as a cloud
//! controller manager would). The template node promises only what one of them will set.

use std::collections::BTreeMap;

use super::{NodeGroupConfig, TemplateTaint};

/// The node group's name, on template nodes and on every node of the group.
pub const GROUP_LABEL: &str = "kamatera.com/node-group";
/// `<cpu>-<ram MB>`, e.g. `2B-4096`.
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// The group's datacenter, e.g. `EU`.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Labels the kubelet sets on its own Node, whatever its flags.
pub const KUBELET_LABELS: [&str; 3] = [
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "kubernetes.io/hostname",
];

impl NodeGroupConfig {
    /// Everything a node of the group should carry beyond the kubelet's own labels: the group
    /// label, instance type, region and the `template-label`s (which win on the same key). The
    /// provider adds what is missing when it has Kubernetes access.
    pub fn node_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (GROUP_LABEL.to_string(), self.name.clone()),
            (
                INSTANCE_TYPE_LABEL.to_string(),
                format!("{}-{}", self.server.cpu, self.server.ram_mb),
            ),
            (REGION_LABEL.to_string(), self.server.datacenter.clone()),
        ]);
        labels.extend(self.template_labels.iter().cloned());
        labels
    }

    /// The labels the shipped join scripts register (`NODE_LABELS`): the group label and the
    /// `template-label`s. Without Kubernetes access these are all the template promises beyond
    /// the kubelet's own.
    pub fn join_script_labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(GROUP_LABEL.to_string(), self.name.clone())]);
        labels.extend(self.template_labels.iter().cloned());
        labels
    }

    /// The join scripts' `NODE_LABELS` value: `k=v` pairs joined by commas.
    pub fn join_script_labels_value(&self) -> String {
        self.join_script_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The join scripts' `NODE_TAINTS` value: `key=value:Effect` pairs joined by commas.
    pub fn join_script_taints_value(&self) -> String {
        self.template_taints
            .iter()
            .map(taint_text)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// What an operator should know about where the group's labels and taints come from:
    /// template taints only the kubelet can register, and template labels the kubelet refuses.
    pub fn label_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.template_taints.is_empty() {
            out.push(format!(
                "[nodegroup \"{}\"] template-taint: the provider cannot add taints after a node joins (pods land first), so the join script must register {} (NODE_TAINTS); check it",
                self.name,
                self.join_script_taints_value()
            ));
        }
        for (key, _) in &self.template_labels {
            if !kubelet_may_set(key) {
                out.push(format!(
                    "[nodegroup \"{}\"] template-label {key}: the kubelet refuses to register labels in the kubernetes.io and k8s.io namespaces other than its own, so only the provider (with Kubernetes access) can set it; leave it out of NODE_LABELS",
                    self.name
                ));
            }
        }
        out
    }
}

/// `key=value:Effect`, or `key:Effect` without a value.
pub fn taint_text(t: &TemplateTaint) -> String {
    if t.value.is_empty() {
        format!("{}:{}", t.key, t.effect)
    } else {
        format!("{}={}:{}", t.key, t.value, t.effect)
    }
}

/// Whether a kubelet may register this label through `--node-labels` (the NodeRestriction
/// admission rules): anything outside the `kubernetes.io` / `k8s.io` namespaces, plus the
/// well-known topology and instance labels and the `kubelet.kubernetes.io/` and
/// `node.kubernetes.io/` prefixes.
pub fn kubelet_may_set(key: &str) -> bool {
    const ALLOWED: [&str; 9] = [
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let Some((namespace, _)) = key.split_once('/') else {
        return true;
    };
    let restricted = |d: &str| namespace == d || namespace.ends_with(&format!(".{d}"));
    if !restricted("kubernetes.io") && !restricted("k8s.io") {
        return true;
    }
    ALLOWED.contains(&key)
        || namespace == "kubelet.kubernetes.io"
        || namespace.ends_with(".kubelet.kubernetes.io")
        || namespace == "node.kubernetes.io"
        || namespace.ends_with(".node.kubernetes.io")
}

#[cfg(test)]
mod tests {
    use super::kubelet_may_set;

    #[test]
    fn kubelet_label_rules() {
        for ok in [
            "kamatera.com/node-group",
            "team",
            "node.kubernetes.io/instance-type",
            "topology.kubernetes.io/region",
            "node.kubernetes.io/pool",
            "kubelet.kubernetes.io/x",
            "example.com/kubernetes.io",
        ] {
            assert!(kubelet_may_set(ok), "{ok}");
        }
        for refused in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "foo.k8s.io/y",
        ] {
            assert!(!kubelet_may_set(refused), "{refused}");
        }
    }
}
