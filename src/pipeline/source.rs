//! Where archive bytes come from: a file (seekable, or compressed as a whole), standard
//! input, an HTTP(S) URL, or an upload the worker pulls from the upload service. Nothing is
//! staged on disk or in memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::codec::Codec;
use super::url_guard;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Stdin,
    Url(url::Url),
    /// The bytes a client uploads into this ImageImport, pulled from the upload service.
    Upload(Box<UploadEndpoint>),
}

impl std::str::FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "-" {
            Ok(Location::Stdin)
        } else if s.starts_with("http://") || s.starts_with("https://") {
            url::Url::parse(s)
                .map(Location::Url)
                .map_err(|e| format!("invalid URL {s:?}: {e}"))
        } else {
            Ok(Location::File(PathBuf::from(s)))
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Stdin => f.write_str("<stdin>"),
            // Never print credentials or tokens that may sit in a URL.
            Location::Url(u) => {
                let mut shown = u.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                write!(f, "{shown}")
            }
            Location::Upload(u) => write!(f, "the upload into {}/{}", u.namespace, u.name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("cannot read {what}: {detail}")]
    Unreadable { what: String, detail: String },
    #[error("{what}: HTTP {status}")]
    Http { what: String, status: u16 },
    #[error("cannot reach {what}: {detail}")]
    Unreachable { what: String, detail: String },
    /// Refused by the URL policy (internal address, redirect downgrade, size limit).
    #[error("{0}")]
    Refused(String),
    /// The server's TLS certificate failed verification: retrying cannot change that.
    /// No byte of the upload arrived for longer than its expiry.
    #[error("{what}: no byte arrived for {} s (the upload expiry); a spec change starts a new upload", .after.as_secs())]
    UploadExpired {
        what: String,
        after: std::time::Duration,
    },
    #[error(
        "{what}: the server's TLS certificate is not trusted ({detail}): if a private CA signed it, give that CA's certificate (PEM) with --source-ca-file, or with spec.source.url.caBundleRef in an ImageImport"
    )]
    UntrustedCertificate { what: String, detail: String },
}

impl SourceError {
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Unreachable { .. } => true,
            SourceError::Http { status, .. } => *status == 429 || *status == 408 || *status >= 500,
            _ => false,
        }
    }
}

/// A source read once (a URL body) that remembers how it failed: the archive reader above it
/// sees only a broken stream (and may call it a truncated archive), but a download that broke
/// off is the source's fault, worth retrying, and one over the size limit is refused.
pub struct Watched<R> {
    inner: R,
    what: String,
    failure: Arc<Mutex<Option<SourceError>>>,
}

impl<R> Watched<R> {
    /// The reader, and where its failure (if any) is kept.
    pub fn new(inner: R, what: String) -> (Self, Arc<Mutex<Option<SourceError>>>) {
        let failure = Arc::new(Mutex::new(None));
        (
            Watched {
                inner,
                what,
                failure: failure.clone(),
            },
            failure,
        )
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            let refused = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<url_guard::UrlError>())
                .map(|u| u.to_string());
            let failure = match refused {
                Some(r) => SourceError::Refused(r),
                None => SourceError::Unreachable {
                    what: self.what.clone(),
                    detail: format!("the download broke off: {e}"),
                },
            };
            self.failure
                .lock()
                .expect("source failure lock")
                .get_or_insert(failure);
        })
    }
}

/// Running sha256 of the raw input bytes (for `--expect-sha256`).
#[derive(Clone, Default)]
pub struct RawHash(Arc<Mutex<(Sha256, u64)>>);

impl RawHash {
    pub fn digest(&self) -> String {
        let g = self.0.lock().expect("hash lock");
        format!("sha256:{}", hex::encode(g.0.clone().finalize()))
    }
    pub fn bytes(&self) -> u64 {
        self.0.lock().expect("hash lock").1
    }

    /// The hash's inner state and the bytes hashed (to continue it elsewhere: a checkpoint).
    pub fn state(&self) -> (Vec<u8>, u64) {
        use sha2::digest::common::hazmat::SerializableState;
        let g = self.0.lock().expect("hash lock");
        (g.0.serialize().to_vec(), g.1)
    }

    /// A hash continuing from [`RawHash::state`].
    pub fn from_state(state: &[u8], bytes: u64) -> Option<RawHash> {
        use sha2::digest::common::hazmat::SerializableState;
        let array = sha2::digest::common::array::Array::try_from(state).ok()?;
        let h = Sha256::deserialize(&array).ok()?;
        Some(RawHash(Arc::new(Mutex::new((h, bytes)))))
    }
}

