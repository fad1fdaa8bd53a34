//! Blob uploads that survive a broken connection.
//!
//! A blob goes up in segments: each PATCH streams at most `segment` bytes (chunked transfer
//! encoding, no buffering), and every accepted segment is a point the upload can continue from.
//! When a request fails, the uploader asks the registry where the upload stands (`GET` on its
//! location answers `Range: 0-N`) and sends from there, instead of starting over. The bytes from
//! that offset come from the source replayed (a seekable file, skipping what the registry
//! already holds) or, for a source read once (a pipe, an HTTP body), from the unacknowledged
//! segment kept in memory. A registry that dropped the upload (distribution cancels one whose
//! stored size disagrees with its state token, as after a PATCH cut halfway) gets a new one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RANGE};
use sha2::{Digest as _, Sha256};
use tokio::sync::Mutex;

use super::client::{Registry, status_error};
use super::error::RegistryError;

/// The most a source read once keeps in memory for sending again (its upload requests are
/// no bigger than this).
pub const MAX_KEPT_SEGMENT: u64 = 16 << 20;

/// How a failed upload gets back the bytes it must send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `make_stream` can produce the same bytes again from the start.
    FromSource,
    /// The source is read once: keep the unacknowledged segment in memory.
    FromMemory,
}

/// The blob's bytes as the uploader consumes them: offsets, hash, and what can be sent again.
struct Feed<S> {
    stream: Option<S>,
    /// Blob offset of the next byte handed to a request body.
    offset: u64,
    /// Bytes taken from `stream` (and hashed): `offset` + the length of `ahead`.
    produced: u64,
    hasher: Sha256,
    /// Bytes already taken from the stream, at offsets `offset..produced`, to hand out first.
    ahead: VecDeque<Bytes>,
    /// Bytes to drop from a replayed stream before handing any out (the registry has them).
    skip: u64,
    /// With [`Replay::FromMemory`]: bytes `kept_from..produced`, not yet acknowledged.
    kept: Option<VecDeque<Bytes>>,
    kept_from: u64,
    /// The source failed: its error, never retried here.
    failed: Option<String>,
    ended: bool,
    /// Bumped whenever a request body is abandoned, so a stale body can never pull bytes.
    generation: u64,
}

