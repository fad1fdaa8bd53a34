//! `imageimport inspect`: what an archive holds, and whether it verifies, without a registry.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use serde::Serialize;

use super::codec::{Codec, CompressionPolicy};
use super::layer::{self, LayerFacts};
use super::progress::{Counting, Progress};
use super::source::{self, Location};
use super::{ImportError, blocking};
use crate::archive::{ArchiveError, resolve, scan};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectReport {
    pub archive: String,
    pub images: Vec<InspectImage>,
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

struct Collect(HashMap<String, LayerFacts>);

impl scan::LayerVisitor for Collect {
    type Error = ArchiveError;
    fn layer(&mut self, member: &str, _size: u64, data: &mut dyn Read) -> Result<(), ArchiveError> {
        let facts = layer::process(
            member,
            data,
            CompressionPolicy::Force(Codec::None),
            &mut |_| Ok(()),
        )
        .map_err(|e| match e {
            layer::LayerError::Archive(a) => a,
            layer::LayerError::Read(io) | layer::LayerError::Sink(io) => ArchiveError::Io(io),
        })?;
        self.0.insert(member.to_string(), facts);
        Ok(())
    }
}

/// Read the whole archive once, hashing every layer. Archive problems are reported in the
/// result (an unreadable archive is an error).
pub async fn inspect(
    location: Location,
    http: super::HttpOptions,
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
        let mut c = Collect(HashMap::new());
        let (catalog, _) = scan::stream(reader, &mut c)?;
        Ok::<_, ArchiveError>((catalog, c.0))
    })
    .await?;
    let (catalog, facts) = scanned.map_err(|source| ImportError::Archive {
        archive: a.clone(),
        source,
    })?;
    let entries = resolve::images(&catalog).map_err(|source| ImportError::Archive {
        archive: a.clone(),
        source,
    })?;
    let mut problem = None;
    let mut images = Vec::new();
    for e in &entries {
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
    Ok(InspectReport {
        archive,
        verified: problem.is_none(),
        problem,
        images,
    })
}
