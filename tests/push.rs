//! End-to-end: the `imageimport` binary against a real registry (Debian's docker-registry),
//! checked with an independent client (skopeo pulls the image back and recomputes every
//! layer's diff_id).

mod support;

use std::path::Path;
use std::process::Stdio;

use support::archives::{self, Comp, Format, ImageSpec, hostile};
use support::cli::{bin, push_ok, run, split_result};
use support::faults::{Fault, FaultyProxy, Seen};
use support::registry::{Registry, skopeo};

fn two_layers(seed: u64) -> Vec<archives::Layer> {
    vec![
        archives::layer(seed, 3, 40_000),
        archives::layer(seed + 1, 2, 70_000),
    ]
}

/// Pull back with skopeo and compare config digest and every layer's diff_id.
fn assert_round_trip(
    reg: &Registry,
    reference: &str,
    image: &archives::BuiltImage,
    pushed_digest: &str,
) {
    let pulled = skopeo::pull(reg, reference);
    assert_eq!(
        support::registry::sha256_digest(&pulled.config_bytes),
        image.config_digest,
        "config must be pushed byte for byte"
    );
    assert_eq!(
        pulled.diff_ids(),
        image.diff_ids,
        "layers must decompress to the config's diff_ids"
    );
    assert_eq!(
        skopeo::manifest_digest(reg, reference),
        pushed_digest,
        "printed digest is the tag's manifest digest"
    );
}

#[test]
fn every_archive_format_round_trips() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let formats: Vec<(&str, Format, Option<Comp>)> = vec![
        ("legacy", Format::DockerLegacy, None),
        ("docker25", Format::Docker25Oci, None),
        (
            "oci-none",
            Format::OciArchive {
                layer_compression: Comp::None,
            },
            None,
        ),
        (
            "oci-gzip",
            Format::OciArchive {
                layer_compression: Comp::Gzip,
            },
            None,
        ),
        (
            "oci-zstd",
            Format::OciArchive {
                layer_compression: Comp::Zstd,
            },
            None,
        ),
        (
            "skopeo-none",
            Format::SkopeoDockerArchive {
                layer_compression: Comp::None,
            },
            None,
        ),
        (
            "skopeo-gzip",
            Format::SkopeoDockerArchive {
                layer_compression: Comp::Gzip,
            },
            None,
        ),
        (
            "skopeo-zstd",
            Format::SkopeoDockerArchive {
                layer_compression: Comp::Zstd,
            },
            None,
        ),
        ("legacy-tgz", Format::DockerLegacy, Some(Comp::Gzip)),
        ("docker25-zst", Format::Docker25Oci, Some(Comp::Zstd)),
        (
            "oci-gzip-tgz",
            Format::OciArchive {
                layer_compression: Comp::Gzip,
            },
            Some(Comp::Gzip),
        ),
    ];
    for (i, (name, format, whole)) in formats.into_iter().enumerate() {
        let spec = ImageSpec::new(&["shop/web:1.4"], two_layers(10 * i as u64));
        let built = archives::build(&format, &[spec]);
        let bytes = match whole {
            Some(c) => archives::compress_whole(&built.bytes, c),
            None => built.bytes.clone(),
        };
        let path = archives::write_to(dir.path(), &format!("{name}.tar"), &bytes);
        let target = reg.reference(&format!("fmt/{name}"));
        let lines = push_ok(&["push", "--insecure", "-q", path.to_str().unwrap(), &target]);
        let (reference, digest) = split_result(lines.last().unwrap());
        assert_eq!(
            reference,
            format!("{target}:1.4"),
            "{name}: the image's own tag is used"
        );
        assert_round_trip(&reg, &format!("fmt/{name}:1.4"), &built.images[0], digest);
        // Layers compressed in the archive are pushed as they are: digests kept.
        if let Format::OciArchive {
            layer_compression: Comp::Gzip | Comp::Zstd,
        } = format
        {
            let m = skopeo::inspect_raw(&reg, &format!("fmt/{name}:1.4"));
            let pushed: Vec<String> = m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                pushed, built.images[0].layer_digests,
                "{name}: stored layers pushed unchanged"
            );
            assert_eq!(
                Some(digest.to_string()),
                built.images[0].manifest_digest,
                "{name}: archive manifest kept"
            );
        }
    }
}

#[test]
fn symlinked_layers_of_old_engines_are_followed() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let shared = archives::layer(77, 2, 30_000);
    let spec = ImageSpec::new(
        &["dedup:1"],
        vec![shared.clone(), archives::layer(78, 1, 1000), shared],
    );
    let built = archives::build(&Format::DockerLegacySymlinkDedup, &[spec]);
    let path = archives::write_to(dir.path(), "dedup.tar", &built.bytes);
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        path.to_str().unwrap(),
        &reg.reference("dedup"),
    ]);
    let (_, digest) = split_result(lines.last().unwrap());
    assert_round_trip(&reg, "dedup:1", &built.images[0], digest);
}