impl<S> Feed<S>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    fn new(stream: S, keep: bool) -> Self {
        Feed {
            stream: Some(stream),
            offset: 0,
            produced: 0,
            hasher: Sha256::new(),
            ahead: VecDeque::new(),
            skip: 0,
            kept: keep.then(VecDeque::new),
            kept_from: 0,
            failed: None,
            ended: false,
            generation: 0,
        }
    }

    /// The next piece of at most `limit` bytes, or None at the end of the blob.
    async fn next(&mut self, limit: u64) -> Option<std::io::Result<Bytes>> {
        let mut piece = match self.ahead.pop_front() {
            Some(b) => b,
            None => match self.pull().await? {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            },
        };
        if piece.len() as u64 > limit {
            let rest = piece.split_off(limit as usize);
            self.ahead.push_front(rest);
        }
        self.offset += piece.len() as u64;
        Some(Ok(piece))
    }

    /// True when more bytes follow (pulling one piece ahead to know).
    async fn has_more(&mut self) -> Result<bool, String> {
        if !self.ahead.is_empty() {
            return Ok(true);
        }
        match self.pull().await {
            None => Ok(false),
            Some(Ok(b)) => {
                self.ahead.push_back(b);
                Ok(true)
            }
            Some(Err(e)) => Err(e.to_string()),
        }
    }

    /// New bytes from the stream: hashed, kept if needed, and past any bytes to skip.
    async fn pull(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.ended {
                return None;
            }
            let stream = self.stream.as_mut()?;
            match stream.next().await {
                None => {
                    self.ended = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.failed = Some(e.to_string());
                    self.ended = true;
                    return Some(Err(e));
                }
                Some(Ok(mut b)) => {
                    if b.is_empty() {
                        continue;
                    }
                    self.hasher.update(&b);
                    self.produced += b.len() as u64;
                    if self.skip > 0 {
                        let drop = self.skip.min(b.len() as u64);
                        self.skip -= drop;
                        b = b.split_off(drop as usize);
                        if b.is_empty() {
                            continue;
                        }
                    }
                    if let Some(kept) = &mut self.kept {
                        kept.push_back(b.clone());
                    }
                    return Some(Ok(b));
                }
            }
        }
    }

    /// The registry holds bytes `0..acked`: memory kept for them can go.
    fn acknowledge(&mut self, acked: u64) {
        if let Some(kept) = &mut self.kept {
            while let Some(front) = kept.front_mut() {
                let len = front.len() as u64;
                if self.kept_from + len <= acked {
                    kept.pop_front();
                    self.kept_from += len;
                } else {
                    if acked > self.kept_from {
                        let cut = (acked - self.kept_from) as usize;
                        *front = front.split_off(cut);
                        self.kept_from = acked;
                    }
                    break;
                }
            }
        }
    }

    /// Continue from blob offset `at` with the bytes in hand. False when they are gone (the
    /// source must be replayed from its start).
    fn rewind(&mut self, at: u64) -> bool {
        self.generation += 1;
        if at > self.produced {
            return false;
        }
        if at >= self.offset {
            // The registry has some of the bytes we handed out: skip them in `ahead`.
            let mut drop = at - self.offset;
            while drop > 0 {
                let Some(front) = self.ahead.front_mut() else {
                    return false;
                };
                let len = front.len() as u64;
                if len <= drop {
                    self.ahead.pop_front();
                    drop -= len;
                } else {
                    *front = front.split_off(drop as usize);
                    drop = 0;
                }
            }
            self.offset = at;
            return true;
        }
        let Some(kept) = &self.kept else {
            return false;
        };
        if at < self.kept_from {
            return false;
        }
        // Hand out again the kept bytes from `at` up to what was produced.
        let mut ahead = VecDeque::new();
        let mut pos = self.kept_from;
        for b in kept {
            let end = pos + b.len() as u64;
            if end > at {
                let from = at.saturating_sub(pos) as usize;
                ahead.push_back(b.slice(from..));
            }
            pos = end;
        }
        self.ahead = ahead;
        self.offset = at;
        true
    }

    /// Start over from a fresh copy of the source, handing out bytes from offset `at` on.
    fn replay(&mut self, stream: S, at: u64) {
        self.generation += 1;
        self.stream = Some(stream);
        self.hasher = Sha256::new();
        self.offset = at;
        self.produced = 0;
        self.skip = at;
        self.ahead.clear();
        if let Some(kept) = &mut self.kept {
            kept.clear();
        }
        self.kept_from = at;
        self.failed = None;
        self.ended = false;
    }
}

/// How long one upload reuses its Authorization header: bearer tokens are short-lived, and
/// fetching one costs the registry a round trip or two, once per blob rather than per request.
const AUTH_REUSE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct AuthCache {
    value: Option<HeaderValue>,
    fetched: Option<std::time::Instant>,
}

impl Registry {
    /// The upload's Authorization header, fetched again after [`AUTH_REUSE`] or a failure.
    async fn upload_auth(
        &self,
        repo: &str,
        cache: &mut AuthCache,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        if cache.fetched.is_none_or(|t| t.elapsed() > AUTH_REUSE) {
            cache.value = self.authorization(repo).await?;
            cache.fetched = Some(std::time::Instant::now());
        }
        Ok(cache.value.clone())
    }
}

/// What one request of an upload achieved.
enum Step {
    /// The blob is committed under this digest and size.
    Done(String, u64),
    /// A session started.
    Started,
    /// A segment was accepted: the registry holds this many bytes.
    Accepted(u64),
    /// A segment was accepted, but the registry holds a different amount than was sent.
    Disagreed { acked: u64 },
}

/// Point the feed at blob offset `at`: with the bytes in hand, or from the source replayed.
fn continue_at<S, F>(f: &mut Feed<S>, at: u64, make_stream: &mut F) -> Result<(), RegistryError>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
    F: FnMut() -> Option<S>,
{
    if f.rewind(at) {
        if at > 0 {
            tracing::info!(
                offset = at,
                "blob upload continues where the registry stopped"
            );
        }
        return Ok(());
    }
    let stream = make_stream().ok_or_else(|| RegistryError::NotReplayable {
        operation: "blob upload".into(),
    })?;
    if at > 0 {
        tracing::info!(
            offset = at,
            "blob upload continues where the registry stopped (source replayed)"
        );
    }
    f.replay(stream, at);
    Ok(())
}

