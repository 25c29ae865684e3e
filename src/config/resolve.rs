//! From gcfg sections to a validated [`CloudConfig`]: the key schema, the in-tree provider's
//! defaults and override rules, and every validation, with all problems collected.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine;
use regex::Regex;

use super::gcfg::{self, Section};
use super::{
    BillingCycle, CloudConfig, DEFAULT_RESERVED_CPU_MILLIS, DEFAULT_RESERVED_MEMORY_MIB,
    ENV_CLIENT_ID, ENV_SECRET, NodeGroupConfig, OptionOverrides, Problem, Secret, ServerConfig,
    TemplateTaint,
};

pub const DEFAULT_API_URL: &str = "https://cloudcli.cloudwm.com";
pub const DEFAULT_PROVIDER_ID_PREFIX: &str = "kamatera://";
const DEFAULT_MIN_SIZE: i64 = 1;
const DEFAULT_MAX_SIZE: i64 = 254;
/// Kamatera accepts at most four disks and four networks per server.
const MAX_DISKS: usize = 4;
const MAX_NETWORKS: usize = 4;
/// Server names are `<name-prefix>-<11 hex>`; Kamatera's name rule allows 40 characters.
const MAX_NAME_PREFIX: usize = 40 - 12;
const MAX_NAME_LEN: usize = 15;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Int,
    List,
}

const GLOBAL_KEYS: &[(&str, Kind)] = &[
    ("kamatera-api-client-id", Kind::Str),
    ("kamatera-api-secret", Kind::Str),
    ("kamatera-api-url", Kind::Str),
    ("cluster-name", Kind::Str),
    ("filter-name-prefix", Kind::Str),
    ("provider-id-prefix", Kind::Str),
    ("poweroff-on-scale-down", Kind::Bool),
    ("poweron-on-scale-up", Kind::Bool),
    ("default-min-size", Kind::Int),
    ("default-max-size", Kind::Int),
    ("default-name-prefix", Kind::Str),
    ("default-password", Kind::Str),
    ("default-ssh-key", Kind::Str),
    ("default-datacenter", Kind::Str),
    ("default-image", Kind::Str),
    ("default-cpu", Kind::Str),
    ("default-ram", Kind::Str),
    ("default-disk", Kind::List),
    ("default-network", Kind::List),
    ("default-dailybackup", Kind::Bool),
    ("default-managed", Kind::Bool),
    ("default-billingcycle", Kind::Str),
    ("default-monthlypackage", Kind::Str),
    ("default-script-base64", Kind::Str),
    ("gpu-label", Kind::Str),
    ("timezone", Kind::Str),
    ("pod-price-per-cpu-hour", Kind::Str),
    ("pod-price-per-gib-hour", Kind::Str),
];

const GROUP_KEYS: &[(&str, Kind)] = &[
    ("min-size", Kind::Int),
    ("max-size", Kind::Int),
    ("poweroff-on-scale-down", Kind::Bool),
    ("poweron-on-scale-up", Kind::Bool),
    ("poweroff-on-scale-down-max-servers", Kind::Int),
    ("name-prefix", Kind::Str),
    ("password", Kind::Str),
    ("ssh-key", Kind::Str),
    ("datacenter", Kind::Str),
    ("image", Kind::Str),
    ("cpu", Kind::Str),
    ("ram", Kind::Str),
    ("disk", Kind::List),
    ("network", Kind::List),
    ("dailybackup", Kind::Bool),
    ("managed", Kind::Bool),
    ("billingcycle", Kind::Str),
    ("monthlypackage", Kind::Str),
    ("script-base64", Kind::Str),
    ("template-label", Kind::List),
    // Extensions of this provider (not in the in-tree one).
    ("template-taint", Kind::List),
    ("template-reserved-cpu", Kind::Str),
    ("template-reserved-memory", Kind::Str),
    ("scale-down-utilization-threshold", Kind::Str),
    ("scale-down-gpu-utilization-threshold", Kind::Str),
    ("scale-down-unneeded-time", Kind::Str),
    ("scale-down-unready-time", Kind::Str),
    ("max-node-provision-time", Kind::Str),
    ("zero-or-max-node-scaling", Kind::Bool),
    ("ignore-daemonsets-utilization", Kind::Bool),
    ("schedule", Kind::List),
    ("hibernate", Kind::List),
    ("price-per-hour", Kind::Str),
];

static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9\-_\s\.]{3,24}$").expect("static regex"));
static CPU_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]+)[ABDT]$").expect("static regex"));
static NAME_PREFIX_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9()_.\-]*$").expect("static regex"));
static LABEL_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$").expect("static regex")
});
static DNS_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex")
});

/// A scalar value with the line it came from.
#[derive(Clone)]
struct Scalar {
    value: Option<String>,
    line: usize,
}

/// A list key: the line it first appeared on and its values with their lines.
type RawList = (usize, Vec<(String, usize)>);

/// The raw entries of one (merged) section, keyed by lowercased key.
#[derive(Default)]
struct RawSection {
    header_line: usize,
    scalars: BTreeMap<&'static str, Scalar>,
    /// List values with their lines; present (possibly empty) once the key appeared.
    lists: BTreeMap<&'static str, RawList>,
}

