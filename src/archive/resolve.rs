//! Turning a catalog into images: which config, which layers (as archive members, in order),
//! which tags, and what each descriptor in the archive claims about them.
//!
//! Two routes. An OCI `index.json` (podman/skopeo oci-archive, Docker 25+, containerd store)
//! gives real descriptors and platforms, so it wins when present. Otherwise a docker-save
//! `manifest.json` lists config and layer paths whose digests must be computed.

use std::collections::BTreeMap;

use super::catalog::Catalog;
use super::digest;
use super::error::ArchiveError;
use super::formats::*;

/// An image as the archive describes it, before any layer was read.
#[derive(Debug, Clone)]
pub struct ImageSource {
    pub config: Vec<u8>,
    /// sha256 of the config bytes: the image ID.
    pub config_digest: String,
    pub config_member: String,
    pub diff_ids: Vec<String>,
    pub platform: Platform,
    pub layers: Vec<LayerSource>,
    /// The archive's own registry manifest (OCI layouts), pushed unchanged when every
    /// layer is pushed exactly as stored.
    pub original_manifest: Option<(Vec<u8>, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSource {
    /// Member holding the layer, symlinks resolved.
    pub member: String,
    /// What a descriptor says about the stored bytes (OCI layouts), checked when read.
    pub declared: Option<Descriptor>,
}

/// One entry of the archive: a single image, or several platforms of one tagged index.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// Tags as saved (`docker.io/library/nginx:1.25`, `web:1.4`, or a bare `1.4` from an OCI
    /// layout's ref.name); empty when saved by image ID.
    pub tags: Vec<String>,
    pub images: Vec<ImageSource>,
    /// Platforms the index lists whose blobs are not in the archive.
    pub left_out: Vec<LeftOut>,
}

#[derive(Debug, Clone)]
pub struct LeftOut {
    pub platform: String,
    pub digest: String,
    pub missing: String,
}

impl ImageEntry {
    /// A name for messages: the first tag, or the image ID.
    pub fn display_name(&self) -> String {
        self.tags.first().cloned().unwrap_or_else(|| {
            self.images
                .first()
                .map(|i| i.config_digest.clone())
                .unwrap_or_default()
        })
    }
}

pub fn images(catalog: &Catalog) -> Result<Vec<ImageEntry>, ArchiveError> {
    if catalog.meta.contains_key("index.json") {
        let entries = from_oci_index(catalog)?;
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    if catalog.meta.contains_key("manifest.json") {
        return from_docker_manifest(catalog);
    }
    if catalog.kinds.contains_key("index.json") || catalog.kinds.contains_key("manifest.json") {
        // Present but not read: only possible when over the cap.
        catalog.metadata("manifest.json", "archive")?;
    }
    Err(ArchiveError::NoImages)
}

fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    member: &str,
) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::BadJson {
        member: member.to_string(),
        detail: e.to_string(),
    })
}

fn from_docker_manifest(catalog: &Catalog) -> Result<Vec<ImageEntry>, ArchiveError> {
    let bytes = catalog.metadata("manifest.json", "archive")?;
    let entries: Vec<DockerManifestEntry> = parse_json(bytes, "manifest.json")?;
    if entries.is_empty() {
        return Err(ArchiveError::NoImages);
    }
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let referrer = format!("manifest.json[{i}]");
        let config_member = catalog.resolve_file(&entry.config, &referrer)?;
        let config = catalog.metadata(&config_member, &referrer)?.to_vec();
        let config_digest = digest::sha256_of(&config);
        check_named_digest(&config_member, &config_digest)?;
        let parsed: ImageConfig = parse_json(&config, &config_member)?;
        let mut layers = Vec::new();
        for path in &entry.layers {
            let member = catalog.resolve_file(path, &referrer)?;
            layers.push(LayerSource {
                member,
                declared: None,
            });
        }
        let image = finish_image(config, config_digest, config_member, parsed, layers, None)?;
        out.push(ImageEntry {
            tags: entry.repo_tags.clone().unwrap_or_default(),
            images: vec![image],
            left_out: vec![],
        });
    }
    Ok(out)
}

