//! End-to-end variants of `imageimport push` not covered by tests/push.rs: forced layer
//! codecs (`--compression zstd|none|gzip`), platform selection and OCI indexes of
//! multi-platform archives, image-ID pins on multi-platform archives, and an OCI-layout
//! archive over TLS with basic auth. Every pushed image is read back by an independent client
//! (skopeo, and crane when installed).

mod support;

use std::process::Output;

use serde_json::Value;
use support::archives::{
    self, Built, BuiltImage, Comp, Format, ImageSpec, MT_OCI_INDEX, MT_OCI_LAYER,
    MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD, MT_OCI_MANIFEST,
};
use support::cli::{lines_of, push_ok, run, run_with};
use support::registry::{Registry, crane, sha256_digest, skopeo};

/// Annotation recording the encoder of layers encoded by imageimport (src/pipeline/manifest.rs).
const ANNOTATION_CODEC: &str = "dev.imageimport.layer-codec";

/// The only `REF@DIGEST` line of a push → (reference, digest).
fn single_result(lines: &[String]) -> (String, String) {
    assert_eq!(lines.len(), 1, "one reference pushed: {lines:?}");
    let (r, d) = lines[0].split_once('@').expect("REF@DIGEST");
    (r.to_string(), d.to_string())
}

/// A failed push: non-zero exit, nothing printed as pushed; returns stderr.
fn push_refused(out: &Output) -> String {
    assert!(!out.status.success(), "push must be refused");
    assert!(out.stdout.is_empty(), "nothing reported as pushed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn two_small_layers(seed: u64) -> Vec<archives::Layer> {
    vec![
        archives::layer(seed, 2, 30_000),
        archives::layer(seed + 1, 1, 20_000),
    ]
}

fn layers_of(m: &Value) -> Vec<Value> {
    m["layers"].as_array().expect("manifest.layers").clone()
}

fn layer_field(m: &Value, field: &str) -> Vec<String> {
    layers_of(m)
        .iter()
        .map(|l| l[field].as_str().expect("layer field").to_string())
        .collect()
}

/// Reads `repo:tag` back with skopeo (raw manifest, config, every layer decompressed) and
/// checks: the manifest the tag serves is the printed digest, the config is the archive's byte
/// for byte, the layers decompress to the archive's diff_ids, every layer has media type
/// `layer_type` and bytes of that compression. Returns the manifest.
fn assert_pushed(
    reg: &Registry,
    reference: &str,
    image: &BuiltImage,
    printed_digest: &str,
    layer_type: &str,
) -> Value {
    let raw = skopeo::inspect_raw_bytes(reg, reference);
    assert_eq!(
        sha256_digest(&raw),
        printed_digest,
        "{reference}: the printed digest is the tag's manifest"
    );
    let m: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(m["mediaType"], MT_OCI_MANIFEST, "{reference}: {m}");
    assert_eq!(
        m["config"]["digest"], image.config_digest,
        "{reference}: config digest (image ID) unchanged"
    );
    let types = layer_field(&m, "mediaType");
    assert_eq!(types.len(), image.diff_ids.len());
    assert!(
        types.iter().all(|t| t == layer_type),
        "{reference}: every layer is {layer_type}: {types:?}"
    );
    // pull_diff_ids also checks each blob's magic bytes against its media type.
    assert_eq!(
        skopeo::pull_diff_ids(reg, reference),
        image.diff_ids,
        "{reference}: layers decompress to the config's diff_ids"
    );
    let (config, config_digest) = skopeo::config(reg, reference);
    assert_eq!(config_digest, image.config_digest);
    assert_eq!(config, image.config, "config pushed byte for byte");
    if let Some(cfg) = crane::config(reg, reference) {
        assert_eq!(cfg, image.config, "crane reads the same config");
        let cm = crane::manifest(reg, reference).unwrap();
        assert_eq!(sha256_digest(&cm), printed_digest, "crane: same manifest");
    }
    m
}

fn oci(comp: Comp) -> Format {
    Format::OciArchive {
        layer_compression: comp,
    }
}

// ---------------------------------------------------------------------------
// 1. --compression zstd / none
// ---------------------------------------------------------------------------

#[test]
fn forced_zstd_and_none_compression_set_the_layer_media_types() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    // Uncompressed layers (docker save) and gzip layers (oci-archive): both are re-encoded.
    let sources: Vec<(&str, Format)> =
        vec![("legacy", Format::DockerLegacy), ("ocigz", oci(Comp::Gzip))];
    for (i, (src, format)) in sources.into_iter().enumerate() {
        let built = archives::build(
            &format,
            &[ImageSpec::new(
                &["comp/app:1"],
                two_small_layers(4000 + 10 * i as u64),
            )],
        );
        let image = &built.images[0];
        let path = archives::write_to(dir.path(), &format!("{src}.tar"), &built.bytes);
        let p = path.to_str().unwrap();
        for (codec, layer_type) in [("zstd", MT_OCI_LAYER_ZSTD), ("none", MT_OCI_LAYER)] {
            let repo = format!("comp/{src}-{codec}");
            let target = reg.reference(&format!("{repo}:1"));
            let lines = push_ok(&[
                "push",
                "--insecure",
                "-q",
                "--compression",
                codec,
                p,
                &target,
            ]);
            let (r, digest) = single_result(&lines);
            assert_eq!(r, target);
            let m = assert_pushed(&reg, &format!("{repo}:1"), image, &digest, layer_type);
            let layer_digests = layer_field(&m, "digest");
            if codec == "none" {
                assert_eq!(
                    layer_digests, image.diff_ids,
                    "{src}: an uncompressed layer's digest is its diff_id"
                );
            } else {
                assert!(
                    m["annotations"][ANNOTATION_CODEC]
                        .as_str()
                        .is_some_and(|a| a.starts_with("zstd/")),
                    "{src}: the zstd encoder is recorded: {m}"
                );
                for d in &layer_digests {
                    assert!(!image.layer_digests.contains(d), "{src}: layer re-encoded");
                }
            }
            // The same archive again: the same manifest (and for zstd, nothing to do).
            let out = run(&["push", "--insecure", "--compression", codec, p, &target]);
            let (_, again) = single_result(&lines_of(&out));
            assert_eq!(again, digest, "{src} {codec}: deterministic");
            if codec == "zstd" {
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("already up to date"),
                    "{src}: a zstd re-push is recognised as up to date"
                );
            }
            // Through a pipe (the streaming path): the same encoding, the same manifest.
            let piped_repo = format!("{repo}-stdin");
            let piped = run_with(
                &[
                    "push",
                    "--insecure",
                    "-q",
                    "--compression",
                    codec,
                    "-",
                    &reg.reference(&format!("{piped_repo}:1")),
                ],
                &[],
                Some(p),
            );
            let (_, piped_digest) = single_result(&lines_of(&piped));
            assert_eq!(
                piped_digest, digest,
                "{src} {codec}: stdin gives the same digest"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. --compression gzip on layers already compressed
// ---------------------------------------------------------------------------

#[test]
fn explicit_gzip_re_encodes_layers_already_compressed() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, comp)) in [("zstd", Comp::Zstd), ("gzip", Comp::Gzip)]
        .into_iter()
        .enumerate()
    {
        let built = archives::build(
            &oci(comp),
            &[ImageSpec::new(
                &["stored:1"],
                two_small_layers(4100 + 10 * i as u64),
            )],
        );
        let image = &built.images[0];
        let path = archives::write_to(dir.path(), &format!("oci-{name}.tar"), &built.bytes);
        let p = path.to_str().unwrap();

        // Default: kept as stored (the contrast that makes the forced case meaningful).
        let kept_repo = format!("regz/{name}-kept");
        let lines = push_ok(&[
            "push",
            "--insecure",
            "-q",
            p,
            &reg.reference(&format!("{kept_repo}:1")),
        ]);
        let (_, kept) = single_result(&lines);
        let m = assert_pushed(
            &reg,
            &format!("{kept_repo}:1"),
            image,
            &kept,
            comp.oci_media_type(),
        );
        assert_eq!(layer_field(&m, "digest"), image.layer_digests);
        assert_eq!(Some(kept.clone()), image.manifest_digest);

        // --compression gzip: every layer re-encoded by our encoder.
        let repo = format!("regz/{name}-forced");
        let lines = push_ok(&[
            "push",
            "--insecure",
            "-q",
            "--compression",
            "gzip",
            p,
            &reg.reference(&format!("{repo}:1")),
        ]);
        let (_, forced) = single_result(&lines);
        let m = assert_pushed(
            &reg,
            &format!("{repo}:1"),
            image,
            &forced,
            MT_OCI_LAYER_GZIP,
        );
        let digests = layer_field(&m, "digest");
        for (pushed, stored) in digests.iter().zip(&image.layer_digests) {
            assert_ne!(
                pushed, stored,
                "{name}: layer re-encoded, not pushed as stored"
            );
        }
        assert_ne!(
            Some(forced.clone()),
            image.manifest_digest,
            "{name}: not the archive's manifest"
        );
        assert!(
            m["annotations"][ANNOTATION_CODEC]
                .as_str()
                .is_some_and(|a| a.starts_with("gzip/")),
            "{name}: the gzip encoder is recorded: {m}"
        );
        // The same bytes as gzip-encoding the uncompressed layers: equal diff_ids, equal codec.
        let plain = archives::build(
            &Format::DockerLegacy,
            &[ImageSpec::new(
                &["stored:1"],
                two_small_layers(4100 + 10 * i as u64),
            )],
        );
        assert_eq!(plain.images[0].diff_ids, image.diff_ids);
        let plain_path = archives::write_to(dir.path(), &format!("plain-{name}.tar"), &plain.bytes);
        let lines = push_ok(&[
            "push",
            "--insecure",
            "-q",
            plain_path.to_str().unwrap(),
            &reg.reference(&format!("regz/{name}-plain:1")),
        ]);
        let (_, plain_digest) = single_result(&lines);
        let plain_manifest = skopeo::inspect_raw(&reg, &format!("regz/{name}-plain:1"));
        assert_eq!(
            reg.manifest_digest(&format!("regz/{name}-plain"), "1"),
            Some(plain_digest)
        );
        assert_eq!(
            layer_field(&plain_manifest, "digest"),
            digests,
            "{name}: re-encoding is independent of the stored codec"
        );
        // Streaming path: the same result.
        let piped = run_with(
            &[
                "push",
                "--insecure",
                "-q",
                "--compression",
                "gzip",
                "-",
                &reg.reference(&format!("{repo}-stdin:1")),
            ],
            &[],
            Some(p),
        );
        let (_, piped_digest) = single_result(&lines_of(&piped));
        assert_eq!(piped_digest, forced, "{name}: stdin gives the same digest");
    }
}