/// Collects problems; every `add` keeps the location it is given.
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, line: Option<usize>, section: &str, key: Option<&str>, message: String) {
        self.0.push(Problem {
            line,
            section: Some(section.to_string()),
            key: key.map(str::to_string),
            message,
        });
    }
}

/// Resolves config text into a [`CloudConfig`], or every problem found.
pub fn resolve(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CloudConfig, Vec<Problem>> {
    let (sections, syntax_errors) = gcfg::parse(text);
    let mut problems = Problems(
        syntax_errors
            .into_iter()
            .map(|e| Problem {
                line: Some(e.line),
                section: None,
                key: None,
                message: e.message,
            })
            .collect(),
    );

    let mut global: Option<RawSection> = None;
    let mut groups: BTreeMap<String, RawSection> = BTreeMap::new();
    for section in &sections {
        match (section.name.as_str(), &section.subsection) {
            ("global", None) => {
                let raw = global.get_or_insert_with(|| RawSection {
                    header_line: section.line,
                    ..Default::default()
                });
                collect(section, "global", GLOBAL_KEYS, raw, &mut problems);
            }
            ("global", Some(sub)) => problems.add(
                Some(section.line),
                &format!("global \"{sub}\""),
                None,
                "the [global] section takes no name; write [global]".into(),
            ),
            ("nodegroup", Some(name)) => {
                let label = group_label(name);
                let raw = groups.entry(name.clone()).or_insert_with(|| RawSection {
                    header_line: section.line,
                    ..Default::default()
                });
                collect(section, &label, GROUP_KEYS, raw, &mut problems);
            }
            ("nodegroup", None) => problems.add(
                Some(section.line),
                "nodegroup",
                None,
                "a node group section needs a quoted name, e.g. [nodegroup \"workers\"]".into(),
            ),
            (other, sub) => {
                let shown = match sub {
                    Some(sub) => format!("{other} \"{sub}\""),
                    None => other.to_string(),
                };
                let hint = suggest(other, &["global", "nodegroup"])
                    .map(|s| format!(" (did you mean [{s}]?)"))
                    .unwrap_or_default();
                problems.add(
                    Some(section.line),
                    &shown,
                    None,
                    format!("unknown section; expected [global] or [nodegroup \"name\"]{hint}"),
                );
            }
        }
    }

    let global = global.unwrap_or_default();
    let resolved = resolve_global(&global, env, &mut problems);
    let mut node_groups = Vec::new();
    if groups.is_empty() {
        problems.add(
            None,
            "nodegroup",
            None,
            "no node groups defined; add at least one [nodegroup \"name\"] section".into(),
        );
    }
    for (name, raw) in &groups {
        if let Some(g) = resolve_group(name, raw, &global, &resolved, &mut problems) {
            node_groups.push(g);
        }
    }

    let priced: Vec<&str> = node_groups
        .iter()
        .filter(|g| g.price_per_hour.is_some())
        .map(|g| g.name.as_str())
        .collect();
    let unpriced: Vec<&str> = node_groups
        .iter()
        .filter(|g| g.price_per_hour.is_none())
        .map(|g| g.name.as_str())
        .collect();
    if !priced.is_empty() && !unpriced.is_empty() {
        problems.add(
            None,
            &group_label(unpriced[0]),
            Some("price-per-hour"),
            format!(
                "price-per-hour is set on {} but not on {}: the price expander needs every group's price, or none",
                priced.join(", "),
                unpriced.join(", ")
            ),
        );
    }
    if priced.is_empty() && resolved.pod_prices.is_some() {
        problems.add(
            None,
            "global",
            Some("pod-price-per-cpu-hour"),
            "pod prices without node-group prices: set price-per-hour on the node groups".into(),
        );
    }

    if problems.0.is_empty() {
        Ok(CloudConfig {
            node_groups,
            ..resolved
        })
    } else {
        let mut list = problems.0;
        list.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(list)
    }
}

fn group_label(name: &str) -> String {
    format!("nodegroup \"{name}\"")
}

/// Files a section's entries into `raw`, reporting unknown keys.
fn collect(
    section: &Section,
    label: &str,
    schema: &[(&'static str, Kind)],
    raw: &mut RawSection,
    problems: &mut Problems,
) {
    for entry in &section.entries {
        let Some((name, kind)) = schema.iter().find(|(k, _)| *k == entry.key) else {
            let names: Vec<&str> = schema.iter().map(|(k, _)| *k).collect();
            let hint = if label == "global"
                && names.contains(&format!("default-{}", entry.key).as_str())
            {
                format!(
                    " (in [global] node-group settings are written default-{}; or move it into a [nodegroup] section)",
                    entry.key
                )
            } else if let Some(stripped) = entry.key.strip_prefix("default-")
                && label != "global"
                && names.contains(&stripped)
            {
                format!(" (inside a node group the key is {stripped})")
            } else {
                suggest(&entry.key, &names)
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default()
            };
            problems.add(
                Some(entry.line),
                label,
                Some(&entry.key),
                format!("unknown key{hint}"),
            );
            continue;
        };
        if *kind == Kind::List {
            let list = raw.lists.entry(name).or_insert((entry.line, Vec::new()));
            match &entry.value {
                // gcfg: a blank (bare) key empties the list.
                None => list.1.clear(),
                Some(v) => list.1.push((v.clone(), entry.line)),
            }
        } else {
            raw.scalars.insert(
                name,
                Scalar {
                    value: entry.value.clone(),
                    line: entry.line,
                },
            );
        }
    }
}

/// The closest known name, when it is close enough to be a likely typo.
fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for k in known {
        let d = edit_distance(unknown, k);
        let close = d <= 2.max(k.len() / 4) || (k.starts_with(unknown) && unknown.len() >= 4);
        if close && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, k));
        }
    }
    best.map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Context for reading one section's values.