#[test]
fn tls_registry_with_htpasswd_auth() {
    let reg = Registry::tls_htpasswd();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["app:2"], two_layers(500))],
    );
    let path = archives::write_to(dir.path(), "app.tar", &built.bytes);
    let ca = reg.ca_file.clone().unwrap();
    let auth = reg.auth_file.clone().unwrap();
    // Without credentials: refused, nothing tagged.
    let out = run(&[
        "push",
        "--ca-file",
        ca.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("secure/app"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the credentials") || err.contains("401"),
        "{err}"
    );
    // Without the CA: the certificate is not trusted.
    let out = run(&[
        "push",
        "--auth-file",
        auth.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("secure/app"),
    ]);
    assert!(!out.status.success());
    let lines = push_ok(&[
        "push",
        "-q",
        "--ca-file",
        ca.to_str().unwrap(),
        "--auth-file",
        auth.to_str().unwrap(),
        path.to_str().unwrap(),
        &reg.reference("secure/app"),
    ]);
    let (_, digest) = split_result(lines.last().unwrap());
    assert_round_trip(&reg, "secure/app:2", &built.images[0], digest);
}

#[test]
fn multi_image_archives_select_one_or_push_all() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let base = archives::layer(900, 2, 20_000);
    let specs = [
        ImageSpec::new(
            &["docker.io/library/nginx:1.25"],
            vec![base.clone(), archives::layer(901, 1, 5000)],
        ),
        ImageSpec::new(
            &[
                "registry.example:5000/team/app:2",
                "registry.example:5000/team/app:latest",
            ],
            vec![base, archives::layer(902, 1, 5000)],
        ),
    ];
    let built = archives::build(&Format::DockerLegacy, &specs);
    let path = archives::write_to(dir.path(), "multi.tar", &built.bytes);
    let p = path.to_str().unwrap();

    let out = run(&["push", "--insecure", p, &reg.reference("one")]);
    assert!(!out.status.success(), "two images and no --image: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image"));

    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--image",
        "nginx:1.25",
        p,
        &reg.reference("one"),
    ]);
    assert_eq!(lines.len(), 1);
    let (r, d) = split_result(&lines[0]);
    assert_eq!(r, reg.reference("one:1.25"));
    assert_round_trip(&reg, "one:1.25", &built.images[0], d);

    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--all",
        p,
        &reg.reference("mirror"),
    ]);
    let refs: Vec<&str> = lines.iter().map(|l| split_result(l).0).collect();
    assert_eq!(
        refs,
        vec![
            reg.reference("mirror/library/nginx:1.25"),
            reg.reference("mirror/team/app:2"),
            reg.reference("mirror/team/app:latest"),
        ]
    );
    assert_round_trip(
        &reg,
        "mirror/team/app:2",
        &built.images[1],
        split_result(&lines[1]).1,
    );
    assert_eq!(
        skopeo::manifest_digest(&reg, "mirror/team/app:latest"),
        split_result(&lines[2]).1
    );
}

#[test]
fn archive_saved_by_id_needs_a_tag() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&[], two_layers(1200))],
    );
    let path = archives::write_to(dir.path(), "byid.tar", &built.bytes);
    let out = run(&[
        "push",
        "--insecure",
        path.to_str().unwrap(),
        &reg.reference("byid"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a tag"));
    assert!(reg.tags("byid").is_empty());
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        path.to_str().unwrap(),
        &reg.reference("byid:v9"),
    ]);
    assert_round_trip(&reg, "byid:v9", &built.images[0], split_result(&lines[0]).1);

    // Docker 25+ by ID: Go's nil slices as `null` ("manifests":null, "RepoTags":null).
    let built = archives::docker25_saved_by_id(&ImageSpec::new(&[], two_layers(1210)));
    let path = archives::write_to(dir.path(), "byid25.tar", &built.bytes);
    let out = run(&[
        "push",
        "--insecure",
        path.to_str().unwrap(),
        &reg.reference("byid25"),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a tag"));
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        path.to_str().unwrap(),
        &reg.reference("byid25:v1"),
    ]);
    assert_round_trip(
        &reg,
        "byid25:v1",
        &built.images[0],
        split_result(&lines[0]).1,
    );
    // skopeo reads the same archive, as a cross-check of the generator.
    let copy = std::process::Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("docker-archive:{}", path.display()))
        .output()
        .unwrap();
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
}

