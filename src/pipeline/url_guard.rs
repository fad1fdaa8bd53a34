//! Guards for URL sources (SSRF protection).
//!
//! An `ImageImport` names a URL; the worker fetches it from inside the cluster. Without
//! guards that URL could point the worker at the cloud metadata service (node credentials),
//! at link-local host services, or at anything else the pod network reaches. This module:
//!
//! - checks a URL before it is fetched ([`check_url`]): http/https only, no credentials in
//!   the URL, an optional host allow-list, and literal IP addresses in every spelling (the
//!   `url` crate turns `2852039166`, `0xA9FEA9FE`, `0251.0376.0251.0376` and
//!   `169.254.43518` into `169.254.169.254`; IPv4 addresses embedded in IPv6 ones —
//!   mapped, compatible, translated, NAT64, 6to4, Teredo — are unwrapped and checked too);
//! - resolves names with [`GuardedResolver`], which drops forbidden addresses and fails when
//!   none remain. It runs at connect time, for the first request and for every redirect
//!   hop, so a name that resolves (or re-resolves, DNS rebinding) to a forbidden address is
//!   never connected to. Literal IP hosts do not go through a resolver: the first URL must
//!   pass [`check_url`] and every redirect hop is checked by [`redirect_policy`];
//! - follows at most [`MAX_REDIRECTS`] redirects, never from https to http
//!   ([`redirect_policy`]);
//! - bounds the body ([`body_reader`], [`limit_stream`]) and, optionally, the whole
//!   download time ([`UrlPolicy::total_timeout`]).
//!
//! Credentials: reqwest removes `Authorization`, `Cookie`, `Proxy-Authorization` and
//! `WWW-Authenticate` from a redirected request whenever the scheme, host or port changes
//! (`reqwest::redirect::remove_sensitive_headers`, reqwest 0.13), so a token set on the
//! request is only ever sent to the URL's own origin. The `Referer` header is turned off
//! because reqwest would otherwise send the previous URL, query string (e.g. a presigned
//! URL's signature) included, to the next host.
//!
//! Errors name the host, never the query string or userinfo of a URL.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use url::{Host, Url};

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 5;

pub const USER_AGENT: &str = concat!("imageimport/", env!("CARGO_PKG_VERSION"));

/// What URL sources may reach.
///
/// Private and loopback addresses are allowed by default: in air-gapped clusters archives
/// are served from the LAN. Link-local and cloud metadata addresses are refused unless
/// allowed explicitly; unspecified, multicast, broadcast and reserved addresses always.
/// The worker (a Pod, where loopback is only itself and its sidecars) turns loopback off.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// RFC 1918, shared address space 100.64.0.0/10, unique local fc00::/7 (and deprecated
    /// site-local fec0::/10). Default: true.
    pub allow_private: bool,
    /// Loopback 127.0.0.0/8 and ::1 (also needs `allow_private`). Default: true (the CLI's
    /// own machine); the worker's default is false.
    pub allow_loopback: bool,
    /// 169.254.0.0/16 and fe80::/10, except the metadata addresses. Default: false.
    pub allow_link_local: bool,
    /// Cloud metadata and credential endpoints ([`METADATA_V4`], [`METADATA_V6`]).
    /// Needs `allow_link_local` too for those in 169.254.0.0/16. Default: false.
    pub allow_metadata: bool,
    /// If set, the URL's host (and every redirect target's) must be one of these: an exact
    /// host name or IP address, or `*.example.com` for any name below `example.com`.
    pub allowed_hosts: Option<Vec<String>>,
    /// Refuse bodies larger than this (announced or actual). Default: no limit.
    pub max_bytes: Option<u64>,
    /// Bound on the whole download, body included. Default: none (archives can be many
    /// gigabytes); a stalled transfer is still cut by the read timeout.
    pub total_timeout: Option<Duration>,
    /// Use `HTTP(S)_PROXY`/`NO_PROXY` from the environment. Default: false. Through a
    /// proxy, names are resolved by the proxy, not by [`GuardedResolver`]: only literal
    /// addresses and the allow-list are checked here, the proxy must enforce the rest
    /// (and the proxy's own address must pass this policy).
    pub use_env_proxy: bool,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        UrlPolicy {
            allow_private: true,
            allow_loopback: true,
            allow_link_local: false,
            allow_metadata: false,
            allowed_hosts: None,
            max_bytes: None,
            total_timeout: None,
            use_env_proxy: false,
        }
    }
}

