//! The streaming import: archive in, verified image out.
//!
//! Seekable files are indexed first (small JSON only), checked against the registry (a
//! re-push of the same image is a few requests), and their layers are then read, verified,
//! encoded and uploaded in parallel. Pipes, URLs and compressed files are read once, front
//! to back: layers are uploaded as they pass, and what they are is decided at the end, when
//! `manifest.json`/`index.json` have been seen. Either way every layer is verified before a
//! manifest is pushed, and manifests (tags) come last.

pub mod checkpoint;
pub mod codec;
mod digests;
pub mod error;
mod gunzip;
pub mod inspect;
pub mod layer;
pub mod manifest;
mod mapped;
pub mod plan;
pub mod progress;
mod reuse;
mod seekable;
mod stream;
pub use reuse::Reuse;
pub mod source;
pub mod url_guard;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::archive::formats::Platform;
use crate::archive::{ArchiveError, Catalog, ImageSource, LeftOut, digest, resolve};
use crate::registry::{Registry, RegistryError, RegistryOptions, Target};
pub use checkpoint::MAX_BYTES as CHECKPOINT_MAX_BYTES;
pub use codec::{Codec, CompressionPolicy};
pub use error::ImportError;
use layer::{LayerError, LayerFacts};
pub use plan::{Planned, Selection};
use progress::Counting;
pub use progress::Progress;
use seekable::import_seekable;
pub use source::{HttpOptions, Location};
use stream::{Resumable, import_stream, import_stream_with, resume_point};

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub source: Location,
    pub target: Target,
    pub selection: Selection,
    pub platform: Option<Platform>,
    pub compression: CompressionPolicy,
    /// Pin of the config digest (image ID).
    pub expect_image_id: Option<String>,
    /// Pin of the archive file's own sha256.
    pub expect_sha256: Option<String>,
    pub registry: RegistryOptions,
    pub http: HttpOptions,
    /// Layers read at once from a seekable file.
    pub parallel_layers: usize,
    /// Tags to push (instead of the target's tag or the image's own tags).
    pub tags: Vec<String>,
    /// Patterns (`registry/repository`, see [`crate::registry::repository_pattern`]) that
    /// every repository pushed to must match; None: any.
    pub allowed_repositories: Option<Vec<String>>,
    /// Which registry blobs may stand for the archive's layers.
    pub reuse: Reuse,
}

impl ImportOptions {
    pub fn new(source: Location, target: Target) -> Self {
        ImportOptions {
            source,
            target,
            selection: Selection::Only,
            platform: None,
            compression: CompressionPolicy::default(),
            expect_image_id: None,
            expect_sha256: None,
            registry: RegistryOptions::default(),
            http: HttpOptions::default(),
            parallel_layers: 2,
            tags: Vec::new(),
            allowed_repositories: None,
            reuse: Reuse::default(),
        }
    }
}

/// What happened to one pushed image.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    pub name: String,
    /// `registry/repository:tag` for each tag pushed.
    pub refs: Vec<String>,
    /// Digest of the manifest (or index) the tags point at.
    pub digest: String,
    /// Config digest(s), one per platform.
    pub image_ids: Vec<String>,
    pub platforms: Vec<String>,
    pub layers: usize,
    /// Blob bytes sent (0 when everything was already there).
    pub pushed_bytes: u64,
    /// The tags already pointed at this exact image: nothing was done.
    pub up_to_date: bool,
    pub left_out: Vec<String>,
    /// The digest the archive names the image by (its index or manifest), if it names one.
    pub archive_digest: Option<String>,
    /// Why `digest` is not `archive_digest` (None: the archive's digest was kept).
    pub digest_changed: Option<String>,
    /// What was checked before the tags were reported as holding the archive's image.
    pub checked: String,
}

/// A blob that is in the registry, and in which repository we put it.
#[derive(Debug, Clone)]
struct Pushed {
    digest: String,
    size: u64,
    repo: String,
    sent: u64,
}

