//! Generated protobuf code: the externalgrpc service (compat superset) and the Kubernetes Node
//! and Pod subsets, and the provider's own Admin service. Proto types stop at the `grpc` module.

#![allow(clippy::all, missing_docs)]

/// `clusterautoscaler.cloudprovider.v1.externalgrpc`: the autoscaler's CloudProvider service.
pub mod externalgrpc {
    tonic::include_proto!("clusterautoscaler.cloudprovider.v1.externalgrpc");
}

/// `k8s.io.api.core.v1`: the fields of `Node` the provider fills in.
pub mod k8s {
    tonic::include_proto!("k8s.io.api.core.v1");
}

/// `kamatera.provider.v1`: the provider's operator service (hibernation).
pub mod admin {
    tonic::include_proto!("kamatera.provider.v1");
}

/// Encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/externalgrpc_descriptor.bin"));
