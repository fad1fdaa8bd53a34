//! Running the `imageimport` binary the way the end-to-end tests do: no ambient docker
//! credentials, no inherited log filter, stdin closed unless a file is given, and what it
//! printed echoed into the test's output.

use std::ffi::OsString;
use std::process::{Command, Output, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imageimport"))
}

/// Runs the CLI with `env` (DOCKER_CONFIG points nowhere unless `env` sets it) and stdin from
/// the file `stdin`, or none.
pub fn run_with(args: &[&str], env: &[(&str, OsString)], stdin: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    match stdin {
        Some(path) => cmd.stdin(std::fs::File::open(path).unwrap()),
        None => cmd.stdin(Stdio::null()),
    };
    let out = cmd.output().unwrap();
    eprintln!(
        "$ imageimport {}{}\n{}{}",
        args.join(" "),
        stdin.map(|p| format!(" < {p}")).unwrap_or_default(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run(args: &[&str]) -> Output {
    run_with(args, &[], None)
}

/// The `REF@DIGEST` lines of a push that must have succeeded.
pub fn lines_of(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

pub fn push_ok(args: &[&str]) -> Vec<String> {
    lines_of(&run(args))
}

/// `host/repo:tag@sha256:…` → (reference, digest)
pub fn split_result(line: &str) -> (&str, &str) {
    line.split_once('@').expect("REF@DIGEST")
}
