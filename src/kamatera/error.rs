//! Errors of the Kamatera client: one class per way a call can fail, each with a message that is
//! safe to show the autoscaler and a detailed one for our own log. Both are redacted.

use std::fmt;

/// Substrings (lowercase) by which the API says an account limit or the cloud's capacity stopped a
/// request. Kept in one place so the classification can be extended without touching callers.
pub const QUOTA_PATTERNS: &[&str] = &[
    "quota",
    "limit exceeded",
    "limit reached",
    "exceeded the limit",
    "exceeds the limit",
    "exceeds your",
    "over the limit",
    "insufficient",
    "not enough",
    "out of resources",
    "out of stock",
    "no capacity",
    "capacity",
    "maximum number of servers",
];

/// What went wrong, as the caller needs to react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Credentials missing or wrong.
    Unauthorized,
    /// The server (or command) does not exist: "No servers found".
    NotFound,
    /// An account quota or the cloud's capacity refused the request.
    QuotaOrCapacity,
    /// The API rejected the request as malformed (400 and other 4xx).
    InvalidRequest,
    /// The API refused with a reason: an answer the upstream gave, passed on (the create and
    /// queue shape `{"json_decode_error": null, ..}`, or `{"message": "<info> (<code>)"}` on
    /// the paths that address a server), or one of the server's own specific texts. Nothing
    /// was done, and asking again gets the same answer.
    Refused,
    /// The API or the network failed, also after retries (5xx, timeouts, connection errors).
    Transient,
    /// A 200 answer whose shape we do not understand.
    BadResponse,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::NotFound => "not found",
            ErrorClass::QuotaOrCapacity => "quota or capacity",
            ErrorClass::InvalidRequest => "invalid request",
            ErrorClass::Refused => "refused",
            ErrorClass::Transient => "transient",
            ErrorClass::BadResponse => "bad response",
        }
    }
}

/// A failed Kamatera API call. `Display` is the safe message; [`KamateraError::detail`] adds the
/// endpoint, HTTP status, attempts and (redacted, truncated) body for our log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{safe}")]
pub struct KamateraError {
    pub class: ErrorClass,
    safe: String,
    detail: String,
    maybe_processed: bool,
}

impl KamateraError {
    pub(crate) fn new(class: ErrorClass, safe: String, detail: String) -> Self {
        KamateraError {
            class,
            safe,
            detail,
            maybe_processed: false,
        }
    }

    /// Marks an error after which the API may still have carried the request out (timeout,
    /// dropped connection, 5xx, garbled answer).
    pub(crate) fn maybe_processed(mut self, yes: bool) -> Self {
        self.maybe_processed = yes;
        self
    }

    /// True when the request may have been carried out despite the error: for a create, a server
    /// may have been bought. False when the answer proves it was not (refused connection, 429,
    /// 4xx, a quota, auth or not-found message).
    pub fn may_have_been_processed(&self) -> bool {
        self.maybe_processed
    }

    /// The same error with another detail text (class and flags kept).
    pub(crate) fn with_detail(mut self, detail: String) -> Self {
        self.detail = detail;
        self
    }

    /// The message for the autoscaler: no credentials, no raw bodies.
    pub fn safe_message(&self) -> &str {
        &self.safe
    }

    /// The full, redacted explanation for our log.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn is_quota(&self) -> bool {
        self.class == ErrorClass::QuotaOrCapacity
    }
}

/// True when an API message says a quota or capacity limit refused the request.
pub fn is_quota_message(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    QUOTA_PATTERNS.iter().any(|p| lower.contains(p))
}

/// The beginnings of cloudcli-server's own failure texts that name no reason: an exception in the
/// server (from a bad flag to an upstream that could not be reached, so the request may have
/// been carried out), an upstream answer without text, or one that was not JSON.
const GENERIC_TEXTS: &[&str] = &[
    "Failed to run command method",
    "Error response from server",
    "json decode error",
    "Invalid response from server",
    "Unexpected error",
    "Missing env var",
];

/// How an error answer (HTTP status not 2xx) of cloudcli-server reads: the one place that tells
/// a refusal (nothing was done) from a failure that leaves the outcome open (fact sheet §3-§5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorBody {
    /// The upstream's refusal passed on, or a specific text of the server's.
    Refusal,
    /// Laravel's own exception page (`{"error": true, ..}`: unknown path, wrong method, routes
    /// that failed to load): the route never ran.
    NotRouted,
    /// Anything else: a generic text, no body, not JSON.
    Unclear,
}