#[test]
fn containerd_archive_imports_the_platforms_present() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        ImageSpec::new(&["multi:3"], two_layers(1300)).platform("linux", "amd64"),
        ImageSpec::new(&["multi:3"], two_layers(1310)).platform("linux", "arm64"),
    ];
    let built = archives::build(
        &Format::ContainerdMultiPlatform {
            present: vec![("linux".into(), "amd64".into())],
        },
        &specs,
    );
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let out = run(&[
        "push",
        "--insecure",
        path.to_str().unwrap(),
        &reg.reference("multi"),
    ]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digest changed") && err.contains("not in the archive"),
        "a sparse index cannot keep its digest, and says so: {err}"
    );
    assert!(
        err.contains("left out: linux/arm64"),
        "says what was left out: {err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (_, digest) = split_result(stdout.lines().last().unwrap());
    assert_round_trip(&reg, "multi:3", &built.images[0], digest);
    // Never a manifest pointing at blobs the registry does not have: the amd64 image alone.
    let m = skopeo::inspect_raw(&reg, "multi:3");
    assert!(
        m.get("manifests").is_none(),
        "single platform pushed as an image manifest"
    );

    let out = run(&[
        "push",
        "--insecure",
        "--platform",
        "linux/arm64",
        path.to_str().unwrap(),
        &reg.reference("multi-arm"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("linux/arm64"));
    assert!(reg.tags("multi-arm").is_empty());
}

#[test]
fn hostile_archives_are_refused_and_nothing_is_tagged() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let mut cases = hostile::all();
    cases.push((
        "oversized_manifest_json",
        hostile::oversized_manifest_json(64 << 20),
    ));
    for (name, bytes) in cases {
        let path = archives::write_to(dir.path(), &format!("{name}.tar"), &bytes);
        let repo = format!("hostile/{}", name.replace('_', "-"));
        let out = run(&[
            "push",
            "--insecure",
            "-q",
            path.to_str().unwrap(),
            &reg.reference(&format!("{repo}:t")),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: must be refused");
        assert!(out.stdout.is_empty(), "{name}: nothing reported as pushed");
        let line = err.lines().last().unwrap_or_default();
        assert!(
            line.contains(path.to_str().unwrap()),
            "{name}: the error names the archive: {line}"
        );
        assert!(reg.tags(&repo).is_empty(), "{name}: nothing may be tagged");
        // The same archive through a pipe (the streaming path) is refused as well.
        let out = bin()
            .args([
                "push",
                "--insecure",
                "-q",
                "-",
                &reg.reference(&format!("{repo}-stdin:t")),
            ])
            .env("DOCKER_CONFIG", "/nonexistent")
            .stdin(std::fs::File::open(&path).unwrap())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name} via stdin: must be refused");
        assert!(
            reg.tags(&format!("{repo}-stdin")).is_empty(),
            "{name} via stdin: nothing may be tagged"
        );
    }
}

#[test]
fn a_failed_import_never_moves_an_existing_tag() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let good = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["hostile:latest"], two_layers(1400))],
    );
    let good_path = archives::write_to(dir.path(), "good.tar", &good.bytes);
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        good_path.to_str().unwrap(),
        &reg.reference("keep:latest"),
    ]);
    let before = split_result(&lines[0]).1.to_string();
    let bad = archives::write_to(dir.path(), "bad.tar", &hostile::tampered_layer());
    let out = run(&[
        "push",
        "--insecure",
        bad.to_str().unwrap(),
        &reg.reference("keep:latest"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diff_id"),
        "names the verification failure: {err}"
    );
    assert_eq!(reg.manifest_digest("keep", "latest"), Some(before));
}

#[test]
fn output_is_deterministic_and_a_repush_is_nearly_free() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["det:1"], two_layers(1500))],
    );
    let path = archives::write_to(dir.path(), "det.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let a = push_ok(&["push", "--insecure", "-q", p, &reg.reference("det-a")]);
    let b = push_ok(&["push", "--insecure", "-q", p, &reg.reference("det-b")]);
    // Through a pipe too: the streaming path encodes identically.
    let piped = bin()
        .args(["push", "--insecure", "-q", "-", &reg.reference("det-c")])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(piped.status.success());
    let c = String::from_utf8(piped.stdout).unwrap();
    assert_eq!(split_result(&a[0]).1, split_result(&b[0]).1);
    assert_eq!(split_result(&a[0]).1, split_result(c.trim()).1);

    let uploads_before = reg
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    let out = run(&["push", "--insecure", p, &reg.reference("det-a")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already up to date"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), a[0]);
    let uploads_after = reg
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(uploads_before, uploads_after, "a re-push uploads nothing");
}

#[test]
fn pins_on_image_id_and_archive_digest() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["pin:1"], two_layers(1600))],
    );
    let path = archives::write_to(dir.path(), "pin.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    for flag in ["--expect-image-id", "--expect-sha256"] {
        let out = run(&["push", "--insecure", flag, &wrong, p, &reg.reference("pin")]);
        assert!(!out.status.success(), "{flag} mismatch refused");
        assert!(reg.tags("pin").is_empty());
    }
    let file_digest = support::registry::sha256_digest(&built.bytes);
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--expect-image-id",
        &built.images[0].config_digest,
        "--expect-sha256",
        &file_digest,
        p,
        &reg.reference("pin"),
    ]);
    assert_eq!(reg.tags("pin"), vec!["1".to_string()]);
}

/// Serves one file over HTTP on loopback (a plain std server: the test plays the web server).
#[test]
fn url_and_stdin_sources_stream() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::Docker25Oci,
        &[ImageSpec::new(&["web:1.5"], two_layers(1700))],
    );
    let gz = archives::compress_whole(&built.bytes, Comp::Gzip);
    let path = archives::write_to(dir.path(), "web.tar.gz", &gz);
    let (url, server) =
        support::http::serve_once("/deliveries/web.tar.gz", std::fs::read(&path).unwrap());
    let lines = push_ok(&["push", "--insecure", "-q", &url, &reg.reference("fromurl")]);
    server.join().unwrap();
    assert_round_trip(
        &reg,
        "fromurl:1.5",
        &built.images[0],
        split_result(&lines[0]).1,
    );

    let out = bin()
        .args([
            "push",
            "--insecure",
            "-q",
            "--expect-sha256",
            &support::registry::sha256_digest(&gz),
            "-",
            &reg.reference("fromstdin"),
        ])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_round_trip(
        &reg,
        "fromstdin:1.5",
        &built.images[0],
        split_result(line.trim()).1,
    );
}

