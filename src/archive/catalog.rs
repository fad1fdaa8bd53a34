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

#[derive(Debug, Default)]
pub struct Catalog {
    pub kinds: BTreeMap<String, MemberKind>,
    pub sizes: BTreeMap<String, u64>,
    pub links: BTreeMap<String, String>,
    /// Bytes of metadata members (and of small blobs that look like JSON).
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Seekable archives only: offset of each regular file's data.
    pub offsets: BTreeMap<String, u64>,
    meta_total: u64,
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
    /// Record a member; refuses duplicates.
    pub fn add(&mut self, name: &str, kind: MemberKind, size: u64) -> Result<(), ArchiveError> {
        if let MemberKind::Symlink(target) = &kind {
            self.links.insert(name.to_string(), target.clone());
        }
        if self.kinds.insert(name.to_string(), kind).is_some() {
            return Err(ArchiveError::ForbiddenMember {
                member: name.to_string(),
                problem: super::error::MemberProblem::Duplicate,
            });
        }
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

    pub fn has_file(&self, name: &str) -> bool {
        matches!(
            members::resolve(&self.links, name)
                .ok()
                .and_then(|r| self.kinds.get(&r).cloned()),
            Some(MemberKind::File)
        )
    }

    /// Bytes of a metadata member (after symlinks).
    pub fn metadata(&self, name: &str, referrer: &str) -> Result<&[u8], ArchiveError> {
        let resolved = self.resolve_file(name, referrer)?;
        match self.meta.get(&resolved) {
            Some(b) => Ok(b),
            None => {
                let size = self.sizes.get(&resolved).copied().unwrap_or(0);
                Err(ArchiveError::MetadataTooLarge {
                    member: resolved,
                    size,
                    cap: METADATA_MEMBER_CAP,
                })
            }
        }
    }
}

/// True when small blob bytes look like a JSON document rather than a layer.
pub fn looks_like_json(head: &[u8]) -> bool {
    head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}
