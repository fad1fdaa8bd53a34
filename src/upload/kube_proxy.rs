//! `/k8s/…`: the web console's same-origin way to the Kubernetes API, acting as the person
//! signed in. A request is forwarded with the caller's own `Authorization` header and nothing
//! of this service's: the service's credentials (its ServiceAccount token or client
//! certificate) are never used here, only the API server's address and CA. So the API
//! server's RBAC decides what the console shows and may do, as with the Kubernetes Dashboard.
//!
//! Only `/api/…` and `/apis/…` paths, a few headers (`Authorization`, `Accept`,
//! `Content-Type`) and bodies up to 3 MiB pass. A request must carry `X-Imageimport-Console: 1`:
//! a cross-site page cannot send that header without a CORS preflight, which this service never
//! answers, so an authenticating proxy's cookie cannot be used by another site (CSRF).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::sync::OnceCell;

/// The header a console request carries (see the module comment).
pub const CONSOLE_HEADER: &str = "x-imageimport-console";
/// The API server refuses larger requests itself (3 MiB).
const BODY_LIMIT: usize = 3 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("no Kubernetes API server is configured for the console: {0}")]
    NoCluster(String),
    #[error("the console's TLS client for {url} cannot be built: {detail}")]
    Tls { url: String, detail: String },
    #[error("the Kubernetes API server at {url} did not answer: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("only /k8s/api/… and /k8s/apis/… are passed to the Kubernetes API")]
    PathRefused,
    #[error("console requests carry the header X-Imageimport-Console: 1")]
    NotFromConsole,
    #[error("the request body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoCluster(_) | ProxyError::Tls { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::PathRefused => StatusCode::NOT_FOUND,
            ProxyError::NotFromConsole => StatusCode::FORBIDDEN,
            ProxyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl IntoResponse for ProxyError {
    /// A `Status` object, as the API server itself would answer, so the page reads one shape.
    fn into_response(self) -> Response {
        let code = self.status();
        let body = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": self.to_string(), "code": code.as_u16(),
        });
        let mut r = (code, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// Where the API server is, and a client that trusts its CA and holds no credentials.
struct Upstream {
    base: String,
    http: reqwest::Client,
}

impl Upstream {
    async fn from_environment() -> Result<Upstream, ProxyError> {
        // In the cluster: the Pod's API server address and CA; locally: the kubeconfig's.
        let config = kube::Config::infer()
            .await
            .map_err(|e| ProxyError::NoCluster(e.to_string()))?;
        let base = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .tls_danger_accept_invalid_certs(config.accept_invalid_certs);
        if let Some(certs) = &config.root_cert {
            let mut roots = Vec::new();
            for der in certs {
                roots.push(
                    reqwest::Certificate::from_der(der).map_err(|e| ProxyError::Tls {
                        url: base.clone(),
                        detail: e.to_string(),
                    })?,
                );
            }
            builder = builder.tls_certs_only(roots);
        }
        let http = builder.build().map_err(|e| ProxyError::Tls {
            url: base.clone(),
            detail: e.to_string(),
        })?;
        Ok(Upstream { base, http })
    }
}

/// The pass-through, set up on its first request (the service starts without waiting for it).
#[derive(Default)]
pub struct KubeProxy {
    upstream: OnceCell<Result<Upstream, ProxyError>>,
}

/// `/k8s/{*path}` for any method.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let proxy = Arc::new(KubeProxy::default());
    Router::new().route(
        "/k8s/{*path}",
        any(move |req: Request| {
            let proxy = proxy.clone();
            async move {
                proxy
                    .forward(req)
                    .await
                    .unwrap_or_else(|e| e.into_response())
            }
        }),
    )
}

/// The part of `/k8s/<path>?<query>` sent to the API server, if it is an API path.
pub fn upstream_path(path_and_query: &str) -> Result<&str, ProxyError> {
    let rest = path_and_query
        .strip_prefix("/k8s")
        .ok_or(ProxyError::PathRefused)?;
    let path = rest.split('?').next().unwrap_or_default();
    let api = path == "/api"
        || path.starts_with("/api/")
        || path == "/apis"
        || path.starts_with("/apis/");
    // No dot segments or encoded slashes: the path the API server sees is the path asked.
    let lower = path.to_ascii_lowercase();
    if !api
        || path.split('/').any(|s| s == ".." || s == ".")
        || lower.contains("%2f")
        || lower.contains("%2e")
        || path.contains("//")
    {
        return Err(ProxyError::PathRefused);
    }
    Ok(rest)
}

/// The caller's headers that pass: credentials and content negotiation, nothing else.
fn forwarded_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE] {
        if let Some(v) = incoming.get(&name) {
            out.insert(name, v.clone());
        }
    }
    out
}

impl KubeProxy {
    async fn forward(&self, req: Request) -> Result<Response, ProxyError> {
        let (parts, body) = req.into_parts();
        if parts.headers.get(CONSOLE_HEADER).map(|v| v.as_bytes()) != Some(b"1") {
            return Err(ProxyError::NotFromConsole);
        }
        let path = upstream_path(
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or_default(),
        )?
        .to_string();
        if !matches!(
            parts.method,
            Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            return Err(ProxyError::PathRefused);
        }
        let body = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .map_err(|_| ProxyError::TooLarge)?;
        let upstream = self
            .upstream
            .get_or_init(Upstream::from_environment)
            .await
            .as_ref()
            .map_err(Clone::clone)?;
        let url = format!("{}{path}", upstream.base);
        let mut request = upstream
            .http
            .request(parts.method.clone(), &url)
            .headers(forwarded_headers(&parts.headers));
        if !body.is_empty() {
            request = request.body(body);
        }
        let answer = request.send().await.map_err(|e| ProxyError::Unreachable {
            url: upstream.base.clone(),
            detail: e.to_string(),
        })?;
        let mut response = Response::builder().status(answer.status().as_u16());
        let headers = response.headers_mut().expect("a fresh builder");
        if let Some(v) = answer.headers().get(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, v.clone());
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        super::console::harden(headers);
        // Streamed, so a watch passes through as it comes.
        Ok(response
            .body(Body::from_stream(answer.bytes_stream()))
            .expect("valid response parts"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_api_paths_pass_unchanged() {
        assert_eq!(
            upstream_path("/k8s/apis/imageimport.dev/v1alpha1/namespaces/a/imageimports?watch=1")
                .unwrap(),
            "/apis/imageimport.dev/v1alpha1/namespaces/a/imageimports?watch=1"
        );
        assert_eq!(
            upstream_path("/k8s/api/v1/namespaces").unwrap(),
            "/api/v1/namespaces"
        );
        for refused in [
            "/k8s/healthz",
            "/k8s/api/../metrics",
            "/k8s/apis/%2e%2e/x",
            "/k8s/api/v1%2Fsecrets",
            "/k8s//api/v1",
            "/k8sapi/v1",
            "/k8s/apisx",
        ] {
            assert!(upstream_path(refused).is_err(), "{refused} must be refused");
        }
    }

    #[test]
    fn only_credentials_and_content_headers_pass() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer user"),
        );
        h.insert(header::COOKIE, HeaderValue::from_static("session=1"));
        h.insert("impersonate-user", HeaderValue::from_static("admin"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let out = forwarded_headers(&h);
        assert_eq!(out.len(), 2);
        assert_eq!(out[header::AUTHORIZATION], "Bearer user");
        assert!(out.get("impersonate-user").is_none() && out.get(header::COOKIE).is_none());
    }
}