#[test]
fn inspect_lists_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["web:1.4"], two_layers(1800))],
    );
    let path = archives::write_to(dir.path(), "web.tar", &built.bytes);
    let out = bin()
        .args(["inspect", "--json", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["images"][0]["index"], false);
    let image = &v["images"][0]["platforms"][0];
    assert_eq!(image["imageId"], built.images[0].config_digest.as_str());
    let ids: Vec<&str> = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diffId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        built.images[0]
            .diff_ids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let bad = archives::write_to(dir.path(), "bad.tar", &hostile::tampered_layer());
    let out = bin()
        .args(["inspect", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT verified"));
}

#[test]
fn an_upgrade_reuses_the_layers_already_pushed() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let base = archives::layer(1900, 3, 60_000);
    let v1 = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["app:1"],
            vec![base.clone(), archives::layer(1901, 1, 9000)],
        )],
    );
    let v2 = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["app:1"],
            vec![base, archives::layer(1902, 1, 9000)],
        )],
    );
    let p1 = archives::write_to(dir.path(), "v1.tar", &v1.bytes);
    let p2 = archives::write_to(dir.path(), "v2.tar", &v2.bytes);
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        p1.to_str().unwrap(),
        &reg.reference("up:stable"),
    ]);
    let patches = || {
        reg.requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    let before = patches();
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2.to_str().unwrap(),
        &reg.reference("up:stable"),
    ]);
    // The shared base layer is verified but not encoded or sent again: one new layer + config.
    assert_eq!(
        patches() - before,
        2,
        "only the new layer and the config are uploaded"
    );
    assert_round_trip(&reg, "up:stable", &v2.images[0], split_result(&lines[0]).1);
    // And the result is the same manifest a fresh push gives (determinism is kept).
    let fresh = push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2.to_str().unwrap(),
        &reg.reference("fresh:stable"),
    ]);
    assert_eq!(split_result(&fresh[0]).1, split_result(&lines[0]).1);
}

#[test]
fn url_sources_refuse_metadata_and_link_local_addresses() {
    let reg = Registry::plain();
    for url in [
        "http://169.254.169.254/latest/meta-data/x.tar",
        "http://2852039166/x.tar",
        "http://0xa9fea9fe/x.tar",
        "http://[::ffff:169.254.169.254]/x.tar",
        "http://[fd00:ec2::254]/x.tar",
    ] {
        let out = run(&["push", "--insecure", url, &reg.reference("ssrf:1")]);
        assert!(!out.status.success(), "{url} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing"), "{url}: {err}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "a refusal is permanent, not retried"
        );
    }
    assert!(reg.tags("ssrf").is_empty());
}

