//! `kubectl imageimport ui`: the upload service's web console served on 127.0.0.1, every request
//! forwarded to the upload service with the kubeconfig's bearer token, so the page signs in as
//! the kubeconfig's user (the console's "authenticating proxy" mode) and nobody copies a token.
//!
//! A local port that adds credentials to what it forwards must not serve anyone else: the
//! address printed carries a random key that becomes an HttpOnly, SameSite=Strict cookie (other
//! sites' pages cannot make the browser send it), and requests naming another Host are refused
//! (DNS rebinding). The upload service's own checks (the console's pass-through wants a header
//! no cross-site form can set, tus wants `Tus-Resumable`) stay in force behind it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use super::{Failure, bearer_token};

#[derive(clap::Args)]
pub struct UiArgs {
    /// The upload service's base URL (what users reach it at: the chart's `upload.url`).
    /// Default: the base of an ImageImport's `status.upload.url` in the namespace when it
    /// answers from here, else a port-forward to the upload service's Pod.
    #[arg(long, env = "IMAGEIMPORT_UPLOAD_URL")]
    upload_url: Option<String>,
    /// The namespace whose ImageImports tell the upload URL (default: the context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Where the upload service's Pods are, for the port-forward (the chart's release namespace).
    #[arg(long, default_value = "imageimport-system")]
    upload_namespace: String,
    #[arg(long)]
    context: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Local port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Print the address only; do not open a browser.
    #[arg(long)]
    no_browser: bool,
    /// PEM file of the CA that signed an https upload service's certificate (default: the
    /// system's roots).
    #[arg(long)]
    certificate_authority: Option<PathBuf>,
}

/// How long a fetched token is used before the kubeconfig is asked again (exec plugins hand
/// out tokens that expire; asking often keeps a long session signed in).
const TOKEN_REUSE: Duration = Duration::from_secs(120);

struct Proxy {
    upstream: url::Url,
    /// `http://127.0.0.1:PORT`, what `Location` headers pointing upstream are rewritten to.
    local: String,
    hosts: [String; 2],
    key: String,
    cookie: String,
    client: reqwest::Client,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    token: Mutex<Option<(String, Instant)>>,
}

/// The base URL of an upload service that answers from here (`--upload-url` as given).
async fn find_upload_service(args: &UiArgs) -> Result<super::endpoint::Endpoint, Failure> {
    if let Some(u) = &args.upload_url {
        return Ok(super::endpoint::Endpoint::given(u.trim_end_matches('/')));
    }
    let client = super::client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    // Any import's status.upload.url names the base users are given; reading none is fine.
    let imports: kube::Api<imageimport::api::ImageImport> =
        kube::Api::namespaced(client.clone(), &ns);
    let base = imports.list(&Default::default()).await.ok().and_then(|l| {
        l.items.into_iter().find_map(|i| {
            i.status
                .and_then(|s| s.upload)
                .and_then(|u| u.url)
                .map(|u| super::endpoint::base_of(&u).to_string())
        })
    });
    let ep = super::endpoint::resolve(&client, base.as_deref(), &args.upload_namespace).await?;
    if let Some(pod) = &ep.forwarded_to {
        eprintln!("kubectl-imageimport: the upload service through a port-forward to {pod}");
    }
    Ok(ep)
}

pub async fn run(args: UiArgs) -> Result<(), Failure> {
    let reached = find_upload_service(&args).await?;
    let upstream = url::Url::parse(&reached.base)
        .map_err(|e| Failure::Usage(format!("upload URL {}: {e}", reached.base)))?;
    if !matches!(upstream.scheme(), "http" | "https") || upstream.host().is_none() {
        return Err(Failure::Usage(format!(
            "--upload-url {upstream}: not an http(s) address"
        )));
    }
    // Fail now, not on the first page load, when the kubeconfig has no token to forward.
    let token = bearer_token(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(15));
    if let Some(ca) = &args.certificate_authority {
        let pem = std::fs::read(ca).map_err(|e| {
            Failure::Usage(format!("--certificate-authority {}: {e}", ca.display()))
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            Failure::Usage(format!("--certificate-authority {}: {e}", ca.display()))
        })?;
        client = client.add_root_certificate(cert);
    }
    let client = client
        .build()
        .map_err(|e| Failure::Usage(format!("HTTP client: {e}")))?;

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .map_err(|e| Failure::Usage(format!("127.0.0.1:{}: {e}", args.port)))?;
    let port = listener
        .local_addr()
        .map_err(|e| Failure::Usage(e.to_string()))?
        .port();
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| Failure::Usage(format!("random key: {e}")))?;
    let key = hex::encode(key);
    let local = format!("http://127.0.0.1:{port}");
    let proxy = Arc::new(Proxy {
        upstream,
        local: local.clone(),
        hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
        key: key.clone(),
        // Cookies are shared by every port of a host: the port in the name keeps two sessions apart.
        cookie: format!("imageimport_ui_{port}"),
        client,
        kubeconfig: args.kubeconfig,
        context: args.context,
        token: Mutex::new(Some((token, Instant::now()))),
    });
    let address = format!("{local}/?key={key}");
    println!("{address}");
    eprintln!(
        "kubectl-imageimport: the console of {} as your kubeconfig's user at the address above \
         (only this machine; Ctrl-C stops)",
        proxy.upstream
    );
    if !args.no_browser
        && let Err(e) = webbrowser::open(&address)
    {
        eprintln!("kubectl-imageimport: no browser opened ({e}): open the address yourself");
    }
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| Failure::Usage(format!("serving the console: {e}")))?;
    drop(reached);
    Ok(())
}