// ---------------------------------------------------------------------------
// 3-5. Multi-platform archives
// ---------------------------------------------------------------------------

/// A containerd `docker save` of linux/amd64 + linux/arm64, both complete.
fn two_platforms(seed: u64, tag: &str) -> Built {
    let specs = [
        ImageSpec::new(&[tag], two_small_layers(seed)).platform("linux", "amd64"),
        ImageSpec::new(&[tag], two_small_layers(seed + 10)).platform("linux", "arm64"),
    ];
    let built = archives::build(
        &Format::ContainerdMultiPlatform {
            present: vec![
                ("linux".into(), "amd64".into()),
                ("linux".into(), "arm64".into()),
            ],
        },
        &specs,
    );
    assert_ne!(built.images[0].config_digest, built.images[1].config_digest);
    built
}

#[test]
fn platform_selects_one_platform_of_a_multi_platform_archive() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = two_platforms(4200, "multi:3");
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let p = path.to_str().unwrap();

    for (image, platform) in [
        (&built.images[1], "linux/arm64"),
        (&built.images[0], "linux/amd64"),
    ] {
        let repo = format!("sel/{}", image.arch);
        let out = run(&[
            "push",
            "--insecure",
            "--platform",
            platform,
            p,
            &reg.reference(&repo),
        ]);
        let (r, digest) = single_result(&lines_of(&out));
        assert_eq!(r, reg.reference(&format!("{repo}:3")), "the saved tag");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&image.config_digest),
            "reports the selected image ID: {err}"
        );
        let m = assert_pushed(
            &reg,
            &format!("{repo}:3"),
            image,
            &digest,
            MT_OCI_LAYER_GZIP,
        );
        assert!(m.get("manifests").is_none(), "an image manifest, no index");
        assert!(
            err.contains("digest changed") && err.contains("--platform"),
            "the archive's index digest is not the tag's, and why: {err}"
        );
        assert_eq!(
            Some(digest.clone()),
            image.manifest_digest,
            "{platform}: the archive's own manifest, layers as stored"
        );
        let (config, _) = skopeo::config(&reg, &format!("{repo}:3"));
        let config: Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(config["architecture"], image.arch.as_str());
    }

    // A platform the archive does not have at all: refused, named, nothing tagged.
    for (stdin, repo) in [(false, "sel/absent"), (true, "sel/absent-stdin")] {
        let target = reg.reference(&format!("{repo}:3"));
        let args = [
            "push",
            "--insecure",
            "--platform",
            "linux/s390x",
            if stdin { "-" } else { p },
            &target,
        ];
        let out = run_with(&args, &[], stdin.then_some(p));
        let err = push_refused(&out);
        assert!(err.contains("linux/s390x"), "names the platform: {err}");
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64"),
            "lists the platforms present: {err}"
        );
        assert!(err.contains("not in the archive"), "{err}");
        assert!(reg.tags(repo).is_empty(), "nothing tagged in {repo}");
    }
}