/// Cloud metadata and credential endpoints (IPv4): AWS/GCP/Azure/OpenStack/Oracle IMDS,
/// AWS ECS task credentials, EKS Pod Identity agent, Alibaba Cloud, Oracle Cloud Classic,
/// Azure WireServer.
pub const METADATA_V4: [Ipv4Addr; 6] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(168, 63, 129, 16),
];

/// Cloud metadata and credential endpoints (IPv6): AWS IMDS, EKS Pod Identity agent.
pub const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];

/// The kind of a refused address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Public,
    Loopback,
    Private,
    LinkLocal,
    Metadata,
    Unspecified,
    Multicast,
    Broadcast,
    Reserved,
}

impl AddressKind {
    fn article(self) -> &'static str {
        match self {
            AddressKind::Unspecified => "an",
            _ => "a",
        }
    }

    /// What would allow it, in the words of the front end in use (a user cannot set the
    /// policy's fields themselves).
    fn hint(self) -> &'static str {
        use crate::front_end::says;
        match self {
            AddressKind::Loopback => says(
                " (not allowed)",
                " (not allowed: the worker reaches only itself and its sidecars there; \
                 the controller's --url-allow-loopback allows it)",
            ),
            AddressKind::Private => says(
                " (not allowed)",
                " (not allowed: the chart's urlSources.denyPrivate, the controller's \
                 --url-deny-private, is set)",
            ),
            AddressKind::LinkLocal => says(
                " (the imageimport command never downloads from link-local addresses)",
                " (not allowed unless the chart's urlSources.allowLinkLocal, the controller's \
                 --url-allow-link-local, is set)",
            ),
            AddressKind::Metadata => " (cloud metadata addresses are never allowed)",
            _ => "",
        }
    }
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressKind::Public => "public",
            AddressKind::Loopback => "loopback",
            AddressKind::Private => "private",
            AddressKind::LinkLocal => "link-local",
            AddressKind::Metadata => "cloud metadata",
            AddressKind::Unspecified => "unspecified",
            AddressKind::Multicast => "multicast",
            AddressKind::Broadcast => "broadcast",
            AddressKind::Reserved => "reserved",
        })
    }
}

/// Why a URL, a redirect or a body was refused. Messages name hosts, never query strings
/// or credentials. All of these are permanent: retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("refusing URL with scheme {scheme:?}: only http and https are allowed")]
    Scheme { scheme: String },
    #[error("refusing URL without a host")]
    NoHost,
    #[error(
        "refusing URL for {host}: it carries credentials; {}",
        crate::front_end::says(
            "remove them from the URL",
            "put them in the Secret named by spec.source.url.secretRef instead"
        )
    )]
    UserInfo { host: String },
    #[error("refusing {host}: not in the allowed hosts")]
    HostNotAllowed { host: String },
    #[error("refusing {host}: {addr} is {} {kind} address{}", kind.article(), kind.hint())]
    Forbidden {
        host: String,
        addr: IpAddr,
        kind: AddressKind,
    },
    #[error("refusing {host}: it resolves to no address")]
    NoAddress { host: String },
    #[error("refusing redirect from {from} to {to}: https to http downgrade")]
    Downgrade { from: String, to: String },
    #[error("refusing redirect to {to}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { to: String },
    #[error("{host} sent more than {limit} bytes (the limit)")]
    TooLarge { host: String, limit: u64 },
    #[error("{host} announced {length} bytes, more than the limit of {limit}")]
    TooLargeAnnounced {
        host: String,
        length: u64,
        limit: u64,
    },
}

