//! A stream (stdin, a URL, an upload, a compressed file): members read once, in order; a
//! layer is checked, encoded and uploaded as it streams, and an upload checkpoints after each
//! committed layer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;

use super::layer::{self, LayerFacts};
use super::progress::Counting;
use super::{
    Codec, Ctx, ImageReport, ImportError, Processed, Pushed, blocking, check_archive_pin,
    checkpoint, finish, plan_images, source,
};
use crate::archive::{ArchiveError, Catalog, digest, resolve, scan};

/// The checkpoint the upload service holds for this upload, if it can be taken up: its state
/// rebuilt and every blob it names still in the registry. Otherwise the upload starts at 0.
pub(super) async fn resume_point(
    ctx: &Ctx,
    ep: &source::UploadEndpoint,
) -> Option<checkpoint::Restored> {
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
pub(super) struct Resumable {
    pub(super) ep: source::UploadEndpoint,
    pub(super) from: Option<checkpoint::Restored>,
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

pub(super) async fn import_stream(
    ctx: Arc<Ctx>,
    reader: Box<dyn Read + Send>,
) -> Result<Vec<ImageReport>, ImportError> {
    import_stream_with(ctx, reader, None).await
}

/// [`import_stream`]; an upload also checkpoints, and may start from a checkpoint (`reader`
/// then yields the archive from its offset on).
pub(super) async fn import_stream_with(
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
