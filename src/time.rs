//! UTC timestamps in the two formats the provider writes, through `jiff`.

use std::time::SystemTime;

use jiff::Timestamp;

/// `secs` since the Unix epoch, in `format` (UTC); the epoch itself when out of range.
fn utc(secs: i64, format: &str) -> String {
    Timestamp::from_second(secs)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime(format)
        .to_string()
}

/// `YYYY-MM-DD HH:MM:SS`, the Kamatera queue's format.
pub fn queue_timestamp(t: SystemTime) -> String {
    let secs = Timestamp::try_from(t).map_or(0, |t| t.as_second());
    utc(secs, "%Y-%m-%d %H:%M:%S")
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as Kubernetes writes times.
pub fn rfc3339(secs: i64) -> String {
    utc(secs, "%Y-%m-%dT%H:%M:%SZ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats() {
        let t = UNIX_EPOCH + Duration::from_secs(1_779_321_845);
        assert_eq!(queue_timestamp(t), "2026-05-21 00:04:05");
        assert_eq!(queue_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
