//! What the upload service answers when it refuses a request, with its HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, thiserror::Error)]
pub enum UploadError {
    /// Missing, forged or expired token (401).
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Authenticated, but not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the upload's state (tus: offset mismatch, 409).
    #[error("{0}")]
    Conflict(String),
    /// The upload is gone: terminated, expired, or of an earlier generation (410).
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Content-Type must be application/offset+octet-stream")]
    UnsupportedMediaType,
    #[error("this server speaks tus 1.0.0 (Tus-Resumable: 1.0.0)")]
    VersionMismatch,
    /// The import read the bytes and failed (422): the upload cannot help any more.
    #[error("the import failed ({reason}): {message}")]
    ImportFailed { reason: String, message: String },
    /// The Kubernetes API did not answer (503: try again).
    #[error("Kubernetes API: {0}")]
    Kube(String),
}

impl UploadError {
    pub fn status(&self) -> StatusCode {
        match self {
            UploadError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            UploadError::Forbidden(_) => StatusCode::FORBIDDEN,
            UploadError::NotFound(_) => StatusCode::NOT_FOUND,
            UploadError::Conflict(_) => StatusCode::CONFLICT,
            UploadError::Gone(_) => StatusCode::GONE,
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UploadError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UploadError::VersionMismatch => StatusCode::PRECONDITION_FAILED,
            UploadError::ImportFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            UploadError::Kube(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for UploadError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), format!("{self}\n")).into_response();
        let h = r.headers_mut();
        h.insert("Tus-Resumable", HeaderValue::from_static("1.0.0"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match &self {
            UploadError::Unauthenticated(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"imageimport\""),
                );
            }
            UploadError::VersionMismatch => {
                h.insert("Tus-Version", HeaderValue::from_static("1.0.0"));
            }
            UploadError::Kube(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            }
            UploadError::ImportFailed { reason, .. } => {
                if let Ok(v) = HeaderValue::from_str(reason) {
                    h.insert("Imageimport-Reason", v);
                }
            }
            _ => {}
        }
        r
    }
}