/// An upload session on the registry.
struct Session {
    location: reqwest::Url,
}

/// What the registry says about an upload it was asked about.
enum Standing {
    /// It holds bytes `0..offset`; continue at `location`.
    At { offset: u64, location: reqwest::Url },
    /// It no longer knows the upload.
    Gone,
}

impl Registry {
    /// Upload a blob whose bytes arrive as a stream and commit it under the digest computed
    /// on the way; see the module comment for how a broken upload continues.
    pub async fn upload_blob<S, F>(
        &self,
        repo: &str,
        replay: Replay,
        make_stream: F,
    ) -> Result<(String, u64), RegistryError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
        F: FnMut() -> Option<S>,
    {
        let mut session = None;
        let result = self
            .upload_in_session(repo, replay, make_stream, &mut session)
            .await;
        if result.is_err()
            && let Some(s) = session
        {
            self.cancel_upload(repo, &s).await;
        }
        result
    }

    /// [`Registry::upload_blob`], keeping the open session in `session` so that a failed
    /// upload can be cancelled.
    async fn upload_in_session<S, F>(
        &self,
        repo: &str,
        replay: Replay,
        mut make_stream: F,
        session: &mut Option<Session>,
    ) -> Result<(String, u64), RegistryError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
        F: FnMut() -> Option<S>,
    {
        let not_replayable = || RegistryError::NotReplayable {
            operation: "blob upload".into(),
        };
        let first = make_stream().ok_or_else(not_replayable)?;
        // A segment of a source read once is kept until acknowledged, so a source read once
        // is sent in bounded segments only when segments are asked for at all.
        let segmented = self.upload_segment();
        let keep = replay == Replay::FromMemory && segmented.is_some();
        let segment = match segmented {
            Some(n) if keep => n.min(MAX_KEPT_SEGMENT),
            Some(n) => n,
            None => u64::MAX,
        };
        let feed = Arc::new(Mutex::new(Feed::new(first, keep)));
        // Failures since the registry last held more of the blob than ever before: only real
        // progress resets them, so an upload broken the same way every time ends.
        let mut failures = 0usize;
        let mut held = 0u64;
        let mut delay = Duration::from_millis(500);
        let mut auth = AuthCache::default();
        loop {
            let step = match self.upload_auth(repo, &mut auth).await {
                Ok(a) => self.upload_step(repo, &feed, session, segment, a).await,
                Err(e) => Err(e),
            };
            let error = match step {
                Ok(Step::Done(digest, size)) => return Ok((digest, size)),
                Ok(Step::Started) => continue,
                Ok(Step::Accepted(acked)) => {
                    if acked > held {
                        held = acked;
                        failures = 0;
                        delay = Duration::from_millis(500);
                    }
                    continue;
                }
                Ok(Step::Disagreed { acked }) => RegistryError::Protocol {
                    registry: self.host().to_string(),
                    detail: format!(
                        "upload acknowledged at offset {acked}, not where it was sent to"
                    ),
                },
                Err(e) => e,
            };
            // No request body of the failed attempt may take more bytes from now on.
            feed.lock().await.generation += 1;
            auth.fetched = None;
            if let Some(source) = feed.lock().await.failed.clone() {
                return Err(RegistryError::SourceFailed { detail: source });
            }
            failures += 1;
            let disagreed = matches!(error, RegistryError::Protocol { .. });
            if !(error.is_transient() || disagreed) || failures >= self.retries() {
                return Err(error);
            }
            let wait = error.retry_after().map(cap_wait).unwrap_or(delay);
            tracing::warn!(error = %error, attempt = failures, "blob upload interrupted; continuing in {:?}", wait);
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(30));

            // Where did the registry stop? (Asked again while it cannot say.)
            let standing = loop {
                let Some(s) = &*session else {
                    break Standing::Gone;
                };
                let status = match self.upload_auth(repo, &mut auth).await {
                    Ok(a) => self.upload_standing(s, a).await,
                    Err(e) => Err(e),
                };
                match status {
                    Ok(st) => break st,
                    Err(e) if e.is_transient() => {
                        failures += 1;
                        if failures >= self.retries() {
                            return Err(e);
                        }
                        let wait = e.retry_after().map(cap_wait).unwrap_or(delay);
                        tracing::warn!(error = %e, "upload status unknown; asking again in {:?}", wait);
                        tokio::time::sleep(wait).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                    Err(e) => return Err(e),
                }
            };
            let mut f = feed.lock().await;
            let at = match standing {
                // A registry claiming more than was ever produced holds something else.
                Standing::At { offset, location } if offset <= f.produced => {
                    *session = Some(Session { location });
                    offset
                }
                _ => {
                    *session = None;
                    0
                }
            };
            continue_at(&mut f, at, &mut make_stream)?;
        }
    }

