//! A fault-injecting HTTP proxy in front of the real registry, as a flaky load balancer or
//! network would be: it forwards every request as it is, except the ones a test tells it to
//! break. The registry behind it stays real; what it stores and answers is its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, Request, Response, StatusCode, header};
use futures::StreamExt;

/// A fault for the n-th PATCH (1-based, counted over the proxy's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer 503 without forwarding anything (an overloaded ingress).
    Refuse503,
    /// Forward only this many bytes of the body to the registry, then cut the request and
    /// answer 502 (a connection lost halfway).
    CutAfter(u64),
    /// Forward the whole request, then answer 502 instead of the registry's answer (the
    /// registry did it; the client cannot know).
    LoseAnswer,
    /// Answer 401 with a Bearer challenge naming this token realm (a hostile registry).
    Challenge(&'static str),
    /// Answer 307 to this location (a hostile registry's blob "storage").
    Redirect(&'static str),
    /// Answer 200 with a body that never ends and no Content-Length (a hostile registry).
    EndlessBody,
}

/// The kinds of request a fault can be aimed at, counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    /// `PATCH` of an upload: a segment of a blob.
    Patch,
    /// `PUT` on an upload: the commit of a blob.
    Commit,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Request body bytes forwarded to the registry.
    pub forwarded: u64,
}

struct State {
    upstream: String,
    front: String,
    faults: Mutex<Vec<(Aim, usize, Fault)>>,
    /// Every request with this method whose path holds this text gets the fault.
    matching: Mutex<Vec<(String, String, Fault)>>,
    /// Start a plain upload where a cross-repository mount is asked for.
    no_mounts: std::sync::atomic::AtomicBool,
    patches: AtomicUsize,
    commits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    http: reqwest::Client,
}

pub struct FaultyProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultyProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultyProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            front: addr.to_string(),
            faults: Mutex::new(Vec::new()),
            matching: Mutex::new(Vec::new()),
            no_mounts: std::sync::atomic::AtomicBool::new(false),
            patches: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let s = state.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let s = s.clone();
            async move { forward(s, req).await }
        });
        runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FaultyProxy {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// `host:port` of the proxy, to use as the registry in a target.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Break the `nth` PATCH (1-based) with `fault`.
    pub fn break_patch(&self, nth: usize, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push((Aim::Patch, nth, fault));
    }

    /// Break the `nth` blob commit (`PUT` on an upload, 1-based) with `fault`.
    pub fn break_commit(&self, nth: usize, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push((Aim::Commit, nth, fault));
    }

    /// Break every `method` request whose path (with its query) contains `path_part`.
    pub fn break_every(&self, method: &str, path_part: &str, fault: Fault) {
        self.state
            .matching
            .lock()
            .unwrap()
            .push((method.into(), path_part.into(), fault));
    }

    /// Behave like a registry without cross-repository mounts: a mount request starts a plain
    /// upload (202 and a Location) instead, as the distribution spec allows.
    pub fn refuse_mounts(&self) {
        self.state.no_mounts.store(true, Ordering::SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "host",
];

fn end_to_end(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &header::HeaderValue)> {
    headers
        .iter()
        .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
}

async fn forward(s: Arc<State>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let forward_proxied = req.uri().authority().is_some();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let aimed = if method == axum::http::Method::PATCH {
        Some((Aim::Patch, &s.patches))
    } else if method == axum::http::Method::PUT && path.contains("/blobs/uploads/") {
        Some((Aim::Commit, &s.commits))
    } else {
        None
    };
    let fault = aimed.and_then(|(aim, counter)| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        s.faults
            .lock()
            .unwrap()
            .iter()
            .find(|(a, nth, _)| *a == aim && *nth == n)
            .map(|(_, _, f)| *f)
    });
    let fault = fault.or_else(|| {
        s.matching
            .lock()
            .unwrap()
            .iter()
            .find(|(m, part, _)| *m == method.as_str() && path.contains(part.as_str()))
            .map(|(_, _, f)| *f)
    });
    let record = |status: u16, forwarded: u64| {
        s.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: path.clone(),
            status,
            forwarded,
        });
    };
    if fault == Some(Fault::Refuse503) {
        record(503, 0);
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::RETRY_AFTER, "0")
            .header(header::CONNECTION, "close")
            .body(Body::empty())
            .unwrap();
    }

    match fault {
        Some(Fault::Challenge(realm)) => {
            record(401, 0);
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{realm}\",service=\"hostile\""),
                )
                .body(Body::empty())
                .unwrap();
        }
        Some(Fault::Redirect(location)) => {
            record(307, 0);
            return Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, location)
                .body(Body::empty())
                .unwrap();
        }
        Some(Fault::EndlessBody) => {
            record(200, 0);
            let chunk = bytes::Bytes::from(vec![b'{'; 64 << 10]);
            let endless = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
            return Response::builder()
                .status(StatusCode::OK)
                .body(Body::from_stream(endless))
                .unwrap();
        }
        _ => {}
    }

    let upstream_path = if s.no_mounts.load(Ordering::SeqCst)
        && method == axum::http::Method::POST
        && path.contains("mount=")
    {
        path.split('?').next().unwrap_or_default().to_string()
    } else {
        path.clone()
    };
    let mut out = s
        .http
        .request(method.clone(), format!("{}{}", s.upstream, upstream_path));
    // The registry builds its Location URLs from these: keep the client on the proxy. Not when
    // the client uses it as its HTTP proxy (an absolute URI): it then asks for the registry's
    // own URLs.
    if !forward_proxied {
        out = out
            .header("X-Forwarded-Host", &s.front)
            .header("X-Forwarded-Proto", "http");
    }
    for (n, v) in end_to_end(req.headers()) {
        out = out.header(n, v);
    }
    let forwarded = Arc::new(AtomicU64::new(0));
    let counted = forwarded.clone();
    let limit = match fault {
        Some(Fault::CutAfter(n)) => n,
        _ => u64::MAX,
    };
    let body = req
        .into_body()
        .into_data_stream()
        .scan(0u64, move |sent, chunk| {
            let item = match chunk {
                Err(e) => Some(Err(std::io::Error::other(e))),
                Ok(mut b) => {
                    if *sent >= limit {
                        Some(Err(std::io::Error::other(
                            "connection cut by the test proxy",
                        )))
                    } else {
                        if *sent + b.len() as u64 > limit {
                            b.truncate((limit - *sent) as usize);
                        }
                        *sent += b.len() as u64;
                        counted.fetch_add(b.len() as u64, Ordering::SeqCst);
                        Some(Ok(b))
                    }
                }
            };
            futures::future::ready(item)
        });
    out = out.body(reqwest::Body::wrap_stream(body));
    let resp = match out.send().await {
        Ok(r) if fault.is_none() => r,
        Ok(_) | Err(_) => {
            // A cut request (the registry kept what reached it) or a lost answer (the registry
            // did all of it): the client hears 502.
            record(502, forwarded.load(Ordering::SeqCst));
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header(header::CONNECTION, "close")
                .body(Body::empty())
                .unwrap();
        }
    };
    record(resp.status().as_u16(), forwarded.load(Ordering::SeqCst));
    let mut back = Response::builder().status(resp.status().as_u16());
    for (n, v) in end_to_end(resp.headers()) {
        back = back.header(n.as_str(), v.as_bytes());
    }
    back.body(Body::from_stream(resp.bytes_stream())).unwrap()
}