impl ErrorBody {
    /// `status` is the answer's HTTP status: a 4xx is the server's own validation unless the
    /// body is the upstream's, passed on (`json_decode_error`); a 429 is a rate limit, whatever
    /// it says.
    pub(crate) fn of(status: u16, body: Option<&serde_json::Value>) -> ErrorBody {
        use serde_json::Value;
        let Some(obj) = body.and_then(Value::as_object) else {
            return ErrorBody::Unclear;
        };
        let passed_on = obj.contains_key("json_decode_error");
        if status == 429 || ((400..500).contains(&status) && !passed_on) {
            return ErrorBody::Unclear;
        }
        if obj.get("error") == Some(&Value::Bool(true)) {
            return ErrorBody::NotRouted;
        }
        let message = obj.get("message").and_then(Value::as_str).map(str::trim);
        if message.is_some_and(|m| GENERIC_TEXTS.iter().any(|g| m.starts_with(g))) {
            return ErrorBody::Unclear;
        }
        let refusal = match (obj.get("json_decode_error"), message) {
            // The upstream answered with JSON that is not a success: its text, or (the queue)
            // none at all. An empty text says nothing.
            (Some(Value::Null), Some(m)) => !m.is_empty(),
            (Some(Value::Null), None) => true,
            // The upstream's answer was not JSON: a gateway, not the upstream's word.
            (Some(_), _) => false,
            (None, Some(m)) => !m.is_empty(),
            (None, None) => obj.get("errors").is_some_and(Value::is_array),
        };
        if refusal {
            ErrorBody::Refusal
        } else {
            ErrorBody::Unclear
        }
    }
}

/// True when an API message says the credentials were refused.
pub fn is_auth_message(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("not logged in")
        || lower.contains("unauthorized")
        || lower.contains("authentication failed")
        || lower.contains("invalid api key")
}

/// Replaces every known secret value in text with `<redacted>`, drops lines mentioning a
/// password, and truncates to `max` characters.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// Every form in which a secret we sent may come back in an answer: as sent, base64-encoded
/// (with and without padding, standard and URL-safe), JSON-escaped, and each of its lines of 8
/// characters or more (an echo cut short still shows whole lines). Very short values would
/// redact ordinary words; they are not worth hiding this way.
fn forms(secret: String) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    if secret.len() < 4 {
        return Vec::new();
    }
    let mut out = vec![
        STANDARD.encode(&secret),
        STANDARD_NO_PAD.encode(&secret),
        URL_SAFE.encode(&secret),
        URL_SAFE_NO_PAD.encode(&secret),
    ];
    if let Ok(json) = serde_json::to_string(&secret) {
        out.push(json.trim_matches('"').to_string());
    }
    if secret.contains('\n') {
        out.extend(
            secret
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= 8)
                .map(str::to_string),
        );
    }
    out.push(secret);
    // Longest first, so that a form is replaced whole before a part of it.
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

