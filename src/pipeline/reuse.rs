//! Layers already in the registry. A manifest there says which blob holds which layer, but
//! whoever can push a tag can write any manifest (and any `layer-codec` annotation): a blob is
//! only taken for a layer after it was read back and found to decompress to the archive's
//! layer byte for byte ([`matches`]).

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use futures::TryStreamExt as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::codec::{self, CHUNK, Codec, CompressionPolicy};
use super::layer::{LayerError, LayerFacts};
use super::mapped::MappedMember;
use super::{Ctx, ImportError, Planned, Pushed, blocking, gunzip, layer, manifest};
use crate::archive::digest;
use crate::archive::formats::{ImageConfig, Platform};

/// Archive chunks in flight between the archive's reader and the blob's comparer, per layer.
const COMPARE_QUEUE: usize = 4;

/// The archive's copy of a layer, as [`matches`] reads it.
pub(super) struct ArchiveLayer<F> {
    pub member: String,
    /// An uncompressed member of a seekable archive: lent from a mapping, not read.
    pub mapped: Option<MappedMember>,
    /// Otherwise: the member's stored bytes, decoded as they are read.
    pub open: F,
}

/// Whether blob `digest` of `repo` holds exactly the layer that `open` reads from the archive.
/// Both are read side by side, on two threads, in one pass: the archive's bytes are hashed (the
/// facts returned, checked against the config by the caller), the blob is streamed from the
/// registry, hashed as stored, decoded as `codec` and compared with them byte for byte (cheaper
/// than hashing the decoded blob again). Some(facts) when it holds them; None when the blob
/// cannot be read or differs. An archive that cannot be read is an error.
pub(super) async fn matches<R: Read + Send + 'static>(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    codec: Codec,
    ours: bool,
    layer: ArchiveLayer<impl FnOnce() -> io::Result<R> + Send + 'static>,
) -> Result<Option<LayerFacts>, ImportError> {
    let ArchiveLayer {
        member,
        mapped,
        open,
    } = layer;
    let member = member.as_str();
    if ours && ctx.opts.reuse == Reuse::TrustRegistry {
        return trusted(ctx, repo, digest, member, mapped, open).await;
    }
    let stream = match ctx.registry.read_blob(repo, digest).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(blob = digest, repo, error = %e, "registry blob not readable; not reused");
            return Ok(None);
        }
    };
    // The blob is hashed as it arrives, on the runtime's threads: the decoder's thread, the
    // longest path of a large layer, only inflates and compares.
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let stream = {
        let hasher = hasher.clone();
        stream.inspect_ok(move |b| hasher.lock().expect("blob hasher").update(b))
    };
    let remote = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let (tx, rx) = mpsc::sync_channel::<Bytes>(COMPARE_QUEUE);
    let want = digest.to_string();
    let blob = blocking(move || {
        same_content(remote, codec, ours, rx)?;
        let got = std::mem::take(&mut *hasher.lock().expect("blob hasher"));
        served(got, &want)
    });
    let m = member.to_string();
    let archive = blocking(move || -> Result<LayerFacts, LayerError> {
        let differs = |_| io::Error::other("the registry blob differs");
        // An uncompressed member is lent from a mapping; anything else is read and decoded.
        if let Some(mapped) = mapped {
            return mapped.read(&m, &mut |b| tx.send(b).map_err(differs));
        }
        let mut r = open().map_err(LayerError::Read)?;
        layer::read(&m, &mut r, &mut |b| {
            tx.send(Bytes::copy_from_slice(b)).map_err(differs)
        })
    });
    let (blob, archive) = tokio::join!(blob, archive);
    let facts = match archive? {
        Ok(f) => Some(f),
        // The comparer stopped reading: the blob differs (said below).
        Err(LayerError::Sink(_)) => None,
        Err(e) => {
            return Err(ImportError::from_layer(
                &ctx.archive,
                &ctx.opts.target.repository,
                e,
                None,
            ));
        }
    };
    match blob? {
        Ok(()) => Ok(facts),
        Err(why) => {
            tracing::warn!(
                blob = digest,
                repo,
                member,
                "registry blob does not hold the archive's layer ({why}); not reused"
            );
            Ok(None)
        }
    }
}

