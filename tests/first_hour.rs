//! What a newcomer meets in the first hour, as the README, the examples, the chart's values and
//! `--help` describe it: `inspect --json`, the controller's start and stop, the chart's schema,
//! the example policy against the repository's own examples, and the prerequisite checks.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::archives::{self, Format, ImageSpec, hostile};
use support::cli::{bin, run};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn json_of(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// `--json` means JSON on stdout, also for an archive that cannot be read or a source that is
/// not there; the exit status stays that of the failure.
#[test]
fn inspect_json_prints_json_for_refused_archives_too() {
    let dir = tempfile::tempdir().unwrap();
    let bad = archives::write_to(dir.path(), "bad.tar", &hostile::dotdot_member());
    let out = run(&["inspect", "--json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out.stdout);
    assert_eq!(v["verified"], false);
    assert_eq!(v["error"]["reason"], "InvalidArchive");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("'..'"), "{msg}");
    assert_eq!(v["archive"], bad.to_str().unwrap());

    let missing = dir.path().join("missing.tar");
    let out = run(&["inspect", "--json", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out.stdout)["error"]["reason"], "SourceNotFound");
}

/// A multi-platform archive is one image with its platforms, as it is pushed (one index), not
/// several images with the same tag.
#[test]
fn inspect_shows_a_multi_platform_archive_as_one_index() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        ImageSpec::new(&["multi:1"], vec![archives::layer(80, 1, 500)]),
        ImageSpec::new(&["multi:1"], vec![archives::layer(81, 1, 500)]).platform("linux", "arm64"),
    ];
    let f = Format::ContainerdMultiPlatform {
        present: vec![
            ("linux".into(), "amd64".into()),
            ("linux".into(), "arm64".into()),
        ],
    };
    let built = archives::build(&f, &specs);
    let path = archives::write_to(dir.path(), "multi.tar", &built.bytes);
    let out = run(&["inspect", "--json", path.to_str().unwrap()]);
    assert!(out.status.success());
    let v = json_of(&out.stdout);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "one image: {v:#}");
    assert_eq!(images[0]["index"], true);
    let platforms: Vec<&str> = images[0]["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let text = run(&["inspect", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("index of 2 platforms"), "{text}");
    // One entry (unindented line) besides the verdict.
    let entries = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("verified"))
        .count();
    assert_eq!(entries, 1, "{text}");
}

/// A kubeconfig for an API server that accepts connections and never answers (a listener
/// that is never accepted from): the worst case for a controller that must still stop.
fn silent_api_server(dir: &Path) -> (std::net::TcpListener, std::path::PathBuf) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n"
        ),
    )
    .unwrap();
    (listener, kubeconfig)
}

/// The controller, with its log in `dir/log`.
fn controller(kubeconfig: &Path, dir: &Path, args: &[&str]) -> Child {
    bin()
        .args(["controller", "--worker-image", "imageimport:test"])
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env("POD_NAMESPACE", "default")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit (failing the test after a generous bound, not a timing check).
fn exit_of(child: &mut Child, what: &str) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: the controller did not exit");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
}

/// docs/operations.md: "If that address cannot be bound, the controller stops", also with the
/// API server unreachable.
#[test]
fn the_controller_stops_when_its_metrics_address_cannot_be_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, kubeconfig) = silent_api_server(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for extra in [&[][..], &["--leader-elect"][..]] {
        let mut args = vec!["--metrics-bind-address", addr.as_str()];
        args.extend_from_slice(extra);
        let mut c = controller(&kubeconfig, dir.path(), &args);
        let code = exit_of(&mut c, "metrics address taken");
        let log = log_of(dir.path());
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains("cannot listen on --metrics-bind-address"),
            "{log}"
        );
    }
}

