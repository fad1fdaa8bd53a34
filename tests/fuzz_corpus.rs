//! Runs the fuzz targets' code (`fuzz/src/lib.rs`) over the committed seed corpus
//! (`fuzz/seeds/`) and over inputs that once broke the readers (`fuzz/regressions/`), on
//! stable Rust and without cargo-fuzz, so CI keeps exercising them.
//!
//! The seeds are written by the generators in `tests/support/archives.rs`:
//! `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus -- --ignored write_seeds`.

#[allow(dead_code)]
#[path = "support/archives.rs"]
mod archives;
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("read dir entry").path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every input through both targets; a panic in either is a failure naming the file.
fn run_all(files: &[PathBuf]) {
    let mut failures = Vec::new();
    for p in files {
        let data = std::fs::read(p).expect("read input");
        for (target, run) in [
            (
                "archive_stream",
                harness::run_stream as fn(&[u8]) -> harness::Outcome,
            ),
            ("archive_index", harness::run_index),
        ] {
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target} panicked on {}: {msg}", name(p)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeds_do_not_panic() {
    let seeds = inputs("seeds");
    assert!(seeds.len() >= 10, "fuzz/seeds/ is missing its seeds");
    run_all(&seeds);
}

#[test]
fn regressions_do_not_panic() {
    run_all(&inputs("regressions"));
}

/// `valid-*` seeds are real archives: both readers must find their images and every layer
/// must process cleanly (`.tar.gz`: the stream reader only; the seekable path reads plain
/// tar files).
#[test]
fn valid_seeds_are_read() {
    let mut n = 0;
    for p in inputs("seeds") {
        let file = name(&p);
        if !file.starts_with("valid-") {
            continue;
        }
        n += 1;
        let data = std::fs::read(&p).expect("read seed");
        let s = harness::run_stream(&data);
        assert_eq!(s.scan_error, None, "{file}: stream scan");
        assert_eq!(s.resolve_error, None, "{file}: stream resolve");
        assert!(s.images.unwrap_or(0) >= 1, "{file}: no image");
        assert!(s.layers_seen >= 1, "{file}: no layer");
        assert_eq!(s.layers_ok, s.layers_seen, "{file}");
        if file.ends_with(".tar") {
            let i = harness::run_index(&data);
            assert_eq!(i.scan_error, None, "{file}: index");
            assert_eq!(i.resolve_error, None, "{file}: index resolve");
            assert_eq!(i.images, s.images, "{file}: images");
            assert!(i.layers_seen >= 1, "{file}: no layer read at its offset");
            assert_eq!(i.layers_ok, i.layers_seen, "{file}");
        }
    }
    assert!(n >= 5, "too few valid seeds");
}

/// Regenerates `fuzz/seeds/` (deterministic: unchanged generators give unchanged bytes).
#[test]
#[ignore = "writes fuzz/seeds/; run with FUZZ_WRITE_SEEDS=1"]
fn write_seeds() {
    use archives::*;
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let small = |seed: u64| layer(seed, 2, 300);
    let one = || vec![ImageSpec::new(&["fuzz:1"], vec![small(1), small(2)])];
    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        (
            "valid-docker-legacy.tar".into(),
            build(&Format::DockerLegacy, &one()).bytes,
        ),
        (
            "valid-docker-legacy-two-images.tar".into(),
            build(
                &Format::DockerLegacy,
                &[
                    ImageSpec::new(&["fuzz:1", "example.com:5000/team/fuzz:v2"], vec![small(1)]),
                    ImageSpec::new(&[], vec![small(3)]),
                ],
            )
            .bytes,
        ),
        (
            "valid-docker-legacy-symlink-dedup.tar".into(),
            build(
                &Format::DockerLegacySymlinkDedup,
                &[ImageSpec::new(
                    &["dedup:1"],
                    vec![small(1), small(2), small(1)],
                )],
            )
            .bytes,
        ),
        (
            "valid-docker25-oci.tar".into(),
            build(&Format::Docker25Oci, &one()).bytes,
        ),
    ];
    for (c, n) in [
        (Comp::None, "none"),
        (Comp::Gzip, "gzip"),
        (Comp::Zstd, "zstd"),
    ] {
        let f = Format::OciArchive {
            layer_compression: c,
        };
        seeds.push((
            format!("valid-oci-archive-{n}.tar"),
            build(&f, &one()).bytes,
        ));
    }
    let f = Format::SkopeoDockerArchive {
        layer_compression: Comp::Gzip,
    };
    seeds.push((
        "valid-skopeo-docker-archive-gzip.tar".into(),
        build(&f, &one()).bytes,
    ));
    let specs = [
        ImageSpec::new(&["multi:1"], vec![small(4)]),
        ImageSpec::new(&["multi:1"], vec![small(5)]).platform("linux", "arm64"),
    ];
    let f = Format::ContainerdMultiPlatform {
        present: vec![("linux".into(), "amd64".into())],
    };
    seeds.push((
        "valid-containerd-multiplatform.tar".into(),
        build(&f, &specs).bytes,
    ));
    let legacy = build(&Format::DockerLegacy, &one()).bytes;
    seeds.push((
        "valid-docker-legacy.tar.gz".into(),
        compress_whole(&legacy, Comp::Gzip),
    ));
    for (n, bytes) in hostile::all() {
        // 64 KiB of noise teaches the fuzzer nothing.
        if n != "not_a_tar" {
            seeds.push((format!("hostile-{}.tar", n.replace('_', "-")), bytes));
        }
    }
    for (n, bytes) in &seeds {
        assert!(bytes.len() < 64 << 10, "seed {n} is {} bytes", bytes.len());
        std::fs::write(dir.join(n), bytes).unwrap();
    }
}
