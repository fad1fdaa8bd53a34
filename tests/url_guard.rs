//! SSRF guards for URL sources: literal addresses in every spelling, names resolving to
//! forbidden addresses, redirects (downgrades, credentials, forbidden hops) and body limits.
//! Network tests use loopback servers on 127.0.0.1 only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imageimport::pipeline::url_guard::*;
use url::Url;

fn url(s: &str) -> Url {
    Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn everything_allowed() -> UrlPolicy {
    UrlPolicy {
        allow_private: true,
        allow_link_local: true,
        allow_metadata: true,
        ..UrlPolicy::default()
    }
}

fn no_private() -> UrlPolicy {
    UrlPolicy {
        allow_private: false,
        ..UrlPolicy::default()
    }
}

// ---------------------------------------------------------------------------------------
// Literal addresses

#[test]
fn the_url_crate_normalizes_every_ipv4_spelling() {
    for s in [
        "http://169.254.169.254/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://0xA9FEA9FE/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://169.0376.0xa9fe/",
        "http://169.254.169.254./",
        "http://%31%36%39.254.169.254/",
        // Full-width digits (IDNA maps them to ASCII before the IPv4 parse).
        "http://\u{ff11}\u{ff16}\u{ff19}.254.169.254/",
    ] {
        let u = url(s);
        assert_eq!(
            u.host(),
            Some(url::Host::Ipv4("169.254.169.254".parse().unwrap())),
            "{s}"
        );
    }
}

#[test]
fn every_spelling_of_the_metadata_address_is_refused() {
    let spellings = [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://0xa9fea9fe/",
        "http://0251.0376.0251.0376/",
        "http://169.254.43518/",
        "http://169.254.169.254./",
        "https://169.254.169.254:443/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[0:0:0:0:0:ffff:169.254.169.254]/",
        "http://[::169.254.169.254]/",
        "http://[::ffff:0:169.254.169.254]/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[64:ff9b:1::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[fd00:ec2::254]/",
        "http://[fd00:ec2::23]/",
        "http://[fe80::1]/",
        "http://[fe80::a9fe:a9fe]/",
        "http://169.254.170.2/v2/credentials",
        "http://169.254.170.23/v1/credentials",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/",
        "http://168.63.129.16/",
        "http://169.254.0.1/",
    ];
    for s in spellings {
        for policy in [
            UrlPolicy::default(),
            // Private ranges allowed do not open link-local or metadata (fd00:ec2::254 is
            // inside fc00::/7).
            UrlPolicy {
                allow_private: true,
                ..UrlPolicy::default()
            },
        ] {
            match check_url(&url(s), &policy) {
                Err(UrlError::Forbidden { kind, .. }) => assert!(
                    matches!(kind, AddressKind::LinkLocal | AddressKind::Metadata),
                    "{s}: {kind}"
                ),
                other => panic!("{s}: {other:?}"),
            }
        }
    }
}

#[test]
fn metadata_needs_its_own_flag_and_link_local_its_own() {
    let link_local_only = UrlPolicy {
        allow_link_local: true,
        ..UrlPolicy::default()
    };
    let metadata_only = UrlPolicy {
        allow_metadata: true,
        ..UrlPolicy::default()
    };
    let imds = url("http://169.254.169.254/");
    assert!(matches!(
        check_url(&imds, &link_local_only),
        Err(UrlError::Forbidden {
            kind: AddressKind::Metadata,
            ..
        })
    ));
    assert!(matches!(
        check_url(&imds, &metadata_only),
        Err(UrlError::Forbidden {
            kind: AddressKind::LinkLocal,
            ..
        })
    ));
    assert_eq!(check_url(&imds, &everything_allowed()), Ok(()));
    // Plain link-local needs only its flag.
    assert_eq!(
        check_url(&url("http://169.254.10.10/"), &link_local_only),
        Ok(())
    );
    assert_eq!(
        check_url(&url("http://[fe80::1]/"), &link_local_only),
        Ok(())
    );
    // IPv6 metadata is not link-local: its flag is enough.
    assert_eq!(
        check_url(&url("http://[fd00:ec2::254]/"), &metadata_only),
        Ok(())
    );
    // An embedded address is as good as the address itself.
    assert!(check_url(&url("http://[::ffff:169.254.169.254]/"), &link_local_only).is_err());
    assert_eq!(
        check_url(
            &url("http://[::ffff:169.254.169.254]/"),
            &everything_allowed()
        ),
        Ok(())
    );
}

#[test]
fn unspecified_multicast_broadcast_and_reserved_are_always_refused() {
    for s in [
        "http://0.0.0.0/",
        "http://0/",
        "http://0.1.2.3/",
        "http://[::]/",
        "http://[::ffff:0.0.0.0]/",
        "http://224.0.0.1/",
        "http://239.255.255.250/",
        "http://[ff02::1]/",
        "http://255.255.255.255/",
        "http://4294967295/",
        "http://240.0.0.1/",
    ] {
        match check_url(&url(s), &everything_allowed()) {
            Err(UrlError::Forbidden { kind, .. }) => assert!(
                matches!(
                    kind,
                    AddressKind::Unspecified
                        | AddressKind::Multicast
                        | AddressKind::Broadcast
                        | AddressKind::Reserved
                ),
                "{s}: {kind}"
            ),
            other => panic!("{s}: {other:?}"),
        }
    }
}

#[test]
fn private_and_loopback_are_allowed_by_default_and_can_be_refused() {
    for s in [
        "http://10.0.0.1/a.tar",
        "http://172.16.5.4/",
        "http://192.168.1.10:8080/",
        "http://100.64.0.1/",
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://127.1/",
        "http://[::1]/",
        "http://[fd12:3456::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[2002:0a00:0001::1]/",
    ] {
        assert_eq!(check_url(&url(s), &UrlPolicy::default()), Ok(()), "{s}");
        match check_url(&url(s), &no_private()) {
            Err(UrlError::Forbidden { kind, .. }) => assert!(
                matches!(kind, AddressKind::Private | AddressKind::Loopback),
                "{s}: {kind}"
            ),
            other => panic!("{s}: {other:?}"),
        }
    }
}

#[test]
fn public_addresses_and_names_pass_the_static_check() {
    for s in [
        "https://93.184.215.14/",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
        "https://example.com/archive.tar?X-Amz-Signature=abc",
        "http://artifacts.internal:8080/a.tar.gz",
        // Names are judged when resolved, not here.
        "http://metadata.google.internal/",
    ] {
        assert_eq!(check_url(&url(s), &no_private()), Ok(()), "{s}");
    }
}

#[test]
fn classify_is_exact_at_range_edges() {
    let k = |s: &str| classify(s.parse::<IpAddr>().unwrap());
    assert_eq!(k("169.253.255.255"), AddressKind::Public);
    assert_eq!(k("169.254.0.0"), AddressKind::LinkLocal);
    assert_eq!(k("169.255.0.0"), AddressKind::Public);
    assert_eq!(k("100.63.255.255"), AddressKind::Public);
    assert_eq!(k("100.64.0.0"), AddressKind::Private);
    assert_eq!(k("100.127.255.255"), AddressKind::Private);
    assert_eq!(k("100.128.0.0"), AddressKind::Public);
    assert_eq!(k("172.15.255.255"), AddressKind::Public);
    assert_eq!(k("172.32.0.0"), AddressKind::Public);
    assert_eq!(k("fbff::1"), AddressKind::Public);
    assert_eq!(k("fc00::1"), AddressKind::Private);
    assert_eq!(k("febf::1"), AddressKind::LinkLocal);
    assert_eq!(k("fec0::1"), AddressKind::Private);
    assert_eq!(k("fd00:ec2::254"), AddressKind::Metadata);
    assert_eq!(k("fd00:ec2::255"), AddressKind::Private);
}

// ---------------------------------------------------------------------------------------
// Scheme, credentials, allow-list, messages

#[test]
fn only_http_and_https() {
    for s in [
        "file:///etc/passwd",
        "ftp://example.com/a.tar",
        "gopher://example.com/",
    ] {
        assert!(
            matches!(
                check_url(&url(s), &UrlPolicy::default()),
                Err(UrlError::Scheme { .. })
            ),
            "{s}"
        );
    }
}

#[test]
fn credentials_in_the_url_are_refused_and_never_shown() {
    for s in [
        "https://user:s3cret@example.com/a.tar?token=t0ken",
        "https://user@example.com/a.tar",
        "https://:s3cret@example.com/a.tar",
    ] {
        let err = check_url(&url(s), &UrlPolicy::default()).unwrap_err();
        assert!(matches!(err, UrlError::UserInfo { .. }), "{s}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("example.com"), "{msg}");
        assert!(
            !msg.contains("s3cret") && !msg.contains("user") && !msg.contains("t0ken"),
            "{msg}"
        );
    }
}

#[test]
fn messages_name_the_host_but_not_the_query() {
    let err = check_url(
        &url("http://169.254.169.254/latest/meta-data/iam?token=t0ken"),
        &UrlPolicy::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("169.254.169.254"), "{msg}");
    assert!(msg.contains("never allowed"), "{msg}");
    assert!(
        !msg.contains("allow_"),
        "no policy field a user cannot set: {msg}"
    );
    assert!(
        !msg.contains("t0ken") && !msg.contains("meta-data"),
        "{msg}"
    );
    assert_eq!(
        redact(&url("https://u:p@example.com:8443/x/a.tar?sig=abc#frag")),
        "https://example.com:8443/x/a.tar"
    );
}

#[test]
fn the_allow_list_matches_exact_names_suffixes_and_addresses() {
    let policy = UrlPolicy {
        allowed_hosts: Some(vec![
            "artifacts.example.com".into(),
            "*.mirror.example.org".into(),
            "10.1.2.3".into(),
            "[fd12::5]".into(),
        ]),
        ..UrlPolicy::default()
    };
    for s in [
        "https://artifacts.example.com/a.tar",
        "https://ARTIFACTS.example.com./a.tar",
        "https://eu.mirror.example.org/a.tar",
        "https://a.b.mirror.example.org/a.tar",
        "http://10.1.2.3:8080/a.tar",
        "http://[fd12::5]/a.tar",
    ] {
        assert_eq!(check_url(&url(s), &policy), Ok(()), "{s}");
    }
    for s in [
        "https://example.com/a.tar",
        "https://mirror.example.org/a.tar",
        "https://evilmirror.example.org/a.tar",
        "https://artifacts.example.com.evil.net/a.tar",
        "https://xartifacts.example.com/a.tar",
        "http://10.1.2.4/a.tar",
    ] {
        let r = check_url(&url(s), &policy);
        assert!(
            matches!(r, Err(UrlError::HostNotAllowed { .. })),
            "{s}: {r:?}"
        );
    }
    // 10.1.2.3 spelled as one number is still 10.1.2.3.
    assert_eq!(check_url(&url("http://167838211/a.tar"), &policy), Ok(()));
    // The allow-list never opens forbidden addresses.
    let policy = UrlPolicy {
        allowed_hosts: Some(vec!["169.254.169.254".into()]),
        ..UrlPolicy::default()
    };
    assert!(matches!(
        check_url(&url("http://169.254.169.254/"), &policy),
        Err(UrlError::Forbidden { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Redirect decisions

#[test]
fn redirects_never_downgrade_from_https() {
    let p = UrlPolicy::default();
    let start = url("https://a.example.com/a.tar?sig=x");
    let err = check_redirect(
        &url("http://b.example.com/a.tar"),
        std::slice::from_ref(&start),
        &p,
    )
    .unwrap_err();
    assert!(matches!(err, UrlError::Downgrade { .. }), "{err:?}");
    assert!(!err.to_string().contains("sig="), "{err}");
    // Same host, same path: still a downgrade.
    assert!(
        check_redirect(
            &url("http://a.example.com/a.tar"),
            std::slice::from_ref(&start),
            &p
        )
        .is_err()
    );
    // Once https, never back, even after several hops.
    let hops = [
        url("http://a.example.com/"),
        url("https://b.example.com/"),
        url("https://c.example.com/"),
    ];
    assert!(matches!(
        check_redirect(&url("http://d.example.com/"), &hops, &p),
        Err(UrlError::Downgrade { .. })
    ));
    // Upgrades and https→https are fine.
    assert_eq!(
        check_redirect(
            &url("https://b.example.com/"),
            &[url("http://a.example.com/")],
            &p
        ),
        Ok(())
    );
    assert_eq!(
        check_redirect(&url("https://b.example.com/"), &[start], &p),
        Ok(())
    );
}

#[test]
fn at_most_five_redirects() {
    let p = UrlPolicy::default();
    let next = url("https://example.com/next");
    let chain: Vec<Url> = (0..7)
        .map(|i| url(&format!("https://example.com/{i}")))
        .collect();
    // previous = the original URL plus the redirects already followed.
    for followed in 0..5 {
        assert_eq!(
            check_redirect(&next, &chain[..followed + 1], &p),
            Ok(()),
            "{followed}"
        );
    }
    assert!(matches!(
        check_redirect(&next, &chain[..6], &p),
        Err(UrlError::TooManyRedirects { .. })
    ));
}

#[test]
fn redirect_targets_are_checked_like_urls() {
    let p = UrlPolicy::default();
    let prev = [url("http://a.example.com/")];
    for s in [
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://user:pw@b.example.com/",
        "ftp://b.example.com/",
    ] {
        assert!(check_redirect(&url(s), &prev, &p).is_err(), "{s}");
    }
}

// ---------------------------------------------------------------------------------------
// Loopback servers

/// What a test server saw of one request.
#[derive(Debug, Clone, Default)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Respond = Arc<dyn Fn(&Seen, &mut TcpStream) + Send + Sync>;

/// A tiny HTTP/1.1 server on 127.0.0.1: one response per connection, records requests.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(respond: Respond) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((n, v)) = h.trim_end().split_once(':') {
                            headers.push((n.trim().to_string(), v.trim().to_string()));
                        }
                    }
                    let s = Seen { path, headers };
                    log.lock().unwrap().push(s.clone());
                    respond(&s, &mut conn);
                    let _ = conn.flush();
                });
            }
        });
        Server { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn redirect_to(location: String) -> Respond {
    Arc::new(move |_, conn| {
        let _ = write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    })
}

fn ok_body(body: &'static [u8], announce_length: bool) -> Respond {
    Arc::new(move |_, conn| {
        let head = if announce_length {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
        } else {
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string()
        };
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
    })
}

fn guarded(policy: UrlPolicy) -> reqwest::Client {
    client(Arc::new(policy), None).expect("client")
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_private_is_allowed() {
    let server = Server::start(ok_body(b"hello", true));
    let target = url(&format!("http://localhost:{}/a.tar", server.port));

    // The static check cannot know where a name leads.
    assert_eq!(check_url(&target, &no_private()), Ok(()));
    let err = guarded(no_private())
        .get(target.clone())
        .send()
        .await
        .expect_err("localhost must be refused");
    let guard = guard_error(&err).unwrap_or_else(|| panic!("not a guard error: {err:?}"));
    assert!(
        matches!(
            guard,
            UrlError::Forbidden {
                kind: AddressKind::Loopback,
                ..
            }
        ),
        "{guard:?}"
    );
    let msg = describe(&err);
    assert!(
        msg.contains("localhost") && msg.contains("loopback"),
        "{msg}"
    );
    assert!(server.seen().is_empty(), "the server was reached");

    // The resolver on its own.
    let resolver = GuardedResolver::new(Arc::new(no_private()));
    assert!(resolver.lookup("localhost").await.is_err());
    let resolver = GuardedResolver::new(Arc::new(UrlPolicy::default()));
    let addrs = resolver.lookup("localhost").await.expect("allowed");
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");

    let resp = guarded(UrlPolicy::default())
        .get(target)
        .send()
        .await
        .expect("allowed by default");
    assert_eq!(resp.text().await.unwrap(), "hello");
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn a_redirect_hop_to_a_forbidden_name_is_refused_at_resolution() {
    // The first URL is a literal loopback address (a caller would have rejected it with
    // check_url; here it shows that the hop is checked by the client on its own).
    let target = Server::start(ok_body(b"secret", true));
    let start = Server::start(redirect_to(format!("http://localhost:{}/x", target.port)));
    let err = guarded(no_private())
        .get(format!("http://127.0.0.1:{}/a.tar", start.port))
        .send()
        .await
        .expect_err("hop to localhost must be refused");
    assert!(
        matches!(guard_error(&err), Some(UrlError::Forbidden { .. })),
        "{err:?}"
    );
    assert_eq!(start.seen().len(), 1);
    assert!(target.seen().is_empty(), "the redirect target was reached");
}

#[tokio::test]
async fn a_redirect_to_the_metadata_address_is_refused_before_connecting() {
    for location in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
    ] {
        let start = Server::start(redirect_to(location.to_string()));
        let err = guarded(UrlPolicy::default())
            .get(format!("http://127.0.0.1:{}/a.tar?token=t0ken", start.port))
            .send()
            .await
            .expect_err("must be refused");
        let guard = guard_error(&err).unwrap_or_else(|| panic!("{location}: {err:?}"));
        assert!(matches!(guard, UrlError::Forbidden { .. }), "{guard:?}");
        let msg = describe(&err);
        assert!(!msg.contains("t0ken"), "{msg}");
    }
}

#[tokio::test]
async fn credentials_are_not_forwarded_to_another_port_and_referer_is_not_sent() {
    let other = Server::start(ok_body(b"archive", true));
    // Same IP, different port: a different origin for reqwest.
    let start = Server::start(redirect_to(format!(
        "http://127.0.0.1:{}/b.tar",
        other.port
    )));
    let resp = guarded(UrlPolicy::default())
        .get(format!(
            "http://127.0.0.1:{}/a.tar?sig=s1gnature",
            start.port
        ))
        .header(reqwest::header::AUTHORIZATION, "Bearer s3cret")
        .send()
        .await
        .expect("redirect followed");
    assert_eq!(resp.text().await.unwrap(), "archive");
    let first = start.seen();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].header("authorization"), Some("Bearer s3cret"));
    let second = other.seen();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].path, "/b.tar");
    assert_eq!(second[0].header("authorization"), None, "{second:?}");
    assert_eq!(second[0].header("referer"), None, "{second:?}");
    assert_eq!(
        second[0].header("user-agent"),
        Some(USER_AGENT),
        "{second:?}"
    );
}