/// [`matches`] with [`Reuse::TrustRegistry`]: the registry's word that blob `digest` holds the
/// layer is taken once it says it has the blob; only the archive's copy is read (hashed: the
/// facts returned, checked against the config by the caller).
async fn trusted<R: Read + Send + 'static>(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    member: &str,
    mapped: Option<MappedMember>,
    open: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> Result<Option<LayerFacts>, ImportError> {
    match ctx.registry.blob_head(repo, digest).await {
        Ok(crate::registry::BlobHead::Present { .. }) => {}
        Ok(crate::registry::BlobHead::Missing) => return Ok(None),
        Err(e) => {
            tracing::info!(blob = digest, repo, error = %e, "registry blob not checked; not reused");
            return Ok(None);
        }
    }
    let m = member.to_string();
    let facts = blocking(move || -> Result<LayerFacts, LayerError> {
        if let Some(mapped) = mapped {
            return mapped.read(&m, &mut |_| Ok(()));
        }
        let mut r = open().map_err(LayerError::Read)?;
        layer::read(&m, &mut r, &mut |_| Ok(()))
    })
    .await?
    .map_err(|e| ImportError::from_layer(&ctx.archive, &ctx.opts.target.repository, e, None))?;
    tracing::info!(
        blob = digest,
        repo,
        member,
        "layer taken on the registry's word (--reuse trust-registry): blob not read back"
    );
    Ok(Some(facts))
}

/// Hashes what is read through it.
#[cfg(test)]
struct Hashed<R> {
    inner: R,
    hasher: Sha256,
}

#[cfg(test)]
impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Whether `blob` hashes to `digest` and [`same_content`].
#[cfg(test)]
fn same_bytes(
    blob: impl Read,
    digest: &str,
    codec: Codec,
    ours: bool,
    archive: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let mut hashed = Hashed {
        inner: blob,
        hasher: Sha256::new(),
    };
    same_content(&mut hashed, codec, ours, archive)?;
    served(hashed.hasher, digest)
}

/// The blob's bytes hashed to `digest` (what the registry served is what the manifest names).
fn served(hasher: Sha256, digest: &str) -> Result<(), String> {
    let got = digest::finish(hasher);
    if got != digest {
        return Err(format!("the registry served bytes hashing to {got}"));
    }
    Ok(())
}

/// Whether `blob` is `codec`-encoded and decodes to exactly the bytes that arrive on `archive`
/// (until it is closed), reading `blob` to its end. Err: why not. A gzip blob is decoded member
/// by member ([`gunzip`]) when it is `ours`: a blob this import's encoder wrote has its 1 MiB
/// members, and one that has not is not reused. Other tools' gzip is inflated as a stream.
fn same_content(
    blob: impl Read,
    codec: Codec,
    ours: bool,
    archive: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let mut hashed = BufReader::with_capacity(256 << 10, blob);
    let head = hashed
        .fill_buf()
        .map_err(|e| format!("reading it failed: {e}"))?;
    let found = Codec::sniff(head);
    if found != codec {
        return Err(format!("it is not {codec}-encoded ({found})"));
    }
    let mut expected = Expected::new(archive);
    match codec {
        Codec::Gzip if ours => {
            let mut members = gunzip::Members::new(&mut hashed);
            while let Some(out) = members.next_member().map_err(|e| e.to_string())? {
                expected.same(out)?;
            }
        }
        Codec::None | Codec::Zstd | Codec::Gzip => {
            let mut decoded: Box<dyn Read + '_> = match codec {
                Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut hashed)),
                Codec::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut hashed)
                        .map_err(|e| format!("it does not decode: {e}"))?,
                ),
                _ => Box::new(&mut hashed),
            };
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = decoded
                    .read(&mut buf)
                    .map_err(|e| format!("it does not decode: {e}"))?;
                if n == 0 {
                    break;
                }
                expected.same(&buf[..n])?;
            }
        }
    }
    expected.finished()?;
    // Whatever follows the compressed stream is part of the blob.
    io::copy(&mut hashed, &mut io::sink()).map_err(|e| format!("reading it failed: {e}"))?;
    Ok(())
}

