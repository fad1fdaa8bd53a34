//! Registry failures, split into what is worth retrying and what is not.

use std::time::Duration;

use thiserror::Error;

use crate::front_end::{self, FrontEnd};

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{}", unauthorized(.registry, .status, .operation, .credentials_sent))]
    Unauthorized {
        registry: String,
        status: u16,
        operation: String,
        /// Whether this connection sent credentials at all (a registry asks for them with
        /// the same 401 whether none or wrong ones were sent).
        credentials_sent: bool,
    },
    /// A TLS handshake answered in plain HTTP: the registry speaks HTTP only. Permanent:
    /// retrying cannot change what the registry speaks.
    #[error(
        "registry {registry} answered the TLS handshake in plain HTTP: it speaks HTTP, not \
         HTTPS; {}",
        front_end::says(
            "to push over plain (unencrypted) HTTP, add --insecure",
            "to import over plain (unencrypted) HTTP, set spec.target.insecure: true",
        )
    )]
    PlainHttp { registry: String },
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
    /// The registry sent us to an address the URL guard's classes refuse (a token realm or a
    /// blob redirect at a cloud metadata or link-local address): permanent.
    #[error("registry {registry} sent its {what} elsewhere: {detail}")]
    Refused {
        registry: String,
        what: String,
        detail: String,
    },
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

/// The message of a 401/403, with what to do in the front end in use.
fn unauthorized(registry: &str, status: &u16, operation: &str, credentials_sent: &bool) -> String {
    if !credentials_sent {
        let how = match front_end::current() {
            FrontEnd::Cli => format!(
                "log in with `docker login {registry}` (the command reads $DOCKER_CONFIG/config.json, \
                 else ~/.docker/config.json), or give such a file with --auth-file"
            ),
            FrontEnd::Operator => format!(
                "name a Secret of type kubernetes.io/dockerconfigjson with an entry for {registry} \
                 in spec.target.credentialsSecretRef (`kubectl create secret docker-registry NAME \
                 --docker-server={registry} --docker-username=… --docker-password=…`)"
            ),
        };
        return format!(
            "registry {registry} needs credentials for {operation} (HTTP {status}) and none \
             were given: {how}"
        );
    }
    let check = front_end::says(
        "check its entry in the auth file (--auth-file, or docker login's config.json)",
        "check its entry in the Secret named by spec.target.credentialsSecretRef",
    );
    format!(
        "registry {registry} refused the credentials (HTTP {status}) for {operation}: {check}, \
         and that this account may push to the repository"
    )
}

/// What to do about a certificate that failed verification.
fn untrusted_hint(detail: &str) -> &'static str {
    if detail.contains("CaUsedAsEndEntity") {
        // webpki (rustls) never accepts a CA certificate as the server's own, not even when it
        // is the trust anchor given: say what the certificate needs instead.
        front_end::says(
            "the registry presents a CA certificate (basicConstraints CA:TRUE, which \
             `openssl req -x509` writes unless told otherwise) as its own, and this client \
             (rustls) accepts only a server certificate with CA:FALSE, even when it is the CA \
             given with --ca-file; give the registry a certificate made with \
             `openssl req -x509 … -addext basicConstraints=critical,CA:FALSE -addext \
             subjectAltName=DNS:<host>` (and that certificate as --ca-file), or one signed by \
             your CA",
            "the registry presents a CA certificate (basicConstraints CA:TRUE, which \
             `openssl req -x509` writes unless told otherwise) as its own, and the worker \
             (rustls) accepts only a server certificate with CA:FALSE, even when it is the CA \
             of spec.target.caBundleRef; give the registry a certificate made with \
             `openssl req -x509 … -addext basicConstraints=critical,CA:FALSE -addext \
             subjectAltName=DNS:<host>` (and that certificate in caBundleRef), or one signed by \
             your CA",
        )
    } else if detail.contains("not valid for name") || detail.contains("NotValidForName") {
        "connect with a host name the certificate was issued for"
    } else if detail.contains("expired") || detail.contains("not valid yet") {
        "the registry needs a currently valid certificate (or this machine's clock is wrong)"
    } else {
        front_end::says(
            "if a private CA signed it, give that CA's certificate (PEM) with --ca-file",
            "if a private CA signed it, give that CA's certificate (PEM) with \
             spec.target.caBundleRef",
        )
    }
}

/// rustls' words for a record that is not TLS: what a plain-HTTP server's answer to a
/// ClientHello looks like (`InvalidMessage::InvalidContentType`).
const NOT_TLS: &str = "InvalidContentType";

/// Whether the error chain says the server answered the TLS handshake with something that is
/// not TLS (a plain-HTTP server).
pub(crate) fn answered_in_plain_http(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        let carried = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.to_string().contains(NOT_TLS));
        if carried || s.to_string().contains(NOT_TLS) {
            return true;
        }
        source = s.source();
    }
    false
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
                credentials_sent: true,
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
        if answered_in_plain_http(&e) {
            return RegistryError::PlainHttp {
                registry: registry.to_string(),
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
                    credentials_sent: true,
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
                        credentials_sent: true,
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
        // The command's words (the default front end); the worker names caBundleRef.
        assert!(
            text.contains("--ca-file") && !text.contains("caBundleRef"),
            "{text}"
        );
        let e = RegistryError::UntrustedCertificate {
            registry: "r.example:5000".into(),
            detail: "invalid peer certificate: certificate not valid for name \"a\"".into(),
        };
        assert!(e.to_string().contains("host name"), "{e}");
    }

    #[test]
    fn a_plain_http_answer_to_the_handshake_is_found_and_permanent() {
        assert!(answered_in_plain_http(&chain(
            "received corrupt message of type InvalidContentType"
        )));
        assert!(!answered_in_plain_http(&chain(
            "invalid peer certificate: UnknownIssuer"
        )));
        let e = RegistryError::PlainHttp {
            registry: "127.0.0.1:5000".into(),
        };
        assert!(!e.is_transient());
        assert!(e.to_string().contains("--insecure"), "{e}");
    }

    #[test]
    fn a_ca_certificate_used_as_the_servers_own_is_explained() {
        let e = RegistryError::UntrustedCertificate {
            registry: "r.example:5000".into(),
            detail: "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("CA:TRUE") && text.contains("CA:FALSE"),
            "{text}"
        );
        assert!(text.contains("--ca-file"), "{text}");
    }

    #[test]
    fn a_401_without_credentials_says_how_to_give_them() {
        let e = |sent| RegistryError::Unauthorized {
            registry: "r.example:5000".into(),
            status: 401,
            operation: "authentication".into(),
            credentials_sent: sent,
        };
        let none = e(false).to_string();
        assert!(none.contains("needs credentials"), "{none}");
        assert!(none.contains("docker login r.example:5000"), "{none}");
        assert!(none.contains("--auth-file"), "{none}");
        assert!(!none.contains("Secret"), "the CLI's words only: {none}");
        let refused = e(true).to_string();
        assert!(refused.contains("refused the credentials"), "{refused}");
        assert!(!e(true).is_transient());
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
