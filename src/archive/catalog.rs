//! What one pass over an archive's members learns: every member's kind, symlink targets,
//! the bytes of the small JSON documents, and (seekable files) where each file's data lies.

use std::collections::BTreeMap;

use super::error::ArchiveError;
use super::members::{self, MemberKind};

/// Largest metadata document (manifest.json, index.json, a config, an OCI manifest) we read.
/// Real ones are kilobytes; the cap keeps a hostile archive from making us allocate.
pub const METADATA_MEMBER_CAP: u64 = 4 << 20;
/// Total metadata kept in memory for one archive.
pub const METADATA_TOTAL_CAP: u64 = 32 << 20;
/// Most members one archive may have. Every member is kept in the catalog; a real image
/// archive has at most a few thousand (four per layer in the legacy layout), so the cap only
/// stops a hostile archive of tiny members from growing memory with its length.
pub const MEMBER_CAP: u64 = 100_000;
/// Total bytes of member names and symlink targets kept for one archive (a real archive's
/// are well under 1 MiB): with the member cap, what bounds the catalog's memory.
pub const MEMBER_NAMES_CAP: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct Catalog {
    pub kinds: BTreeMap<String, MemberKind>,
    pub sizes: BTreeMap<String, u64>,
    pub links: BTreeMap<String, String>,
    /// Bytes of metadata members (and of small blobs that look like JSON).
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Seekable archives only: offset of each regular file's data.
    pub offsets: BTreeMap<String, u64>,
    meta_total: u64,
    names_total: u64,
    member_cap: u64,
    names_cap: u64,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            kinds: BTreeMap::new(),
            sizes: BTreeMap::new(),
            links: BTreeMap::new(),
            meta: BTreeMap::new(),
            offsets: BTreeMap::new(),
            meta_total: 0,
            names_total: 0,
            member_cap: MEMBER_CAP,
            names_cap: MEMBER_NAMES_CAP,
        }
    }
}

/// How a regular file is treated while scanning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Must be read into memory (and fit under the cap).
    Metadata,
    /// An OCI blob: JSON if it is small and starts with `{`, otherwise a layer.
    Blob,
    /// Legacy per-layer files (`VERSION`, `<id>/json`) that the import does not need.
    Ignored,
    /// Anything else may be a layer.
    Layer,
}

pub fn role_of(name: &str) -> Role {
    let base = name.rsplit('/').next().unwrap_or(name);
    let top_level = !name.contains('/');
    if top_level
        && matches!(
            name,
            "manifest.json" | "index.json" | "repositories" | "oci-layout"
        )
    {
        return Role::Metadata;
    }
    if top_level && name.ends_with(".json") {
        return Role::Metadata;
    }
    if name.starts_with("blobs/") {
        return Role::Blob;
    }
    if base == "VERSION" || base == "json" {
        return Role::Ignored;
    }
    Role::Layer
}

impl Catalog {
    /// A catalog with smaller member caps, so tests can show the caps hold without building
    /// archives of a hundred thousand members.
    #[cfg(test)]
    pub(crate) fn with_caps(members: u64, name_bytes: u64) -> Catalog {
        Catalog {
            member_cap: members,
            names_cap: name_bytes,
            ..Catalog::default()
        }
    }

    /// Record a member; refuses duplicates, and members beyond the caps
    /// ([`MEMBER_CAP`], [`MEMBER_NAMES_CAP`]).
    pub fn add(&mut self, name: &str, kind: MemberKind, size: u64) -> Result<(), ArchiveError> {
        if self.kinds.contains_key(name) {
            return Err(ArchiveError::ForbiddenMember {
                member: name.to_string(),
                problem: super::error::MemberProblem::Duplicate,
            });
        }
        if self.kinds.len() as u64 >= self.member_cap {
            return Err(ArchiveError::TooManyMembers {
                member: shown(name),
                what: "members",
                cap: self.member_cap,
            });
        }
        let target_len = match &kind {
            MemberKind::Symlink(target) => target.len(),
            _ => 0,
        };
        let names = self.names_total + name.len() as u64 + target_len as u64;
        if names > self.names_cap {
            return Err(ArchiveError::TooManyMembers {
                member: shown(name),
                what: "bytes of member names",
                cap: self.names_cap,
            });
        }
        self.names_total = names;
        if let MemberKind::Symlink(target) = &kind {
            self.links.insert(name.to_string(), target.clone());
        }
        self.kinds.insert(name.to_string(), kind);
        self.sizes.insert(name.to_string(), size);
        Ok(())
    }

