//! Talking to OCI registries: targets, credentials, blobs and manifests, with retries.

pub mod auth;
pub mod client;
pub mod error;
mod guard;
pub mod reference;
pub mod upload;

pub use client::{BlobHead, Registry, RegistryOptions, RemoteManifest};
pub use error::RegistryError;
pub use reference::{SavedTag, Target, repository_pattern};
pub use upload::Replay;