/// SIGTERM ends the controller while the API server does not answer, with and without leader
/// election (the Lease manager waits on the API server too).
#[test]
fn the_controller_honours_sigterm_while_the_api_server_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, kubeconfig) = silent_api_server(dir.path());
    for extra in [&[][..], &["--leader-elect"][..]] {
        let mut args = vec!["--metrics-bind-address", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut c = controller(&kubeconfig, dir.path(), &args);
        // Up: the listener serves (the API server never answers).
        let deadline = Instant::now() + Duration::from_secs(120);
        while !log_of(dir.path()).contains("serving /metrics") {
            assert!(
                c.try_wait().unwrap().is_none(),
                "exited early: {}",
                log_of(dir.path())
            );
            assert!(
                Instant::now() < deadline,
                "never started: {}",
                log_of(dir.path())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let code = exit_of(&mut c, "SIGTERM");
        assert_eq!(code, Some(0), "{extra:?}: {}", log_of(dir.path()));
    }
}

fn helm(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(support::kube::testbin_dir().join("helm"))
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("helm from hack/build-test-bins.sh")
}

/// docs/operations.md calls `0` a valid `controller.worker.uploadChunkSize` (one request per
/// blob): `--set` gives it as a number, which the schema accepts (and a size string still).
#[test]
fn the_chart_takes_an_upload_chunk_size_of_zero() {
    let chart = format!("{ROOT}/charts/imageimport");
    for value in ["0", "64M"] {
        let set = format!("controller.worker.uploadChunkSize={value}");
        let out = helm(&["template", "imageimport", &chart, "--set", &set]);
        assert!(
            out.status.success(),
            "{set}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            rendered.contains("--worker-upload-chunk-size=64M"),
            value == "64M",
            "{set}"
        );
    }
    let out = helm(&[
        "template",
        "imageimport",
        &chart,
        "--set",
        "controller.worker.uploadChunkSize=-1",
    ]);
    assert!(!out.status.success(), "a negative size is refused");
}

/// The example policy in values.yaml (commented out there) allows every example of
/// `examples/` in its namespace: copying both gives a working start.
#[test]
fn the_example_policy_allows_the_repositorys_own_examples() {
    let values = std::fs::read_to_string(format!("{ROOT}/charts/imageimport/values.yaml")).unwrap();
    // The commented rule under `policy:` / `rules: []`.
    let start = values.find("policy:\n  rules: []\n").expect("policy block");
    let rules: String = values[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with("  # -") || l.starts_with("  #   "))
        .map(|l| format!("  {}\n", &l[4..]))
        .collect();
    assert!(rules.contains("namespaces"), "{rules}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, format!("rules:\n{rules}")).unwrap();
    let policy = imageimport::controller::policy::PolicySource {
        path: Some(file.clone()),
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(format!("{ROOT}/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] != "ImageImport" {
                continue;
            }
            let ns = v["metadata"]["namespace"].as_str().unwrap();
            let spec: imageimport::api::ImageImportSpec =
                serde_json::from_value(v["spec"].clone()).unwrap();
            assert_eq!(
                policy.check(ns, &spec),
                None,
                "{} against\n{rules}",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} examples");
}

/// No example applies an all-zero pin as it is (it fails every import).
#[test]
fn examples_carry_no_placeholder_pins() {
    for entry in std::fs::read_dir(format!("{ROOT}/examples")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(
                !line.contains(&"0".repeat(64)),
                "{}: {line}",
                path.display()
            );
        }
    }
}

/// `hack/prereqs.sh` says what is missing and how to get it.
#[test]
fn the_prerequisite_check_says_what_is_missing() {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/hack/prereqs.sh"))
        .env("PATH", "/usr/bin:/bin")
        .env("GO", "/nonexistent/go")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cargo (Rust >= 1.89)") && err.contains("rustup"),
        "{err}"
    );
    assert!(err.contains("Go >= 1.26"), "{err}");
    let out = Command::new("bash")
        .arg(format!("{ROOT}/hack/prereqs.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "everything is here: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A refused URL says what would allow it in the command's own words: no policy field names
/// (`allow_link_local`, `allow_metadata`) a user cannot set, no Secret a command user has not.
#[test]
fn refused_urls_speak_the_commands_words() {
    for (url, says) in [
        (
            "http://169.254.1.1/x.tar",
            "never downloads from link-local",
        ),
        ("http://169.254.169.254/x.tar", "never allowed"),
        (
            "http://user:pw@127.0.0.1:9/x.tar",
            "remove them from the URL",
        ),
    ] {
        let out = run(&["inspect", url]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert!(err.contains(says), "{url}: {err}");
        for internal in ["allow_", "Secret", "spec."] {
            assert!(!err.contains(internal), "{url} names {internal:?}: {err}");
        }
    }
}
