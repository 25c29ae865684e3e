//! `check --online`: does the account accept our credentials, and does every node group name a
//! datacenter and an image that exist?

use std::collections::HashMap;

use super::{Client, Image};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// `account`, or the node group name.
    pub subject: String,
    pub what: &'static str,
    /// `Ok(detail)` or `Err(problem)`.
    pub outcome: Result<String, String>,
}

/// Where a node group's servers would be created.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub group: &'a str,
    pub datacenter: &'a str,
    pub image: &'a str,
}

/// Runs every online check; stops early only when the credentials are refused.
pub async fn preflight(client: &Client, groups: &[Placement<'_>]) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let datacenters = match client.datacenters().await {
        Ok(d) => d,
        Err(e) => {
            out.push(CheckResult {
                subject: "account".into(),
                what: "credentials",
                outcome: Err(e.safe_message().to_string()),
            });
            return out;
        }
    };
    out.push(CheckResult {
        subject: "account".into(),
        what: "credentials",
        outcome: Ok(format!(
            "accepted by {} ({} datacenters)",
            client.base_url(),
            datacenters.len()
        )),
    });
    let mut images: HashMap<String, Result<Vec<Image>, String>> = HashMap::new();
    for g in groups {
        let dc = g.datacenter;
        let Some(found) = datacenters.iter().find(|d| d.id == dc) else {
            let known: Vec<&str> = datacenters.iter().map(|d| d.id.as_str()).collect();
            out.push(CheckResult {
                subject: g.group.to_string(),
                what: "datacenter",
                outcome: Err(format!(
                    "{dc} is not available; the account has {}",
                    known.join(", ")
                )),
            });
            continue;
        };
        out.push(CheckResult {
            subject: g.group.to_string(),
            what: "datacenter",
            outcome: Ok(format!("{dc} ({})", found.name)),
        });
        if !images.contains_key(dc) {
            let r = client
                .images(dc)
                .await
                .map_err(|e| e.safe_message().to_string());
            images.insert(dc.to_string(), r);
        }
        let image = g.image.trim();
        let outcome = match images.get(dc) {
            Some(Ok(list)) => {
                let id_form = if image.contains(':') {
                    image.to_string()
                } else {
                    format!("{dc}:{image}")
                };
                match list
                    .iter()
                    .find(|i| i.description.trim() == image || i.id == id_form)
                {
                    Some(i) => Ok(format!("{image} ({})", i.id)),
                    None => Err(format!(
                        "{image} is not an image id or description in {dc} ({} images there)",
                        list.len()
                    )),
                }
            }
            Some(Err(e)) => Err(format!("cannot list the images of {dc}: {e}")),
            None => Err("no image list".into()),
        };
        out.push(CheckResult {
            subject: g.group.to_string(),
            what: "image",
            outcome,
        });
    }
    out
}
