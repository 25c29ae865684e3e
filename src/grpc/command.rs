//! The `client` command: talks to a running provider the way the autoscaler does (and to its
//! Admin service), and shows each answer as a table, JSON or YAML. Every read builds one JSON
//! value; the table is a rendering of it, so the three outputs always agree.

use std::path::PathBuf;

use prost::Message;
use serde_json::{Value, json};

use super::client::{self, ClientError, ClientTls};
use crate::proto::admin as apb;
use crate::proto::externalgrpc::{self as pb, instance_status::InstanceState};

/// The `client` flags.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The provider's address, as in the autoscaler's cloud-config.
    #[arg(long, default_value = "127.0.0.1:8086")]
    pub address: String,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that verifies the server.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the host of --address).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// How to print answers: a table (YAML for `template`), JSON or YAML.
    #[arg(long, global = true, value_enum)]
    pub output: Option<Output>,
    #[command(subcommand)]
    pub call: ClientCall,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCall {
    /// List node groups: sizes, target, instances by state and parked servers.
    Groups,
    /// List a node group's instances with state and error.
    Nodes { group: String },
    /// Print a node group's target size.
    Target { group: String },
    /// Ask for N more nodes in a node group (N ≥ 1).
    Increase {
        group: String,
        #[arg(allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=i64::from(i32::MAX)))]
        delta: u32,
    },
    /// Delete nodes (by providerID, e.g. kamatera://name, or by node name) from a node group.
    Delete {
        group: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Print a node group's template node, decoded.
    Template { group: String },
    /// Print a node group's autoscaling options (or that the autoscaler's defaults apply).
    Options { group: String },
    /// Hibernate a node group now (drain, remove its servers, max-size 0) until `resume`.
    Hibernate {
        group: String,
        /// Delete pods that disruption budgets keep from being evicted within the drain timeout.
        #[arg(long)]
        force: bool,
    },
    /// Wake a hibernating node group (during a scheduled window: until the window closes).
    Resume { group: String },
    /// Show schedules and hibernation of every node group.
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

/// Runs one call and returns what to print.
pub async fn run(args: ClientArgs) -> Result<Printed, ClientError> {
    let tls = ClientTls::from_flags(
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.tls_server_name,
    )?;
    let output = args.output.unwrap_or(Output::Text);
    let tls = tls.as_ref();
    let address = args.address.as_str();
    // Each call connects to the service it needs: the autoscaler's, or the provider's Admin.
    let ca = || client::connect(address, tls);
    let admin = || client::connect_admin(address, tls);
    let view = match args.call {
        ClientCall::Hibernate { group, force } => View::Status(
            vec![
                admin()
                    .await?
                    .hibernate(apb::HibernateRequest { group, force })
                    .await?
                    .into_inner(),
            ],
            Vec::new(),
        ),
        ClientCall::Resume { group } => View::Status(
            vec![
                admin()
                    .await?
                    .resume(apb::GroupRequest { group })
                    .await?
                    .into_inner(),
            ],
            Vec::new(),
        ),
        ClientCall::Status => {
            let r = admin()
                .await?
                .status(apb::StatusRequest {})
                .await?
                .into_inner();
            View::Status(r.groups, r.notes)
        }
        ClientCall::Groups => View::Groups(groups(address, tls).await?),
        ClientCall::Nodes { group } => View::Instances(
            ca().await?
                .node_group_nodes(pb::NodeGroupNodesRequest { id: group })
                .await?
                .into_inner()
                .instances,
        ),
        ClientCall::Target { group } => {
            let r = ca()
                .await?
                .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: group.clone() })
                .await?
                .into_inner();
            View::Target(group, r.target_size)
        }
        ClientCall::Increase { group, delta } => {
            ca().await?
                .node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
                    // Bounded to i32::MAX by the argument's parser.
                    delta: i32::try_from(delta).unwrap_or(i32::MAX),
                    id: group.clone(),
                })
                .await?;
            return Ok(Printed {
                stdout: format!("asked node group {group} for {delta} more node(s)\n"),
                stderr: Vec::new(),
            });
        }
        ClientCall::Delete { group, nodes } => {
            let n = nodes.len();
            ca().await?
                .node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
                    nodes: nodes.iter().map(|s| node_arg(s)).collect(),
                    id: group.clone(),
                })
                .await?;
            return Ok(Printed {
                stdout: format!("deleting {n} node(s) of node group {group}\n"),
                stderr: Vec::new(),
            });
        }
        ClientCall::Template { group } => {
            let r = ca()
                .await?
                .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest { id: group })
                .await?
                .into_inner();
            let bytes = if r.node_bytes.is_empty() {
                r.legacy_node_info
            } else {
                r.node_bytes
            };
            let node = crate::proto::k8s::Node::decode(bytes.as_slice())
                .map_err(|e| ClientError::Decode(format!("the template node: {e}")))?;
            View::Template(client::node_json(&node))
        }
        ClientCall::Options { group } => {
            let r = ca()
                .await?
                .node_group_get_options(pb::NodeGroupAutoscalingOptionsRequest {
                    id: group.clone(),
                    defaults: None,
                })
                .await?
                .into_inner();
            View::Options(group, r.node_group_autoscaling_options)
        }
    };
    let stderr = match (&view, output) {
        (View::Status(_, notes), Output::Json | Output::Yaml) => {
            notes.iter().map(|n| format!("note: {n}")).collect()
        }
        _ => Vec::new(),
    };
    Ok(Printed {
        stdout: view.render(output),
        stderr,
    })
}

