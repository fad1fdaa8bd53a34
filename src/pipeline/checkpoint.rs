//! Checkpoints of an uploaded archive (uncompressed tar only), so that the next worker of an
//! import whose worker died takes the upload up where the last one had committed a layer,
//! instead of from byte 0 (docs/architecture.md, "Uploads").
//!
//! A checkpoint is a member boundary of the archive (the end of a layer member, after that
//! layer's blob is committed in the registry) and what the streamed import needs to go on
//! from there: every member seen so far (the catalog: names, kinds, sizes, link targets, the
//! small JSON documents by content), every layer read (its facts and the blob it became) and,
//! with a `source.sha256` pin, the archive hash's inner state. The worker posts it to the
//! upload service, which keeps it for the next worker of the same import uid and generation.
//! The next worker trusts none of it blindly: each blob must still be in the registry, and
//! the catalog is rebuilt under the same checks a first pass makes; anything wrong, and it
//! starts from byte 0.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::codec::Codec;
use super::layer::LayerFacts;
use super::source::{RawHash, UploadEndpoint};
use super::{Processed, Pushed};
use crate::archive::Catalog;
use crate::archive::members::MemberKind;
use crate::archive::scan::Resume;
use crate::registry::{BlobHead, Registry};

/// Format of the document (a new one is not understood by an older worker: it starts at 0).
pub const VERSION: u32 = 1;
/// Largest checkpoint the upload service keeps (a real archive's metadata is kilobytes; a
/// larger one is not checkpointed and a restarted worker starts from 0).
pub const MAX_BYTES: usize = 8 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// Archive bytes taken in: the end of member `last_member`'s data.
    pub offset: u64,
    pub last_member: String,
    /// The target repository of the import that wrote it.
    pub repository: String,
    pub members: Vec<Member>,
    pub layers: Vec<Layer>,
    /// With a `source.sha256` pin: the archive hash's state after `offset` bytes (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A kept JSON document (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub member: String,
    pub stored_digest: String,
    pub stored_size: u64,
    pub stored_codec: Codec,
    pub diff_id: String,
    pub uncompressed_size: u64,
    pub pushed_codec: Codec,
    pub as_stored: bool,
    /// The blob is another tool's encoding (reused with `Reuse::AnyEncoding`).
    #[serde(default)]
    pub other_encoder: bool,
    /// The committed blob, and the repository holding it.
    pub blob_digest: String,
    pub blob_size: u64,
    pub blob_repository: String,
    pub blob_media_type: String,
    /// Bytes the attempt that wrote it uploaded for this blob.
    pub sent: u64,
}

/// What the streamed import takes up again: the scan's state, the layers read, the hash.
pub struct Restored {
    pub resume: Resume,
    pub(super) processed: HashMap<String, Processed>,
    pub hash: Option<RawHash>,
}

/// The archive at boundary `offset` after member `last`: every member seen and, with a pin,
/// the archive hash's state there. Taken when the boundary is read; the layers are added when
/// every blob before it is committed ([`Boundary::capture`]).
pub(super) struct Boundary {
    offset: u64,
    last: String,
    members: Vec<Member>,
    archive_hash: Option<String>,
}

impl Boundary {
    /// None when it cannot be taken up: the hash is not exactly there.
    pub(super) fn at(
        catalog: &Catalog,
        offset: u64,
        last: &str,
        hash: Option<&RawHash>,
    ) -> Option<Boundary> {
        let archive_hash = match hash {
            Some(h) => {
                let (state, n) = h.state();
                if n != offset {
                    return None;
                }
                Some(B64.encode(state))
            }
            None => None,
        };
        let members = catalog
            .kinds
            .iter()
            .map(|(name, kind)| {
                let (kind, link) = match kind {
                    MemberKind::File => ("file", None),
                    MemberKind::Dir => ("dir", None),
                    MemberKind::Symlink(t) => ("symlink", Some(t.clone())),
                };
                Member {
                    name: name.clone(),
                    kind: kind.into(),
                    size: catalog.sizes.get(name).copied().unwrap_or(0),
                    link,
                    content: catalog.meta.get(name).map(|b| B64.encode(b)),
                }
            })
            .collect();
        Some(Boundary {
            offset,
            last: last.into(),
            members,
            archive_hash,
        })
    }

