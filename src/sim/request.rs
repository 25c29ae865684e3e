//! Reading requests the way cloudcli-server does (fact sheet §2): fields from a JSON body only
//! with a JSON content type, strings trimmed (passwords excepted), empty strings as missing,
//! PHP's `empty()` and loose comparisons; `k=v` item specs; a create with the server's checks
//! in the server's order, then the upstream's.

use super::*;

/// A request's fields after the server's middleware.
pub(super) struct Fields(Map<String, Value>);

impl Fields {
    /// The body as Laravel's `input()` sees it: a JSON object when the content type says JSON
    /// (malformed JSON reads as no fields), nothing otherwise.
    pub(super) fn read(headers: &HeaderMap, body: &Bytes) -> Fields {
        let json_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.contains("/json") || t.contains("+json"));
        let mut m = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) if json_type => m,
            _ => Map::new(),
        };
        for (k, v) in m.iter_mut() {
            if let Value::String(s) = v {
                // TrimStrings (passwords kept as sent), then ConvertEmptyStringsToNull.
                if k != "password" && k != "password_confirmation" {
                    *s = s.trim().to_string();
                }
                if s.is_empty() {
                    *v = Value::Null;
                }
            }
        }
        Fields(m)
    }

    /// Every field as read, for the echo fault.
    pub(super) fn raw(&self) -> &Map<String, Value> {
        &self.0
    }

    /// A field as text, unless PHP's `empty()` holds for it (absent, null, `""`, `"0"`, `0`,
    /// false, an empty array).
    pub(super) fn present(&self, key: &str) -> Option<String> {
        let text = match self.0.get(key)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(true) => "1".into(),
            _ => return None,
        };
        (text != "0" && text != "0.0").then_some(text)
    }

    /// PHP truthiness: not `empty()`.
    pub(super) fn truthy(&self, key: &str) -> bool {
        self.present(key).is_some()
    }

    /// PHP 7's loose `== "true"`: JSON true or the string `true`; `"1"`, `1`, `"yes"` are not.
    pub(super) fn loosely_true(&self, key: &str) -> bool {
        match self.0.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        }
    }

    /// `name` or `id`, exactly one of them (the server fails generically otherwise).
    pub(super) fn selector(&self) -> Result<Selector, ApiError> {
        match (self.present("name"), self.present("id")) {
            (Some(n), None) => Ok(Selector::Name(n)),
            (None, Some(id)) => Ok(Selector::Id(id)),
            _ => Err(ApiError::Generic),
        }
    }
}

/// A query value as the server reads it: the last of repeated keys (PHP keeps the last),
/// trimmed, and `None` when empty.
pub(super) fn query_value(q: &[(String, String)], key: &str) -> Option<String> {
    q.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A query flag by PHP truthiness: present, not empty, not `0`.
pub(super) fn query_truthy(q: &[(String, String)], key: &str) -> bool {
    query_value(q, key).is_some_and(|v| v != "0")
}

/// `k=v,k=v` items separated by spaces; `None` when an item is malformed.
pub(super) fn spec_items(spec: &str, keys: &[&str]) -> Option<Vec<BTreeMap<String, String>>> {
    spec.split_whitespace()
        .map(|item| {
            item.split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (keys.contains(&k) && !v.is_empty()).then(|| (k.to_string(), v.to_string()))
                })
                .collect::<Option<BTreeMap<_, _>>>()
        })
        .collect()
}

/// Disk or network items with ids 0-3; items without an id take the free ids in order.
fn numbered(
    flag: &str,
    spec: &str,
    keys: &[&str],
) -> Result<Vec<BTreeMap<String, String>>, ApiError> {
    let invalid = || ApiError::BadRequest(format!("invalid flag value ({flag}={spec})"));
    let items = spec_items(spec, keys).ok_or_else(invalid)?;
    let mut slots: [Option<BTreeMap<String, String>>; 4] = Default::default();
    let mut loose = Vec::new();
    for item in items {
        match item.get("id") {
            Some(id) => {
                let n: usize = id.parse().map_err(|_| invalid())?;
                if n > 3 {
                    return Err(ApiError::BadRequest(format!(
                        "invalid item id: {n} ({flag}={spec})"
                    )));
                }
                if slots[n].is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "duplicate item id: {n} ({flag}={spec})"
                    )));
                }
                slots[n] = Some(item);
            }
            None => loose.push(item),
        }
    }
    for item in loose {
        let free = slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid item ids ({flag}={spec})")))?;
        slots[free] = Some(item);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// A `yes`/`no` flag (any case); anything else is an exception in the server.
fn yes_no(m: &Fields, key: &str, default: bool) -> Result<bool, ApiError> {
    match m.present(key).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("yes") => Ok(true),
        Some("no") => Ok(false),
        Some(_) => Err(ApiError::Generic),
    }
}

