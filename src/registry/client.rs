//! A registry connection: oci-client for authentication, blob checks, mounts and
//! manifests; a streamed upload of our own because oci-client's chunked upload waits for an
//! answer every 4 MiB (half the throughput on a fast registry).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, RETRY_AFTER};

use super::auth;
use super::error::RegistryError;
use super::guard;
use super::reference::Target;

#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Plain HTTP for this registry (certificates are checked whenever TLS is used).
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    /// Attempts per request for transient failures.
    pub retries: Option<usize>,
    /// No credentials, and no looking for a docker config.
    pub anonymous: bool,
    /// Read only the `auths` of the auth file, never a `credsStore`/`credHelpers` program.
    pub auths_only: bool,
    /// Bytes per blob upload request (each accepted one is a point a broken upload continues
    /// from even on a registry that drops half-received requests); None or 0: the whole blob
    /// in one request, as docker, containerd and skopeo send it (some registries accept
    /// nothing else).
    pub upload_segment: Option<u64>,
    /// Let the registry's token realm and blob redirects lead to link-local addresses (cloud
    /// metadata addresses never): the URL sources' switch (`--url-allow-link-local`).
    pub allow_link_local: bool,
}

pub const MANIFEST_TYPES: &[&str] = &[
    crate::archive::formats::OCI_MANIFEST,
    crate::archive::formats::OCI_INDEX,
    crate::archive::formats::DOCKER_MANIFEST,
    crate::archive::formats::DOCKER_MANIFEST_LIST,
];

#[derive(Clone)]
pub struct Registry {
    host: String,
    insecure: bool,
    configured: Arc<oci_client::Client>,
    /// A loopback registry given neither `insecure` nor a CA file: HTTPS is tried first, and
    /// when the handshake is answered in plain HTTP this client (plain HTTP) is used instead,
    /// as docker and crane do for local registries.
    plain_fallback: Option<Arc<oci_client::Client>>,
    fell_back: Arc<AtomicBool>,
    http: reqwest::Client,
    auth: RegistryAuth,
    retries: usize,
    upload_segment: u64,
    /// What a token realm or a blob redirect may lead to (see `guard`).
    elsewhere: Arc<crate::pipeline::url_guard::UrlPolicy>,
    /// For blob redirects: the guarded resolver and redirect checks on every hop, no
    /// credentials (a fresh request).
    redirects: reqwest::Client,
    /// The token realm of the registry's challenge was checked (once per connection).
    realm_checked: Arc<tokio::sync::OnceCell<()>>,
}

/// A registry's answer to a blob `HEAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobHead {
    Missing,
    /// `size`: its Content-Length (None when the registry redirects to its storage).
    Present {
        size: Option<u64>,
    },
}

/// A manifest as the registry holds it.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    pub bytes: Bytes,
    pub digest: String,
}

