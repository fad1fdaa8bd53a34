//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs` (which includes this file
//! with `#[path]`, so it must stay a plain module: no crate attributes, no `crate::` paths,
//! and only dependencies the main crate also has: `imageimport`, `tempfile`).
//!
//! Both entry points take arbitrary bytes and must never panic. Errors are the expected
//! outcome for most inputs; what is checked is that the code under test does not panic,
//! hang or blow up memory, and that a few invariants hold whenever it reports success.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use imageimport::archive::{ArchiveError, Catalog, ImageEntry, digest, resolve, scan};
use imageimport::pipeline::layer::{self, LayerError, LayerFacts};
use imageimport::pipeline::{CompressionPolicy, Selection, plan, source};
use imageimport::registry::Target;

/// What running one input established (for the corpus test's summary).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `Err` text of the scan (stream or index), if it failed.
    pub scan_error: Option<String>,
    /// Layers handed to the visitor / read at their offsets, and how many processed cleanly.
    pub layers_seen: usize,
    pub layers_ok: usize,
    /// Images `resolve::images` found, or its error.
    pub images: Option<usize>,
    pub resolve_error: Option<String>,
}

/// The stream path (`imageimport import -` and `inspect`): strip a whole-archive gzip/zstd,
/// walk the tar once, run every layer through `layer::process` as it streams, then resolve
/// the catalog into images and plan them.
pub fn run_stream(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let raw: Box<dyn Read + Send> = Box::new(io::Cursor::new(data.to_vec()));
    let reader = match source::decompressing(raw, None) {
        Ok(r) => r,
        Err(e) => {
            out.scan_error = Some(e.to_string());
            return out;
        }
    };
    let mut visitor = Visitor::default();
    let scanned = scan::stream(reader, &mut visitor);
    out.layers_seen = visitor.seen.len();
    out.layers_ok = visitor.facts.len();
    let catalog = match scanned {
        Ok((catalog, mut rest)) => {
            // As the importer does: read to the very end (trailing bytes, compression trailer).
            let _ = io::copy(&mut rest, &mut io::sink());
            catalog
        }
        Err(e) => {
            out.scan_error = Some(e.to_string());
            return out;
        }
    };
    check_catalog(&catalog, None);
    // The scan read every member to its declared end, so a layer that processed cleanly
    // was read exactly as large as its header says.
    for (member, size) in &visitor.seen {
        if let Some(f) = visitor.facts.get(member) {
            assert_eq!(
                f.stored_size, *size,
                "layer {member}: processed {} bytes of a {size}-byte member",
                f.stored_size
            );
            assert_eq!(f.member, *member);
        }
    }
    resolve_and_plan(&catalog, &mut out);
    out
}

/// The seekable path (`imageimport import FILE`): index the file, resolve, plan, then read
/// each layer at its recorded offset through `layer::process`, as the parallel uploader does.
pub fn run_index(data: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    let file = with_file(data);
    let indexed = {
        let mut f = &file;
        f.seek(SeekFrom::Start(0)).expect("seek scratch file");
        scan::index(&file)
    };
    let catalog = match indexed {
        Ok(c) => c,
        Err(e) => {
            out.scan_error = Some(e.to_string());
            return out;
        }
    };
    check_catalog(&catalog, Some(data.len() as u64));
    // Read layer members at their offsets (bounded by the offsets/sizes the index promises
    // lie inside the file), as `push_layer` does for a seekable archive.
    let mut layer_members: Vec<String> = Vec::new();
    if let Ok(entries) = resolve::images(&catalog) {
        for e in &entries {
            for img in &e.images {
                for l in &img.layers {
                    if !layer_members.contains(&l.member) {
                        layer_members.push(l.member.clone());
                    }
                }
            }
        }
    }
    for member in &layer_members {
        let (Some(&offset), Some(&size)) = (catalog.offsets.get(member), catalog.sizes.get(member))
        else {
            panic!("resolved layer {member} has no offset/size in the index");
        };
        out.layers_seen += 1;
        let mut r = &file;
        r.seek(SeekFrom::Start(offset)).expect("seek scratch file");
        let mut taken = r.take(size);
        if let Ok(f) = process(member, &mut taken) {
            assert_eq!(
                f.stored_size, size,
                "layer {member} at {offset}: read {} of {size} bytes inside the file",
                f.stored_size
            );
            assert_eq!(
                &f.stored_digest,
                &digest::sha256_of(&data[offset as usize..(offset + size) as usize]),
                "layer {member}: stored digest is not the digest of its bytes"
            );
            out.layers_ok += 1;
        }
    }
    resolve_and_plan(&catalog, &mut out);
    out
}

/// A layer as the importer reads it: hashed, decompressed, re-encoded with the default
/// policy (gzip for uncompressed layers), output dropped.
fn process(member: &str, data: &mut dyn Read) -> Result<LayerFacts, LayerError> {
    let mut emitted = 0u64;
    let facts = layer::process(member, data, CompressionPolicy::default(), &mut |b| {
        emitted += b.len() as u64;
        Ok(())
    })?;
    if facts.as_stored {
        assert_eq!(
            emitted, facts.stored_size,
            "layer {member}: pushed as stored, but emitted bytes differ from stored size"
        );
    }
    Ok(facts)
}