    /// One request of the upload: start a session, send a segment, or commit. Ok(Some) when
    /// the blob is committed.
    async fn upload_step<S>(
        &self,
        repo: &str,
        feed: &Arc<Mutex<Feed<S>>>,
        session: &mut Option<Session>,
        segment: u64,
        auth: Option<HeaderValue>,
    ) -> Result<Step, RegistryError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    {
        let Some(s) = session else {
            *session = Some(Session {
                location: self.start_upload(repo, auth.as_ref()).await?,
            });
            return Ok(Step::Started);
        };
        let (more, generation, start) = {
            let mut f = feed.lock().await;
            let more = f.has_more().await;
            (more, f.generation, f.offset)
        };
        let more = more.map_err(|detail| RegistryError::SourceFailed { detail })?;
        if !more {
            return self
                .commit(repo, feed, s, auth.as_ref())
                .await
                .map(|(d, n)| Step::Done(d, n));
        }
        let body = segment_body(feed.clone(), generation, segment);
        let req = self
            .http()
            .patch(s.location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        let resp = self.send_authorized(req, auth.as_ref()).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(self.host(), resp, "blob upload").await);
        }
        let location = self.location(s.location.as_str(), &resp)?;
        let mut f = feed.lock().await;
        f.generation += 1;
        let mut acked = range_end(&resp).unwrap_or(f.offset);
        if acked == 0 && start == 0 && f.offset == 1 {
            // Distribution's `0-0` after a first request of one byte: it holds that byte.
            acked = 1;
        }
        s.location = location;
        if acked != f.offset {
            tracing::warn!(
                sent_to = f.offset,
                registry_offset = acked,
                segment_start = start,
                "registry acknowledged a different offset"
            );
            // Ask the registry again (after a pause) and continue from what it then holds:
            // less than was sent is sent again, a copy that is not ours is started over.
            return Ok(Step::Disagreed { acked });
        }
        f.acknowledge(acked);
        Ok(Step::Accepted(acked))
    }

    /// Send with the Authorization header, if any; no answer at all is `Unreachable`.
    async fn send_authorized(
        &self,
        mut req: reqwest::RequestBuilder,
        auth: Option<&reqwest::header::HeaderValue>,
    ) -> Result<reqwest::Response, RegistryError> {
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        req.send()
            .await
            .map_err(|e| RegistryError::from_reqwest(self.host(), e))
    }

    async fn start_upload(
        &self,
        repo: &str,
        auth: Option<&reqwest::header::HeaderValue>,
    ) -> Result<reqwest::Url, RegistryError> {
        let start = format!("{}/v2/{}/blobs/uploads/", self.base(), repo);
        let resp = self.send_authorized(self.http().post(&start), auth).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(self.host(), resp, "blob upload start").await);
        }
        self.location(&start, &resp)
    }

    async fn commit<S>(
        &self,
        repo: &str,
        feed: &Arc<Mutex<Feed<S>>>,
        s: &Session,
        auth: Option<&reqwest::header::HeaderValue>,
    ) -> Result<(String, u64), RegistryError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
    {
        let (digest, size) = {
            let f = feed.lock().await;
            (
                format!("sha256:{}", hex::encode(f.hasher.clone().finalize())),
                f.produced,
            )
        };
        let mut commit = s.location.clone();
        commit.query_pairs_mut().append_pair("digest", &digest);
        let req = self.http().put(commit).header(CONTENT_LENGTH, "0");
        let outcome = match self.send_authorized(req, auth).await {
            Ok(resp) if resp.status() == StatusCode::CREATED => return Ok((digest, size)),
            Ok(resp) => status_error(self.host(), resp, "blob upload commit").await,
            Err(e) => e,
        };
        // The commit may have landed though its answer was lost.
        if outcome.is_transient() && self.blob_exists(repo, &digest).await.unwrap_or(false) {
            return Ok((digest, size));
        }
        Err(outcome)
    }

    /// Copy a blob from repository `from` to `repo` of this registry through this client: for
    /// registries that refuse (or ignore) cross-repository mounts. Streamed, never held whole;
    /// a broken copy starts the download again and continues the upload where it stopped.
    pub async fn copy_blob(
        &self,
        repo: &str,
        from: &str,
        digest: &str,
    ) -> Result<u64, RegistryError> {
        let auth = self.authorization(from).await?;
        let url = format!("{}/v2/{}/blobs/{}", self.base(), from, digest);
        let (copied, size) = self
            .upload_blob(repo, Replay::FromSource, || {
                let (this, url, auth) = (self.clone(), url.clone(), auth.clone());
                let body = futures::stream::once(async move {
                    match download(&this, &url, auth).await {
                        Ok(resp) => resp
                            .bytes_stream()
                            .map(|b| b.map_err(std::io::Error::other))
                            .left_stream(),
                        Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
                    }
                })
                .flatten();
                Some(Box::pin(body))
            })
            .await?;
        if copied != digest {
            return Err(RegistryError::Protocol {
                registry: self.host().to_string(),
                detail: format!("blob {digest} of {from} read back as {copied}"),
            });
        }
        Ok(size)
    }

    /// Stream blob `digest` of `repo`: a layer found in the registry is read back and checked
    /// against the diff_id it is taken for before it is reused.
    pub async fn read_blob(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static, RegistryError>
    {
        let auth = self.authorization(repo).await?;
        let url = format!("{}/v2/{}/blobs/{}", self.base(), repo, digest);
        let resp = download(self, &url, auth)
            .await
            .map_err(|e| RegistryError::Protocol {
                registry: self.host().to_string(),
                detail: format!("reading blob {digest} of {repo}: {e}"),
            })?;
        Ok(Box::pin(
            resp.bytes_stream()
                .map(|b| b.map_err(std::io::Error::other)),
        ))
    }

    /// Best effort: tell the registry to drop a failed upload's session and the bytes it holds
    /// now, rather than when its purge of stale uploads comes round (distribution: after a week).
    async fn cancel_upload(&self, repo: &str, s: &Session) {
        let auth = match self.authorization(repo).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "failed upload not cancelled");
                return;
            }
        };
        let req = self
            .http()
            .delete(s.location.clone())
            .timeout(Duration::from_secs(10));
        match self.send_authorized(req, auth.as_ref()).await {
            Ok(resp) => tracing::debug!(status = %resp.status(), "failed upload cancelled"),
            Err(e) => tracing::debug!(error = %e, "failed upload not cancelled"),
        }
    }

    /// Ask the registry how much of the upload it holds.
    async fn upload_standing(
        &self,
        s: &Session,
        auth: Option<HeaderValue>,
    ) -> Result<Standing, RegistryError> {
        let resp = self
            .send_authorized(self.http().get(s.location.clone()), auth.as_ref())
            .await?;
        let status = resp.status();
        if status.is_success() {
            let offset = range_end(&resp).unwrap_or(0);
            let location = self
                .location(s.location.as_str(), &resp)
                .unwrap_or_else(|_| s.location.clone());
            return Ok(Standing::At { offset, location });
        }
        match status.as_u16() {
            401 | 403 | 408 | 429 | 500..=599 => {
                Err(status_error(self.host(), resp, "upload status").await)
            }
            // Unknown or invalidated upload.
            _ => Ok(Standing::Gone),
        }
    }
}

