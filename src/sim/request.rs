//! Reading request bodies the way the API does: JSON objects, `k=v` specs, yes/no flags, and a
//! create request with the API's validation.

use super::*;

/// A request body as a JSON object (empty body = empty object).
pub(super) fn body_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(json_response(
            StatusCode::BAD_REQUEST,
            json!({ "message": "invalid request body: expected a JSON object" }),
        )),
    }
}

/// A field as text: strings as they are, numbers and booleans printed.
pub(super) fn text(m: &Map<String, Value>, key: &str) -> Option<String> {
    match m.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn truthy(m: &Map<String, Value>, key: &str) -> bool {
    match m.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// `name` or `id`, exactly one of them (the API fails generically otherwise).
pub(super) fn selector(m: &Map<String, Value>) -> Result<Selector, ApiError> {
    match (
        text(m, "name").filter(|s| !s.is_empty()),
        text(m, "id").filter(|s| !s.is_empty()),
    ) {
        (Some(n), None) => Ok(Selector::Name(n)),
        (None, Some(id)) => Ok(Selector::Id(id)),
        _ => Err(ApiError::Generic),
    }
}

/// `k=v,k=v` items separated by spaces, with allowed keys; `None` when malformed.
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

pub(super) fn yes_no(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match text(m, key)
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "" => Ok(default),
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(ApiError::Generic),
    }
}

/// Validates a create request the way cloudcli-server does.
pub(super) fn parse_create(
    m: &Map<String, Value>,
    lans: &[String],
) -> Result<(NewServer, bool), ApiError> {
    let required = |key: &str| {
        text(m, key)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ApiError::BadRequest(format!("missing required flag ({key})")))
    };
    let invalid = |key: &str, value: &str| {
        ApiError::BadRequest(format!("invalid flag value ({key}={value})"))
    };

    let name = required("name")?;
    let datacenter = required("datacenter")?;
    if !DATACENTERS.iter().any(|(id, ..)| *id == datacenter) {
        return Err(invalid("datacenter", &datacenter));
    }
    let image_arg = required("image")?;
    let image_arg = image_arg.trim();
    let image = if image_arg.chars().all(|c| c.is_ascii_alphanumeric()) {
        let id = format!("{datacenter}:{image_arg}");
        (0..IMAGES.len())
            .map(|i| image_id(&datacenter, i))
            .find(|candidate| *candidate == id)
            .ok_or(ApiError::Generic)?
    } else if let Some((dc, _)) = image_arg.split_once(':') {
        if dc != datacenter {
            // The real text only shows with APP_DEBUG; the API answers generically.
            return Err(ApiError::Generic);
        }
        (0..IMAGES.len())
            .map(|i| image_id(&datacenter, i))
            .find(|candidate| candidate == image_arg)
            .ok_or(ApiError::Generic)?
    } else {
        IMAGES
            .iter()
            .position(|d| *d == image_arg)
            .map(|i| image_id(&datacenter, i))
            .ok_or(ApiError::Generic)?
    };

    let cpu = text(m, "cpu")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "1B".into());
    let cpu_ok = cpu.len() >= 2
        && cpu[..cpu.len() - 1].chars().all(|c| c.is_ascii_digit())
        && matches!(cpu.chars().last(), Some('A' | 'B' | 'D' | 'T'))
        && cpu[..cpu.len() - 1].parse::<u32>().is_ok_and(|n| n > 0);
    if !cpu_ok {
        return Err(invalid("cpu", &cpu));
    }
    let ram_text = text(m, "ram")
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "1024".into());
    let ram_mb = ram_text
        .parse::<u64>()
        .ok()
        .filter(|r| (256..=262_144).contains(r))
        .ok_or_else(|| invalid("ram", &ram_text))?;

    let disk_text = text(m, "disk")
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| "id=0,size=20".into());
    let disks = spec_items(&disk_text, &["id", "size"])
        .filter(|d| !d.is_empty() && d.len() <= 4)
        .ok_or_else(|| invalid("disk", &disk_text))?;
    let disks_gb = disks
        .iter()
        .map(|d| d.get("size").map_or(Some(20), |s| s.parse().ok()))
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| invalid("disk", &disk_text))?;

    let net_text = text(m, "network")
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "id=0,name=wan,ip=auto".into());
    let nets = spec_items(&net_text, &["id", "name", "ip"])
        .filter(|n| !n.is_empty() && n.len() <= 4)
        .ok_or_else(|| invalid("network", &net_text))?;
    let mut networks = Vec::new();
    for n in &nets {
        let name = n.get("name").ok_or(ApiError::Generic)?;
        if name != "wan" && !lans.contains(name) {
            return Err(ApiError::Generic);
        }
        networks.push(name.clone());
    }

    yes_no(m, "dailybackup", false)?;
    yes_no(m, "managed", false)?;
    let power_on_after = yes_no(m, "poweronaftercreate", true)?;
    let billing = match text(m, "billingcycle").unwrap_or_default().as_str() {
        "" | "hourly" => "hourly",
        "monthly" => "monthly",
        _ => return Err(ApiError::Generic),
    };

    let password = text(m, "password").unwrap_or_default();
    let ssh_key = text(m, "ssh-key").unwrap_or_default();
    if password.is_empty() && ssh_key.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "missing required flag (password)".into(),
        ));
    }
    let generate = password == "__generate__"
        && text(m, "passwordValidate").as_deref() == Some("__generate__");

    let tags: Vec<String> = text(m, "tag")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let tag_ok = |t: &String| {
        (3..=24).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !tags.iter().all(tag_ok) {
        return Err(ApiError::Generic);
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