#[test]
fn registry_killed_mid_upload_is_retried_and_the_import_completes() {
    let mut reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    // Big enough that the upload is still running when the registry dies.
    let big = vec![
        archives::layer(2100, 40, 1 << 20),
        archives::layer(2101, 20, 1 << 20),
    ];
    let built = archives::build(&Format::DockerLegacy, &[ImageSpec::new(&["big:1"], big)]);
    let path = archives::write_to(dir.path(), "big.tar", &built.bytes);
    let mut child = bin()
        .args([
            "push",
            "--insecure",
            "-q",
            path.to_str().unwrap(),
            &reg.reference("big"),
        ])
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reg.uploading_bytes() < (1 << 20) {
        assert!(std::time::Instant::now() < deadline, "no upload seen");
        assert!(
            child.try_wait().unwrap().is_none(),
            "push ended before the registry could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reg.stop();
    std::thread::sleep(std::time::Duration::from_millis(800));
    reg.restart();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("interrupted") || err.contains("retrying"),
        "the failure was retried: {err}"
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert_round_trip(&reg, "big:1", &built.images[0], split_result(line.trim()).1);
}

/// Bytes of every blob the tag's image is made of (config and layers), as the registry says.
fn image_blob_bytes(reg: &Registry, repo: &str, tag: &str) -> u64 {
    let (bytes, _) = reg.manifest(repo, tag).expect("manifest");
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let layers: u64 = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    layers + m["config"]["size"].as_u64().unwrap()
}

/// Pushes `archive` (a path, or `-` fed from `stdin_file`) through `proxy` with 1 MiB upload
/// requests.
fn push_via(
    proxy: &FaultyProxy,
    archive: &str,
    stdin_file: &Path,
    repo: &str,
) -> std::process::Output {
    let out = bin()
        .args([
            "push",
            "--insecure",
            "-q",
            "--upload-chunk-size",
            "1M",
            archive,
            &format!("{}/{repo}:1", proxy.host()),
        ])
        .env("DOCKER_CONFIG", "/nonexistent")
        .stdin(std::fs::File::open(stdin_file).unwrap())
        .output()
        .unwrap();
    eprintln!(
        "push {repo}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `push --all ARCHIVE PROXY/mirror`.
fn push_all_via(proxy: &FaultyProxy, archive: &Path) -> std::process::Output {
    bin()
        .args([
            "push",
            "--insecure",
            "-q",
            "--all",
            archive.to_str().unwrap(),
            &format!("{}/mirror", proxy.host()),
        ])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

fn count(seen: &[Seen], method: &str, path_part: &str) -> usize {
    seen.iter()
        .filter(|s| s.method == method && s.path.contains(path_part))
        .count()
}

fn big_single_layer() -> archives::Built {
    // 12 MiB of file data: a dozen upload requests of 1 MiB.
    archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["big:1"],
            vec![archives::layer(2200, 12, 1 << 20)],
        )],
    )
}

/// A load balancer answers 503 to one upload request: the upload asks the registry where it
/// stopped and continues from there, in the same session, sending no byte twice. Both for a
/// file (replayed, skipping what the registry holds) and for stdin (read once: the
/// unacknowledged request is kept in memory).
#[test]
fn a_broken_upload_continues_where_the_registry_stopped() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = big_single_layer();
    let path = archives::write_to(dir.path(), "big.tar", &built.bytes);
    for (repo, archive) in [
        ("resume-file", path.to_str().unwrap()),
        ("resume-stdin", "-"),
    ] {
        let proxy = FaultyProxy::start(&reg.base_url());
        proxy.break_patch(3, Fault::Refuse503);
        let out = push_via(&proxy, archive, &path, repo);
        assert!(out.status.success(), "{repo}: push failed");
        let line = String::from_utf8(out.stdout).unwrap();
        assert_round_trip(
            &reg,
            &format!("{repo}:1"),
            &built.images[0],
            split_result(line.trim()).1,
        );
        let seen = proxy.seen();
        assert_eq!(
            seen.iter().filter(|s| s.status == 503).count(),
            1,
            "{repo}: the fault happened"
        );
        assert!(
            count(&seen, "GET", "/blobs/uploads/") >= 1,
            "{repo}: the registry was asked where the upload stopped"
        );
        assert_eq!(
            count(&seen, "POST", "/blobs/uploads/"),
            2,
            "{repo}: one upload session per blob (layer, config): the broken one went on"
        );
        let patched: u64 = seen
            .iter()
            .filter(|s| s.method == "PATCH")
            .map(|s| s.forwarded)
            .sum();
        assert_eq!(
            patched,
            image_blob_bytes(&reg, repo, "1"),
            "{repo}: no byte was sent twice"
        );
    }
}

/// A connection cut halfway through an upload request: distribution keeps the partial bytes
/// and then drops the upload (its stored size no longer matches its state token), so a file
/// source starts that blob over in a new session and the import completes; stdin cannot be
/// read again, so that import fails cleanly (transient, nothing tagged).
#[test]
fn an_upload_cut_halfway_starts_over_or_fails_cleanly() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = big_single_layer();
    let path = archives::write_to(dir.path(), "big.tar", &built.bytes);

    let proxy = FaultyProxy::start(&reg.base_url());
    proxy.break_patch(3, Fault::CutAfter(300_000));
    let out = push_via(&proxy, path.to_str().unwrap(), &path, "cut-file");
    assert!(out.status.success(), "cut-file: push failed");
    let line = String::from_utf8(out.stdout).unwrap();
    assert_round_trip(
        &reg,
        "cut-file:1",
        &built.images[0],
        split_result(line.trim()).1,
    );
    let seen = proxy.seen();
    assert_eq!(seen.iter().filter(|s| s.status == 502).count(), 1);
    assert_eq!(
        count(&seen, "POST", "/blobs/uploads/"),
        3,
        "the dropped upload started over in a new session"
    );

    // Every request cut: the upload gives up after its retries (no endless starting over).
    let proxy = FaultyProxy::start(&reg.base_url());
    for n in 1..=100 {
        proxy.break_patch(n, Fault::CutAfter(300_000));
    }
    let out = push_via(&proxy, path.to_str().unwrap(), &path, "cut-always");
    assert_eq!(
        out.status.code(),
        Some(75),
        "a transient failure (EX_TEMPFAIL)"
    );
    assert!(reg.tags("cut-always").is_empty(), "nothing tagged");
    let cut = proxy.seen().iter().filter(|s| s.status == 502).count();
    assert!(
        (2..=10).contains(&cut),
        "{cut} cut requests before giving up"
    );

    let proxy = FaultyProxy::start(&reg.base_url());
    proxy.break_patch(3, Fault::CutAfter(300_000));
    let out = push_via(&proxy, "-", &path, "cut-stdin");
    assert_eq!(
        out.status.code(),
        Some(75),
        "a transient failure (EX_TEMPFAIL)"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be replayed"), "{err}");
    assert!(reg.tags("cut-stdin").is_empty(), "nothing tagged");
}

#[test]
fn a_failed_upload_cancels_its_session() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = big_single_layer();
    let path = archives::write_to(dir.path(), "big.tar", &built.bytes);
    // Two requests accepted, then the ingress refuses every one: the upload gives up.
    let proxy = FaultyProxy::start(&reg.base_url());
    for n in 3..=100 {
        proxy.break_patch(n, Fault::Refuse503);
    }
    let out = push_via(&proxy, path.to_str().unwrap(), &path, "given-up");
    assert_eq!(out.status.code(), Some(75), "a transient failure");
    assert!(reg.tags("given-up").is_empty(), "nothing tagged");
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|s| s.method == "PATCH" && s.status == 202 && s.forwarded > 0),
        "the registry held part of the blob"
    );
    let cancelled: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.method == "DELETE" && s.path.contains("/blobs/uploads/"))
        .collect();
    assert!(!cancelled.is_empty(), "the session was cancelled");
    for s in cancelled {
        assert_eq!(s.status, 204, "{s:?}");
        let path = s.path.split('?').next().unwrap();
        assert_eq!(reg.get(path, None).status, 404, "{path} is gone");
    }
    // Distribution writes the session's hash state once more after a cancel; the bytes go.
    assert_eq!(
        reg.uploading_bytes(),
        0,
        "no uploaded bytes left on the registry"
    );
}