/// A node argument: a providerID (`scheme://...`) or a node name.
fn node_arg(s: &str) -> pb::ExternalGrpcNode {
    if s.contains("://") {
        pb::ExternalGrpcNode {
            provider_id: s.to_string(),
            ..Default::default()
        }
    } else {
        pb::ExternalGrpcNode {
            name: s.to_string(),
            ..Default::default()
        }
    }
}

/// One node group as `groups` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupRow {
    pub group: String,
    pub min: i32,
    pub max: i32,
    pub target: i32,
    pub creating: usize,
    pub running: usize,
    pub deleting: usize,
    pub parked: u32,
    /// Standby servers ready, creates for the pool under way, and the pool in force.
    pub standby: Standby,
}

/// A group's standby pool as the client shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standby {
    pub ready: u32,
    pub creating: u32,
    pub wanted: u32,
}

impl Standby {
    fn of(g: &apb::GroupStatus) -> Standby {
        Standby {
            ready: g.standby,
            creating: g.standby_creating,
            wanted: g.standby_wanted,
        }
    }

    fn json(&self) -> Value {
        json!({"ready": self.ready, "creating": self.creating, "wanted": self.wanted})
    }

    /// `ready+creating/wanted`, or `-` for no pool.
    fn cell(&self) -> String {
        match (self.ready, self.creating, self.wanted) {
            (0, 0, 0) => "-".into(),
            (r, 0, w) => format!("{r}/{w}"),
            (r, c, w) => format!("{r}+{c}/{w}"),
        }
    }
}

