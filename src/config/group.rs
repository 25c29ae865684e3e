//! One `[nodegroup "name"]` section resolved: node-group values over global defaults over the
//! in-tree provider's defaults, each checked, every problem collected with its line.

use base64::Engine;

use super::read::*;
use super::values::*;
use super::*;

/// A value that may come from the node group or from a global default, with where it came from.
pub(super) struct Sourced<T> {
    value: T,
    line: Option<usize>,
    key: &'static str,
    section: String,
}

pub(super) fn resolve_group(
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

    let standby = match g.int("standby", problems) {
        Ok(Some((n, line))) if n < 0 || n > i64::from(max_size) => {
            problems.add(
                Some(line),
                &label,
                Some("standby"),
                if n < 0 {
                    format!("must be 0 (no standby servers) or a positive number, not {n}")
                } else {
                    format!(
                        "{n} is more than max-size {max_size}: standby servers count toward max-size"
                    )
                },
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
    if let Some(problem) = crate::names::prefix_problem(&name_prefix.value) {
        problems.add(
            name_prefix.line,
            &name_prefix.section,
            Some(name_prefix.key),
            format!("name prefix: {problem}"),
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
                "servers of this group are named {created_prefix}<11 hex>, which filter-name-prefix {} hides: \
                 the provider would never see the servers it creates; start the name prefix with the filter",
                super::shown(filter)
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
                "datacenter {} is not a Kamatera datacenter id such as US-NY2 or EU",
                super::shown(&datacenter.value)
            ),
        );
    }
    let image = pick("image", "default-image");
    // An image id or description: never `=` or a control character.
    if required(&image, "image", problems)
        && let Some((i, c)) = image
            .value
            .chars()
            .enumerate()
            .find(|(_, c)| *c == '=' || c.is_control())
    {
        problems.add(
            image.line,
            &image.section,
            Some(image.key),
            format!(
                "an image id or description has no {c:?} (found at position {}); the value is not shown",
                i + 1
            ),
        );
    }

    let cpu = pick("cpu", "default-cpu");
    if required(&cpu, "cpu", problems) && cpu_cores(&cpu.value).is_none() {
        problems.add(
            cpu.line,
            &cpu.section,
            Some(cpu.key),
            format!(
                "cpu {} must be a number of cores followed by the CPU type A, B, D or T (e.g. 2B)",
                super::shown(&cpu.value)
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
                    "ram {} must be a whole number of megabytes (e.g. 2048)",
                    super::shown(&ram.value)
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
                format!(
                    "billing cycle {} is invalid; use hourly or monthly",
                    super::shown(other)
                ),
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
        match super::entries::parse_schedule(text, (min_size, max_size)) {
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
        match super::entries::parse_hibernate(text) {
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
        standby,
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
pub(super) fn pick_list(
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
pub(super) fn check_specs(
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

/// Reads the GetOptions override keys of a node group.
pub(super) fn read_options(
    g: &Reader<'_>,
    label: &str,
    problems: &mut Problems,
) -> OptionOverrides {
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
