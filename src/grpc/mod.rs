//! The autoscaler's `externalgrpc` CloudProvider service: wire messages in, provider calls, wire
//! messages out. Proto types stop here.
//!
//! Status codes: NotFound for an unknown node group, InvalidArgument for a bad delta or a node of
//! another group, FailedPrecondition for a min/max violation, Unavailable while Kamatera's state
//! has never been read, Unimplemented for pricing unless every node group has a price. Messages never carry credentials.

mod admin;
pub mod client;
pub mod codec;
pub mod command;
mod convert;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::proto::externalgrpc as pb;
use crate::proto::externalgrpc::cloud_provider_server::{CloudProvider, CloudProviderServer};
use crate::provider::{GroupInfo, NodeRef, Provider, ProviderError};

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

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server failed: {0}")]
    Transport(tonic::transport::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(tonic_reflection::server::Error),
}

// The messages carry their causes, so the causes are not also `source`s (which would print them
// twice in a chain).
impl From<tonic::transport::Error> for ServeError {
    fn from(e: tonic::transport::Error) -> Self {
        ServeError::Transport(e)
    }
}

impl From<tonic_reflection::server::Error> for ServeError {
    fn from(e: tonic_reflection::server::Error) -> Self {
        ServeError::Reflection(e)
    }
}

/// How to serve beyond the provider itself.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Mutual TLS; plaintext (h2c) when `None`.
    pub tls: Option<Arc<tls::ReloadingTls>>,
}

/// Serves the CloudProvider service, the gRPC health service (SERVING once Kamatera's state was
/// read) and server reflection on an already bound listener, until `shutdown` resolves.
pub async fn serve(
    provider: Provider,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_not_serving::<CloudProviderServer<Service>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let health_task = tokio::spawn(report_health(provider.clone(), reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = tonic::transport::Server::builder()
        .add_service(admin::AdminService::new(provider.clone()).into_server())
        .add_service(Service::new(provider).into_server())
        .add_service(health)
        .add_service(reflection);
    let result = match options.tls {
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Some(t) => {
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, t), shutdown)
                .await
        }
    };
    health_task.abort();
    Ok(result?)
}