/// NodeGroups, then each group's target and instances, and the pool counts from Admin.
async fn groups(address: &str, tls: Option<&ClientTls>) -> Result<Vec<GroupRow>, ClientError> {
    let mut ca = client::connect(address, tls).await?;
    let mut admin = client::connect_admin(address, tls).await?;
    let pools: std::collections::HashMap<String, (u32, Standby)> = admin
        .status(apb::StatusRequest {})
        .await?
        .into_inner()
        .groups
        .into_iter()
        .map(|g| (g.group.clone(), (g.parked, Standby::of(&g))))
        .collect();
    let listed = ca
        .node_groups(pb::NodeGroupsRequest {})
        .await?
        .into_inner()
        .node_groups;
    let mut rows = Vec::with_capacity(listed.len());
    for g in listed {
        let target = ca
            .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: g.id.clone() })
            .await?
            .into_inner()
            .target_size;
        let instances = ca
            .node_group_nodes(pb::NodeGroupNodesRequest { id: g.id.clone() })
            .await?
            .into_inner()
            .instances;
        let count = |want: &str| instances.iter().filter(|i| state(i) == want).count();
        rows.push(GroupRow {
            parked: pools.get(&g.id).map_or(0, |p| p.0),
            standby: pools.get(&g.id).map(|p| p.1).unwrap_or_default(),
            creating: count("creating"),
            running: count("running"),
            deleting: count("deleting"),
            group: g.id,
            min: g.min_size,
            max: g.max_size,
            target,
        });
    }
    Ok(rows)
}

fn state(i: &pb::Instance) -> &'static str {
    let code = i.status.as_ref().map_or(0, |s| s.instance_state);
    match InstanceState::try_from(code) {
        Ok(InstanceState::InstanceRunning) => "running",
        Ok(InstanceState::InstanceCreating) => "creating",
        Ok(InstanceState::InstanceDeleting) => "deleting",
        _ => "unknown",
    }
}

/// An answer, ready to print in any output.
#[derive(Debug)]
pub enum View {
    Groups(Vec<GroupRow>),
    Instances(Vec<pb::Instance>),
    Target(String, i32),
    Template(Value),
    Options(String, Option<pb::NodeGroupAutoscalingOptions>),
    /// Groups, and the provider's notes (a refused config change, ...).
    Status(Vec<apb::GroupStatus>, Vec<String>),
}

/// What a call prints: its answer on standard output, and notes for standard error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    /// The provider's notes where the answer has no place for them (JSON and YAML keep their
    /// shape); the text table shows them itself.
    pub stderr: Vec<String>,
}

impl View {
    pub fn render(&self, output: Output) -> String {
        match (output, self) {
            (Output::Json, v) => {
                let mut s = serde_json::to_string_pretty(&v.json()).unwrap_or_default();
                s.push('\n');
                s
            }
            (Output::Yaml, v) | (Output::Text, v @ View::Template(_)) => client::to_yaml(&v.json()),
            (Output::Text, v) => v.table(),
        }
    }

    /// The answer as JSON (what `--output json` prints).
    pub fn json(&self) -> Value {
        match self {
            View::Groups(rows) => rows
                .iter()
                .map(|r| {
                    json!({
                        "group": r.group,
                        "minSize": r.min,
                        "maxSize": r.max,
                        "targetSize": r.target,
                        "instances": {
                            "creating": r.creating,
                            "running": r.running,
                            "deleting": r.deleting,
                        },
                        "parked": r.parked,
                        "standby": r.standby.json(),
                    })
                })
                .collect(),
            View::Instances(list) => list
                .iter()
                .map(|i| {
                    let error = i
                        .status
                        .as_ref()
                        .and_then(|s| s.error_info.as_ref())
                        .filter(|e| !e.error_code.is_empty())
                        .map(|e| {
                            json!({
                                "code": e.error_code,
                                "class": e.instance_error_class,
                                "message": e.error_message,
                            })
                        });
                    json!({"id": i.id, "state": state(i), "error": error})
                })
                .collect(),
            View::Target(group, target) => json!({"group": group, "targetSize": target}),
            View::Template(node) => node.clone(),
            View::Options(group, None) => json!({"group": group, "options": null}),
            View::Options(group, Some(o)) => {
                let d = |d: &Option<prost_types::Duration>| d.as_ref().map(|d| d.seconds);
                json!({"group": group, "options": {
                    "scaleDownUtilizationThreshold": o.scale_down_utilization_threshold,
                    "scaleDownGpuUtilizationThreshold": o.scale_down_gpu_utilization_threshold,
                    "scaleDownUnneededSeconds": d(&o.scale_down_unneeded_duration),
                    "scaleDownUnreadySeconds": d(&o.scale_down_unready_duration),
                    "maxNodeProvisionSeconds": d(&o.max_node_provision_duration),
                    "zeroOrMaxNodeScaling": o.zero_or_max_node_scaling,
                    "ignoreDaemonSetsUtilization": o.ignore_daemon_sets_utilization,
                }})
            }
            View::Status(groups, _) => groups
                .iter()
                .map(|g| {
                    json!({
                        "group": g.group,
                        "phase": g.phase,
                        "manual": g.manual,
                        "minSize": g.min_size,
                        "maxSize": g.max_size,
                        "window": (!g.window.is_empty()).then_some(&g.window),
                        "nextChange": (!g.next_change.is_empty()).then_some(&g.next_change),
                        "kept": g.kept,
                        "parked": g.parked,
                        "standby": Standby::of(g).json(),
                    })
                })
                .collect(),
        }
    }

