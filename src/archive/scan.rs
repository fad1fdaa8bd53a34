//! Walking a tar archive once: checking every member, keeping the metadata, and handing
//! each possible layer to the caller while it streams (or noting its offset when the archive
//! is a seekable file, so layers can be read later, in parallel).

use std::fs::File;
use std::io::{self, Read};

use super::catalog::{Catalog, METADATA_MEMBER_CAP, Role, looks_like_json, role_of};
use super::error::{ArchiveError, MemberProblem};
use super::members::{self, MemberKind};

mod extension_cap;
pub use extension_cap::EXTENSION_CAP;
use extension_cap::{ExtensionCap, Refusal};

/// What the caller does with a possible layer: read it to the end (or not; the rest is
/// drained and counted here so truncation is always noticed).
pub trait LayerVisitor {
    type Error: From<ArchiveError>;
    fn layer(&mut self, member: &str, size: u64, data: &mut dyn Read) -> Result<(), Self::Error>;

    /// Member `member` is read to its end, which is archive byte `offset` (its padding not yet
    /// read): everything before is in `catalog` and handed over. A stream can be taken up again
    /// from here ([`stream_from`]).
    fn boundary(
        &mut self,
        _member: &str,
        _catalog: &Catalog,
        _offset: u64,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Where a stream read before stopped (a [`LayerVisitor::boundary`]): its catalog so far, the
/// last member's name, and the archive offset `reader` starts at.
pub struct Resume {
    pub catalog: Catalog,
    pub last: String,
    pub offset: u64,
}

/// [`stream`] taken up at `from`: `reader` yields the archive's bytes from `from.offset` on.
pub fn stream_from<R: Read, V: LayerVisitor>(
    from: Resume,
    mut reader: R,
    visitor: &mut V,
) -> Result<(Catalog, R), V::Error> {
    // The member's padding up to the next 512-byte header.
    let pad = from.offset.next_multiple_of(512) - from.offset;
    let skipped = io::copy(&mut (&mut reader).take(pad), &mut io::sink())
        .map_err(|e| tar_error(e, &from.last, true))?;
    if skipped != pad {
        return Err(ArchiveError::Truncated { member: from.last }.into());
    }
    let start = Start {
        offset: from.offset + pad,
        last: Some(from.last),
    };
    scan_stream(from.catalog, reader, visitor, start)
}

/// Where a streamed scan starts: the archive offset of its first header, and the member read
/// before it (None: the start of the archive).
struct Start {
    offset: u64,
    last: Option<String>,
}

/// Reads an archive front to back, never seeking. Returns the catalog and the reader (so
/// the caller can drain it, e.g. to finish hashing the whole input).
pub fn stream<R: Read, V: LayerVisitor>(
    reader: R,
    visitor: &mut V,
) -> Result<(Catalog, R), V::Error> {
    stream_into(Catalog::default(), reader, visitor)
}

/// [`stream`] into a given (empty) catalog: tests pass one with small caps.
fn stream_into<R: Read, V: LayerVisitor>(
    catalog: Catalog,
    reader: R,
    visitor: &mut V,
) -> Result<(Catalog, R), V::Error> {
    let start = Start {
        offset: 0,
        last: None,
    };
    scan_stream(catalog, reader, visitor, start)
}

fn scan_stream<R: Read, V: LayerVisitor>(
    mut catalog: Catalog,
    reader: R,
    visitor: &mut V,
    start: Start,
) -> Result<(Catalog, R), V::Error> {
    let mut archive = tar::Archive::new(ExtensionCap::new(reader));
    {
        let entries = archive
            .entries()
            .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
        let mut seen_any = start.last.is_some();
        let mut last = start.last.unwrap_or_else(|| "the first header".into());
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_error(e, &last, seen_any))?;
            seen_any = true;
            let Some((name, kind, size)) = admit(&mut catalog, &entry)? else {
                continue;
            };
            last = name.clone();
            if kind != MemberKind::File {
                continue;
            }
            // tar-rs reads no further than asked: once the data is drained, this is where
            // the input stands.
            let end = start.offset + entry.raw_file_position() + size;
            let mut counted = Counted {
                inner: &mut entry,
                n: 0,
            };
            match role_of(&name) {
                Role::Metadata => {
                    catalog.admit_metadata(&name, size)?;
                    let bytes = read_exact_len(&mut counted, size, &name)?;
                    catalog.meta.insert(name.clone(), bytes);
                }
                Role::Blob if size <= METADATA_MEMBER_CAP => {
                    let bytes = read_exact_len(&mut counted, size, &name)?;
                    // A JSON document is never a layer: over the total cap, it is refused.
                    if looks_like_json(&bytes) {
                        catalog.admit_metadata(&name, size)?;
                        catalog.meta.insert(name.clone(), bytes);
                    } else {
                        visitor.layer(&name, size, &mut io::Cursor::new(bytes))?;
                    }
                }
                Role::Blob | Role::Layer => visitor.layer(&name, size, &mut counted)?,
                Role::Ignored => {}
            }
            io::copy(&mut counted, &mut io::sink()).map_err(|e| tar_error(e, &name, true))?;
            if counted.n != size {
                return Err(ArchiveError::Truncated { member: name }.into());
            }
            visitor.boundary(&name, &catalog, end)?;
        }
        if !seen_any {
            return Err(ArchiveError::NotTar("no tar members in input".into()).into());
        }
    }
    Ok((catalog, archive.into_inner().into_inner()))
}

