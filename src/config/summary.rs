//! The human-readable summary `check` prints: global settings, then one block per node group.

use std::fmt::Write;

use super::CloudConfig;

fn seconds(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Renders the resolved config. Secrets are never shown; only whether they are set.
pub fn render(config: &CloudConfig) -> String {
    let mut out = String::new();
    let rows: Vec<(&str, String)> = vec![
        ("api url", config.api_url.clone()),
        ("api client id", config.api_client_id.clone()),
        ("api secret", "set (hidden)".into()),
        ("cluster name", config.cluster_name.clone()),
        ("filter name prefix", or_dash(&config.filter_name_prefix)),
        ("provider id prefix", config.provider_id_prefix.clone()),
        ("gpu label", or_dash(&config.gpu_label)),
        ("time zone", config.timezone.name().to_string()),
        (
            "pod prices",
            match &config.pod_prices {
                Some(p) => format!(
                    "{} per cpu-hour, {} per GiB-hour",
                    p.per_cpu_hour.0, p.per_gib_hour.0
                ),
                None if config
                    .node_groups
                    .iter()
                    .any(|g| g.price_per_hour.is_some()) =>
                {
                    "derived from the node groups' prices".into()
                }
                None => "-".into(),
            },
        ),
        (
            "api timeouts",
            format!(
                "reads {}, power {}, create {}",
                seconds(config.api_timeouts.read),
                seconds(config.api_timeouts.power),
                seconds(config.api_timeouts.create)
            ),
        ),
        ("node groups", config.node_groups.len().to_string()),
    ];
    block(&mut out, "[global]", &rows);

    for g in &config.node_groups {
        let s = &g.server;
        let power = match (g.poweroff_on_scale_down, g.powers_on_pool()) {
            (false, false) => "terminate on scale-down".to_string(),
            (off, on) => {
                let mut parts = Vec::new();
                if off {
                    parts.push(match g.poweroff_on_scale_down_max_servers {
                        0 => "park (power off) on scale-down, no cap".to_string(),
                        n => format!(
                            "park (power off) on scale-down, at most {n} parked, terminate beyond"
                        ),
                    });
                } else {
                    parts.push("terminate on scale-down".into());
                }
                if on && g.has_standby() {
                    parts.push(
                        "scale-up powers on parked servers, then standby ones, then buys".into(),
                    );
                } else if on {
                    parts.push("power on parked servers on scale-up".into());
                } else {
                    parts.push(
                        "parked servers are never reused (poweron-on-scale-up is off)".into(),
                    );
                }
                parts.join(", ")
            }
        };
        let taints = if g.template_taints.is_empty() {
            "-".to_string()
        } else {
            g.template_taints
                .iter()
                .map(super::labels::taint_text)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rows: Vec<(&str, String)> = vec![
            ("size", format!("min {} / max {}", g.min_size, g.max_size)),
            ("datacenter", s.datacenter.clone()),
            ("image", s.image.clone()),
            ("cpu", s.cpu.clone()),
            ("ram", format!("{} MB", s.ram_mb)),
            ("disks", s.disks.join(" ")),
            ("networks", s.networks.join(" ")),
            ("name prefix", or_dash(&s.name_prefix)),
            ("tags", s.tags.join(" ")),
            (
                "billing",
                if s.monthly_package.is_empty() {
                    s.billing_cycle.to_string()
                } else {
                    format!("{} (package {})", s.billing_cycle, s.monthly_package)
                },
            ),
            ("daily backup", yes_no(s.daily_backup)),
            ("managed", yes_no(s.managed)),
            ("power", power),
            ("standby pool", standby(g)),
            ("labels: kubelet", super::labels::KUBELET_LABELS.join(" ")),
            (
                "labels: provider",
                format!(
                    "{} (added to the group's nodes when the provider has Kubernetes access)",
                    pairs(&g.node_labels())
                ),
            ),
            (
                "labels: join script",
                format!(
                    "{} (all the template promises beyond the kubelet's without Kubernetes access)",
                    pairs(&g.join_script_labels())
                ),
            ),
            ("template taints", taints),
            (
                "join script",
                format!(
                    "NODE_LABELS=\"{}\" NODE_TAINTS=\"{}\"",
                    g.join_script_labels_value(),
                    g.join_script_taints_value()
                ),
            ),
            (
                "reserved",
                format!(
                    "cpu {}m, memory {}Mi (template allocatable)",
                    g.reserved_cpu_millis, g.reserved_memory_mib
                ),
            ),
            ("options", options(&g.options)),
            (
                "schedules",
                if g.schedules.is_empty() {
                    "-".into()
                } else {
                    g.schedules
                        .iter()
                        .map(|e| e.text.clone())
                        .collect::<Vec<_>>()
                        .join(" | ")
                },
            ),
            (
                "hibernate",
                if g.hibernate.is_empty() {
                    "-".into()
                } else {
                    g.hibernate
                        .iter()
                        .map(|e| e.text.clone())
                        .collect::<Vec<_>>()
                        .join(" | ")
                },
            ),
            (
                "price",
                g.price_per_hour
                    .map(|p| format!("{} per hour", p.0))
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "password",
                if s.password.is_some() {
                    "set (hidden)".into()
                } else {
                    "generated by Kamatera".into()
                },
            ),
            (
                "ssh key",
                if s.ssh_key.is_empty() {
                    "-".into()
                } else {
                    "set".into()
                },
            ),
            (
                "init script",
                match &s.script {
                    Some(script) => format!("{} bytes (hidden)", script.expose().len()),
                    None => "-".into(),
                },
            ),
        ];
        out.push('\n');
        block(&mut out, &format!("[nodegroup \"{}\"]", g.name), &rows);
    }
    out
}

/// The standby pool per window: outside every window, in each window that sets it, while
/// hibernating.
fn standby(g: &super::NodeGroupConfig) -> String {
    if !g.has_standby() {
        return "none".into();
    }
    let mut parts = vec![format!("{} outside windows", g.standby)];
    for e in g.schedules.iter().filter(|e| e.standby.is_some()) {
        let max = e.max_size.unwrap_or(g.max_size);
        let n = e.standby.unwrap_or(0).min(max);
        parts.push(format!("{n} while \"{}\" is open", e.text));
    }
    if !g.hibernate.is_empty() {
        parts.push("0 while hibernating".into());
    }
    format!(
        "{} (powered-off servers kept ready, parked ones included)",
        parts.join("; ")
    )
}

/// The GetOptions overrides, or a note that the autoscaler's defaults apply.
fn options(o: &super::OptionOverrides) -> String {
    if o.is_empty() {
        return "autoscaler defaults".into();
    }
    let mut parts = Vec::new();
    if let Some(v) = o.scale_down_utilization_threshold {
        parts.push(format!("scale-down-utilization-threshold={v}"));
    }
    if let Some(v) = o.scale_down_gpu_utilization_threshold {
        parts.push(format!("scale-down-gpu-utilization-threshold={v}"));
    }
    if let Some(v) = o.scale_down_unneeded_time {
        parts.push(format!("scale-down-unneeded-time={}s", v.as_secs()));
    }
    if let Some(v) = o.scale_down_unready_time {
        parts.push(format!("scale-down-unready-time={}s", v.as_secs()));
    }
    if let Some(v) = o.max_node_provision_time {
        parts.push(format!("max-node-provision-time={}s", v.as_secs()));
    }
    if let Some(v) = o.zero_or_max_node_scaling {
        parts.push(format!("zero-or-max-node-scaling={v}"));
    }
    if let Some(v) = o.ignore_daemonsets_utilization {
        parts.push(format!("ignore-daemonsets-utilization={v}"));
    }
    parts.join(" ")
}

fn block(out: &mut String, title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let _ = writeln!(out, "{title}");
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
}

/// Every `warning:` line `check` prints after the summary (and `serve` logs at startup): a
/// config file at `path` others may read while it holds the API secret, then what the node
/// groups' labels and taints need.
pub fn warnings(
    config: &CloudConfig,
    path: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    path.and_then(|p| super::permission_warning(p, env))
        .into_iter()
        .chain(config.node_groups.iter().flat_map(|g| g.label_warnings()))
        .collect()
}

fn pairs(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}