    /// The checkpoint at this boundary, `processed` being every layer before it, each blob
    /// committed.
    pub(super) fn capture(
        self,
        processed: &HashMap<String, Processed>,
        repository: &str,
    ) -> Checkpoint {
        let Boundary {
            offset,
            last,
            members,
            archive_hash,
        } = self;
        let mut layers: Vec<Layer> = processed
            .iter()
            .map(|(member, p)| Layer {
                member: member.clone(),
                stored_digest: p.facts.stored_digest.clone(),
                stored_size: p.facts.stored_size,
                stored_codec: p.facts.stored_codec,
                diff_id: p.facts.diff_id.clone(),
                uncompressed_size: p.facts.uncompressed_size,
                pushed_codec: p.facts.pushed_codec,
                as_stored: p.facts.as_stored,
                other_encoder: p.facts.other_encoder,
                blob_digest: p.pushed.digest.clone(),
                blob_size: p.pushed.size,
                blob_repository: p.pushed.repo.clone(),
                blob_media_type: p.facts.pushed_codec.oci_layer_media_type().into(),
                sent: p.pushed.sent,
            })
            .collect();
        layers.sort_by(|a, b| a.member.cmp(&b.member));
        Checkpoint {
            version: VERSION,
            offset,
            last_member: last,
            repository: repository.into(),
            members,
            layers,
            archive_hash,
        }
    }
}

/// Why a checkpoint is not used (the worker then starts from byte 0).
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("version {0} (this worker reads {VERSION})")]
    Version(u32),
    #[error("it is for repository {0}")]
    Repository(String),
    #[error("member {0}: {1}")]
    Member(String, String),
    #[error("layer {0}: {1}")]
    Layer(String, String),
    #[error("the archive hash's state is missing or unreadable")]
    Hash,
    #[error("its blob {digest} is not in {repository}: {detail}")]
    Blob {
        digest: String,
        repository: String,
        detail: String,
    },
}

/// Rebuild the scan's state from `cp`, under the checks of a first pass (caps, duplicates).
pub fn restore(cp: &Checkpoint, repository: &str, pinned: bool) -> Result<Restored, Unusable> {
    if cp.version != VERSION {
        return Err(Unusable::Version(cp.version));
    }
    if cp.repository != repository {
        return Err(Unusable::Repository(cp.repository.clone()));
    }
    let mut catalog = Catalog::default();
    for m in &cp.members {
        let bad = |d: String| Unusable::Member(m.name.clone(), d);
        let kind = match (m.kind.as_str(), &m.link) {
            ("file", None) => MemberKind::File,
            ("dir", None) => MemberKind::Dir,
            ("symlink", Some(t)) => MemberKind::Symlink(t.clone()),
            (k, _) => return Err(bad(format!("kind {k}"))),
        };
        catalog
            .add(&m.name, kind, m.size)
            .map_err(|e| bad(e.to_string()))?;
        if let Some(c) = &m.content {
            let bytes = B64.decode(c).map_err(|e| bad(e.to_string()))?;
            if bytes.len() as u64 != m.size {
                return Err(bad("its content is not its size".into()));
            }
            catalog
                .admit_metadata(&m.name, m.size)
                .map_err(|e| bad(e.to_string()))?;
            catalog.meta.insert(m.name.clone(), bytes);
        }
    }
    let mut processed = HashMap::new();
    for l in &cp.layers {
        if catalog.kinds.get(&l.member) != Some(&MemberKind::File) {
            return Err(Unusable::Layer(
                l.member.clone(),
                "not a file member of the checkpoint".into(),
            ));
        }
        let facts = LayerFacts {
            member: l.member.clone(),
            stored_digest: l.stored_digest.clone(),
            stored_size: l.stored_size,
            stored_codec: l.stored_codec,
            diff_id: l.diff_id.clone(),
            uncompressed_size: l.uncompressed_size,
            pushed_codec: l.pushed_codec,
            as_stored: l.as_stored,
            other_encoder: l.other_encoder,
        };
        let pushed = Pushed {
            digest: l.blob_digest.clone(),
            size: l.blob_size,
            repo: l.blob_repository.clone(),
            sent: l.sent,
        };
        processed.insert(
            l.member.clone(),
            Processed {
                facts,
                pushed,
                read_back: false,
            },
        );
    }
    let hash = match (&cp.archive_hash, pinned) {
        (_, false) => None,
        (Some(h), true) => {
            let state = B64.decode(h).map_err(|_| Unusable::Hash)?;
            Some(RawHash::from_state(&state, cp.offset).ok_or(Unusable::Hash)?)
        }
        (None, true) => return Err(Unusable::Hash),
    };
    Ok(Restored {
        resume: Resume {
            catalog,
            last: cp.last_member.clone(),
            offset: cp.offset,
        },
        processed,
        hash,
    })
}

