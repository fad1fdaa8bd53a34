//! Why an import failed, with the condition reason the operator reports for it.

use thiserror::Error;

use super::layer::LayerError;
use super::plan::PlanError;
use super::source::SourceError;
use crate::archive::ArchiveError;
use crate::registry::RegistryError;

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("{archive}: {source}")]
    Archive {
        archive: String,
        source: ArchiveError,
    },
    #[error("{archive}: {source}")]
    Plan { archive: String, source: PlanError },
    #[error("{archive}: image ID is {actual}, expected {expected}")]
    ImageIdMismatch {
        archive: String,
        expected: String,
        actual: String,
    },
    #[error("{archive}: sha256 of the archive is {actual}, expected {expected}")]
    ArchiveDigestMismatch {
        archive: String,
        expected: String,
        actual: String,
    },
    #[error("{source}")]
    Source { source: SourceError },
    #[error("pushing to {target}: {source}")]
    Registry {
        target: String,
        source: RegistryError,
    },
    #[error("{0}")]
    Usage(String),
    /// A Secret or ConfigMap the spec names is not there (yet): worth retrying.
    #[error("{what} not found")]
    MissingReference { what: String, kind: &'static str },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ImportError {
    /// The condition reason (Kubernetes API conventions: CamelCase, stable).
    pub fn reason(&self) -> &'static str {
        use crate::api::reason;
        match self {
            ImportError::Archive { source, .. } if source.is_verification() => {
                reason::VERIFICATION_FAILED
            }
            ImportError::Archive { .. } => reason::INVALID_ARCHIVE,
            ImportError::Plan {
                source:
                    PlanError::TagRequired { .. }
                    | PlanError::UntaggedInAll { .. }
                    | PlanError::AllWithTag,
                ..
            } => reason::TAG_REQUIRED,
            ImportError::Plan {
                source: PlanError::NotAllowed { .. },
                ..
            } => reason::POLICY_VIOLATION,
            ImportError::Plan { .. } => reason::IMAGE_NOT_FOUND,
            ImportError::ImageIdMismatch { .. } | ImportError::ArchiveDigestMismatch { .. } => {
                reason::VERIFICATION_FAILED
            }
            ImportError::Source {
                source: SourceError::NotFound(_),
            } => reason::SOURCE_NOT_FOUND,
            ImportError::Source {
                source: SourceError::Refused(_),
            } => reason::SOURCE_REFUSED,
            ImportError::Source {
                source: SourceError::UntrustedCertificate { .. },
            } => reason::UNTRUSTED_CERTIFICATE,
            ImportError::Source {
                source: SourceError::UploadExpired { .. },
            } => reason::UPLOAD_EXPIRED,
            ImportError::Source { .. } => reason::SOURCE_UNAVAILABLE,
            ImportError::Registry {
                source: RegistryError::Unauthorized { .. },
                ..
            } => reason::UNAUTHORIZED,
            ImportError::Registry {
                source: RegistryError::UntrustedCertificate { .. },
                ..
            } => reason::UNTRUSTED_CERTIFICATE,
            ImportError::Registry { source, .. } if source.is_transient() => {
                reason::REGISTRY_UNAVAILABLE
            }
            ImportError::Registry {
                source: RegistryError::Config(_),
                ..
            } => reason::INVALID_CONFIGURATION,
            ImportError::Registry { .. } => reason::REGISTRY_REJECTED,
            ImportError::Usage(_) => reason::INVALID_SPEC,
            ImportError::MissingReference { kind: "Secret", .. } => reason::SECRET_NOT_FOUND,
            ImportError::MissingReference { .. } => reason::CONFIG_MAP_NOT_FOUND,
            ImportError::Internal(_) => reason::INTERNAL_ERROR,
        }
    }

    /// Worth trying again later without any change.
    pub fn is_transient(&self) -> bool {
        match self {
            ImportError::Source { source } => source.is_transient(),
            ImportError::Registry { source, .. } => source.is_transient(),
            ImportError::Internal(_) | ImportError::MissingReference { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn from_layer(
        archive: &str,
        target: &str,
        e: LayerError,
        upload: Option<RegistryError>,
    ) -> Self {
        match e {
            LayerError::Archive(source) => ImportError::Archive {
                archive: archive.into(),
                source,
            },
            LayerError::Read(io) => ImportError::Archive {
                archive: archive.into(),
                source: ArchiveError::Io(io),
            },
            LayerError::Sink(io) => match upload {
                Some(source) => ImportError::Registry {
                    target: target.into(),
                    source,
                },
                None => ImportError::Internal(format!("upload stopped: {io}")),
            },
        }
    }
}
