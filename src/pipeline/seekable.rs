//! A seekable archive (an uncompressed file): layers read in parallel from their offsets,
//! each checked, reused from the registry or encoded and uploaded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::layer::{self, LayerError, LayerFacts};
use super::progress::Counting;
use super::{
    Codec, Ctx, ImageReport, ImportError, Planned, Processed, Pushed, blocking, check_archive_pin,
    finish, mapped_member, plan_images, reuse, source, up_to_date,
};
use crate::archive::formats::Descriptor;
use crate::archive::{ArchiveError, Catalog, resolve, scan};

pub(super) async fn import_seekable(
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
