//! Which images of an archive go where: `--image`/`--all`, the platform, and the tags.

use crate::archive::formats::Platform;
use crate::archive::{ArchiveIndex, ImageEntry, ImageSource, LeftOut};
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
    /// The archive's own index of the image (multi-platform), as stored.
    pub index: Option<ArchiveIndex>,
    /// One platform was chosen (`--platform`): the tag names its manifest, not the index.
    pub platform_chosen: bool,
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
    #[error(
        "image {image} was saved without a tag, so importing all images cannot name it: import it on its own (--image {image} TARGET:TAG, or spec.image with target.tags)"
    )]
    UntaggedInAll { image: String },
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
            return Err(match selection {
                Selection::All => PlanError::UntaggedInAll { image: name },
                _ => PlanError::TagRequired { image: name },
            });
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
        index: entry.index.clone(),
        platform_chosen: platform.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::scan::fixtures;

    /// An image of `platform` ("os/arch[/variant]"); `seed` makes its config (its ID) unique.
    fn image(platform: &str, seed: u8) -> ImageSource {
        let p: Platform = platform.parse().unwrap();
        let config = format!(
            r#"{{"os":"{}","architecture":"{}","seed":{seed}}}"#,
            p.os, p.architecture
        )
        .into_bytes();
        ImageSource {
            config_digest: fixtures::sha(&config),
            config,
            config_member: "c.json".into(),
            diff_ids: vec![],
            platform: p,
            layers: vec![],
            original_manifest: None,
        }
    }

    fn entry(tags: &[&str], images: Vec<ImageSource>) -> ImageEntry {
        ImageEntry {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            images,
            left_out: vec![],
            index: None,
        }
    }

    fn left_out(platform: &str) -> LeftOut {
        LeftOut {
            platform: platform.into(),
            digest: "sha256:00".into(),
            missing: "blobs/sha256/00".into(),
        }
    }

    fn target(s: &str) -> Target {
        Target::parse(s).unwrap()
    }

    fn refs(planned: &[Planned]) -> Vec<Vec<String>> {
        planned
            .iter()
            .map(|p| p.refs.iter().map(|r| r.to_string()).collect())
            .collect()
    }

    fn plan_ok(
        entries: &[ImageEntry],
        selection: Selection,
        to: &str,
        tags: &[&str],
        platform: Option<&str>,
    ) -> Vec<Planned> {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let platform: Option<Platform> = platform.map(|p| p.parse().unwrap());
        plan(entries, &selection, &target(to), &tags, platform.as_ref()).unwrap()
    }

    fn plan_err(
        entries: &[ImageEntry],
        selection: Selection,
        to: &str,
        tags: &[&str],
        platform: Option<&str>,
    ) -> PlanError {
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let platform: Option<Platform> = platform.map(|p| p.parse().unwrap());
        match plan(entries, &selection, &target(to), &tags, platform.as_ref()) {
            Ok(p) => panic!("planned {:?}", refs(&p)),
            Err(e) => e,
        }
    }

    #[test]
    fn the_only_image_goes_to_the_target_under_its_saved_tags() {
        let one = [entry(
            &["web:1.4", "docker.io/library/web:latest"],
            vec![image("linux/amd64", 1)],
        )];
        let p = plan_ok(&one, Selection::Only, "reg.io/shop/web", &[], None);
        assert_eq!(
            refs(&p),
            [["reg.io/shop/web:1.4", "reg.io/shop/web:latest"]]
        );
        assert_eq!(p[0].name, "web:1.4");
        assert_eq!(p[0].images.len(), 1);
        // A tag on the target, or explicit tags, replace the saved ones.
        let p = plan_ok(&one, Selection::Only, "reg.io/shop/web:2", &[], None);
        assert_eq!(refs(&p), [["reg.io/shop/web:2"]]);
        let p = plan_ok(&one, Selection::Only, "reg.io/shop/web", &["a", "b"], None);
        assert_eq!(refs(&p), [["reg.io/shop/web:a", "reg.io/shop/web:b"]]);
    }

    #[test]
    fn the_only_image_is_ambiguous_among_several() {
        let two = [
            entry(&["a:1"], vec![image("linux/amd64", 1)]),
            entry(&["b:1"], vec![image("linux/amd64", 2)]),
        ];
        match plan_err(&two, Selection::Only, "reg.io/x:1", &[], None) {
            PlanError::Ambiguous { count, available } => {
                assert_eq!(count, 2);
                assert_eq!(available, "a:1, b:1");
            }
            e => panic!("expected Ambiguous, got {e:?}"),
        }
    }

    /// `docker save <image-id>` leaves RepoTags out: pushing it needs a tag from the user.
    #[test]
    fn an_untagged_image_needs_a_tag() {
        let bytes = fixtures::legacy_archive(None, &[fixtures::layer(1)]);
        let entries = fixtures::images_of(&bytes).unwrap();
        let id = entries[0].images[0].config_digest.clone();
        match plan_err(&entries, Selection::Only, "reg.io/shop/web", &[], None) {
            PlanError::TagRequired { image } => assert_eq!(image, id),
            e => panic!("expected TagRequired, got {e:?}"),
        }
        let p = plan_ok(&entries, Selection::Only, "reg.io/shop/web:1", &[], None);
        assert_eq!(refs(&p), [["reg.io/shop/web:1"]]);
        let p = plan_ok(&entries, Selection::Only, "reg.io/shop/web", &["1"], None);
        assert_eq!(refs(&p), [["reg.io/shop/web:1"]]);
    }

    fn three() -> Vec<ImageEntry> {
        vec![
            entry(
                &["web:1.4", "reg.io:5000/team/web:1.4"],
                vec![image("linux/amd64", 1)],
            ),
            entry(&["1.5"], vec![image("linux/amd64", 2)]),
            entry(&[], vec![image("linux/amd64", 3)]),
        ]
    }

    #[test]
    fn an_image_is_chosen_by_a_saved_tag() {
        let e = three();
        for wanted in ["web:1.4", "docker.io/library/web:1.4", "library/web:1.4"] {
            let p = plan_ok(
                &e,
                Selection::Image(wanted.into()),
                "reg.io/shop/web",
                &[],
                None,
            );
            assert_eq!(p.len(), 1, "{wanted}");
            assert_eq!(p[0].images[0].config_digest, e[0].images[0].config_digest);
            // Only the chosen tag, not every tag of the image.
            assert_eq!(refs(&p), [["reg.io/shop/web:1.4"]], "{wanted}");
        }
        let p = plan_ok(
            &e,
            Selection::Image("reg.io:5000/team/web:1.4".into()),
            "reg.io/a",
            &[],
            None,
        );
        assert_eq!(refs(&p), [["reg.io/a:1.4"]]);
        // An OCI layout's bare ref.name.
        let p = plan_ok(&e, Selection::Image("1.5".into()), "reg.io/a", &[], None);
        assert_eq!(p[0].images[0].config_digest, e[1].images[0].config_digest);
        assert_eq!(refs(&p), [["reg.io/a:1.5"]]);
        match plan_err(&e, Selection::Image("web:9".into()), "reg.io/a", &[], None) {
            PlanError::NotFound { wanted, available } => {
                assert_eq!(wanted, "web:9");
                assert!(
                    available.starts_with("web:1.4, 1.5, sha256:"),
                    "{available}"
                );
            }
            e => panic!("expected NotFound, got {e:?}"),
        }
    }

    #[test]
    fn an_image_is_chosen_by_an_id_prefix_of_at_least_12_hex_digits() {
        let e = three();
        let id = e[2].images[0].config_digest.clone();
        let hex = &id["sha256:".len()..];
        for wanted in [
            &hex[..12],
            &hex[..20],
            hex,
            &id,
            &format!("sha256:{}", &hex[..12]),
        ] {
            let p = plan_ok(
                &e,
                Selection::Image(wanted.to_string()),
                "reg.io/a:1",
                &[],
                None,
            );
            assert_eq!(p.len(), 1, "{wanted}");
            assert_eq!(p[0].images[0].config_digest, id, "{wanted}");
        }
        // Too short to be taken for an ID.
        assert!(matches!(
            plan_err(
                &e,
                Selection::Image(hex[..11].to_string()),
                "reg.io/a:1",
                &[],
                None
            ),
            PlanError::NotFound { .. }
        ));
        // Chosen by ID, an untagged image still needs a tag.
        assert!(matches!(
            plan_err(
                &e,
                Selection::Image(hex[..12].to_string()),
                "reg.io/a",
                &[],
                None
            ),
            PlanError::TagRequired { .. }
        ));
        // Chosen by ID, a tagged image keeps its saved tags.
        let id0 = &e[0].images[0].config_digest["sha256:".len()..];
        let p = plan_ok(
            &e,
            Selection::Image(id0[..12].to_string()),
            "reg.io/a",
            &[],
            None,
        );
        assert_eq!(refs(&p), [["reg.io/a:1.4"]]);
    }

    #[test]
    fn all_puts_each_image_under_the_prefix_at_its_saved_path() {
        let e = vec![
            entry(
                &[
                    "nginx:1.25",
                    "docker.io/library/nginx:1.25",
                    "reg.io:5000/team/app:2",
                ],
                vec![image("linux/amd64", 1)],
            ),
            entry(&["1.5"], vec![image("linux/amd64", 2)]),
        ];
        let p = plan_ok(&e, Selection::All, "reg.io/mirror", &[], None);
        assert_eq!(
            refs(&p),
            [
                vec![
                    "reg.io/mirror/library/nginx:1.25",
                    "reg.io/mirror/team/app:2"
                ],
                // A bare tag has no path: the prefix itself.
                vec!["reg.io/mirror:1.5"],
            ]
        );
        assert!(matches!(
            plan_err(&e, Selection::All, "reg.io/mirror:1", &[], None),
            PlanError::AllWithTag
        ));
        assert!(matches!(
            plan_err(&e, Selection::All, "reg.io/mirror", &["1"], None),
            PlanError::AllWithTag
        ));
    }

    /// `--all` cannot place an image saved without a tag; the refusal must not advise giving
    /// the target a tag, which `--all` refuses (AllWithTag).
    #[test]
    fn all_with_an_untagged_image_gives_advice_that_can_be_followed() {
        let e = three();
        let err = plan_err(&e, Selection::All, "reg.io/mirror", &[], None);
        let msg = err.to_string();
        assert!(!msg.contains("give the target a tag"), "{msg}");
        assert!(msg.contains("--image"), "{msg}");
    }

    fn multi() -> Vec<ImageEntry> {
        let mut e = entry(
            &["multi:1"],
            vec![
                image("linux/amd64", 1),
                image("linux/arm64", 2),
                image("linux/arm/v7", 3),
            ],
        );
        e.left_out = vec![left_out("linux/s390x")];
        vec![e]
    }

    #[test]
    fn without_a_platform_every_complete_platform_goes() {
        let p = plan_ok(&multi(), Selection::Only, "reg.io/m", &[], None);
        let platforms: Vec<String> = p[0].images.iter().map(|i| i.platform.to_string()).collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64", "linux/arm/v7"]);
        assert_eq!(p[0].left_out.len(), 1, "what was left out is reported");
        assert_eq!(refs(&p), [["reg.io/m:1"]]);
    }

    #[test]
    fn a_platform_selects_one_image() {
        for (want, got) in [
            ("linux/amd64", "linux/amd64"),
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
        ] {
            let p = plan_ok(&multi(), Selection::Only, "reg.io/m", &[], Some(want));
            let platforms: Vec<String> =
                p[0].images.iter().map(|i| i.platform.to_string()).collect();
            assert_eq!(platforms, [got], "{want}");
        }
        for want in ["linux/s390x", "linux/arm/v6", "windows/amd64"] {
            match plan_err(&multi(), Selection::Only, "reg.io/m", &[], Some(want)) {
                PlanError::PlatformNotFound {
                    image,
                    wanted,
                    present,
                    left_out,
                } => {
                    assert_eq!((image.as_str(), wanted.as_str()), ("multi:1", want));
                    assert_eq!(present, "linux/amd64, linux/arm64, linux/arm/v7");
                    assert_eq!(left_out, "linux/s390x");
                }
                e => panic!("{want}: expected PlatformNotFound, got {e:?}"),
            }
        }
    }

    #[test]
    fn a_platform_applies_to_every_image_with_all() {
        let e = vec![
            entry(
                &["a:1"],
                vec![image("linux/amd64", 1), image("linux/arm64", 2)],
            ),
            entry(&["b:1"], vec![image("linux/arm64", 3)]),
        ];
        let p = plan_ok(&e, Selection::All, "reg.io/m", &[], Some("linux/arm64"));
        assert_eq!(p.len(), 2);
        assert!(
            p.iter()
                .all(|p| p.images.len() == 1 && p.images[0].platform.architecture == "arm64")
        );
        assert!(matches!(
            plan_err(&e, Selection::All, "reg.io/m", &[], Some("linux/amd64")),
            PlanError::PlatformNotFound { image, .. } if image == "b:1"
        ));
    }

    #[test]
    fn an_entry_with_no_complete_platform_is_refused() {
        let mut e = entry(&["multi:1"], vec![]);
        e.left_out = vec![left_out("linux/amd64"), left_out("linux/arm64")];
        match plan_err(&[e], Selection::Only, "reg.io/m", &[], None) {
            PlanError::NoCompletePlatform { image, left_out } => {
                assert_eq!(image, "multi:1");
                assert_eq!(left_out, "linux/amd64, linux/arm64");
            }
            e => panic!("expected NoCompletePlatform, got {e:?}"),
        }
    }
}
