//! Time windows: cron expressions evaluated in a time zone, windows of a fixed length that open
//! at each firing, and which window of a node group is in force at an instant.
//!
//! - A cron expression has the five classic fields (minute, hour, day of month, month, day of
//!   week) with `*`, `a`, `a-b`, `*/n`, `a-b/n` and lists; months and weekdays also by name; `0`
//!   and `7` are Sunday. When both day fields are restricted, a day matches if either does (as in
//!   Vixie cron).
//! - Firing times are local times in the configured time zone. A local time that does not exist
//!   (the hour skipped when clocks go forward) fires at the same offset after the jump (02:30
//!   becomes 03:30); a local time that happens twice (clocks go back) fires once, the first time.
//! - A window opens at a firing and lasts its duration in elapsed time (a 12 h window across a
//!   DST change is 12 real hours).

use std::time::Duration;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// A time zone by its IANA name (from the bundled database, so every machine agrees).
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    pub fn get(name: &str) -> Result<Zone, String> {
        let tz = TimeZone::get(name).map_err(|_| {
            format!("unknown time zone {name:?} (use an IANA name such as Europe/Berlin or UTC)")
        })?;
        Ok(Zone {
            name: name.to_string(),
            tz,
        })
    }

    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

/// A parsed five-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead a firing is looked for (`0 0 29 2 *` fires every four years at worst).
const SEARCH_DAYS: u32 = 8 * 366;

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "cron {text:?} needs 5 fields (minute hour day-of-month month day-of-week), has {}",
                fields.len()
            ));
        }
        let minutes = field(fields[0], 0, 59, &[], "minute")?;
        let hours = field(fields[1], 0, 23, &[], "hour")?;
        let days = field(fields[2], 1, 31, &[], "day of month")?;
        let months = field(fields[3], 1, 12, &MONTHS, "month")?;
        let mut weekdays = field(fields[4], 0, 7, &WEEKDAYS, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Cron {
            text: fields.join(" "),
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_restricted: fields[2] != "*",
            weekdays_restricted: fields[4] != "*",
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: Timestamp, zone: &Zone) -> Option<Timestamp> {
        let local = t.to_zoned(zone.tz.clone()).datetime();
        let mut day = local.date();
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                for h in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for m in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                        let civil: DateTime = day.at(h as i8, m as i8, 0, 0);
                        if civil <= local {
                            continue;
                        }
                        let Ok(z) = civil.to_zoned(zone.tz.clone()) else {
                            continue;
                        };
                        if z.timestamp() > t {
                            return Some(z.timestamp());
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

impl Cron {
    /// The latest firing at or before `t` and after `floor`; the search walks back day by day
    /// only as far as `floor`, so it costs the same for `* * * * *` as for a daily entry.
    pub fn last_at_or_before(
        &self,
        t: Timestamp,
        zone: &Zone,
        floor: Timestamp,
    ) -> Option<Timestamp> {
        let local = t.to_zoned(zone.tz.clone()).datetime();
        let stop = floor.to_zoned(zone.tz.clone()).date().yesterday().ok()?;
        let mut day = local.date();
        while day >= stop {
            if self.day_matches(day) {
                for h in (0..24).rev().filter(|h| self.hours & (1 << h) != 0) {
                    for m in (0..60).rev().filter(|m| self.minutes & (1u64 << m) != 0) {
                        let civil: DateTime = day.at(h as i8, m as i8, 0, 0);
                        if civil > local {
                            continue;
                        }
                        let Ok(z) = civil.to_zoned(zone.tz.clone()) else {
                            continue;
                        };
                        let at = z.timestamp();
                        if at <= t {
                            return (at > floor).then_some(at);
                        }
                    }
                }
            }
            day = day.yesterday().ok()?;
        }
        None
    }
}

/// One `field` of a cron expression as a bit set over `lo..=hi`.
fn field(text: &str, lo: u32, hi: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("cron {what} field {text:?}: {why}");
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Month names count from 1, weekday names from 0.
            return Ok(i as u32 + if names.len() == 12 { 1 } else { 0 });
        }
        let v: u32 = s
            .parse()
            .map_err(|_| bad(&format!("{s:?} is not a number")))?;
        if v < lo || v > hi {
            return Err(bad(&format!("{v} is outside {lo}-{hi}")));
        }
        Ok(v)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad(&format!("step {s:?} is not a positive number")))?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { hi } else { v })
        };
        if from > to {
            return Err(bad(&format!("range {from}-{to} is backwards")));
        }
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    if bits == 0 {
        return Err(bad("empty"));
    }
    Ok(bits)
}

