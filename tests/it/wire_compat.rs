//! Proves the compat-superset wire claims: what our server encodes decodes correctly with the
//! message layouts of old (1.26) and current (1.35) autoscaler releases, and what old clients send
//! decodes into our legacy fields. The old and new layouts are declared here, independently of
//! `proto/`, as the autoscaler's Go code defines them.

use std::collections::BTreeMap;

use kamatera_ca_provider::proto::externalgrpc as ours;
use kamatera_ca_provider::proto::k8s;
use prost::Message;

/// Layouts of cluster-autoscaler 1.26 (Kubernetes-typed fields).
mod v1_26 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Quantity {
        #[prost(string, optional, tag = "1")]
        pub string: Option<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ObjectMeta {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(btree_map = "string, string", tag = "11")]
        pub labels: std::collections::BTreeMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Taint {
        #[prost(string, optional, tag = "1")]
        pub key: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub effect: Option<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeSpec {
        #[prost(string, optional, tag = "3")]
        pub provider_id: Option<String>,
        #[prost(message, repeated, tag = "5")]
        pub taints: Vec<Taint>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeStatus {
        #[prost(btree_map = "string, message", tag = "1")]
        pub capacity: std::collections::BTreeMap<String, Quantity>,
        #[prost(btree_map = "string, message", tag = "2")]
        pub allocatable: std::collections::BTreeMap<String, Quantity>,
    }
    /// core.v1.Node, as embedded in the 1.26 response.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Node {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ObjectMeta>,
        #[prost(message, optional, tag = "2")]
        pub spec: Option<NodeSpec>,
        #[prost(message, optional, tag = "3")]
        pub status: Option<NodeStatus>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupTemplateNodeInfoResponse {
        #[prost(message, optional, tag = "1")]
        pub node_info: Option<Node>,
    }
    /// meta.v1.Duration (nanoseconds).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, optional, tag = "1")]
        pub duration: Option<i64>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupAutoscalingOptions {
        #[prost(double, tag = "1")]
        pub scale_down_utilization_threshold: f64,
        #[prost(double, tag = "2")]
        pub scale_down_gpu_utilization_threshold: f64,
        #[prost(message, optional, tag = "3")]
        pub scale_down_unneeded_time: Option<Duration>,
        #[prost(message, optional, tag = "4")]
        pub scale_down_unready_time: Option<Duration>,
    }
    /// The 1.29 – 1.34.1 layout adds these to the 1.26 one.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupAutoscalingOptionsV133 {
        #[prost(message, optional, tag = "5")]
        pub max_node_provision_time: Option<Duration>,
        #[prost(bool, tag = "6")]
        pub zero_or_max_node_scaling: bool,
        #[prost(bool, tag = "7")]
        pub ignore_daemon_sets_utilization: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupAutoscalingOptionsRequest {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub defaults: Option<NodeGroupAutoscalingOptions>,
    }
}

/// Layouts of cluster-autoscaler 1.35 (bytes and well-known types).
mod v1_35 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupTemplateNodeInfoResponse {
        #[prost(bytes = "vec", tag = "2")]
        pub node_bytes: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupAutoscalingOptions {
        #[prost(double, tag = "1")]
        pub scale_down_utilization_threshold: f64,
        #[prost(double, tag = "2")]
        pub scale_down_gpu_utilization_threshold: f64,
        #[prost(bool, tag = "6")]
        pub zero_or_max_node_scaling: bool,
        #[prost(bool, tag = "7")]
        pub ignore_daemon_sets_utilization: bool,
        #[prost(message, optional, tag = "8")]
        pub scale_down_unneeded_duration: Option<prost_types::Duration>,
        #[prost(message, optional, tag = "9")]
        pub scale_down_unready_duration: Option<prost_types::Duration>,
        #[prost(message, optional, tag = "10")]
        pub max_node_provision_duration: Option<prost_types::Duration>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeGroupAutoscalingOptionsResponse {
        #[prost(message, optional, tag = "1")]
        pub node_group_autoscaling_options: Option<NodeGroupAutoscalingOptions>,
    }
}

fn quantity(s: &str) -> k8s::Quantity {
    k8s::Quantity {
        string: Some(s.to_string()),
    }
}

fn sample_node() -> k8s::Node {
    k8s::Node {
        metadata: Some(k8s::ObjectMeta {
            name: Some("template-node-ng".into()),
            labels: BTreeMap::from([
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                (
                    "node.kubernetes.io/instance-type".to_string(),
                    "2B-4096".to_string(),
                ),
            ]),
            ..Default::default()
        }),
        spec: Some(k8s::NodeSpec {
            provider_id: Some("kamatera://template".into()),
            taints: vec![k8s::Taint {
                key: Some("dedicated".into()),
                value: Some("batch".into()),
                effect: Some("NoSchedule".into()),
                time_added: None,
            }],
            ..Default::default()
        }),
        status: Some(k8s::NodeStatus {
            capacity: BTreeMap::from([
                ("cpu".to_string(), quantity("2")),
                ("memory".to_string(), quantity("4Gi")),
                ("pods".to_string(), quantity("110")),
            ]),
            allocatable: BTreeMap::from([("cpu".to_string(), quantity("1900m"))]),
            ..Default::default()
        }),
    }
}

#[test]
fn template_node_reads_the_same_in_1_26_and_1_35() {
    let node = sample_node();
    let node_bytes = node.encode_to_vec();
    let ours = ours::NodeGroupTemplateNodeInfoResponse {
        legacy_node_info: node_bytes.clone(),
        node_bytes: node_bytes.clone(),
    };
    let wire = ours.encode_to_vec();

    // 1.35 reads nodeBytes and gets exactly our Node.
    let new =
        v1_35::NodeGroupTemplateNodeInfoResponse::decode(wire.as_slice()).expect("1.35 decode");
    assert_eq!(new.node_bytes, node_bytes);
    assert_eq!(
        k8s::Node::decode(new.node_bytes.as_slice()).expect("node"),
        node
    );

    // 1.26 reads field 1 as an embedded core.v1.Node.
    let old =
        v1_26::NodeGroupTemplateNodeInfoResponse::decode(wire.as_slice()).expect("1.26 decode");
    let old_node = old.node_info.expect("1.26 sees nodeInfo");
    let meta = old_node.metadata.expect("metadata");
    assert_eq!(meta.name.as_deref(), Some("template-node-ng"));
    assert_eq!(
        meta.labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        meta.labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("2B-4096")
    );
    let spec = old_node.spec.expect("spec");
    assert_eq!(spec.provider_id.as_deref(), Some("kamatera://template"));
    assert_eq!(spec.taints.len(), 1);
    assert_eq!(spec.taints[0].key.as_deref(), Some("dedicated"));
    assert_eq!(spec.taints[0].value.as_deref(), Some("batch"));
    assert_eq!(spec.taints[0].effect.as_deref(), Some("NoSchedule"));
    let status = old_node.status.expect("status");
    let cap = |k: &str| status.capacity.get(k).and_then(|q| q.string.clone());
    assert_eq!(cap("cpu").as_deref(), Some("2"));
    assert_eq!(cap("memory").as_deref(), Some("4Gi"));
    assert_eq!(cap("pods").as_deref(), Some("110"));
    assert_eq!(
        status
            .allocatable
            .get("cpu")
            .and_then(|q| q.string.clone())
            .as_deref(),
        Some("1900m")
    );
}

fn duration(secs: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: secs,
        nanos: 0,
    }
}

fn k8s_duration(secs: i64) -> ours::K8sDuration {
    ours::K8sDuration {
        duration: secs * 1_000_000_000,
    }
}

#[test]
fn options_read_the_same_in_1_26_1_33_and_1_35() {
    let options = ours::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: 0.65,
        scale_down_gpu_utilization_threshold: 0.4,
        legacy_scale_down_unneeded_time: Some(k8s_duration(600)),
        legacy_scale_down_unready_time: Some(k8s_duration(1200)),
        legacy_max_node_provision_time: Some(k8s_duration(3600)),
        zero_or_max_node_scaling: true,
        ignore_daemon_sets_utilization: true,
        scale_down_unneeded_duration: Some(duration(600)),
        scale_down_unready_duration: Some(duration(1200)),
        max_node_provision_duration: Some(duration(3600)),
    };
    let wire = ours::NodeGroupAutoscalingOptionsResponse {
        node_group_autoscaling_options: Some(options),
    }
    .encode_to_vec();

    let new = v1_35::NodeGroupAutoscalingOptionsResponse::decode(wire.as_slice())
        .expect("1.35 decode")
        .node_group_autoscaling_options
        .expect("options present");
    assert_eq!(new.scale_down_utilization_threshold, 0.65);
    assert_eq!(new.scale_down_gpu_utilization_threshold, 0.4);
    assert!(new.zero_or_max_node_scaling);
    assert!(new.ignore_daemon_sets_utilization);
    assert_eq!(new.scale_down_unneeded_duration, Some(duration(600)));
    assert_eq!(new.scale_down_unready_duration, Some(duration(1200)));
    assert_eq!(new.max_node_provision_duration, Some(duration(3600)));

    // The options message sits in field 1 of the response in every release.
    let inner = options.encode_to_vec();
    let old = v1_26::NodeGroupAutoscalingOptions::decode(inner.as_slice()).expect("1.26 decode");
    assert_eq!(old.scale_down_utilization_threshold, 0.65);
    assert_eq!(old.scale_down_gpu_utilization_threshold, 0.4);
    assert_eq!(
        old.scale_down_unneeded_time.and_then(|d| d.duration),
        Some(600_000_000_000)
    );
    assert_eq!(
        old.scale_down_unready_time.and_then(|d| d.duration),
        Some(1_200_000_000_000)
    );
    let mid =
        v1_26::NodeGroupAutoscalingOptionsV133::decode(inner.as_slice()).expect("1.33 decode");
    assert_eq!(
        mid.max_node_provision_time.and_then(|d| d.duration),
        Some(3_600_000_000_000)
    );
    assert!(mid.zero_or_max_node_scaling && mid.ignore_daemon_sets_utilization);
}

#[test]
fn old_client_defaults_decode_into_legacy_fields() {
    // A 1.26 autoscaler sends its defaults with meta.v1.Duration fields.
    let request = v1_26::NodeGroupAutoscalingOptionsRequest {
        id: "ng".into(),
        defaults: Some(v1_26::NodeGroupAutoscalingOptions {
            scale_down_utilization_threshold: 0.5,
            scale_down_gpu_utilization_threshold: 0.5,
            scale_down_unneeded_time: Some(v1_26::Duration {
                duration: Some(600_000_000_000),
            }),
            scale_down_unready_time: Some(v1_26::Duration {
                duration: Some(1_200_000_000_000),
            }),
        }),
    };
    let ours = ours::NodeGroupAutoscalingOptionsRequest::decode(request.encode_to_vec().as_slice())
        .expect("superset decode");
    assert_eq!(ours.id, "ng");
    let d = ours.defaults.expect("defaults");
    assert_eq!(d.scale_down_utilization_threshold, 0.5);
    assert_eq!(d.legacy_scale_down_unneeded_time, Some(k8s_duration(600)));
    assert_eq!(d.legacy_scale_down_unready_time, Some(k8s_duration(1200)));
    assert_eq!(d.scale_down_unneeded_duration, None);
}

#[test]
fn service_paths_match_upstream() {
    // The method path is what the autoscaler dials; it must carry the upstream package and names.
    let fds =
        prost_types::FileDescriptorSet::decode(kamatera_ca_provider::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
    let file = fds
        .file
        .iter()
        .find(|f| f.package() == "clusterautoscaler.cloudprovider.v1.externalgrpc")
        .expect("externalgrpc file");
    let service = &file.service[0];
    assert_eq!(service.name(), "CloudProvider");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        vec![
            "NodeGroups",
            "NodeGroupForNode",
            "PricingNodePrice",
            "PricingPodPrice",
            "GPULabel",
            "GetAvailableGPUTypes",
            "Cleanup",
            "Refresh",
            "NodeGroupTargetSize",
            "NodeGroupIncreaseSize",
            "NodeGroupDeleteNodes",
            "NodeGroupDecreaseTargetSize",
            "NodeGroupNodes",
            "NodeGroupTemplateNodeInfo",
            "NodeGroupGetOptions",
        ]
    );
}
