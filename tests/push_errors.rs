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

/// A small one-image archive in `dir`.
fn app_archive(dir: &Path, seed: u64) -> std::path::PathBuf {
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["app:1"],
            vec![archives::layer(seed, 2, 20_000)],
        )],
    );
    archives::write_to(dir, "app.tar", &built.bytes)
}

/// A registry on loopback speaking plain HTTP (as every local registry does) takes a push
/// without `--insecure`; with a CA file (TLS asked for) the same registry is a permanent error
/// that names `--insecure`, not 11 s of retries and exit 75.
#[test]
fn a_loopback_registry_speaking_plain_http_needs_no_flag() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let path = app_archive(dir.path(), 72);
    let out = run(&[
        "push",
        "-q",
        path.to_str().unwrap(),
        &reg.reference("local/app"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(reg.tags("local/app"), ["1"]);

    let ca = support::registry::generate_tls(dir.path()).ca_file;
    let out = run(&[
        "push",
        "-q",
        "--ca-file",
        ca.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("tls-asked/app"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "permanent: {err}");
    assert!(
        err.contains("answered the TLS handshake in plain HTTP"),
        "{err}"
    );
    assert!(err.contains("--insecure"), "says what to do: {err}");
    assert!(
        !err.contains("spec.target"),
        "the command's words only: {err}"
    );
    assert!(!err.contains("retrying"), "not retried: {err}");
    assert!(reg.tags("tls-asked/app").is_empty());
}

/// A registry that wants credentials, asked without any: the message says credentials are
/// needed and how to give them (not that they were refused), before the archive is read.
#[test]
fn a_registry_asking_for_credentials_when_none_were_sent_says_how_to_give_them() {
    let reg = Registry::tls_htpasswd();
    let dir = tempfile::tempdir().unwrap();
    let path = app_archive(dir.path(), 73);
    let ca = reg.ca_file.clone().unwrap();
    let out = run(&[
        "push",
        "-q",
        "--ca-file",
        ca.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("needs-auth/app"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "permanent: {err}");
    assert!(err.contains("needs credentials"), "{err}");
    assert!(err.contains("none were given"), "{err}");
    assert!(!err.contains("refused the credentials"), "{err}");
    assert!(
        err.contains(&format!("docker login {}", reg.host)) && err.contains("--auth-file"),
        "says how to give them: {err}"
    );
    assert!(!err.contains("Secret"), "the command's words only: {err}");
    // Nothing was uploaded: the check comes first.
    assert!(
        !reg.requests()
            .iter()
            .any(|r| r.is_client() && r.method != "GET"),
        "{:?}",
        reg.requests()
    );
}

/// A `docker-registry` serving `cert`/`key` on a free loopback port; killed on drop.
struct CertRegistry {
    child: std::process::Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl CertRegistry {
    fn start(cert: &Path, key: &Path) -> CertRegistry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n\
                 http: {{addr: \"127.0.0.1:{port}\", tls: {{certificate: {}, key: {}}}}}\n",
                dir.path().join("storage").display(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let host = format!("127.0.0.1:{port}");
        // Listening: it accepts connections (what it says to TLS is the test).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        CertRegistry {
            child,
            host,
            _dir: dir,
        }
    }
}

impl Drop for CertRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -addext …` into `dir`.
fn self_signed(dir: &Path, name: &str, extra: &[&str]) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The usual self-signed certificate (`openssl req -x509`, CA:TRUE) given as the CA: the
/// message says exactly what is wrong with it and how to make one that works; the certificate
/// it suggests (CA:FALSE) is then accepted.
#[test]
fn a_self_signed_ca_certificate_is_explained_and_the_suggested_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = app_archive(dir.path(), 74);
    let (cert, key) = self_signed(dir.path(), "ca-true", &[]);
    let reg = CertRegistry::start(&cert, &key);
    let out = run(&[
        "push",
        "-q",
        "--ca-file",
        cert.to_str().unwrap(),
        path.to_str().unwrap(),
        &format!("{}/selfsigned/app", reg.host),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "permanent: {err}");
    assert!(err.contains("CA:TRUE") && err.contains("CA:FALSE"), "{err}");
    assert!(err.contains("basicConstraints=critical,CA:FALSE"), "{err}");
    assert!(
        !err.contains("give that CA's certificate"),
        "not the generic hint: {err}"
    );
    drop(reg);

    let (cert, key) = self_signed(
        dir.path(),
        "ca-false",
        &["-addext", "basicConstraints=critical,CA:FALSE"],
    );
    let reg = CertRegistry::start(&cert, &key);
    let out = run(&[
        "push",
        "-q",
        "--ca-file",
        cert.to_str().unwrap(),
        path.to_str().unwrap(),
        &format!("{}/selfsigned/app", reg.host),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the suggested certificate works: {err}"
    );
}

/// Exit status: 2 for usage errors (clap's and ours), documented in `--help` with 75 for
/// transient failures only; `push --help` describes ARCHIVE, TARGET and the compressions.
#[test]
fn exit_codes_and_arguments_are_documented() {
    let out = run(&["push", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for words in [
        "ARCHIVE",
        "TARGET",
        "REGISTRY[:PORT]/REPOSITORY[:TAG]",
        "gzip|zstd|none",
        "Exit status",
        "75",
        "2   usage",
    ] {
        assert!(
            help.contains(words),
            "{words:?} missing from push --help:\n{help}"
        );
    }
    let out = run(&["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status"));
    // clap's usage error, and a TARGET that is not one.
    assert_eq!(
        run(&["push", "--no-such-flag", "a", "b"]).status.code(),
        Some(2)
    );
    let out = run(&["push", "a.tar", "not a target"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port that counts the connections it is offered: where a hostile registry sends
/// the client. `0.0.0.0:<port>` (an unspecified address, which Linux connects to this host)
/// is a forbidden address the test can see being reached.
fn connection_counter() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (port, count)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A registry whose `WWW-Authenticate` challenge names a token realm at a forbidden address
/// (cloud metadata, or an unspecified address that leads to this host): refused before the
/// realm is fetched (oci-client would GET it, with the credentials), a permanent error that
/// names the realm, nothing tagged.
#[test]
fn a_token_realm_at_a_forbidden_address_is_refused_before_it_is_fetched() {
    use support::faults::{Fault, FaultyProxy};
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let path = app_archive(dir.path(), 74);
    let (port, reached) = connection_counter();
    for (realm, kind) in [
        (
            format!("http://0.0.0.0:{port}/token"),
            "unspecified address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "cloud metadata address",
        ),
    ] {
        let proxy = FaultyProxy::start(&reg.base_url());
        proxy.break_every("GET", "/v2/", Fault::Challenge(leak(realm.clone())));
        let target = format!("{}/realm/app", proxy.host());
        let started = std::time::Instant::now();
        let out = run(&["push", "-q", "--insecure", path.to_str().unwrap(), &target]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "permanent: {err}");
        assert!(
            err.contains("token realm") && err.contains(kind),
            "{realm}: {err}"
        );
        assert!(!err.contains("retrying"), "not retried: {err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(
            reached.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the realm was fetched"
        );
        assert!(reg.tags("realm/app").is_empty(), "nothing tagged");
    }
}

/// A registry whose blob GETs redirect to a forbidden address, for the config of the image
/// the tag holds (the look for layers to reuse) and for a layer (the read-back of an
/// up-to-date tag): neither is followed (nothing is reused, the push goes on); one whose
/// config blob is an endless body without Content-Length: read up to its 4 MiB cap, in bounded
/// memory (an address-space limit of 2 GiB stops the run otherwise).
#[test]
fn blob_redirects_and_endless_blobs_of_a_hostile_registry_are_not_followed_or_read_whole() {
    use support::faults::{Fault, FaultyProxy};
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    for d in ["a", "b"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
    }
    let a = app_archive(&dir.path().join("a"), 75);
    let b = app_archive(&dir.path().join("b"), 76);
    let (port, reached) = connection_counter();
    let elsewhere = leak(format!("http://0.0.0.0:{port}/storage"));
    let blobs = |what: &str| {
        let (m, _) = reg.manifest("hostile/app", "1").unwrap();
        let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
        match what {
            "config" => m["config"]["digest"].as_str().unwrap().to_string(),
            _ => m["layers"][0]["digest"].as_str().unwrap().to_string(),
        }
    };
    // Each push through a fresh proxy: `fault` on GETs of `aimed`; the proxy's requests.
    let push = |archive: &Path, aimed: &str, fault: Option<Fault>| {
        let proxy = FaultyProxy::start(&reg.base_url());
        if let Some(f) = fault {
            proxy.break_every("GET", aimed, f);
        }
        let target = format!("{}/hostile/app:1", proxy.host());
        let out = run(&[
            "push",
            "-q",
            "--insecure",
            archive.to_str().unwrap(),
            &target,
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        proxy.seen()
    };
    push(&a, "", None);

    // B over A: A's config is asked for (layers to reuse), and redirected.
    let a_config = blobs("config");
    let seen = push(&b, &a_config, Some(Fault::Redirect(elsewhere)));
    assert!(
        seen.iter()
            .any(|s| s.status == 307 && s.path.contains(&a_config)),
        "the redirect was asked for: {seen:?}"
    );
    // B again: its layer is read back (is the tag up to date?), and redirected.
    let b_layer = blobs("layer");
    let seen = push(&b, &b_layer, Some(Fault::Redirect(elsewhere)));
    assert!(
        seen.iter()
            .any(|s| s.status == 307 && s.path.contains(&b_layer)),
        "the redirect was asked for: {seen:?}"
    );
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a redirect to 0.0.0.0 was followed"
    );

    // A over B, B's config an endless body.
    let b_config = blobs("config");
    let proxy = FaultyProxy::start(&reg.base_url());
    proxy.break_every("GET", &b_config, Fault::EndlessBody);
    let target = format!("{}/hostile/app:1", proxy.host());
    let started = std::time::Instant::now();
    let (code, err, peak_kib) =
        run_limited(&["push", "-q", "--insecure", a.to_str().unwrap(), &target]);
    eprintln!(
        "endless config blob: exit {code:?} after {:?}, peak RSS {} MiB",
        started.elapsed(),
        peak_kib >> 10
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.status == 200 && s.path.contains(&b_config)),
        "the endless body was served: {:?}",
        proxy.seen()
    );
    assert!(peak_kib < 256 << 10, "peak RSS {} MiB", peak_kib >> 10);
}

/// `run` with the address space limited to 2 GiB (a client reading an endless body whole
/// aborts instead of taking the machine's memory); exit code, stderr and peak RSS in KiB.
fn run_limited(args: &[&str]) -> (Option<i32>, String, u64) {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut cmd = bin();
    cmd.args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: as in run_measured.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let err = std::fs::read_to_string(&err_path).unwrap();
    (code, err, usage.ru_maxrss as u64)
}