/// Windows of `duration` that open at every firing of `cron`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub cron: Cron,
    pub duration: Duration,
}

/// Longest window accepted (a weekend is 60 h; two weeks leaves room for holidays).
pub const MAX_WINDOW: Duration = Duration::from_secs(14 * 24 * 3600);

impl Window {
    /// If a window is open at `t`: when the latest occurrence opened and when that occurrence
    /// ends (a later firing before then opens the next occurrence).
    pub fn open_at(&self, t: Timestamp, zone: &Zone) -> Option<(Timestamp, Timestamp)> {
        let d = SignedDuration::try_from(self.duration).ok()?;
        let last = self
            .cron
            .last_at_or_before(t, zone, t.checked_sub(d).ok()?)?;
        let end = last.checked_add(d).ok()?;
        (end > t).then_some((last, end))
    }

    /// The next time this window's state may change after `t`: the end of the open occurrence
    /// or the next firing, whichever comes first.
    pub fn next_change(&self, t: Timestamp, zone: &Zone) -> Option<Timestamp> {
        let next = self.cron.next_after(t, zone);
        match (self.open_at(t, zone), next) {
            (Some((_, end)), Some(n)) => Some(end.min(n)),
            (Some((_, end)), None) => Some(end),
            (None, n) => n,
        }
    }
}

