//! Every cloud-config key, described once: where it may be written (`[global]`, a node group, or
//! a node-group key whose global default is `default-<key>` or the same name) and how its value
//! is read. Unknown-key detection and its hints come from this table; a key missing here is
//! refused wherever it is written.

/// How a key's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Bool,
    Int,
    /// Repeatable; each occurrence adds an item (a bare key empties the list).
    List,
}

/// One key: its name in a node group and its name in `[global]` (either may be absent).
#[derive(Clone, Copy, Debug)]
pub(super) struct Key {
    pub(super) group: Option<&'static str>,
    pub(super) global: Option<&'static str>,
    pub(super) kind: Kind,
}

const fn global(name: &'static str, kind: Kind) -> Key {
    Key {
        group: None,
        global: Some(name),
        kind,
    }
}

const fn group(name: &'static str, kind: Kind) -> Key {
    Key {
        group: Some(name),
        global: None,
        kind,
    }
}

/// A node-group key with a global default (`default-<name>` or the same name).
const fn both(name: &'static str, default: &'static str, kind: Kind) -> Key {
    Key {
        group: Some(name),
        global: Some(default),
        kind,
    }
}

use Kind::{Bool, Int, List, Str};

/// The keys. Node-group keys after `template-taint` are extensions of this provider (not in the
/// in-tree one).
pub(super) const KEYS: &[Key] = &[
    global("kamatera-api-client-id", Str),
    global("kamatera-api-secret", Str),
    global("kamatera-api-url", Str),
    global("cluster-name", Str),
    global("filter-name-prefix", Str),
    global("provider-id-prefix", Str),
    global("gpu-label", Str),
    global("timezone", Str),
    global("pod-price-per-cpu-hour", Str),
    global("pod-price-per-gib-hour", Str),
    both("min-size", "default-min-size", Int),
    both("max-size", "default-max-size", Int),
    both("poweroff-on-scale-down", "poweroff-on-scale-down", Bool),
    both("poweron-on-scale-up", "poweron-on-scale-up", Bool),
    group("poweroff-on-scale-down-max-servers", Int),
    both("name-prefix", "default-name-prefix", Str),
    both("password", "default-password", Str),
    both("ssh-key", "default-ssh-key", Str),
    both("datacenter", "default-datacenter", Str),
    both("image", "default-image", Str),
    both("cpu", "default-cpu", Str),
    both("ram", "default-ram", Str),
    both("disk", "default-disk", List),
    both("network", "default-network", List),
    both("dailybackup", "default-dailybackup", Bool),
    both("managed", "default-managed", Bool),
    both("billingcycle", "default-billingcycle", Str),
    both("monthlypackage", "default-monthlypackage", Str),
    both("script-base64", "default-script-base64", Str),
    group("template-label", List),
    group("template-taint", List),
    group("template-reserved-cpu", Str),
    group("template-reserved-memory", Str),
    group("scale-down-utilization-threshold", Str),
    group("scale-down-gpu-utilization-threshold", Str),
    group("scale-down-unneeded-time", Str),
    group("scale-down-unready-time", Str),
    group("max-node-provision-time", Str),
    group("zero-or-max-node-scaling", Bool),
    group("ignore-daemonsets-utilization", Bool),
    group("schedule", List),
    group("hibernate", List),
    group("price-per-hour", Str),
];

/// `[global]`'s keys with their kinds.
pub(super) fn global_keys() -> Vec<(&'static str, Kind)> {
    KEYS.iter()
        .filter_map(|k| k.global.map(|n| (n, k.kind)))
        .collect()
}

/// A node group's keys with their kinds.
pub(super) fn group_keys() -> Vec<(&'static str, Kind)> {
    KEYS.iter()
        .filter_map(|k| k.group.map(|n| (n, k.kind)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_written_once_per_place() {
        for keys in [global_keys(), group_keys()] {
            let mut names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
            names.sort_unstable();
            let before = names.len();
            names.dedup();
            assert_eq!(before, names.len(), "a key is listed twice");
        }
    }

    /// The operator reference documents every key (and so a new key cannot land undocumented).
    #[test]
    fn the_reference_documents_every_key() {
        let reference =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
                .expect("docs/config.md");
        for k in KEYS {
            for name in [k.group, k.global].into_iter().flatten() {
                assert!(
                    reference.contains(&format!("`{name}`")),
                    "`{name}` is not documented"
                );
            }
        }
    }
}