pub struct Hashing<R> {
    pub(crate) inner: R,
    pub(crate) hash: RawHash,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut g = self.hash.0.lock().expect("hash lock");
        g.0.update(&buf[..n]);
        g.1 += n as u64;
        Ok(n)
    }
}

/// An opened input.
pub enum Opened {
    /// An uncompressed tar file: indexed by seeking, layers read in parallel.
    Seekable(File),
    /// Everything else: read once, front to back (whole-archive gzip/zstd removed).
    Stream(Box<dyn Read + Send>),
}

/// Options for URL sources.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    pub ca_file: Option<PathBuf>,
    /// Bearer token or `user:password` sent only to the URL's own host.
    pub authorization: Option<String>,
    /// Which addresses and hosts may be fetched from (SSRF protection).
    pub url_policy: super::url_guard::UrlPolicy,
}

pub fn open_file(path: &std::path::Path) -> Result<(File, Codec), SourceError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound(shown.clone()),
        _ => SourceError::Unreadable {
            what: shown.clone(),
            detail: e.to_string(),
        },
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(SourceError::Unreadable {
            what: shown,
            detail: "is a directory".into(),
        });
    }
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head).map_err(|e| SourceError::Unreadable {
        what: shown.clone(),
        detail: e.to_string(),
    })?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))
        .map_err(|e| SourceError::Unreadable {
            what: shown,
            detail: e.to_string(),
        })?;
    Ok((file, Codec::sniff(&head[..n])))
}

/// Wrap a raw stream: hash it when asked, and remove a whole-archive compression.
pub fn decompressing(
    raw: Box<dyn Read + Send>,
    hash: Option<RawHash>,
) -> io::Result<Box<dyn Read + Send>> {
    decompressing_as(raw, hash, None).map(|(r, _)| r)
}

/// [`decompressing`], with the codec found (or given as `known`: a stream taken up in the
/// middle of an archive has no magic number to sniff).
pub fn decompressing_as(
    raw: Box<dyn Read + Send>,
    hash: Option<RawHash>,
    known: Option<Codec>,
) -> io::Result<(Box<dyn Read + Send>, Codec)> {
    let mut buffered = BufReader::with_capacity(256 << 10, raw);
    let codec = match known {
        Some(c) => c,
        None => Codec::sniff(buffered.fill_buf()?),
    };
    // The hash sees what the reader above takes in, not what the buffer read ahead: at a
    // member boundary of a plain tar it covers exactly the bytes before it (a checkpoint).
    let hashed = |r: Box<dyn Read + Send>| -> Box<dyn Read + Send> {
        match hash {
            Some(h) => Box::new(Hashing { inner: r, hash: h }),
            None => r,
        }
    };
    Ok(match codec {
        Codec::None => (hashed(Box::new(buffered)), codec),
        Codec::Gzip => (
            Box::new(flate2::bufread::MultiGzDecoder::new(BufReader::new(
                hashed(Box::new(buffered)),
            ))),
            codec,
        ),
        Codec::Zstd => (
            Box::new(zstd::stream::read::Decoder::new(hashed(Box::new(
                buffered,
            )))?),
            codec,
        ),
    })
}

