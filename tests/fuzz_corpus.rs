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

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use imageimport::archive::{ArchiveError, ImageEntry, resolve, scan};
use imageimport::pipeline::CompressionPolicy;
use imageimport::pipeline::layer::{self, LayerError, LayerFacts};

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
        (
            "valid-docker25-by-id-go-nulls.tar".into(),
            docker25_saved_by_id(&ImageSpec::new(&[], vec![small(1), small(2)])).bytes,
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
    // The bombs' first headers (the 600 MiB of data left out): refused on the header.
    seeds.push((
        "hostile-pax-header-over-cap.tar".into(),
        hostile::bomb_head(b'x'),
    ));
    seeds.push((
        "hostile-long-name-over-cap.tar".into(),
        hostile::bomb_head(b'L'),
    ));
    for (n, bytes) in &seeds {
        assert!(bytes.len() < 64 << 10, "seed {n} is {} bytes", bytes.len());
        std::fs::write(dir.join(n), bytes).unwrap();
    }
}

/// How each committed input must end, through the stream reader and the seekable one: `ok`,
/// or the kind of the refusal (`Variant` or `ForbiddenMember(Problem)`). Verification errors
/// (`DiffIdMismatch`, `DigestMismatch`) come from checking each layer read against the config
/// and its descriptor, as `push` does before any manifest.
const EXPECTED: &[(&str, &str, &str)] = &[
    // (input, stream reader, seekable reader)
    (
        "seeds/hostile-absolute-path-member.tar",
        "ForbiddenMember(AbsolutePath)",
        "ForbiddenMember(AbsolutePath)",
    ),
    (
        "seeds/hostile-char-device-member.tar",
        "ForbiddenMember(ForbiddenType(\"character device\"))",
        "ForbiddenMember(ForbiddenType(\"character device\"))",
    ),
    (
        "seeds/hostile-config-digest-mismatch.tar",
        "DigestMismatch",
        "DigestMismatch",
    ),
    (
        "seeds/hostile-diff-ids-count-mismatch.tar",
        "LayerCountMismatch",
        "LayerCountMismatch",
    ),
    (
        "seeds/hostile-dotdot-member.tar",
        "ForbiddenMember(ParentComponent)",
        "ForbiddenMember(ParentComponent)",
    ),
    (
        "seeds/hostile-duplicate-member.tar",
        "ForbiddenMember(Duplicate)",
        "ForbiddenMember(Duplicate)",
    ),
    (
        "seeds/hostile-enormous-member-size.tar",
        "Truncated",
        "Truncated",
    ),
    (
        "seeds/hostile-fifo-member.tar",
        "ForbiddenMember(ForbiddenType(\"FIFO\"))",
        "ForbiddenMember(ForbiddenType(\"FIFO\"))",
    ),
    (
        "seeds/hostile-hardlink-member.tar",
        "ForbiddenMember(HardLink)",
        "ForbiddenMember(HardLink)",
    ),
    // The stream reader meets the 64 MiB claim before the missing bytes; the seekable one
    // sees the claim reach past the end of the file.
    (
        "seeds/hostile-long-name-over-cap.tar",
        "ExtensionTooLarge",
        "ExtensionTooLarge",
    ),
    (
        "seeds/hostile-pax-header-over-cap.tar",
        "ExtensionTooLarge",
        "ExtensionTooLarge",
    ),
    (
        "seeds/hostile-manifest-json-size-lie.tar",
        "MetadataTooLarge",
        "Truncated",
    ),
    (
        "seeds/hostile-oci-blob-mismatch.tar",
        "DigestMismatch",
        "DigestMismatch",
    ),
    (
        "seeds/hostile-oci-config-digest-mismatch.tar",
        "DigestMismatch",
        "DigestMismatch",
    ),
    (
        "seeds/hostile-oci-duplicate-layers-key.tar",
        "BadJson",
        "BadJson",
    ),
    (
        "seeds/hostile-oci-index-json-with-layers.tar",
        "Ambiguous",
        "Ambiguous",
    ),
    (
        "seeds/hostile-oci-index-with-layers.tar",
        "Ambiguous",
        "Ambiguous",
    ),
    (
        "seeds/hostile-oci-manifest-with-manifests.tar",
        "Ambiguous",
        "Ambiguous",
    ),
    (
        "seeds/hostile-oci-media-type-mismatch.tar",
        "Ambiguous",
        "Ambiguous",
    ),
    (
        "seeds/hostile-oci-schema-version-1.tar",
        "Ambiguous",
        "Ambiguous",
    ),
    (
        "seeds/hostile-oci-digest-path-traversal.tar",
        "BadMetadata",
        "BadMetadata",
    ),
    (
        "seeds/hostile-symlink-loop.tar",
        "SymlinkLoop",
        "SymlinkLoop",
    ),
    (
        "seeds/hostile-symlink-outside.tar",
        "SymlinkEscape",
        "SymlinkEscape",
    ),
    (
        "seeds/hostile-tampered-layer.tar",
        "DiffIdMismatch",
        "DiffIdMismatch",
    ),
    (
        "seeds/hostile-truncated-mid-layer.tar",
        "Truncated",
        "Truncated",
    ),
    ("seeds/valid-containerd-multiplatform.tar", "ok", "ok"),
    ("seeds/valid-docker-legacy-symlink-dedup.tar", "ok", "ok"),
    ("seeds/valid-docker-legacy-two-images.tar", "ok", "ok"),
    ("seeds/valid-docker-legacy.tar", "ok", "ok"),
    // The seekable reader reads plain tar files only (the importer decompresses a compressed
    // file as a stream).
    ("seeds/valid-docker-legacy.tar.gz", "ok", "NotTar"),
    ("seeds/valid-docker25-by-id-go-nulls.tar", "ok", "ok"),
    ("seeds/valid-docker25-oci.tar", "ok", "ok"),
    ("seeds/valid-oci-archive-gzip.tar", "ok", "ok"),
    ("seeds/valid-oci-archive-none.tar", "ok", "ok"),
    ("seeds/valid-oci-archive-zstd.tar", "ok", "ok"),
    ("seeds/valid-skopeo-docker-archive-gzip.tar", "ok", "ok"),
    (
        "regressions/long-path-100000.tar",
        "BadMetadata",
        "BadMetadata",
    ),
    ("regressions/nested-index-80.tar", "ok", "ok"),
    ("regressions/ws-config.tar", "ok", "ok"),
];