/// Positions in the registry's access log of the manifest PUTs of `repo`, by reference.
fn manifest_puts(reg: &Registry, repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/manifests/");
    reg.requests()
        .into_iter()
        .filter(|r| r.is_client() && r.method == "PUT" && r.status < 300)
        .filter_map(|r| r.path.strip_prefix(&prefix).map(String::from))
        .collect()
}

/// Checks that `repo:tag` is an OCI index of exactly the archive's platforms, each entry
/// naming a manifest that exists by digest and reads back (skopeo by digest, skopeo and crane
/// through the index with a platform override); every manifest went in by digest before the
/// tag. Returns the platform manifests' digests (amd64, arm64).
fn assert_index(
    reg: &Registry,
    repo: &str,
    tag: &str,
    built: &Built,
    printed_digest: &str,
    layer_type: &str,
) -> Vec<String> {
    let reference = format!("{repo}:{tag}");
    let raw = skopeo::inspect_raw_bytes(reg, &reference);
    assert_eq!(
        sha256_digest(&raw),
        printed_digest,
        "the tag is the printed digest"
    );
    assert_eq!(
        reg.manifest_digest(repo, tag).as_deref(),
        Some(printed_digest),
        "the tag equals the index digest"
    );
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], MT_OCI_INDEX, "{index}");
    assert_eq!(index["schemaVersion"], 2);
    let entries = index["manifests"].as_array().expect("index.manifests");
    assert_eq!(entries.len(), 2, "one entry per platform: {index}");
    let (stored, _) = reg
        .manifest(repo, printed_digest)
        .expect("the index exists by digest");
    assert_eq!(stored, raw);

    let mut digests = Vec::new();
    for image in &built.images {
        let entry = entries
            .iter()
            .find(|e| e["platform"]["architecture"] == image.arch.as_str())
            .unwrap_or_else(|| panic!("no {} entry: {index}", image.arch));
        assert_eq!(entry["platform"]["os"], image.os.as_str());
        assert_eq!(entry["mediaType"], MT_OCI_MANIFEST);
        let digest = entry["digest"].as_str().unwrap().to_string();
        let (bytes, _) = reg
            .manifest(repo, &digest)
            .unwrap_or_else(|| panic!("{}: manifest {digest} missing by digest", image.arch));
        assert_eq!(sha256_digest(&bytes), digest);
        assert_eq!(entry["size"].as_u64(), Some(bytes.len() as u64));
        let m: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(m["config"]["digest"], image.config_digest, "{}", image.arch);
        assert!(
            layer_field(&m, "mediaType").iter().all(|t| t == layer_type),
            "{}: {m}",
            image.arch
        );
        // Readable by digest, with every layer's diff_id.
        let by_digest = format!("{repo}@{digest}");
        assert_eq!(skopeo::pull_diff_ids(reg, &by_digest), image.diff_ids);
        // Readable through the index, platform chosen by the client.
        let mut args: Vec<std::ffi::OsString> = vec![
            "--override-os".into(),
            image.os.clone().into(),
            "--override-arch".into(),
            image.arch.clone().into(),
            "inspect".into(),
            "--config".into(),
            "--raw".into(),
        ];
        args.extend(skopeo::registry_flags(reg, ""));
        args.push(skopeo::docker_ref(reg, &reference).into());
        assert_eq!(
            skopeo::run(args),
            image.config,
            "skopeo --override-arch {} resolves the index",
            image.arch
        );
        let platform = format!("{}/{}", image.os, image.arch);
        if let Some(cfg) = crane::run(
            reg,
            &[
                "config",
                "--platform",
                &platform,
                &reg.reference(&reference),
            ],
        ) {
            assert_eq!(cfg, image.config, "crane --platform {platform}");
            let cm = crane::run(
                reg,
                &[
                    "manifest",
                    "--platform",
                    &platform,
                    &reg.reference(&reference),
                ],
            )
            .unwrap();
            assert_eq!(sha256_digest(&cm), digest, "crane --platform {platform}");
        }
        digests.push(digest);
    }

    // Manifests by digest first, the tag last (finish()/stage()).
    let puts = manifest_puts(reg, repo);
    let tag_at = puts
        .iter()
        .position(|r| r == tag)
        .unwrap_or_else(|| panic!("no PUT of tag {tag}: {puts:?}"));
    for d in digests.iter().map(String::as_str).chain([printed_digest]) {
        let at = puts
            .iter()
            .position(|r| r == d)
            .unwrap_or_else(|| panic!("{d} was not put by digest: {puts:?}"));
        assert!(at < tag_at, "{d} put before the tag: {puts:?}");
    }
    digests
}

