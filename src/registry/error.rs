//! Registry failures, split into what is worth retrying and what is not.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("registry {registry} refused the credentials (HTTP {status}) for {operation}")]
    Unauthorized {
        registry: String,
        status: u16,
        operation: String,
    },
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} answered HTTP {status} to {operation}{}", retry_hint(.retry_after))]
    Transient {
        registry: String,
        status: u16,
        operation: String,
        retry_after: Option<Duration>,
    },
    #[error("registry {registry} rejected {operation}: HTTP {status} {detail}")]
    Rejected {
        registry: String,
        status: u16,
        operation: String,
        detail: String,
    },
    #[error("registry {registry}: {detail}")]
    Protocol { registry: String, detail: String },
    #[error("invalid registry configuration: {0}")]
    Config(String),
    #[error("upload of {operation} failed: the input cannot be replayed after a broken upload")]
    NotReplayable { operation: String },
    /// The bytes being uploaded could not be produced (the archive side failed).
    #[error("the upload's source failed: {detail}")]
    SourceFailed { detail: String },
}

fn retry_hint(d: &Option<Duration>) -> String {
    d.map(|d| format!(" (retry after {}s)", d.as_secs()))
        .unwrap_or_default()
}

impl RegistryError {
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. }
                | RegistryError::Transient { .. }
                | RegistryError::NotReplayable { .. }
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Classify an HTTP status (not 2xx).
    pub fn from_status(
        registry: &str,
        status: reqwest::StatusCode,
        operation: &str,
        retry_after: Option<Duration>,
        body: &str,
    ) -> Self {
        let registry = registry.to_string();
        let operation = operation.to_string();
        let code = status.as_u16();
        match code {
            401 | 403 => RegistryError::Unauthorized {
                registry,
                status: code,
                operation,
            },
            408 | 429 | 500..=599 => RegistryError::Transient {
                registry,
                status: code,
                operation,
                retry_after,
            },
            _ => RegistryError::Rejected {
                registry,
                status: code,
                operation,
                detail: summarize(body),
            },
        }
    }

    pub fn from_reqwest(registry: &str, e: reqwest::Error) -> Self {
        // Never echo URLs with credentials or bodies: the error chain names the cause.
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        RegistryError::Unreachable {
            registry: registry.to_string(),
            detail,
        }
    }

    pub fn from_oci(
        registry: &str,
        operation: &str,
        e: oci_client::errors::OciDistributionError,
    ) -> Self {
        use oci_client::errors::OciDistributionError as E;
        match e {
            E::RequestError(r) => Self::from_reqwest(registry, r),
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
                RegistryError::Unauthorized {
                    registry: registry.into(),
                    status: 401,
                    operation: operation.into(),
                }
            }
            E::ServerError { code, message, .. } => match reqwest::StatusCode::from_u16(code) {
                Ok(status) => Self::from_status(registry, status, operation, None, &message),
                Err(_) => RegistryError::Protocol {
                    registry: registry.into(),
                    detail: format!("HTTP {code}"),
                },
            },
            E::RegistryError { envelope, .. } => {
                let text = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}", e.code))
                    .collect::<Vec<_>>();
                if text.iter().any(|t| {
                    let t = t.to_ascii_uppercase();
                    t.contains("DENIED") || t.contains("UNAUTHORIZED")
                }) {
                    RegistryError::Unauthorized {
                        registry: registry.into(),
                        status: 401,
                        operation: operation.into(),
                    }
                } else {
                    RegistryError::Rejected {
                        registry: registry.into(),
                        status: 400,
                        operation: operation.into(),
                        detail: text.join(", "),
                    }
                }
            }
            other => RegistryError::Protocol {
                registry: registry.into(),
                detail: protocol_kind(&other),
            },
        }
    }
}

/// Registry error bodies are JSON envelopes (`{"errors":[{"code":…,"message":…}]}`). Only
/// the error codes are kept: bodies are never copied into messages, status or events.
fn summarize(body: &str) -> String {
    let codes: Vec<String> = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["code"].as_str())
        .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(String::from)
        .collect();
    codes.join(", ")
}

/// What went wrong in oci-client's terms, without the response text it may carry.
fn protocol_kind(e: &oci_client::errors::OciDistributionError) -> String {
    let debug = format!("{e:?}");
    let kind: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("unexpected answer ({kind})")
}
