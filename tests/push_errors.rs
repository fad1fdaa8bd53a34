//! End-to-end: failures of the `imageimport` binary that retrying cannot fix end at once,
//! with a permanent exit code and a message that says what to do.

mod support;

use std::process::{Command, Output, Stdio};

use support::archives::{self, Format, ImageSpec};
use support::registry::Registry;

/// EX_TEMPFAIL: the CLI's exit code for a failure worth trying again later.
const TRANSIENT: i32 = 75;

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_imageimport"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ imageimport {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

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