impl Registry {
    pub fn connect(host: &str, opts: &RegistryOptions) -> Result<Registry, RegistryError> {
        let auth = if opts.anonymous {
            RegistryAuth::Anonymous
        } else {
            auth::credentials_for(host, opts.auth_file.as_deref(), opts.auths_only)?
        };
        let mut certs = Vec::new();
        let mut reqwest_certs = Vec::new();
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                RegistryError::Config(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            certs.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            });
            reqwest_certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Config(format!("CA file {}: {e}", ca.display())))?;
        }
        let config = |protocol| ClientConfig {
            protocol,
            extra_root_certificates: certs.clone(),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("imageimport/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let protocol = if opts.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let plain_fallback = (!opts.insecure && opts.ca_file.is_none() && is_loopback(host))
            .then(|| Arc::new(oci_client::Client::new(config(ClientProtocol::Http))));
        let http = reqwest::Client::builder()
            .user_agent(concat!("imageimport/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .tls_certs_merge(reqwest_certs.clone())
            // Upload locations are followed by hand; never forward credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        let elsewhere = guard::policy(opts.allow_link_local);
        let redirects = crate::pipeline::url_guard::client(elsewhere.clone(), Some(reqwest_certs))
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        Ok(Registry {
            host: host.to_string(),
            insecure: opts.insecure,
            configured: Arc::new(oci_client::Client::new(config(protocol))),
            plain_fallback,
            fell_back: Arc::new(AtomicBool::new(false)),
            http,
            auth,
            retries: opts.retries.unwrap_or(6),
            upload_segment: opts.upload_segment.unwrap_or(0),
            elsewhere,
            redirects,
            realm_checked: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub(super) fn base(&self) -> String {
        format!("{}://{}", self.scheme(), self.host)
    }

    fn plain(&self) -> bool {
        self.insecure || self.fell_back.load(Ordering::Relaxed)
    }

    fn scheme(&self) -> &'static str {
        if self.plain() { "http" } else { "https" }
    }

    fn oci(&self) -> &oci_client::Client {
        match &self.plain_fallback {
            Some(plain) if self.fell_back.load(Ordering::Relaxed) => plain,
            _ => &self.configured,
        }
    }

    /// What the connection knows and a single error does not: whether credentials were sent.
    fn explain(&self, e: RegistryError) -> RegistryError {
        match e {
            RegistryError::Unauthorized {
                registry,
                status,
                operation,
                ..
            } => RegistryError::Unauthorized {
                registry,
                status,
                operation,
                credentials_sent: !matches!(self.auth, RegistryAuth::Anonymous),
            },
            e => e,
        }
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(super) fn retries(&self) -> usize {
        self.retries
    }

    /// Bytes per upload request; None for the whole blob in one.
    pub(super) fn upload_segment(&self) -> Option<u64> {
        (self.upload_segment > 0).then_some(self.upload_segment)
    }

    fn reference(&self, repo: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repo.to_string(), "latest".into())
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.retries.saturating_sub(1))
            .with_jitter()
    }

    /// Retry transient failures with exponential backoff, honouring Retry-After; a loopback
    /// registry that answers in plain HTTP is asked again over HTTP (once, for good). The
    /// token realm is checked before anything reaches oci-client.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let mut f = || {
            let op = f();
            async move {
                self.check_realm().await?;
                op.await
            }
        };
        let result = match self.retry_transient(what, &mut f).await {
            Err(RegistryError::PlainHttp { .. })
                if self.plain_fallback.is_some()
                    && !self.fell_back.swap(true, Ordering::Relaxed) =>
            {
                tracing::info!(registry = %self.host, "a loopback registry speaking plain HTTP: using HTTP");
                self.retry_transient(what, &mut f).await
            }
            r => r,
        };
        result.map_err(|e| self.explain(e))
    }

    async fn retry_transient<T, F, Fut>(&self, what: &str, f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        f.retry(self.backoff())
            .when(|e: &RegistryError| e.is_transient())
            .adjust(|e: &RegistryError, d| {
                e.retry_after()
                    .map(|r| r.min(Duration::from_secs(120)))
                    .or(d)
            })
            .notify(|e, d| tracing::warn!(operation = what, error = %e, "retrying in {:?}", d))
            .await
    }

    /// `GET /v2/` without credentials: the registry's version check and its challenge.
    async fn get_v2(&self) -> Result<reqwest::Response, RegistryError> {
        self.http
            .get(format!("{}/v2/", self.base()))
            .send()
            .await
            .map_err(|e| RegistryError::from_reqwest(&self.host, e))
    }

    /// oci-client GETs the realm of the registry's Bearer challenge verbatim, with the Basic
    /// credentials, and offers no hook: so the challenge is read here first (our own `GET
    /// /v2/`) and a realm the guard refuses ends the import. Checked once per connection: a
    /// registry that names another realm to oci-client's own request later, or a realm name
    /// that re-resolves, is not caught (docs/operations.md, "URL sources").
    async fn check_realm(&self) -> Result<(), RegistryError> {
        if self.realm_checked.initialized() || matches!(self.auth, RegistryAuth::Bearer(_)) {
            return Ok(());
        }
        let resp = self.get_v2().await?;
        if let Some(realm) = guard::bearer_realm(resp.headers()) {
            let url = guard::realm_url(&self.host, &realm)?;
            guard::check(&self.host, "token realm", &url, &self.elsewhere).await?;
        }
        // An answer that is not the registry's own (a 5xx of a proxy) is asked again next time.
        if matches!(resp.status().as_u16(), 200 | 401) {
            let _ = self.realm_checked.set(());
        }
        Ok(())
    }

    /// GET blob `url` of this registry, following its redirect to storage: the target must
    /// pass the guard (`guard::check`) and is fetched without the registry's credentials
    /// through the guarded client (every further hop checked too).
    pub(super) async fn get_blob(
        &self,
        url: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = self.http.get(url);
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RegistryError::from_reqwest(&self.host, e))?;
        if !resp.status().is_redirection() {
            return Ok(resp);
        }
        let Some(loc) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
            return Ok(resp);
        };
        let next = reqwest::Url::parse(url)
            .and_then(|u| u.join(loc))
            .map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                detail: e.to_string(),
            })?;
        guard::check(&self.host, "blob redirect", &next, &self.elsewhere).await?;
        self.redirects.get(next).send().await.map_err(|e| {
            match crate::pipeline::url_guard::guard_error(&e) {
                Some(refusal) => RegistryError::Refused {
                    registry: self.host.clone(),
                    what: "blob redirect".into(),
                    detail: refusal.to_string(),
                },
                None => RegistryError::from_reqwest(&self.host, e),
            }
        })
    }

    /// The Authorization header for pushing to `repo` (a fresh bearer token for each call:
    /// tokens are short-lived and a layer upload can take minutes).
    pub(super) async fn authorization(
        &self,
        repo: &str,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        self.authorization_for(repo, RegistryOperation::Push).await
    }

    /// [`Self::authorization`] for `op` (a pull scope is enough to look at a blob).
    async fn authorization_for(
        &self,
        repo: &str,
        op: RegistryOperation,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let reference = self.reference(repo);
        let token = self
            .oci()
            .auth(&reference, &self.auth, op)
            .await
            .map_err(|e| RegistryError::from_oci(&self.host, "authentication", e))?;
        let value = match (token, &self.auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => {
                use base64::Engine;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ))
            }
            _ => None,
        };
        value
            .map(|v| {
                HeaderValue::from_str(&v)
                    .map_err(|_| RegistryError::Config("credentials are not a valid header".into()))
            })
            .transpose()
    }

    /// Check the registry answers and the credentials are accepted for pushing to `repo`.
    pub async fn check_push_access(&self, repo: &str) -> Result<(), RegistryError> {
        self.retry("authentication", || async {
            let authorization = self.authorization(repo).await?;
            // Without credentials and without a token, a registry that requires basic auth
            // says so only now, to `GET /v2/` (oci-client takes its 401 for "no token"):
            // fail here, before the archive is read, rather than at the first upload.
            if authorization.is_none() && matches!(self.auth, RegistryAuth::Anonymous) {
                let resp = self.get_v2().await?;
                if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return Err(status_error(&self.host, resp, "authentication").await);
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, RegistryError> {
        let reference = self.reference(repo);
        self.retry("blob check", || async {
            self.oci()
                .store_auth_if_needed(&self.host, &self.auth)
                .await;
            self.oci()
                .blob_exists(&reference, digest)
                .await
                .map_err(|e| RegistryError::from_oci(&self.host, "blob check", e))
        })
        .await
    }

    /// What the registry's `HEAD` of blob `digest` in `repo` says: whether it holds the blob
    /// and, unless it redirects to its storage, the blob's size (its Content-Length).
    pub async fn blob_head(&self, repo: &str, digest: &str) -> Result<BlobHead, RegistryError> {
        self.retry("blob check", || async {
            let url = format!("{}/v2/{}/blobs/{}", self.base(), repo, digest);
            let mut req = self.http.head(url);
            if let Some(a) = self
                .authorization_for(repo, RegistryOperation::Pull)
                .await?
            {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| RegistryError::from_reqwest(&self.host, e))?;
            let status = resp.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(BlobHead::Missing);
            }
            if status.is_redirection() {
                return Ok(BlobHead::Present { size: None });
            }
            if !status.is_success() {
                return Err(status_error(&self.host, resp, "blob check").await);
            }
            // The header itself: reqwest's content_length() of a HEAD answer is its empty body's.
            let size = resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            Ok(BlobHead::Present { size })
        })
        .await
    }

    /// Cross-repository mount. False when the registry did not mount (then upload instead).
    pub async fn mount_blob(&self, repo: &str, from: &str, digest: &str) -> bool {
        if self.check_realm().await.is_err() {
            return false;
        }
        self.oci()
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
        let to = self.reference(repo);
        let source = self.reference(from);
        self.oci().mount_blob(&to, &source, digest).await.is_ok()
    }

    /// Fetch a manifest by tag or digest; None if the registry has no such manifest.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<RemoteManifest>, RegistryError> {
        let r = if reference.starts_with("sha256:") {
            Reference::with_digest(self.host.clone(), repo.to_string(), reference.to_string())
        } else {
            Reference::with_tag(self.host.clone(), repo.to_string(), reference.to_string())
        };
        self.retry("manifest fetch", || async {
            match self
                .oci()
                .pull_manifest_raw(&r, &self.auth, MANIFEST_TYPES)
                .await
            {
                Ok((bytes, digest)) => Ok(Some(RemoteManifest { bytes, digest })),
                Err(oci_client::errors::OciDistributionError::ImageManifestNotFoundError(_)) => {
                    Ok(None)
                }
                Err(e) => match RegistryError::from_oci(&self.host, "manifest fetch", e) {
                    RegistryError::Rejected { status: 404, .. } => Ok(None),
                    RegistryError::Rejected { detail, .. } if is_unknown(&detail) => Ok(None),
                    other => Err(other),
                },
            }
        })
        .await
    }

    /// One page of `repo`'s tags (at most `n`, after `last`); empty when the repository does
    /// not exist.
    pub async fn list_tags(
        &self,
        repo: &str,
        n: usize,
        last: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        let reference = self.reference(repo);
        self.retry("tag list", || async {
            match self
                .oci()
                .list_tags(&reference, &self.auth, Some(n), last)
                .await
            {
                Ok(t) => Ok(t.tags),
                Err(e) => match RegistryError::from_oci(&self.host, "tag list", e) {
                    RegistryError::Rejected { status: 404, .. } => Ok(vec![]),
                    RegistryError::Rejected { detail, .. } if is_unknown(&detail) => Ok(vec![]),
                    other => Err(other),
                },
            }
        })
        .await
    }

    /// Push a manifest under a tag (or its digest). Returns the digest of the bytes sent.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let r = if reference.starts_with("sha256:") {
            Reference::with_digest(self.host.clone(), repo.to_string(), reference.to_string())
        } else {
            Reference::with_tag(self.host.clone(), repo.to_string(), reference.to_string())
        };
        let content_type = HeaderValue::from_str(media_type)
            .map_err(|_| RegistryError::Config(format!("bad media type {media_type}")))?;
        let body = Bytes::copy_from_slice(bytes);
        self.retry("manifest push", || async {
            self.oci()
                .store_auth_if_needed(&self.host, &self.auth)
                .await;
            self.oci()
                .auth(&r, &self.auth, RegistryOperation::Push)
                .await
                .map_err(|e| RegistryError::from_oci(&self.host, "authentication", e))?;
            self.oci()
                .push_manifest_raw(&r, body.clone(), content_type.clone())
                .await
                .map_err(|e| RegistryError::from_oci(&self.host, "manifest push", e))
        })
        .await?;
        Ok(crate::archive::digest::sha256_of(bytes))
    }

    /// Fetch a small blob (a config) to compare it; None if absent or over `cap`.
    pub async fn get_small_blob(
        &self,
        repo: &str,
        digest: &str,
        cap: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        self.retry("blob fetch", || async {
            let url = format!("{}/v2/{}/blobs/{}", self.base(), repo, digest);
            let auth = self.authorization(repo).await?;
            // Blob GETs usually redirect to storage, on another host: see get_blob.
            let resp = self.get_blob(&url, auth).await?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(status_error(&self.host, resp, "blob fetch").await);
            }
            if resp.content_length().is_some_and(|l| l > cap as u64) {
                return Ok(None);
            }
            // Read with the cap: a body without Content-Length may be endless.
            let mut body = Vec::new();
            let mut chunks = resp.bytes_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| RegistryError::from_reqwest(&self.host, e))?;
                if body.len() + chunk.len() > cap {
                    return Ok(None);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(body))
        })
        .await
    }

    pub(super) fn location(
        &self,
        base: &str,
        resp: &reqwest::Response,
    ) -> Result<reqwest::Url, RegistryError> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.host.clone(),
                detail: "upload without Location".into(),
            })?;
        let url = reqwest::Url::parse(base)
            .and_then(|b| b.join(loc))
            .map_err(|e| RegistryError::Protocol {
                registry: self.host.clone(),
                detail: e.to_string(),
            })?;
        // Credentials go only to the registry we were asked to talk to: same scheme, host
        // and port (no plain-HTTP Location for an HTTPS registry).
        if reqwest::Url::parse(base).map(|b| b.origin()).ok() != Some(url.origin()) {
            return Err(RegistryError::Protocol {
                registry: self.host.clone(),
                detail: "upload Location points at another host".into(),
            });
        }
        Ok(url)
    }

    pub fn target(&self, t: &Target) -> String {
        format!("{}/{}", self.host, t.repository)
    }
}

/// `localhost`, 127.0.0.0/8 or ::1, with or without a port (`[::1]:5000`).
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Registries answer an unknown manifest or repository with an error envelope.
fn is_unknown(detail: &str) -> bool {
    let d = detail.to_ascii_uppercase().replace('_', "");
    d.contains("MANIFESTUNKNOWN") || d.contains("NAMEUNKNOWN") || d.contains("NOTFOUND")
}

pub(super) async fn status_error(
    host: &str,
    resp: reqwest::Response,
    operation: &str,
) -> RegistryError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    RegistryError::from_status(host, status, operation, retry_after, &body)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts_are_recognised() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "registry.local:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
