//! The integration tests: one crate, so the library and its dependencies are linked once.
//! Each module is one area, driven through real parts (the simulator, a fake Kubernetes API
//! server, wiremock, the built binary); `common` holds the shared harness.

mod common;

mod cli_bench;
mod cli_check;
mod cli_serve;
mod cloudcli_shapes;
mod config;
mod crash;
mod dashboard;
mod faults;
mod grpc_flow;
mod kamatera_client;
mod kube_nodes;
mod manifests;
mod operations;
mod paused;
mod reload;
mod schedules;
mod simulator;
mod standby;
mod warm_pool;
mod wire_compat;