/// Parses `key=value; key=value` (the syntax of `schedule` and `hibernate` entries) into pairs,
/// keys lowercased.
pub fn entry_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not key=value"))?;
        let k = k.trim().to_ascii_lowercase();
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("{k} is given twice"));
        }
        out.push((k, v.trim().to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(zone: &Zone, text: &str) -> Timestamp {
        let dt: DateTime = text.parse().expect("civil time");
        dt.to_zoned(zone.tz().clone()).expect("zoned").timestamp()
    }

    fn local(zone: &Zone, t: Timestamp) -> String {
        t.to_zoned(zone.tz().clone())
            .strftime("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    #[test]
    fn parses_fields() {
        let c = Cron::parse("*/15 8-18 * * mon-fri").expect("cron");
        assert_eq!(c.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(c.weekdays, 0b0111110);
        assert_eq!(Cron::parse("0 0 * * 7").expect("cron").weekdays, 1);
        assert_eq!(
            Cron::parse("0 0 1 jan,JUL *").expect("cron").months,
            1 << 1 | 1 << 7
        );
        for (bad, why) in [
            ("0 8 * *", "needs 5 fields"),
            ("60 8 * * *", "60 is outside 0-59"),
            ("0 8-7 * * *", "backwards"),
            ("0 */0 * * *", "step \"0\""),
            ("0 8 * * fun", "\"fun\" is not a number"),
        ] {
            let e = Cron::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn next_firing_in_a_zone() {
        let z = Zone::get("Europe/Berlin").expect("zone");
        let c = Cron::parse("0 8 * * 1-5").expect("cron");
        // Friday 2026-11-20 09:00 → Monday 08:00.
        let n = c.next_after(at(&z, "2026-11-20T09:00"), &z).expect("next");
        assert_eq!(local(&z, n), "2026-11-23 08:00 CET");
        // Strictly after: at 08:00 exactly, the next one is tomorrow's.
        let n = c.next_after(at(&z, "2026-11-23T08:00"), &z).expect("next");
        assert_eq!(local(&z, n), "2026-11-24 08:00 CET");
        // Both day fields restricted: either matches.
        let c = Cron::parse("0 0 1 * mon").expect("cron");
        let n = c.next_after(at(&z, "2026-11-21T00:00"), &z).expect("next");
        assert_eq!(local(&z, n), "2026-11-23 00:00 CET");
    }

    #[test]
    fn dst_gap_and_overlap() {
        let z = Zone::get("Europe/Berlin").expect("zone");
        let c = Cron::parse("30 2 * * *").expect("cron");
        // 2026-03-29: 02:00 → 03:00. The skipped 02:30 fires at 03:30 CEST.
        let n = c.next_after(at(&z, "2026-03-29T00:00"), &z).expect("next");
        assert_eq!(local(&z, n), "2026-03-29 03:30 CEST");
        // 2026-10-25: 03:00 → 02:00. 02:30 happens twice and fires once, the first time.
        let n = c.next_after(at(&z, "2026-10-25T00:00"), &z).expect("next");
        assert_eq!(local(&z, n), "2026-10-25 02:30 CEST");
        let again = c.next_after(n, &z).expect("next");
        assert_eq!(local(&z, again), "2026-10-26 02:30 CET");
        // A 12 h window across the change lasts 12 real hours: 20:00 CEST + 12 h = 07:00 CET.
        let w = Window {
            cron: Cron::parse("0 20 * * *").expect("cron"),
            duration: Duration::from_secs(12 * 3600),
        };
        let (start, end) = w
            .open_at(at(&z, "2026-10-25T01:00"), &z)
            .expect("open at night");
        assert_eq!(local(&z, start), "2026-10-24 20:00 CEST");
        assert_eq!(local(&z, end), "2026-10-25 07:00 CET");
    }

    #[test]
    fn windows_open_and_close_exactly() {
        let z = Zone::utc();
        let w = Window {
            cron: Cron::parse("0 8 * * *").expect("cron"),
            duration: Duration::from_secs(3600),
        };
        let eight = at(&z, "2026-11-21T08:00");
        assert_eq!(
            w.open_at(
                eight.checked_sub(SignedDuration::from_secs(1)).expect("t"),
                &z
            ),
            None
        );
        let (s, e) = w.open_at(eight, &z).expect("open at its start");
        assert_eq!((s, e), (eight, at(&z, "2026-11-21T09:00")));
        assert_eq!(w.open_at(e, &z), None, "closed at its end");
        assert_eq!(
            w.next_change(e, &z),
            Some(at(&z, "2026-11-22T08:00")),
            "next opening"
        );
        // Firings closer than the duration: the latest occurrence is the one in force.
        let w = Window {
            cron: Cron::parse("0 * * * *").expect("cron"),
            duration: Duration::from_secs(90 * 60),
        };
        let t = at(&z, "2026-11-21T11:10");
        let (s, e) = w.open_at(t, &z).expect("open");
        assert_eq!(s, at(&z, "2026-11-21T11:00"));
        assert_eq!(e, at(&z, "2026-11-21T12:30"));
        assert_eq!(w.next_change(t, &z), Some(at(&z, "2026-11-21T12:00")));
    }

    #[test]
    fn every_minute_for_two_weeks_is_cheap_and_right() {
        let z = Zone::get("America/New_York").expect("zone");
        let w = Window {
            cron: Cron::parse("* * * * *").expect("cron"),
            duration: MAX_WINDOW,
        };
        let t = at(&z, "2026-11-01T01:30")
            .checked_add(SignedDuration::from_secs(17))
            .expect("t");
        let (start, end) = w.open_at(t, &z).expect("always open");
        assert_eq!(local(&z, start), "2026-11-01 01:30 EDT");
        assert_eq!(
            end.duration_since(start),
            SignedDuration::try_from(MAX_WINDOW).expect("d")
        );
        assert_eq!(
            w.next_change(t, &z).map(|n| local(&z, n)),
            Some("2026-11-01 01:31 EDT".to_string())
        );
    }

    #[test]
    fn entry_syntax() {
        assert_eq!(
            entry_pairs("cron=0 8 * * 1-5; Duration=10h; min-size=3;").expect("ok"),
            vec![
                ("cron".to_string(), "0 8 * * 1-5".to_string()),
                ("duration".to_string(), "10h".to_string()),
                ("min-size".to_string(), "3".to_string())
            ]
        );
        assert!(entry_pairs("cron=1; cron=2").is_err());
        assert!(entry_pairs("nonsense").is_err());
    }
}
