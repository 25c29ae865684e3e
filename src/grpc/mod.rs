//! The autoscaler's `externalgrpc` CloudProvider service: wire messages in, provider calls, wire
//! messages out. Proto types stop here.
//!
//! Status codes: NotFound for an unknown node group, InvalidArgument for a bad delta or a node of
//! another group, FailedPrecondition for a min/max violation, Unavailable while Kamatera's state
//! has never been read, Unimplemented for pricing. Messages never carry credentials.

mod convert;

use std::future::Future;

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::proto::externalgrpc as pb;
use crate::proto::externalgrpc::cloud_provider_server::{CloudProvider, CloudProviderServer};
use crate::provider::{GroupInfo, NodeRef, Provider, ProviderError};

pub use convert::template_node as encode_template_node;

/// The tonic service around a [`Provider`].
#[derive(Clone)]
pub struct Service {
    provider: Provider,
}

impl Service {
    pub fn new(provider: Provider) -> Self {
        Service { provider }
    }

    /// The tonic server type, ready for `Server::add_service`.
    pub fn into_server(self) -> CloudProviderServer<Service> {
        CloudProviderServer::new(self)
    }
}

/// Serves the provider on an already bound listener until `shutdown` resolves.
pub async fn serve(
    provider: Provider,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(Service::new(provider).into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

fn status(e: ProviderError) -> Status {
    match &e {
        ProviderError::UnknownGroup(_) => Status::not_found(e.to_string()),
        ProviderError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        ProviderError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        ProviderError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

fn group(g: GroupInfo) -> pb::NodeGroup {
    pb::NodeGroup {
        debug: format!(
            "node group ID: {} (min:{} max:{})",
            g.id, g.min_size, g.max_size
        ),
        id: g.id,
        min_size: i32::try_from(g.min_size).unwrap_or(i32::MAX),
        max_size: i32::try_from(g.max_size).unwrap_or(i32::MAX),
    }
}

fn node_ref(n: &pb::ExternalGrpcNode) -> NodeRef {
    NodeRef {
        provider_id: n.provider_id.clone(),
        name: n.name.clone(),
    }
}

/// Logs a mutating RPC's outcome at info, a failed read at debug.
fn logged<T>(
    rpc: &'static str,
    mutating: bool,
    r: Result<T, ProviderError>,
) -> Result<Response<T>, Status> {
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            if mutating {
                info!(rpc, error = %e, "rejected");
            } else {
                debug!(rpc, error = %e, "rejected");
            }
            Err(status(e))
        }
    }
}

#[tonic::async_trait]
impl CloudProvider for Service {
    async fn node_groups(
        &self,
        _: Request<pb::NodeGroupsRequest>,
    ) -> Result<Response<pb::NodeGroupsResponse>, Status> {
        let node_groups = self.provider.node_groups().into_iter().map(group).collect();
        Ok(Response::new(pb::NodeGroupsResponse { node_groups }))
    }

    async fn node_group_for_node(
        &self,
        request: Request<pb::NodeGroupForNodeRequest>,
    ) -> Result<Response<pb::NodeGroupForNodeResponse>, Status> {
        let req = request.into_inner();
        let node = req.node.as_ref().map(node_ref).unwrap_or_default();
        // Not ours: an empty group (id ""), never an error.
        let node_group = Some(
            self.provider
                .node_group_for_node(&node)
                .map(group)
                .unwrap_or_default(),
        );
        debug!(rpc = "NodeGroupForNode", node = %node.name, provider_id = %node.provider_id, group = ?node_group.as_ref().map(|g| &g.id));
        Ok(Response::new(pb::NodeGroupForNodeResponse { node_group }))
    }

    async fn pricing_node_price(
        &self,
        _: Request<pb::PricingNodePriceRequest>,
    ) -> Result<Response<pb::PricingNodePriceResponse>, Status> {
        Err(Status::unimplemented("pricing is not configured"))
    }

    async fn pricing_pod_price(
        &self,
        _: Request<pb::PricingPodPriceRequest>,
    ) -> Result<Response<pb::PricingPodPriceResponse>, Status> {
        Err(Status::unimplemented("pricing is not configured"))
    }

    async fn gpu_label(
        &self,
        _: Request<pb::GpuLabelRequest>,
    ) -> Result<Response<pb::GpuLabelResponse>, Status> {
        Ok(Response::new(pb::GpuLabelResponse {
            label: self.provider.gpu_label().to_string(),
        }))
    }

    async fn get_available_gpu_types(
        &self,
        _: Request<pb::GetAvailableGpuTypesRequest>,
    ) -> Result<Response<pb::GetAvailableGpuTypesResponse>, Status> {
        Ok(Response::new(pb::GetAvailableGpuTypesResponse::default()))
    }

    async fn cleanup(
        &self,
        _: Request<pb::CleanupRequest>,
    ) -> Result<Response<pb::CleanupResponse>, Status> {
        // The autoscaler is exiting; this server outlives it and keeps its in-flight work, so a
        // restarted autoscaler finds the same state.
        info!(rpc = "Cleanup", "the autoscaler is shutting down");
        Ok(Response::new(pb::CleanupResponse {}))
    }

    async fn refresh(
        &self,
        _: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let r = self
            .provider
            .refresh()
            .instrument(info_span!("Refresh"))
            .await;
        if let Err(e) = &r {
            warn!(rpc = "Refresh", error = %e, "cannot serve yet");
        }
        logged("Refresh", false, r.map(|()| pb::RefreshResponse {}))
    }

    async fn node_group_target_size(
        &self,
        request: Request<pb::NodeGroupTargetSizeRequest>,
    ) -> Result<Response<pb::NodeGroupTargetSizeResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .provider
            .target_size(&req.id)
            .map(|n| pb::NodeGroupTargetSizeResponse {
                target_size: i32::try_from(n).unwrap_or(i32::MAX),
            });
        logged("NodeGroupTargetSize", false, r)
    }

    async fn node_group_increase_size(
        &self,
        request: Request<pb::NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<pb::NodeGroupIncreaseSizeResponse>, Status> {
        let req = request.into_inner();
        let _span =
            info_span!("NodeGroupIncreaseSize", group = %req.id, delta = req.delta).entered();
        info!(rpc = "NodeGroupIncreaseSize", group = %req.id, delta = req.delta);
        let r = self
            .provider
            .increase_size(&req.id, req.delta)
            .map(|()| pb::NodeGroupIncreaseSizeResponse {});
        logged("NodeGroupIncreaseSize", true, r)
    }

    async fn node_group_delete_nodes(
        &self,
        request: Request<pb::NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<pb::NodeGroupDeleteNodesResponse>, Status> {
        let req = request.into_inner();
        let nodes: Vec<NodeRef> = req.nodes.iter().map(node_ref).collect();
        let _span =
            info_span!("NodeGroupDeleteNodes", group = %req.id, nodes = nodes.len()).entered();
        info!(
            rpc = "NodeGroupDeleteNodes",
            group = %req.id,
            nodes = ?nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>()
        );
        let r = self
            .provider
            .delete_nodes(&req.id, &nodes)
            .map(|()| pb::NodeGroupDeleteNodesResponse {});
        logged("NodeGroupDeleteNodes", true, r)
    }

    async fn node_group_decrease_target_size(
        &self,
        request: Request<pb::NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<pb::NodeGroupDecreaseTargetSizeResponse>, Status> {
        let req = request.into_inner();
        info!(rpc = "NodeGroupDecreaseTargetSize", group = %req.id, delta = req.delta);
        let r = self
            .provider
            .decrease_target_size(&req.id, req.delta)
            .map(|()| pb::NodeGroupDecreaseTargetSizeResponse {});
        logged("NodeGroupDecreaseTargetSize", true, r)
    }

    async fn node_group_nodes(
        &self,
        request: Request<pb::NodeGroupNodesRequest>,
    ) -> Result<Response<pb::NodeGroupNodesResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .provider
            .nodes(&req.id)
            .map(|list| pb::NodeGroupNodesResponse {
                instances: list.iter().map(convert::instance).collect(),
            });
        logged("NodeGroupNodes", false, r)
    }

    async fn node_group_template_node_info(
        &self,
        request: Request<pb::NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<pb::NodeGroupTemplateNodeInfoResponse>, Status> {
        let req = request.into_inner();
        let r = self.provider.template_node(&req.id).map(|t| {
            let bytes = convert::template_node(&t).encode_to_vec();
            // The same Node in the legacy (≤ 1.34) and current field.
            pb::NodeGroupTemplateNodeInfoResponse {
                legacy_node_info: bytes.clone(),
                node_bytes: bytes,
            }
        });
        logged("NodeGroupTemplateNodeInfo", false, r)
    }

    async fn node_group_get_options(
        &self,
        request: Request<pb::NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<pb::NodeGroupAutoscalingOptionsResponse>, Status> {
        let req = request.into_inner();
        let r = self
            .provider
            .options(&req.id)
            .map(|o| pb::NodeGroupAutoscalingOptionsResponse {
                node_group_autoscaling_options: convert::options(&o, req.defaults.as_ref()),
            });
        logged("NodeGroupGetOptions", false, r)
    }
}