#[derive(Debug, Clone)]
struct Processed {
    facts: LayerFacts,
    pushed: Pushed,
    /// Taken from the registry after reading the blob back (not uploaded).
    read_back: bool,
}

impl Processed {
    /// A layer read and checked, pushed nowhere (yet).
    fn checked(facts: LayerFacts) -> Self {
        Processed {
            facts,
            pushed: Pushed {
                digest: String::new(),
                size: 0,
                repo: String::new(),
                sent: 0,
            },
            read_back: false,
        }
    }
}

struct Ctx {
    archive: String,
    opts: ImportOptions,
    registry: Registry,
    progress: Arc<Progress>,
}

impl Ctx {
    fn archive_err(&self, source: ArchiveError) -> ImportError {
        ImportError::Archive {
            archive: self.archive.clone(),
            source,
        }
    }
    fn reg_err(&self, repo: &str, source: RegistryError) -> ImportError {
        ImportError::Registry {
            target: format!("{}/{}", self.opts.target.registry, repo),
            source,
        }
    }
}

/// Import the archive named in `opts` into the registry.
pub async fn import(
    opts: ImportOptions,
    progress: Arc<Progress>,
) -> Result<Vec<ImageReport>, ImportError> {
    let archive = opts.source.to_string();
    let target_repo = opts.target.repository.clone();
    let registry = Registry::connect(&opts.target.registry, &opts.registry).map_err(|source| {
        ImportError::Registry {
            target: opts.target.to_string(),
            source,
        }
    })?;
    let ctx = Arc::new(Ctx {
        archive,
        opts,
        registry,
        progress,
    });
    // Fail fast on credentials and reachability, before reading gigabytes.
    ctx.progress.set_phase("connecting");
    ctx.registry
        .check_push_access(&target_repo)
        .await
        .map_err(|e| ctx.reg_err(&target_repo, e))?;
    match ctx.opts.source.clone() {
        Location::File(path) => {
            let (file, codec) =
                source::open_file(&path).map_err(|source| ImportError::Source { source })?;
            if codec == Codec::None {
                import_seekable(ctx, path, file).await
            } else {
                ctx.progress
                    .set_total(file.metadata().map(|m| m.len()).unwrap_or(0));
                import_stream(ctx, Box::new(file)).await
            }
        }
        Location::Stdin => import_stream(ctx, Box::new(io::stdin())).await,
        Location::Url(url) => {
            let (reader, length) = source::open_url(&url, &ctx.opts.http)
                .await
                .map_err(|source| ImportError::Source { source })?;
            ctx.progress.set_total(length.unwrap_or(0));
            let (reader, failure) =
                source::Watched::new(reader, Location::Url(url.clone()).to_string());
            let outcome = import_stream(ctx, Box::new(reader)).await;
            // A broken download surfaces as an unreadable archive; say what really happened.
            match (outcome, failure.lock().expect("source failure lock").take()) {
                (Err(ImportError::Archive { .. }), Some(source)) => {
                    Err(ImportError::Source { source })
                }
                (outcome, _) => outcome,
            }
        }
        Location::Upload(ep) => {
            let from = resume_point(&ctx, &ep).await;
            let offset = from.as_ref().map_or(0, |r| r.resume.offset);
            ctx.progress.add(offset);
            let (reader, failure) = source::UploadReader::new(*ep.clone(), offset)
                .map_err(|source| ImportError::Source { source })?;
            let upload = Resumable {
                ep: *ep.clone(),
                from,
            };
            let outcome = import_stream_with(ctx, Box::new(reader), Some(upload)).await;
            let outcome = match (outcome, failure.lock().expect("source failure lock").take()) {
                (Err(ImportError::Archive { .. }), Some(source)) => {
                    Err(ImportError::Source { source })
                }
                (outcome, _) => outcome,
            };
            let failed = outcome.as_ref().err().map(|e| (e.reason(), e.to_string()));
            source::upload_finished(&ep, failed).await;
            outcome
        }
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Internal(e.to_string()))
}

impl From<ArchiveError> for ImportError {
    fn from(source: ArchiveError) -> Self {
        // The archive name is filled in by `import_stream`, which wraps scan errors.
        ImportError::Archive {
            archive: String::new(),
            source,
        }
    }
}

