//! What a node group's schedule and hibernation say at an instant: the sizes and options in
//! force, whether the group should be hibernating, and when that may next change.
//!
//! Rules:
//! - Outside every window the group's own `min-size`, `max-size` and options apply.
//! - Open `schedule` windows layer over the group's own values: each size or option comes from
//!   the window that opened last among those that set it (on a tie, the one written later in the
//!   file); what no open window sets is the group's. Should the layered min exceed the layered
//!   max, max wins.
//! - Hibernation (a `hibernate` window, or `client hibernate`) beats every schedule: min 0, max 0.
//!   `client resume` during a hibernate window ends hibernation until that window closes.

use jiff::Timestamp;

use crate::config::{HibernateEntry, NodeGroupConfig, OptionOverrides};
use crate::schedule::Zone;

/// Manual hibernation controls of one group (kept in the journal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manual {
    /// `client hibernate`: hibernate until `client resume`.
    pub hibernate: bool,
    /// Force and drain timeout given with the manual hibernate.
    pub force: bool,
    /// `client resume` during a scheduled hibernation: no hibernation until this instant.
    pub resumed_until: Option<Timestamp>,
}

/// What is in force for a group at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct InForce {
    pub min_size: u32,
    pub max_size: u32,
    /// The standby pool wanted (never more than `max_size`; 0 while hibernating).
    pub standby: u32,
    pub options: OptionOverrides,
    /// Index (in file order) of the `schedule` entry with the highest priority among the open
    /// ones.
    pub schedule: Option<usize>,
    /// The group should be hibernating now.
    pub hibernate: bool,
    /// Index of the `hibernate` entry whose window is open (and not overridden by a resume).
    pub hibernate_entry: Option<usize>,
    /// The next instant at which any of this may change.
    pub next_change: Option<Timestamp>,
}

pub fn in_force(g: &NodeGroupConfig, zone: &Zone, t: Timestamp, manual: &Manual) -> InForce {
    let mut next: Option<Timestamp> = None;
    let mut consider = |c: Option<Timestamp>| {
        if let Some(c) = c {
            next = Some(next.map_or(c, |n| n.min(c)));
        }
    };

    let mut open: Vec<(Timestamp, usize)> = Vec::new();
    for (i, e) in g.schedules.iter().enumerate() {
        consider(e.window.next_change(t, zone));
        if let Some((start, _)) = e.window.open_at(t, zone) {
            open.push((start, i));
        }
    }
    // Lowest priority first: earlier start, then earlier in the file.
    open.sort();
    let schedule = open.last().map(|(_, i)| *i);
    let (mut min_size, mut max_size, mut standby, mut options) =
        (g.min_size, g.max_size, g.standby, g.options);
    for (_, i) in &open {
        let e = &g.schedules[*i];
        min_size = e.min_size.unwrap_or(min_size);
        max_size = e.max_size.unwrap_or(max_size);
        standby = e.standby.unwrap_or(standby);
        options = overlay(options, e.options);
    }
    min_size = min_size.min(max_size);
    standby = standby.min(max_size);

    let resumed = manual.resumed_until.is_some_and(|u| t < u);
    if let Some(u) = manual.resumed_until.filter(|u| t < *u) {
        consider(Some(u));
    }
    let mut hibernate_entry = None;
    for (i, e) in g.hibernate.iter().enumerate() {
        consider(e.window.next_change(t, zone));
        if !resumed && e.window.open_at(t, zone).is_some() && hibernate_entry.is_none() {
            hibernate_entry = Some(i);
        }
    }
    let hibernate = manual.hibernate || hibernate_entry.is_some();
    if hibernate {
        min_size = 0;
        max_size = 0;
        standby = 0;
    }
    InForce {
        min_size,
        max_size,
        standby,
        options,
        schedule,
        hibernate,
        hibernate_entry,
        next_change: next,
    }
}

/// The end of the hibernate window open at `t` (for `client resume`: until when it holds).
pub fn open_hibernate_end(
    entries: &[HibernateEntry],
    zone: &Zone,
    t: Timestamp,
) -> Option<Timestamp> {
    entries
        .iter()
        .filter_map(|e| e.window.open_at(t, zone).map(|(_, end)| end))
        .max()
}

