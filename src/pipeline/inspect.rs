//! `imageimport inspect`: what an archive holds, and whether it verifies, without a registry.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use serde::Serialize;

use sha2::{Digest as _, Sha256};

use super::codec::{Codec, CompressionPolicy};
use super::layer::{self, LayerFacts};
use super::progress::{Counting, Progress};
use super::source::{self, Location};
use super::{ImportError, Processed, Pushed, blocking};
use crate::archive::formats::Platform;
use crate::archive::{ArchiveError, ImageSource, digest, resolve, scan};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectReport {
    pub archive: String,
    pub images: Vec<InspectImage>,
    /// Per image of the archive: the digest it is named by, and what a push would give.
    pub digests: Vec<InspectDigest>,
    /// None when everything verified, else the first problem found.
    pub problem: Option<String>,
    pub verified: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectImage {
    pub tags: Vec<String>,
    pub image_id: String,
    pub platform: String,
    pub layers: Vec<InspectLayer>,
    pub left_out: Vec<String>,
}

/// The digests of one image (a manifest, or the index of its platforms).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectDigest {
    pub name: String,
    /// The digest the archive names it by (its index or manifest), if it names one.
    pub archive_digest: Option<String>,
    /// The digest its tags get when pushed with the options given (None: it cannot be
    /// pushed with them, or a layer did not verify).
    pub push_digest: Option<String>,
    /// Why `push_digest` is not `archive_digest`.
    pub digest_changed: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectLayer {
    pub member: String,
    pub diff_id: String,
    pub stored_size: u64,
    pub uncompressed_size: u64,
    pub compression: Codec,
    pub verified: bool,
}

/// Every layer read, hashed, and encoded as a push with `policy` would (the encoding is
/// deterministic), so the blob a push would send is known by digest without a registry.
struct Collect {
    policy: CompressionPolicy,
    layers: HashMap<String, Processed>,
}

impl scan::LayerVisitor for Collect {
    type Error = ArchiveError;
    fn layer(&mut self, member: &str, _size: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
        let mut blob = Sha256::new();
        let mut size = 0u64;
        let facts = layer::process(member, data, self.policy, &mut |b| {
            blob.update(&b);
            size += b.len() as u64;
            Ok(())
        })
        .map_err(|e| match e {
            layer::LayerError::Archive(a) => a,
            layer::LayerError::Read(io) | layer::LayerError::Sink(io) => ArchiveError::Io(io),
        })?;
        let pushed = Pushed {
            digest: digest::finish(blob),
            size,
            repo: String::new(),
            sent: 0,
        };
        self.layers.insert(
            member.to_string(),
            Processed {
                facts,
                pushed,
                read_back: false,
            },
        );
        Ok(())
    }
}

/// Push options that change what a push produces.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    pub platform: Option<Platform>,
    pub compression: CompressionPolicy,
}