struct Reader<'a> {
    raw: &'a RawSection,
    label: &'a str,
}

impl Reader<'_> {
    /// A string value; a bare key counts as empty.
    fn string(&self, key: &str) -> Option<(String, usize)> {
        self.raw
            .scalars
            .get(key)
            .map(|s| (s.value.clone().unwrap_or_default(), s.line))
    }

    fn non_empty(&self, key: &str) -> Option<(String, usize)> {
        self.string(key).filter(|(v, _)| !v.is_empty())
    }

    fn bool(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        let s = self.raw.scalars.get(key)?;
        let Some(value) = &s.value else {
            return Some(true);
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Some(true),
            "false" | "no" | "off" | "0" => Some(false),
            _ => {
                problems.add(
                    Some(s.line),
                    self.label,
                    Some(key),
                    format!(
                        "invalid boolean {}; use true/yes/on/1 or false/no/off/0",
                        super::shown(value)
                    ),
                );
                None
            }
        }
    }

    /// An integer; `Err(())` after reporting a problem, `Ok(None)` when absent or empty.
    fn int(&self, key: &str, problems: &mut Problems) -> Result<Option<(i64, usize)>, ()> {
        let Some((value, line)) = self.non_empty(key) else {
            return Ok(None);
        };
        match value.trim().parse::<i64>() {
            Ok(n) => Ok(Some((n, line))),
            Err(_) => {
                problems.add(
                    Some(line),
                    self.label,
                    Some(key),
                    format!("invalid integer {}", super::shown(value)),
                );
                Err(())
            }
        }
    }

    fn list(&self, key: &str) -> Option<&RawList> {
        self.raw.lists.get(key)
    }
}