#[test]
fn a_commit_whose_answer_was_lost_is_checked_not_repeated() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = big_single_layer();
    let path = archives::write_to(dir.path(), "big.tar", &built.bytes);
    let proxy = FaultyProxy::start(&reg.base_url());
    // The registry commits the first blob, the client hears 502.
    proxy.break_commit(1, Fault::LoseAnswer);
    let out = push_via(&proxy, path.to_str().unwrap(), &path, "lost-answer");
    assert!(out.status.success(), "push failed");
    let line = String::from_utf8(out.stdout).unwrap();
    assert_round_trip(
        &reg,
        "lost-answer:1",
        &built.images[0],
        split_result(line.trim()).1,
    );
    let seen = proxy.seen();
    assert_eq!(seen.iter().filter(|s| s.status == 502).count(), 1);
    let commits = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
        .count();
    assert_eq!(
        commits, 2,
        "one commit per blob (layer, config): none repeated"
    );
    assert_eq!(
        count(&seen, "POST", "/blobs/uploads/"),
        2,
        "no blob uploaded again"
    );
}

#[test]
fn with_all_no_image_is_tagged_while_another_can_still_fail() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        ImageSpec::new(
            &["docker.io/library/first:1"],
            vec![archives::layer(910, 1, 5000)],
        ),
        ImageSpec::new(
            &["docker.io/library/second:1"],
            vec![archives::layer(911, 1, 5000)],
        ),
    ];
    let built = archives::build(&Format::DockerLegacy, &specs);
    let path = archives::write_to(dir.path(), "two.tar", &built.bytes);
    // The registry takes everything but the second image's manifests.
    let proxy = FaultyProxy::start(&reg.base_url());
    proxy.break_every("PUT", "/library/second/manifests/", Fault::Refuse503);
    let out = push_all_via(&proxy, &path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(reg.tags("mirror/library/second").is_empty());
    assert!(
        reg.tags("mirror/library/first").is_empty(),
        "the first image was tagged though the import failed"
    );
    // Its blobs and manifest are in place by digest: a retry only moves the tags.
    let first_manifests = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/library/first/manifests/sha256:"))
        .count();
    assert_eq!(first_manifests, 1);

    // The same archive once the registry takes everything: both tagged.
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--all",
        path.to_str().unwrap(),
        &reg.reference("mirror"),
    ]);
    assert_eq!(lines.len(), 2);
    assert_round_trip(
        &reg,
        "mirror/library/second:1",
        &built.images[1],
        split_result(&lines[1]).1,
    );
}

#[test]
fn a_registry_without_mounts_gets_shared_layers_copied() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let base = archives::layer(920, 2, 20_000);
    let specs = [
        ImageSpec::new(
            &["docker.io/library/first:1"],
            vec![base.clone(), archives::layer(921, 1, 5000)],
        ),
        ImageSpec::new(
            &["docker.io/library/second:1"],
            vec![base, archives::layer(922, 1, 5000)],
        ),
    ];
    let built = archives::build(&Format::DockerLegacy, &specs);
    let path = archives::write_to(dir.path(), "shared.tar", &built.bytes);
    let proxy = FaultyProxy::start(&reg.base_url());
    proxy.refuse_mounts();
    let out = push_all_via(&proxy, &path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, repo) in ["mirror/library/first:1", "mirror/library/second:1"]
        .iter()
        .enumerate()
    {
        assert_round_trip(&reg, repo, &built.images[i], split_result(&lines[i]).1);
    }
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && s.path.contains("mount=")),
        "a mount was asked for"
    );
    assert!(
        seen.iter()
            .any(|s| s.method == "GET" && s.path.contains("/blobs/sha256:")),
        "the shared layer was read back to be copied"
    );
}

/// PUT `manifest` as `repo:reference` of a plain-HTTP registry, as anyone allowed to push there
/// could.
fn put_manifest(reg: &Registry, repo: &str, reference: &str, manifest: &serde_json::Value) {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.base_url());
    let body = serde_json::to_vec(manifest).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .put(&url)
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "PUT {url}: {status}");
}