    /// Check a metadata member's size before reading it.
    pub fn admit_metadata(&mut self, name: &str, size: u64) -> Result<(), ArchiveError> {
        if size > METADATA_MEMBER_CAP {
            return Err(ArchiveError::MetadataTooLarge {
                member: name.to_string(),
                size,
                cap: METADATA_MEMBER_CAP,
            });
        }
        if self.meta_total + size > METADATA_TOTAL_CAP {
            return Err(ArchiveError::MetadataTooLarge {
                member: name.to_string(),
                size: self.meta_total + size,
                cap: METADATA_TOTAL_CAP,
            });
        }
        self.meta_total += size;
        Ok(())
    }

    /// Follow symlinks to a regular file member.
    pub fn resolve_file(&self, name: &str, referrer: &str) -> Result<String, ArchiveError> {
        let name = members::normalize_name(name.as_bytes())
            .map_err(|(member, problem)| ArchiveError::ForbiddenMember { member, problem })?;
        let resolved = members::resolve(&self.links, &name)?;
        match self.kinds.get(&resolved) {
            Some(MemberKind::File) => Ok(resolved),
            Some(_) => Err(ArchiveError::BadMetadata {
                member: resolved,
                detail: format!("referred to by {referrer} but is not a regular file"),
            }),
            None => Err(ArchiveError::MissingMember {
                member: resolved,
                referrer: referrer.into(),
            }),
        }
    }

    /// Whether `name` is (a symlink to) a regular file, by the rules of [`Self::resolve_file`].
    pub fn has_file(&self, name: &str) -> bool {
        self.resolve_file(name, "").is_ok()
    }

    /// Bytes of a metadata member (after symlinks).
    pub fn metadata(&self, name: &str, referrer: &str) -> Result<&[u8], ArchiveError> {
        let resolved = self.resolve_file(name, referrer)?;
        match self.meta.get(&resolved) {
            Some(b) => Ok(b),
            None => {
                let size = self.sizes.get(&resolved).copied().unwrap_or(0);
                if size > METADATA_MEMBER_CAP {
                    return Err(ArchiveError::MetadataTooLarge {
                        member: resolved,
                        size,
                        cap: METADATA_MEMBER_CAP,
                    });
                }
                // Small, but not read as a document: a blob that is not JSON, or a file
                // outside the places metadata is read from (taken for a layer).
                Err(ArchiveError::BadMetadata {
                    member: resolved,
                    detail: format!(
                        "{referrer} refers to it as a JSON document, but it is not one (only \
                         top-level *.json members and blobs holding a JSON object are)"
                    ),
                })
            }
        }
    }
}

/// A member name for a message: whole unless absurdly long.
fn shown(name: &str) -> String {
    if name.len() <= 256 {
        name.to_string()
    } else {
        name.chars().take(64).collect::<String>() + "…"
    }
}

