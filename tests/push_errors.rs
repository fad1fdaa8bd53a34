//! End-to-end: failures of the `imageimport` binary that retrying cannot fix end at once,
//! with a permanent exit code and a message that says what to do.

mod support;

use std::path::Path;

use support::archives::{self, Format, ImageSpec, hostile};
use support::cli::{bin, run};
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

/// Runs the CLI with `args` (stdin from `stdin`, or none) and returns its exit code, stderr
/// and peak resident memory in KiB (`wait4`'s rusage of that one process).
fn run_measured(args: &[&str], stdin: Option<&Path>) -> (Option<i32>, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let child = bin()
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("RUST_LOG")
        .stdin(match stdin {
            Some(p) => std::process::Stdio::from(std::fs::File::open(p).unwrap()),
            None => std::process::Stdio::null(),
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value; wait4 writes it for our own child, which
    // `child` never waits for (it is only dropped).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let err = std::fs::read_to_string(&err_path).unwrap();
    eprintln!("$ imageimport {}\n{err}", args.join(" "));
    (code, err, usage.ru_maxrss as u64)
}

/// A ~600 KB gzip whose PAX header (or GNU long name) claims 600 MiB: refused on that
/// header with a message naming it, before its data is read, with memory bounded (tar-rs
/// alone would read the 600 MiB into memory), through a file and through stdin.
#[test]
fn extension_header_bombs_are_refused_in_bounded_memory() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, what) in [
        (
            "pax-header-bomb",
            hostile::pax_header_bomb(),
            "a PAX header",
        ),
        (
            "long-name-bomb",
            hostile::long_name_bomb(),
            "a GNU long-name header",
        ),
    ] {
        assert!(bytes.len() < 1 << 20, "{name}: {} bytes", bytes.len());
        let path = archives::write_to(dir.path(), &format!("{name}.tar.gz"), &bytes);
        let file = path.to_str().unwrap();
        for stdin in [None, Some(path.as_path())] {
            let target = reg.reference(&format!("bombs/{name}:t"));
            let args = [
                "push",
                "--insecure",
                "-q",
                stdin.map_or(file, |_| "-"),
                &target,
            ];
            let started = std::time::Instant::now();
            let (code, err, peak_kib) = run_measured(&args, stdin);
            eprintln!(
                "{name} (stdin: {}): exit {code:?} after {:?}, peak RSS {} MiB",
                stdin.is_some(),
                started.elapsed(),
                peak_kib >> 10
            );
            assert_eq!(code, Some(1), "a permanent error: {err}");
            let claim = format!("{what} of {} bytes", hostile::BOMB_SIZE);
            assert!(err.contains(&claim), "names the header: {err}");
            assert!(err.contains("65536-byte limit"), "{err}");
            assert!(
                peak_kib < 256 << 10,
                "{name}: peak RSS {} MiB",
                peak_kib >> 10
            );
            assert!(reg.tags(&format!("bombs/{name}")).is_empty());
        }
    }
}