/// `ForbiddenMember(Problem)` or the variant's name.
fn kind(e: &ArchiveError) -> String {
    if let ArchiveError::ForbiddenMember { problem, .. } = e {
        return format!("ForbiddenMember({problem:?})");
    }
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

fn archive_error(e: LayerError) -> ArchiveError {
    match e {
        LayerError::Archive(a) => a,
        LayerError::Read(io) | LayerError::Sink(io) => ArchiveError::Io(io),
    }
}

fn facts_of(member: &str, data: &mut dyn Read) -> Result<LayerFacts, ArchiveError> {
    layer::process(member, data, CompressionPolicy::default(), &mut |_| Ok(()))
        .map_err(archive_error)
}

/// Every image's layers against its config's diff_ids and the archive's descriptors.
fn verify(entries: &[ImageEntry], facts: &HashMap<String, LayerFacts>) -> Result<(), ArchiveError> {
    for img in entries.iter().flat_map(|e| &e.images) {
        for (i, l) in img.layers.iter().enumerate() {
            let f = &facts[&l.member];
            if let Some(d) = &l.declared
                && d.digest != f.stored_digest
            {
                return Err(ArchiveError::DigestMismatch {
                    member: l.member.clone(),
                    expected: d.digest.clone(),
                    actual: f.stored_digest.clone(),
                });
            }
            if f.diff_id != img.diff_ids[i] {
                return Err(ArchiveError::DiffIdMismatch {
                    index: i,
                    member: l.member.clone(),
                    expected: img.diff_ids[i].clone(),
                    actual: f.diff_id.clone(),
                });
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Collect(HashMap<String, LayerFacts>);

impl scan::LayerVisitor for Collect {
    type Error = ArchiveError;
    fn layer(&mut self, member: &str, _size: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
        let f = facts_of(member, data)?;
        self.0.insert(member.to_string(), f);
        Ok(())
    }
}

fn through_stream(data: &[u8]) -> Result<(), ArchiveError> {
    let raw: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(data.to_vec()));
    let reader = imageimport::pipeline::source::decompressing(raw, None)?;
    let mut layers = Collect::default();
    let (catalog, _) = scan::stream(reader, &mut layers)?;
    verify(&resolve::images(&catalog)?, &layers.0)
}

fn through_index(data: &[u8]) -> Result<(), ArchiveError> {
    let mut file = tempfile::tempfile()?;
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    let catalog = scan::index(&file)?;
    let entries = resolve::images(&catalog)?;
    let mut facts = HashMap::new();
    for l in entries
        .iter()
        .flat_map(|e| &e.images)
        .flat_map(|i| &i.layers)
    {
        file.seek(SeekFrom::Start(catalog.offsets[&l.member]))?;
        let mut data = (&file).take(catalog.sizes[&l.member]);
        facts.insert(l.member.clone(), facts_of(&l.member, &mut data)?);
    }
    verify(&entries, &facts)
}

/// Every committed input ends as `EXPECTED` says, through both readers; and every input has an
/// expectation (a new seed or regression needs one).
#[test]
fn inputs_end_as_expected() {
    let mut failures = Vec::new();
    let mut files: Vec<String> = Vec::new();
    for dir in ["seeds", "regressions"] {
        files.extend(inputs(dir).iter().map(|p| format!("{dir}/{}", name(p))));
    }
    for f in &files {
        if !EXPECTED.iter().any(|(e, _, _)| e == f) {
            failures.push(format!("{f}: no expected outcome in EXPECTED"));
        }
    }
    for (file, stream, index) in EXPECTED {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(file);
        let Ok(data) = std::fs::read(&path) else {
            failures.push(format!("{file}: missing"));
            continue;
        };
        for (reader, want, got) in [
            ("stream", stream, through_stream(&data)),
            ("index", index, through_index(&data)),
        ] {
            let got_kind = match &got {
                Ok(()) => "ok".to_string(),
                Err(e) => kind(e),
            };
            if got_kind != *want {
                let detail = got.err().map(|e| e.to_string()).unwrap_or_default();
                failures.push(format!(
                    "{file} ({reader}): expected {want}, got {got_kind} {detail}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
