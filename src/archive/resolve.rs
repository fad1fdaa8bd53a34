//! Turning a catalog into images: which config, which layers (as archive members, in order),
//! which tags, and what each descriptor in the archive claims about them.
//!
//! Two routes. An OCI `index.json` (podman/skopeo oci-archive, Docker 25+, containerd store)
//! gives real descriptors and platforms, so it wins when present. Otherwise a docker-save
//! `manifest.json` lists config and layer paths whose digests must be computed.

use std::collections::BTreeMap;

use super::ambiguity;
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
    /// The image index the entry is (a multi-platform image), as stored.
    pub index: Option<ArchiveIndex>,
}

/// An image index as the archive stores it: the digest the source tool reported, pushed byte
/// for byte when every manifest it lists is pushed as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveIndex {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
    /// Digests of the manifests it lists, in order (attestations included).
    pub manifests: Vec<String>,
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
    for name in ["index.json", "manifest.json"] {
        if catalog.kinds.contains_key(name) && !catalog.meta.contains_key(name) {
            // Present but not read (a directory, a symlink): say why.
            catalog.metadata(name, "archive")?;
        }
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
    // `null` is Go's empty list.
    let entries: Vec<DockerManifestEntry> =
        parse_json::<Option<_>>(bytes, "manifest.json")?.unwrap_or_default();
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
            index: None,
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
    let bytes = catalog.metadata("index.json", "archive")?;
    ambiguity::check("index.json", bytes, ambiguity::Kind::Index, None)?;
    let index: Index = parse_json(bytes, "index.json")?;
    // docker save's manifest.json knows full tags where an OCI ref.name may be only a tag.
    let docker_tags = docker_tags_by_config(catalog);
    let mut by_digest: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<ImageEntry> = Vec::new();
    for d in &index.manifests {
        let mut entry = ImageEntry {
            tags: vec![],
            images: vec![],
            left_out: vec![],
            index: None,
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
    let Ok(Some(entries)) = serde_json::from_slice::<Option<Vec<DockerManifestEntry>>>(bytes)
    else {
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
        // No descriptor media type: the document's own, else its shape.
        let doc = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let own = doc.as_ref().and_then(|v| v.get("mediaType")?.as_str());
        match own {
            Some(own) => own.to_string(),
            None if doc.as_ref().is_some_and(|v| !v["manifests"].is_null()) => {
                OCI_INDEX.to_string()
            }
            None => OCI_MANIFEST.to_string(),
        }
    } else {
        d.media_type.clone()
    };
    let kind = if is_index_media_type(&media_type) {
        ambiguity::Kind::Index
    } else {
        ambiguity::Kind::Manifest
    };
    ambiguity::check(&member, &bytes, kind, Some(&d.media_type))?;
    if kind == ambiguity::Kind::Index {
        if depth >= MAX_INDEX_DEPTH {
            return Err(ArchiveError::BadMetadata {
                member,
                detail: "indexes nested too deep".into(),
            });
        }
        let index: Index = parse_json(&bytes, &member)?;
        if depth == 0 {
            entry.index = Some(ArchiveIndex {
                manifests: index.manifests.iter().map(|m| m.digest.clone()).collect(),
                bytes: bytes.clone(),
                media_type: media_type.clone(),
                digest: d.digest.clone(),
            });
        }
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
    for (what, blob) in std::iter::once(("config", &manifest.config))
        .chain(manifest.layers.iter().map(|l| ("a layer", l)))
    {
        let mt = blob.media_type.as_str();
        if is_index_media_type(mt) || mt == OCI_MANIFEST || mt == DOCKER_MANIFEST {
            return Err(ArchiveError::Ambiguous {
                member,
                detail: format!(
                    "{what} descriptor ({}) has the media type {mt:?} of a manifest",
                    blob.digest
                ),
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::archive::error::MemberProblem;
    use crate::archive::formats::{
        OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR as OCI_LAYER, OCI_MANIFEST,
    };
    use crate::archive::scan::fixtures::*;

    fn layers() -> Vec<Vec<u8>> {
        vec![layer(1), layer(2)]
    }

    fn one(entries: Vec<ImageEntry>) -> (ImageEntry, ImageSource) {
        assert_eq!(entries.len(), 1, "one entry");
        let e = entries.into_iter().next().unwrap();
        assert_eq!(e.images.len(), 1, "one image");
        let img = e.images[0].clone();
        (e, img)
    }

    fn refused(bytes: &[u8]) -> ArchiveError {
        match images_of(bytes) {
            Ok(e) => panic!("accepted: {} entries", e.len()),
            Err(e) => e,
        }
    }

    /// A legacy archive of one image whose manifest.json entry is changed by `edit`, with
    /// `extra` members written before manifest.json.
    fn legacy_with(
        edit: impl FnOnce(&mut serde_json::Value),
        extra: impl FnOnce(&mut TarBuf),
    ) -> Vec<u8> {
        let mut t = TarBuf::new();
        let mut e = legacy_image(&mut t, Some(&["web:1.4"]), "linux/amd64", &layers());
        edit(&mut e);
        extra(&mut t);
        t.file("manifest.json", &manifest_json(&[e]));
        t.finish()
    }

    #[test]
    fn legacy_docker_save_is_read_from_manifest_json() {
        let (e, img) = one(images_of(&legacy_archive(
            Some(&["web:1.4", "reg.io/web:2"]),
            &layers(),
        ))
        .unwrap());
        let cfg = config("linux/amd64", &layers());
        assert_eq!(e.tags, ["web:1.4", "reg.io/web:2"]);
        assert!(e.left_out.is_empty());
        assert_eq!(img.config, cfg);
        assert_eq!(img.config_digest, sha(&cfg));
        assert_eq!(img.config_member, format!("{}.json", hex(&cfg)));
        assert_eq!(img.diff_ids, [sha(&layer(1)), sha(&layer(2))]);
        assert_eq!(img.platform.to_string(), "linux/amd64");
        let members: Vec<&str> = img.layers.iter().map(|l| l.member.as_str()).collect();
        assert_eq!(
            members,
            [
                format!("{}/layer.tar", v1_id(&cfg, 0)),
                format!("{}/layer.tar", v1_id(&cfg, 1))
            ]
        );
        assert!(
            img.layers.iter().all(|l| l.declared.is_none()),
            "nothing declared"
        );
        assert!(img.original_manifest.is_none());
    }

    /// Docker 25+ saving by image ID writes Go's nil slices as `null`: an index whose
    /// `manifests` is null (so manifest.json is read) and an entry whose `RepoTags` is null.
    #[test]
    fn go_nil_slices_are_read_as_empty() {
        let mut t = TarBuf::new();
        let cfg = config("linux/amd64", &layers());
        let d = oci_image(&mut t, "linux/amd64", &layers());
        let paths: Vec<String> = layers()
            .iter()
            .map(|l| format!("blobs/sha256/{}", hex(l)))
            .collect();
        t.file(
            "index.json",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":null}"#,
        );
        t.file(
            "manifest.json",
            &manifest_json(&[json!({
                "Config": format!("blobs/sha256/{}", hex(&cfg)),
                "RepoTags": null,
                "Layers": paths,
                "LayerSources": null,
            })]),
        );
        let (e, img) = one(images_of(&t.finish()).unwrap());
        assert!(e.tags.is_empty(), "saved by ID");
        assert_eq!(img.config_digest, sha(&cfg));
        assert_eq!(img.layers.len(), 2);
        let _ = d;

        // A layerless image (`FROM scratch` + metadata only) as Go writes it: every list and
        // map null, in the index, the manifest and the config.
        let mut t = TarBuf::new();
        let cfg = br#"{"architecture":"amd64","os":"linux","variant":null,"os.features":null,"config":{"Env":null},"history":null,"rootfs":{"type":"layers","diff_ids":null}}"#;
        let c = blob(&mut t, OCI_CONFIG, cfg);
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": c["digest"], "size": c["size"], "annotations": null, "platform": null},
            "layers": null,
            "annotations": null,
        }))
        .unwrap();
        let mut d = blob(&mut t, OCI_MANIFEST, &m);
        d["annotations"] = json!(null);
        d["platform"] =
            json!({"os": "linux", "architecture": "amd64", "os.features": null, "variant": null});
        t.file(
            "index.json",
            &serde_json::to_vec(
                &json!({"schemaVersion": 2, "manifests": [d], "annotations": null}),
            )
            .unwrap(),
        );
        let (e, img) = one(images_of(&t.finish()).unwrap());
        assert!(e.tags.is_empty());
        assert!(img.layers.is_empty() && img.diff_ids.is_empty());
        assert_eq!(img.platform.to_string(), "linux/amd64");

        // manifest.json itself `null` is an archive without images, not invalid JSON.
        let mut t = TarBuf::new();
        t.file("manifest.json", b"null");
        assert!(matches!(refused(&t.finish()), ArchiveError::NoImages));
    }

    #[test]
    fn several_images_and_an_untagged_one() {
        let mut t = TarBuf::new();
        let a = legacy_image(&mut t, Some(&["a:1"]), "linux/amd64", &[layer(1)]);
        let b = legacy_image(&mut t, None, "linux/arm64", &[layer(1), layer(2)]);
        t.file("manifest.json", &manifest_json(&[a, b]));
        let entries = images_of(&t.finish()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].tags, ["a:1"]);
        assert!(entries[1].tags.is_empty(), "saved by image ID: no RepoTags");
        let id = sha(&config("linux/arm64", &[layer(1), layer(2)]));
        assert_eq!(entries[1].display_name(), id, "named by its image ID");
    }

    /// The same images, told apart by what the archive holds: `index.json` makes it an OCI
    /// layout (with descriptors to check), `manifest.json` alone a legacy docker save. Names of
    /// the archive itself play no part (the readers only ever see bytes).
    #[test]
    fn the_layout_is_told_by_the_members() {
        // Legacy, with a stray `oci-layout` but no index.json.
        let bytes = legacy_with(
            |_| {},
            |t| {
                t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
            },
        );
        let (_, legacy) = one(images_of(&bytes).unwrap());
        assert!(legacy.layers.iter().all(|l| l.declared.is_none()));

        // OCI archive: index.json only.
        let mut t = TarBuf::new();
        let d = oci_image(&mut t, "linux/amd64", &layers());
        t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        t.file("index.json", &index(&[tagged(d, "1.4", None)]));
        let (e, oci) = one(images_of(&t.finish()).unwrap());
        assert_eq!(
            e.tags,
            ["1.4"],
            "an OCI layout's ref.name may be a bare tag"
        );
        assert!(oci.layers.iter().all(|l| l.declared.is_some()));
        assert!(oci.original_manifest.is_some());
        assert_eq!(
            oci.config_member,
            format!("blobs/sha256/{}", hex(&oci.config))
        );

        // Same image either way.
        assert_eq!(legacy.config_digest, oci.config_digest);
        assert_eq!(legacy.diff_ids, oci.diff_ids);
    }

    /// Docker 25+: an OCI layout plus a manifest.json pointing into blobs/. The index wins
    /// (descriptors), and manifest.json's full tags are added to the index's.
    #[test]
    fn docker_25_uses_the_index_and_keeps_the_full_tags() {
        let mut t = TarBuf::new();
        let d = oci_image(&mut t, "linux/amd64", &layers());
        let cfg = config("linux/amd64", &layers());
        t.file(
            "index.json",
            &index(&[tagged(d, "1.4", Some("docker.io/library/web:1.4"))]),
        );
        let paths: Vec<String> = layers()
            .iter()
            .map(|l| format!("blobs/sha256/{}", hex(l)))
            .collect();
        t.file(
            "manifest.json",
            &manifest_json(&[json!({
                "Config": format!("blobs/sha256/{}", hex(&cfg)),
                "RepoTags": ["web:1.4", "web:latest"],
                "Layers": paths,
            })]),
        );
        t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let (e, img) = one(images_of(&t.finish()).unwrap());
        assert_eq!(
            e.tags,
            ["docker.io/library/web:1.4", "web:1.4", "web:latest"]
        );
        assert!(img.layers.iter().all(|l| l.declared.is_some()));
        let members: Vec<&str> = img.layers.iter().map(|l| l.member.as_str()).collect();
        assert_eq!(members, paths);
    }

    /// containerd's store: a tagged index whose platforms are only partly in the archive.
    #[test]
    fn containerd_multi_platform_keeps_what_is_complete_and_names_the_rest() {
        let mut t = TarBuf::new();
        let amd = oci_image(&mut t, "linux/amd64", &[layer(1)]);
        // arm64: the manifest is listed but not in the archive.
        let arm_cfg = config("linux/arm64", &[layer(2)]);
        let arm_manifest = oci_manifest(&arm_cfg, &[layer(2)]);
        let arm = json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha(&arm_manifest),
            "size": arm_manifest.len(),
            "platform": {"os": "linux", "architecture": "arm64"},
        });
        // s390x: the manifest is there, a layer is not.
        let s390_cfg = config("linux/s390x", &[layer(3)]);
        blob(&mut t, OCI_CONFIG, &s390_cfg);
        let mut s390 = blob(&mut t, OCI_MANIFEST, &oci_manifest(&s390_cfg, &[layer(3)]));
        s390["platform"] = json!({"os": "linux", "architecture": "s390x"});
        // A buildkit attestation: not a platform.
        let att = json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha(b"attestation"),
            "size": 11,
            "platform": {"os": "unknown", "architecture": "unknown"},
        });
        let nested = blob(&mut t, OCI_INDEX, &index(&[amd, arm, s390, att]));
        t.file(
            "index.json",
            &index(&[tagged(nested, "1", Some("docker.io/library/multi:1"))]),
        );
        let entries = images_of(&t.finish()).unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.tags, ["docker.io/library/multi:1"]);
        let present: Vec<String> = e.images.iter().map(|i| i.platform.to_string()).collect();
        assert_eq!(present, ["linux/amd64"]);
        let left: Vec<(&str, &str)> = e
            .left_out
            .iter()
            .map(|l| (l.platform.as_str(), l.missing.as_str()))
            .collect();
        assert_eq!(
            left,
            [
                (
                    "linux/arm64",
                    format!("blobs/sha256/{}", hex(&arm_manifest)).as_str()
                ),
                (
                    "linux/s390x",
                    format!("blobs/sha256/{}", hex(&layer(3))).as_str()
                ),
            ]
        );
    }

    #[test]
    fn one_manifest_listed_under_two_tags_is_one_image() {
        let mut t = TarBuf::new();
        let d = oci_image(&mut t, "linux/amd64", &layers());
        t.file(
            "index.json",
            &index(&[
                tagged(d.clone(), "reg.io/app:1", None),
                tagged(d, "reg.io/app:latest", None),
            ]),
        );
        let (e, _) = one(images_of(&t.finish()).unwrap());
        assert_eq!(e.tags, ["reg.io/app:1", "reg.io/app:latest"]);
    }

    /// Old engines saved a layer shared by two v1 directories once, the second `layer.tar`
    /// being a symlink to the first.
    #[test]
    fn a_layer_symlinked_to_another_layer_is_that_layer() {
        let cfg = config("linux/amd64", &[layer(1), layer(1)]);
        let first = format!("{}/layer.tar", v1_id(&cfg, 0));
        let bytes = {
            let mut t = TarBuf::new();
            t.file(&format!("{}.json", hex(&cfg)), &cfg);
            t.dir(&format!("{}/", v1_id(&cfg, 0)));
            t.file(&first, &layer(1));
            t.dir(&format!("{}/", v1_id(&cfg, 1)));
            t.symlink(
                &format!("{}/layer.tar", v1_id(&cfg, 1)),
                &format!("../{first}"),
            );
            t.file(
                "manifest.json",
                &manifest_json(&[json!({
                    "Config": format!("{}.json", hex(&cfg)),
                    "RepoTags": ["dedup:1"],
                    "Layers": [first.clone(), format!("{}/layer.tar", v1_id(&cfg, 1))],
                })]),
            );
            t.finish()
        };
        let (_, img) = one(images_of(&bytes).unwrap());
        assert_eq!(img.layers[0].member, first);
        assert_eq!(img.layers[1].member, first, "the symlink is followed");
    }

    fn legacy_with_layer_link(target: &str) -> Vec<u8> {
        let cfg = config("linux/amd64", &layers());
        let other = format!("{}/layer.tar", v1_id(&cfg, 1));
        let target = target.replace("OTHER", &other);
        let mut t = TarBuf::new();
        t.file(&format!("{}.json", hex(&cfg)), &cfg);
        t.dir(&format!("{}/", v1_id(&cfg, 0)));
        t.symlink(&format!("{}/layer.tar", v1_id(&cfg, 0)), &target);
        t.dir(&format!("{}/", v1_id(&cfg, 1)));
        t.symlink(&other, &format!("../{}/layer.tar", v1_id(&cfg, 0)));
        t.file(
            "manifest.json",
            &manifest_json(&[json!({
                "Config": format!("{}.json", hex(&cfg)),
                "Layers": [format!("{}/layer.tar", v1_id(&cfg, 0)), other],
            })]),
        );
        t.finish()
    }

    #[test]
    fn a_layer_symlink_loop_is_refused() {
        let cfg = config("linux/amd64", &layers());
        match refused(&legacy_with_layer_link("../OTHER")) {
            ArchiveError::SymlinkLoop { member } => {
                assert_eq!(member, format!("{}/layer.tar", v1_id(&cfg, 0)))
            }
            e => panic!("expected SymlinkLoop, got {e:?}"),
        }
    }

    #[test]
    fn a_layer_symlink_out_of_the_archive_is_refused() {
        let cfg = config("linux/amd64", &layers());
        for target in ["../../etc/passwd", "/etc/passwd", "../../../OTHER"] {
            match refused(&legacy_with_layer_link(target)) {
                ArchiveError::SymlinkEscape { member, target: t } => {
                    assert_eq!(member, format!("{}/layer.tar", v1_id(&cfg, 0)));
                    assert_eq!(
                        t,
                        target.replace("OTHER", &format!("{}/layer.tar", v1_id(&cfg, 1)))
                    );
                }
                e => panic!("{target}: expected SymlinkEscape, got {e:?}"),
            }
        }
    }

    #[test]
    fn a_missing_layer_or_config_is_named_with_its_referrer() {
        let bytes = legacy_with(|e| e["Layers"][1] = json!("0000/layer.tar"), |_| {});
        match refused(&bytes) {
            ArchiveError::MissingMember { member, referrer } => {
                assert_eq!(
                    (member.as_str(), referrer.as_str()),
                    ("0000/layer.tar", "manifest.json[0]")
                );
            }
            e => panic!("expected MissingMember, got {e:?}"),
        }
        let bytes = legacy_with(|e| e["Config"] = json!("nope.json"), |_| {});
        assert!(
            matches!(refused(&bytes), ArchiveError::MissingMember { member, .. } if member == "nope.json")
        );
    }

    #[test]
    fn manifest_paths_may_not_leave_the_archive() {
        for (path, problem) in [
            ("../x/layer.tar", MemberProblem::ParentComponent),
            ("x/../../layer.tar", MemberProblem::ParentComponent),
            ("/x/layer.tar", MemberProblem::AbsolutePath),
        ] {
            let bytes = legacy_with(|e| e["Layers"][0] = json!(path), |_| {});
            match refused(&bytes) {
                ArchiveError::ForbiddenMember { member, problem: p } => {
                    assert_eq!((member.as_str(), p), (path, problem))
                }
                e => panic!("{path}: expected ForbiddenMember, got {e:?}"),
            }
        }
    }

    #[test]
    fn a_config_must_match_the_digest_in_its_name() {
        let cfg = config("linux/amd64", &layers());
        let other = config("linux/arm64", &layers());
        let name = format!("{}.json", hex(&cfg));
        let bytes = {
            let mut t = TarBuf::new();
            let mut e = legacy_image(&mut t, Some(&["a:1"]), "linux/arm64", &layers());
            e["Config"] = json!(name);
            t.file(&name, &other);
            t.file("manifest.json", &manifest_json(&[e]));
            t.finish()
        };
        match refused(&bytes) {
            ArchiveError::DigestMismatch {
                member,
                expected,
                actual,
            } => {
                assert_eq!(member, name);
                assert_eq!(expected, sha(&cfg));
                assert_eq!(actual, sha(&other));
            }
            e => panic!("expected DigestMismatch, got {e:?}"),
        }
        // A name that is not a digest promises nothing.
        let bytes = legacy_with(
            |e| e["Config"] = json!("config.json"),
            |t| {
                t.file("config.json", &cfg);
            },
        );
        let (_, img) = one(images_of(&bytes).unwrap());
        assert_eq!(img.config_digest, sha(&cfg));
    }

    #[test]
    fn oci_blobs_must_match_their_descriptors() {
        let cfg = config("linux/amd64", &layers());
        let other = config("linux/arm64", &layers());
        // Config blob with other content under the config's name.
        let mut t = TarBuf::new();
        t.file(&format!("blobs/sha256/{}", hex(&cfg)), &other);
        for l in layers() {
            blob(&mut t, OCI_LAYER, &l);
        }
        let m = blob(&mut t, OCI_MANIFEST, &oci_manifest(&cfg, &layers()));
        t.file("index.json", &index(&[m]));
        assert!(matches!(
            refused(&t.finish()),
            ArchiveError::DigestMismatch { member, expected, .. }
                if member == format!("blobs/sha256/{}", hex(&cfg)) && expected == sha(&cfg)
        ));
        // A manifest descriptor with the wrong size.
        let mut t = TarBuf::new();
        let mut m = oci_image(&mut t, "linux/amd64", &layers());
        let size = m["size"].as_u64().unwrap();
        m["size"] = json!(size + 1);
        t.file("index.json", &index(&[m]));
        assert!(matches!(
            refused(&t.finish()),
            ArchiveError::SizeMismatch { expected, actual, .. } if expected == size + 1 && actual == size
        ));
        // A descriptor digest that is not a sha256 digest names no member.
        let mut t = TarBuf::new();
        t.file(
            "index.json",
            &index(&[
                json!({"mediaType": OCI_MANIFEST, "digest": "sha256:../../etc/passwd", "size": 1}),
            ]),
        );
        assert!(
            matches!(refused(&t.finish()), ArchiveError::BadMetadata { member, .. } if member == "index.json")
        );
    }

    #[test]
    fn layers_and_diff_ids_must_agree() {
        let bytes = legacy_with(
            |e| {
                let first = e["Layers"][0].clone();
                e["Layers"].as_array_mut().unwrap().push(first);
            },
            |_| {},
        );
        assert!(matches!(
            refused(&bytes),
            ArchiveError::LayerCountMismatch {
                layers: 3,
                diff_ids: 2,
                ..
            }
        ));
        let bad = br#"{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":["md5:00"]}}"#;
        let bytes = legacy_with(
            |e| {
                e["Config"] = json!("bad.json");
                e["Layers"] = json!([e["Layers"][0].clone()]);
            },
            |t| {
                t.file("bad.json", bad);
            },
        );
        assert!(
            matches!(refused(&bytes), ArchiveError::BadMetadata { member, .. } if member == "bad.json")
        );
    }

    #[test]
    fn archives_without_images_are_refused() {
        let mut t = TarBuf::new();
        t.file("hello.txt", b"hi");
        assert!(matches!(refused(&t.finish()), ArchiveError::NoImages));
        let mut t = TarBuf::new();
        t.file("manifest.json", b"[]");
        assert!(matches!(refused(&t.finish()), ArchiveError::NoImages));
        let mut t = TarBuf::new();
        t.file("manifest.json", b"{not json");
        assert!(
            matches!(refused(&t.finish()), ArchiveError::BadJson { member, .. } if member == "manifest.json")
        );
        // An index that lists nothing falls back to manifest.json, and there is none.
        let mut t = TarBuf::new();
        t.file("index.json", &index(&[]));
        assert!(matches!(refused(&t.finish()), ArchiveError::NoImages));
        // index.json that is not a file is named.
        let mut t = TarBuf::new();
        t.dir("index.json/");
        assert!(
            matches!(refused(&t.finish()), ArchiveError::BadMetadata { member, .. } if member == "index.json")
        );
    }

    #[test]
    fn indexes_nested_too_deep_are_refused() {
        let mut t = TarBuf::new();
        let mut d = oci_image(&mut t, "linux/amd64", &[layer(1)]);
        for _ in 0..5 {
            d = blob(&mut t, OCI_INDEX, &index(&[d]));
        }
        t.file("index.json", &index(&[d]));
        let e = refused(&t.finish());
        assert!(
            matches!(&e, ArchiveError::BadMetadata { detail, .. } if detail.contains("nested too deep")),
            "{e:?}"
        );
        // Four levels are fine.
        let mut t = TarBuf::new();
        let mut d = oci_image(&mut t, "linux/amd64", &[layer(1)]);
        for _ in 0..4 {
            d = blob(&mut t, OCI_INDEX, &index(&[d.clone(), d]));
        }
        t.file("index.json", &index(&[d]));
        one(images_of(&t.finish()).unwrap());
    }

    /// A config referred to from where the scan does not read documents (a subdirectory) is
    /// refused naming it, not as "over the size limit".
    #[test]
    fn a_config_outside_the_metadata_places_is_named() {
        let cfg = config("linux/amd64", &layers());
        let bytes = legacy_with(
            |e| e["Config"] = json!("configs/c.json"),
            |t| {
                t.dir("configs/");
                t.file("configs/c.json", &cfg);
            },
        );
        match refused(&bytes) {
            ArchiveError::BadMetadata { member, detail } => {
                assert_eq!(member, "configs/c.json");
                assert!(detail.contains("manifest.json[0]"), "{detail}");
            }
            e => panic!("expected BadMetadata, got {e:?}"),
        }
    }
}