/// Issue 8 F5: a tag holding the archive's config and the engine's codec annotation, but other
/// layers, is neither reported up to date nor used as a source of layers.
#[test]
fn a_planted_tag_with_the_archives_config_is_not_taken_for_the_image() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let genuine = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["app:1"], two_layers(2300))],
    );
    let other = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["app:1"], two_layers(2310))],
    );
    let g = archives::write_to(dir.path(), "genuine.tar", &genuine.bytes);
    let o = archives::write_to(dir.path(), "other.tar", &other.bytes);
    let g = g.to_str().unwrap();
    // What a push of the genuine archive gives, in a repository of its own.
    let fresh = push_ok(&["push", "--insecure", "-q", g, &reg.reference("fresh:1")]);
    let fresh_digest = split_result(&fresh[0]).1.to_string();
    // The target repository gets the other image's blobs and the genuine config...
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        o.to_str().unwrap(),
        &reg.reference("plant:other"),
    ]);
    let genuine_manifest = skopeo::inspect_raw(&reg, "fresh:1");
    let mut planted = genuine_manifest.clone();
    planted["layers"] = skopeo::inspect_raw(&reg, "plant:other")["layers"].clone();
    assert!(
        planted["annotations"]["dev.imageimport.layer-codec"].is_string(),
        "{planted}"
    );
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--compression",
        "none",
        g,
        &reg.reference("plant:config-only"),
    ]);
    // ... and, under the tag the import moves, the genuine config and codec with other layers.
    put_manifest(&reg, "plant", "v1", &planted);
    let planted_digest = reg.manifest_digest("plant", "v1").unwrap();

    let out = run(&["push", "--insecure", g, &reg.reference("plant:v1")]);
    let lines = support::cli::lines_of(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("already up to date"), "{err}");
    let digest = split_result(&lines[0]).1;
    assert_ne!(digest, planted_digest, "the planted manifest is replaced");
    assert_eq!(digest, fresh_digest, "by the one a fresh push gives");
    assert_round_trip(&reg, "plant:v1", &genuine.images[0], digest);
    assert!(
        err.contains("verified: every layer was read from the archive"),
        "says what was checked: {err}"
    );

    // A genuine re-push is up to date, and says what that rests on.
    let out = run(&["push", "--insecure", g, &reg.reference("plant:v1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already up to date"), "{err}");
    assert!(err.contains("read back from the registry"), "{err}");
    assert_eq!(support::cli::lines_of(&out)[0], lines[0]);
}

/// Two versions of one image (`app:x`, legacy docker-save archives written into `dir` as
/// v1.tar and v2.tar): a three-file base layer they share (seed `seed`) and one small layer
/// each (seeds `seed + 1` and `seed + 2`), as a release flow pushes them; v2 and both paths.
fn two_versions(
    dir: &Path,
    seed: u64,
) -> (archives::Built, std::path::PathBuf, std::path::PathBuf) {
    let base = archives::layer(seed, 3, 60_000);
    let build = |seed| {
        archives::build(
            &Format::DockerLegacy,
            &[ImageSpec::new(
                &["app:x"],
                vec![base.clone(), archives::layer(seed, 1, 9000)],
            )],
        )
    };
    let (v1, v2) = (build(seed + 1), build(seed + 2));
    let p1 = archives::write_to(dir, "v1.tar", &v1.bytes);
    let p2 = archives::write_to(dir, "v2.tar", &v2.bytes);
    (v2, p1, p2)
}

/// Issue 12 part 2: `app:2.0` pushed beside `app:1.0` (a new tag) sends its new layer and its
/// config only: the shared base is learned from the repository's other tags, within the
/// documented request bound.
#[test]
fn a_new_version_under_a_new_tag_sends_only_its_new_layers() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let (v2, p1, p2) = two_versions(dir.path(), 2400);
    for t in ["0.9", "1.0", "latest-old"] {
        push_ok(&[
            "push",
            "--insecure",
            "-q",
            p1.to_str().unwrap(),
            &reg.reference(&format!("rel:{t}")),
        ]);
    }
    let before = reg.requests().len();
    let lines = push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2.to_str().unwrap(),
        &reg.reference("rel:2.0"),
    ]);
    let seen: Vec<_> = reg.requests()[before..]
        .iter()
        .filter(|r| r.is_client())
        .cloned()
        .collect();
    let uploads = seen.iter().filter(|r| r.method == "PATCH").count();
    assert_eq!(uploads, 2, "the new layer and the config only");
    let tag_lists = seen
        .iter()
        .filter(|r| r.path.contains("/tags/list"))
        .count();
    let documents = seen
        .iter()
        .filter(|r| {
            r.method == "GET" && (r.path.contains("/manifests/") || r.path.contains("/blobs/"))
        })
        .count();
    eprintln!("discovery: {tag_lists} tag list(s), {documents} manifest/blob GETs");
    assert_eq!(tag_lists, 1);
    // The new tag (absent: asked by the up-to-date check and by discovery), the three other
    // tags' manifests (one manifest: its config read once), the read-back of the base layer.
    assert!(documents <= 7, "{documents} GETs");
    assert_round_trip(&reg, "rel:2.0", &v2.images[0], split_result(&lines[0]).1);
    let fresh = push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2.to_str().unwrap(),
        &reg.reference("fresh2:2.0"),
    ]);
    assert_eq!(
        split_result(&fresh[0]).1,
        split_result(&lines[0]).1,
        "the same manifest as a cold push"
    );
}

