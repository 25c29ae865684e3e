//! What the client returns, and the tolerant decoding of the API's JSON shapes.

use serde_json::Value;

/// One entry of `GET /service/servers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub datacenter: String,
    pub power: Power,
}

/// Power state from the listing. Anything but `on`/`off` is kept as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    Unknown(String),
}

impl Power {
    pub fn parse(s: &str) -> Power {
        match s {
            "on" => Power::On,
            "off" => Power::Off,
            other => Power::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Power::On => "on",
            Power::Off => "off",
            Power::Unknown(s) => s,
        }
    }
}

/// The state of a queued command (`GET /service/queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandState {
    Pending,
    Executing,
    Progress,
    Complete,
    Error,
    Cancelled,
    /// Any other status text, kept as reported.
    Unknown(String),
}

impl CommandState {
    pub fn parse(s: &str) -> CommandState {
        match s {
            "pending" => CommandState::Pending,
            "executing" => CommandState::Executing,
            "progress" => CommandState::Progress,
            "complete" => CommandState::Complete,
            "error" => CommandState::Error,
            "cancelled" | "canceled" => CommandState::Cancelled,
            other => CommandState::Unknown(other.to_string()),
        }
    }

    /// Complete, error and cancelled never change again.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            CommandState::Complete | CommandState::Error | CommandState::Cancelled
        )
    }

    pub fn as_str(&self) -> &str {
        match self {
            CommandState::Pending => "pending",
            CommandState::Executing => "executing",
            CommandState::Progress => "progress",
            CommandState::Complete => "complete",
            CommandState::Error => "error",
            CommandState::Cancelled => "cancelled",
            CommandState::Unknown(s) => s,
        }
    }
}

/// One command's status, with its log text (lines mentioning passwords removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandStatus {
    pub id: String,
    pub state: CommandState,
    pub log: String,
}

/// What a lookup of one server the listing lacks found ([`super::Client::lookup_server`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The API has it: the listing omitted it.
    Exists(Server),
    /// The API gave a sign it does not exist.
    Absent(AbsenceSign),
}

/// Which sign of absence a lookup got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbsenceSign {
    /// The id path refused with a reason and the name path (exact, escaped, with
    /// `allow-no-servers`) matched no server: both of the API's ways of looking agree.
    IdAndName,
    /// The id path refused with a reason; the name cannot be asked for safely (characters the
    /// provider does not escape), so the id's answer stands alone.
    IdOnly,
}

impl AbsenceSign {
    pub fn as_str(self) -> &'static str {
        match self {
            AbsenceSign::IdAndName => "id_and_name",
            AbsenceSign::IdOnly => "id_only",
        }
    }
}

/// What the queue said of one command ([`super::Client::command_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    Status(CommandStatus),
    /// The API answered without reporting it: the upstream does not know the id (yet), or
    /// answered with an empty body. A command that has not started answers like this.
    Unreported,
}

/// A datacenter from `GET /service/server?datacenter=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datacenter {
    pub id: String,
    pub name: String,
}

/// A disk image from `GET /service/server?images=1&datacenter=X`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub description: String,
}