/// Which images go where, refused before anything is tagged when the policy does not allow a
/// repository or an image-ID pin does not match.
fn plan_images(ctx: &Ctx, entries: &[resolve::ImageEntry]) -> Result<Vec<Planned>, ImportError> {
    let plan_err = |source| ImportError::Plan {
        archive: ctx.archive.clone(),
        source,
    };
    let planned = plan::plan(
        entries,
        &ctx.opts.selection,
        &ctx.opts.target,
        &ctx.opts.tags,
        ctx.opts.platform.as_ref(),
    )
    .map_err(plan_err)?;
    if let Some(patterns) = &ctx.opts.allowed_repositories {
        let matchers = patterns
            .iter()
            .map(|p| crate::registry::repository_pattern(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ImportError::Usage(format!("invalid repository pattern: {e}")))?;
        for p in &planned {
            for r in &p.refs {
                let repository = format!("{}/{}", r.registry, r.repository);
                if !matchers.iter().any(|m| m.is_match(&repository)) {
                    return Err(plan_err(plan::PlanError::NotAllowed {
                        image: p.name.clone(),
                        repository,
                    }));
                }
            }
        }
    }
    check_image_pin(ctx, &planned)?;
    Ok(planned)
}

fn check_archive_pin(ctx: &Ctx, expected: &str, actual: &str) -> Result<(), ImportError> {
    let expected = digest::normalize(expected).ok_or_else(|| {
        ImportError::Usage(format!(
            "--expect-sha256 {expected:?} is not a sha256 digest"
        ))
    })?;
    if expected != actual {
        return Err(ImportError::ArchiveDigestMismatch {
            archive: ctx.archive.clone(),
            expected,
            actual: actual.into(),
        });
    }
    Ok(())
}

fn check_image_pin(ctx: &Ctx, planned: &[Planned]) -> Result<(), ImportError> {
    let Some(expected) = &ctx.opts.expect_image_id else {
        return Ok(());
    };
    let expected = digest::normalize(expected).ok_or_else(|| {
        ImportError::Usage(format!(
            "--expect-image-id {expected:?} is not a sha256 digest"
        ))
    })?;
    // A pin names one config: one image, one platform. Anything more could only be pinned in
    // part, so it is refused rather than checked weakly or failed with a confusing mismatch.
    if planned.len() > 1 {
        return Err(ImportError::Usage(
            "an image-ID pin names one image: it cannot be combined with importing all images"
                .into(),
        ));
    }
    if let Some(p) = planned.iter().find(|p| p.images.len() > 1) {
        return Err(ImportError::Usage(format!(
            "image {} has {} platforms ({}), each with its own image ID: choose the one the pin names with a platform (--platform, spec.platform)",
            p.name,
            p.images.len(),
            p.images
                .iter()
                .map(|i| i.platform.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for img in planned.iter().flat_map(|p| &p.images) {
        if img.config_digest != expected {
            return Err(ImportError::ImageIdMismatch {
                archive: ctx.archive.clone(),
                expected,
                actual: img.config_digest.clone(),
            });
        }
    }
    Ok(())
}

/// What the pushed manifest of an image will be, known before reading any layer.
enum Predicted {
    /// Every layer is pushed as stored and the archive carries the manifest: its digest.
    Digest(String),
    /// Every layer is encoded here: config and codec decide the manifest.
    Encoded {
        codec: Codec,
        codec_id: String,
    },
    /// Every layer is pushed uncompressed as stored: blob digests are the diff_ids.
    AsDiffIds,
    Unknown,
}

fn predict(ctx: &Ctx, img: &ImageSource, stored: &dyn Fn(&str) -> Option<Codec>) -> Predicted {
    let plans: Vec<Option<(Codec, bool)>> = img
        .layers
        .iter()
        .map(|l| stored(&l.member).map(|c| ctx.opts.compression.plan(c)))
        .collect();
    if plans.iter().any(|p| p.is_none()) {
        return Predicted::Unknown;
    }
    let plans: Vec<(Codec, bool)> = plans.into_iter().flatten().collect();
    if plans.iter().all(|(_, as_stored)| *as_stored)
        && img.layers.iter().all(|l| l.declared.is_some())
        && let Some((bytes, _)) = &img.original_manifest
    {
        return Predicted::Digest(digest::sha256_of(bytes));
    }
    // Uncompressed layers pushed as they are: each blob is the layer itself, its digest the
    // diff_id the config names.
    if plans
        .iter()
        .all(|(c, as_stored)| *as_stored && *c == Codec::None)
        && !plans.is_empty()
    {
        return Predicted::AsDiffIds;
    }
    if let Some((codec, _)) = plans.first()
        && plans.iter().all(|(c, as_stored)| !as_stored && c == codec)
    {
        return Predicted::Encoded {
            codec: *codec,
            codec_id: codec::codec_id(*codec),
        };
    }
    if img.layers.is_empty() {
        let codec = match ctx.opts.compression {
            CompressionPolicy::Keep(c) | CompressionPolicy::Force(c) => c,
        };
        return Predicted::Encoded {
            codec,
            codec_id: codec::codec_id(codec),
        };
    }
    Predicted::Unknown
}

/// If every tag already points at exactly the manifest this import would push, say so.
/// Nothing is declared up to date on the word of the registry alone: the archive's layers are
/// read and checked as for a push, and a tag whose layer digests cannot be predicted without
/// encoding (`Predicted::Encoded`) has its layer blobs read back and compared with the
/// archive's layers.
async fn up_to_date(
    ctx: &Ctx,
    p: &Planned,
    path: &Path,
    catalog: &Catalog,
    stored: impl Fn(&str) -> Option<Codec>,
) -> Result<Option<ImageReport>, ImportError> {
    // A multi-platform image whose index is pushed as stored is named by that index.
    let index_digest = p.index.as_ref().filter(|ix| {
        let predicted: Option<std::collections::BTreeSet<String>> = p
            .images
            .iter()
            .map(|img| match predict(ctx, img, &stored) {
                Predicted::Digest(d) => Some(d),
                _ => None,
            })
            .collect();
        !p.platform_chosen && predicted.is_some_and(|d| d == ix.manifests.iter().cloned().collect())
    });
    let (img, predicted) = match (index_digest, p.images.as_slice()) {
        (Some(ix), _) => (&p.images[0], Predicted::Digest(ix.digest.clone())),
        (None, [img]) => (img, predict(ctx, img, &stored)),
        (None, _) => return Ok(None),
    };
    if matches!(predicted, Predicted::Unknown) {
        return Ok(None);
    }
    let mut digest_seen: Option<String> = None;
    let mut remote_layers: Vec<String> = Vec::new();
    for r in &p.refs {
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        let Some(remote) = ctx
            .registry
            .get_manifest(&r.repository, &tag)
            .await
            .map_err(|e| ctx.reg_err(&r.repository, e))?
        else {
            return Ok(None);
        };
        let same = match &predicted {
            Predicted::Digest(d) => &remote.digest == d,
            Predicted::Encoded { codec, codec_id } => {
                let parsed: Option<serde_json::Value> = serde_json::from_slice(&remote.bytes).ok();
                parsed.is_some_and(|m| {
                    let layers = m["layers"].as_array().cloned().unwrap_or_default();
                    m["config"]["digest"].as_str() == Some(img.config_digest.as_str())
                        && m["annotations"][manifest::ANNOTATION_CODEC].as_str()
                            == Some(codec_id.as_str())
                        && layers.len() == img.diff_ids.len()
                        && layers
                            .iter()
                            .all(|l| l["mediaType"].as_str() == Some(codec.oci_layer_media_type()))
                })
            }
            Predicted::AsDiffIds => {
                let parsed: Option<serde_json::Value> = serde_json::from_slice(&remote.bytes).ok();
                parsed.is_some_and(|m| {
                    let layers = m["layers"].as_array().cloned().unwrap_or_default();
                    m["config"]["digest"].as_str() == Some(img.config_digest.as_str())
                        && layers.len() == img.diff_ids.len()
                        && layers.iter().zip(&img.diff_ids).all(|(l, d)| {
                            l["digest"].as_str() == Some(d.as_str())
                                && l["mediaType"].as_str()
                                    == Some(Codec::None.oci_layer_media_type())
                        })
                })
            }
            Predicted::Unknown => false,
        };
        if !same || digest_seen.as_ref().is_some_and(|d| d != &remote.digest) {
            return Ok(None);
        }
        if digest_seen.is_none() {
            remote_layers =
                serde_json::from_slice::<crate::archive::formats::ImageManifest>(&remote.bytes)
                    .map(|m| m.layers.into_iter().map(|l| l.digest).collect())
                    .unwrap_or_default();
        }
        digest_seen = Some(remote.digest);
    }
    let Some(seen) = &digest_seen else {
        return Ok(None);
    };
    let layer_count: usize = p.images.iter().map(|i| i.layers.len()).sum();
    let checked = match &predicted {
        // Blob digests this import cannot know without encoding: each blob is read back beside
        // the archive's layer (one pass over both) and must decompress to it byte for byte.
        Predicted::Encoded { codec, .. } => {
            let repo = &p.refs[0].repository;
            if remote_layers.len() != img.layers.len() {
                return Ok(None);
            }
            let found: Vec<Option<(String, LayerFacts)>> =
                futures::stream::iter(img.layers.iter().zip(&remote_layers))
                    .map(|(l, blob)| {
                        let open = member_reader(ctx, path, catalog, &l.member);
                        let mapped = stored(&l.member)
                            .and_then(|c| mapped_member(ctx, path, catalog, &l.member, c));
                        async move {
                            let layer = reuse::ArchiveLayer {
                                member: l.member.clone(),
                                mapped,
                                open,
                            };
                            let facts =
                                reuse::matches(ctx, repo, blob, *codec, true, layer).await?;
                            Ok::<_, ImportError>(facts.map(|f| (l.member.clone(), f)))
                        }
                    })
                    .buffer_unordered(ctx.opts.parallel_layers.max(1))
                    .try_collect()
                    .await?;
            let Some(found) = found.into_iter().collect::<Option<Vec<_>>>() else {
                return Ok(None);
            };
            let processed: HashMap<String, Processed> = found
                .into_iter()
                .map(|(member, facts)| (member, Processed::checked(facts)))
                .collect();
            verify(img, &processed).map_err(|e| ctx.archive_err(e))?;
            if ctx.opts.reuse == Reuse::TrustRegistry {
                format!(
                    "the tag already names blobs for this image's {layer_count} layer(s), taken \
                     on the registry's word (--reuse trust-registry: not read back); the \
                     archive's layers hash to the config's diff_ids"
                )
            } else {
                format!(
                    "the tag already holds this image: its {layer_count} layer blob(s), read back \
                 from the registry, decompress byte for byte to the archive's layers, which hash \
                 to the config's diff_ids"
                )
            }
        }
        _ => {
            for img in &p.images {
                check_archive_layers(ctx, path, catalog, img).await?;
            }
            format!(
                "the tag already points at {seen}, whose blobs the registry holds by digest; the \
                 archive's {layer_count} layer(s) were read and match the config's diff_ids"
            )
        }
    };
    let archive_digest = match (&p.index, &img.original_manifest) {
        (Some(ix), _) => Some(ix.digest.clone()),
        (None, Some((bytes, _))) => Some(digest::sha256_of(bytes)),
        (None, None) => None,
    };
    let digest_changed = |digest: &String| {
        archive_digest.as_ref().filter(|a| *a != digest)?;
        let policy = ctx.opts.compression;
        Some(
            img.layers
                .iter()
                .filter_map(|l| stored(&l.member))
                .find(|c| !policy.plan(*c).1)
                .map(|c| digests::reencoding(c, policy.plan(c).0, policy))
                .unwrap_or_else(|| "the tag holds a manifest other than the archive's".into()),
        )
    };
    Ok(digest_seen.map(|digest| ImageReport {
        name: p.name.clone(),
        refs: p.refs.iter().map(|r| r.to_string()).collect(),
        image_ids: p.images.iter().map(|i| i.config_digest.clone()).collect(),
        platforms: p.images.iter().map(|i| i.platform.to_string()).collect(),
        layers: p.images.iter().map(|i| i.layers.len()).sum(),
        pushed_bytes: 0,
        up_to_date: true,
        left_out: left_out_lines(&p.left_out),
        digest_changed: digest_changed(&digest),
        archive_digest: archive_digest.clone(),
        digest,
        checked: checked.clone(),
    }))
}

/// Read every layer of `img` from the archive and check it against the config and the
/// archive's descriptors (what [`verify`] checks for a push).
async fn check_archive_layers(
    ctx: &Ctx,
    path: &Path,
    catalog: &Catalog,
    img: &ImageSource,
) -> Result<(), ImportError> {
    let mut members: Vec<&str> = img.layers.iter().map(|l| l.member.as_str()).collect();
    members.sort_unstable();
    members.dedup();
    let read = |member: &str| {
        let open = member_reader(ctx, path, catalog, member);
        let member = member.to_string();
        async move {
            let m = member.clone();
            let facts = blocking(move || -> Result<LayerFacts, LayerError> {
                let mut r = open().map_err(LayerError::Read)?;
                layer::read(&m, &mut r, &mut |_| Ok(()))
            })
            .await?
            .map_err(|e| {
                ImportError::from_layer(&ctx.archive, &ctx.opts.target.repository, e, None)
            })?;
            Ok::<_, ImportError>((member, Processed::checked(facts)))
        }
    };
    let processed: HashMap<String, Processed> = futures::stream::iter(members)
        .map(read)
        .buffer_unordered(ctx.opts.parallel_layers.max(1))
        .try_collect()
        .await?;
    verify(img, &processed).map_err(|e| ctx.archive_err(e))
}

/// Opens archive member `member` of `path` for reading, counted as progress.
fn member_reader(
    ctx: &Ctx,
    path: &Path,
    catalog: &Catalog,
    member: &str,
) -> impl FnOnce() -> io::Result<Counting<io::Take<File>>> + Send + 'static + use<> {
    let offset = catalog.offsets.get(member).copied().unwrap_or(0);
    let size = catalog.sizes.get(member).copied().unwrap_or(0);
    let (path, progress) = (path.to_path_buf(), ctx.progress.clone());
    move || {
        let mut f = File::open(&path)?;
        f.seek(io::SeekFrom::Start(offset))?;
        Ok(Counting {
            inner: f.take(size),
            progress,
        })
    }
}

/// An uncompressed layer member, to be mapped rather than read (see [`mapped`]).
fn mapped_member(
    ctx: &Ctx,
    path: &Path,
    catalog: &Catalog,
    member: &str,
    stored: Codec,
) -> Option<mapped::MappedMember> {
    (stored == Codec::None).then(|| mapped::MappedMember {
        path: path.to_path_buf(),
        offset: catalog.offsets.get(member).copied().unwrap_or(0),
        size: catalog.sizes.get(member).copied().unwrap_or(0),
        progress: ctx.progress.clone(),
    })
}

fn left_out_lines(l: &[LeftOut]) -> Vec<String> {
    l.iter()
        .map(|l| {
            format!(
                "{} ({}: {} is not in the archive)",
                l.platform, l.digest, l.missing
            )
        })
        .collect()
}

/// Check a layer against the image config and what the archive declared.
fn verify(img: &ImageSource, processed: &HashMap<String, Processed>) -> Result<(), ArchiveError> {
    for (i, l) in img.layers.iter().enumerate() {
        let p = processed
            .get(&l.member)
            .ok_or_else(|| ArchiveError::BadMetadata {
                member: l.member.clone(),
                detail: "is listed as a layer but is not a layer blob".into(),
            })?;
        if let Some(hex) = l.member.strip_prefix("blobs/sha256/") {
            let named = format!("sha256:{hex}");
            if p.facts.stored_digest != named {
                return Err(ArchiveError::DigestMismatch {
                    member: l.member.clone(),
                    expected: named,
                    actual: p.facts.stored_digest.clone(),
                });
            }
        }
        if let Some(d) = &l.declared {
            if p.facts.stored_digest != d.digest {
                return Err(ArchiveError::DigestMismatch {
                    member: l.member.clone(),
                    expected: d.digest.clone(),
                    actual: p.facts.stored_digest.clone(),
                });
            }
            if p.facts.stored_size != d.size {
                return Err(ArchiveError::SizeMismatch {
                    member: l.member.clone(),
                    expected: d.size,
                    actual: p.facts.stored_size,
                });
            }
        }
        if p.facts.diff_id != img.diff_ids[i] {
            return Err(ArchiveError::DiffIdMismatch {
                index: i,
                member: l.member.clone(),
                expected: img.diff_ids[i].clone(),
                actual: p.facts.diff_id.clone(),
            });
        }
    }
    Ok(())
}

/// Verify everything; then put every blob and every manifest in place, by digest, in every
/// repository; only then move the tags. A failure before the tags leaves no tag created or moved
/// (also with `--all`: no image is tagged while another one can still fail).
async fn finish(
    ctx: &Ctx,
    planned: Vec<Planned>,
    processed: &HashMap<String, Processed>,
) -> Result<Vec<ImageReport>, ImportError> {
    for p in &planned {
        for img in &p.images {
            verify(img, processed).map_err(|e| ctx.archive_err(e))?;
        }
    }
    ctx.progress.set_phase("pushing manifests");
    let mut reports = Vec::new();
    let mut staged: Vec<Staged> = Vec::new();
    for p in &planned {
        let mut report = ImageReport {
            name: p.name.clone(),
            refs: vec![],
            digest: String::new(),
            image_ids: p.images.iter().map(|i| i.config_digest.clone()).collect(),
            platforms: p.images.iter().map(|i| i.platform.to_string()).collect(),
            layers: p.images.iter().map(|i| i.layers.len()).sum(),
            pushed_bytes: 0,
            up_to_date: false,
            left_out: left_out_lines(&p.left_out),
            archive_digest: None,
            digest_changed: None,
            checked: String::new(),
        };
        let mut counted = std::collections::HashSet::new();
        let mut read_back = 0;
        for img in &p.images {
            for l in &img.layers {
                if counted.insert(l.member.clone()) {
                    report.pushed_bytes += processed[&l.member].pushed.sent;
                    read_back += usize::from(processed[&l.member].read_back);
                }
            }
        }
        report.checked = format!(
            "every layer was read from the archive and matches the config's diff_ids{}",
            match read_back {
                0 => String::new(),
                n if ctx.opts.reuse == Reuse::TrustRegistry => format!(
                    "; {n} layer(s) reused from the registry on its manifests' word \
                     (--reuse trust-registry: the blobs were not read back)"
                ),
                n => format!(
                    "; {n} layer(s) reused from the registry after their blobs were read back \
                     and decompressed byte for byte to the archive's layers"
                ),
            }
        );
        let mut repos: Vec<&str> = Vec::new();
        for r in &p.refs {
            if !repos.contains(&r.repository.as_str()) {
                repos.push(&r.repository);
            }
        }
        for repo in repos {
            let (composed, config_bytes) = stage(ctx, repo, p, processed).await?;
            report.pushed_bytes += config_bytes;
            report.archive_digest = composed.archive_digest.clone();
            report.digest_changed = composed.changed.clone();
            let tags = p
                .refs
                .iter()
                .filter(|r| r.repository == repo)
                .map(|r| r.tag.clone().unwrap_or_else(|| "latest".into()))
                .collect();
            staged.push(Staged {
                report: reports.len(),
                repo: repo.to_string(),
                tags,
                manifest: composed.top.bytes,
                media_type: composed.top.media_type,
            });
        }
        reports.push(report);
    }
    ctx.progress.set_phase("tagging");
    for st in staged {
        for tag in &st.tags {
            let d = ctx
                .registry
                .put_manifest(&st.repo, tag, &st.manifest, &st.media_type)
                .await
                .map_err(|e| ctx.reg_err(&st.repo, e))?;
            let report = &mut reports[st.report];
            report.digest = d;
            report
                .refs
                .push(format!("{}/{}:{}", ctx.opts.target.registry, st.repo, tag));
        }
    }
    Ok(reports)
}

/// An image in place in one repository, by digest: what the last step tags.
struct Staged {
    /// Index of its report.
    report: usize,
    repo: String,
    tags: Vec<String>,
    manifest: Vec<u8>,
    media_type: String,
}

/// Put one image (one manifest, or an index of one per platform) into `repo` by digest, with
/// every blob it names. Returns what the tags will point at and the config bytes sent.
async fn stage(
    ctx: &Ctx,
    repo: &str,
    p: &Planned,
    processed: &HashMap<String, Processed>,
) -> Result<(digests::Composed, u64), ImportError> {
    let mut sent = 0;
    for img in &p.images {
        for l in &img.layers {
            ensure_blob(ctx, repo, &processed[&l.member].pushed).await?;
        }
        sent += push_config(ctx, repo, img).await?;
    }
    let composed = digests::compose(&parts_of(ctx, p), processed);
    let mut documents: Vec<&digests::Document> = composed.manifests.iter().collect();
    if !documents.contains(&&composed.top) {
        documents.push(&composed.top);
    }
    for doc in documents {
        ctx.registry
            .put_manifest(repo, &doc.digest(), &doc.bytes, &doc.media_type)
            .await
            .map_err(|e| ctx.reg_err(repo, e))?;
    }
    Ok((composed, sent))
}

fn parts_of<'a>(ctx: &Ctx, p: &'a Planned) -> digests::Parts<'a> {
    digests::Parts {
        images: &p.images,
        index: p.index.as_ref(),
        left_out: &p.left_out,
        platform_chosen: p.platform_chosen,
        policy: ctx.opts.compression,
    }
}

async fn ensure_blob(ctx: &Ctx, repo: &str, pushed: &Pushed) -> Result<(), ImportError> {
    if pushed.repo == repo {
        return Ok(());
    }
    if ctx
        .registry
        .blob_exists(repo, &pushed.digest)
        .await
        .map_err(|e| ctx.reg_err(repo, e))?
    {
        return Ok(());
    }
    if ctx
        .registry
        .mount_blob(repo, &pushed.repo, &pushed.digest)
        .await
    {
        return Ok(());
    }
    // Some registries refuse or ignore mounts (across namespaces, or not at all): copy it.
    tracing::info!(
        blob = %pushed.digest,
        from = %pushed.repo,
        to = repo,
        "cross-repository mount refused; copying the blob"
    );
    ctx.registry
        .copy_blob(repo, &pushed.repo, &pushed.digest)
        .await
        .map(|_| ())
        .map_err(|e| ctx.reg_err(repo, e))
}

/// The config is pushed byte for byte, so the image ID stays what it was.
async fn push_config(ctx: &Ctx, repo: &str, img: &ImageSource) -> Result<u64, ImportError> {
    if ctx
        .registry
        .blob_exists(repo, &img.config_digest)
        .await
        .map_err(|e| ctx.reg_err(repo, e))?
    {
        return Ok(0);
    }
    let bytes = Bytes::from(img.config.clone());
    let (digest, size) = ctx
        .registry
        .upload_blob(repo, crate::registry::Replay::FromSource, || {
            Some(futures::stream::once(futures::future::ready(Ok::<
                _,
                io::Error,
            >(
                bytes.clone(),
            ))))
        })
        .await
        .map_err(|e| ctx.reg_err(repo, e))?;
    if digest != img.config_digest {
        return Err(ImportError::Internal(format!(
            "config uploaded as {digest}, expected {}",
            img.config_digest
        )));
    }
    Ok(size)
}
