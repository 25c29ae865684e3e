//! The provider's own Admin service: manual hibernation and status, for `client hibernate`,
//! `client resume` and `client status`.

use tonic::{Request, Response, Status};

use crate::proto::admin as pb;
use crate::proto::admin::admin_server::{Admin, AdminServer};
use crate::provider::{HibernationStatus, Provider};

#[derive(Clone)]
pub struct AdminService {
    provider: Provider,
}

impl AdminService {
    pub fn new(provider: Provider) -> Self {
        AdminService { provider }
    }

    pub fn into_server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }
}

fn status(s: HibernationStatus) -> pb::GroupStatus {
    pb::GroupStatus {
        group: s.group,
        phase: s.phase.into(),
        manual: s.manual,
        min_size: s.min_size,
        max_size: s.max_size,
        window: s.window.unwrap_or_default(),
        next_change: s.next_change.map(|t| t.to_string()).unwrap_or_default(),
        kept: s.kept,
        parked: s.parked,
        standby: s.standby,
        standby_creating: s.standby_creating,
        standby_wanted: s.standby_wanted,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn hibernate(
        &self,
        request: Request<pb::HibernateRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let req = request.into_inner();
        self.provider
            .hibernate(&req.group, req.force)
            .await
            .map(|s| Response::new(status(s)))
            .map_err(super::status)
    }

    async fn resume(
        &self,
        request: Request<pb::GroupRequest>,
    ) -> Result<Response<pb::GroupStatus>, Status> {
        let req = request.into_inner();
        self.provider
            .resume(&req.group)
            .await
            .map(|s| Response::new(status(s)))
            .map_err(super::status)
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let groups = self
            .provider
            .node_groups()
            .into_iter()
            .filter_map(|g| self.provider.hibernation_status(&g.id).ok())
            .map(status)
            .collect();
        Ok(Response::new(pb::StatusResponse {
            groups,
            notes: self.provider.notes(),
        }))
    }
}