#[derive(Default)]
struct Visitor {
    /// Member name -> size as the scan announced it, for every layer handed over.
    seen: BTreeMap<String, u64>,
    /// Layers that processed cleanly.
    facts: BTreeMap<String, LayerFacts>,
}

#[derive(Debug)]
#[allow(dead_code)]
enum VisitError {
    Archive(ArchiveError),
    Layer(LayerError),
}

impl From<ArchiveError> for VisitError {
    fn from(e: ArchiveError) -> Self {
        VisitError::Archive(e)
    }
}

impl std::fmt::Display for VisitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VisitError::Archive(e) => write!(f, "{e}"),
            VisitError::Layer(e) => write!(f, "{e}"),
        }
    }
}

impl scan::LayerVisitor for Visitor {
    type Error = VisitError;

    fn layer(&mut self, member: &str, size: u64, data: &mut dyn Read) -> Result<(), VisitError> {
        assert!(
            self.seen.insert(member.to_string(), size).is_none(),
            "layer {member} handed to the visitor twice"
        );
        let facts = process(member, data).map_err(VisitError::Layer)?;
        self.facts.insert(member.to_string(), facts);
        Ok(())
    }
}

/// Invariants of a catalog the scan accepted.
fn check_catalog(catalog: &Catalog, file_len: Option<u64>) {
    for (name, bytes) in &catalog.meta {
        assert_eq!(
            catalog.sizes.get(name).copied(),
            Some(bytes.len() as u64),
            "metadata {name}: kept bytes differ from its member size"
        );
    }
    if let Some(len) = file_len {
        for (name, &offset) in &catalog.offsets {
            let size = catalog.sizes[name];
            assert!(
                offset.checked_add(size).is_some_and(|end| end <= len),
                "member {name}: offset {offset} + size {size} lies outside the {len}-byte file"
            );
        }
    }
}

/// Resolve images, check what a successful resolve promises, and plan them the ways the CLI
/// can (`--all`, the only image, an image by its first tag or its ID).
fn resolve_and_plan(catalog: &Catalog, out: &mut Outcome) {
    let entries = match resolve::images(catalog) {
        Ok(e) => e,
        Err(e) => {
            out.resolve_error = Some(e.to_string());
            return;
        }
    };
    out.images = Some(entries.iter().map(|e| e.images.len()).sum());
    check_entries(catalog, &entries);
    let bare = Target::parse("localhost:5000/fuzz/app").expect("target");
    let tagged = Target::parse("localhost:5000/fuzz/app:t").expect("target");
    let _ = plan::plan(&entries, &Selection::All, &bare, &[], None);
    let _ = plan::plan(&entries, &Selection::Only, &tagged, &[], None);
    let _ = plan::plan(&entries, &Selection::Only, &bare, &[], None);
    for e in entries.iter().take(4) {
        if let Some(t) = e.tags.first() {
            let _ = plan::plan(&entries, &Selection::Image(t.clone()), &bare, &[], None);
        }
        if let Some(i) = e.images.first() {
            let id = i.config_digest.trim_start_matches("sha256:");
            let short = &id[..id.len().min(12)];
            let _ = plan::plan(
                &entries,
                &Selection::Image(short.to_string()),
                &bare,
                &[],
                None,
            );
            let p = i.platform.clone();
            let _ = plan::plan(&entries, &Selection::All, &bare, &[], Some(&p));
        }
    }
}

fn check_entries(catalog: &Catalog, entries: &[ImageEntry]) {
    for e in entries {
        let _ = e.display_name();
        for img in &e.images {
            assert_eq!(
                img.config_digest,
                digest::sha256_of(&img.config),
                "image config digest is not the sha256 of its bytes"
            );
            assert_eq!(img.layers.len(), img.diff_ids.len());
            for l in &img.layers {
                assert!(
                    matches!(
                        catalog.kinds.get(&l.member),
                        Some(imageimport::archive::members::MemberKind::File)
                    ),
                    "layer {} is not a regular file member",
                    l.member
                );
            }
        }
    }
}

/// One scratch file per thread, rewritten for every input (libFuzzer runs one input at a
/// time per process; a fresh temp file each time would dominate the run time).
fn with_file(data: &[u8]) -> File {
    thread_local! {
        static SCRATCH: File = scratch_file();
    }
    SCRATCH.with(|f| {
        let mut w = f.try_clone().expect("clone scratch file");
        w.set_len(0).expect("truncate scratch file");
        w.seek(SeekFrom::Start(0)).expect("seek scratch file");
        w.write_all(data).expect("write scratch file");
        w.seek(SeekFrom::Start(0)).expect("seek scratch file");
        w
    })
}

fn scratch_file() -> File {
    // tmpfs when there is one: the file never touches a disk.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(f) = tempfile::tempfile_in(shm)
    {
        return f;
    }
    tempfile::tempfile().expect("create scratch file")
}
