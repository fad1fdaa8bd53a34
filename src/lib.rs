//! imageimport: put the images of a `docker save`/OCI archive into a registry, verified.
//!
//! - [`archive`] reads and checks archives without extracting them.
//! - [`registry`] talks to registries (auth, blobs, manifests, retries).
//! - [`pipeline`] is the one-pass streaming import that ties them together.

pub mod api;
pub mod archive;
pub mod controller;
pub mod pipeline;
pub mod registry;
pub mod upload;