#[test]
fn multi_platform_archive_is_pushed_as_an_oci_index() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = two_platforms(4300, "multi:3");
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let p = path.to_str().unwrap();

    // Layers as stored (gzip): the archive's own platform manifests, in a new index.
    let out = run(&["push", "--insecure", p, &reg.reference("idx")]);
    let (r, digest) = single_result(&lines_of(&out));
    assert_eq!(r, reg.reference("idx:3"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&built.images[0].config_digest)
            && err.contains(&built.images[1].config_digest),
        "reports both image IDs: {err}"
    );
    let digests = assert_index(&reg, "idx", "3", &built, &digest, MT_OCI_LAYER_GZIP);
    let archive_manifests: Vec<String> = built
        .images
        .iter()
        .map(|i| i.manifest_digest.clone().unwrap())
        .collect();
    assert_eq!(
        digests, archive_manifests,
        "platform manifests kept as stored"
    );
    // ... and the archive's index itself, byte for byte: the digest users pinned resolves.
    assert_eq!(
        Some(digest.clone()),
        built.index_digest,
        "the archive's index digest is kept"
    );
    assert!(err.contains("digest kept"), "{err}");
    if let Some(d) = crane::digest(&reg, "idx:3") {
        assert_eq!(d, digest, "crane sees the archive's index digest");
    }
    let inspected = |extra: &[&str]| -> Value {
        let mut args = vec!["inspect", "--json"];
        args.extend_from_slice(extra);
        args.push(p);
        let out = run(&args);
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["digests"][0].clone()
    };
    let d = inspected(&[]);
    assert_eq!(d["archiveDigest"], digest.as_str(), "{d}");
    assert_eq!(d["pushDigest"], digest.as_str(), "{d}");
    assert!(d["digestChanged"].is_null(), "{d}");
    let d = inspected(&["--platform", "linux/arm64"]);
    assert_eq!(
        d["pushDigest"].as_str(),
        built.images[1].manifest_digest.as_deref(),
        "{d}"
    );
    assert!(
        d["digestChanged"].as_str().unwrap().contains("--platform"),
        "{d}"
    );

    // A second push of the same archive: the same index.
    let (_, again) = single_result(&push_ok(&[
        "push",
        "--insecure",
        "-q",
        p,
        &reg.reference("idx"),
    ]));
    assert_eq!(again, digest, "deterministic index");

    // Re-encoded (zstd): new platform manifests, each in place by digest before the tag.
    let out = run(&[
        "push",
        "--insecure",
        "-q",
        "--compression",
        "zstd",
        p,
        &reg.reference("idx-zstd:v1"),
    ]);
    let (r, zdigest) = single_result(&lines_of(&out));
    assert_eq!(r, reg.reference("idx-zstd:v1"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digest changed") && err.contains("--compression zstd"),
        "says the digest changed and why, even with -q: {err}"
    );
    let d = inspected(&["--compression", "zstd"]);
    assert_eq!(
        d["pushDigest"],
        zdigest.as_str(),
        "inspect predicts the push: {d}"
    );
    assert_eq!(d["archiveDigest"], digest.as_str(), "{d}");
    let zdigests = assert_index(&reg, "idx-zstd", "v1", &built, &zdigest, MT_OCI_LAYER_ZSTD);
    for d in &zdigests {
        assert!(
            !archive_manifests.contains(d),
            "re-encoded manifests are new"
        );
    }

    // Streaming path: the same index as the seekable one.
    let piped = run_with(
        &["push", "--insecure", "-q", "-", &reg.reference("idx-stdin")],
        &[],
        Some(p),
    );
    let (_, piped_digest) = single_result(&lines_of(&piped));
    assert_eq!(piped_digest, digest, "stdin gives the same index");
    assert_index(
        &reg,
        "idx-stdin",
        "3",
        &built,
        &piped_digest,
        MT_OCI_LAYER_GZIP,
    );
}

