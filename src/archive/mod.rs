//! Reading and checking image archives (docker save, podman/skopeo, OCI layouts).
//!
//! The archive is never extracted: members are checked as they pass, metadata is kept in
//! memory under a cap, and layer bytes are handed to the caller as streams.

pub mod ambiguity;
pub mod catalog;
pub mod digest;
pub mod error;
pub mod formats;
pub mod members;
pub mod resolve;
pub mod scan;

pub use catalog::Catalog;
pub use error::{ArchiveError, MemberProblem};
pub use resolve::{ArchiveIndex, ImageEntry, ImageSource, LayerSource, LeftOut};