/// Each checkpointed blob must still be in the registry where it was committed (a registry's
/// garbage collection, or someone's delete, may have removed it since), with the size the
/// checkpoint says: a blob of another size under that digest is not the one committed (a
/// corrupt or forged checkpoint, or a registry that lies), and resuming would build a
/// manifest on it.
pub async fn check_blobs(registry: &Registry, cp: &Checkpoint) -> Result<(), Unusable> {
    for l in &cp.layers {
        let gone = |detail: String| Unusable::Blob {
            digest: l.blob_digest.clone(),
            repository: l.blob_repository.clone(),
            detail,
        };
        if l.blob_size == 0 || !l.blob_digest.starts_with("sha256:") {
            return Err(gone("no committed blob".into()));
        }
        match registry.blob_head(&l.blob_repository, &l.blob_digest).await {
            Ok(BlobHead::Present { size: Some(n) }) if n != l.blob_size => {
                return Err(gone(format!(
                    "the registry holds {n} bytes under that digest, the checkpoint says {}",
                    l.blob_size
                )));
            }
            // A redirect to storage says no size: the digest is the registry's word.
            Ok(BlobHead::Present { .. }) => {}
            Ok(BlobHead::Missing) => return Err(gone("not found".into())),
            Err(e) => return Err(gone(e.to_string())),
        }
    }
    Ok(())
}

/// Short timeouts: the archive's reading waits for a checkpoint's post.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// The last checkpoint the upload service holds for this import's upload (None: none, or the
/// service could not be asked).
pub async fn fetch(ep: &UploadEndpoint) -> Option<Checkpoint> {
    let url = ep.url("checkpoint").ok()?;
    let token = ep.token().ok()?;
    let resp = match client().get(url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not ask the upload service for a checkpoint");
            return None;
        }
    };
    if resp.status() != reqwest::StatusCode::OK {
        return None;
    }
    let body = resp.bytes().await.ok()?;
    match serde_json::from_slice(&body) {
        Ok(cp) => Some(cp),
        Err(e) => {
            tracing::warn!(error = %e, "the upload service's checkpoint is unreadable");
            None
        }
    }
}

