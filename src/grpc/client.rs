//! A typed client for a running provider: connection with optional mutual TLS, errors as the
//! operator should read them, and JSON and YAML views of a template Node.

use std::path::PathBuf;

use serde_json::{Map, Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use crate::proto::k8s;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client TLS needs all three of --tls-cert, --tls-key and --tls-ca")]
    PartialTls,
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("invalid address {0:?}: expected host:port")]
    Address(String),
    /// The reason is the transport error's chain, each distinct message once.
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The provider answered with an error: `Code: message`, as the autoscaler logs it.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(tonic::Status),
    #[error("the answer does not decode: {0}")]
    Decode(String),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

/// A gRPC code as its name (`FailedPrecondition`), not its description.
fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// An error and its causes, each message once: transport errors wrap the same text several
/// times ("transport error: transport error: ...").
fn reason(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The client side of mutual TLS, as the autoscaler uses it.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Server name to verify; defaults to the host of the address.
    pub server_name: Option<String>,
}

impl ClientTls {
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<Option<ClientTls>, ClientError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(ClientTls {
                cert,
                key,
                ca,
                server_name,
            })),
            _ => Err(ClientError::PartialTls),
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Read(path.display().to_string(), e))
}

/// Connects to `address` (`host:port`, as in the autoscaler's cloud-config).
pub async fn connect(
    address: &str,
    tls: Option<&ClientTls>,
) -> Result<CloudProviderClient<Channel>, ClientError> {
    Ok(CloudProviderClient::new(channel(address, tls).await?))
}

/// The provider's Admin service at `address`.
pub async fn connect_admin(
    address: &str,
    tls: Option<&ClientTls>,
) -> Result<crate::proto::admin::admin_client::AdminClient<Channel>, ClientError> {
    Ok(crate::proto::admin::admin_client::AdminClient::new(
        channel(address, tls).await?,
    ))
}

async fn channel(address: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let connect_err = |e: tonic::transport::Error| ClientError::Connect {
        address: address.to_string(),
        reason: reason(&e),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{address}"))
        .map_err(|_| ClientError::Address(address.to_string()))?;
    if let Some(t) = tls {
        let host = address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(address);
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&t.ca)?))
            .identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?))
            .domain_name(t.server_name.clone().unwrap_or_else(|| host.to_string()));
        endpoint = endpoint.tls_config(config).map_err(connect_err)?;
    }
    endpoint.connect().await.map_err(connect_err)
}

fn time(t: &Option<k8s::Time>) -> Value {
    match t.as_ref().and_then(|t| t.seconds) {
        Some(s) => json!(crate::time::rfc3339(s)),
        None => Value::Null,
    }
}

fn quantities(m: &std::collections::BTreeMap<String, k8s::Quantity>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, q)| (k.clone(), json!(q.string.clone().unwrap_or_default())))
            .collect(),
    )
}

/// A Kubernetes-style JSON view of a template Node.
pub fn node_json(node: &k8s::Node) -> Value {
    let meta = node.metadata.clone().unwrap_or_default();
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(meta.name.unwrap_or_default()));
    metadata.insert("creationTimestamp".into(), time(&meta.creation_timestamp));
    metadata.insert("labels".into(), json!(meta.labels));
    let taints: Vec<Value> = spec
        .taints
        .iter()
        .map(|t| {
            json!({
                "key": t.key.clone().unwrap_or_default(),
                "value": t.value.clone().unwrap_or_default(),
                "effect": t.effect.clone().unwrap_or_default(),
            })
        })
        .collect();
    let conditions: Vec<Value> = status
        .conditions
        .iter()
        .map(|c| {
            json!({
                "type": c.r#type.clone().unwrap_or_default(),
                "status": c.status.clone().unwrap_or_default(),
                "reason": c.reason.clone().unwrap_or_default(),
            })
        })
        .collect();
    let info = status.node_info.clone().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": metadata,
        "spec": { "taints": taints },
        "status": {
            "capacity": quantities(&status.capacity),
            "allocatable": quantities(&status.allocatable),
            "conditions": conditions,
            "nodeInfo": {
                "operatingSystem": info.operating_system.unwrap_or_default(),
                "architecture": info.architecture.unwrap_or_default(),
            },
        },
    })
}

/// YAML for a JSON value (block style; strings double-quoted, which YAML reads as JSON strings).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_value(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = scalar(&Value::String(k.clone()));
                match v {
                    Value::Object(inner) if !inner.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_value(v, indent + 2, out);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        yaml_value(v, indent, out);
                    }
                    _ => out.push_str(&format!("{pad}{key}: {}\n", flow(v))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let mut nested = String::new();
                yaml_value(item, indent + 2, &mut nested);
                let nested = nested.trim_start().to_string();
                match item {
                    Value::Object(m) if !m.is_empty() => out.push_str(&format!("{pad}- {nested}")),
                    _ => out.push_str(&format!("{pad}- {}\n", flow(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", flow(other))),
    }
}

fn flow(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}".into(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        other => scalar(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_rendering() {
        let v = json!({
            "kind": "Node",
            "metadata": {"labels": {"a/b": "c"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}], "empty": []},
            "n": 3,
        });
        assert_eq!(
            to_yaml(&v),
            "\"kind\": \"Node\"\n\"metadata\":\n  \"labels\":\n    \"a/b\": \"c\"\n\"n\": 3\n\"spec\":\n  \"empty\": []\n  \"taints\":\n  - \"effect\": \"NoSchedule\"\n    \"key\": \"k\"\n"
        );
    }
}