#[test]
fn image_id_pin_checks_the_platform_selected() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = two_platforms(4400, "pinned:1");
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let (amd64, arm64) = (&built.images[0], &built.images[1]);

    // The pin names the selected platform's config: pushed.
    let (_, digest) = single_result(&push_ok(&[
        "push",
        "--insecure",
        "-q",
        "--platform",
        "linux/arm64",
        "--expect-image-id",
        &arm64.config_digest,
        p,
        &reg.reference("pin/ok"),
    ]));
    assert_pushed(&reg, "pin/ok:1", arm64, &digest, MT_OCI_LAYER_GZIP);

    // The pin names another platform's config: refused, nothing tagged.
    let out = run(&[
        "push",
        "--insecure",
        "--platform",
        "linux/arm64",
        "--expect-image-id",
        &amd64.config_digest,
        p,
        &reg.reference("pin/other"),
    ]);
    let err = push_refused(&out);
    assert!(
        err.contains(&amd64.config_digest) && err.contains(&arm64.config_digest),
        "names the pin and the image ID found: {err}"
    );
    assert!(reg.tags("pin/other").is_empty());

    // A pin naming no platform of the archive, no platform chosen: refused, nothing tagged.
    let wrong = format!("sha256:{}", "0".repeat(64));
    for (stdin, repo) in [(false, "pin/none"), (true, "pin/none-stdin")] {
        let target = reg.reference(repo);
        let args = [
            "push",
            "--insecure",
            "--expect-image-id",
            &wrong,
            if stdin { "-" } else { p },
            &target,
        ];
        push_refused(&run_with(&args, &[], stdin.then_some(p)));
        assert!(reg.tags(repo).is_empty(), "nothing tagged in {repo}");
    }
}