fn resolve_global(
    raw: &RawSection,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> CloudConfig {
    let r = Reader {
        raw,
        label: "global",
    };
    let header = Some(raw.header_line).filter(|l| *l > 0);
    let from_env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

    let api_client_id = from_env(ENV_CLIENT_ID)
        .or_else(|| r.non_empty("kamatera-api-client-id").map(|(v, _)| v))
        .unwrap_or_default();
    if api_client_id.is_empty() {
        problems.add(
            header,
            "global",
            Some("kamatera-api-client-id"),
            format!("kamatera api client id is not set (set it here or in ${ENV_CLIENT_ID})"),
        );
    }
    let api_secret = from_env(ENV_SECRET)
        .or_else(|| r.non_empty("kamatera-api-secret").map(|(v, _)| v))
        .unwrap_or_default();
    if api_secret.is_empty() {
        problems.add(
            header,
            "global",
            Some("kamatera-api-secret"),
            format!("kamatera api secret is not set (set it here or in ${ENV_SECRET})"),
        );
    }

    // Both travel as HTTP header values: visible ASCII only. A value from the environment is
    // blamed on its variable, not on the file.
    for (key, var, value) in [
        ("kamatera-api-client-id", ENV_CLIENT_ID, &api_client_id),
        ("kamatera-api-secret", ENV_SECRET, &api_secret),
    ] {
        if !value.is_empty() && !value.chars().all(|c| c.is_ascii_graphic()) {
            if from_env(var).is_some() {
                problems.add(
                    None,
                    "global",
                    Some(key),
                    format!(
                        "${var} (which overrides {key}) must be printable ASCII without spaces (it is sent as an HTTP header)"
                    ),
                );
            } else {
                problems.add(
                    r.string(key).map(|(_, l)| l).or(header),
                    "global",
                    Some(key),
                    "must be printable ASCII without spaces (it is sent as an HTTP header)".into(),
                );
            }
        }
    }

    let api_url = match r.non_empty("kamatera-api-url") {
        None => DEFAULT_API_URL.to_string(),
        Some((url, line)) => {
            let trimmed = url.trim().trim_end_matches('/').to_string();
            let valid = ["http://", "https://"]
                .iter()
                .any(|s| trimmed.len() > s.len() && trimmed.starts_with(s))
                && !trimmed.contains(char::is_whitespace);
            if !valid {
                problems.add(
                    Some(line),
                    "global",
                    Some("kamatera-api-url"),
                    format!("{url:?} is not an http:// or https:// URL"),
                );
            }
            trimmed
        }
    };

    let cluster_name = match r.non_empty("cluster-name") {
        None => {
            problems.add(
                header,
                "global",
                Some("cluster-name"),
                "cluster name is not set".into(),
            );
            String::new()
        }
        Some((name, line)) => {
            check_name(
                &name,
                "cluster name",
                "k8sca-",
                line,
                "cluster-name",
                problems,
            );
            name
        }
    };

    // Typed defaults are read again per node group; their syntax is reported once, here.
    for key in [
        "poweroff-on-scale-down",
        "poweron-on-scale-up",
        "default-dailybackup",
        "default-managed",
    ] {
        r.bool(key, problems);
    }
    for key in ["default-min-size", "default-max-size"] {
        let _ = r.int(key, problems);
    }

    let provider_id_prefix = r
        .non_empty("provider-id-prefix")
        .map(|(v, _)| v)
        .unwrap_or_else(|| DEFAULT_PROVIDER_ID_PREFIX.to_string());

    let timezone = match r.non_empty("timezone") {
        None => crate::schedule::Zone::utc(),
        Some((name, line)) => crate::schedule::Zone::get(name.trim()).unwrap_or_else(|e| {
            problems.add(Some(line), "global", Some("timezone"), e);
            crate::schedule::Zone::utc()
        }),
    };
    let mut price = |key: &str| {
        let (v, line) = r.non_empty(key)?;
        match parse_price(&v) {
            Some(p) => Some(p),
            None => {
                problems.add(
                    Some(line),
                    "global",
                    Some(key),
                    format!(
                        "{} is not a price (a number ≥ 0, e.g. 0.012)",
                        super::shown(v)
                    ),
                );
                None
            }
        }
    };
    let per_cpu = price("pod-price-per-cpu-hour");
    let per_gib = price("pod-price-per-gib-hour");
    let pod_prices = match (per_cpu, per_gib) {
        (Some(c), Some(g)) => Some(super::PodPrices {
            per_cpu_hour: c,
            per_gib_hour: g,
        }),
        (None, None) => None,
        _ => {
            problems.add(
                None,
                "global",
                Some("pod-price-per-cpu-hour"),
                "give pod-price-per-cpu-hour and pod-price-per-gib-hour together".into(),
            );
            None
        }
    };

    CloudConfig {
        api_client_id,
        api_secret: Secret::new(api_secret),
        api_url,
        cluster_name,
        filter_name_prefix: r
            .string("filter-name-prefix")
            .map(|(v, _)| v)
            .unwrap_or_default(),
        provider_id_prefix,
        gpu_label: r.string("gpu-label").map(|(v, _)| v).unwrap_or_default(),
        timezone,
        pod_prices,
        node_groups: Vec::new(),
    }
}

/// Checks a cluster or node-group name: length, no whitespace, and that its tag is valid.
fn check_name(
    name: &str,
    what: &str,
    tag_prefix: &str,
    line: usize,
    key: &str,
    problems: &mut Problems,
) {
    let section = if key == "cluster-name" {
        "global".to_string()
    } else {
        group_label(name)
    };
    let key = Some(key).filter(|k| !k.is_empty());
    if name.len() > MAX_NAME_LEN {
        problems.add(
            Some(line),
            &section,
            key,
            format!(
                "{what} must be at most {MAX_NAME_LEN} characters long (it is {})",
                name.len()
            ),
        );
    }
    if name.contains(char::is_whitespace) {
        problems.add(
            Some(line),
            &section,
            key,
            format!("{what} {name:?} contains whitespace; Kamatera rejects tags with spaces, so every scale-up would fail"),
        );
        return;
    }
    let tag = format!("{tag_prefix}{name}");
    if !TAG_RE.is_match(&tag) {
        problems.add(
            Some(line),
            &section,
            key,
            format!("tag {tag:?} is invalid: tags are 3 to 24 letters, digits, '-', '_' or '.'"),
        );
    }
}

/// A value that may come from the node group or from a global default, with where it came from.
struct Sourced<T> {
    value: T,
    line: Option<usize>,
    key: &'static str,
    section: String,
}

fn resolve_group(
    name: &str,
    raw: &RawSection,
    global_raw: &RawSection,
    global: &CloudConfig,
    problems: &mut Problems,
) -> Option<NodeGroupConfig> {
    let label = group_label(name);
    let g = Reader { raw, label: &label };
    let d = Reader {
        raw: global_raw,
        label: "global",
    };
    let start = problems.0.len();
    let header = Some(raw.header_line);

    if name.is_empty() {
        problems.add(header, &label, None, "node group name is empty".into());
    } else {
        check_name(
            name,
            "node group name",
            "k8scang-",
            raw.header_line,
            "",
            problems,
        );
    }

    // A string setting: a non-empty node-group value wins, else the global default.
    let pick = |key: &'static str, default_key: &'static str| -> Sourced<String> {
        if let Some((v, line)) = g.non_empty(key) {
            return Sourced {
                value: v,
                line: Some(line),
                key,
                section: label.clone(),
            };
        }
        match d.non_empty(default_key) {
            Some((v, line)) => Sourced {
                value: v,
                line: Some(line),
                key: default_key,
                section: "global".into(),
            },
            None => Sourced {
                value: String::new(),
                line: header,
                key,
                section: label.clone(),
            },
        }
    };

    // Sizes.
    let size =
        |key: &'static str, default_key: &'static str, fallback: i64, problems: &mut Problems| {
            match g.int(key, problems) {
                Err(()) => None,
                Ok(Some((v, line))) => Some(Sourced {
                    value: v,
                    line: Some(line),
                    key,
                    section: label.clone(),
                }),
                Ok(None) => match d.int(default_key, &mut Problems(Vec::new())) {
                    Ok(Some((v, line))) => Some(Sourced {
                        value: v,
                        line: Some(line),
                        key: default_key,
                        section: "global".into(),
                    }),
                    Ok(None) => Some(Sourced {
                        value: fallback,
                        line: header,
                        key,
                        section: label.clone(),
                    }),
                    // Reported once, by the global pass below.
                    Err(()) => None,
                },
            }
        };
    let min = size("min-size", "default-min-size", DEFAULT_MIN_SIZE, problems);
    let max = size("max-size", "default-max-size", DEFAULT_MAX_SIZE, problems);
    let mut min_size = 0;
    let mut max_size = 0;
    if let (Some(min), Some(max)) = (min, max) {
        let mut ok = true;
        for s in [&min, &max] {
            if s.value < 0 {
                problems.add(
                    s.line,
                    &s.section,
                    Some(s.key),
                    format!("must not be negative (it is {})", s.value),
                );
                ok = false;
            } else if s.value > i64::from(i32::MAX) {
                problems.add(
                    s.line,
                    &s.section,
                    Some(s.key),
                    format!("{} is too large", s.value),
                );
                ok = false;
            }
        }
        if ok && min.value > max.value {
            problems.add(
                min.line.or(max.line),
                &min.section,
                Some(min.key),
                format!(
                    "min size {} is greater than max size {} ({} in [{}])",
                    min.value, max.value, max.key, max.section
                ),
            );
        }
        min_size = u32::try_from(min.value).unwrap_or(0);
        max_size = u32::try_from(max.value).unwrap_or(0);
    }

    let poweroff_on_scale_down = g
        .bool("poweroff-on-scale-down", problems)
        .or_else(|| d.bool("poweroff-on-scale-down", &mut Problems(Vec::new())))
        .unwrap_or(false);
    let poweron_on_scale_up = g
        .bool("poweron-on-scale-up", problems)
        .or_else(|| d.bool("poweron-on-scale-up", &mut Problems(Vec::new())))
        .unwrap_or(false);
    let poweroff_on_scale_down_max_servers =
        match g.int("poweroff-on-scale-down-max-servers", problems) {
            Ok(Some((n, line))) if n < 0 || n > i64::from(u32::MAX) => {
                problems.add(
                    Some(line),
                    &label,
                    Some("poweroff-on-scale-down-max-servers"),
                    format!("must be 0 (no cap) or a positive number, not {n}"),
                );
                0
            }
            Ok(Some((n, _))) => u32::try_from(n).unwrap_or(0),
            _ => 0,
        };

    // A node group's explicit true/false wins over the global default (upstream could only turn
    // these on).
    let daily_backup = g
        .bool("dailybackup", problems)
        .or_else(|| d.bool("default-dailybackup", &mut Problems(Vec::new())))
        .unwrap_or(false);
    let managed = g
        .bool("managed", problems)
        .or_else(|| d.bool("default-managed", &mut Problems(Vec::new())))
        .unwrap_or(false);

    // Server settings.
    let name_prefix = pick("name-prefix", "default-name-prefix");
    if !NAME_PREFIX_RE.is_match(&name_prefix.value) || name_prefix.value.len() > MAX_NAME_PREFIX {
        problems.add(
            name_prefix.line,
            &name_prefix.section,
            Some(name_prefix.key),
            format!(
                "name prefix {:?} must be at most {MAX_NAME_PREFIX} letters, digits, '-', '_', '.', '(' or ')'",
                name_prefix.value
            ),
        );
    }
    let filter = &global.filter_name_prefix;
    let created_prefix = if name_prefix.value.is_empty() {
        String::new()
    } else {
        format!("{}-", name_prefix.value)
    };
    if !filter.is_empty() && !created_prefix.starts_with(filter.as_str()) {
        problems.add(
            name_prefix.line,
            &name_prefix.section,
            Some(name_prefix.key),
            format!(
                "servers of this group are named {created_prefix}<11 hex>, which filter-name-prefix {filter:?} hides: \
                 the provider would never see the servers it creates; start the name prefix with the filter"
            ),
        );
    }

    let required = |s: &Sourced<String>, what: &str, problems: &mut Problems| {
        if s.value.is_empty() {
            problems.add(
                header,
                &label,
                Some(s.key),
                format!(
                    "{what} for node group {name} is empty (set {} here or default-{} in [global])",
                    s.key, s.key
                ),
            );
            false
        } else {
            true
        }
    };

    let datacenter = pick("datacenter", "default-datacenter");
    if required(&datacenter, "datacenter", problems)
        && !datacenter
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        problems.add(
            datacenter.line,
            &datacenter.section,
            Some(datacenter.key),
            format!(
                "datacenter {:?} is not a Kamatera datacenter id such as US-NY2 or EU",
                datacenter.value
            ),
        );
    }
    let image = pick("image", "default-image");
    required(&image, "image", problems);

    let cpu = pick("cpu", "default-cpu");
    if required(&cpu, "cpu", problems) && cpu_cores(&cpu.value).is_none() {
        problems.add(
            cpu.line,
            &cpu.section,
            Some(cpu.key),
            format!(
                "cpu {:?} must be a number of cores followed by the CPU type A, B, D or T (e.g. 2B)",
                cpu.value
            ),
        );
    }
    let ram = pick("ram", "default-ram");
    let mut ram_mb = 0;
    if required(&ram, "ram", problems) {
        match ram.value.trim().parse::<u32>() {
            Ok(n) if n > 0 => ram_mb = n,
            _ => problems.add(
                ram.line,
                &ram.section,
                Some(ram.key),
                format!(
                    "ram {:?} must be a whole number of megabytes (e.g. 2048)",
                    ram.value
                ),
            ),
        }
    }

    let disks = pick_list(&g, &d, "disk", "default-disk", &label);
    let networks = pick_list(&g, &d, "network", "default-network", &label);
    check_specs(
        &disks, "disk", MAX_DISKS, header, &label, name, problems, check_disk,
    );
    check_specs(
        &networks,
        "network",
        MAX_NETWORKS,
        header,
        &label,
        name,
        problems,
        check_network,
    );

    let billing = pick("billingcycle", "default-billingcycle");
    let billing_cycle = match billing.value.as_str() {
        "" | "hourly" => BillingCycle::Hourly,
        "monthly" => BillingCycle::Monthly,
        other => {
            problems.add(
                billing.line,
                &billing.section,
                Some(billing.key),
                format!("billing cycle {other:?} is invalid; use hourly or monthly"),
            );
            BillingCycle::Hourly
        }
    };

    let script_src = pick("script-base64", "default-script-base64");
    let script = if script_src.value.is_empty() {
        None
    } else {
        let problem = |m: String, problems: &mut Problems| {
            problems.add(
                script_src.line,
                &script_src.section,
                Some(script_src.key),
                m,
            )
        };
        match base64::engine::general_purpose::STANDARD.decode(script_src.value.trim()) {
            Err(e) => {
                problem(format!("script is not valid base64: {e}"), problems);
                None
            }
            Ok(bytes) if bytes.is_empty() => {
                problem(format!("script for node group {name} is empty"), problems);
                None
            }
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) => Some(Secret::new(s)),
                Err(_) => {
                    problem("the decoded script is not UTF-8 text".into(), problems);
                    None
                }
            },
        }
    };

    let mut template_labels = Vec::new();
    if let Some((_, entries)) = g.list("template-label") {
        for (entry, line) in entries {
            match parse_label(entry) {
                Ok(kv) => template_labels.push(kv),
                Err(m) => problems.add(Some(*line), &label, Some("template-label"), m),
            }
        }
    }

    let mut template_taints = Vec::new();
    if let Some((_, entries)) = g.list("template-taint") {
        for (entry, line) in entries {
            match parse_taint(entry) {
                Ok(t) => template_taints.push(t),
                Err(m) => problems.add(Some(*line), &label, Some("template-taint"), m),
            }
        }
    }
    let reserved_cpu_millis = match g.non_empty("template-reserved-cpu") {
        None => DEFAULT_RESERVED_CPU_MILLIS,
        Some((v, line)) => parse_cpu_millis(&v).unwrap_or_else(|| {
            problems.add(
                Some(line),
                &label,
                Some("template-reserved-cpu"),
                format!(
                    "{} is not a CPU amount such as 100m or 0.5",
                    super::shown(v)
                ),
            );
            0
        }),
    };
    let reserved_memory_mib = match g.non_empty("template-reserved-memory") {
        None => DEFAULT_RESERVED_MEMORY_MIB,
        Some((v, line)) => parse_memory_mib(&v).unwrap_or_else(|| {
            problems.add(
                Some(line),
                &label,
                Some("template-reserved-memory"),
                format!(
                    "{} is not a memory amount such as 512Mi or 1Gi",
                    super::shown(v)
                ),
            );
            0
        }),
    };
    let options = read_options(&g, &label, problems);
    let mut schedules = Vec::new();
    for (text, line) in g
        .list("schedule")
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default()
    {
        match super::windows::parse_schedule(text, (min_size, max_size)) {
            Ok(e) => schedules.push(e),
            Err(e) => problems.add(Some(*line), &label, Some("schedule"), e),
        }
    }
    let mut hibernate = Vec::new();
    for (text, line) in g
        .list("hibernate")
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default()
    {
        match super::windows::parse_hibernate(text) {
            Ok(e) => hibernate.push(e),
            Err(e) => problems.add(Some(*line), &label, Some("hibernate"), e),
        }
    }
    let price_per_hour = g.non_empty("price-per-hour").and_then(|(v, line)| {
        let p = parse_price(&v);
        if p.is_none() {
            problems.add(
                Some(line),
                &label,
                Some("price-per-hour"),
                format!(
                    "{} is not a price (a number ≥ 0, e.g. 0.05)",
                    super::shown(v)
                ),
            );
        }
        p
    });

    let password = pick("password", "default-password");
    let ssh_key = pick("ssh-key", "default-ssh-key");
    let monthly_package = pick("monthlypackage", "default-monthlypackage");

    if problems.0.len() > start {
        return None;
    }
    Some(NodeGroupConfig {
        name: name.to_string(),
        min_size,
        max_size,
        poweroff_on_scale_down,
        poweron_on_scale_up,
        poweroff_on_scale_down_max_servers,
        template_labels,
        template_taints,
        reserved_cpu_millis,
        reserved_memory_mib,
        options,
        schedules,
        hibernate,
        price_per_hour,
        server: ServerConfig {
            name_prefix: name_prefix.value,
            password: Some(password.value)
                .filter(|p| !p.is_empty())
                .map(Secret::new),
            ssh_key: ssh_key.value,
            datacenter: datacenter.value,
            image: image.value,
            cpu: cpu.value,
            ram_mb,
            disks: disks.value.into_iter().map(|(v, _)| v).collect(),
            networks: networks.value.into_iter().map(|(v, _)| v).collect(),
            daily_backup,
            managed,
            billing_cycle,
            monthly_package: monthly_package.value,
            script,
            tags: vec![
                format!("k8sca-{}", global.cluster_name),
                format!("k8scang-{name}"),
            ],
        },
    })
}

