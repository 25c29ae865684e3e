//! A cluster-autoscaler stand-in: the RPCs it makes, with its 5 s deadline, and waits that
//! refresh until a condition holds.

use std::time::Duration;

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;
use pb::instance_status::InstanceState;
use tonic::transport::Channel;

use super::req;

pub struct Ca {
    pub rpc: CloudProviderClient<Channel>,
}

impl Ca {
    /// NodeGroupForNode, which must find a group.
    pub async fn group_for(&mut self, node: pb::ExternalGrpcNode) -> pb::NodeGroup {
        self.rpc
            .node_group_for_node(req(pb::NodeGroupForNodeRequest { node: Some(node) }))
            .await
            .expect("for node")
            .into_inner()
            .node_group
            .expect("group")
    }

    pub async fn connect(addr: std::net::SocketAddr) -> Ca {
        Ca {
            rpc: CloudProviderClient::connect(format!("http://{addr}"))
                .await
                .expect("connect"),
        }
    }

    pub async fn refresh(&mut self) {
        self.rpc
            .refresh(req(pb::RefreshRequest {}))
            .await
            .expect("refresh");
    }

    pub async fn target(&mut self, group: &str) -> i32 {
        self.rpc
            .node_group_target_size(req(pb::NodeGroupTargetSizeRequest { id: group.into() }))
            .await
            .expect("target size")
            .into_inner()
            .target_size
    }

    pub async fn nodes(&mut self, group: &str) -> Vec<pb::Instance> {
        self.rpc
            .node_group_nodes(req(pb::NodeGroupNodesRequest { id: group.into() }))
            .await
            .expect("nodes")
            .into_inner()
            .instances
    }

    pub async fn increase(&mut self, group: &str, delta: i32) -> Result<(), tonic::Status> {
        self.rpc
            .node_group_increase_size(req(pb::NodeGroupIncreaseSizeRequest {
                delta,
                id: group.into(),
            }))
            .await
            .map(|_| ())
    }

    pub async fn delete(
        &mut self,
        group: &str,
        nodes: Vec<pb::ExternalGrpcNode>,
    ) -> Result<(), tonic::Status> {
        self.rpc
            .node_group_delete_nodes(req(pb::NodeGroupDeleteNodesRequest {
                nodes,
                id: group.into(),
            }))
            .await
            .map(|_| ())
    }

    /// The group id NodeGroupForNode answers ("" for none).
    pub async fn group_of(&mut self, node: pb::ExternalGrpcNode) -> String {
        self.rpc
            .node_group_for_node(req(pb::NodeGroupForNodeRequest { node: Some(node) }))
            .await
            .expect("node group for node")
            .into_inner()
            .node_group
            .map(|g| g.id)
            .unwrap_or_default()
    }

    /// Refreshes until `check` holds on the group's instances, or fails after `within`.
    pub async fn until<F>(
        &mut self,
        group: &str,
        what: &str,
        within: Duration,
        check: F,
    ) -> Vec<pb::Instance>
    where
        F: Fn(&[pb::Instance]) -> bool,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.refresh().await;
            let nodes = self.nodes(group).await;
            if check(&nodes) {
                return nodes;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {nodes:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn state(i: &pb::Instance) -> InstanceState {
    i.status
        .as_ref()
        .and_then(|s| InstanceState::try_from(s.instance_state).ok())
        .unwrap_or(InstanceState::Unspecified)
}

pub fn error_code(i: &pb::Instance) -> String {
    i.status
        .as_ref()
        .and_then(|s| s.error_info.as_ref())
        .map(|e| e.error_code.clone())
        .unwrap_or_default()
}

/// The Node the autoscaler sends for a registered instance: providerID and a name equal to the
/// server name.
pub fn node(provider_id: &str, prefix: &str) -> pb::ExternalGrpcNode {
    pb::ExternalGrpcNode {
        provider_id: provider_id.into(),
        name: provider_id.trim_start_matches(prefix).into(),
        ..Default::default()
    }
}