/// Request fields that carry secrets, as an error may quote them back (`key=value` or
/// `"key": "value"`): their values are redacted whatever they hold.
static SECRET_FIELDS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r#"(?i)("?(?:password|passwordValidate|script-file|userdata-file|ssh-key|AuthSecret|kamatera-api-secret)"?\s*[=:]\s*)("(?:[^"\\]|\\.)*"|[^,;)\n]*)"#,
    )
    .unwrap_or_else(|_| regex::Regex::new("$^").unwrap_or_else(|e| panic!("{e}")))
});

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        Redactor {
            secrets: secrets.into_iter().flat_map(forms).collect(),
        }
    }

    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Self {
        let mut r = self.clone();
        r.secrets.extend(more.into_iter().flat_map(forms));
        r.secrets.sort_by_key(|f| std::cmp::Reverse(f.len()));
        r
    }

    pub fn clean(&self, text: &str, max: usize) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "<redacted>");
            }
        }
        if SECRET_FIELDS.is_match(&out) {
            out = SECRET_FIELDS
                .replace_all(&out, "${1}<redacted>")
                .into_owned();
        }
        if out.to_ascii_lowercase().contains("password") {
            out = out
                .lines()
                .map(|l| {
                    if l.to_ascii_lowercase().contains("password") {
                        "<line mentioning a password redacted>"
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        truncate(&out, max)
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}… ({} characters in all)", s.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        use serde_json::json;
        for (body, want) in [
            (
                json!({"message": "Server not found (6)"}),
                ErrorBody::Refusal,
            ),
            (
                json!({"message": "No servers found (name='x')"}),
                ErrorBody::Refusal,
            ),
            (json!({"json_decode_error": null}), ErrorBody::Refusal),
            (
                json!({"json_decode_error": null, "message": "Invalid CPU 3Q (7)"}),
                ErrorBody::Refusal,
            ),
            (
                json!({"json_decode_error": null, "message": ""}),
                ErrorBody::Unclear,
            ),
            (
                json!({"json_decode_error": "Syntax error"}),
                ErrorBody::Unclear,
            ),
            (
                json!({"message": "Failed to run command method (createServer)"}),
                ErrorBody::Unclear,
            ),
            (
                json!({"message": "Failed to run command method (createServer): Invalid argument (managed)"}),
                ErrorBody::Unclear,
            ),
            (
                json!({"message": "Error response from server: {}", "responses": []}),
                ErrorBody::Unclear,
            ),
            (
                json!({"message": "json decode error: Syntax error"}),
                ErrorBody::Unclear,
            ),
            (
                json!({"error": true, "message": "Not Found"}),
                ErrorBody::NotRouted,
            ),
            (json!({"message": ""}), ErrorBody::Unclear),
            (json!({}), ErrorBody::Unclear),
            (json!(["x"]), ErrorBody::Unclear),
        ] {
            assert_eq!(ErrorBody::of(500, Some(&body)), want, "{body}");
        }
        assert_eq!(ErrorBody::of(500, None), ErrorBody::Unclear);
        // The server's own validation, a rate limit, and the queue's passed-on 404.
        let text = json!({"message": "missing required flag (name)"});
        assert_eq!(ErrorBody::of(400, Some(&text)), ErrorBody::Unclear);
        assert_eq!(ErrorBody::of(429, Some(&text)), ErrorBody::Unclear);
        let bare = json!({"json_decode_error": null});
        assert_eq!(ErrorBody::of(404, Some(&bare)), ErrorBody::Refusal);
    }

    #[test]
    fn quota_messages() {
        assert!(is_quota_message("Server quota exceeded (12)"));
        assert!(is_quota_message("Insufficient resources in datacenter"));
        assert!(!is_quota_message("missing required flag (name)"));
    }

    #[test]
    fn redaction() {
        let r = Redactor::new(["topsecret".to_string(), "ab".to_string()]);
        assert_eq!(r.clean("x topsecret y ab", 100), "x <redacted> y ab");
        assert_eq!(
            r.clean("ok\nPassword: hunter2\nend", 100),
            "ok\n<line mentioning a password redacted>\nend"
        );
        assert!(r.clean(&"x".repeat(50), 10).starts_with("xxxxxxxxxx… (50"));
    }

    #[test]
    fn every_form_of_a_secret_and_every_secret_field_is_redacted() {
        use base64::Engine;
        let script = "#!/bin/sh\nkubeadm join --token abcdef.0123456789abcdef\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(script);
        let r = Redactor::new([script.to_string()]);
        for echo in [
            format!("invalid flag value (script-file={b64})"),
            format!(
                "bad value {}",
                serde_json::to_string(script).unwrap_or_default()
            ),
            "line 2: kubeadm join --token abcdef.0123456789abcdef: failed".to_string(),
            format!("{{\"script-file\": \"{}\", \"x\": 1}}", &b64[..10]),
            "invalid flag value (password=hunter2, ssh-key=ssh-ed25519 AAAA me@x)".into(),
        ] {
            let clean = r.clean(&echo, 1000);
            assert!(!clean.contains("abcdef.0123456789abcdef"), "{clean}");
            assert!(!clean.contains(&b64[..10]), "{clean}");
            assert!(
                !clean.contains("hunter2") && !clean.contains("AAAA"),
                "{clean}"
            );
            assert!(clean.contains("redacted"), "{clean}");
        }
    }
}
