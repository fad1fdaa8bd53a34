//! Where a registry may send us besides itself: the token realm of its `WWW-Authenticate`
//! challenge (oci-client GETs it, with the Basic credentials) and the storage a blob GET
//! redirects to. Both URLs are the registry's choice, so a hostile registry could aim the
//! worker at what the URL guard protects: the same address classes are refused here
//! ([`url_guard::check_ip`]): cloud metadata always, link-local unless allowed (the URL
//! sources' switch), unspecified/multicast/broadcast/reserved always. Loopback and private
//! addresses stay allowed, as for the registry itself. The registry's own host is exempt: it
//! was accepted already.

use std::sync::Arc;

use reqwest::Url;

use super::error::RegistryError;
use crate::pipeline::url_guard::{self, UrlPolicy};

/// The policy for addresses a registry sends us to.
pub(super) fn policy(allow_link_local: bool) -> Arc<UrlPolicy> {
    Arc::new(UrlPolicy {
        allow_private: true,
        allow_loopback: true,
        allow_link_local,
        allow_metadata: false,
        allowed_hosts: None,
        max_bytes: None,
        total_timeout: None,
        // As the registry client: a proxy from the environment is used (names it resolves
        // are then its business), hosts reached directly go through the guarded resolver.
        use_env_proxy: true,
    })
}

fn refused(registry: &str, what: &str, detail: impl std::fmt::Display) -> RegistryError {
    RegistryError::Refused {
        registry: registry.to_string(),
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// Whether `url` (a realm or a redirect target `registry` named) may be fetched: scheme,
/// literal addresses, and every address its name resolves to now. Refusals are permanent.
pub(super) async fn check(
    registry: &str,
    what: &str,
    url: &Url,
    policy: &UrlPolicy,
) -> Result<(), RegistryError> {
    if same_host(registry, url) {
        return Ok(());
    }
    url_guard::check_url(url, policy).map_err(|e| refused(registry, what, e))?;
    let Some(url::Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    // Unresolvable: the request itself fails and says so.
    let Ok(addrs) = tokio::net::lookup_host((name, port)).await else {
        return Ok(());
    };
    for a in addrs {
        url_guard::check_ip(name, a.ip(), policy).map_err(|e| refused(registry, what, e))?;
    }
    Ok(())
}

/// `url` names the registry's own `host[:port]`.
fn same_host(registry: &str, url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let shown = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    shown.eq_ignore_ascii_case(registry)
}

/// The realm of the first Bearer challenge in `WWW-Authenticate`, read with the parser
/// oci-client uses (http-auth), so both see the same realm.
pub(super) fn bearer_realm(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers
        .get(reqwest::header::WWW_AUTHENTICATE)?
        .to_str()
        .ok()?;
    // As oci-client: the first Bearer challenge that has a realm; its last realm counts.
    http_auth::ChallengeParser::new(value)
        .filter_map(Result::ok)
        .filter(|c| c.scheme.eq_ignore_ascii_case("Bearer"))
        .find_map(|c| {
            c.params
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
                .map(|(_, v)| v.to_unescaped())
        })
}

/// Parse a realm as oci-client would request it (reqwest parses the string it is given).
pub(super) fn realm_url(registry: &str, realm: &str) -> Result<Url, RegistryError> {
    Url::parse(realm).map_err(|e| refused(registry, "token realm", format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::WWW_AUTHENTICATE, v.parse().unwrap());
        h
    }

    #[test]
    fn the_bearer_realm_is_read_as_oci_client_reads_it() {
        assert_eq!(
            bearer_realm(&headers(
                r#"Bearer realm="https://auth.example/token",service="reg""#
            ))
            .as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(
            bearer_realm(&headers(
                r#"Basic realm="x", Bearer service="s", realm="http://169.254.169.254/t""#
            ))
            .as_deref(),
            Some("http://169.254.169.254/t")
        );
        assert_eq!(bearer_realm(&headers(r#"Basic realm="registry""#)), None);
    }

    #[tokio::test]
    async fn realms_and_redirects_at_metadata_or_link_local_addresses_are_refused() {
        let p = policy(false);
        for u in [
            "http://169.254.169.254/token",
            "http://[fd00:ec2::254]/token",
            "http://169.254.3.4:8080/blob",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:5000/",
            "file:///etc/passwd",
        ] {
            let url = Url::parse(u).unwrap();
            let e = check("reg.example:5000", "token realm", &url, &p).await;
            assert!(
                matches!(e, Err(RegistryError::Refused { .. })),
                "{u}: {e:?}"
            );
            assert!(!e.unwrap_err().is_transient());
        }
        let link_local_ok = policy(true);
        let url = Url::parse("http://169.254.3.4:8080/blob").unwrap();
        assert!(check("r:1", "redirect", &url, &link_local_ok).await.is_ok());
        let url = Url::parse("http://169.254.169.254/").unwrap();
        assert!(
            check("r:1", "redirect", &url, &link_local_ok)
                .await
                .is_err()
        );
        for u in [
            "https://auth.example.com/token",
            "http://10.1.2.3/t",
            "http://127.0.0.1:9/t",
        ] {
            let url = Url::parse(u).unwrap();
            assert!(check("r:1", "token realm", &url, &p).await.is_ok(), "{u}");
        }
        // The registry's own host was accepted already.
        let url = Url::parse("http://169.254.3.4:8080/token").unwrap();
        assert!(
            check("169.254.3.4:8080", "token realm", &url, &p)
                .await
                .is_ok()
        );
    }
}
