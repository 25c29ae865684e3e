//! Reading gcfg sections: raw entries by key with their lines, typed reads with problems
//! collected, name checks, and the limits every part of resolution shares.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use super::Problem;

pub(super) const DEFAULT_MIN_SIZE: i64 = 1;
pub(super) const DEFAULT_MAX_SIZE: i64 = 254;
/// Kamatera accepts at most four disks and four networks per server.
pub(super) const MAX_DISKS: usize = 4;
pub(super) const MAX_NETWORKS: usize = 4;
pub(super) const MAX_NAME_LEN: usize = 15;

pub(super) static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9\-_\s\.]{3,24}$").expect("static regex"));
pub(super) static CPU_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]+)[ABDT]$").expect("static regex"));
pub(super) static LABEL_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$").expect("static regex")
});
pub(super) static DNS_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static regex")
});

/// A scalar value with the line it came from.
#[derive(Clone)]
pub(super) struct Scalar {
    pub(super) value: Option<String>,
    pub(super) line: usize,
}

/// A list key: the line it first appeared on and its values with their lines.
type RawList = (usize, Vec<(String, usize)>);

/// The raw entries of one (merged) section, keyed by lowercased key.
#[derive(Default)]
pub(super) struct RawSection {
    pub(super) header_line: usize,
    pub(super) scalars: BTreeMap<&'static str, Scalar>,
    /// List values with their lines; present (possibly empty) once the key appeared.
    pub(super) lists: BTreeMap<&'static str, RawList>,
}

/// Collects problems; every `add` keeps the location it is given.
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(
        &mut self,
        line: Option<usize>,
        section: &str,
        key: Option<&str>,
        message: String,
    ) {
        self.0.push(Problem {
            line,
            section: Some(section.to_string()),
            key: key.map(str::to_string),
            message,
        });
    }
}

pub(super) fn group_label(name: &str) -> String {
    format!("nodegroup \"{name}\"")
}

/// Context for reading one section's values.
pub(super) struct Reader<'a> {
    pub(super) raw: &'a RawSection,
    pub(super) label: &'a str,
}

impl Reader<'_> {
    /// A string value; a bare key counts as empty.
    pub(super) fn string(&self, key: &str) -> Option<(String, usize)> {
        self.raw
            .scalars
            .get(key)
            .map(|s| (s.value.clone().unwrap_or_default(), s.line))
    }

    pub(super) fn non_empty(&self, key: &str) -> Option<(String, usize)> {
        self.string(key).filter(|(v, _)| !v.is_empty())
    }

    pub(super) fn bool(&self, key: &str, problems: &mut Problems) -> Option<bool> {
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
    pub(super) fn int(
        &self,
        key: &str,
        problems: &mut Problems,
    ) -> Result<Option<(i64, usize)>, ()> {
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

    pub(super) fn list(&self, key: &str) -> Option<&RawList> {
        self.raw.lists.get(key)
    }
}

/// Checks a cluster or node-group name: length, no whitespace, and that its tag is valid.
pub(super) fn check_name(
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
            format!(
                "{what} {} contains whitespace; Kamatera rejects tags with spaces, so every scale-up would fail",
                super::shown(name)
            ),
        );
        return;
    }
    let tag = format!("{tag_prefix}{name}");
    if !TAG_RE.is_match(&tag) {
        problems.add(
            Some(line),
            &section,
            key,
            format!(
                "tag {} is invalid: tags are 3 to 24 letters, digits, '-', '_' or '.'",
                super::shown(&tag)
            ),
        );
    }
}