/// The archive's layer bytes as they arrive, compared with the decoded blob piece by piece
/// (the two sides cut their pieces differently).
struct Expected {
    archive: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Expected {
    fn new(archive: mpsc::Receiver<Bytes>) -> Self {
        Expected {
            archive,
            current: Bytes::new(),
        }
    }

    fn same(&mut self, mut decoded: &[u8]) -> Result<(), String> {
        while !decoded.is_empty() {
            if self.current.is_empty() {
                self.current = self
                    .archive
                    .recv()
                    .map_err(|_| "it is longer than the layer".to_string())?;
                continue;
            }
            let n = decoded.len().min(self.current.len());
            if decoded[..n] != self.current[..n] {
                return Err("its content differs from the layer's".into());
            }
            decoded = &decoded[n..];
            let _ = self.current.split_to(n);
        }
        Ok(())
    }

    /// The layer ended where the blob did.
    fn finished(mut self) -> Result<(), String> {
        loop {
            if !self.current.is_empty() {
                return Err("it is shorter than the layer".into());
            }
            match self.archive.recv() {
                Ok(b) => self.current = b,
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Tag-list pages read per target repository, and tags per page: a repository of thousands of
/// tags costs at most this many list requests.
pub(super) const TAG_PAGES: usize = 4;
pub(super) const TAGS_PER_PAGE: usize = 1000;
/// Manifest and config requests per import spent on finding layers, over every repository:
/// the bound that keeps discovery cheap next to thousands of tags.
pub(super) const DOCUMENT_REQUESTS: usize = 32;

/// What discovery found and what it cost.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// diff_id → a blob that holds it (checked when used).
    pub blobs: HashMap<String, Reusable>,
    /// Requests made: tag lists, manifests, configs.
    pub requests: usize,
}

/// A registry blob that may hold a layer of this import.
#[derive(Debug, Clone)]
pub(super) struct Reusable {
    pub pushed: Pushed,
    /// Written by this import's exact encoder (the manifest's `layer-codec` annotation says
    /// so): reusing it keeps the manifest a cold push gives. Otherwise (only with
    /// [`Reuse::AnyEncoding`]) another tool's encoding of the same codec.
    pub ours: bool,
}

/// Blobs that this import's codec already produced for the `needed` diff_ids, learned from the
/// target repositories: first the tags this import moves (an upgrade shares its base layers
/// with the version it replaces), then the repository's other tags, those sharing the longest
/// prefix with the new tags first, the latest (lexically) among equals. No local cache: the
/// registry's manifests and configs say which blob holds which diff_id, within
/// [`TAG_PAGES`] tag lists per repository and [`DOCUMENT_REQUESTS`] manifests and configs.
///
/// Only manifests recording this import's exact encoder (`layer-codec` annotation) are used,
/// so a reused blob is the one this import would produce and the manifest digest stays what a
/// cold push gives; the annotation is a hint, not proof: each blob is read back and compared
/// with the archive's layer before it is used ([`matches`]). With [`Reuse::AnyEncoding`],
/// blobs that other tools encoded with the same codec are taken too (read back the same way):
/// fewer bytes sent, but the manifest digest then depends on what the registry held.
pub(super) async fn known_layers(ctx: &Ctx, todo: &[Planned], needed: &HashSet<String>) -> Known {
    let mut known = Known::default();
    if needed.is_empty() {
        return known;
    }
    let platforms: Vec<Platform> = todo
        .iter()
        .flat_map(|p| &p.images)
        .map(|i| i.platform.clone())
        .collect();
    let mut budget = DOCUMENT_REQUESTS;
    let mut repos: Vec<(String, Vec<String>)> = Vec::new();
    for r in todo.iter().flat_map(|p| &p.refs) {
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        match repos.iter_mut().find(|(repo, _)| *repo == r.repository) {
            Some((_, tags)) if !tags.contains(&tag) => tags.push(tag),
            Some(_) => {}
            None => repos.push((r.repository.clone(), vec![tag])),
        }
    }
    let mut learner = Learner {
        ctx,
        configs: HashSet::new(),
        needed,
        platforms: &platforms,
        budget: &mut budget,
        known: &mut known,
    };
    // The tags this import moves, in every repository, before any other tag.
    for (repo, own) in &repos {
        for tag in own {
            learner.tag(repo, tag).await;
        }
    }
    for (repo, own) in &repos {
        if learner.done() {
            break;
        }
        let mut tags = Vec::new();
        for _ in 0..TAG_PAGES {
            learner.known.requests += 1;
            let page = match ctx
                .registry
                .list_tags(repo, TAGS_PER_PAGE, tags.last().map(String::as_str))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::info!(repo, error = %e, "tags not listed; layers not learned from them");
                    break;
                }
            };
            let full = page.len() >= TAGS_PER_PAGE;
            tags.extend(page);
            if !full {
                break;
            }
        }
        for tag in ranked(tags, own) {
            if learner.done() {
                break;
            }
            learner.tag(repo, &tag).await;
        }
    }
    tracing::info!(
        requests = known.requests,
        found = known.blobs.len(),
        needed = needed.len(),
        "layers learned from the registry"
    );
    known
}

/// Tags other than `own`, the likeliest to share layers with them first: the longest common
/// prefix with one of `own`, then the lexically greatest (`1.10` after `1.9` as registries
/// sort, close enough for a ranking).
fn ranked(tags: Vec<String>, own: &[String]) -> Vec<String> {
    let prefix = |t: &str| {
        own.iter()
            .map(|o| o.bytes().zip(t.bytes()).take_while(|(a, b)| a == b).count())
            .max()
            .unwrap_or(0)
    };
    let mut tags: Vec<(usize, String)> = tags
        .into_iter()
        .filter(|t| !own.contains(t))
        .map(|t| (prefix(&t), t))
        .collect();
    tags.sort_by(|a, b| b.cmp(a));
    tags.into_iter().map(|(_, t)| t).collect()
}

struct Learner<'a> {
    ctx: &'a Ctx,
    /// Configs already read (tags often share a manifest).
    configs: HashSet<String>,
    needed: &'a HashSet<String>,
    platforms: &'a [Platform],
    budget: &'a mut usize,
    known: &'a mut Known,
}

impl Learner<'_> {
    fn done(&self) -> bool {
        *self.budget == 0 || self.needed.iter().all(|d| self.known.blobs.contains_key(d))
    }

