//! Kamatera cloud provider for the Kubernetes cluster-autoscaler, served over the autoscaler's
//! `externalgrpc` protocol.
//!
//! Data flows one way: `grpc` (the autoscaler's view) calls `provider` (node groups and their
//! instances), which calls `kamatera` (the cloudcli REST API) and, when it has access, `kube`
//! (Node taints and providerIDs). `config` feeds all of them.

pub mod app;
pub mod config;
pub mod grpc;
pub mod kamatera;
pub mod kube;
pub mod names;
pub mod proto;
pub mod provider;
pub mod schedule;
pub mod secret;
pub mod sim;
pub mod telemetry;
pub mod time;