/// Indexes a seekable uncompressed tar file: members, metadata bytes and data offsets.
/// Layer data is not read here.
pub fn index(file: &File) -> Result<Catalog, ArchiveError> {
    index_into(Catalog::default(), file)
}

/// [`index`] into a given (empty) catalog: tests pass one with small caps.
fn index_into(mut catalog: Catalog, file: &File) -> Result<Catalog, ArchiveError> {
    let len = file.metadata()?.len();
    let mut archive = tar::Archive::new(ExtensionCap::new(file));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
    let mut last = String::from("the first header");
    let mut seen_any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(e, &last, seen_any))?;
        seen_any = true;
        let offset = entry.raw_file_position();
        let Some((name, kind, size)) = admit(&mut catalog, &entry)? else {
            continue;
        };
        last = name.clone();
        // Seeking past the end succeeds silently; a member must lie inside the file.
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(ArchiveError::Truncated { member: name });
        }
        if kind != MemberKind::File {
            continue;
        }
        catalog.offsets.insert(name.clone(), offset);
        match role_of(&name) {
            Role::Metadata => {
                catalog.admit_metadata(&name, size)?;
                let bytes = read_exact_len(&mut entry, size, &name)?;
                catalog.meta.insert(name, bytes);
            }
            // The whole small blob decides, exactly as in `stream` (leading whitespace is
            // valid JSON): both readers must agree on what is metadata.
            Role::Blob if size <= METADATA_MEMBER_CAP => {
                let bytes = read_exact_len(&mut entry, size, &name)?;
                if looks_like_json(&bytes) {
                    catalog.admit_metadata(&name, size)?;
                    catalog.meta.insert(name, bytes);
                }
            }
            _ => {}
        }
    }
    if !seen_any {
        return Err(ArchiveError::NotTar("no tar members in input".into()));
    }
    Ok(catalog)
}

/// Check one member and record it. `None` for members that carry nothing (`./`, PAX globals).
fn admit<R: Read>(
    catalog: &mut Catalog,
    entry: &tar::Entry<'_, R>,
) -> Result<Option<(String, MemberKind, u64)>, ArchiveError> {
    if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
        return Ok(None);
    }
    let raw_name = entry.path_bytes();
    let name = members::normalize_name(&raw_name)
        .map_err(|(member, problem)| ArchiveError::ForbiddenMember { member, problem })?;
    let kind = match members::classify(entry.header()) {
        Ok(MemberKind::Symlink(_)) => {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            MemberKind::Symlink(target)
        }
        Ok(kind) => kind,
        Err(problem) => {
            return Err(ArchiveError::ForbiddenMember {
                member: String::from_utf8_lossy(&raw_name).into_owned(),
                problem,
            });
        }
    };
    if name.is_empty() {
        return Ok(None);
    }
    let size = if kind == MemberKind::File {
        entry.size()
    } else {
        0
    };
    catalog.add(&name, kind.clone(), size)?;
    Ok(Some((name, kind, size)))
}

