//! Layers already in the registry. A manifest there says which blob holds which layer, but
//! whoever can push a tag can write any manifest (and any `layer-codec` annotation): a blob is
//! only taken for a layer after it was read back and decompressed to the layer's diff_id.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::codec::{self, CompressionPolicy};
use super::{Ctx, ImportError, Planned, Pushed, blocking, layer, manifest};
use crate::archive::digest;
use crate::archive::formats::{ImageConfig, Platform};

/// Whether blob `digest` of `repo` holds the layer `diff_id`: streamed from the registry,
/// hashed as stored and decompressed. A blob that cannot be read counts as not holding it.
pub(super) async fn holds(
    ctx: &Ctx,
    repo: &str,
    digest: &str,
    diff_id: &str,
) -> Result<bool, ImportError> {
    let stream = match ctx.registry.read_blob(repo, digest).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(blob = digest, repo, error = %e, "registry blob not readable; not reused");
            return Ok(false);
        }
    };
    let mut reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let name = format!("{repo}@{digest}");
    let facts = blocking(move || {
        layer::process(
            &name,
            &mut reader,
            CompressionPolicy::Force(super::Codec::None),
            &mut |_| Ok(()),
        )
    })
    .await?;
    Ok(match facts {
        Ok(f) if f.stored_digest == digest && f.diff_id == diff_id => true,
        Ok(f) => {
            tracing::warn!(
                blob = digest,
                repo,
                holds = %f.diff_id,
                expected = diff_id,
                "registry blob does not hold the layer its manifest claims; not reused"
            );
            false
        }
        Err(e) => {
            tracing::warn!(blob = digest, repo, error = %e, "registry blob is not a layer; not reused");
            false
        }
    })
}

/// Tag-list pages read per target repository, and tags per page: a repository of thousands of
/// tags costs at most this many list requests.
pub(super) const TAG_PAGES: usize = 4;
pub(super) const TAGS_PER_PAGE: usize = 1000;
/// Manifest and config requests per import spent on finding layers, over every repository:
/// the bound that keeps discovery cheap next to thousands of tags.
pub(super) const DOCUMENT_REQUESTS: usize = 32;

/// What discovery found and what it cost.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// diff_id → a blob that this import's codec produced for it (checked when used).
    pub blobs: HashMap<String, Pushed>,
    /// Requests made: tag lists, manifests, configs.
    pub requests: usize,
}

/// Blobs that this import's codec already produced for the `needed` diff_ids, learned from the
/// target repositories: first the tags this import moves (an upgrade shares its base layers
/// with the version it replaces), then the repository's other tags, those sharing the longest
/// prefix with the new tags first, the latest (lexically) among equals. No local cache: the
/// registry's manifests and configs say which blob holds which diff_id, within
/// [`TAG_PAGES`] tag lists per repository and [`DOCUMENT_REQUESTS`] manifests and configs.
///
/// Only manifests recording this import's exact encoder (`layer-codec` annotation) are used,
/// so a reused blob is the one this import would produce and the manifest digest stays what a
/// cold push gives; the annotation is a hint, not proof: each blob is read back and checked
/// against its diff_id before it is used ([`holds`]).
pub(super) async fn known_layers(ctx: &Ctx, todo: &[Planned], needed: &HashSet<String>) -> Known {
    let mut known = Known::default();
    if needed.is_empty() {
        return known;
    }
    let platforms: Vec<Platform> = todo
        .iter()
        .flat_map(|p| &p.images)
        .map(|i| i.platform.clone())
        .collect();
    let mut budget = DOCUMENT_REQUESTS;
    let mut repos: Vec<(String, Vec<String>)> = Vec::new();
    for r in todo.iter().flat_map(|p| &p.refs) {
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        match repos.iter_mut().find(|(repo, _)| *repo == r.repository) {
            Some((_, tags)) if !tags.contains(&tag) => tags.push(tag),
            Some(_) => {}
            None => repos.push((r.repository.clone(), vec![tag])),
        }
    }
    let mut learner = Learner {
        ctx,
        configs: HashSet::new(),
        needed,
        platforms: &platforms,
        budget: &mut budget,
        known: &mut known,
    };
    // The tags this import moves, in every repository, before any other tag.
    for (repo, own) in &repos {
        for tag in own {
            learner.tag(repo, tag).await;
        }
    }
    for (repo, own) in &repos {
        if learner.done() {
            break;
        }
        let mut tags = Vec::new();
        for _ in 0..TAG_PAGES {
            learner.known.requests += 1;
            let page = match ctx
                .registry
                .list_tags(repo, TAGS_PER_PAGE, tags.last().map(String::as_str))
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::info!(repo, error = %e, "tags not listed; layers not learned from them");
                    break;
                }
            };
            let full = page.len() >= TAGS_PER_PAGE;
            tags.extend(page);
            if !full {
                break;
            }
        }
        for tag in ranked(tags, own) {
            if learner.done() {
                break;
            }
            learner.tag(repo, &tag).await;
        }
    }
    tracing::info!(
        requests = known.requests,
        found = known.blobs.len(),
        needed = needed.len(),
        "layers learned from the registry"
    );
    known
}