    /// Spend one request of the budget, if any is left.
    fn spend(&mut self) -> bool {
        if *self.budget == 0 {
            return false;
        }
        *self.budget -= 1;
        self.known.requests += 1;
        true
    }

    async fn manifest(&mut self, repo: &str, reference: &str) -> Option<Value> {
        if !self.spend() {
            return None;
        }
        let remote = self
            .ctx
            .registry
            .get_manifest(repo, reference)
            .await
            .ok()??;
        serde_json::from_slice(&remote.bytes).ok()
    }

    /// The layers of the image (or of the import's platforms of the index) `tag` names.
    async fn tag(&mut self, repo: &str, tag: &str) {
        if self.done() {
            return;
        }
        let Some(m) = self.manifest(repo, tag).await else {
            return;
        };
        let Some(entries) = m["manifests"].as_array() else {
            self.image(repo, &m).await;
            return;
        };
        for e in entries {
            let platform: Option<Platform> = serde_json::from_value(e["platform"].clone()).ok();
            let wanted = platform.is_none_or(|p| self.platforms.iter().any(|w| p.satisfies(w)));
            if let (true, Some(d)) = (wanted, e["digest"].as_str()) {
                if self.done() {
                    return;
                }
                if let Some(m) = self.manifest(repo, d).await {
                    self.image(repo, &m).await;
                }
            }
        }
    }

