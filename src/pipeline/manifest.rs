//! Registry manifests built from what was verified and pushed. Field order is fixed and no
//! timestamps appear, so the same archive and settings always give the same digest.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::archive::formats::{Descriptor, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Platform};

pub const ANNOTATION_CODEC: &str = "dev.imageimport.layer-codec";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'a str, String>,
}

pub fn config_descriptor(digest: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: OCI_CONFIG.into(),
        digest: digest.into(),
        size,
        platform: None,
        annotations: None,
    }
}

/// An OCI image manifest. `codec_id` is recorded when every layer was encoded here.
pub fn image_manifest(
    config: &Descriptor,
    layers: &[Descriptor],
    codec_id: Option<String>,
) -> Vec<u8> {
    let mut annotations = BTreeMap::new();
    if let Some(id) = codec_id {
        annotations.insert(ANNOTATION_CODEC, id);
    }
    serde_json::to_vec(&Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config,
        layers,
        annotations,
    })
    .expect("manifest serializes")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<Descriptor>,
}

/// An OCI index of the platform manifests that were pushed (never the archive's own
/// index, which may name platforms whose blobs were not in the archive).
pub fn index(manifests: &[(String, u64, String, Platform)]) -> Vec<u8> {
    let manifests = manifests
        .iter()
        .map(|(digest, size, media_type, platform)| Descriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: *size,
            platform: Some(platform.clone()),
            annotations: None,
        })
        .collect();
    serde_json::to_vec(&IndexDoc {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests,
    })
    .expect("index serializes")
}
