//! The mesh model: services, their ports and VIPs, and their endpoints
//! grouped by cluster, held as an immutable [`Snapshot`].
//!
//! Manifests (`manifest.rs`) are translated once (`translate.rs`) into a
//! snapshot (`model.rs`); the [`Store`] (`store.rs`) is the only place a new
//! snapshot is published, and readers on the request path take it without a
//! lock. This module does not pick endpoints (see [`crate::balance`]) and does
//! not watch files (see [`crate::config::reload`]).

pub mod manifest;
mod model;
mod store;
mod translate;
mod vips;

pub use model::{
    ClusterEndpoints, ClusterInfo, Endpoint, EndpointKind, Export, HashKey, LbType, PodHostname,
    Policy, PolicyTarget, Protocol, Service, ServiceName, ServicePort, Snapshot, Target,
};
pub use store::{State, Store};
pub use translate::{translate, translate_with, ANNOTATION_HASH_KEY, ANNOTATION_LB_ALGORITHM};