fn tar_error(e: io::Error, last: &str, seen_any: bool) -> ArchiveError {
    match Refusal::of(&e) {
        Some(Refusal::TooLarge { what, size }) => {
            return ArchiveError::ExtensionTooLarge {
                what,
                size: *size,
                cap: EXTENSION_CAP,
                after: if seen_any {
                    last.to_string()
                } else {
                    "the start of the archive".into()
                },
            };
        }
        Some(Refusal::ExtendedSparse { member }) => {
            return ArchiveError::ForbiddenMember {
                member: member.clone(),
                problem: MemberProblem::ForbiddenType("sparse file"),
            };
        }
        None => {}
    }
    // The tar crate's messages can quote raw header bytes: never echo them.
    let msg = e.to_string();
    let header_problem =
        msg.contains("checksum") || msg.contains("numeric field") || msg.contains("header");
    if !seen_any {
        return ArchiveError::NotTar(if header_problem {
            "the input does not start with a tar header".into()
        } else {
            "the input ended before the first tar header".into()
        });
    }
    if header_problem {
        ArchiveError::NotTar(format!("corrupt tar header after {last}"))
    } else {
        ArchiveError::Truncated {
            member: last.to_string(),
        }
    }
}

/// Read exactly `size` bytes (size already checked against a cap by the caller).
fn read_exact_len(r: &mut dyn Read, size: u64, name: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut buf = Vec::with_capacity(size as usize);
    r.take(size)
        .read_to_end(&mut buf)
        .map_err(|_| ArchiveError::Truncated {
            member: name.into(),
        })?;
    if buf.len() as u64 != size {
        return Err(ArchiveError::Truncated {
            member: name.into(),
        });
    }
    Ok(buf)
}

/// Counts bytes read through it.
pub struct Counted<'a, R: Read + ?Sized> {
    pub inner: &'a mut R,
    pub n: u64,
}

