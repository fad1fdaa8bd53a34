//! End-to-end: failures of the `imageimport` binary that retrying cannot fix end at once,
//! with a permanent exit code and a message that says what to do.

mod support;

use support::archives::{self, Format, ImageSpec};
use support::cli::run;
use support::registry::Registry;

/// EX_TEMPFAIL: the CLI's exit code for a failure worth trying again later.
const TRANSIENT: i32 = 75;

#[test]
fn an_untrusted_registry_certificate_is_permanent() {
    let reg = Registry::tls_htpasswd();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["app:1"],
            vec![archives::layer(70, 2, 30_000)],
        )],
    );
    let path = archives::write_to(dir.path(), "app.tar", &built.bytes);
    let auth = reg.auth_file.clone().unwrap();
    // Credentials, but not the CA that signed the registry's certificate.
    let out = run(&[
        "push",
        "-q",
        "--auth-file",
        auth.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("secure/app"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        code.is_some_and(|c| c != 0 && c != TRANSIENT),
        "exit {code:?}: {err}"
    );
    assert!(err.contains("certificate is not trusted"), "{err}");
    assert!(err.contains("--ca-file"), "says how to fix it: {err}");
    // Not retried: no backoff warnings, and no more than a couple of handshakes (the
    // credentials check and whichever request runs beside it), where retrying makes six
    // per request.
    assert!(!err.contains("retrying"), "{err}");
    let handshakes = reg.log().matches("TLS handshake error").count();
    assert!(
        (1..=3).contains(&handshakes),
        "{handshakes} refused handshakes in the registry log:\n{}",
        reg.log()
    );
    assert!(reg.tags("secure/app").is_empty(), "nothing is tagged");
}

/// A URL download that breaks off halfway is the source's failure, worth retrying (exit 75,
/// reason SourceUnavailable in the operator), not an invalid archive; nothing is tagged.
#[test]
fn a_download_that_breaks_off_is_transient_not_an_invalid_archive() {
    use std::io::{Read as _, Write as _};
    let reg = Registry::plain();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["app:1"],
            vec![archives::layer(71, 2, 300_000)],
        )],
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = built.bytes.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = conn.read(&mut request);
        // The whole length announced, half of it sent, then the connection closes.
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(&body[..body.len() / 2]);
    });
    let url = format!("http://127.0.0.1:{port}/app.tar");
    let out = run(&["push", "--insecure", "-q", &url, &reg.reference("broken")]);
    server.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(TRANSIENT), "{err}");
    assert!(err.contains("broke off"), "{err}");
    assert!(reg.tags("broken").is_empty(), "nothing tagged");
}