    /// The answer as a table for a person.
    fn table(&self) -> String {
        match self {
            View::Groups(rows) => groups_table(rows),
            View::Instances(list) => instances_table(list),
            View::Target(_, target) => format!("{target}\n"),
            View::Template(node) => client::to_yaml(node),
            View::Options(group, None) => {
                format!("node group {group}: the autoscaler's defaults apply\n")
            }
            View::Options(_, Some(o)) => options_table(o),
            View::Status(groups, notes) => {
                let mut out = status_table(groups);
                for n in notes {
                    out.push_str(&format!("note: {n}\n"));
                }
                out
            }
        }
    }
}

/// The width of a left column: its longest value or its header.
fn column<'a>(values: impl Iterator<Item = &'a str>, header: &str) -> usize {
    values.map(str::len).max().unwrap_or(0).max(header.len())
}

fn groups_table(rows: &[GroupRow]) -> String {
    let width = column(rows.iter().map(|r| r.group.as_str()), "GROUP");
    let mut out = format!(
        "{:<width$}  {:>4}  {:>4}  {:>6}  {:>8}  {:>7}  {:>8}  {:>6}  {:>9}\n",
        "GROUP", "MIN", "MAX", "TARGET", "CREATING", "RUNNING", "DELETING", "PARKED", "STANDBY"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<width$}  {:>4}  {:>4}  {:>6}  {:>8}  {:>7}  {:>8}  {:>6}  {:>9}\n",
            r.group,
            r.min,
            r.max,
            r.target,
            r.creating,
            r.running,
            r.deleting,
            r.parked,
            r.standby.cell()
        ));
    }
    if rows.iter().any(|r| r.standby != Standby::default()) {
        out.push_str("(STANDBY: ready+being bought/wanted; parked servers count toward wanted)\n");
    }
    out
}

fn instances_table(instances: &[pb::Instance]) -> String {
    let width = column(instances.iter().map(|i| i.id.as_str()), "INSTANCE");
    let mut out = format!("{:<width$}  {:<9}  ERROR\n", "INSTANCE", "STATE");
    for i in instances {
        let error = match i.status.as_ref().and_then(|s| s.error_info.as_ref()) {
            Some(e) if !e.error_code.is_empty() => format!(
                "{} (class {}): {}",
                e.error_code, e.instance_error_class, e.error_message
            ),
            _ => "-".into(),
        };
        out.push_str(&format!("{:<width$}  {:<9}  {error}\n", i.id, state(i)));
    }
    out
}

