//! Provider values to wire messages: the template `Node`, per-group options (both duration
//! generations), instance statuses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::OptionOverrides;
use crate::proto::externalgrpc as pb;
use crate::proto::k8s;
use crate::provider::{ErrorInfo, InstanceView, Phase, TemplateNode};

/// The autoscaler's own defaults, used when a request carries none.
const DEFAULT_UTILIZATION: f64 = 0.5;
const DEFAULT_UNNEEDED: Duration = Duration::from_secs(10 * 60);
const DEFAULT_UNREADY: Duration = Duration::from_secs(20 * 60);
const DEFAULT_MAX_PROVISION: Duration = Duration::from_secs(15 * 60);

fn quantity(s: &str) -> k8s::Quantity {
    k8s::Quantity {
        string: Some(s.to_string()),
    }
}

fn condition(kind: &str, status: &str, reason: &str, now: i64) -> k8s::NodeCondition {
    let t = k8s::Time {
        seconds: Some(now),
        nanos: None,
    };
    k8s::NodeCondition {
        r#type: Some(kind.into()),
        status: Some(status.into()),
        last_heartbeat_time: Some(t),
        last_transition_time: Some(t),
        reason: Some(reason.into()),
        message: None,
    }
}

/// The Kubernetes `Node` the autoscaler decodes, with Ready conditions.
pub fn template_node(t: &TemplateNode) -> k8s::Node {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let to_map = |m: &BTreeMap<String, String>| -> BTreeMap<String, k8s::Quantity> {
        m.iter().map(|(k, v)| (k.clone(), quantity(v))).collect()
    };
    k8s::Node {
        metadata: Some(k8s::ObjectMeta {
            name: Some(t.name.clone()),
            labels: t.labels.clone(),
            creation_timestamp: Some(k8s::Time {
                seconds: Some(now),
                nanos: None,
            }),
            ..Default::default()
        }),
        spec: Some(k8s::NodeSpec {
            taints: t
                .taints
                .iter()
                .map(|taint| k8s::Taint {
                    key: Some(taint.key.clone()),
                    value: Some(taint.value.clone()),
                    effect: Some(taint.effect.clone()),
                    time_added: None,
                })
                .collect(),
            ..Default::default()
        }),
        status: Some(k8s::NodeStatus {
            capacity: to_map(&t.capacity),
            allocatable: to_map(&t.allocatable),
            phase: Some("Running".into()),
            conditions: vec![
                condition("Ready", "True", "KubeletReady", now),
                condition("NetworkUnavailable", "False", "RouteCreated", now),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", now),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", now),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", now),
            ],
            node_info: Some(k8s::NodeSystemInfo {
                operating_system: Some("linux".into()),
                architecture: Some("amd64".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn wkt(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn legacy(d: Duration) -> pb::K8sDuration {
    pb::K8sDuration {
        duration: i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
    }
}

fn from_wkt(d: &prost_types::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, nanos)
}

fn from_legacy(d: &pb::K8sDuration) -> Duration {
    Duration::from_nanos(u64::try_from(d.duration).unwrap_or(0))
}

/// A duration default from the request: the new field first, then the legacy one.
fn pick(
    new: Option<&prost_types::Duration>,
    old: Option<&pb::K8sDuration>,
    fallback: Duration,
) -> Duration {
    new.map(from_wkt)
        .or_else(|| old.map(from_legacy))
        .unwrap_or(fallback)
}

/// The options answer: `None` (field absent: "use your defaults") unless the group overrides
/// something; then every field the autoscaler knows, defaults echoed, durations in both the
/// 1.35+ and the legacy encoding (old clients dereference the legacy ones unchecked).
pub fn options(
    overrides: &OptionOverrides,
    defaults: Option<&pb::NodeGroupAutoscalingOptions>,
) -> Option<pb::NodeGroupAutoscalingOptions> {
    if overrides.is_empty() {
        return None;
    }
    let d = defaults
        .copied()
        .unwrap_or(pb::NodeGroupAutoscalingOptions {
            scale_down_utilization_threshold: DEFAULT_UTILIZATION,
            scale_down_gpu_utilization_threshold: DEFAULT_UTILIZATION,
            ..Default::default()
        });
    let unneeded = overrides.scale_down_unneeded_time.unwrap_or_else(|| {
        pick(
            d.scale_down_unneeded_duration.as_ref(),
            d.legacy_scale_down_unneeded_time.as_ref(),
            DEFAULT_UNNEEDED,
        )
    });
    let unready = overrides.scale_down_unready_time.unwrap_or_else(|| {
        pick(
            d.scale_down_unready_duration.as_ref(),
            d.legacy_scale_down_unready_time.as_ref(),
            DEFAULT_UNREADY,
        )
    });
    let provision = overrides.max_node_provision_time.unwrap_or_else(|| {
        pick(
            d.max_node_provision_duration.as_ref(),
            d.legacy_max_node_provision_time.as_ref(),
            DEFAULT_MAX_PROVISION,
        )
    });
    Some(pb::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: overrides
            .scale_down_utilization_threshold
            .unwrap_or(d.scale_down_utilization_threshold),
        scale_down_gpu_utilization_threshold: overrides
            .scale_down_gpu_utilization_threshold
            .unwrap_or(d.scale_down_gpu_utilization_threshold),
        legacy_scale_down_unneeded_time: Some(legacy(unneeded)),
        legacy_scale_down_unready_time: Some(legacy(unready)),
        legacy_max_node_provision_time: Some(legacy(provision)),
        zero_or_max_node_scaling: overrides
            .zero_or_max_node_scaling
            .unwrap_or(d.zero_or_max_node_scaling),
        ignore_daemon_sets_utilization: overrides
            .ignore_daemonsets_utilization
            .unwrap_or(d.ignore_daemon_sets_utilization),
        scale_down_unneeded_duration: Some(wkt(unneeded)),
        scale_down_unready_duration: Some(wkt(unready)),
        max_node_provision_duration: Some(wkt(provision)),
    })
}

pub fn instance(v: &InstanceView) -> pb::Instance {
    use pb::instance_status::InstanceState;
    let state = match v.phase {
        Phase::Creating => InstanceState::InstanceCreating,
        Phase::Running => InstanceState::InstanceRunning,
        Phase::Deleting => InstanceState::InstanceDeleting,
    };
    pb::Instance {
        id: v.id.clone(),
        status: Some(pb::InstanceStatus {
            instance_state: state as i32,
            error_info: Some(error_info(v.error.as_ref())),
        }),
    }
}

fn error_info(e: Option<&ErrorInfo>) -> pb::InstanceErrorInfo {
    match e {
        None => pb::InstanceErrorInfo::default(),
        Some(e) => pb::InstanceErrorInfo {
            error_code: e.code.to_string(),
            error_message: e.message.clone(),
            instance_error_class: e.class.code(),
        },
    }
}