/// What an address is.
pub fn classify(ip: IpAddr) -> AddressKind {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressKind {
    let o = ip.octets();
    if METADATA_V4.contains(&ip) {
        AddressKind::Metadata
    } else if o[0] == 0 {
        // 0.0.0.0/8: "this network"; connecting to 0.0.0.0 reaches the local host.
        AddressKind::Unspecified
    } else if ip.is_loopback() {
        AddressKind::Loopback
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        AddressKind::Private
    } else if ip.is_link_local() {
        AddressKind::LinkLocal
    } else if ip.is_broadcast() {
        AddressKind::Broadcast
    } else if ip.is_multicast() {
        AddressKind::Multicast
    } else if o[0] >= 240 {
        AddressKind::Reserved
    } else {
        AddressKind::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressKind {
    let s = ip.segments();
    if METADATA_V6.contains(&ip) {
        AddressKind::Metadata
    } else if ip.is_unspecified() {
        AddressKind::Unspecified
    } else if ip.is_loopback() {
        AddressKind::Loopback
    } else if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
        AddressKind::Private
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddressKind::LinkLocal
    } else if ip.is_multicast() {
        AddressKind::Multicast
    } else {
        AddressKind::Public
    }
}

/// IPv4 addresses an IPv6 address carries, which may be where it leads.
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    let mut out = Vec::new();
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), ::ffff:0:a.b.c.d (translated).
    if (s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && !ip.is_loopback())))
        || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0)
    {
        out.push(last);
    }
    // NAT64: 64:ff9b::/96 (well-known) and 64:ff9b:1::/48 (local use).
    if s[0] == 0x64 && s[1] == 0xff9b {
        out.push(last);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        out.push(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo: 2001:0::/32, server at bits 32..64, client (inverted) in the last 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(Ipv4Addr::new(o[4], o[5], o[6], o[7]));
        out.push(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]));
    }
    out
}

fn kind_allowed(kind: AddressKind, policy: &UrlPolicy) -> bool {
    match kind {
        AddressKind::Public => true,
        AddressKind::Loopback => policy.allow_private && policy.allow_loopback,
        AddressKind::Private => policy.allow_private,
        AddressKind::LinkLocal => policy.allow_link_local,
        AddressKind::Metadata => policy.allow_metadata,
        AddressKind::Unspecified
        | AddressKind::Multicast
        | AddressKind::Broadcast
        | AddressKind::Reserved => false,
    }
}

/// Whether `policy` lets a connection go to `ip`; `host` is only used in the error.
pub fn check_ip(host: &str, ip: IpAddr, policy: &UrlPolicy) -> Result<(), UrlError> {
    let refuse = |addr: IpAddr, kind: AddressKind| UrlError::Forbidden {
        host: host.to_string(),
        addr,
        kind,
    };
    if let IpAddr::V6(v6) = ip {
        for v4 in embedded_v4(v6) {
            let kind = classify_v4(v4);
            if !kind_allowed(kind, policy) {
                return Err(refuse(ip, kind));
            }
            // A metadata address inside 169.254.0.0/16 needs both flags.
            if kind == AddressKind::Metadata && v4.is_link_local() && !policy.allow_link_local {
                return Err(refuse(ip, AddressKind::LinkLocal));
            }
        }
    }
    let kind = classify(ip);
    if !kind_allowed(kind, policy) {
        return Err(refuse(ip, kind));
    }
    if kind == AddressKind::Metadata
        && !policy.allow_link_local
        && matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
    {
        return Err(refuse(ip, AddressKind::LinkLocal));
    }
    Ok(())
}

fn host_label(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => "<no host>".to_string(),
    }
}