/// Hand `cp` to the upload service (best effort: without it a restart starts from 0).
pub async fn post(ep: &UploadEndpoint, cp: &Checkpoint) {
    let Ok(body) = serde_json::to_vec(cp) else {
        return;
    };
    if body.len() > MAX_BYTES {
        tracing::info!(
            bytes = body.len(),
            "checkpoint over {MAX_BYTES} bytes: not kept"
        );
        return;
    }
    let (Ok(mut url), Ok(token)) = (ep.url("checkpoint"), ep.token()) else {
        return;
    };
    url.query_pairs_mut()
        .append_pair("offset", &cp.offset.to_string());
    let sent = client()
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            tracing::info!(offset = cp.offset, member = %cp.last_member, "checkpoint kept")
        }
        Ok(r) => tracing::warn!(status = %r.status(), "the upload service refused a checkpoint"),
        Err(e) => tracing::warn!(error = %e, "could not hand a checkpoint to the upload service"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::archive::scan::fixtures::{TarBuf, layer, legacy_image, manifest_json};

    fn facts(member: &str) -> Processed {
        Processed {
            facts: LayerFacts {
                member: member.into(),
                stored_digest: "sha256:aa".into(),
                stored_size: 10,
                stored_codec: Codec::None,
                diff_id: "sha256:aa".into(),
                uncompressed_size: 10,
                pushed_codec: Codec::Gzip,
                as_stored: false,
                other_encoder: false,
            },
            pushed: Pushed {
                digest: "sha256:bb".into(),
                size: 5,
                repo: "shop/web".into(),
                sent: 5,
            },
            read_back: false,
        }
    }

    #[test]
    fn a_checkpoint_restores_the_catalog_layers_and_hash_and_refuses_what_does_not_fit() {
        let mut t = TarBuf::new();
        let e = legacy_image(&mut t, Some(&["web:1"]), "linux/amd64", &[layer(1)]);
        t.file("manifest.json", &manifest_json(&[e]));
        let bytes = t.finish();
        let mut catalog = crate::archive::scan::stream(&bytes[..], &mut Skip)
            .unwrap()
            .0;
        catalog.meta.insert("repositories".into(), b"{}".to_vec());
        catalog.add("repositories", MemberKind::File, 2).unwrap();
        catalog.add("l/layer.tar", MemberKind::File, 10).unwrap();
        let processed: HashMap<_, _> = [("l/layer.tar".to_string(), facts("l/layer.tar"))].into();
        // The hash of the first 1024 bytes, continued after the restore, is the whole hash.
        let hash = RawHash::default();
        let mut h = super::super::source::Hashing {
            inner: &bytes[..1024],
            hash: hash.clone(),
        };
        std::io::copy(&mut h, &mut std::io::sink()).unwrap();
        let cp = Boundary::at(&catalog, 1024, "x", Some(&hash))
            .unwrap()
            .capture(&processed, "shop/web");
        assert!(Boundary::at(&catalog, 1000, "x", Some(&hash)).is_none());
        let json = serde_json::to_vec(&cp).unwrap();
        let cp: Checkpoint = serde_json::from_slice(&json).unwrap();
        let r = restore(&cp, "shop/web", true).unwrap();
        assert_eq!(r.resume.catalog.kinds, catalog.kinds);
        assert_eq!(r.resume.catalog.sizes, catalog.sizes);
        assert_eq!(r.resume.catalog.meta, catalog.meta);
        assert_eq!(r.resume.offset, 1024);
        let p = &r.processed["l/layer.tar"];
        assert_eq!((p.pushed.digest.as_str(), p.pushed.size), ("sha256:bb", 5));
        assert_eq!(p.facts.pushed_codec, Codec::Gzip);
        let restored = r.hash.unwrap();
        let mut rest = super::super::source::Hashing {
            inner: &bytes[1024..],
            hash: restored.clone(),
        };
        std::io::copy(&mut rest, &mut std::io::sink()).unwrap();
        assert_eq!(restored.digest(), crate::archive::digest::sha256_of(&bytes));

        // Another repository, version, a pin without a hash, or a doctored catalog: not used.
        assert!(matches!(
            restore(&cp, "shop/other", false),
            Err(Unusable::Repository(_))
        ));
        let mut v = cp.clone();
        v.version = 2;
        assert!(matches!(
            restore(&v, "shop/web", false),
            Err(Unusable::Version(2))
        ));
        let mut v = cp.clone();
        v.archive_hash = None;
        assert!(restore(&v, "shop/web", false).is_ok());
        assert!(matches!(restore(&v, "shop/web", true), Err(Unusable::Hash)));
        let mut v = cp.clone();
        v.members.push(v.members[0].clone());
        assert!(matches!(
            restore(&v, "shop/web", false),
            Err(Unusable::Member(..))
        ));
        let mut v = cp.clone();
        let m = v.members.iter_mut().find(|m| m.content.is_some()).unwrap();
        m.size += 1;
        assert!(matches!(
            restore(&v, "shop/web", false),
            Err(Unusable::Member(..))
        ));
        let mut v = cp.clone();
        v.layers[0].member = "not/there".into();
        assert!(matches!(
            restore(&v, "shop/web", false),
            Err(Unusable::Layer(..))
        ));
    }

    struct Skip;
    impl crate::archive::scan::LayerVisitor for Skip {
        type Error = crate::archive::ArchiveError;
        fn layer(&mut self, _: &str, _: u64, d: &mut dyn Read) -> Result<(), Self::Error> {
            std::io::copy(d, &mut std::io::sink())?;
            Ok(())
        }
    }
}
