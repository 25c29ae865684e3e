//! The `schedule` and `hibernate` entries of a node group: `key=value; key=value` texts that
//! name a cron window and what changes while it is open.

use std::time::Duration;

use super::{HibernateEntry, OptionOverrides, ScheduleEntry};
use crate::schedule::{Cron, MAX_WINDOW, Window, entry_pairs};

/// Drain timeout of a hibernation when the entry names none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn window(pairs: &[(String, String)]) -> Result<Window, String> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    // `;` starts a comment in the INI file: an unquoted entry loses everything after its first
    // `;`, which shows up here as a missing key.
    let hint = if pairs.len() <= 1 {
        " (quote the whole entry: \"cron=...; duration=...\"; an unquoted ; starts a comment)"
    } else {
        ""
    };
    let cron = Cron::parse(get("cron").ok_or_else(|| format!("cron=... is missing{hint}"))?)?;
    let text = get("duration").ok_or_else(|| format!("duration=... is missing{hint}"))?;
    let duration = super::values::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            format!(
                "duration {} is not a duration such as 10h or 1h30m",
                super::shown(text)
            )
        })?;
    if duration > MAX_WINDOW {
        return Err(format!(
            "duration {text} is longer than {} days",
            MAX_WINDOW.as_secs() / 86_400
        ));
    }
    Ok(Window { cron, duration })
}

fn unknown(pairs: &[(String, String)], known: &[&str]) -> Result<(), String> {
    match pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(format!(
            "unknown key {}; known: {}",
            super::shown(k),
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn size(pairs: &[(String, String)], key: &str) -> Result<Option<u32>, String> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| {
            v.parse::<u32>()
                .map_err(|_| format!("{key} {} is not a number ≥ 0", super::shown(v)))
        })
        .transpose()
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "{} is not a boolean (true/yes/on/1 or false/no/off/0)",
            super::shown(v)
        )),
    }
}

const SCHEDULE_KEYS: &[&str] = &[
    "cron",
    "duration",
    "min-size",
    "max-size",
    "standby",
    "scale-down-utilization-threshold",
    "scale-down-gpu-utilization-threshold",
    "scale-down-unneeded-time",
    "scale-down-unready-time",
    "max-node-provision-time",
    "zero-or-max-node-scaling",
    "ignore-daemonsets-utilization",
];

/// One `schedule` entry; `base` is the group's own (min, max), for the checks.
pub fn parse_schedule(text: &str, base: (u32, u32)) -> Result<ScheduleEntry, String> {
    let pairs = entry_pairs(text)?;
    unknown(&pairs, SCHEDULE_KEYS)?;
    let window = window(&pairs)?;
    let min_size = size(&pairs, "min-size")?;
    let max_size = size(&pairs, "max-size")?;
    let standby = size(&pairs, "standby")?;
    let mut options = OptionOverrides::default();
    for (k, v) in &pairs {
        let fraction = || {
            v.parse::<f64>()
                .ok()
                .filter(|x| (0.0..=1.0).contains(x))
                .ok_or_else(|| format!("{k} {} is not a fraction between 0 and 1", super::shown(v)))
        };
        let duration = || {
            super::values::parse_duration(v)
                .ok_or_else(|| format!("{k} {} is not a duration such as 10m", super::shown(v)))
        };
        match k.as_str() {
            "scale-down-utilization-threshold" => {
                options.scale_down_utilization_threshold = Some(fraction()?)
            }
            "scale-down-gpu-utilization-threshold" => {
                options.scale_down_gpu_utilization_threshold = Some(fraction()?)
            }
            "scale-down-unneeded-time" => options.scale_down_unneeded_time = Some(duration()?),
            "scale-down-unready-time" => options.scale_down_unready_time = Some(duration()?),
            "max-node-provision-time" => options.max_node_provision_time = Some(duration()?),
            "zero-or-max-node-scaling" => options.zero_or_max_node_scaling = Some(boolean(v)?),
            "ignore-daemonsets-utilization" => {
                options.ignore_daemonsets_utilization = Some(boolean(v)?)
            }
            _ => {}
        }
    }
    if min_size.is_none() && max_size.is_none() && standby.is_none() && options.is_empty() {
        return Err("changes nothing: give min-size, max-size, standby or an option".into());
    }
    let (min, max) = (min_size.unwrap_or(base.0), max_size.unwrap_or(base.1));
    if min > max {
        return Err(format!(
            "min-size {min} is above max-size {max} while the window is open"
        ));
    }
    if let Some(n) = standby.filter(|n| *n > max) {
        return Err(format!(
            "standby {n} is more than max-size {max} while the window is open (standby servers count toward max-size)"
        ));
    }
    Ok(ScheduleEntry {
        window,
        min_size,
        max_size,
        standby,
        options,
        text: text.trim().to_string(),
    })
}

/// One `hibernate` entry.
pub fn parse_hibernate(text: &str) -> Result<HibernateEntry, String> {
    let pairs = entry_pairs(text)?;
    unknown(&pairs, &["cron", "duration", "force", "drain-timeout"])?;
    let window = window(&pairs)?;
    let mut force = false;
    let mut drain_timeout = DEFAULT_DRAIN_TIMEOUT;
    for (k, v) in &pairs {
        match k.as_str() {
            "force" => force = boolean(v)?,
            "drain-timeout" => {
                drain_timeout = super::values::parse_duration(v)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        format!(
                            "drain-timeout {} is not a duration such as 10m",
                            super::shown(v)
                        )
                    })?
            }
            _ => {}
        }
    }
    Ok(HibernateEntry {
        window,
        force,
        drain_timeout,
        text: text.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_entries() {
        let e = parse_schedule(
            "cron=0 8 * * 1-5; duration=10h; min-size=3; scale-down-unneeded-time=30m",
            (0, 10),
        )
        .expect("valid");
        assert_eq!(e.min_size, Some(3));
        assert_eq!(e.max_size, None);
        assert_eq!(e.window.duration, Duration::from_secs(36_000));
        assert_eq!(
            e.options.scale_down_unneeded_time,
            Some(Duration::from_secs(1800))
        );
        for (bad, why) in [
            ("cron=0 8 * * *; min-size=3", "duration=... is missing"),
            ("duration=1h; min-size=3", "cron=... is missing"),
            ("cron=0 8 * * *; duration=1h", "changes nothing"),
            (
                "cron=0 8 * * *; duration=1h; min-size=20",
                "above max-size 10",
            ),
            (
                "cron=0 8 * * *; duration=1h; size=3",
                "unknown key \"size\"",
            ),
            ("cron=0 8 * *; duration=1h; min-size=3", "needs 5 fields"),
            ("cron=0 8 * * *; duration=20d; min-size=3", "not a duration"),
            (
                "cron=0 8 * * *; duration=400h; min-size=3",
                "longer than 14 days",
            ),
            ("cron=0 8 * * *; duration=1h; min-size=-1", "not a number"),
        ] {
            let e = parse_schedule(bad, (0, 10)).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn hibernate_entries() {
        let h = parse_hibernate("cron=0 20 * * 1-5; duration=12h").expect("valid");
        assert!(!h.force);
        assert_eq!(h.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let h = parse_hibernate("cron=0 20 * * 5; duration=60h; force=yes; drain-timeout=2m")
            .expect("valid");
        assert!(h.force);
        assert_eq!(h.drain_timeout, Duration::from_secs(120));
        assert!(
            parse_hibernate("cron=0 20 * * 5; duration=1h; force=maybe")
                .expect_err("bad")
                .contains("not a boolean")
        );
    }
}
