//! Parsers and checks of single values (durations, prices, quantities, taints, labels, disk and
//! network specs). Leaves: they know nothing of sections or defaults.

use super::read::{CPU_RE, DNS_SUBDOMAIN_RE, LABEL_NAME_RE};
use super::*;

/// Splits a `k=v,k=v` spec, checking its shape and keys.
pub(super) fn spec_pairs<'a>(
    spec: &'a str,
    what: &str,
    keys: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    if spec.is_empty() {
        return Err(format!("empty {what} value"));
    }
    if spec.contains(char::is_whitespace) {
        return Err(format!(
            "a {what} contains whitespace; Kamatera rejects it (write one {what} per line)"
        ));
    }
    let mut pairs = Vec::new();
    for item in spec.split(',') {
        let Some((k, v)) = item
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        else {
            return Err(format!(
                "{what}: item {} is not key=value",
                super::shown(item)
            ));
        };
        if !keys.contains(&k) {
            return Err(format!(
                "{what}: unknown key {} (allowed: {})",
                super::shown(k),
                keys.join(", ")
            ));
        }
        pairs.push((k, v));
    }
    Ok(pairs)
}

pub(super) fn check_disk(spec: &str) -> Result<(), String> {
    for (k, v) in spec_pairs(spec, "disk", &["id", "size"])? {
        let ok = match k {
            "id" => matches!(v, "0" | "1" | "2" | "3"),
            _ => v.parse::<u32>().is_ok_and(|n| n > 0),
        };
        if !ok {
            return Err(format!(
                "disk: {k} {} is invalid ({})",
                super::shown(v),
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

pub(super) fn check_network(spec: &str) -> Result<(), String> {
    let pairs = spec_pairs(spec, "network", &["id", "name", "ip"])?;
    if !pairs.iter().any(|(k, _)| *k == "name") {
        return Err(
            "a network has no name (e.g. name=wan,ip=auto or name=<lan vlan name>)".to_string(),
        );
    }
    Ok(())
}

/// Parses a Kubernetes `key=value` label, checking both parts' syntax.
pub(super) fn parse_label(entry: &str) -> Result<(String, String), String> {
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!("{} is not key=value", super::shown(entry)));
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && DNS_SUBDOMAIN_RE.is_match(p));
    if name.is_empty() || !prefix_ok || !LABEL_NAME_RE.is_match(name) {
        return Err(format!(
            "{} is not a valid Kubernetes label key",
            super::shown(key)
        ));
    }
    if !LABEL_NAME_RE.is_match(value) {
        return Err(format!(
            "{} is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_', '.')",
            super::shown(value)
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A Go-style duration: a sequence of `<number><unit>` with units h, m, s, ms.
pub(super) fn parse_duration(text: &str) -> Option<std::time::Duration> {
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
pub(super) fn parse_price(text: &str) -> Option<super::Price> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .map(super::Price)
}

/// `100m` (millicores) or `0.5` / `2` (cores).
pub(super) fn parse_cpu_millis(text: &str) -> Option<u32> {
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
pub(super) fn parse_memory_mib(text: &str) -> Option<u32> {
    let t = text.trim();
    if let Some(g) = t.strip_suffix("Gi") {
        return g.parse::<u32>().ok()?.checked_mul(1024);
    }
    t.strip_suffix("Mi").unwrap_or(t).parse().ok()
}

/// `key=value:Effect` or `key:Effect`.
pub(super) fn parse_taint(entry: &str) -> Result<TemplateTaint, String> {
    let Some((kv, effect)) = entry.rsplit_once(':') else {
        return Err(format!(
            "{} is not key=value:Effect (Effect is NoSchedule, PreferNoSchedule or NoExecute)",
            super::shown(entry)
        ));
    };
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint effect {} must be NoSchedule, PreferNoSchedule or NoExecute",
            super::shown(effect)
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    // Taint keys and values follow the label rules.
    parse_label(&format!("{key}={value}")).map_err(|m| format!("taint: {m}"))?;
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