/// A list setting: if the key appears in the node group at all it replaces the global list.
fn pick_list(
    g: &Reader<'_>,
    d: &Reader<'_>,
    key: &'static str,
    default_key: &'static str,
    label: &str,
) -> Sourced<Vec<(String, usize)>> {
    if let Some((line, values)) = g.list(key) {
        return Sourced {
            value: values.clone(),
            line: Some(*line),
            key,
            section: label.to_string(),
        };
    }
    match d.list(default_key) {
        Some((line, values)) => Sourced {
            value: values.clone(),
            line: Some(*line),
            key: default_key,
            section: "global".into(),
        },
        None => Sourced {
            value: Vec::new(),
            line: None,
            key,
            section: label.to_string(),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn check_specs(
    specs: &Sourced<Vec<(String, usize)>>,
    what: &str,
    max: usize,
    header: Option<usize>,
    label: &str,
    group: &str,
    problems: &mut Problems,
    check: fn(&str) -> Result<(), String>,
) {
    if specs.value.is_empty() {
        problems.add(
            specs.line.or(header),
            label,
            Some(what),
            format!(
                "no {what}s for node group {group} (set {what} here or default-{what} in [global])"
            ),
        );
        return;
    }
    if specs.value.len() > max {
        problems.add(
            specs.line,
            &specs.section,
            Some(specs.key),
            format!(
                "{} {what}s given; Kamatera allows at most {max}",
                specs.value.len()
            ),
        );
    }
    for (spec, line) in &specs.value {
        if let Err(m) = check(spec) {
            problems.add(Some(*line), &specs.section, Some(specs.key), m);
        }
    }
}

/// Splits a `k=v,k=v` spec, checking its shape and keys.
fn spec_pairs<'a>(
    spec: &'a str,
    what: &str,
    keys: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    if spec.is_empty() {
        return Err(format!("empty {what} value"));
    }
    if spec.contains(char::is_whitespace) {
        return Err(format!(
            "{what} {spec:?} contains whitespace; Kamatera rejects it (write one {what} per line)"
        ));
    }
    let mut pairs = Vec::new();
    for item in spec.split(',') {
        let Some((k, v)) = item
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        else {
            return Err(format!("{what} {spec:?}: {item:?} is not key=value"));
        };
        if !keys.contains(&k) {
            return Err(format!(
                "{what} {spec:?}: unknown key {k:?} (allowed: {})",
                keys.join(", ")
            ));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

fn check_disk(spec: &str) -> Result<(), String> {
    for (k, v) in spec_pairs(spec, "disk", &["id", "size"])? {
        let ok = match k {
            "id" => matches!(v, "0" | "1" | "2" | "3"),
            _ => v.parse::<u32>().is_ok_and(|n| n > 0),
        };
        if !ok {
            return Err(format!(
                "disk {spec:?}: {k}={v} is invalid ({})",
                if k == "id" {
                    "id is 0 to 3"
                } else {
                    "size is a whole number of GB"
                }
            ));
        }
    }
    Ok(())
}

fn check_network(spec: &str) -> Result<(), String> {
    let pairs = spec_pairs(spec, "network", &["id", "name", "ip"])?;
    if !pairs.iter().any(|(k, _)| *k == "name") {
        return Err(format!(
            "network {spec:?} has no name (e.g. name=wan,ip=auto or name=<lan vlan name>)"
        ));
    }
    Ok(())
}

/// Parses a Kubernetes `key=value` label, checking both parts' syntax.
fn parse_label(entry: &str) -> Result<(String, String), String> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!("{entry:?} is not key=value"));
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && DNS_SUBDOMAIN_RE.is_match(p));
    if name.is_empty() || !prefix_ok || !LABEL_NAME_RE.is_match(name) {
        return Err(format!("{key:?} is not a valid Kubernetes label key"));
    }
    if !LABEL_NAME_RE.is_match(value) {
        return Err(format!(
            "{value:?} is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_', '.')"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Reads the GetOptions override keys of a node group.
fn read_options(g: &Reader<'_>, label: &str, problems: &mut Problems) -> OptionOverrides {
    let threshold = |key: &str, problems: &mut Problems| {
        let (v, line) = g.non_empty(key)?;
        match v.trim().parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => Some(x),
            _ => {
                problems.add(
                    Some(line),
                    label,
                    Some(key),
                    format!(
                        "{} is not a fraction between 0 and 1 (e.g. 0.5)",
                        super::shown(v)
                    ),
                );
                None
            }
        }
    };
    let duration = |key: &str, problems: &mut Problems| {
        let (v, line) = g.non_empty(key)?;
        match parse_duration(&v) {
            Some(d) => Some(d),
            None => {
                problems.add(
                    Some(line),
                    label,
                    Some(key),
                    format!(
                        "{} is not a duration such as 10m, 1h30m or 45s",
                        super::shown(v)
                    ),
                );
                None
            }
        }
    };
    OptionOverrides {
        scale_down_utilization_threshold: threshold("scale-down-utilization-threshold", problems),
        scale_down_gpu_utilization_threshold: threshold(
            "scale-down-gpu-utilization-threshold",
            problems,
        ),
        scale_down_unneeded_time: duration("scale-down-unneeded-time", problems),
        scale_down_unready_time: duration("scale-down-unready-time", problems),
        max_node_provision_time: duration("max-node-provision-time", problems),
        zero_or_max_node_scaling: g.bool("zero-or-max-node-scaling", problems),
        ignore_daemonsets_utilization: g.bool("ignore-daemonsets-utilization", problems),
    }
}

/// A Go-style duration: a sequence of `<number><unit>` with units h, m, s, ms.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += std::time::Duration::try_from_secs_f64(number * seconds).ok()?;
    }
    Some(total)
}

/// A price: a finite number ≥ 0.
fn parse_price(text: &str) -> Option<super::Price> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .map(super::Price)
}

/// `100m` (millicores) or `0.5` / `2` (cores).
fn parse_cpu_millis(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse().ok();
    }
    let cores: f64 = t.parse().ok()?;
    (0.0..10_000.0)
        .contains(&cores)
        .then(|| (cores * 1000.0).round() as u32)
}

/// `512Mi`, `1Gi`, or a plain number of MiB.
fn parse_memory_mib(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Some(g) = t.strip_suffix("Gi") {
        return g.parse::<u32>().ok()?.checked_mul(1024);
    }
    t.strip_suffix("Mi").unwrap_or(t).parse().ok()
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(entry: &str) -> Result<TemplateTaint, String> {
    let Some((kv, effect)) = entry.rsplit_once(':') else {
        return Err(format!(
            "{entry:?} is not key=value:Effect (Effect is NoSchedule, PreferNoSchedule or NoExecute)"
        ));
    };
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint effect {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    // Taint keys and values follow the label rules.
    parse_label(&format!("{key}={value}")).map_err(|m| format!("taint {entry:?}: {m}"))?;
    Ok(TemplateTaint {
        key: key.to_string(),
        value: value.to_string(),
        effect: effect.to_string(),
    })
}

/// Cores from a cpu string such as `2B`.
pub(super) fn cpu_cores(cpu: &str) -> Option<u32> {
    CPU_RE
        .captures(cpu)
        .and_then(|c| c[1].parse::<u32>().ok())
        .filter(|n| *n > 0)
}

/// The `size=` of a disk spec, in GB.
pub(super) fn disk_size_gb(spec: &str) -> Option<u32> {
    spec.split(',')
        .filter_map(|item| item.split_once('='))
        .find(|(k, _)| *k == "size")
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            suggest("min-sise", &["min-size", "max-size"]),
            Some("min-size")
        );
        assert_eq!(suggest("script", &["script-base64"]), Some("script-base64"));
        assert_eq!(suggest("zzz", &["min-size"]), None);
    }

    #[test]
    fn labels() {
        assert_eq!(
            parse_label("example.com/role=worker=x"),
            Err("\"worker=x\" is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_', '.')".into())
        );
        assert_eq!(
            parse_label("example.com/role=worker"),
            Ok(("example.com/role".into(), "worker".into()))
        );
        assert_eq!(parse_label("role="), Ok(("role".into(), String::new())));
        assert!(parse_label("Bad_Prefix/role=x").is_err());
        assert!(parse_label("noequals").is_err());
    }

    #[test]
    fn durations_taints_and_amounts() {
        use std::time::Duration;
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration(""), None);
        let t = parse_taint("dedicated=batch:NoSchedule").expect("taint");
        assert_eq!(
            (t.key.as_str(), t.value.as_str(), t.effect.as_str()),
            ("dedicated", "batch", "NoSchedule")
        );
        let t = parse_taint("example.com/gpu:NoExecute").expect("taint");
        assert_eq!((t.key.as_str(), t.value.as_str()), ("example.com/gpu", ""));
        assert!(parse_taint("a=b:Sometimes").is_err());
        assert!(parse_taint("a=b").is_err());
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_memory_mib("1Gi"), Some(1024));
        assert_eq!(parse_memory_mib("300Mi"), Some(300));
        assert_eq!(parse_memory_mib("lots"), None);
    }

    #[test]
    fn cpu_and_disk() {
        assert_eq!(cpu_cores("2B"), Some(2));
        assert_eq!(cpu_cores("16D"), Some(16));
        assert_eq!(cpu_cores("2X"), None);
        assert_eq!(cpu_cores("0A"), None);
        assert_eq!(disk_size_gb("id=0,size=40"), Some(40));
        assert_eq!(disk_size_gb("id=1"), None);
    }
}