/// A create request checked as cloudcli-server checks it (fact sheet §4.3), then as the
/// simulated upstream does (datacenter, image, cpu, ram, networks, tags, credentials).
/// Returns the server to create and whether the API generates its password.
pub(super) fn parse_create(
    m: &Fields,
    lans: &[String],
    authorized: bool,
) -> Result<(NewServer, bool), ApiError> {
    // Required flags, the first missing one only, in the server's order.
    let ssh_key = m.present("ssh-key").unwrap_or_default();
    for key in ["name", "password", "datacenter", "image"] {
        let stands_in = key == "password" && !ssh_key.is_empty();
        if !stands_in && m.present(key).is_none() {
            return Err(ApiError::BadRequest(format!(
                "missing required flag ({key})"
            )));
        }
    }
    let name = m.present("name").unwrap_or_default();
    let datacenter = m.present("datacenter").unwrap_or_default();
    let password = m.present("password").unwrap_or_default();
    let disk_text = m.present("disk").unwrap_or_else(|| "id=0,size=20".into());
    let disks = numbered("disk", &disk_text, &["id", "size"])?;
    let net_text = m
        .present("network")
        .unwrap_or_else(|| "id=0,name=wan,ip=auto".into());
    let nets = numbered("network", &net_text, &["id", "name", "ip"])?;

    // The image: letters and digits are an id in the datacenter; one `:` is a full id whose
    // prefix must be the datacenter; anything else is a description looked up upstream first
    // (an unknown datacenter, no match, or bad credentials fail that lookup: an exception).
    let image_arg = m.present("image").unwrap_or_default();
    let known_dc = DATACENTERS.iter().any(|(id, ..)| *id == datacenter);
    let image_id_asked = if image_arg.chars().all(|c| c.is_ascii_alphanumeric()) {
        format!("{datacenter}:{image_arg}")
    } else if image_arg.matches(':').count() == 1 {
        if image_arg.split(':').next() != Some(datacenter.as_str()) {
            return Err(ApiError::Generic);
        }
        image_arg.clone()
    } else {
        if !authorized || !known_dc {
            return Err(ApiError::Generic);
        }
        IMAGES
            .iter()
            .position(|d| *d == image_arg)
            .map(|i| image_id(&datacenter, i))
            .ok_or(ApiError::Generic)?
    };

    // The server's own post-processing: exceptions, answered generically.
    yes_no(m, "dailybackup", false)?;
    yes_no(m, "managed", false)?;
    let power_on_after = yes_no(m, "poweronaftercreate", true)?;
    let billing = match m
        .present("billingcycle")
        .map(|b| b.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("hourly") => "hourly",
        Some("monthly") => "monthly",
        Some(_) => return Err(ApiError::Generic),
    };
    if nets.iter().any(|n| !n.contains_key("name")) || disks.iter().any(|d| !d.contains_key("size"))
    {
        return Err(ApiError::Generic);
    }
    // `quantity` is read and ignored; `passwordValidate`, `billingCycle` and other unknown
    // keys are not read at all.
    let generate = password == "__generate__";

    // The upstream's checks: its refusals come back with its status and text.
    if !authorized {
        return Err(state::refused(NOT_LOGGED_IN));
    }
    if !known_dc {
        return Err(state::refused(format!(
            "Invalid datacenter {datacenter} (4)"
        )));
    }
    let image = (0..IMAGES.len())
        .map(|i| image_id(&datacenter, i))
        .find(|candidate| *candidate == image_id_asked)
        .ok_or_else(|| state::refused(format!("Disk image {image_id_asked} not found (5)")))?;
    let cpu = m.present("cpu").unwrap_or_else(|| "1B".into());
    let cpu_ok = cpu.len() >= 2
        && cpu[..cpu.len() - 1].chars().all(|c| c.is_ascii_digit())
        && matches!(cpu.chars().last(), Some('A' | 'B' | 'D' | 'T'))
        && cpu[..cpu.len() - 1].parse::<u32>().is_ok_and(|n| n > 0);
    if !cpu_ok {
        return Err(state::refused(format!("Invalid CPU {cpu} (7)")));
    }
    let ram_text = m.present("ram").unwrap_or_else(|| "1024".into());
    let ram_mb = ram_text
        .parse::<u64>()
        .ok()
        .filter(|r| (256..=262_144).contains(r))
        .ok_or_else(|| state::refused(format!("Invalid RAM size {ram_text} (8)")))?;
    let disks_gb = disks
        .iter()
        .map(|d| d.get("size").and_then(|s| s.parse::<u64>().ok()))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| state::refused(format!("Invalid disk size ({disk_text}) (9)")))?;
    let mut networks = Vec::new();
    for n in &nets {
        let net = n.get("name").cloned().unwrap_or_default();
        if net != "wan" && !lans.contains(&net) {
            return Err(state::refused(format!("Network {net} not found (10)")));
        }
        networks.push(net);
    }
    let tags: Vec<String> = m
        .present("tag")
        .unwrap_or_default()
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let tag_ok = |t: &String| {
        (3..=24).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if let Some(bad) = tags.iter().find(|t| !tag_ok(t)) {
        return Err(state::refused(format!("Invalid tag name {bad} (11)")));
    }

    Ok((
        NewServer {
            name,
            datacenter,
            image,
            cpu,
            ram_mb,
            disks_gb,
            networks,
            billing: billing.into(),
            power_on_after,
            tags,
        },
        generate,
    ))
}

/// A password as the API generates them: 7 lower, 7 upper, 4 digits, 2 symbols.
pub(super) fn generated_password(seed: u64) -> String {
    let mut x = seed | 1;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut out = String::new();
    for (set, count) in [
        ("abcdefghijklmnopqrstuvwxyz", 7),
        ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 7),
        ("0123456789", 4),
        ("!@#$^&*()~", 2),
    ] {
        let chars: Vec<char> = set.chars().collect();
        for _ in 0..count {
            let i = usize::try_from(next(chars.len() as u64)).unwrap_or(0);
            out.push(chars[i]);
        }
    }
    out
}