/// `<hex>.json` (legacy config) and `blobs/sha256/<hex>` names promise a digest: keep it.
fn check_named_digest(member: &str, actual: &str) -> Result<(), ArchiveError> {
    let base = member.rsplit('/').next().unwrap_or(member);
    let hex = if member.starts_with("blobs/sha256/") {
        Some(base)
    } else {
        base.strip_suffix(".json").filter(|h| digest::is_hex64(h))
    };
    if let Some(hex) = hex {
        let expected = format!("sha256:{hex}");
        if expected != actual {
            return Err(ArchiveError::DigestMismatch {
                member: member.to_string(),
                expected,
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

fn finish_image(
    config: Vec<u8>,
    config_digest: String,
    config_member: String,
    parsed: ImageConfig,
    layers: Vec<LayerSource>,
    original_manifest: Option<(Vec<u8>, String)>,
) -> Result<ImageSource, ArchiveError> {
    for d in &parsed.rootfs.diff_ids {
        if digest::parse(d).is_none() {
            return Err(ArchiveError::BadMetadata {
                member: config_member.clone(),
                detail: format!("rootfs.diff_ids holds {d:?}, not a sha256 digest"),
            });
        }
    }
    if parsed.rootfs.diff_ids.len() != layers.len() {
        return Err(ArchiveError::LayerCountMismatch {
            image: config_digest,
            layers: layers.len(),
            diff_ids: parsed.rootfs.diff_ids.len(),
        });
    }
    Ok(ImageSource {
        diff_ids: parsed.rootfs.diff_ids.clone(),
        platform: parsed.platform(),
        config,
        config_digest,
        config_member,
        layers,
        original_manifest,
    })
}

fn blob_member(d: &Descriptor) -> Result<String, ArchiveError> {
    let hex = digest::parse(&d.digest).ok_or_else(|| ArchiveError::BadMetadata {
        member: "index.json".into(),
        detail: format!("descriptor digest {:?} is not a sha256 digest", d.digest),
    })?;
    Ok(format!("blobs/sha256/{hex}"))
}

/// Read a JSON blob named by a descriptor, checking digest and size.
fn blob_json(
    catalog: &Catalog,
    d: &Descriptor,
    referrer: &str,
) -> Result<(String, Vec<u8>), ArchiveError> {
    let member = blob_member(d)?;
    let bytes = catalog.metadata(&member, referrer)?.to_vec();
    let actual = digest::sha256_of(&bytes);
    if actual != d.digest {
        return Err(ArchiveError::DigestMismatch {
            member,
            expected: d.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != d.size {
        return Err(ArchiveError::SizeMismatch {
            member,
            expected: d.size,
            actual: bytes.len() as u64,
        });
    }
    Ok((member, bytes))
}

fn from_oci_index(catalog: &Catalog) -> Result<Vec<ImageEntry>, ArchiveError> {
    let index: Index = parse_json(catalog.metadata("index.json", "archive")?, "index.json")?;
    // docker save's manifest.json knows full tags where an OCI ref.name may be only a tag.
    let docker_tags = docker_tags_by_config(catalog);
    let mut by_digest: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<ImageEntry> = Vec::new();
    for d in &index.manifests {
        let mut entry = ImageEntry {
            tags: vec![],
            images: vec![],
            left_out: vec![],
        };
        collect_manifests(catalog, d, None, 0, &mut entry, &mut Default::default())?;
        let mut tags = tags_of(d);
        for img in &entry.images {
            for t in docker_tags.get(&img.config_digest).into_iter().flatten() {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
        }
        // The same manifest listed twice (one per tag) is one image with two tags.
        if let Some(&i) = by_digest.get(&d.digest) {
            for t in tags {
                if !out[i].tags.contains(&t) {
                    out[i].tags.push(t);
                }
            }
            continue;
        }
        entry.tags = tags;
        if entry.images.is_empty() && entry.left_out.is_empty() {
            continue;
        }
        by_digest.insert(d.digest.clone(), out.len());
        out.push(entry);
    }
    Ok(out)
}

fn tags_of(d: &Descriptor) -> Vec<String> {
    let Some(ann) = &d.annotations else {
        return vec![];
    };
    if let Some(name) = ann.get(ANNOTATION_IMAGE_NAME) {
        return vec![name.clone()];
    }
    ann.get(ANNOTATION_REF_NAME)
        .map(|n| vec![n.clone()])
        .unwrap_or_default()
}

fn docker_tags_by_config(catalog: &Catalog) -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    let Some(bytes) = catalog.meta.get("manifest.json") else {
        return map;
    };
    let Ok(entries) = serde_json::from_slice::<Vec<DockerManifestEntry>>(bytes) else {
        return map;
    };
    for e in entries {
        if let Ok(member) = catalog.resolve_file(&e.config, "manifest.json")
            && let Some(cfg) = catalog.meta.get(&member)
        {
            map.insert(digest::sha256_of(cfg), e.repo_tags.unwrap_or_default());
        }
    }
    map
}

const MAX_INDEX_DEPTH: usize = 4;
/// Manifests and indexes visited for one index.json entry: real multi-platform images list
/// a few dozen; a crafted archive can repeat children to make the walk exponential.
const MAX_VISITS: usize = 1024;

fn collect_manifests(
    catalog: &Catalog,
    d: &Descriptor,
    platform: Option<&Platform>,
    depth: usize,
    entry: &mut ImageEntry,
    visited: &mut std::collections::HashSet<String>,
) -> Result<(), ArchiveError> {
    // Each manifest once (a repeated child adds nothing), and a bounded walk in all.
    if !visited.insert(d.digest.clone()) {
        return Ok(());
    }
    if visited.len() > MAX_VISITS {
        return Err(ArchiveError::BadMetadata {
            member: "index.json".into(),
            detail: format!("indexes list more than {MAX_VISITS} manifests"),
        });
    }
    let referrer = if depth == 0 {
        "index.json".to_string()
    } else {
        format!("index {}", d.digest)
    };
    let platform = d.platform.as_ref().or(platform);
    let member = blob_member(d)?;
    if !catalog.has_file(&member) {
        entry.left_out.push(LeftOut {
            platform: platform
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            digest: d.digest.clone(),
            missing: member,
        });
        return Ok(());
    }
    let (member, bytes) = blob_json(catalog, d, &referrer)?;
    let media_type = if d.media_type.is_empty() {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| OCI_MANIFEST.to_string())
    } else {
        d.media_type.clone()
    };
    if is_index_media_type(&media_type) {
        if depth >= MAX_INDEX_DEPTH {
            return Err(ArchiveError::BadMetadata {
                member,
                detail: "indexes nested too deep".into(),
            });
        }
        let index: Index = parse_json(&bytes, &member)?;
        for child in &index.manifests {
            // Attestation manifests (buildkit) are not platforms.
            if child.platform.as_ref().is_some_and(|p| p.os == "unknown") {
                continue;
            }
            collect_manifests(catalog, child, platform, depth + 1, entry, visited)?;
        }
        return Ok(());
    }
    let manifest: ImageManifest = parse_json(&bytes, &member)?;
    let mut missing = None;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let m = blob_member(blob)?;
        if !catalog.has_file(&m) {
            missing = Some(m);
            break;
        }
    }
    if let Some(missing) = missing {
        entry.left_out.push(LeftOut {
            platform: platform
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into()),
            digest: d.digest.clone(),
            missing,
        });
        return Ok(());
    }
    let (config_member, config) = blob_json(catalog, &manifest.config, &member)?;
    let parsed: ImageConfig = parse_json(&config, &config_member)?;
    let config_digest = manifest.config.digest.clone();
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let m = catalog.resolve_file(&blob_member(l)?, &member)?;
        layers.push(LayerSource {
            member: m,
            declared: Some(l.clone()),
        });
    }
    let image = finish_image(
        config,
        config_digest,
        config_member,
        parsed,
        layers,
        Some((bytes, media_type)),
    )?;
    entry.images.push(image);
    Ok(())
}