impl<R: Read + ?Sized> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Tiny image archives built in memory, and both readers run over them: shared by the unit
/// tests of `archive` and `pipeline::plan`.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::io::{Read, Seek, SeekFrom, Write};

    use serde_json::{Value, json};

    use super::{Catalog, LayerVisitor};
    use crate::archive::error::ArchiveError;
    use crate::archive::formats::{
        ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR,
        OCI_MANIFEST,
    };
    use crate::archive::{ImageEntry, digest, resolve};

    /// A tar writer that writes names and link targets exactly as given (no path checks), so
    /// hostile members can be written too. Names and targets up to 100 bytes (ustar `name`).
    pub(crate) struct TarBuf(tar::Builder<Vec<u8>>);

    impl TarBuf {
        pub(crate) fn new() -> Self {
            TarBuf(tar::Builder::new(Vec::new()))
        }

        pub(crate) fn entry(
            &mut self,
            name: &str,
            kind: tar::EntryType,
            link: &str,
            data: &[u8],
        ) -> &mut Self {
            // The tar crate reads a sparse member's map from a GNU header only.
            let mut h = if kind == tar::EntryType::GNUSparse {
                let mut h = tar::Header::new_gnu();
                h.as_gnu_mut().unwrap().set_real_size(data.len() as u64);
                h
            } else {
                tar::Header::new_ustar()
            };
            let (n, l) = (name.as_bytes(), link.as_bytes());
            assert!(n.len() <= 100 && l.len() <= 100, "fixture names fit ustar");
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(0);
            h.set_cksum();
            self.0.append(&h, data).expect("append to a Vec");
            self
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
            self.entry(name, tar::EntryType::Regular, "", data)
        }

        pub(crate) fn dir(&mut self, name: &str) -> &mut Self {
            self.entry(name, tar::EntryType::Directory, "", b"")
        }

        pub(crate) fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
            self.entry(name, tar::EntryType::Symlink, target, b"")
        }

        pub(crate) fn finish(self) -> Vec<u8> {
            self.0.into_inner().expect("finish a Vec")
        }
    }

    /// A small valid layer (an uncompressed tar holding one file), different for each seed.
    pub(crate) fn layer(seed: u8) -> Vec<u8> {
        let mut t = TarBuf::new();
        t.file(&format!("file-{seed}"), &[seed; 100]);
        t.finish()
    }

    pub(crate) fn sha(bytes: &[u8]) -> String {
        digest::sha256_of(bytes)
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        sha(bytes)["sha256:".len()..].to_string()
    }

    /// An image config for `layers` (their sha256 as diff_ids), `os/arch`.
    pub(crate) fn config(platform: &str, layers: &[Vec<u8>]) -> Vec<u8> {
        let (os, arch) = platform.split_once('/').expect("os/arch");
        let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
        serde_json::to_vec(&json!({
            "architecture": arch,
            "os": os,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// One image of a docker-save archive from before Docker 25: `<hex>.json`, and a
    /// `<v1-id>/` directory with `VERSION`, `json` and `layer.tar` per layer. Returns the
    /// image's `manifest.json` entry (`tags: None` leaves `RepoTags` out, as `docker save
    /// <image-id>` does).
    pub(crate) fn legacy_image(
        t: &mut TarBuf,
        tags: Option<&[&str]>,
        platform: &str,
        layers: &[Vec<u8>],
    ) -> Value {
        let cfg = config(platform, layers);
        let config = format!("{}.json", hex(&cfg));
        t.file(&config, &cfg);
        let mut paths = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let id = v1_id(&cfg, i);
            t.dir(&format!("{id}/"));
            t.file(&format!("{id}/VERSION"), b"1.0");
            t.file(&format!("{id}/json"), br#"{"id":"x"}"#);
            t.file(&format!("{id}/layer.tar"), l);
            paths.push(format!("{id}/layer.tar"));
        }
        let mut entry = json!({"Config": config, "Layers": paths});
        if let Some(tags) = tags {
            entry["RepoTags"] = json!(tags);
        }
        entry
    }

    /// The legacy directory name of layer `i` of the image with config `cfg`.
    pub(crate) fn v1_id(cfg: &[u8], i: usize) -> String {
        hex(format!("{} {i}", hex(cfg)).as_bytes())
    }

    pub(crate) fn manifest_json(entries: &[Value]) -> Vec<u8> {
        serde_json::to_vec(entries).unwrap()
    }

    /// A complete legacy archive of one image.
    pub(crate) fn legacy_archive(tags: Option<&[&str]>, layers: &[Vec<u8>]) -> Vec<u8> {
        let mut t = TarBuf::new();
        let e = legacy_image(&mut t, tags, "linux/amd64", layers);
        t.file("manifest.json", &manifest_json(&[e]));
        t.finish()
    }

    /// Writes `bytes` as `blobs/sha256/<hex>`; returns its descriptor.
    pub(crate) fn blob(t: &mut TarBuf, media_type: &str, bytes: &[u8]) -> Value {
        t.file(&format!("blobs/sha256/{}", hex(bytes)), bytes);
        json!({"mediaType": media_type, "digest": sha(bytes), "size": bytes.len()})
    }

    /// An OCI image manifest (not written) for `config` and `layers` (uncompressed).
    pub(crate) fn oci_manifest(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
        let desc = |mt: &str, b: &[u8]| json!({"mediaType": mt, "digest": sha(b), "size": b.len()});
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, config),
            "layers": layers.iter().map(|l| desc(OCI_LAYER_TAR, l)).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    /// Writes the config, layers and manifest of one image as blobs; returns the manifest's
    /// descriptor (with `platform`).
    pub(crate) fn oci_image(t: &mut TarBuf, platform: &str, layers: &[Vec<u8>]) -> Value {
        let cfg = config(platform, layers);
        blob(t, OCI_CONFIG, &cfg);
        for l in layers {
            blob(t, OCI_LAYER_TAR, l);
        }
        let mut d = blob(t, OCI_MANIFEST, &oci_manifest(&cfg, layers));
        let (os, arch) = platform.split_once('/').unwrap();
        d["platform"] = json!({"os": os, "architecture": arch});
        d
    }

    /// `descriptor` with a `ref.name` annotation (and Docker's full image name, if given).
    pub(crate) fn tagged(mut descriptor: Value, ref_name: &str, image_name: Option<&str>) -> Value {
        descriptor["annotations"] = json!({ANNOTATION_REF_NAME: ref_name});
        if let Some(n) = image_name {
            descriptor["annotations"][ANNOTATION_IMAGE_NAME] = json!(n);
        }
        descriptor
    }

    pub(crate) fn index(manifests: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap()
    }

    /// Reads every layer to the end and notes it.
    #[derive(Default)]
    pub(crate) struct Layers(pub(crate) Vec<(String, u64)>);

    impl LayerVisitor for Layers {
        type Error = ArchiveError;
        fn layer(
            &mut self,
            member: &str,
            size: u64,
            data: &mut dyn Read,
        ) -> Result<(), ArchiveError> {
            // Fewer bytes than `size` only when the input is truncated: the scan says so.
            std::io::copy(data, &mut std::io::sink())?;
            self.0.push((member.to_string(), size));
            Ok(())
        }
    }

    /// The stream reader's catalog, and the layers it handed over.
    pub(crate) fn streamed_with(
        catalog: Catalog,
        bytes: &[u8],
    ) -> Result<(Catalog, Vec<(String, u64)>), ArchiveError> {
        let mut layers = Layers::default();
        let (catalog, _) = super::stream_into(catalog, bytes, &mut layers)?;
        Ok((catalog, layers.0))
    }

    /// The seekable reader's catalog (the bytes written to a temporary file).
    pub(crate) fn indexed_with(catalog: Catalog, bytes: &[u8]) -> Result<Catalog, ArchiveError> {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        super::index_into(catalog, &f)
    }

    /// Both readers over `bytes`, with default caps: they must agree on the outcome (the same
    /// error, or the same members and metadata). Returns the stream reader's result.
    pub(crate) fn scanned(bytes: &[u8]) -> Result<Catalog, ArchiveError> {
        let s = streamed_with(Catalog::default(), bytes).map(|(c, _)| c);
        let i = indexed_with(Catalog::default(), bytes);
        match (&s, &i) {
            (Ok(s), Ok(i)) => {
                assert_eq!(s.kinds, i.kinds, "both readers see the same members");
                assert_eq!(s.sizes, i.sizes);
                assert_eq!(s.meta, i.meta, "both readers keep the same metadata");
            }
            (Err(s), Err(i)) => assert_eq!(s.to_string(), i.to_string(), "same refusal"),
            _ => panic!(
                "the readers disagree: stream {:?}, index {:?}",
                s.as_ref().map(|c| &c.sizes),
                i.as_ref().map(|c| &c.sizes)
            ),
        }
        s
    }

    /// Images of `bytes`, found the same way from both readers' catalogs.
    pub(crate) fn images_of(bytes: &[u8]) -> Result<Vec<ImageEntry>, ArchiveError> {
        let s = resolve::images(&scanned(bytes)?);
        let i = resolve::images(&indexed_with(Catalog::default(), bytes)?);
        assert_eq!(
            format!("{s:?}"),
            format!("{i:?}"),
            "same images from both readers"
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::archive::catalog::{MEMBER_CAP, METADATA_TOTAL_CAP};
    use crate::archive::error::MemberProblem;
    use tar::EntryType;

    fn refused(bytes: &[u8]) -> ArchiveError {
        match scanned(bytes) {
            Ok(c) => panic!("the archive is accepted, members {:?}", c.sizes),
            Err(e) => e,
        }
    }

    /// The member and problem of a `ForbiddenMember` refusal.
    fn forbidden(bytes: &[u8]) -> (String, MemberProblem) {
        match refused(bytes) {
            ArchiveError::ForbiddenMember { member, problem } => (member, problem),
            e => panic!("expected ForbiddenMember, got {e:?}"),
        }
    }

    #[test]
    fn files_dirs_and_symlinks_are_recorded_with_normalised_names() {
        let mut t = TarBuf::new();
        t.dir("./")
            .dir("./d/")
            .file("./d/layer.tar", &layer(1))
            .symlink("e/layer.tar", "../d/layer.tar")
            .file("manifest.json", b"[]");
        let bytes = t.finish();
        let c = scanned(&bytes).unwrap();
        assert_eq!(
            c.kinds.len(),
            4,
            "`./` itself is not a member: {:?}",
            c.kinds
        );
        assert_eq!(c.kinds["d"], MemberKind::Dir);
        assert_eq!(c.kinds["d/layer.tar"], MemberKind::File);
        assert_eq!(
            c.kinds["e/layer.tar"],
            MemberKind::Symlink("../d/layer.tar".into())
        );
        assert_eq!(c.links["e/layer.tar"], "../d/layer.tar");
        assert_eq!(c.sizes["d/layer.tar"], layer(1).len() as u64);
        assert_eq!(c.meta["manifest.json"], b"[]");
        assert!(!c.meta.contains_key("d/layer.tar"), "layers are not kept");

        // The seekable reader notes where each file's data lies.
        let i = indexed_with(Catalog::default(), &bytes).unwrap();
        let at = i.offsets["d/layer.tar"] as usize;
        assert_eq!(&bytes[at..at + layer(1).len()], &layer(1)[..]);
        assert!(!i.offsets.contains_key("d"), "only files have offsets");
    }

    #[test]
    fn layers_are_handed_over_and_metadata_is_kept() {
        let mut t = TarBuf::new();
        let e = legacy_image(&mut t, Some(&["web:1"]), "linux/amd64", &[layer(1)]);
        t.file("manifest.json", &manifest_json(&[e]));
        t.file("repositories", b"{}");
        let cfg = blob(&mut t, "", b" \n {\"rootfs\":{}}");
        let big = vec![b'{'; 10];
        t.file("blobs/sha256/not-json-but-small", &big);
        let bytes = t.finish();
        let (c, layers) = streamed_with(Catalog::default(), &bytes).unwrap();
        let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
        let id = v1_id(&config("linux/amd64", &[layer(1)]), 0);
        // VERSION and json of the legacy layer directories are neither layers nor metadata.
        assert_eq!(
            names,
            [
                format!("{id}/layer.tar").as_str(),
                "blobs/sha256/not-json-but-small"
            ]
        );
        let blob_name = format!("blobs/sha256/{}", &cfg["digest"].as_str().unwrap()[7..]);
        for kept in ["manifest.json", "repositories", blob_name.as_str()] {
            assert!(c.meta.contains_key(kept), "{kept} is kept as metadata");
        }
        assert!(!c.meta.contains_key(&format!("{id}/json")));
        scanned(&bytes).unwrap();
    }

    /// A small uncompressed layer blob is a tar, which starts with its first member's name: a
    /// name starting with `{` must not make the layer metadata (the stream reader would then
    /// never hand it over, while the seekable reader reads it at its offset).
    #[test]
    fn a_layer_starting_with_a_brace_is_still_a_layer() {
        let mut inner = TarBuf::new();
        inner.file("{weird}", b"content");
        let l = inner.finish();
        assert_eq!(l[0], b'{');
        let mut t = TarBuf::new();
        blob(&mut t, OCI_LAYER, &l);
        let bytes = t.finish();
        let (c, layers) = streamed_with(Catalog::default(), &bytes).unwrap();
        assert_eq!(layers.len(), 1, "the layer is handed over");
        assert!(c.meta.is_empty());
        scanned(&bytes).unwrap();
    }
    const OCI_LAYER: &str = crate::archive::formats::OCI_LAYER_TAR;

    #[test]
    fn hard_links_devices_and_fifos_are_refused_naming_the_member() {
        for (kind, problem) in [
            (EntryType::Link, MemberProblem::HardLink),
            (
                EntryType::Char,
                MemberProblem::ForbiddenType("character device"),
            ),
            (
                EntryType::Block,
                MemberProblem::ForbiddenType("block device"),
            ),
            (EntryType::Fifo, MemberProblem::ForbiddenType("FIFO")),
            (
                EntryType::GNUSparse,
                MemberProblem::ForbiddenType("sparse file"),
            ),
        ] {
            let mut t = TarBuf::new();
            t.file("manifest.json", b"[]");
            t.entry("abc/layer.tar", kind, "/etc/passwd", b"");
            let bytes = t.finish();
            assert_eq!(
                forbidden(&bytes),
                ("abc/layer.tar".to_string(), problem.clone()),
                "{kind:?}"
            );
            let msg = refused(&bytes).to_string();
            assert!(msg.starts_with("member abc/layer.tar: "), "{msg}");
        }
    }

    #[test]
    fn duplicate_members_are_refused() {
        for (first, second) in [
            ("a/layer.tar", "a/layer.tar"),
            ("./a/layer.tar", "a/layer.tar"),
            ("a//layer.tar", "a/./layer.tar"),
        ] {
            let mut t = TarBuf::new();
            t.file(first, &layer(1)).file(second, &layer(2));
            assert_eq!(
                forbidden(&t.finish()),
                ("a/layer.tar".to_string(), MemberProblem::Duplicate),
                "{first} then {second}"
            );
        }
        // Whatever the kinds: a symlink may not replace a file, nor a file a directory.
        let mut t = TarBuf::new();
        t.file("m.json", b"{}").symlink("m.json", "x.json");
        assert_eq!(forbidden(&t.finish()).1, MemberProblem::Duplicate);
        let mut t = TarBuf::new();
        t.dir("a/").file("a", b"x");
        assert_eq!(forbidden(&t.finish()).1, MemberProblem::Duplicate);
    }

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for (name, problem) in [
            ("../layer.tar", MemberProblem::ParentComponent),
            ("a/../../layer.tar", MemberProblem::ParentComponent),
            ("a/../b/layer.tar", MemberProblem::ParentComponent),
            ("./..", MemberProblem::ParentComponent),
            ("/abc/layer.tar", MemberProblem::AbsolutePath),
            ("//abc", MemberProblem::AbsolutePath),
        ] {
            let mut t = TarBuf::new();
            t.file(name, &layer(1));
            assert_eq!(
                forbidden(&t.finish()),
                (name.to_string(), problem),
                "{name}"
            );
        }
        // The same rules for directories and symlinks.
        let mut t = TarBuf::new();
        t.dir("../up/");
        assert_eq!(forbidden(&t.finish()).1, MemberProblem::ParentComponent);
        let mut t = TarBuf::new();
        t.symlink("/etc/link", "x");
        assert_eq!(forbidden(&t.finish()).1, MemberProblem::AbsolutePath);
    }

    #[test]
    fn not_a_tar_and_truncated_input_are_refused() {
        assert!(matches!(refused(b""), ArchiveError::NotTar(_)));
        assert!(matches!(refused(&[0x42; 4096]), ArchiveError::NotTar(_)));
        assert!(matches!(refused(&[0; 1024]), ArchiveError::NotTar(_)));
        let mut t = TarBuf::new();
        t.file("manifest.json", b"[]")
            .file("a/layer.tar", &layer(1));
        let whole = t.finish();
        // Cut inside the layer's data.
        let cut = &whole[..512 + 512 + 512 + 100];
        match refused(cut) {
            ArchiveError::Truncated { member } => assert_eq!(member, "a/layer.tar"),
            e => panic!("expected Truncated, got {e:?}"),
        }
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let mut t = TarBuf::new();
        t.file(
            "manifest.json",
            &vec![b' '; METADATA_MEMBER_CAP as usize + 1],
        );
        match refused(&t.finish()) {
            ArchiveError::MetadataTooLarge { member, size, cap } => {
                assert_eq!(member, "manifest.json");
                assert_eq!((size, cap), (METADATA_MEMBER_CAP + 1, METADATA_MEMBER_CAP));
            }
            e => panic!("expected MetadataTooLarge, got {e:?}"),
        }
        // The total: many JSON blobs, each under the per-member cap, add up over it.
        let doc = {
            let mut d = b"{}".to_vec();
            d.resize(METADATA_MEMBER_CAP as usize, b' ');
            d
        };
        let mut t = TarBuf::new();
        let n = (METADATA_TOTAL_CAP / METADATA_MEMBER_CAP) as usize + 1;
        for i in 0..n {
            let mut d = doc.clone();
            d[2] = b'\n';
            d[3 + i] = b'\n';
            blob(&mut t, "", &d);
        }
        assert!(
            matches!(refused(&t.finish()), ArchiveError::MetadataTooLarge { cap, .. } if cap == METADATA_TOTAL_CAP)
        );
    }

    /// Records each boundary with a copy of the catalog there, and the layers handed over.
    #[derive(Default)]
    struct Boundaries {
        seen: Vec<(String, Catalog, u64)>,
        layers: Vec<String>,
    }

    impl LayerVisitor for Boundaries {
        type Error = ArchiveError;
        fn layer(&mut self, member: &str, _: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
            io::copy(data, &mut io::sink())?;
            self.layers.push(member.into());
            Ok(())
        }
        fn boundary(&mut self, m: &str, c: &Catalog, offset: u64) -> Result<(), ArchiveError> {
            self.seen.push((m.into(), c.clone(), offset));
            Ok(())
        }
    }

    /// A stream taken up at any member boundary (the rest of the bytes, the catalog there) ends
    /// with the catalog of one whole pass and hands over the layers that follow.
    #[test]
    fn a_stream_taken_up_at_a_boundary_ends_as_a_whole_pass() {
        let mut t = TarBuf::new();
        // A layer whose size is not a multiple of 512: its padding is skipped on resuming.
        let e = legacy_image(
            &mut t,
            Some(&["web:1"]),
            "linux/amd64",
            &[layer(1), vec![7; 700]],
        );
        t.symlink("alias/layer.tar", "../x");
        t.file("manifest.json", &manifest_json(&[e]));
        let bytes = t.finish();
        let mut whole = Boundaries::default();
        let (full, _) = stream(&bytes[..], &mut whole).unwrap();
        assert!(whole.seen.len() >= 4, "{:?}", whole.seen.len());
        for (i, (member, catalog, offset)) in whole.seen.iter().enumerate() {
            let at = *offset as usize;
            let mut rest = Boundaries::default();
            let from = Resume {
                catalog: catalog.clone(),
                last: member.clone(),
                offset: *offset,
            };
            let (c, _) = stream_from(from, &bytes[at..], &mut rest).unwrap();
            assert_eq!(
                (&c.kinds, &c.sizes, &c.meta),
                (&full.kinds, &full.sizes, &full.meta)
            );
            let after: Vec<_> = whole.seen[i + 1..]
                .iter()
                .map(|(m, _, o)| (m, *o))
                .collect();
            let again: Vec<_> = rest.seen.iter().map(|(m, _, o)| (m, *o)).collect();
            assert_eq!(again, after, "boundaries after {member}");
            let n = rest.layers.len();
            assert_eq!(rest.layers, whole.layers[whole.layers.len() - n..]);
        }
    }

    /// Members that carry nothing (`./`, PAX global headers) are not kept and do not count.
    fn members(n: usize, extra_dots: bool) -> Vec<u8> {
        let mut t = TarBuf::new();
        for i in 0..n {
            if extra_dots {
                t.dir("./");
                t.entry("pax_global_header", EntryType::XGlobalHeader, "", b"");
            }
            t.file(&format!("m{i}"), b"");
        }
        t.finish()
    }

    #[test]
    fn the_member_cap_holds_in_both_readers() {
        let cap = 10;
        let at_cap = members(cap, true);
        let over = members(cap + 1, false);
        let caps = || Catalog::with_caps(cap as u64, u64::MAX);
        assert_eq!(streamed_with(caps(), &at_cap).unwrap().0.kinds.len(), cap);
        assert_eq!(indexed_with(caps(), &at_cap).unwrap().kinds.len(), cap);
        for e in [
            streamed_with(caps(), &over).unwrap_err(),
            indexed_with(caps(), &over).unwrap_err(),
        ] {
            match &e {
                ArchiveError::TooManyMembers { member, what, cap } => {
                    assert_eq!((member.as_str(), *what, *cap), ("m10", "members", 10));
                }
                e => panic!("expected TooManyMembers, got {e:?}"),
            }
            assert_eq!(
                e.to_string(),
                "member m10: the archive has more than 10 members, far more than an image archive has"
            );
        }
    }

    #[test]
    fn the_member_name_cap_holds_in_both_readers() {
        // Names and symlink targets count: 3 + 3 + 2 bytes fit in 8, one more byte does not.
        let mut t = TarBuf::new();
        t.file("abc", b"").symlink("def", "gh");
        let fits = t.finish();
        let mut t = TarBuf::new();
        t.file("abc", b"").symlink("def", "ghi");
        let over = t.finish();
        let caps = || Catalog::with_caps(100, 8);
        streamed_with(caps(), &fits).unwrap();
        indexed_with(caps(), &fits).unwrap();
        for e in [
            streamed_with(caps(), &over).unwrap_err(),
            indexed_with(caps(), &over).unwrap_err(),
        ] {
            assert!(
                matches!(&e, ArchiveError::TooManyMembers { member, what: "bytes of member names", cap: 8 } if member == "def"),
                "{e:?}"
            );
        }
    }

    /// The real cap, end to end: an archive one member over it is refused by both readers.
    /// Measured at about 3 s in a debug build (50 MiB of tar headers, read twice), hence
    /// ignored; `catalog::tests::the_default_member_cap_holds` checks the real cap in 0.3 s and
    /// the tests above show both readers apply whatever cap the catalog has.
    #[test]
    #[ignore = "slow (about 3 s in a debug build): run with --ignored"]
    fn the_default_member_cap_is_one_hundred_thousand() {
        let over = members(MEMBER_CAP as usize + 1, false);
        let e = scanned(&over).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::TooManyMembers { member, what: "members", cap: MEMBER_CAP } if member == "m100000"),
            "{e:?}"
        );
    }
}
