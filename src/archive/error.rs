//! What can be wrong with an archive. Every variant names the member it is about, so a
//! user can find the problem in the file with `tar tvf`.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("not a tar archive ({0})")]
    NotTar(String),
    #[error("archive is truncated (ended inside {member})")]
    Truncated { member: String },
    #[error("member {member}: {problem}")]
    ForbiddenMember {
        member: String,
        problem: MemberProblem,
    },
    #[error("member {member}: {size} bytes of metadata is over the {cap}-byte limit")]
    MetadataTooLarge { member: String, size: u64, cap: u64 },
    #[error("member {member}: invalid JSON: {detail}")]
    BadJson { member: String, detail: String },
    #[error("member {member}: {detail}")]
    BadMetadata { member: String, detail: String },
    #[error("{referrer} refers to {member}, which is not in the archive")]
    MissingMember { member: String, referrer: String },
    #[error("member {member}: symlink loop")]
    SymlinkLoop { member: String },
    #[error("member {member}: symlink to {target} leaves the archive")]
    SymlinkEscape { member: String, target: String },
    /// The member list alone is larger than any image archive's (which have at most a few
    /// thousand members): kept in memory, it would grow with the input.
    #[error(
        "member {member}: the archive has more than {cap} {what}, far more than an image archive has"
    )]
    TooManyMembers {
        member: String,
        what: &'static str,
        cap: u64,
    },
    /// A document two clients would read as two different images (see `ambiguity`).
    #[error("member {member}: ambiguous document, refused: {detail}")]
    Ambiguous { member: String, detail: String },
    #[error("no image in archive: it has neither manifest.json nor an OCI index.json")]
    NoImages,
    #[error(
        "layer {index} ({member}): content sha256 is {actual} but the config's rootfs.diff_ids[{index}] is {expected}"
    )]
    DiffIdMismatch {
        index: usize,
        member: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: {layers} layers but the config lists {diff_ids} diff_ids")]
    LayerCountMismatch {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("member {member}: sha256 of its content is {actual}, not {expected}")]
    DigestMismatch {
        member: String,
        expected: String,
        actual: String,
    },
    #[error("member {member}: size is {actual}, the descriptor says {expected}")]
    SizeMismatch {
        member: String,
        expected: u64,
        actual: u64,
    },
    #[error("member {member}: cannot decompress layer: {detail}")]
    BadCompression { member: String, detail: String },
    #[error("reading archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a single tar member is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MemberProblem {
    #[error("absolute paths are not allowed")]
    AbsolutePath,
    #[error("'..' path components are not allowed")]
    ParentComponent,
    #[error("appears twice in the archive")]
    Duplicate,
    #[error("hard links are not allowed")]
    HardLink,
    #[error("{0} members are not allowed (only regular files, directories and symlinks)")]
    ForbiddenType(&'static str),
    #[error("path is not valid UTF-8")]
    NonUtf8,
    #[error("empty path")]
    EmptyPath,
}

impl ArchiveError {
    /// Errors that are about the content being wrong (as opposed to unreadable) are
    /// verification failures: the archive is well-formed but does not match itself.
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            ArchiveError::DiffIdMismatch { .. }
                | ArchiveError::DigestMismatch { .. }
                | ArchiveError::SizeMismatch { .. }
                | ArchiveError::LayerCountMismatch { .. }
        )
    }
}