/// Start an HTTP(S) download and return its body as a blocking reader (call from a
/// blocking thread inside a Tokio runtime).
/// The body of `url` as a reader, and its length when the server announces one.
pub async fn open_url(
    url: &url::Url,
    opts: &HttpOptions,
) -> Result<(Box<dyn Read + Send>, Option<u64>), SourceError> {
    let shown = Location::Url(url.clone()).to_string();
    // Literal addresses are checked here; host names by the guarded resolver at connect
    // time, on every redirect hop too (see url_guard).
    url_guard::check_url(url, &opts.url_policy).map_err(|e| SourceError::Refused(e.to_string()))?;
    let ca = match &opts.ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| SourceError::Unreadable {
                what: ca.display().to_string(),
                detail: e.to_string(),
            })?;
            Some(reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SourceError::Unreadable {
                    what: ca.display().to_string(),
                    detail: e.to_string(),
                }
            })?)
        }
        None => None,
    };
    let policy = std::sync::Arc::new(opts.url_policy.clone());
    let client = url_guard::client(policy.clone(), ca).map_err(|e| SourceError::Unreachable {
        what: shown.clone(),
        detail: url_guard::describe(&e),
    })?;
    let mut req = client.get(url.clone());
    if let Some(a) = &opts.authorization {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| match url_guard::guard_error(&e) {
            Some(g) => SourceError::Refused(g.to_string()),
            None => match crate::registry::error::certificate_problem(&e) {
                Some(detail) => SourceError::UntrustedCertificate {
                    what: shown.clone(),
                    detail,
                },
                None => SourceError::Unreachable {
                    what: shown.clone(),
                    detail: url_guard::describe(&e),
                },
            },
        })?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(SourceError::NotFound(shown));
    }
    if !status.is_success() {
        return Err(SourceError::Http {
            what: shown,
            status: status.as_u16(),
        });
    }
    let length = resp.content_length();
    let body =
        url_guard::body_reader(resp, &policy).map_err(|e| SourceError::Refused(e.to_string()))?;
    Ok((body, length))
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// sha256 of a whole file (for `--expect-sha256` on seekable inputs, checked before any work).
pub fn hash_file(path: &std::path::Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Where a worker pulls an upload from (see `src/upload/relay.rs` for the other side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEndpoint {
    /// The upload service's in-cluster base URL.
    pub service: url::Url,
    pub namespace: String,
    pub name: String,
    /// This worker's Job: the upload service hands the bytes only to the current attempt.
    pub job: String,
    /// The projected ServiceAccount token for the upload service (re-read: it rotates).
    pub token_file: PathBuf,
    /// Give up when no byte arrives for this long.
    pub expiry: std::time::Duration,
    pub max_bytes: Option<u64>,
}

impl UploadEndpoint {
    pub(crate) fn url(&self, what: &str) -> Result<url::Url, SourceError> {
        let mut u = self.service.clone();
        u.path_segments_mut()
            .map_err(|_| SourceError::Refused(format!("{} cannot be a base URL", self.service)))?
            .pop_if_empty()
            .extend([
                "internal",
                "v1",
                what,
                self.namespace.as_str(),
                self.name.as_str(),
            ]);
        u.query_pairs_mut().append_pair("job", &self.job);
        Ok(u)
    }

    pub(crate) fn token(&self) -> Result<String, SourceError> {
        std::fs::read_to_string(&self.token_file)
            .map(|t| t.trim().to_string())
            .map_err(|e| SourceError::Unreadable {
                what: self.token_file.display().to_string(),
                detail: e.to_string(),
            })
    }
}

/// How a pull went.
enum Pulled {
    /// Bytes follow: the answer's body, read frame by frame as the pipeline takes them in.
    Data(reqwest::Response),
    Nothing,
    Complete,
}

/// The uploaded archive as a blocking reader (used on a blocking thread inside a Tokio
/// runtime). Each read that finds its buffer empty asks the upload service for what follows
/// the bytes handed out so far, so that offset is exactly what the import has taken in: the
/// service reports it to the client, which resumes there after an interruption.
///
/// A pull's answer is read frame by frame (the frames the service relays from the client's
/// request), not gathered first: the pipeline starts on the first frame while the rest
/// arrives, memory is a frame or two rather than a 4 MiB buffer (8 MiB while it grew), and
/// the bytes are copied once less.
pub struct UploadReader {
    ep: UploadEndpoint,
    client: reqwest::Client,
    rt: tokio::runtime::Handle,
    offset: u64,
    buf: bytes::Bytes,
    /// The rest of the pull answer `buf` came from.
    body: Option<reqwest::Response>,
    last_byte: std::time::Instant,
    done: bool,
    failure: UploadFailure,
}

/// Where an upload reader keeps the failure that ended it (see [`Watched`]).
pub type UploadFailure = Arc<Mutex<Option<SourceError>>>;

impl UploadReader {
    /// The reader of the upload from byte `offset` on (0, or a checkpoint's), and where its
    /// failure (if any) is kept (see [`Watched`]).
    pub fn new(ep: UploadEndpoint, offset: u64) -> Result<(Self, UploadFailure), SourceError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            // Also bounds reading an answer, which the pipeline paces: one stalled longer
            // (its registry) is broken off and pulled again from what it took in.
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| SourceError::Unreachable {
                what: ep.service.to_string(),
                detail: e.to_string(),
            })?;
        let failure = Arc::new(Mutex::new(None));
        Ok((
            UploadReader {
                ep,
                client,
                rt: tokio::runtime::Handle::current(),
                offset,
                buf: bytes::Bytes::new(),
                body: None,
                last_byte: std::time::Instant::now(),
                done: false,
                failure: failure.clone(),
            },
            failure,
        ))
    }

    fn what(&self) -> String {
        Location::Upload(Box::new(self.ep.clone())).to_string()
    }

    async fn pull(&self) -> Result<Pulled, SourceError> {
        let mut url = self.ep.url("pull")?;
        url.query_pairs_mut()
            .append_pair("offset", &self.offset.to_string())
            .append_pair("expiry", &self.ep.expiry.as_secs().to_string());
        let resp = self
            .client
            .get(url)
            .bearer_auth(self.ep.token()?)
            .send()
            .await
            .map_err(|e| SourceError::Unreachable {
                what: self.what(),
                detail: format!("the upload service: {e}"),
            })?;
        let status = resp.status().as_u16();
        match status {
            200 if resp.headers().contains_key("upload-complete") => Ok(Pulled::Complete),
            200 => Ok(Pulled::Data(resp)),
            204 => Ok(Pulled::Nothing),
            _ => {
                let text = resp.text().await.unwrap_or_default();
                let text = text.trim().chars().take(512).collect::<String>();
                Err(match status {
                    // Terminated by the client: the next attempt waits for a new upload.
                    410 => SourceError::Unreachable {
                        what: self.what(),
                        detail: text,
                    },
                    401 | 403 | 404 => SourceError::Refused(format!(
                        "{}: the upload service refused the worker (HTTP {status}): {text}",
                        self.what()
                    )),
                    _ => SourceError::Http {
                        what: format!("{}: the upload service ({text})", self.what()),
                        status,
                    },
                })
            }
        }
    }

    /// The next bytes, waiting out an idle client up to the expiry and an unreachable upload
    /// service (restarting) the same way.
    fn fill(&mut self) -> Result<(), SourceError> {
        let mut backoff = std::time::Duration::from_millis(200);
        loop {
            let expired = self.last_byte.elapsed() > self.ep.expiry;
            let pulled = match self.body.as_mut() {
                Some(body) => match self.rt.block_on(body.chunk()) {
                    Ok(Some(frame)) => {
                        if !frame.is_empty() {
                            self.last_byte = std::time::Instant::now();
                        }
                        self.buf = frame;
                        return Ok(());
                    }
                    // This answer is all read: the next pull says so (its offset).
                    Ok(None) => {
                        self.body = None;
                        continue;
                    }
                    // Broken off: the next pull, at what was taken in, has the service
                    // start over there (the client resends the rest).
                    Err(e) => {
                        self.body = None;
                        Err(SourceError::Unreachable {
                            what: self.what(),
                            detail: format!("the upload service: {e}"),
                        })
                    }
                },
                None => self.rt.block_on(self.pull()),
            };
            match pulled {
                Ok(Pulled::Data(body)) => self.body = Some(body),
                Ok(Pulled::Complete) => {
                    self.done = true;
                    return Ok(());
                }
                Ok(_) if expired => {
                    return Err(SourceError::UploadExpired {
                        what: self.what(),
                        after: self.ep.expiry,
                    });
                }
                Ok(_) => backoff = std::time::Duration::from_millis(200),
                Err(e) if e.is_transient() && !expired => {
                    tracing::warn!(error = %e, "pulling the upload; trying again");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for UploadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                let shown = e.to_string();
                self.failure
                    .lock()
                    .expect("source failure lock")
                    .get_or_insert(e);
                return Err(io::Error::other(shown));
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        self.offset += n as u64;
        if let Some(max) = self.ep.max_bytes
            && self.offset > max
        {
            let e = SourceError::Refused(format!(
                "{}: larger than source.upload.maxBytes ({max})",
                self.what()
            ));
            let shown = e.to_string();
            self.failure
                .lock()
                .expect("source failure lock")
                .get_or_insert(e);
            return Err(io::Error::other(shown));
        }
        Ok(n)
    }
}

/// Tell the upload service how the import ended, so a client still sending hears it
/// (best effort: the controller reports it in the status anyway).
pub async fn upload_finished(ep: &UploadEndpoint, failure: Option<(&str, String)>) {
    let Ok(url) = ep.url("done") else { return };
    let Ok(token) = ep.token() else { return };
    let body = match failure {
        None => serde_json::json!({"succeeded": true}),
        Some((reason, message)) => {
            serde_json::json!({"succeeded": false, "reason": reason, "message": message})
        }
    };
    let sent = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not tell the upload service how the import ended");
    }
}
