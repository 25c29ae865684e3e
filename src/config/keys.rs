//! Every cloud-config key, described once: where it may be written (`[global]`, a node group, or
//! a node-group key whose global default is `default-<key>` or the same name), how its value is
//! read, its default and what it does. Unknown-key detection and its hints, `check --keys` and the
//! reference in `docs/config.md` come from this table; a key missing here is refused wherever it
//! is written.

/// How a key's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Str,
    Bool,
    Int,
    /// Repeatable; each occurrence adds an item (a bare key empties the list).
    List,
}

/// One key: its name in a node group and its name in `[global]` (either may be absent), how its
/// value is read, its default and what it does (the reference in `docs/config.md` and
/// `check --keys` are rendered from this).
#[derive(Clone, Copy, Debug)]
pub(super) struct Key {
    pub(super) group: Option<&'static str>,
    pub(super) global: Option<&'static str>,
    pub(super) kind: Kind,
    default: &'static str,
    doc: &'static str,
    /// An addition of this provider: the in-tree provider rejects the key.
    extension: bool,
}

const fn global(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> Key {
    Key {
        group: None,
        global: Some(name),
        kind,
        default,
        doc,
        extension: false,
    }
}

const fn group(name: &'static str, kind: Kind, default: &'static str, doc: &'static str) -> Key {
    Key {
        group: Some(name),
        global: None,
        kind,
        default,
        doc,
        extension: false,
    }
}

/// A node-group key with a global default (`default-<name>` or the same name); the node group's
/// value wins.
const fn both(
    name: &'static str,
    global: &'static str,
    kind: Kind,
    default: &'static str,
    doc: &'static str,
) -> Key {
    Key {
        group: Some(name),
        global: Some(global),
        kind,
        default,
        doc,
        extension: false,
    }
}

impl Key {
    const fn ext(self) -> Key {
        Key {
            extension: true,
            ..self
        }
    }
}

use Kind::{Bool, Int, List, Str};

const DURATION: &str = "a duration such as `10m` or `1h30m`; unset: the autoscaler's flag";
const SCHEDULES: &str = "see [Schedules and hibernation](features.md#schedules-and-hibernation)";

/// The keys.
pub(super) const KEYS: &[Key] = &[
    global(
        "kamatera-api-client-id",
        Str,
        "required",
        "API client id; `KAMATERA_API_CLIENT_ID` overrides it",
    ),
    global(
        "kamatera-api-secret",
        Str,
        "required",
        "API secret; `KAMATERA_API_SECRET` overrides it (then the file need not hold it)",
    ),
    global(
        "kamatera-api-url",
        Str,
        "`https://cloudcli.cloudwm.com`",
        "the cloudcli API; a trailing `/` is ignored",
    ),
    global(
        "cluster-name",
        Str,
        "required",
        "at most 15 characters, no spaces; servers carry the tag `k8sca-<cluster-name>`",
    ),
    global(
        "filter-name-prefix",
        Str,
        "\"\"",
        "only servers whose names start with it are considered",
    ),
    global(
        "provider-id-prefix",
        Str,
        "`kamatera://`",
        "must match the providerID your kubelets register (RKE2: `rke2://`)",
    ),
    global(
        "gpu-label",
        Str,
        "\"\"",
        "the label that marks GPU nodes (the GPULabel answer)",
    )
    .ext(),
    global(
        "timezone",
        Str,
        "`UTC`",
        "IANA time zone the `schedule` and `hibernate` crons are read in",
    )
    .ext(),
    global(
        "pod-price-per-cpu-hour",
        Str,
        "from the cheapest group",
        "PodPrice rate per core and hour, see [Pricing](features.md#pricing-for---expanderprice)",
    )
    .ext(),
    global(
        "pod-price-per-gib-hour",
        Str,
        "from the cheapest group",
        "PodPrice rate per GiB and hour",
    )
    .ext(),
    global(
        "kamatera-api-timeout",
        Str,
        "`30s`",
        "how long one API read (listing, tags, lookup, queue poll) may take; a duration such as `30s`",
    )
    .ext(),
    global(
        "kamatera-api-power-timeout",
        Str,
        "`1m`",
        "how long one power-on, power-off or terminate request may take",
    )
    .ext(),
    global(
        "kamatera-api-create-timeout",
        Str,
        "`5m`",
        "how long one create request may take before its outcome counts as unknown (never resent)",
    )
    .ext(),
    both(
        "min-size",
        "default-min-size",
        Int,
        "1",
        "`0 ≤ min-size ≤ max-size`",
    ),
    both(
        "max-size",
        "default-max-size",
        Int,
        "254",
        "the most servers the group may hold, parked ones included",
    ),
    both(
        "poweroff-on-scale-down",
        "poweroff-on-scale-down",
        Bool,
        "false",
        "park (power off and keep) servers on scale-down instead of terminating them, see [Warm pool](features.md#warm-pool-standby-and-parked-servers)",
    ),
    both(
        "poweron-on-scale-up",
        "poweron-on-scale-up",
        Bool,
        "false",
        "power parked servers on before buying new ones",
    ),
    group(
        "poweroff-on-scale-down-max-servers",
        Int,
        "0",
        "the most servers parked at once; beyond it scale-down terminates (0: no cap)",
    ),
    group(
        "standby",
        Int,
        "0",
        "powered-off servers kept ready for scale-up, bought ahead and never booted (parked ones count); a `schedule` entry may set it, see [Standby pool](features.md#warm-pool-standby-and-parked-servers)",
    )
    .ext(),
    both(
        "name-prefix",
        "default-name-prefix",
        Str,
        "\"\"",
        "servers are named `<name-prefix>-<11 hex>`; must start with `filter-name-prefix`",
    ),
    both(
        "password",
        "default-password",
        Str,
        "generated",
        "root password; empty lets the API generate one",
    ),
    both(
        "ssh-key",
        "default-ssh-key",
        Str,
        "\"\"",
        "public key installed for root",
    ),
    both(
        "datacenter",
        "default-datacenter",
        Str,
        "required",
        "datacenter id, e.g. `US-NY2`",
    ),
    both(
        "image",
        "default-image",
        Str,
        "required",
        "image id or description in that datacenter",
    ),
    both(
        "cpu",
        "default-cpu",
        Str,
        "required",
        "`<cores><type>`, type A, B, D or T (e.g. `2B`)",
    ),
    both("ram", "default-ram", Str, "required", "MB"),
    both(
        "disk",
        "default-disk",
        List,
        "none",
        "repeat for up to 4 disks (`size=40`); a group that names any replaces the global list",
    ),
    both(
        "network",
        "default-network",
        List,
        "none",
        "repeat for up to 4 networks (`name=wan,ip=auto`); a group that names any replaces the global list",
    ),
    both(
        "dailybackup",
        "default-dailybackup",
        Bool,
        "false",
        "daily backups; a group's `false` wins over a global `true`",
    ),
    both(
        "managed",
        "default-managed",
        Bool,
        "false",
        "managed services; a group's `false` wins over a global `true`",
    ),
    both(
        "billingcycle",
        "default-billingcycle",
        Str,
        "`hourly`",
        "`hourly` or `monthly`",
    ),
    both(
        "monthlypackage",
        "default-monthlypackage",
        Str,
        "\"\"",
        "traffic package of monthly billing",
    ),
    both(
        "script-base64",
        "default-script-base64",
        Str,
        "none",
        "the init script that joins the server to the cluster, base64",
    ),
    group(
        "template-label",
        List,
        "none",
        "repeated `key=value`: labels of the template node",
    ),
    group(
        "template-taint",
        List,
        "none",
        "repeated `key=value:Effect` (or `key:Effect`): taints of the template node",
    )
    .ext(),
    group(
        "template-reserved-cpu",
        Str,
        "`100m`",
        "CPU kept out of the template node's allocatable",
    )
    .ext(),
    group(
        "template-reserved-memory",
        Str,
        "`256Mi`",
        "memory kept out of the template node's allocatable",
    )
    .ext(),
    group(
        "scale-down-utilization-threshold",
        Str,
        "autoscaler's",
        "a fraction 0–1 (GetOptions)",
    )
    .ext(),
    group(
        "scale-down-gpu-utilization-threshold",
        Str,
        "autoscaler's",
        "a fraction 0–1 (GetOptions)",
    )
    .ext(),
    group("scale-down-unneeded-time", Str, "autoscaler's", DURATION).ext(),
    group("scale-down-unready-time", Str, "autoscaler's", DURATION).ext(),
    group("max-node-provision-time", Str, "autoscaler's", DURATION).ext(),
    group(
        "zero-or-max-node-scaling",
        Bool,
        "autoscaler's",
        "scale the group all at once or not at all (GetOptions)",
    )
    .ext(),
    group(
        "ignore-daemonsets-utilization",
        Bool,
        "autoscaler's",
        "leave DaemonSet pods out of utilization (GetOptions)",
    )
    .ext(),
    group("schedule", List, "none", SCHEDULES).ext(),
    group("hibernate", List, "none", SCHEDULES).ext(),
    group(
        "price-per-hour",
        Str,
        "none",
        "what one server costs per hour; on every group or none (NodePrice, PodPrice)",
    )
    .ext(),
];

/// The reference table of every key, in Markdown: what `check --keys` prints and
/// `docs/config.md` holds.
pub fn reference() -> String {
    let name = |n: Option<&str>| n.map_or_else(|| "—".to_string(), |n| format!("`{n}`"));
    let mut out = String::from(
        "| node-group key | `[global]` key | default | meaning |\n|---|---|---|---|\n",
    );
    for k in KEYS {
        out.push_str(&format!(
            "| {} | {} | {} | {}{} |\n",
            name(k.group),
            name(k.global),
            k.default,
            if k.extension {
                "(this provider's) "
            } else {
                ""
            },
            k.doc
        ));
    }
    out
}

/// `[global]`'s keys with their kinds.
pub(super) fn global_keys() -> Vec<(&'static str, Kind)> {
    KEYS.iter()
        .filter_map(|k| k.global.map(|n| (n, k.kind)))
        .collect()
}

/// Keys whose values hold `k=v` items of their own (sizes in a schedule, `size=` of a disk,
/// labels): in them only a secret key's name before `=` is taken as a merged line.
const ITEM_KEYS: &[&str] = &[
    "schedule",
    "hibernate",
    "disk",
    "default-disk",
    "network",
    "default-network",
    "template-label",
    "template-taint",
];

/// Keys that hold secrets.
const SECRET_KEYS: &[&str] = &[
    "kamatera-api-secret",
    "kamatera-api-client-id",
    "password",
    "default-password",
    "ssh-key",
    "default-ssh-key",
    "script-base64",
    "default-script-base64",
];

/// Where a value holds another key's `name =` (or `name=`): two lines joined by a lost line
/// break. Returns that key and the position (1-based, in characters) where it starts. In a
/// value of `key`'s that holds `k=v` items itself, or a secret, only a secret key counts.
pub(super) fn merged_key(key: &str, value: &str) -> Option<(&'static str, usize)> {
    // Secrets and keys hold free text or base64 (`ram=` can end a base64 run): there, too, only a
    // secret key's name counts.
    let items = ITEM_KEYS.contains(&key) || SECRET_KEYS.contains(&key);
    let mut best: Option<(&'static str, usize)> = None;
    let names = KEYS
        .iter()
        .flat_map(|k| [k.group, k.global])
        .flatten()
        .filter(|n| !items || SECRET_KEYS.contains(n));
    for name in names {
        let mut from = 0;
        while let Some(at) = value[from..].find(name).map(|i| i + from) {
            let rest = value[at + name.len()..].trim_start_matches([' ', '\t']);
            if rest.starts_with('=') && best.is_none_or(|(_, b)| at < b) {
                best = Some((name, at));
            }
            from = at + name.len();
        }
    }
    best.map(|(name, at)| (name, value[..at].chars().count() + 1))
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
    fn merged_lines_are_found_in_any_value() {
        assert_eq!(
            merged_key(
                "kamatera-api-url",
                "http://127.0.0.1:9kamatera-api-secret = TOP"
            ),
            Some(("kamatera-api-secret", 19))
        );
        assert_eq!(
            merged_key("default-image", "ubuntudefault-password=x"),
            Some(("default-password", 7))
        );
        assert_eq!(merged_key("cpu", "2B"), None);
        // A schedule's own sizes are not merged lines; a secret's name is.
        assert_eq!(
            merged_key("schedule", "cron=0 8 * * *; duration=2h; min-size=3"),
            None
        );
        assert_eq!(
            merged_key("schedule", "cron=0 8 * * *; duration=2hpassword = x"),
            Some(("password", 28))
        );
        assert_eq!(merged_key("template-label", "role=min-size"), None);
        assert_eq!(merged_key("ssh-key", "ssh-ed25519 AAAAram== me"), None);
        assert_eq!(merged_key("password", "Xram=1"), None);
        assert_eq!(merged_key("cluster-name", "c1 min-size"), None);
    }

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

    /// The operator reference is this table, so a key cannot land undocumented.
    #[test]
    fn the_reference_is_the_table() {
        let reference =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
                .expect("docs/config.md");
        assert!(
            reference.contains(&super::reference()),
            "docs/config.md does not hold the key table; paste in the output of \
             `kamatera-ca-provider check --keys`:\n{}",
            super::reference()
        );
        for k in KEYS {
            assert!(!k.doc.is_empty() && !k.default.is_empty(), "{k:?}");
        }
    }
}