impl Proxy {
    async fn token(&self) -> Result<String, Failure> {
        let mut cached = self.token.lock().await;
        if let Some((t, at)) = cached.as_ref()
            && at.elapsed() < TOKEN_REUSE
        {
            return Ok(t.clone());
        }
        let t = bearer_token(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    fn has_cookie(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| name == self.cookie && self.key_matches(value))
    }

    fn key_matches(&self, value: &str) -> bool {
        value.len() == self.key.len() && bool::from(value.as_bytes().ct_eq(self.key.as_bytes()))
    }

    /// An upstream `Location` names this local address instead (tus answers a creation with
    /// the upload's absolute URL; the page must keep talking to this origin).
    fn local_location(&self, location: &str) -> String {
        let base = self.upstream.as_str().trim_end_matches('/');
        match location.strip_prefix(base) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                format!("{}{rest}", self.local)
            }
            _ => location.to_string(),
        }
    }
}

fn refuse(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and what this proxy sets itself.
fn forwardable(name: &header::HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "authorization"
            | "cookie"
    )
}

async fn forward(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !proxy.hosts.iter().any(|h| h == host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "this console answers only at the 127.0.0.1 address kubectl imageimport ui printed",
        );
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    // The printed address: its key becomes the session cookie, and the key leaves the URL.
    if let Some(key) = req
        .uri()
        .query()
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key"))
        .map(|(_, v)| v.into_owned())
    {
        if !proxy.key_matches(&key) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "wrong key: open the address kubectl imageimport ui printed",
            );
        }
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            proxy.cookie, proxy.key
        );
        return Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, req.uri().path())
            .header(header::SET_COOKIE, cookie)
            .body(Body::empty())
            .expect("valid response");
    }
    if !proxy.has_cookie(req.headers()) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the address kubectl imageimport ui printed (it carries a key)",
        );
    }
    let token = match proxy.token().await {
        Ok(t) => t,
        Err(e) => return refuse(StatusCode::BAD_GATEWAY, &format!("kubeconfig: {e}")),
    };
    let target = format!(
        "{}{path_and_query}",
        proxy.upstream.as_str().trim_end_matches('/')
    );
    let (parts, body) = req.into_parts();
    let mut out = proxy
        .client
        .request(parts.method.clone(), &target)
        .bearer_auth(token);
    for (name, value) in &parts.headers {
        if forwardable(name) {
            out = out.header(name, value);
        }
    }
    // A body only when the browser sent one (GET and HEAD stay without; tus PATCH streams).
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "the upload service at {} did not answer: {e}",
                    proxy.upstream
                ),
            );
        }
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if !forwardable(name) || name == header::SET_COOKIE {
            continue;
        }
        if name == header::LOCATION
            && let Ok(v) = value.to_str()
            && let Ok(v) = HeaderValue::from_str(&proxy.local_location(v))
        {
            builder = builder.header(name, v);
            continue;
        }
        builder = builder.header(name, value);
    }
    builder
        .body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| refuse(StatusCode::BAD_GATEWAY, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(upstream: &str) -> Proxy {
        Proxy {
            upstream: url::Url::parse(upstream).unwrap(),
            local: "http://127.0.0.1:4000".into(),
            hosts: ["127.0.0.1:4000".into(), "localhost:4000".into()],
            key: "ab".repeat(32),
            cookie: "imageimport_ui_4000".into(),
            client: reqwest::Client::new(),
            kubeconfig: None,
            context: None,
            token: Mutex::new(None),
        }
    }

    #[test]
    fn upstream_locations_point_here_and_others_stay() {
        let p = proxy("https://uploads.example:8443");
        assert_eq!(
            p.local_location("https://uploads.example:8443/uploads/shop/web/abc"),
            "http://127.0.0.1:4000/uploads/shop/web/abc"
        );
        assert_eq!(p.local_location("/uploads/x"), "/uploads/x");
        // A longer host that merely starts like the upstream is not the upstream.
        assert_eq!(
            p.local_location("https://uploads.example:84430/x"),
            "https://uploads.example:84430/x"
        );
    }

    #[test]
    fn only_the_session_cookie_with_the_key_signs_in() {
        let p = proxy("http://up:80");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("other=1"));
        assert!(!p.has_cookie(&h));
        let good = format!("a=b; imageimport_ui_4000={}", "ab".repeat(32));
        h.insert(header::COOKIE, HeaderValue::from_str(&good).unwrap());
        assert!(p.has_cookie(&h));
        let wrong_port = format!("imageimport_ui_4001={}", "ab".repeat(32));
        h.insert(header::COOKIE, HeaderValue::from_str(&wrong_port).unwrap());
        assert!(!p.has_cookie(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("imageimport_ui_4000=abab"),
        );
        assert!(!p.has_cookie(&h));
    }
}