/// Keeps the health service SERVING exactly while the provider can answer: after its first
/// successful reconcile, and (with leader election) while it holds the lease.
async fn report_health(provider: Provider, reporter: tonic_health::server::HealthReporter) {
    let mut reconciles = provider.subscribe_reconciles();
    let mut leadership = provider.subscribe_leadership();
    let mut serving = false;
    loop {
        let now = provider.ready() && provider.is_leader();
        if now != serving {
            let status = if now {
                reporter.set_serving::<CloudProviderServer<Service>>().await;
                tonic_health::ServingStatus::Serving
            } else {
                reporter
                    .set_not_serving::<CloudProviderServer<Service>>()
                    .await;
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            info!(
                "gRPC health: {}",
                if now { "SERVING" } else { "NOT_SERVING" }
            );
            serving = now;
        }
        tokio::select! {
            r = reconciles.changed() => if r.is_err() { return },
            r = leadership.changed() => if r.is_err() { return },
        }
    }
}

const NO_PRICES: &str = "pricing is not configured (set price-per-hour on every node group)";

/// The priced period of a pricing request.
fn period(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Result<(jiff::Timestamp, jiff::Timestamp), Status> {
    let get = |t: Option<&prost_types::Timestamp>, what: &str| {
        t.and_then(convert::timestamp)
            .ok_or_else(|| Status::invalid_argument(format!("{what} time is missing or invalid")))
    };
    Ok((get(start, "start")?, get(end, "end")?))
}

fn status(e: ProviderError) -> Status {
    match &e {
        ProviderError::UnknownGroup { .. } | ProviderError::UnknownNode { .. } => {
            Status::not_found(e.to_string())
        }
        ProviderError::NotInGroup { .. }
        | ProviderError::BadDelta { .. }
        | ProviderError::EndBeforeStart { .. } => Status::invalid_argument(e.to_string()),
        ProviderError::OverMax { .. }
        | ProviderError::WouldDeleteExisting { .. }
        | ProviderError::NoPrice { .. } => Status::failed_precondition(e.to_string()),
        ProviderError::StandingBy | ProviderError::NoStateYet { .. } => {
            Status::unavailable(e.to_string())
        }
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
        group_label: n
            .labels
            .get(crate::provider::GROUP_LABEL)
            .cloned()
            .unwrap_or_default(),
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

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

impl Service {
    /// Runs one RPC and records its answer and duration in the metrics.
    async fn measured<T>(
        &self,
        method: &'static str,
        rpc: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let r = rpc.await;
        let code = match &r {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.provider.metrics().grpc_request(
            method,
            code_name(code),
            started.elapsed().as_secs_f64(),
        );
        r
    }
}

#[tonic::async_trait]
impl CloudProvider for Service {
    async fn node_groups(
        &self,
        _: Request<pb::NodeGroupsRequest>,
    ) -> Result<Response<pb::NodeGroupsResponse>, Status> {
        // Sizes follow schedules and hibernation, so they are worked out at each call.
        self.measured("NodeGroups", async {
            Ok(Response::new(pb::NodeGroupsResponse {
                node_groups: self.provider.node_groups().into_iter().map(group).collect(),
            }))
        })
        .await
    }

    async fn node_group_for_node(
        &self,
        request: Request<pb::NodeGroupForNodeRequest>,
    ) -> Result<Response<pb::NodeGroupForNodeResponse>, Status> {
        self.measured("NodeGroupForNode", async {
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
        })
        .await
    }

    async fn pricing_node_price(
        &self,
        request: Request<pb::PricingNodePriceRequest>,
    ) -> Result<Response<pb::PricingNodePriceResponse>, Status> {
        self.measured("PricingNodePrice", async {
            if !self.provider.pricing_enabled() {
                return Err(Status::unimplemented(NO_PRICES));
            }
            let req = request.into_inner();
            let node = req
                .node
                .as_ref()
                .map(node_ref)
                .ok_or_else(|| Status::invalid_argument("node is missing"))?;
            let (start, end) = period(
                req.start_timestamp
                    .as_ref()
                    .or(req.legacy_start_time.as_ref()),
                req.end_timestamp.as_ref().or(req.legacy_end_time.as_ref()),
            )?;
            let r = self
                .provider
                .node_price(&node, start, end)
                .map(|price| pb::PricingNodePriceResponse { price });
            logged("PricingNodePrice", false, r)
        })
        .await
    }

    async fn pricing_pod_price(
        &self,
        request: Request<pb::PricingPodPriceRequest>,
    ) -> Result<Response<pb::PricingPodPriceResponse>, Status> {
        self.measured("PricingPodPrice", async {
            if !self.provider.pricing_enabled() {
                return Err(Status::unimplemented(NO_PRICES));
            }
            let req = request.into_inner();
            let bytes = if req.pod_bytes.is_empty() {
                &req.legacy_pod
            } else {
                &req.pod_bytes
            };
            let pod = crate::proto::k8s::Pod::decode(bytes.as_slice()).map_err(|e| {
                Status::invalid_argument(format!("pod is not a Kubernetes Pod: {e}"))
            })?;
            let (start, end) = period(
                req.start_timestamp
                    .as_ref()
                    .or(req.legacy_start_time.as_ref()),
                req.end_timestamp.as_ref().or(req.legacy_end_time.as_ref()),
            )?;
            let (cpu, memory) = convert::pod_requests(&pod);
            let r = self
                .provider
                .pod_price(cpu, memory, start, end)
                .map(|price| pb::PricingPodPriceResponse { price });
            logged("PricingPodPrice", false, r)
        })
        .await
    }

    async fn gpu_label(
        &self,
        _: Request<pb::GpuLabelRequest>,
    ) -> Result<Response<pb::GpuLabelResponse>, Status> {
        self.measured("GPULabel", async {
            Ok(Response::new(pb::GpuLabelResponse {
                label: self.provider.gpu_label().to_string(),
            }))
        })
        .await
    }

    async fn get_available_gpu_types(
        &self,
        _: Request<pb::GetAvailableGpuTypesRequest>,
    ) -> Result<Response<pb::GetAvailableGpuTypesResponse>, Status> {
        self.measured("GetAvailableGPUTypes", async {
            Ok(Response::new(pb::GetAvailableGpuTypesResponse::default()))
        })
        .await
    }

    async fn cleanup(
        &self,
        _: Request<pb::CleanupRequest>,
    ) -> Result<Response<pb::CleanupResponse>, Status> {
        self.measured("Cleanup", async {
            // The autoscaler is exiting; this server outlives it and keeps its in-flight work, so a
            // restarted autoscaler finds the same state.
            info!(rpc = "Cleanup", "the autoscaler is shutting down");
            Ok(Response::new(pb::CleanupResponse {}))
        })
        .await
    }

    async fn refresh(
        &self,
        _: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        self.measured("Refresh", async {
            let r = self
                .provider
                .refresh()
                .instrument(info_span!("Refresh"))
                .await;
            if let Err(e) = &r {
                warn!(rpc = "Refresh", error = %e, "cannot serve yet");
            }
            logged("Refresh", false, r.map(|()| pb::RefreshResponse {}))
        })
        .await
    }

    async fn node_group_target_size(
        &self,
        request: Request<pb::NodeGroupTargetSizeRequest>,
    ) -> Result<Response<pb::NodeGroupTargetSizeResponse>, Status> {
        self.measured("NodeGroupTargetSize", async {
            let req = request.into_inner();
            let r = self
                .provider
                .target_size(&req.id)
                .map(|n| pb::NodeGroupTargetSizeResponse {
                    target_size: i32::try_from(n).unwrap_or(i32::MAX),
                });
            logged("NodeGroupTargetSize", false, r)
        })
        .await
    }

    async fn node_group_increase_size(
        &self,
        request: Request<pb::NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<pb::NodeGroupIncreaseSizeResponse>, Status> {
        self.measured("NodeGroupIncreaseSize", async {
            let req = request.into_inner();
            let span = info_span!("NodeGroupIncreaseSize", group = %crate::telemetry::safe(&req.id), delta = req.delta);
            info!(rpc = "NodeGroupIncreaseSize", group = %crate::telemetry::safe(&req.id), delta = req.delta);
            let r = self
                .provider
                .increase_size(&req.id, req.delta)
                .instrument(span)
                .await
                .map(|()| pb::NodeGroupIncreaseSizeResponse {});
            logged("NodeGroupIncreaseSize", true, r)
        })
        .await
    }

    async fn node_group_delete_nodes(
        &self,
        request: Request<pb::NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<pb::NodeGroupDeleteNodesResponse>, Status> {
        self.measured("NodeGroupDeleteNodes", async {
            let req = request.into_inner();
            let nodes: Vec<NodeRef> = req.nodes.iter().map(node_ref).collect();
            let span = info_span!("NodeGroupDeleteNodes", group = %crate::telemetry::safe(&req.id), nodes = nodes.len());
            info!(
                rpc = "NodeGroupDeleteNodes",
                group = %crate::telemetry::safe(&req.id),
                nodes = ?nodes
                    .iter()
                    .take(50)
                    .map(|n| crate::telemetry::safe(&n.name))
                    .collect::<Vec<_>>()
            );
            let r = self
                .provider
                .delete_nodes(&req.id, &nodes)
                .instrument(span)
                .await
                .map(|()| pb::NodeGroupDeleteNodesResponse {});
            logged("NodeGroupDeleteNodes", true, r)
        })
        .await
    }

    async fn node_group_decrease_target_size(
        &self,
        request: Request<pb::NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<pb::NodeGroupDecreaseTargetSizeResponse>, Status> {
        self.measured("NodeGroupDecreaseTargetSize", async {
            let req = request.into_inner();
            info!(rpc = "NodeGroupDecreaseTargetSize", group = %crate::telemetry::safe(&req.id), delta = req.delta);
            let r = self
                .provider
                .decrease_target_size(&req.id, req.delta)
                .await
                .map(|()| pb::NodeGroupDecreaseTargetSizeResponse {});
            logged("NodeGroupDecreaseTargetSize", true, r)
        })
        .await
    }

    async fn node_group_nodes(
        &self,
        request: Request<pb::NodeGroupNodesRequest>,
    ) -> Result<Response<pb::NodeGroupNodesResponse>, Status> {
        self.measured("NodeGroupNodes", async {
            let req = request.into_inner();
            let r = self
                .provider
                .nodes(&req.id)
                .map(|list| pb::NodeGroupNodesResponse {
                    instances: list.iter().map(convert::instance).collect(),
                });
            logged("NodeGroupNodes", false, r)
        })
        .await
    }

    async fn node_group_template_node_info(
        &self,
        request: Request<pb::NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<pb::NodeGroupTemplateNodeInfoResponse>, Status> {
        self.measured("NodeGroupTemplateNodeInfo", async {
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
        })
        .await
    }

    async fn node_group_get_options(
        &self,
        request: Request<pb::NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<pb::NodeGroupAutoscalingOptionsResponse>, Status> {
        self.measured("NodeGroupGetOptions", async {
            let req = request.into_inner();
            let r =
                self.provider
                    .options(&req.id)
                    .map(|o| pb::NodeGroupAutoscalingOptionsResponse {
                        node_group_autoscaling_options: convert::options(&o, req.defaults.as_ref()),
                    });
            logged("NodeGroupGetOptions", false, r)
        })
        .await
    }
}