#[tokio::test]
async fn credentials_are_kept_on_a_same_origin_redirect() {
    // The control for the test above: the header is there when it should be.
    let respond: Respond = Arc::new(|seen, conn| {
        if seen.path == "/final" {
            ok_body(b"archive", true)(seen, conn)
        } else {
            let _ = write!(
                conn,
                "HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let server = Server::start(respond);
    let resp = guarded(UrlPolicy::default())
        .get(format!("http://127.0.0.1:{}/a.tar", server.port))
        .header(reqwest::header::AUTHORIZATION, "Bearer s3cret")
        .send()
        .await
        .expect("redirect followed");
    assert_eq!(resp.text().await.unwrap(), "archive");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/final");
    assert_eq!(seen[1].header("authorization"), Some("Bearer s3cret"));
}

#[tokio::test]
async fn more_than_five_redirects_are_refused() {
    let respond: Respond = Arc::new(|seen, conn| {
        let n: u32 = seen.path.trim_start_matches('/').parse().unwrap_or(0);
        let _ = write!(
            conn,
            "HTTP/1.1 302 Found\r\nLocation: /{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            n + 1
        );
    });
    let server = Server::start(respond);
    let err = guarded(UrlPolicy::default())
        .get(format!("http://127.0.0.1:{}/0", server.port))
        .send()
        .await
        .expect_err("loop");
    assert!(
        matches!(guard_error(&err), Some(UrlError::TooManyRedirects { .. })),
        "{err:?}"
    );
    // The original request and five redirects.
    assert_eq!(server.seen().len(), 6);
}

const BIG: &[u8] = &[b'x'; 1000];

async fn read_all(resp: reqwest::Response, policy: UrlPolicy) -> Result<Vec<u8>, String> {
    let reader = body_reader(resp, &policy).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        reader
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_body_over_the_limit_is_cut_with_a_clear_error() {
    let limit = |n| UrlPolicy {
        max_bytes: Some(n),
        ..UrlPolicy::default()
    };
    // Announced: refused before reading.
    let server = Server::start(ok_body(BIG, true));
    let resp = guarded(limit(100))
        .get(format!("http://127.0.0.1:{}/a.tar", server.port))
        .send()
        .await
        .unwrap();
    let err = read_all(resp, limit(100)).await.unwrap_err();
    assert_eq!(
        err,
        "127.0.0.1:".to_string()
            + &server.port.to_string()
            + " announced 1000 bytes, more than the limit of 100"
    );

    // Not announced: cut while reading.
    let server = Server::start(ok_body(BIG, false));
    let resp = guarded(limit(100))
        .get(format!("http://127.0.0.1:{}/a.tar?sig=s1g", server.port))
        .send()
        .await
        .unwrap();
    let err = read_all(resp, limit(100)).await.unwrap_err();
    assert_eq!(
        err,
        format!(
            "127.0.0.1:{} sent more than 100 bytes (the limit)",
            server.port
        )
    );

    // Exactly at the limit, and without a limit: all of it.
    for (policy, announce) in [
        (limit(1000), false),
        (limit(1000), true),
        (UrlPolicy::default(), false),
    ] {
        let server = Server::start(ok_body(BIG, announce));
        let resp = guarded(policy.clone())
            .get(format!("http://127.0.0.1:{}/a.tar", server.port))
            .send()
            .await
            .unwrap();
        assert_eq!(read_all(resp, policy).await.unwrap(), BIG);
    }
}

#[tokio::test]
async fn the_total_timeout_covers_the_body() {
    let respond: Respond = Arc::new(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        for _ in 0..1000 {
            if conn.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let server = Server::start(respond);
    let policy = UrlPolicy {
        total_timeout: Some(Duration::from_millis(500)),
        ..UrlPolicy::default()
    };
    let started = std::time::Instant::now();
    // On a loaded machine the deadline may pass before the headers: then send() fails.
    let err = match guarded(policy.clone())
        .get(format!("http://127.0.0.1:{}/a.tar?sig=s1g", server.port))
        .send()
        .await
    {
        Ok(resp) => read_all(resp, policy).await.unwrap_err(),
        Err(e) => {
            assert!(e.is_timeout(), "{e:?}");
            describe(&e)
        }
    };
    // The body alone takes 20 s to arrive: failing well before that shows the deadline covers it.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        err.contains("timed out") || err.contains("timeout"),
        "{err}"
    );
    assert!(!err.contains("s1g"), "{err}");
}
