//! Provider values to wire messages: the template `Node`, per-group options (both duration
//! generations), instance statuses.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::proto::externalgrpc as pb;
use crate::proto::k8s;
use crate::provider::OptionOverrides;
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

/// A Kubernetes quantity (`500m`, `2`, `1.5Gi`, `512M`, `1e3`) as a number of base units.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(value * factor).filter(|v| v.is_finite() && *v >= 0.0)
}

/// CPU cores and memory bytes a pod requests, as the scheduler counts them: the larger of the
/// containers' sum and the largest init container, plus the pod overhead. A container without
/// a request for a resource counts its limit.
pub fn pod_requests(pod: &k8s::Pod) -> (f64, f64) {
    let Some(spec) = &pod.spec else {
        return (0.0, 0.0);
    };
    let of = |c: &k8s::Container, name: &str| -> f64 {
        let r = c.resources.as_ref();
        r.and_then(|r| r.requests.get(name))
            .or_else(|| r.and_then(|r| r.limits.get(name)))
            .and_then(|q| q.string.as_deref())
            .and_then(parse_quantity)
            .unwrap_or(0.0)
    };
    let total = |name: &str| {
        let sum: f64 = spec.containers.iter().map(|c| of(c, name)).sum();
        let init = spec
            .init_containers
            .iter()
            .map(|c| of(c, name))
            .fold(0.0, f64::max);
        let overhead = spec
            .overhead
            .get(name)
            .and_then(|q| q.string.as_deref())
            .and_then(parse_quantity)
            .unwrap_or(0.0);
        sum.max(init) + overhead
    };
    (total("cpu"), total("memory"))
}

/// A protobuf timestamp as an instant.
pub fn timestamp(t: &prost_types::Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(t.seconds, t.nanos).ok()
}

#[cfg(test)]
mod pricing_tests {
    use super::*;

    #[test]
    fn quantities() {
        for (text, want) in [
            ("500m", 0.5),
            ("2", 2.0),
            ("1.5Gi", 1.5 * 1024.0 * 1024.0 * 1024.0),
            ("512Mi", 512.0 * 1024.0 * 1024.0),
            ("1G", 1e9),
            ("1e3", 1000.0),
            ("100k", 1e5),
        ] {
            assert_eq!(parse_quantity(text), Some(want), "{text}");
        }
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity("1Zi"), None);
    }

    #[test]
    fn requests_follow_the_scheduler() {
        let q = |s: &str| k8s::Quantity {
            string: Some(s.into()),
        };
        let container = |cpu: &str, mem: &str| k8s::Container {
            name: Some("c".into()),
            resources: Some(k8s::ResourceRequirements {
                requests: [("cpu".to_string(), q(cpu)), ("memory".to_string(), q(mem))]
                    .into_iter()
                    .collect(),
                limits: Default::default(),
            }),
        };
        let pod = k8s::Pod {
            metadata: None,
            spec: Some(k8s::PodSpec {
                containers: vec![container("250m", "256Mi"), container("250m", "256Mi")],
                init_containers: vec![container("2", "64Mi")],
                overhead: [("cpu".to_string(), q("100m"))].into_iter().collect(),
            }),
        };
        let (cpu, mem) = pod_requests(&pod);
        assert!((cpu - 2.1).abs() < 1e-9, "{cpu}");
        assert_eq!(mem, 512.0 * 1024.0 * 1024.0);
    }
}