/// A request body of at most `limit` bytes from the feed; it ends early (and pulls nothing)
/// once its generation is over.
fn segment_body<S>(
    feed: Arc<Mutex<Feed<S>>>,
    generation: u64,
    limit: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    futures::stream::unfold((feed, limit), move |(feed, left)| async move {
        if left == 0 {
            return None;
        }
        let mut f = feed.lock().await;
        if f.generation != generation {
            return None;
        }
        match f.next(left).await? {
            Ok(b) => {
                let left = left - b.len() as u64;
                drop(f);
                Some((Ok(b), (feed, left)))
            }
            Err(e) => {
                drop(f);
                Some((Err(e), (feed, 0)))
            }
        }
    })
}

/// A registry's Retry-After, bounded: a day-long pause is a broken registry, not a plan.
fn cap_wait(d: Duration) -> Duration {
    d.min(Duration::from_secs(120))
}

fn range_end(resp: &reqwest::Response) -> Option<u64> {
    held_bytes(resp.headers().get(RANGE)?.to_str().ok()?)
}

/// The number of bytes a registry says it holds, from `Range: 0-<last>` (inclusive).
/// Distribution answers `0-0` for an empty upload as well as for one byte: read it as none (if
/// there was one byte, the next acknowledgement disagrees and the upload starts over).
fn held_bytes(range: &str) -> Option<u64> {
    let v = range.trim().trim_start_matches("bytes=");
    let (first, last) = v.split_once('-')?;
    if first.trim() != "0" {
        return None;
    }
    match last.trim() {
        l if l.starts_with('-') => Some(0),
        "0" => Some(0),
        l => l.parse::<u64>().ok().map(|l| l + 1),
    }
}

