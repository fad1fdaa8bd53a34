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
pub use reuse::Reuse;
pub mod source;
pub mod url_guard;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_stream::wrappers::ReceiverStream;

use crate::archive::formats::{Descriptor, Platform};
use crate::archive::{ArchiveError, Catalog, ImageSource, LeftOut, digest, resolve, scan};
use crate::registry::{Registry, RegistryError, RegistryOptions, Target};
pub use checkpoint::MAX_BYTES as CHECKPOINT_MAX_BYTES;
pub use codec::{Codec, CompressionPolicy};
pub use error::ImportError;
use layer::{LayerError, LayerFacts};
pub use plan::{Planned, Selection};
use progress::Counting;
pub use progress::Progress;
pub use source::{HttpOptions, Location};

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

/// The checkpoint the upload service holds for this upload, if it can be taken up: its state
/// rebuilt and every blob it names still in the registry. Otherwise the upload starts at 0.
async fn resume_point(ctx: &Ctx, ep: &source::UploadEndpoint) -> Option<checkpoint::Restored> {
    let cp = checkpoint::fetch(ep).await?;
    let pinned = ctx.opts.expect_sha256.is_some();
    let checked = match checkpoint::restore(&cp, &ctx.opts.target.repository, pinned) {
        Ok(r) => checkpoint::check_blobs(&ctx.registry, &cp)
            .await
            .map(|()| r),
        Err(e) => Err(e),
    };
    match checked {
        Ok(r) => {
            tracing::info!(
                offset = cp.offset,
                layers = cp.layers.len(),
                member = %cp.last_member,
                "taking the upload up at its checkpoint"
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!(error = %e, offset = cp.offset, "the upload's checkpoint is not used: starting from byte 0");
            None
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

async fn import_seekable(
    ctx: Arc<Ctx>,
    path: PathBuf,
    file: File,
) -> Result<Vec<ImageReport>, ImportError> {
    if let Some(expected) = ctx.opts.expect_sha256.clone() {
        ctx.progress.set_phase("hashing archive");
        let p = path.clone();
        let actual = blocking(move || source::hash_file(&p))
            .await?
            .map_err(|e| ctx.archive_err(ArchiveError::Io(e)))?;
        check_archive_pin(&ctx, &expected, &actual)?;
    }
    ctx.progress.set_phase("reading archive index");
    let catalog = blocking(move || scan::index(&file))
        .await?
        .map_err(|e| ctx.archive_err(e))?;
    let catalog = Arc::new(catalog);
    let entries = resolve::images(&catalog).map_err(|e| ctx.archive_err(e))?;
    let planned = plan_images(&ctx, &entries)?;

    let stored_codecs = sniff_layers(&path, &catalog, &planned)
        .map_err(|e| ctx.archive_err(ArchiveError::Io(e)))?;
    let mut reports = Vec::new();
    let mut todo = Vec::new();
    ctx.progress.set_phase("comparing with registry");
    for p in planned {
        match up_to_date(&ctx, &p, &path, &catalog, |m| stored_codecs.get(m).copied()).await? {
            Some(r) => reports.push(r),
            None => todo.push(p),
        }
    }
    if todo.is_empty() {
        return Ok(reports);
    }
    // Each distinct layer member is read once, uploaded to the first repository needing it.
    let needed: std::collections::HashSet<String> = todo
        .iter()
        .flat_map(|p| &p.images)
        .flat_map(|img| img.layers.iter().zip(&img.diff_ids))
        .filter(|(l, _)| {
            let stored = stored_codecs.get(&l.member).copied().unwrap_or(Codec::None);
            !ctx.opts.compression.plan(stored).1
        })
        .map(|(_, d)| d.clone())
        .collect();
    let known = Arc::new(reuse::known_layers(&ctx, &todo, &needed).await);
    let mut jobs: Vec<Job> = Vec::new();
    for p in &todo {
        for img in &p.images {
            for (i, l) in img.layers.iter().enumerate() {
                if !jobs.iter().any(|j| j.member == l.member) {
                    jobs.push(Job {
                        member: l.member.clone(),
                        repo: p.refs[0].repository.clone(),
                        declared: l.declared.clone(),
                        diff_id: img.diff_ids[i].clone(),
                        stored_codec: stored_codecs.get(&l.member).copied().unwrap_or(Codec::None),
                    });
                }
            }
        }
    }
    let total: u64 = jobs
        .iter()
        .map(|j| catalog.sizes.get(&j.member).copied().unwrap_or(0))
        .sum();
    ctx.progress.set_total(total);
    ctx.progress.set_phase("pushing layers");
    let processed: HashMap<String, Processed> = futures::stream::iter(jobs)
        .map(|job| {
            let ctx = ctx.clone();
            let path = path.clone();
            let catalog = catalog.clone();
            let known = known.clone();
            async move { process_seekable(ctx, path, catalog, job, known).await }
        })
        .buffer_unordered(ctx.opts.parallel_layers.max(1))
        .try_collect()
        .await?;
    reports.extend(finish(&ctx, todo, &processed).await?);
    Ok(reports)
}

fn sniff_layers(
    path: &Path,
    catalog: &Catalog,
    planned: &[Planned],
) -> io::Result<HashMap<String, Codec>> {
    let mut out = HashMap::new();
    let mut f = File::open(path)?;
    for img in planned.iter().flat_map(|p| &p.images) {
        for l in &img.layers {
            if out.contains_key(&l.member) {
                continue;
            }
            let offset = catalog.offsets.get(&l.member).copied().unwrap_or(0);
            let size = catalog.sizes.get(&l.member).copied().unwrap_or(0);
            f.seek(io::SeekFrom::Start(offset))?;
            let mut head = [0u8; 4];
            let n = (&mut f).take(size.min(4)).read(&mut head)?;
            out.insert(l.member.clone(), Codec::sniff(&head[..n]));
        }
    }
    Ok(out)
}

type Slot = Arc<Mutex<Option<Result<LayerFacts, LayerError>>>>;

/// One distinct layer member to read from a seekable archive.
struct Job {
    member: String,
    repo: String,
    declared: Option<Descriptor>,
    /// What the config says its diff_id is (checked after reading).
    diff_id: String,
    /// Sniffed once, before the registry comparison.
    stored_codec: Codec,
}

async fn process_seekable(
    ctx: Arc<Ctx>,
    path: PathBuf,
    catalog: Arc<Catalog>,
    job: Job,
    known: Arc<reuse::Known>,
) -> Result<(String, Processed), ImportError> {
    let Job {
        member,
        repo,
        declared,
        diff_id,
        stored_codec,
    } = job;
    let offset = catalog.offsets.get(&member).copied().unwrap_or(0);
    let size = catalog.sizes.get(&member).copied().unwrap_or(0);
    let policy = ctx.opts.compression;
    let (_, as_stored) = policy.plan(stored_codec);
    let open = {
        let path = path.clone();
        let progress = ctx.progress.clone();
        move || -> io::Result<Counting<io::Take<File>>> {
            let mut f = File::open(&path)?;
            f.seek(io::SeekFrom::Start(offset))?;
            Ok(Counting {
                inner: f.take(size),
                progress: progress.clone(),
            })
        }
    };

    // A layer this codec already encoded into the registry: the registry's blob is read back
    // beside the archive's layer and must decompress to it byte for byte.
    if !as_stored && let Some(k) = known.blobs.get(&diff_id) {
        let (codec, _) = policy.plan(stored_codec);
        let blob = &k.pushed;
        if let Some(mut facts) = reuse::matches(
            &ctx,
            &blob.repo,
            &blob.digest,
            codec,
            k.ours,
            reuse::ArchiveLayer {
                member: member.clone(),
                mapped: mapped_member(&ctx, &path, &catalog, &member, stored_codec),
                open: open.clone(),
            },
        )
        .await?
        {
            facts.pushed_codec = codec;
            facts.as_stored = false;
            facts.other_encoder = !k.ours;
            // Mounted into the other repositories of the import when they are staged.
            let pushed = blob.clone();
            return Ok((
                member,
                Processed {
                    facts,
                    pushed,
                    read_back: true,
                },
            ));
        }
    }

    // A stored blob the registry already has: read it only to verify it.
    if as_stored
        && let Some(d) = &declared
        && ctx
            .registry
            .blob_exists(&repo, &d.digest)
            .await
            .map_err(|e| ctx.reg_err(&repo, e))?
    {
        let m = member.clone();
        let facts = blocking(move || -> Result<LayerFacts, LayerError> {
            let mut r = open().map_err(LayerError::Read)?;
            layer::process(&m, &mut r, policy, &mut |_| Ok(()))
        })
        .await?
        .map_err(|e| ImportError::from_layer(&ctx.archive, &repo, e, None))?;
        let pushed = Pushed {
            digest: d.digest.clone(),
            size: d.size,
            repo,
            sent: 0,
        };
        return Ok((
            member,
            Processed {
                facts,
                pushed,
                read_back: false,
            },
        ));
    }

    let slot: Slot = Arc::new(Mutex::new(None));
    let producer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
    // Which producer is current: one abandoned by a replay must not overwrite its successor's result.
    let current = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let make = {
        let slot = slot.clone();
        let producer = producer.clone();
        let member = member.clone();
        move || {
            // An archive problem does not go away by trying again.
            if let Some(Err(LayerError::Archive(_) | LayerError::Read(_))) =
                slot.lock().expect("slot").as_ref()
            {
                return None;
            }
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
            let slot = slot.clone();
            let member = member.clone();
            let open = open.clone();
            let generation = current.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let current = current.clone();
            let handle = tokio::task::spawn_blocking(move || {
                let r = open().map_err(LayerError::Read).and_then(|mut reader| {
                    layer::process(&member, &mut reader, policy, &mut |b| {
                        tx.blocking_send(Ok(b))
                            .map_err(|_| io::Error::other("upload stopped"))
                    })
                });
                if let Err(e) = &r {
                    let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                }
                let mut slot = slot.lock().expect("slot");
                if current.load(std::sync::atomic::Ordering::SeqCst) == generation {
                    *slot = Some(r);
                }
                drop(tx);
            });
            *producer.lock().expect("producer") = Some(handle);
            Some(ReceiverStream::new(rx))
        }
    };
    let uploaded = ctx
        .registry
        .upload_blob(&repo, crate::registry::Replay::FromSource, make)
        .await;
    let handle = producer.lock().expect("producer").take();
    if let Some(h) = handle {
        h.await.map_err(|e| ImportError::Internal(e.to_string()))?;
    }
    let facts = slot.lock().expect("slot").take();
    match (facts, uploaded) {
        (Some(Ok(facts)), Ok((digest, size))) => {
            ctx.progress
                .pushed
                .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
            let pushed = Pushed {
                digest,
                size,
                repo,
                sent: size,
            };
            Ok((
                member,
                Processed {
                    facts,
                    pushed,
                    read_back: false,
                },
            ))
        }
        (Some(Err(e)), up) => Err(ImportError::from_layer(&ctx.archive, &repo, e, up.err())),
        (_, Err(e)) => Err(ctx.reg_err(&repo, e)),
        (None, Ok(_)) => Err(ImportError::Internal(
            "layer upload finished without its reader".into(),
        )),
    }
}

struct StreamVisitor {
    ctx: Arc<Ctx>,
    rt: tokio::runtime::Handle,
    repo: String,
    processed: HashMap<String, Processed>,
    /// An uncompressed upload: a checkpoint after each layer committed.
    checkpoints: Option<Checkpoints>,
    /// The last layer read, its blob still being committed: the next members are read
    /// meanwhile (a registry may take most of a second to make a large blob durable, and
    /// a stream cannot read two layers at once).
    pending: Option<PendingLayer>,
}

struct PendingLayer {
    member: String,
    facts: LayerFacts,
    repo: String,
    /// The blob's upload, and then the checkpoint after it (see [`StreamVisitor::layer`]).
    commit: tokio::task::JoinHandle<Committed>,
    /// Where the boundary after the layer goes, when it is to be checkpointed.
    boundary: Option<tokio::sync::oneshot::Sender<Deferred>>,
}

type Committed = Result<Result<(String, u64), crate::registry::RegistryError>, String>;

/// A checkpoint waiting for its last layer's commit: the boundary after that layer and every
/// layer before it (committed).
struct Deferred {
    boundary: checkpoint::Boundary,
    before: HashMap<String, Processed>,
    ep: source::UploadEndpoint,
    repository: String,
}

struct Checkpoints {
    ep: source::UploadEndpoint,
    /// The archive hash (with a `source.sha256` pin), which a checkpoint carries.
    hash: Option<source::RawHash>,
    /// Layers in the last checkpoint.
    kept: usize,
}

/// An upload: where checkpoints go, and the one it starts from.
struct Resumable {
    ep: source::UploadEndpoint,
    from: Option<checkpoint::Restored>,
}

impl scan::LayerVisitor for StreamVisitor {
    type Error = ImportError;

    fn boundary(
        &mut self,
        member: &str,
        catalog: &Catalog,
        offset: u64,
    ) -> Result<(), ImportError> {
        // No checkpoint past a blob not yet committed: the one after it is posted by the
        // commit's task, as soon as the registry has the blob.
        if let Some(p) = &mut self.pending {
            if p.member == member
                && let Some(tx) = p.boundary.take()
                && let Some(c) = &self.checkpoints
                && let Some(boundary) =
                    checkpoint::Boundary::at(catalog, offset, member, c.hash.as_ref())
            {
                let _ = tx.send(Deferred {
                    boundary,
                    before: self.processed.clone(),
                    ep: c.ep.clone(),
                    repository: self.ctx.opts.target.repository.clone(),
                });
            }
            return Ok(());
        }
        let Some(c) = &mut self.checkpoints else {
            return Ok(());
        };
        // After a layer, whose blob `layer` saw committed; nothing new after other members.
        if self.processed.len() == c.kept || !self.processed.contains_key(member) {
            return Ok(());
        }
        c.kept = self.processed.len();
        let repo = &self.ctx.opts.target.repository;
        if let Some(b) = checkpoint::Boundary::at(catalog, offset, member, c.hash.as_ref()) {
            let cp = b.capture(&self.processed, repo);
            self.rt.block_on(checkpoint::post(&c.ep, &cp));
        }
        Ok(())
    }

    fn layer(&mut self, member: &str, _size: u64, data: &mut dyn Read) -> Result<(), ImportError> {
        let ctx = self.ctx.clone();
        let policy = ctx.opts.compression;
        let mut buffered = BufReader::with_capacity(64 << 10, data);
        let head = buffered
            .fill_buf()
            .map_err(|e| ctx.archive_err(ArchiveError::Io(e)))?;
        let (_, as_stored) = policy.plan(Codec::sniff(head));
        let declared = member
            .strip_prefix("blobs/sha256/")
            .filter(|h| digest::is_hex64(h))
            .map(|h| format!("sha256:{h}"));
        let repo = self.repo.clone();
        if as_stored && let Some(d) = &declared {
            self.settle()?;
            let exists = self
                .rt
                .block_on(ctx.registry.blob_exists(&repo, d))
                .map_err(|e| ctx.reg_err(&repo, e))?;
            if exists {
                let facts = layer::process(member, &mut buffered, policy, &mut |_| Ok(()))
                    .map_err(|e| ImportError::from_layer(&ctx.archive, &repo, e, None))?;
                let pushed = Pushed {
                    digest: facts.stored_digest.clone(),
                    size: facts.stored_size,
                    repo,
                    sent: 0,
                };
                self.processed.insert(
                    member.to_string(),
                    Processed {
                        facts,
                        pushed,
                        read_back: false,
                    },
                );
                return Ok(());
            }
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
        let rx = Mutex::new(Some(rx));
        let registry = ctx.registry.clone();
        let upload_repo = repo.clone();
        let upload = self.rt.spawn(async move {
            // A stream is read once: a broken upload continues from the segment in memory.
            registry
                .upload_blob(
                    &upload_repo,
                    crate::registry::Replay::FromMemory,
                    move || rx.lock().expect("rx").take().map(ReceiverStream::new),
                )
                .await
        });
        let r = layer::process(member, &mut buffered, policy, &mut |b| {
            tx.blocking_send(Ok(b))
                .map_err(|_| io::Error::other("upload stopped"))
        });
        if let Err(e) = &r {
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        drop(tx);
        // The layer before was committed meanwhile (or nearly): take it in first.
        let settled = self.settle();
        let facts = match r {
            Ok(facts) => facts,
            Err(e) => {
                let uploaded = self
                    .rt
                    .block_on(upload)
                    .map_err(|e| ImportError::Internal(e.to_string()))?;
                settled?;
                return Err(ImportError::from_layer(
                    &ctx.archive,
                    &repo,
                    e,
                    uploaded.err(),
                ));
            }
        };
        settled?;
        // The commit (a large blob takes the registry most of a second to make durable) goes
        // on while the next members are read; the checkpoint after this layer, if any, follows
        // it here, so it is posted as soon as the blob is in.
        let (boundary, deferred) = tokio::sync::oneshot::channel::<Deferred>();
        let (m, f, r) = (member.to_string(), facts.clone(), repo.clone());
        let commit = self.rt.spawn(async move {
            let uploaded = upload.await.map_err(|e| e.to_string())?;
            if let Ok((digest, size)) = &uploaded
                && let Ok(mut d) = deferred.await
            {
                let pushed = Pushed {
                    digest: digest.clone(),
                    size: *size,
                    repo: r,
                    sent: *size,
                };
                let p = Processed {
                    facts: f,
                    pushed,
                    read_back: false,
                };
                d.before.insert(m, p);
                let cp = d.boundary.capture(&d.before, &d.repository);
                checkpoint::post(&d.ep, &cp).await;
            }
            Ok(uploaded)
        });
        self.pending = Some(PendingLayer {
            member: member.to_string(),
            facts,
            repo,
            commit,
            boundary: Some(boundary),
        });
        Ok(())
    }
}

impl StreamVisitor {
    /// Wait for the pending layer's blob to be committed (and its checkpoint posted), and take
    /// the layer in.
    fn settle(&mut self) -> Result<(), ImportError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        // Said now: the checkpoint's task waits for no boundary that will not come.
        drop(p.boundary);
        let (digest, size) = self
            .rt
            .block_on(p.commit)
            .map_err(|e| ImportError::Internal(e.to_string()))?
            .map_err(ImportError::Internal)?
            .map_err(|e| self.ctx.reg_err(&p.repo, e))?;
        self.ctx
            .progress
            .pushed
            .fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        let pushed = Pushed {
            digest,
            size,
            repo: p.repo,
            sent: size,
        };
        self.processed.insert(
            p.member,
            Processed {
                facts: p.facts,
                pushed,
                read_back: false,
            },
        );
        if let Some(c) = &mut self.checkpoints {
            c.kept = self.processed.len();
        }
        Ok(())
    }
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

async fn import_stream(
    ctx: Arc<Ctx>,
    reader: Box<dyn Read + Send>,
) -> Result<Vec<ImageReport>, ImportError> {
    import_stream_with(ctx, reader, None).await
}

/// [`import_stream`]; an upload also checkpoints, and may start from a checkpoint (`reader`
/// then yields the archive from its offset on).
async fn import_stream_with(
    ctx: Arc<Ctx>,
    reader: Box<dyn Read + Send>,
    upload: Option<Resumable>,
) -> Result<Vec<ImageReport>, ImportError> {
    let (from, ep) = match upload {
        Some(u) => (u.from, Some(u.ep)),
        None => (None, None),
    };
    let hash = match &from {
        Some(r) => r.hash.clone(),
        None => ctx
            .opts
            .expect_sha256
            .as_ref()
            .map(|_| source::RawHash::default()),
    };
    ctx.progress.set_phase("streaming archive");
    let rt = tokio::runtime::Handle::current();
    let c = ctx.clone();
    let h = hash.clone();
    let scanned = blocking(
        move || -> Result<(Catalog, HashMap<String, Processed>), ImportError> {
            let counted = Counting {
                inner: reader,
                progress: c.progress.clone(),
            };
            // Only a checkpoint of an uncompressed archive is ever written.
            let known = from.as_ref().map(|_| Codec::None);
            let (reader, codec) = source::decompressing_as(Box::new(counted), h.clone(), known)
                .map_err(|e| c.archive_err(ArchiveError::Io(e)))?;
            let (resume, processed) = match from {
                Some(r) => (Some(r.resume), r.processed),
                None => (None, HashMap::new()),
            };
            let checkpoints = ep.filter(|_| codec == Codec::None).map(|ep| Checkpoints {
                ep,
                hash: h,
                kept: processed.len(),
            });
            let repo = c.opts.target.repository.clone();
            let mut visitor = StreamVisitor {
                ctx: c.clone(),
                rt,
                repo,
                processed,
                checkpoints,
                pending: None,
            };
            let (catalog, mut rest) = match resume {
                Some(r) => scan::stream_from(r, reader, &mut visitor)?,
                None => scan::stream(reader, &mut visitor)?,
            };
            // Read to the very end so the archive's own digest covers every byte.
            io::copy(&mut rest, &mut io::sink()).map_err(|e| c.archive_err(ArchiveError::Io(e)))?;
            visitor.settle()?;
            Ok((catalog, visitor.processed))
        },
    )
    .await?;
    let (catalog, processed) = scanned.map_err(|e| match e {
        ImportError::Archive { archive, source } if archive.is_empty() => ctx.archive_err(source),
        other => other,
    })?;
    if let (Some(expected), Some(h)) = (&ctx.opts.expect_sha256, &hash) {
        check_archive_pin(&ctx, expected, &h.digest())?;
    }
    let entries = resolve::images(&catalog).map_err(|e| ctx.archive_err(e))?;
    let planned = plan_images(&ctx, &entries)?;
    finish(&ctx, planned, &processed).await
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