/// `--reuse any-encoding`: v1 pushed by skopeo (its own gzip), v2 pushed beside it sends only
/// its new layer and config; by default (`exact`) another tool's blobs are not taken and the
/// manifest is the one a cold push gives.
#[test]
fn any_encoding_reuse_takes_another_tools_blobs_and_says_the_digest_is_its_own() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let (v2, p1, p2) = two_versions(dir.path(), 2500);
    let mut copy: Vec<std::ffi::OsString> = vec!["copy".into(), "--quiet".into()];
    copy.extend(skopeo::registry_flags(&reg, "dest-"));
    copy.push(format!("docker-archive:{}", p1.display()).into());
    copy.push(skopeo::docker_ref(&reg, "other:1.0").into());
    skopeo::run(copy);

    let uploads_of = |args: &[&str]| {
        let before = reg.requests().len();
        let lines = push_ok(args);
        let patches = reg.requests()[before..]
            .iter()
            .filter(|r| r.is_client() && r.method == "PATCH")
            .count();
        (split_result(&lines[0]).1.to_string(), patches)
    };
    let p2s = p2.to_str().unwrap();
    let (wide, wide_uploads) = uploads_of(&[
        "push",
        "--insecure",
        "-q",
        "--reuse",
        "any-encoding",
        p2s,
        &reg.reference("other:2.1"),
    ]);
    assert_eq!(
        wide_uploads, 2,
        "any-encoding: the new layer and the config only"
    );
    assert_round_trip(&reg, "other:2.1", &v2.images[0], &wide);
    let m = skopeo::inspect_raw(&reg, "other:2.1");
    let skopeos = skopeo::inspect_raw(&reg, "other:1.0");
    assert_eq!(
        m["layers"][0]["digest"], skopeos["layers"][0]["digest"],
        "the base layer is skopeo's blob"
    );
    assert!(
        m["annotations"]["dev.imageimport.layer-codec"].is_null(),
        "a manifest with another tool's blob must not claim this encoder: {m}"
    );
    // Exact (the default) does not take skopeo's blob (nor the manifest above, which does not
    // claim this encoder): the manifest is the one a cold push gives.
    let (exact, _) = uploads_of(&["push", "--insecure", "-q", p2s, &reg.reference("other:2.0")]);
    let (cold, _) = uploads_of(&["push", "--insecure", "-q", p2s, &reg.reference("cold:2.0")]);
    assert_eq!(exact, cold);
    assert_ne!(wide, exact, "skopeo's base blob is not this encoder's");
}

/// `--reuse trust-registry`: v2 beside v1 sends only its new layer and config and reads no
/// blob back (the base is taken on the word of v1's manifest); the manifest is still the one
/// a cold push gives. The trade, said in the docs: a planted manifest mapping the archive's
/// diff_ids to other blobs is taken at its word, where `exact` reads it back and refuses it.
#[test]
fn trust_registry_reuse_reads_no_blob_back_and_takes_the_registrys_word() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let (v2, p1, p2) = two_versions(dir.path(), 2600);
    let (p1, p2) = (p1.to_str().unwrap(), p2.to_str().unwrap());
    push_ok(&["push", "--insecure", "-q", p1, &reg.reference("trust:1.0")]);
    let base_blob = skopeo::inspect_raw(&reg, "trust:1.0")["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let before = reg.requests().len();
    let out = run(&[
        "push",
        "--insecure",
        "--reuse",
        "trust-registry",
        p2,
        &reg.reference("trust:2.0"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let seen: Vec<_> = reg.requests()[before..]
        .iter()
        .filter(|r| r.is_client())
        .cloned()
        .collect();
    assert_eq!(
        seen.iter().filter(|r| r.method == "PATCH").count(),
        2,
        "the new layer and the config only"
    );
    assert!(
        !seen
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{base_blob}"))),
        "the base blob is not read back: {seen:?}"
    );
    assert!(err.contains("on its manifests' word"), "says so: {err}");
    let digest = split_result(&support::cli::lines_of(&out)[0]).1.to_string();
    assert_round_trip(&reg, "trust:2.0", &v2.images[0], &digest);
    let cold = push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2,
        &reg.reference("trustcold:2.0"),
    ]);
    assert_eq!(
        split_result(&cold[0]).1,
        digest,
        "the same manifest as a cold push"
    );

    // The trade: under another tag of the repository, v2's config with v1's new layer blob in
    // place of v2's (the codec annotation kept, as anyone who can push could write it).
    let genuine = skopeo::inspect_raw(&reg, "trustcold:2.0");
    let mut planted = genuine.clone();
    planted["layers"][1] = skopeo::inspect_raw(&reg, "trust:1.0")["layers"][1].clone();
    // Named to be the first tag learned from (the longest prefix shared with the new tags).
    put_manifest(&reg, "trust", "2.0-t-planted", &planted);
    let planted_blob = planted["layers"][1]["digest"].as_str().unwrap().to_string();
    let layer_of = |tag: &str| {
        skopeo::inspect_raw(&reg, tag)["layers"][1]["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // `exact` reads the planted blob back, finds it is not the layer, and pushes its own.
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        p2,
        &reg.reference("trust:2.0-exact"),
    ]);
    assert_ne!(layer_of("trust:2.0-exact"), planted_blob);
    // `trust-registry` takes the planted blob at its word (only a manifest the registry
    // holds and this encoder's annotation stand between the two).
    push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--reuse",
        "trust-registry",
        p2,
        &reg.reference("trust:2.0-t-pushed"),
    ]);
    assert_eq!(layer_of("trust:2.0-t-pushed"), planted_blob);
}