/// A decoding failure: what was wrong, and the value it was wrong in.
pub(crate) type Shape = (&'static str, Value);

/// `GET /service/servers`: servers whose name starts with `prefix`.
pub(crate) fn decode_servers(v: &Value, prefix: &str) -> Result<Vec<Server>, Shape> {
    let items = v
        .as_array()
        .ok_or(("expected a JSON array of servers", v.clone()))?;
    let mut servers = Vec::with_capacity(items.len());
    for item in items {
        let (Some(name), Some(id)) = (str_field(item, "name"), item.get("id").and_then(id_of))
        else {
            return Err(("a server entry has no string name or id", item.clone()));
        };
        if !name.starts_with(prefix) {
            continue;
        }
        servers.push(Server {
            id,
            name: name.to_string(),
            datacenter: str_field(item, "datacenter")
                .unwrap_or_default()
                .to_string(),
            power: Power::parse(str_field(item, "power").unwrap_or_default()),
        });
    }
    Ok(servers)
}

/// `POST /server/tags`: tag names from `tagName` or the older `tag name`.
pub(crate) fn decode_tags(v: &Value) -> Result<Vec<String>, Shape> {
    let items = v
        .as_array()
        .ok_or(("expected a JSON array of tags", v.clone()))?;
    items
        .iter()
        .map(|t| {
            str_field(t, "tagName")
                .or_else(|| str_field(t, "tag name"))
                .map(str::to_string)
                .ok_or(("a tag entry has no tagName", t.clone()))
        })
        .collect()
}

/// `GET /service/queue?id=..`: statuses, matched by `id`, or by position when the answer has
/// exactly one entry per id asked (logs unredacted; the caller cleans them).
pub(crate) fn decode_queue(v: &Value, asked: &[String]) -> Result<Vec<CommandStatus>, Shape> {
    let items = v
        .as_array()
        .ok_or(("expected a JSON array of commands", v.clone()))?;
    let positional = items.len() == asked.len();
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(("a queue entry is not an object", item.clone()));
            }
            let id = item
                .get("id")
                .and_then(id_of)
                .or_else(|| positional.then(|| asked[i].clone()))
                .ok_or((
                    "a queue entry has no id and the answer does not match the request",
                    v.clone(),
                ))?;
            Ok(CommandStatus {
                id,
                state: CommandState::parse(str_field(item, "status").unwrap_or_default()),
                log: str_field(item, "log").unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// A command id given as a JSON string or number.
pub(crate) fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Every command id of a mutating call's answer: `["id"]`, `"id"`, `[123]`, `123`, or
/// `{"commandIds": [..], "password": ..}`.
pub(crate) fn command_ids(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(id_of).collect(),
        Value::Object(map) => map.get("commandIds").and_then(command_ids),
        other => id_of(other).map(|id| vec![id]),
    }
}

pub(crate) fn str_field<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// Arbitrary JSON, biased towards the shapes the API uses (for property tests).
#[cfg(test)]
pub(crate) fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    use serde_json::json;
    {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z0-9 _-]{0,12}".prop_map(Value::String),
            prop_oneof![
                Just("on"),
                Just("off"),
                Just("complete"),
                Just("error"),
                Just("pending")
            ]
            .prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("id".to_string()),
                        Just("name".to_string()),
                        Just("power".to_string()),
                        Just("status".to_string()),
                        Just("log".to_string()),
                        Just("tagName".to_string()),
                        Just("tag name".to_string()),
                        Just("commandIds".to_string()),
                        Just("message".to_string()),
                        Just("errors".to_string()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            // PROPTEST_CASES runs it longer.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn decoders_never_panic(v in json_value(), prefix in "[a-z-]{0,3}") {
            if let Ok(servers) = decode_servers(&v, &prefix) {
                prop_assert!(servers.iter().all(|s| s.name.starts_with(&prefix)));
            }
            let _ = decode_tags(&v);
            let asked = vec!["1".to_string(), "2".to_string()];
            if let Ok(statuses) = decode_queue(&v, &asked) {
                prop_assert!(statuses.len() <= v.as_array().map_or(0, Vec::len));
            }
            let _ = command_ids(&v);
        }
    }

    #[test]
    fn command_id_shapes() {
        assert_eq!(command_ids(&json!(["12"])), Some(vec!["12".into()]));
        assert_eq!(command_ids(&json!("12")), Some(vec!["12".into()]));
        assert_eq!(command_ids(&json!([12])), Some(vec!["12".into()]));
        assert_eq!(command_ids(&json!(12)), Some(vec!["12".into()]));
        assert_eq!(
            command_ids(&json!({"commandIds": ["7"], "password": "x"})),
            Some(vec!["7".into()])
        );
        assert_eq!(command_ids(&json!([null])), None);
        assert_eq!(command_ids(&json!("")), None);
        assert_eq!(command_ids(&json!({"message": "x"})), None);
    }
}