fn overlay(base: OptionOverrides, top: OptionOverrides) -> OptionOverrides {
    OptionOverrides {
        scale_down_utilization_threshold: top
            .scale_down_utilization_threshold
            .or(base.scale_down_utilization_threshold),
        scale_down_gpu_utilization_threshold: top
            .scale_down_gpu_utilization_threshold
            .or(base.scale_down_gpu_utilization_threshold),
        scale_down_unneeded_time: top
            .scale_down_unneeded_time
            .or(base.scale_down_unneeded_time),
        scale_down_unready_time: top.scale_down_unready_time.or(base.scale_down_unready_time),
        max_node_provision_time: top.max_node_provision_time.or(base.max_node_provision_time),
        zero_or_max_node_scaling: top
            .zero_or_max_node_scaling
            .or(base.zero_or_max_node_scaling),
        ignore_daemonsets_utilization: top
            .ignore_daemonsets_utilization
            .or(base.ignore_daemonsets_utilization),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CloudConfig;
    use jiff::civil::DateTime;

    fn config(extra: &str, tz: &str) -> CloudConfig {
        let text = format!(
            "[global]\nkamatera-api-client-id = a\nkamatera-api-secret = b\ncluster-name = c\n\
             timezone = {tz}\ndefault-datacenter = EU\ndefault-image = img\n\
             default-network = name=wan,ip=auto\ndefault-script-base64 = IyEvYmluL3NoCg==\n\n\
             [nodegroup \"g\"]\nmin-size = 1\nmax-size = 5\ncpu = 2B\nram = 2048\ndisk = size=20\n{extra}"
        );
        CloudConfig::parse("t.ini", &text, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(cfg: &CloudConfig, text: &str) -> Timestamp {
        let dt: DateTime = text.parse().expect("civil");
        dt.to_zoned(cfg.timezone.tz().clone())
            .expect("zoned")
            .timestamp()
    }

    fn sizes(cfg: &CloudConfig, text: &str) -> (u32, u32, Option<usize>, bool) {
        let f = in_force(
            &cfg.node_groups[0],
            &cfg.timezone,
            at(cfg, text),
            &Manual::default(),
        );
        (f.min_size, f.max_size, f.schedule, f.hibernate)
    }

    #[test]
    fn open_windows_layer_by_start_then_file_order() {
        let cfg = config(
            "schedule = \"cron=0 8 * * *; duration=10h; min-size=3\"\n\
             schedule = \"cron=30 8 * * *; duration=1h; min-size=5; max-size=8\"\n\
             schedule = \"cron=0 8 * * *; duration=2h; max-size=6\"\n",
            "Europe/Berlin",
        );
        assert_eq!(sizes(&cfg, "2026-11-23T07:59"), (1, 5, None, false));
        // Two windows opened at 08:00: min from the first, max from the later entry.
        assert_eq!(sizes(&cfg, "2026-11-23T08:00"), (3, 6, Some(2), false));
        // The peak opened later: its values win.
        assert_eq!(sizes(&cfg, "2026-11-23T08:30"), (5, 8, Some(1), false));
        assert_eq!(sizes(&cfg, "2026-11-23T09:30"), (3, 6, Some(2), false));
        assert_eq!(sizes(&cfg, "2026-11-23T10:00"), (3, 5, Some(0), false));
        assert_eq!(sizes(&cfg, "2026-11-23T18:00"), (1, 5, None, false));
    }

    #[test]
    fn hibernation_beats_schedules_and_resume_holds_until_the_window_ends() {
        let cfg = config(
            "schedule = \"cron=0 8 * * *; duration=14h; min-size=3\"\n\
             hibernate = \"cron=0 20 * * 1-5; duration=12h\"\n",
            "UTC",
        );
        let g = &cfg.node_groups[0];
        let t = at(&cfg, "2026-11-23T21:00");
        let f = in_force(g, &cfg.timezone, t, &Manual::default());
        assert_eq!((f.min_size, f.max_size, f.hibernate), (0, 0, true));
        assert_eq!(f.next_change, Some(at(&cfg, "2026-11-23T22:00")));
        let end = open_hibernate_end(&g.hibernate, &cfg.timezone, t).expect("open");
        assert_eq!(end, at(&cfg, "2026-11-24T08:00"));
        let resumed = Manual {
            resumed_until: Some(end),
            ..Manual::default()
        };
        let f = in_force(g, &cfg.timezone, t, &resumed);
        assert_eq!(
            (f.min_size, f.max_size, f.hibernate),
            (3, 5, false),
            "resumed: the day schedule (until 22:00) is back"
        );
        let f = in_force(g, &cfg.timezone, at(&cfg, "2026-11-24T20:00"), &resumed);
        assert!(f.hibernate, "the next window hibernates again");
        let manual = Manual {
            hibernate: true,
            ..Manual::default()
        };
        let f = in_force(g, &cfg.timezone, at(&cfg, "2026-11-24T12:00"), &manual);
        assert_eq!((f.min_size, f.max_size, f.hibernate), (0, 0, true));
    }

    #[test]
    fn options_overlay() {
        let cfg = config(
            "scale-down-unneeded-time = 10m\nignore-daemonsets-utilization = true\n\
             schedule = \"cron=0 8 * * *; duration=1h; scale-down-unneeded-time=30m\"\n",
            "UTC",
        );
        let f = in_force(
            &cfg.node_groups[0],
            &cfg.timezone,
            at(&cfg, "2026-11-23T08:10"),
            &Manual::default(),
        );
        assert_eq!(
            f.options.scale_down_unneeded_time,
            Some(std::time::Duration::from_secs(1800))
        );
        assert_eq!(f.options.ignore_daemonsets_utilization, Some(true));
    }
}
