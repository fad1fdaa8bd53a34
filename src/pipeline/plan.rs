//! Which images of an archive go where: `--image`/`--all`, the platform, and the tags.

use crate::archive::formats::Platform;
use crate::archive::{ImageEntry, ImageSource, LeftOut};
use crate::registry::{SavedTag, Target};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Selection {
    /// The only image of the archive.
    #[default]
    Only,
    /// One image, named by a saved tag or an image ID (prefix of at least 12 hex digits).
    Image(String),
    /// Every image, under the target as a prefix.
    All,
}

/// One image (or platform set) to push, with every reference it gets.
#[derive(Debug, Clone)]
pub struct Planned {
    pub name: String,
    pub images: Vec<ImageSource>,
    pub left_out: Vec<LeftOut>,
    pub refs: Vec<Target>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no image {wanted:?} in the archive (it holds: {available})")]
    NotFound { wanted: String, available: String },
    #[error(
        "the archive holds {count} images ({available}): choose one with --image or push all with --all"
    )]
    Ambiguous { count: usize, available: String },
    #[error("image {image} was saved without a tag: give the target a tag (TARGET:TAG)")]
    TagRequired { image: String },
    #[error("--all pushes each image under its own tags: give a target without a tag")]
    AllWithTag,
    #[error("image {image}: no platform is complete in the archive (left out: {left_out})")]
    NoCompletePlatform { image: String, left_out: String },
    #[error(
        "image {image}: platform {wanted} is not in the archive (present: {present}; left out: {left_out})"
    )]
    PlatformNotFound {
        image: String,
        wanted: String,
        present: String,
        left_out: String,
    },
    #[error(
        "image {image} would be pushed to {repository}, which the cluster policy does not allow"
    )]
    NotAllowed { image: String, repository: String },
}

pub fn plan(
    entries: &[ImageEntry],
    selection: &Selection,
    target: &Target,
    tags: &[String],
    platform: Option<&Platform>,
) -> Result<Vec<Planned>, PlanError> {
    let available = || {
        entries
            .iter()
            .map(|e| e.display_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<(&ImageEntry, Option<SavedTag>)> = match selection {
        Selection::Only if entries.len() == 1 => vec![(&entries[0], None)],
        Selection::Only => {
            return Err(PlanError::Ambiguous {
                count: entries.len(),
                available: available(),
            });
        }
        Selection::All => {
            if target.tag.is_some() || !tags.is_empty() {
                return Err(PlanError::AllWithTag);
            }
            entries.iter().map(|e| (e, None)).collect()
        }
        Selection::Image(wanted) => {
            let by_tag = entries.iter().find_map(|e| {
                e.tags
                    .iter()
                    .filter_map(|t| SavedTag::parse(t))
                    .find(|t| t.matches(wanted))
                    .map(|t| (e, Some(t)))
            });
            let by_id = || {
                let w = wanted.trim_start_matches("sha256:");
                (w.len() >= 12).then(|| {
                    entries.iter().find(|e| {
                        e.images
                            .iter()
                            .any(|i| i.config_digest.trim_start_matches("sha256:").starts_with(w))
                    })
                })?
            };
            match by_tag.or_else(|| by_id().map(|e| (e, None))) {
                Some(c) => vec![c],
                None => {
                    return Err(PlanError::NotFound {
                        wanted: wanted.clone(),
                        available: available(),
                    });
                }
            }
        }
    };
    chosen
        .into_iter()
        .map(|(e, tag)| plan_one(e, tag, selection, target, tags, platform))
        .collect()
}

fn plan_one(
    entry: &ImageEntry,
    chosen_tag: Option<SavedTag>,
    selection: &Selection,
    target: &Target,
    tags: &[String],
    platform: Option<&Platform>,
) -> Result<Planned, PlanError> {
    let name = entry.display_name();
    let left = entry
        .left_out
        .iter()
        .map(|l| l.platform.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let images: Vec<ImageSource> = match platform {
        Some(want) => {
            let hit: Vec<ImageSource> = entry
                .images
                .iter()
                .filter(|i| i.platform.satisfies(want))
                .take(1)
                .cloned()
                .collect();
            if hit.is_empty() {
                return Err(PlanError::PlatformNotFound {
                    image: name,
                    wanted: want.to_string(),
                    present: entry
                        .images
                        .iter()
                        .map(|i| i.platform.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    left_out: left,
                });
            }
            hit
        }
        None => entry.images.clone(),
    };
    if images.is_empty() {
        return Err(PlanError::NoCompletePlatform {
            image: name,
            left_out: left,
        });
    }
    let refs = if !tags.is_empty() {
        tags.iter().map(|t| target.with_tag(t)).collect()
    } else if let Some(tag) = &target.tag {
        vec![target.clone().with_tag(tag)]
    } else {
        let saved: Vec<SavedTag> = match chosen_tag {
            Some(t) => vec![t],
            None => entry
                .tags
                .iter()
                .filter_map(|t| SavedTag::parse(t))
                .collect(),
        };
        if saved.is_empty() {
            return Err(PlanError::TagRequired { image: name });
        }
        let mut refs: Vec<Target> = Vec::new();
        for s in saved {
            let repository = match (selection, &s.path) {
                (Selection::All, Some(path)) => format!("{}/{}", target.repository, path),
                _ => target.repository.clone(),
            };
            let t = target.with_repository(repository).with_tag(&s.tag);
            if !refs.contains(&t) {
                refs.push(t);
            }
        }
        refs
    };
    Ok(Planned {
        name,
        images,
        left_out: entry.left_out.clone(),
        refs,
    })
}
