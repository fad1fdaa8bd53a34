//! Condition types and reasons (stable strings: alerts and scripts match on them).
//!
//! kstatus (Flux, kpt, cli-utils) reads `Reconciling` and `Stalled`; Argo CD and `kubectl
//! wait` read `Ready`: `Ready=Unknown` and `Reconciling=True` while this generation is being
//! worked on, `Ready=True` once imported, `Ready=False` and `Stalled=True` when it failed for
//! good. Every condition is about `observedGeneration`: a new generation starts without any.

/// Summary: the image is in the registry as the spec asks.
pub const READY: &str = "Ready";
/// kstatus: present (True) only while this generation is still being worked on.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: present (True) only when this generation failed and will not be retried.
pub const STALLED: &str = "Stalled";
/// The source (claim, Secret, ConfigMap) resolved and the worker Job exists.
pub const SOURCE_READY: &str = "SourceReady";
/// An import is running.
pub const IMPORTING: &str = "Importing";
/// The archive verified (diff_ids, digests, pins).
pub const VERIFIED: &str = "Verified";

pub mod reason {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const IMPORTING: &str = "Importing";
    pub const QUEUED: &str = "Queued";
    pub const JOB_CREATED: &str = "JobCreated";
    pub const RETRYING: &str = "Retrying";
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const WORKER_FAILED: &str = "WorkerFailed";
    pub const PENDING: &str = "Pending";
    pub const POLICY_VIOLATION: &str = "PolicyViolation";
    /// `status.jobName` (or the Job name of the next attempt) is taken by a Job this
    /// ImageImport does not control.
    pub const JOB_CONFLICT: &str = "JobConflict";
    /// The API server refused the worker's ServiceAccount, Role, RoleBinding or Job.
    pub const WORKER_SETUP_FAILED: &str = "WorkerSetupFailed";
    // Failures the worker reports (pipeline::ImportError::reason).
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    pub const INVALID_ARCHIVE: &str = "InvalidArchive";
    pub const TAG_REQUIRED: &str = "TagRequired";
    pub const IMAGE_NOT_FOUND: &str = "ImageNotFound";
    pub const SOURCE_REFUSED: &str = "SourceRefused";
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const UNTRUSTED_CERTIFICATE: &str = "UntrustedCertificate";
    pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";
    pub const INVALID_CONFIGURATION: &str = "InvalidConfiguration";
    pub const REGISTRY_REJECTED: &str = "RegistryRejected";
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    pub const INTERNAL_ERROR: &str = "InternalError";
    // Upload sources.
    /// The import waits for its archive to be uploaded (`status.upload.url`).
    pub const AWAITING_UPLOAD: &str = "AwaitingUpload";
    /// Bytes are arriving (`status.upload.offset` of `length`).
    pub const UPLOADING: &str = "Uploading";
    /// No byte arrived for longer than the upload expiry.
    pub const UPLOAD_EXPIRED: &str = "UploadExpired";
}