    /// The layers of image manifest `m` that this import would push identically (the same
    /// encoder, recorded in the manifest's annotation), by diff_id.
    async fn image(&mut self, repo: &str, m: &Value) {
        let codec = match self.ctx.opts.compression {
            CompressionPolicy::Keep(c) | CompressionPolicy::Force(c) => c,
        };
        let ours = m["annotations"][manifest::ANNOTATION_CODEC].as_str()
            == Some(codec::codec_id(codec).as_str());
        if !ours && self.ctx.opts.reuse != Reuse::AnyEncoding {
            return;
        }
        let Some(config_digest) = m["config"]["digest"].as_str() else {
            return;
        };
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if !self.configs.insert(config_digest.to_string()) || !self.spend() {
            return;
        }
        let Ok(Some(config)) = self
            .ctx
            .registry
            .get_small_blob(repo, config_digest, 4 << 20)
            .await
        else {
            return;
        };
        // The registry is content-addressed, but the answer is checked all the same.
        if digest::sha256_of(&config) != config_digest {
            return;
        }
        let Ok(parsed) = serde_json::from_slice::<ImageConfig>(&config) else {
            return;
        };
        for (diff_id, l) in parsed.rootfs.diff_ids.iter().zip(&layers) {
            let media_type = l["mediaType"].as_str().unwrap_or_default();
            let same_codec = if ours {
                media_type == codec.oci_layer_media_type()
            } else {
                layer_codec(media_type) == Some(codec)
            };
            if let (true, Some(d), Some(size)) =
                (same_codec, l["digest"].as_str(), l["size"].as_u64())
                && self.needed.contains(diff_id)
            {
                let found = Reusable {
                    pushed: Pushed {
                        digest: d.to_string(),
                        size,
                        repo: repo.to_string(),
                        sent: 0,
                    },
                    ours,
                };
                match self.known.blobs.get(diff_id) {
                    // A blob of this import's own encoder is worth more than another tool's.
                    Some(k) if k.ours || !ours => {}
                    _ => {
                        self.known.blobs.insert(diff_id.clone(), found);
                    }
                }
            }
        }
    }
}

/// The codec a layer media type names (OCI or Docker), for compressed layers.
fn layer_codec(media_type: &str) -> Option<Codec> {
    match media_type {
        crate::archive::formats::DOCKER_LAYER_GZIP => Some(Codec::Gzip),
        t if t == Codec::Gzip.oci_layer_media_type() => Some(Codec::Gzip),
        t if t == Codec::Zstd.oci_layer_media_type() => Some(Codec::Zstd),
        _ => None,
    }
}

/// Which registry blobs may stand for a layer of the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reuse {
    /// Only blobs this import's encoder wrote (recorded in their manifest): the manifest
    /// digest is the one a cold push gives.
    #[default]
    Exact,
    /// Also blobs other tools encoded with the same codec, once they are read back and found
    /// to hold the layer: fewer bytes sent, but the manifest digest depends on the registry.
    AnyEncoding,
    /// Blobs this import's encoder wrote (as [`Reuse::Exact`]), taken on the registry's word:
    /// the archive's layer is hashed to its diff_id, the blob is not read back. Several times
    /// faster for an upgrade, but whoever can push a manifest into the repository decides
    /// which blob the new tag names for a layer.
    TrustRegistry,
}

