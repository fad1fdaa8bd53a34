//! Which manifests (and index) an image is pushed as, and whether the digest the archive names
//! it by survives. People pin that digest (`image: registry/app@sha256:…`), so the archive's
//! own documents are pushed byte for byte whenever every blob they name is pushed as stored;
//! otherwise new documents are built (deterministically: same archive and options, same
//! digest) and the reason is reported.

use std::collections::{BTreeSet, HashMap};

use super::Processed;
use super::codec::{self, Codec, CompressionPolicy};
use super::manifest;
use crate::archive::formats::{Descriptor, OCI_INDEX, OCI_MANIFEST};
use crate::archive::{ArchiveIndex, ImageSource, LeftOut, digest};

/// One document to push: its bytes and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl Document {
    pub fn digest(&self) -> String {
        digest::sha256_of(&self.bytes)
    }
}

/// What an image is pushed as.
#[derive(Debug, Clone)]
pub struct Composed {
    /// Each platform's manifest (pushed by digest first).
    pub manifests: Vec<Document>,
    /// What the tags point at: the only manifest, or an index of them.
    pub top: Document,
    /// The digest the archive names the image by, if it names one.
    pub archive_digest: Option<String>,
    /// Why the tag's digest is not `archive_digest` (None: kept, or nothing to keep).
    pub changed: Option<String>,
}

/// The parts of a planned image that decide its documents.
pub struct Parts<'a> {
    pub images: &'a [ImageSource],
    pub index: Option<&'a ArchiveIndex>,
    pub left_out: &'a [LeftOut],
    pub platform_chosen: bool,
    pub policy: CompressionPolicy,
}

/// The documents for `parts`, from the layers as processed (`processed` by member).
pub fn compose(parts: &Parts<'_>, processed: &HashMap<String, Processed>) -> Composed {
    let built: Vec<(Document, Option<String>)> = parts
        .images
        .iter()
        .map(|img| manifest_for(img, processed, parts.policy))
        .collect();
    let reencoded = built.iter().find_map(|(_, why)| why.clone());
    let manifests: Vec<Document> = built.into_iter().map(|(d, _)| d).collect();
    let archive_digest = parts
        .index
        .map(|i| i.digest.clone())
        .or_else(|| match parts.images {
            [img] => img
                .original_manifest
                .as_ref()
                .map(|(b, _)| digest::sha256_of(b)),
            _ => None,
        });
    let index_kept = parts.index.filter(|ix| {
        let pushed: BTreeSet<String> = manifests.iter().map(Document::digest).collect();
        let listed: BTreeSet<String> = ix.manifests.iter().cloned().collect();
        !parts.platform_chosen && reencoded.is_none() && pushed == listed
    });
    let top = match (index_kept, manifests.as_slice()) {
        (Some(ix), _) => Document {
            bytes: ix.bytes.clone(),
            media_type: ix.media_type.clone(),
        },
        (None, [only]) => only.clone(),
        (None, _) => {
            let entries: Vec<(String, u64, String, crate::archive::formats::Platform)> = manifests
                .iter()
                .zip(parts.images)
                .map(|(m, img)| {
                    (
                        m.digest(),
                        m.bytes.len() as u64,
                        m.media_type.clone(),
                        img.platform.clone(),
                    )
                })
                .collect();
            Document {
                bytes: manifest::index(&entries),
                media_type: OCI_INDEX.to_string(),
            }
        }
    };
    let changed = match &archive_digest {
        Some(d) if *d != top.digest() => Some(why_changed(parts, &manifests, reencoded)),
        _ => None,
    };
    Composed {
        manifests,
        top,
        archive_digest,
        changed,
    }
}

fn why_changed(parts: &Parts<'_>, manifests: &[Document], reencoded: Option<String>) -> String {
    if let Some(ix) = parts.index {
        if parts.platform_chosen {
            return "one platform was chosen (--platform, spec.platform): the tag names its \
                    manifest, not the archive's index"
                .into();
        }
        if !parts.left_out.is_empty() {
            let which: Vec<&str> = parts.left_out.iter().map(|l| l.platform.as_str()).collect();
            return format!(
                "the archive's index lists platforms whose blobs are not in the archive ({}): \
                 the pushed index lists only the {} present",
                which.join(", "),
                manifests.len()
            );
        }
        if let Some(why) = reencoded {
            return why;
        }
        let pushed: BTreeSet<String> = manifests.iter().map(Document::digest).collect();
        let skipped = ix.manifests.iter().filter(|d| !pushed.contains(*d)).count();
        return format!(
            "the archive's index lists {skipped} manifest(s) that are not platform images \
             (attestations), which are not pushed: the pushed index lists the {} images",
            manifests.len()
        );
    }
    reencoded.unwrap_or_else(|| "the archive's manifest could not be pushed as stored".into())
}

/// The manifest of one image: the archive's own bytes when every layer is pushed as stored,
/// else a new one (with the reason it is new).
pub(super) fn manifest_for(
    img: &ImageSource,
    processed: &HashMap<String, Processed>,
    policy: CompressionPolicy,
) -> (Document, Option<String>) {
    let facts: Vec<&Processed> = img.layers.iter().map(|l| &processed[&l.member]).collect();
    let all_as_stored = facts.iter().all(|p| p.facts.as_stored);
    if all_as_stored
        && img.layers.iter().all(|l| l.declared.is_some())
        && let Some((bytes, media_type)) = &img.original_manifest
    {
        return (
            Document {
                bytes: bytes.clone(),
                media_type: media_type.clone(),
            },
            None,
        );
    }
    let layers: Vec<Descriptor> = img
        .layers
        .iter()
        .zip(&facts)
        .map(|(l, p)| {
            let media_type = match (&l.declared, p.facts.as_stored) {
                (Some(d), true) if !d.media_type.is_empty() => d.media_type.clone(),
                _ => p.facts.pushed_codec.oci_layer_media_type().to_string(),
            };
            Descriptor {
                media_type,
                digest: p.pushed.digest.clone(),
                size: p.pushed.size,
                platform: None,
                annotations: None,
            }
        })
        .collect();
    let codec_id = match facts.first() {
        Some(first)
            if facts.iter().all(|p| {
                !p.facts.as_stored
                    && !p.facts.other_encoder
                    && p.facts.pushed_codec == first.facts.pushed_codec
            }) =>
        {
            Some(codec::codec_id(first.facts.pushed_codec))
        }
        _ => None,
    };
    let why =
        img.original_manifest
            .as_ref()
            .map(|_| match facts.iter().find(|p| !p.facts.as_stored) {
                Some(p) => reencoding(p.facts.stored_codec, p.facts.pushed_codec, policy),
                None => "the archive's manifest does not name its layer blobs".into(),
            });
    let config = manifest::config_descriptor(&img.config_digest, img.config.len() as u64);
    (
        Document {
            bytes: manifest::image_manifest(&config, &layers, codec_id),
            media_type: OCI_MANIFEST.to_string(),
        },
        why,
    )
}

pub(super) fn reencoding(stored: Codec, pushed: Codec, policy: CompressionPolicy) -> String {
    match policy {
        CompressionPolicy::Force(c) => format!(
            "--compression {c} re-encodes layers stored as {stored}: the manifest names the new \
             blobs"
        ),
        CompressionPolicy::Keep(_) => format!(
            "layers stored uncompressed are pushed {pushed}-compressed: the manifest names the \
             new blobs (--compression none pushes them as stored)"
        ),
    }
}