/// True when small blob bytes are a JSON document (an object) rather than a layer. A first
/// `{` alone does not decide: an uncompressed layer starts with its first file's name, which
/// may begin with `{`; but no tar (nor gzip or zstd stream) is valid JSON.
pub fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::error::MemberProblem;

    fn file() -> MemberKind {
        MemberKind::File
    }

    fn link(target: &str) -> MemberKind {
        MemberKind::Symlink(target.into())
    }

    /// A catalog of `members` as the scan would record them (files of 10 bytes).
    fn catalog(members: &[(&str, MemberKind)]) -> Catalog {
        let mut c = Catalog::default();
        for (name, kind) in members {
            let size = if *kind == MemberKind::File { 10 } else { 0 };
            c.add(name, kind.clone(), size).unwrap();
        }
        c
    }

    #[test]
    fn roles_follow_the_layouts() {
        for (name, role) in [
            ("manifest.json", Role::Metadata),
            ("index.json", Role::Metadata),
            ("repositories", Role::Metadata),
            ("oci-layout", Role::Metadata),
            ("0123abcd.json", Role::Metadata),
            ("blobs/sha256/0123abcd", Role::Blob),
            ("0123abcd/VERSION", Role::Ignored),
            ("0123abcd/json", Role::Ignored),
            ("0123abcd/layer.tar", Role::Layer),
            ("0123abcd.tar", Role::Layer),
            // Only the top level holds metadata documents.
            ("sub/manifest.json", Role::Layer),
            ("sub/config.json", Role::Layer),
        ] {
            assert_eq!(role_of(name), role, "{name}");
        }
    }

    #[test]
    fn duplicates_are_refused_and_change_nothing() {
        let mut c = catalog(&[("a", link("b")), ("b", file())]);
        let e = c.add("a", link("elsewhere"), 0).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::ForbiddenMember { member, problem: MemberProblem::Duplicate } if member == "a"),
            "{e:?}"
        );
        assert_eq!(
            c.links["a"], "b",
            "the refused duplicate does not replace the link"
        );
        assert!(c.add("b", file(), 99).is_err());
        assert_eq!(c.sizes["b"], 10);
    }

    /// The real cap (checked on the catalog directly: an archive of 100,001 members takes
    /// seconds to build and read in a debug build, this 0.3 s).
    #[test]
    fn the_default_member_cap_holds() {
        assert_eq!(MEMBER_CAP, 100_000);
        let mut c = Catalog::default();
        for i in 0..MEMBER_CAP {
            c.add(&format!("m{i}"), file(), 0).unwrap();
        }
        let e = c.add("one-more", MemberKind::Dir, 0).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::TooManyMembers { member, what: "members", cap: MEMBER_CAP } if member == "one-more"),
            "{e:?}"
        );
        assert_eq!(c.kinds.len() as u64, MEMBER_CAP);
    }

    #[test]
    fn the_name_bytes_cap_holds_and_long_names_are_shortened_in_messages() {
        let mut c = Catalog::default();
        let long = "n".repeat(MEMBER_NAMES_CAP as usize / 2);
        c.add(&long, file(), 0).unwrap();
        let e = c.add(&format!("{long}2"), link("x"), 0).unwrap_err();
        match &e {
            ArchiveError::TooManyMembers { member, what, cap } => {
                assert_eq!((*what, *cap), ("bytes of member names", MEMBER_NAMES_CAP));
                assert_eq!(member.chars().count(), 65, "shortened: {}", member.len());
            }
            e => panic!("expected TooManyMembers, got {e:?}"),
        }
        assert!(!c.links.contains_key(&format!("{long}2")));
    }

    #[test]
    fn metadata_caps_per_member_and_in_total() {
        let mut c = Catalog::default();
        c.admit_metadata("a.json", METADATA_MEMBER_CAP).unwrap();
        let e = c
            .admit_metadata("b.json", METADATA_MEMBER_CAP + 1)
            .unwrap_err();
        assert!(matches!(e, ArchiveError::MetadataTooLarge { size, cap, .. }
            if size == METADATA_MEMBER_CAP + 1 && cap == METADATA_MEMBER_CAP));
        for i in 1..METADATA_TOTAL_CAP / METADATA_MEMBER_CAP {
            c.admit_metadata(&format!("{i}.json"), METADATA_MEMBER_CAP)
                .unwrap();
        }
        let e = c.admit_metadata("last.json", 1).unwrap_err();
        assert!(
            matches!(&e, ArchiveError::MetadataTooLarge { member, cap, .. } if member == "last.json" && *cap == METADATA_TOTAL_CAP),
            "{e:?}"
        );
    }

    #[test]
    fn symlinks_are_followed_to_a_regular_file_inside_the_archive() {
        let c = catalog(&[
            ("a", MemberKind::Dir),
            ("a/layer.tar", file()),
            ("b", MemberKind::Dir),
            ("b/layer.tar", link("../a/layer.tar")),
            ("c", link("b")),
            ("top.tar", link("./c/layer.tar")),
        ]);
        for name in [
            "a/layer.tar",
            "./a/layer.tar",
            "b/layer.tar",
            "c/layer.tar",
            "top.tar",
        ] {
            assert_eq!(
                c.resolve_file(name, "test").unwrap(),
                "a/layer.tar",
                "{name}"
            );
            assert!(c.has_file(name), "{name}");
        }
        assert!(!c.has_file("a"));
        assert!(!c.has_file("nothing"));
    }

    #[test]
    fn symlinks_out_of_the_archive_in_loops_or_to_non_files_are_refused() {
        let c = catalog(&[
            ("up", link("../../etc/passwd")),
            ("abs", link("/etc/passwd")),
            ("p", link("q")),
            ("q", link("p")),
            ("self", link("self")),
            ("d", MemberKind::Dir),
            ("to-dir", link("d")),
            ("dangling", link("gone")),
        ]);
        for name in ["up", "abs"] {
            assert!(
                matches!(c.resolve_file(name, "t"), Err(ArchiveError::SymlinkEscape { member, .. }) if member == name),
                "{name}"
            );
        }
        for name in ["p", "self"] {
            assert!(
                matches!(c.resolve_file(name, "t"), Err(ArchiveError::SymlinkLoop { member }) if member == name),
                "{name}"
            );
        }
        assert!(matches!(
            c.resolve_file("to-dir", "manifest.json[0]"),
            Err(ArchiveError::BadMetadata { member, detail }) if member == "d" && detail.contains("manifest.json[0]")
        ));
        assert!(matches!(
            c.resolve_file("dangling", "manifest.json[0]"),
            Err(ArchiveError::MissingMember { member, referrer }) if member == "gone" && referrer == "manifest.json[0]"
        ));
        for name in ["up", "abs", "p", "to-dir", "dangling"] {
            assert!(!c.has_file(name), "{name}");
        }
    }

    #[test]
    fn referenced_names_are_checked_like_member_names() {
        let c = catalog(&[("a/layer.tar", file())]);
        for (name, problem) in [
            ("../a/layer.tar", MemberProblem::ParentComponent),
            ("x/../a/layer.tar", MemberProblem::ParentComponent),
            ("/a/layer.tar", MemberProblem::AbsolutePath),
        ] {
            assert!(
                matches!(c.resolve_file(name, "t"), Err(ArchiveError::ForbiddenMember { member, problem: p }) if member == name && p == problem),
                "{name}"
            );
        }
    }

    #[test]
    fn metadata_is_served_after_symlinks_and_unread_members_are_named() {
        let mut c = catalog(&[
            ("abc.json", file()),
            ("manifest.json", link("abc.json")),
            ("big.json", file()),
            ("sub/config.json", file()),
        ]);
        c.meta.insert("abc.json".into(), b"[]".to_vec());
        c.sizes.insert("big.json".into(), METADATA_MEMBER_CAP + 1);
        assert_eq!(c.metadata("manifest.json", "archive").unwrap(), b"[]");
        assert!(matches!(
            c.metadata("big.json", "manifest.json[0]"),
            Err(ArchiveError::MetadataTooLarge { member, .. }) if member == "big.json"
        ));
        // A small member that was not read as a document is not "over the limit".
        let e = c
            .metadata("sub/config.json", "manifest.json[0]")
            .unwrap_err();
        assert!(
            matches!(&e, ArchiveError::BadMetadata { member, detail } if member == "sub/config.json" && detail.contains("manifest.json[0]")),
            "{e:?}"
        );
    }

    #[test]
    fn only_json_objects_are_json_documents() {
        assert!(looks_like_json(b"{}"));
        assert!(looks_like_json(b" \n\t{\"a\": [1]}\n"));
        assert!(!looks_like_json(b"[]"), "configs and manifests are objects");
        assert!(!looks_like_json(b"{"));
        assert!(!looks_like_json(b"{{{{"));
        assert!(!looks_like_json(b""));
        assert!(!looks_like_json(b"\x1f\x8b\x08\x00"));
        // An uncompressed layer whose first file is named `{}`.
        let mut tar = b"{}".to_vec();
        tar.resize(1024, 0);
        assert!(!looks_like_json(&tar));
    }
}