/// A pin names one config. Without `--platform`, a multi-platform image would be pinned only in
/// part (the other platforms unchecked), so the push is refused, saying how to choose: nothing
/// is tagged. (With `--platform`, see `image_id_pin_checks_the_platform_selected`.)
#[test]
fn image_id_pin_on_a_multi_platform_archive_asks_for_a_platform() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = two_platforms(4500, "pinmp:1");
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let out = run(&[
        "push",
        "--insecure",
        "-q",
        "--expect-image-id",
        &built.images[1].config_digest,
        path.to_str().unwrap(),
        &reg.reference("pinmp"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("2 platforms") && err.contains("--platform"),
        "{err}"
    );
    assert!(reg.tags("pinmp").is_empty(), "nothing tagged");
}

// ---------------------------------------------------------------------------
// 6. TLS + htpasswd with an OCI-layout (docker 25+) archive
// ---------------------------------------------------------------------------

#[test]
fn tls_htpasswd_registry_with_a_docker25_oci_layout_archive() {
    let reg = Registry::tls_htpasswd();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::Docker25Oci,
        &[ImageSpec::new(&["secure/app:25"], two_small_layers(4600))],
    );
    let image = &built.images[0];
    let path = archives::write_to(dir.path(), "docker25.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let ca = reg.ca_file.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let auth = reg.auth_file.clone().unwrap();
    let auth = auth.to_str().unwrap();

    // The CA but no credentials: refused before anything is read, nothing tagged.
    let err = push_refused(&run(&[
        "push",
        "--ca-file",
        ca,
        p,
        &reg.reference("sec/oci"),
    ]));
    assert!(
        err.contains("refused the credentials") || err.contains("401"),
        "{err}"
    );
    assert!(reg.tags("sec/oci").is_empty());

    // --ca-file + --auth-file, seekable.
    let (r, digest) = single_result(&push_ok(&[
        "push",
        "-q",
        "--ca-file",
        ca,
        "--auth-file",
        auth,
        p,
        &reg.reference("sec/oci"),
    ]));
    assert_eq!(r, reg.reference("sec/oci:25"));
    // Uncompressed layers in the layout: gzip-encoded for the registry.
    assert_pushed(&reg, "sec/oci:25", image, &digest, MT_OCI_LAYER_GZIP);

    // --compression none: the layout's own manifest, pushed unchanged.
    let (_, kept) = single_result(&push_ok(&[
        "push",
        "-q",
        "--ca-file",
        ca,
        "--auth-file",
        auth,
        "--compression",
        "none",
        p,
        &reg.reference("sec/oci-none"),
    ]));
    assert_eq!(Some(kept.clone()), image.manifest_digest);
    assert_pushed(&reg, "sec/oci-none:25", image, &kept, MT_OCI_LAYER);

    // Credentials from DOCKER_CONFIG, the archive zstd-compressed through a pipe.
    let zst = archives::write_to(
        dir.path(),
        "docker25.tar.zst",
        &archives::compress_whole(&built.bytes, Comp::Zstd),
    );
    let out = run_with(
        &[
            "push",
            "-q",
            "--ca-file",
            ca,
            "-",
            &reg.reference("sec/oci-stdin"),
        ],
        &[("DOCKER_CONFIG", reg.docker_config_dir().into_os_string())],
        Some(zst.to_str().unwrap()),
    );
    let (_, piped) = single_result(&lines_of(&out));
    assert_eq!(piped, digest, "the streaming path pushes the same manifest");
    assert_pushed(&reg, "sec/oci-stdin:25", image, &piped, MT_OCI_LAYER_GZIP);
}

// ---------------------------------------------------------------------------
// Re-pushes with a forced codec
// ---------------------------------------------------------------------------

/// Blob upload requests (PATCH) the registry has seen so far.
fn patches(reg: &Registry) -> usize {
    reg.requests()
        .iter()
        .filter(|r| r.is_client() && r.method == "PATCH")
        .count()
}

/// `--compression none` on a docker-save archive pushes each layer as stored, under its
/// diff_id: a second push of the same archive has nothing to send (as it has with gzip/zstd).
#[test]
fn a_repush_with_compression_none_of_a_docker_save_archive_uploads_nothing() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["again:1"], two_small_layers(4700))],
    );
    let path = archives::write_to(dir.path(), "legacy.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let args = [
        "push",
        "--insecure",
        "--compression",
        "none",
        p,
        &reg.reference("again"),
    ];
    let (_, first) = single_result(&lines_of(&run(&args)));
    let before = patches(&reg);
    let out = run(&args);
    let (_, second) = single_result(&lines_of(&out));
    assert_eq!(first, second);
    assert_eq!(patches(&reg), before, "a re-push uploads nothing");
}

/// A multi-platform archive re-pushed with the same forced codec: the layers this encoder
/// already produced are in the registry (behind the index the tag points at), none is sent.
#[test]
fn a_repush_of_a_multi_platform_archive_with_a_forced_codec_uploads_nothing() {
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let built = two_platforms(4800, "again-mp:1");
    let path = archives::write_to(dir.path(), "containerd.tar", &built.bytes);
    let p = path.to_str().unwrap();
    let args = [
        "push",
        "--insecure",
        "--compression",
        "zstd",
        p,
        &reg.reference("again-mp"),
    ];
    let (_, first) = single_result(&lines_of(&run(&args)));
    let before = patches(&reg);
    let (_, second) = single_result(&lines_of(&run(&args)));
    assert_eq!(first, second, "the same index");
    assert_eq!(patches(&reg), before, "a re-push uploads nothing");
}
