//! From gcfg sections to a validated [`CloudConfig`]: sections filed by key (unknown keys
//! refused with a hint), `[global]` resolved, then each node group; all problems collected.

use std::collections::BTreeMap;

use super::gcfg::{self, Section};
use super::group::resolve_group;
use super::keys::{Kind, global_keys, group_keys};
use super::read::*;
use super::values::{parse_duration, parse_price};
use super::{CloudConfig, ENV_CLIENT_ID, ENV_SECRET, Problem, Secret};

pub const DEFAULT_API_URL: &str = "https://cloudcli.cloudwm.com";
pub const DEFAULT_PROVIDER_ID_PREFIX: &str = "kamatera://";

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
                collect(section, "global", &global_keys(), raw, &mut problems);
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
                collect(section, &label, &group_keys(), raw, &mut problems);
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

/// Files a section's entries into `raw`, reporting unknown keys.
pub(super) fn collect(
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
        if let Some((merged, at)) = entry
            .value
            .as_deref()
            .and_then(|v| super::keys::merged_key(name, v))
        {
            problems.add(
                Some(entry.line),
                label,
                Some(&entry.key),
                format!(
                    "the value holds \"{merged} =\" at position {at}, as if a line break was lost before it; \
                     the value is not shown (it may hold {merged}'s)"
                ),
            );
            continue;
        }
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
pub(super) fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
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

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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

/// A `[global]` value read by `parse`; one it refuses is a problem saying what it should be.
fn parsed<T>(
    r: &Reader<'_>,
    problems: &mut Problems,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
    should_be: &str,
) -> Option<T> {
    let (v, line) = r.non_empty(key)?;
    let value = parse(&v);
    if value.is_none() {
        problems.add(
            Some(line),
            "global",
            Some(key),
            format!("{} is not {should_be}", super::shown(v)),
        );
    }
    value
}

pub(super) fn resolve_global(
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
            // A base URL: no spaces, query or fragment (and so never a merged `key = value`).
            let valid = ["http://", "https://"]
                .iter()
                .any(|s| trimmed.len() > s.len() && trimmed.starts_with(s))
                && !trimmed.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '=' | '?' | '#')
                });
            if !valid {
                problems.add(
                    Some(line),
                    "global",
                    Some("kamatera-api-url"),
                    format!(
                        "{} is not an http:// or https:// base URL (no spaces, query or fragment)",
                        super::shown(&url)
                    ),
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
        parsed(
            &r,
            problems,
            key,
            parse_price,
            "a price (a number ≥ 0, e.g. 0.012)",
        )
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

    let defaults = super::ApiTimeouts::default();
    let mut timeout = |key: &str, default: std::time::Duration| {
        let in_range = |v: &str| {
            parse_duration(v).filter(|d| {
                (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600))
                    .contains(d)
            })
        };
        parsed(
            &r,
            problems,
            key,
            in_range,
            "a duration between 1s and 1h (e.g. 30s, 5m)",
        )
        .unwrap_or(default)
    };
    let api_timeouts = super::ApiTimeouts {
        read: timeout("kamatera-api-timeout", defaults.read),
        power: timeout("kamatera-api-power-timeout", defaults.power),
        create: timeout("kamatera-api-create-timeout", defaults.create),
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
        api_timeouts,
        node_groups: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::values::*;
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
            Err("a value of 8 characters with '=' at position 7 (not shown: it may hold another key's value) is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_', '.')".into())
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