/// `scheme://host[:port]/path`: a URL as it may be shown (no userinfo, query, fragment).
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Whether `host` matches one of the `allowed` patterns: a host name (exact), `*.` and a
/// domain (any name under it, not the domain itself), or an IP literal (`[…]` for IPv6).
/// The controller checks the cluster policy with this very function.
pub fn host_allowed(host: &Host<&str>, allowed: &[String]) -> bool {
    let name = match host {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    let ip: Option<IpAddr> = match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    };
    allowed.iter().any(|entry| {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        if let (Some(ip), Ok(e)) = (ip, bare.parse::<IpAddr>()) {
            return ip == e;
        }
        if ip.is_some() {
            return false;
        }
        match entry.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => name == entry,
        }
    })
}

/// Check a URL before fetching it (and each redirect target): scheme, credentials,
/// allow-list and literal IP addresses. Names are checked when resolved, by
/// [`GuardedResolver`].
pub fn check_url(url: &Url, policy: &UrlPolicy) -> Result<(), UrlError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(UrlError::Scheme {
                scheme: other.to_string(),
            });
        }
    }
    let host = url.host().ok_or(UrlError::NoHost)?;
    let label = host_label(url);
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo { host: label });
    }
    if let Some(allowed) = &policy.allowed_hosts
        && !host_allowed(&host, allowed)
    {
        return Err(UrlError::HostNotAllowed { host: label });
    }
    match host {
        Host::Ipv4(ip) => check_ip(&label, IpAddr::V4(ip), policy),
        Host::Ipv6(ip) => check_ip(&label, IpAddr::V6(ip), policy),
        Host::Domain(d) => match d.trim_end_matches('.').parse::<IpAddr>() {
            // Not reachable for http(s) (the url crate parses IPv4 hosts), but cheap.
            Ok(ip) => check_ip(&label, ip, policy),
            Err(_) => Ok(()),
        },
    }
}

/// The decision of [`redirect_policy`] for a redirect to `next` after `previous` (the
/// original URL first): at most [`MAX_REDIRECTS`], never https to http, and `next` must
/// pass [`check_url`].
pub fn check_redirect(next: &Url, previous: &[Url], policy: &UrlPolicy) -> Result<(), UrlError> {
    if previous.len() > MAX_REDIRECTS {
        return Err(UrlError::TooManyRedirects {
            to: host_label(next),
        });
    }
    if next.scheme() != "https"
        && let Some(secure) = previous.iter().rev().find(|u| u.scheme() == "https")
    {
        return Err(UrlError::Downgrade {
            from: host_label(secure),
            to: host_label(next),
        });
    }
    check_url(next, policy)
}

/// reqwest redirect policy applying [`check_redirect`] to every hop.
pub fn redirect_policy(policy: Arc<UrlPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match check_redirect(attempt.url(), attempt.previous(), &policy) {
            Ok(()) => attempt.follow(),
            Err(e) => {
                tracing::warn!(error = %e, "redirect refused");
                attempt.error(e)
            }
        }
    })
}

/// A resolver (for `reqwest::ClientBuilder::dns_resolver`) that resolves with the system
/// resolver and keeps only addresses the policy allows; a name left with none fails.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<UrlPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<UrlPolicy>) -> Self {
        GuardedResolver { policy }
    }

    /// Resolve `host` and filter its addresses (port 0: the caller sets the port).
    pub async fn lookup(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, 0)],
            Err(_) => tokio::net::lookup_host((bare, 0)).await?.collect(),
        };
        let mut kept = Vec::new();
        let mut first_refusal = None;
        for addr in found {
            match check_ip(host, addr.ip(), &self.policy) {
                Ok(()) => kept.push(addr),
                Err(e) => {
                    tracing::warn!(host, addr = %addr.ip(), "dropping a forbidden address");
                    first_refusal.get_or_insert(e);
                }
            }
        }
        if kept.is_empty() {
            return Err(Box::new(first_refusal.unwrap_or(UrlError::NoAddress {
                host: host.to_string(),
            })));
        }
        Ok(kept)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guarded client for URL sources: guarded resolver and redirects, no Referer, connect
