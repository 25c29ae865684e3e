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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