impl std::str::FromStr for Reuse {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Reuse::Exact),
            "any-encoding" => Ok(Reuse::AnyEncoding),
            "trust-registry" => Ok(Reuse::TrustRegistry),
            _ => Err(format!(
                "{s:?}: expected exact, any-encoding or trust-registry"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = codec::ChunkEncoder::new(Codec::Gzip);
        let mut out: Vec<u8> = e.push(data).concat();
        out.extend(e.finish().concat());
        out
    }

    /// `same_bytes` of `blob` (named `digest`) against the archive layer `layer`, fed in
    /// pieces as the archive's reader sends them.
    fn compare(blob: &[u8], digest: &str, codec: Codec, layer: &[u8]) -> Result<(), String> {
        let (tx, rx) = mpsc::sync_channel(layer.len() / 70_000 + 2);
        for piece in layer.chunks(70_000) {
            tx.send(Bytes::copy_from_slice(piece)).unwrap();
        }
        drop(tx);
        same_bytes(blob, digest, codec, true, rx)
    }

    #[test]
    fn a_blob_is_taken_only_for_exactly_the_archives_layer() {
        let layer: Vec<u8> = (0..3 * CHUNK + 4321).map(|i| (i % 251) as u8).collect();
        let blob = gzip(&layer);
        let d = digest::sha256_of(&blob);
        assert_eq!(compare(&blob, &d, Codec::Gzip, &layer), Ok(()));
        // Another layer of the same length, one byte apart.
        let mut other = layer.clone();
        other[2 * CHUNK + 7] ^= 1;
        let e = compare(&blob, &d, Codec::Gzip, &other).unwrap_err();
        assert!(e.contains("differs"), "{e}");
        // The blob is a prefix or an extension of the layer.
        let e = compare(&blob, &d, Codec::Gzip, &layer[..layer.len() - 1]).unwrap_err();
        assert!(e.contains("longer"), "{e}");
        let mut longer = layer.clone();
        longer.push(0);
        let e = compare(&blob, &d, Codec::Gzip, &longer).unwrap_err();
        assert!(e.contains("shorter"), "{e}");
        // The registry serves other bytes than the digest names.
        let named = digest::sha256_of(b"something else");
        let e = compare(&blob, &named, Codec::Gzip, &layer).unwrap_err();
        assert!(e.contains("hashing to"), "{e}");
        // A valid gzip of the layer that this encoder did not write (one member): not reused.
        let other_encoding = {
            use std::io::Write;
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            g.write_all(&layer).unwrap();
            g.finish().unwrap()
        };
        let e = compare(
            &other_encoding,
            &digest::sha256_of(&other_encoding),
            Codec::Gzip,
            &layer,
        )
        .unwrap_err();
        assert!(e.contains("chunking"), "{e}");
        // ... but it holds the layer, which is what wider reuse (not ours) asks.
        let (tx, rx) = mpsc::sync_channel(layer.len() / 70_000 + 2);
        for piece in layer.chunks(70_000) {
            tx.send(Bytes::copy_from_slice(piece)).unwrap();
        }
        drop(tx);
        let d = digest::sha256_of(&other_encoding);
        assert_eq!(
            same_bytes(&other_encoding[..], &d, Codec::Gzip, false, rx),
            Ok(())
        );
        // The right content under another codec than the manifest says.
        let e = compare(&layer, &digest::sha256_of(&layer), Codec::Gzip, &layer).unwrap_err();
        assert!(e.contains("not gzip-encoded"), "{e}");
        // Not a layer at all.
        let junk = [0x1f, 0x8b, 8, 0, 0xde, 0xad, 0xbe, 0xef];
        assert!(compare(&junk, &digest::sha256_of(&junk), Codec::Gzip, &layer).is_err());
    }

    #[test]
    fn tags_sharing_a_prefix_with_the_new_one_come_first() {
        let tags = ["latest", "1.9", "1.10", "2.0", "1.1", "x"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            super::ranked(tags, &["1.11".into(), "latest".into()]),
            ["1.10", "1.1", "1.9", "x", "2.0"]
        );
    }
}