fn options_table(o: &pb::NodeGroupAutoscalingOptions) -> String {
    let d = |d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| format!("{}s", d.seconds))
            .unwrap_or_else(|| "-".into())
    };
    let rows = [
        (
            "scale-down-utilization-threshold",
            o.scale_down_utilization_threshold.to_string(),
        ),
        (
            "scale-down-gpu-utilization-threshold",
            o.scale_down_gpu_utilization_threshold.to_string(),
        ),
        (
            "scale-down-unneeded-time",
            d(&o.scale_down_unneeded_duration),
        ),
        ("scale-down-unready-time", d(&o.scale_down_unready_duration)),
        ("max-node-provision-time", d(&o.max_node_provision_duration)),
        (
            "zero-or-max-node-scaling",
            o.zero_or_max_node_scaling.to_string(),
        ),
        (
            "ignore-daemonsets-utilization",
            o.ignore_daemon_sets_utilization.to_string(),
        ),
    ];
    let mut out: String = rows.iter().map(|(k, v)| format!("{k:<38}{v}\n")).collect();
    out.push_str(
        "(values not overridden by the group are the autoscaler's defaults this client sent: none, so CA's built-in ones)\n",
    );
    out
}

/// `GROUP  PHASE  MIN  MAX  PARKED  STANDBY  NEXT CHANGE  WINDOW` lines, then kept nodes.
fn status_table(groups: &[apb::GroupStatus]) -> String {
    let width = column(groups.iter().map(|g| g.group.as_str()), "GROUP");
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out = format!(
        "{:<width$}  {:<12}  {:>3}  {:>3}  {:>6}  {:>9}  {:<25}  WINDOW\n",
        "GROUP", "PHASE", "MIN", "MAX", "PARKED", "STANDBY", "NEXT CHANGE"
    );
    for g in groups {
        let phase = if g.manual {
            format!("{} (manual)", g.phase)
        } else {
            g.phase.clone()
        };
        out.push_str(&format!(
            "{:<width$}  {:<12}  {:>3}  {:>3}  {:>6}  {:>9}  {:<25}  {}\n",
            g.group,
            phase,
            g.min_size,
            g.max_size,
            g.parked,
            Standby::of(g).cell(),
            dash(&g.next_change),
            dash(&g.window),
        ));
        if !g.kept.is_empty() {
            out.push_str(&format!("  kept (not drained): {}\n", g.kept.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(group: &str) -> GroupRow {
        GroupRow {
            group: group.into(),
            min: 1,
            max: 4,
            target: 3,
            creating: 1,
            running: 2,
            deleting: 0,
            parked: 1,
            standby: Standby {
                ready: 2,
                creating: 1,
                wanted: 4,
            },
        }
    }

    #[test]
    fn groups_table_has_a_column_per_count() {
        let text = View::Groups(vec![row("general")]).render(Output::Text);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "GROUP", "MIN", "MAX", "TARGET", "CREATING", "RUNNING", "DELETING", "PARKED",
                "STANDBY"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["general", "1", "4", "3", "1", "2", "0", "1", "2+1/4"]
        );
        assert!(lines[2].starts_with("(STANDBY: "), "{text}");
    }

    #[test]
    fn json_and_yaml_show_the_same_answer() {
        let view = View::Groups(vec![row("general")]);
        let json: Value = serde_json::from_str(&view.render(Output::Json)).expect("json");
        assert_eq!(json[0]["targetSize"], 3);
        assert_eq!(json[0]["instances"]["running"], 2);
        assert_eq!(json[0]["parked"], 1);
        assert_eq!(json[0]["standby"]["ready"], 2);
        assert_eq!(json[0]["standby"]["creating"], 1);
        assert_eq!(json[0]["standby"]["wanted"], 4);
        let yaml = view.render(Output::Yaml);
        assert!(yaml.contains("\"targetSize\": 3"), "{yaml}");
    }

    #[test]
    fn an_rpc_error_reads_code_then_message() {
        let e = ClientError::from(tonic::Status::failed_precondition(
            "node group web would exceed its max size",
        ));
        assert_eq!(
            e.to_string(),
            "FailedPrecondition: node group web would exceed its max size"
        );
    }
}
