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
    /// The registry's TLS certificate failed verification: retrying cannot change that.
    #[error(
        "registry {registry}'s TLS certificate is not trusted ({detail}): {}",
        untrusted_hint(.detail)
    )]
    UntrustedCertificate { registry: String, detail: String },
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

/// What to do about a certificate that failed verification.
fn untrusted_hint(detail: &str) -> &'static str {
    if detail.contains("not valid for name") {
        "connect with a host name the certificate was issued for"
    } else if detail.contains("expired") || detail.contains("not valid yet") {
        "the registry needs a currently valid certificate (or this machine's clock is wrong)"
    } else {
        "if a private CA signed it, give that CA's certificate (PEM) with --ca-file, \
         or with spec.target.caBundleRef in an ImageImport"
    }
}

/// rustls' words for a refused server certificate (`rustls::Error::InvalidCertificate`).
const INVALID_CERTIFICATE: &str = "invalid peer certificate";

/// Why the server's certificate was refused, if that is what ended the request: rustls'
/// error arrives in the cause chain inside an `io::Error` of kind `InvalidData` (tokio-rustls).
/// rustls is not a direct dependency, so its error type cannot be named for a downcast and
/// its text is recognised instead.
pub(crate) fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(s) = source {
        // `io::Error::source` skips the error it carries: look at that one directly.
        let carried = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner.to_string());
        for text in carried.into_iter().chain([s.to_string()]) {
            if let Some(at) = text.find(INVALID_CERTIFICATE) {
                return Some(text[at..].to_string());
            }
        }
        source = s.source();
    }
    None
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
        if let Some(detail) = certificate_problem(&e) {
            return RegistryError::UntrustedCertificate {
                registry: registry.to_string(),
                detail,
            };
        }
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
            // oci-client keeps only the status and body of an error answer, not its headers:
            // a Retry-After sent with it is lost (the backoff's own delay applies instead).
            E::ServerError { code, message, .. } => match reqwest::StatusCode::from_u16(code) {
                Ok(status) => Self::from_status(registry, status, operation, None, &message),
                Err(_) => RegistryError::Protocol {
                    registry: registry.into(),
                    detail: format!("HTTP {code}"),
                },
            },
            // A 4xx answer with an error envelope: oci-client keeps neither its status nor its
            // headers (so no Retry-After), only the envelope's codes.
            E::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    matches!(e.code, oci_client::errors::OciErrorCode::Toomanyrequests)
                }) =>
            {
                RegistryError::Transient {
                    registry: registry.into(),
                    status: 429,
                    operation: operation.into(),
                    retry_after: None,
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as hyper and reqwest wrap the connector's.
    #[derive(Debug)]
    struct Wrap(&'static str, Box<dyn std::error::Error + Send + Sync>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    /// Stands for `rustls::Error`: tokio-rustls hands it on inside an `InvalidData` io error.
    #[derive(Debug)]
    struct Tls(&'static str);
    impl std::fmt::Display for Tls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Tls {}

    fn chain(tls: &'static str) -> Wrap {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Tls(tls));
        Wrap(
            "error sending request",
            Box::new(Wrap("client error (Connect)", Box::new(io))),
        )
    }

    #[test]
    fn a_refused_certificate_is_found_in_the_cause_chain() {
        assert_eq!(
            certificate_problem(&chain("invalid peer certificate: UnknownIssuer")).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        assert_eq!(
            certificate_problem(&chain("received fatal alert: HandshakeFailure")),
            None
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            certificate_problem(&Wrap("connect", Box::new(refused))),
            None
        );
    }

    #[test]
    fn an_untrusted_certificate_is_permanent_and_says_what_to_do() {
        let e = RegistryError::UntrustedCertificate {
            registry: "r.example:5000".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(text.contains("certificate is not trusted"), "{text}");
        assert!(
            text.contains("--ca-file") && text.contains("caBundleRef"),
            "{text}"
        );
        let e = RegistryError::UntrustedCertificate {
            registry: "r.example:5000".into(),
            detail: "invalid peer certificate: certificate not valid for name \"a\"".into(),
        };
        assert!(e.to_string().contains("host name"), "{e}");
    }

    #[test]
    fn too_many_requests_in_an_envelope_is_transient() {
        let envelope: oci_client::errors::OciEnvelope = serde_json::from_str(
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
        )
        .unwrap();
        let e = RegistryError::from_oci(
            "r",
            "blob check",
            oci_client::errors::OciDistributionError::RegistryError {
                envelope,
                url: "https://r/v2/".into(),
            },
        );
        assert!(e.is_transient(), "{e}");
    }
}