/// Read the whole archive once, hashing every layer. Archive problems are reported in the
/// result (an unreadable archive is an error).
pub async fn inspect(
    location: Location,
    http: super::HttpOptions,
    options: InspectOptions,
    progress: Arc<Progress>,
) -> Result<InspectReport, ImportError> {
    let archive = location.to_string();
    let reader: Box<dyn Read + Send> = match &location {
        Location::File(p) => {
            let (file, _) =
                source::open_file(p).map_err(|source| ImportError::Source { source })?;
            progress.set_total(file.metadata().map(|m| m.len()).unwrap_or(0));
            Box::new(file)
        }
        Location::Stdin => Box::new(std::io::stdin()),
        Location::Url(u) => {
            let (body, length) = source::open_url(u, &http)
                .await
                .map_err(|source| ImportError::Source { source })?;
            progress.set_total(length.unwrap_or(0));
            body
        }
        Location::Upload(_) => {
            return Err(ImportError::Usage(
                "an upload is imported by its worker, not inspected".into(),
            ));
        }
    };
    let a = archive.clone();
    let p = progress.clone();
    let scanned = blocking(move || {
        let counted = Counting {
            inner: reader,
            progress: p,
        };
        let reader = source::decompressing(Box::new(counted), None).map_err(ArchiveError::Io)?;
        let mut c = Collect {
            policy: options.compression,
            layers: HashMap::new(),
        };
        let (catalog, _) = scan::stream(reader, &mut c)?;
        Ok::<_, ArchiveError>((catalog, c.layers, options))
    })
    .await?;
    let (catalog, processed, options) = scanned.map_err(|source| ImportError::Archive {
        archive: a.clone(),
        source,
    })?;
    let entries = resolve::images(&catalog).map_err(|source| ImportError::Archive {
        archive: a.clone(),
        source,
    })?;
    let facts: HashMap<&String, &LayerFacts> =
        processed.iter().map(|(m, p)| (m, &p.facts)).collect();
    let mut problem = None;
    let mut images = Vec::new();
    let mut digests = Vec::new();
    for e in &entries {
        let chosen: Vec<ImageSource> = e
            .images
            .iter()
            .filter(|i| {
                options
                    .platform
                    .as_ref()
                    .is_none_or(|p| i.platform.satisfies(p))
            })
            .take(if options.platform.is_some() {
                1
            } else {
                usize::MAX
            })
            .cloned()
            .collect();
        let complete = chosen
            .iter()
            .flat_map(|i| &i.layers)
            .all(|l| processed.contains_key(&l.member));
        let composed = (!chosen.is_empty() && complete).then(|| {
            super::digests::compose(
                &super::digests::Parts {
                    images: &chosen,
                    index: e.index.as_ref(),
                    left_out: &e.left_out,
                    platform_chosen: options.platform.is_some(),
                    policy: options.compression,
                },
                &processed,
            )
        });
        digests.push(InspectDigest {
            name: e.display_name(),
            archive_digest: composed.as_ref().map_or_else(
                || e.index.as_ref().map(|i| i.digest.clone()),
                |c| c.archive_digest.clone(),
            ),
            push_digest: composed.as_ref().map(|c| c.top.digest()),
            digest_changed: composed.and_then(|c| c.changed),
        });
        for img in &e.images {
            let mut layers = Vec::new();
            for (i, l) in img.layers.iter().enumerate() {
                let Some(f) = facts.get(&l.member) else {
                    problem.get_or_insert(format!(
                        "member {} is listed as a layer but is not a layer blob",
                        l.member
                    ));
                    continue;
                };
                let mut ok = f.diff_id == img.diff_ids[i];
                if !ok {
                    problem.get_or_insert(
                        ArchiveError::DiffIdMismatch {
                            index: i,
                            member: l.member.clone(),
                            expected: img.diff_ids[i].clone(),
                            actual: f.diff_id.clone(),
                        }
                        .to_string(),
                    );
                }
                if let Some(d) = &l.declared
                    && (d.digest != f.stored_digest || d.size != f.stored_size)
                {
                    ok = false;
                    problem.get_or_insert(format!(
                        "member {}: content does not match its descriptor {}",
                        l.member, d.digest
                    ));
                }
                layers.push(InspectLayer {
                    member: l.member.clone(),
                    diff_id: f.diff_id.clone(),
                    stored_size: f.stored_size,
                    uncompressed_size: f.uncompressed_size,
                    compression: f.stored_codec,
                    verified: ok,
                });
            }
            images.push(InspectImage {
                tags: e.tags.clone(),
                image_id: img.config_digest.clone(),
                platform: img.platform.to_string(),
                layers,
                left_out: e.left_out.iter().map(|l| l.platform.clone()).collect(),
            });
        }
    }
    if problem.is_some() {
        // A push would refuse the archive: it produces no digest.
        for d in &mut digests {
            d.push_digest = None;
            d.digest_changed = None;
        }
    }
    Ok(InspectReport {
        archive,
        verified: problem.is_none(),
        problem,
        images,
        digests,
    })
}
