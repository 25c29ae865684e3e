//! Tests of Node decisions and patches (beside `mod.rs`).

use super::*;
use k8s_openapi::api::core::v1::NodeSpec;

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        effect: effect.into(),
        value: Some("1700000000".into()),
        time_added: None,
    }
}

fn node(taints: Vec<Taint>, unschedulable: Option<bool>) -> Node {
    Node {
        spec: Some(NodeSpec {
            taints: Some(taints),
            unschedulable,
            ..NodeSpec::default()
        }),
        ..Node::default()
    }
}

#[test]
fn removes_only_the_autoscalers_taints() {
    let n = node(
        vec![
            taint("dedicated", "NoSchedule"),
            taint("ToBeDeletedByClusterAutoscaler", "NoSchedule"),
            taint("DeletionCandidateOfClusterAutoscaler", "PreferNoSchedule"),
            taint("node.kubernetes.io/unreachable", "NoExecute"),
        ],
        Some(true),
    );
    let p = release_patch(&n).expect("a patch");
    let keys: Vec<&str> = p["spec"]["taints"]
        .as_array()
        .expect("taints")
        .iter()
        .map(|t| t["key"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["dedicated", "node.kubernetes.io/unreachable"]);
    assert_eq!(p["spec"]["taints"][0]["value"], "1700000000");
    assert!(p["spec"]["unschedulable"].is_null());
    assert!(
        p["spec"]
            .as_object()
            .is_some_and(|o| o.contains_key("unschedulable"))
    );
}

#[test]
fn last_taint_removed_clears_the_list() {
    let n = node(
        vec![taint("ToBeDeletedByClusterAutoscaler", "NoSchedule")],
        None,
    );
    let p = release_patch(&n).expect("a patch");
    assert!(p["spec"]["taints"].is_null());
    assert!(
        !p["spec"]
            .as_object()
            .is_some_and(|o| o.contains_key("unschedulable"))
    );
}

#[test]
fn nothing_to_do_is_no_patch() {
    assert_eq!(
        release_patch(&node(vec![taint("dedicated", "NoSchedule")], Some(false))),
        None
    );
    assert_eq!(release_patch(&Node::default()), None);
}