/// timeout 15 s, read timeout 120 s, optional total timeout, `ca` added to the system roots.
/// The URL itself must still pass [`check_url`] before it is requested.
pub fn client(
    policy: Arc<UrlPolicy>,
    ca: Option<Vec<reqwest::Certificate>>,
) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .user_agent(USER_AGENT)
        .referer(false)
        .redirect(redirect_policy(policy.clone()))
        .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())));
    if !policy.use_env_proxy {
        builder = builder.no_proxy();
    }
    if let Some(t) = policy.total_timeout {
        builder = builder.timeout(t);
    }
    if let Some(certs) = ca {
        builder = builder.tls_certs_merge(certs);
    }
    builder.build()
}

/// The [`UrlError`] somewhere in an error's chain (a refused name, redirect or body).
pub fn guard_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a UrlError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(u) = err.downcast_ref::<UrlError>() {
            return Some(u);
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(u) = io.get_ref().and_then(|i| i.downcast_ref::<UrlError>())
        {
            return Some(u);
        }
        cur = err.source();
    }
    None
}

/// A reqwest error as text, without the URL's query string or userinfo. A guard refusal
/// is shown alone.
pub fn describe(e: &reqwest::Error) -> String {
    if let Some(u) = guard_error(e) {
        return u.to_string();
    }
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), &redact(url));
    }
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        let part = x.to_string();
        if !s.ends_with(&part) {
            s = format!("{s}: {part}");
        }
        src = x.source();
    }
    s
}

/// Bound a body stream to `limit` bytes: past it, the stream yields an error (an
/// `io::Error` wrapping [`UrlError::TooLarge`]) and ends. reqwest errors become
/// `io::Error`s carrying [`describe`]'s text (no query string), `TimedOut` for timeouts.
pub fn limit_stream<S>(
    stream: S,
    limit: Option<u64>,
    host: String,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
{
    let mut seen: u64 = 0;
    let mut done = false;
    stream
        .map(move |item| match item {
            Ok(chunk) => {
                seen = seen.saturating_add(chunk.len() as u64);
                match limit {
                    Some(limit) if seen > limit => Err(io::Error::other(UrlError::TooLarge {
                        host: host.clone(),
                        limit,
                    })),
                    _ => Ok(chunk),
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    io::ErrorKind::TimedOut
                } else {
                    io::ErrorKind::Other
                };
                Err(io::Error::new(kind, describe(&e)))
            }
        })
        .take_while(move |item| {
            let go = !done;
            done |= item.is_err();
            futures::future::ready(go)
        })
}

/// The body of a successful response as a blocking reader (read it on a blocking thread
/// inside the Tokio runtime), bounded by `policy.max_bytes`: an announced
/// `Content-Length` above the limit is refused at once.
pub fn body_reader(
    resp: reqwest::Response,
    policy: &UrlPolicy,
) -> Result<Box<dyn Read + Send>, UrlError> {
    let host = host_label(resp.url());
    if let (Some(limit), Some(length)) = (policy.max_bytes, resp.content_length())
        && length > limit
    {
        return Err(UrlError::TooLargeAnnounced {
            host,
            length,
            limit,
        });
    }
    let stream = limit_stream(resp.bytes_stream(), policy.max_bytes, host);
    let reader = tokio_util::io::StreamReader::new(Box::pin(stream));
    Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)))
}

#[cfg(test)]
mod loopback_tests {
    use super::*;

    #[test]
    fn loopback_is_its_own_switch() {
        let worker = UrlPolicy {
            allow_loopback: false,
            ..UrlPolicy::default()
        };
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(check_ip("h", ip, &worker).is_err(), "{ip}");
            assert!(check_ip("h", ip, &UrlPolicy::default()).is_ok(), "{ip}");
        }
        // Private stays allowed without loopback.
        assert!(check_ip("h", "10.1.2.3".parse().unwrap(), &worker).is_ok());
    }
}