/// GET a blob, following its redirect to storage (guarded, without the registry's
/// credentials: `Registry::get_blob`); an error answer is an error.
async fn download(
    registry: &Registry,
    url: &str,
    auth: Option<HeaderValue>,
) -> std::io::Result<reqwest::Response> {
    let resp = registry
        .get_blob(url, auth)
        .await
        .map_err(std::io::Error::other)?;
    resp.error_for_status().map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pieces = futures::stream::Iter<std::vec::IntoIter<std::io::Result<Bytes>>>;

    fn pieces(pieces: &[&'static [u8]]) -> Pieces {
        let items: Vec<std::io::Result<Bytes>> =
            pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        futures::stream::iter(items)
    }

    fn feed(p: &[&'static [u8]], replay: Replay) -> Feed<Pieces> {
        Feed::new(pieces(p), replay == Replay::FromMemory)
    }

    async fn take(f: &mut Feed<Pieces>, limit: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = limit;
        while left > 0 {
            match f.next(left).await {
                Some(Ok(b)) => {
                    left -= b.len() as u64;
                    out.extend_from_slice(&b);
                }
                _ => break,
            }
        }
        out
    }

    #[test]
    fn range_headers_say_how_much_the_registry_holds() {
        assert_eq!(held_bytes("0-1048575"), Some(1 << 20));
        assert_eq!(held_bytes("bytes=0-9"), Some(10));
        assert_eq!(held_bytes("0-0"), Some(0));
        assert_eq!(held_bytes("0--1"), Some(0));
        assert_eq!(held_bytes("5-9"), None);
        assert_eq!(held_bytes("junk"), None);
    }

    #[tokio::test]
    async fn segments_split_pieces_and_hash_everything_once() {
        let mut f = feed(&[b"abcdef", b"ghij"], Replay::FromSource);
        assert_eq!(take(&mut f, 4).await, b"abcd");
        assert_eq!(take(&mut f, 4).await, b"efgh");
        assert_eq!(take(&mut f, 4).await, b"ij");
        assert!(!f.has_more().await.unwrap());
        assert_eq!(f.produced, 10);
        assert_eq!(
            f.hasher.clone().finalize()[..],
            Sha256::digest(b"abcdefghij")[..]
        );
    }

    #[tokio::test]
    async fn kept_bytes_are_sent_again_from_the_registry_offset() {
        let mut f = feed(&[b"abcdef", b"ghij"], Replay::FromMemory);
        assert_eq!(take(&mut f, 4).await, b"abcd");
        f.acknowledge(4);
        assert_eq!(take(&mut f, 4).await, b"efgh");
        // The second segment broke; the registry holds 5 bytes.
        assert!(f.rewind(5));
        assert_eq!(take(&mut f, 100).await, b"fghij");
        // Acknowledged bytes are gone from memory: cannot go back before them.
        assert!(!f.rewind(3));
    }

    #[tokio::test]
    async fn a_replayed_source_skips_what_the_registry_holds() {
        let mut f = feed(&[b"abcdef", b"ghij"], Replay::FromSource);
        assert_eq!(take(&mut f, 8).await, b"abcdefgh");
        assert!(!f.rewind(3), "nothing kept: the source must be replayed");
        f.replay(pieces(&[b"abcdef", b"ghij"]), 3);
        assert_eq!(take(&mut f, 100).await, b"defghij");
        assert_eq!(f.produced, 10);
        assert_eq!(
            f.hasher.clone().finalize()[..],
            Sha256::digest(b"abcdefghij")[..]
        );
    }
}