/// Tags other than `own`, the likeliest to share layers with them first: the longest common
/// prefix with one of `own`, then the lexically greatest (`1.10` after `1.9` as registries
/// sort, close enough for a ranking).
fn ranked(tags: Vec<String>, own: &[String]) -> Vec<String> {
    let prefix = |t: &str| {
        own.iter()
            .map(|o| o.bytes().zip(t.bytes()).take_while(|(a, b)| a == b).count())
            .max()
            .unwrap_or(0)
    };
    let mut tags: Vec<(usize, String)> = tags
        .into_iter()
        .filter(|t| !own.contains(t))
        .map(|t| (prefix(&t), t))
        .collect();
    tags.sort_by(|a, b| b.cmp(a));
    tags.into_iter().map(|(_, t)| t).collect()
}

struct Learner<'a> {
    ctx: &'a Ctx,
    /// Configs already read (tags often share a manifest).
    configs: HashSet<String>,
    needed: &'a HashSet<String>,
    platforms: &'a [Platform],
    budget: &'a mut usize,
    known: &'a mut Known,
}

impl Learner<'_> {
    fn done(&self) -> bool {
        *self.budget == 0 || self.needed.iter().all(|d| self.known.blobs.contains_key(d))
    }

    /// Spend one request of the budget, if any is left.
    fn spend(&mut self) -> bool {
        if *self.budget == 0 {
            return false;
        }
        *self.budget -= 1;
        self.known.requests += 1;
        true
    }

    async fn manifest(&mut self, repo: &str, reference: &str) -> Option<Value> {
        if !self.spend() {
            return None;
        }
        let remote = self
            .ctx
            .registry
            .get_manifest(repo, reference)
            .await
            .ok()??;
        serde_json::from_slice(&remote.bytes).ok()
    }

    /// The layers of the image (or of the import's platforms of the index) `tag` names.
    async fn tag(&mut self, repo: &str, tag: &str) {
        if self.done() {
            return;
        }
        let Some(m) = self.manifest(repo, tag).await else {
            return;
        };
        let Some(entries) = m["manifests"].as_array() else {
            self.image(repo, &m).await;
            return;
        };
        for e in entries {
            let platform: Option<Platform> = serde_json::from_value(e["platform"].clone()).ok();
            let wanted = platform.is_none_or(|p| self.platforms.iter().any(|w| p.satisfies(w)));
            if let (true, Some(d)) = (wanted, e["digest"].as_str()) {
                if self.done() {
                    return;
                }
                if let Some(m) = self.manifest(repo, d).await {
                    self.image(repo, &m).await;
                }
            }
        }
    }

    /// The layers of image manifest `m` that this import would push identically (the same
    /// encoder, recorded in the manifest's annotation), by diff_id.
    async fn image(&mut self, repo: &str, m: &Value) {
        let codec = match self.ctx.opts.compression {
            CompressionPolicy::Keep(c) | CompressionPolicy::Force(c) => c,
        };
        if m["annotations"][manifest::ANNOTATION_CODEC].as_str()
            != Some(codec::codec_id(codec).as_str())
        {
            return;
        }
        let Some(config_digest) = m["config"]["digest"].as_str() else {
            return;
        };
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        if !self.configs.insert(config_digest.to_string()) || !self.spend() {
            return;
        }
        let Ok(Some(config)) = self
            .ctx
            .registry
            .get_small_blob(repo, config_digest, 4 << 20)
            .await
        else {
            return;
        };
        // The registry is content-addressed, but the answer is checked all the same.
        if digest::sha256_of(&config) != config_digest {
            return;
        }
        let Ok(parsed) = serde_json::from_slice::<ImageConfig>(&config) else {
            return;
        };
        for (diff_id, l) in parsed.rootfs.diff_ids.iter().zip(&layers) {
            if let (Some(d), Some(size)) = (l["digest"].as_str(), l["size"].as_u64())
                && l["mediaType"].as_str() == Some(codec.oci_layer_media_type())
                && self.needed.contains(diff_id)
            {
                self.known.blobs.entry(diff_id.clone()).or_insert(Pushed {
                    digest: d.to_string(),
                    size,
                    repo: repo.to_string(),
                    sent: 0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_sharing_a_prefix_with_the_new_one_come_first() {
        let tags = ["latest", "1.9", "1.10", "2.0", "1.1", "x"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            super::ranked(tags, &["1.11".into(), "latest".into()]),
            ["1.10", "1.1", "1.9", "x", "2.0"]
        );
    }
}
