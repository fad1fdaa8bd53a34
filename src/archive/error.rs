//! What can be wrong with an archive. Every variant names the member it is about, so a
//! user can find the problem in the file with `tar tvf`.
//!
//! Names and details are shown whole unless absurdly long ([`shown`]): a hostile archive's
//! names can be megabytes, and messages end up in an ImageImport's status.

use thiserror::Error;

/// Longest name shown whole in a message; PATH_MAX-long names are cut (real ones are far
/// shorter).
const SHOWN_NAME: usize = 256;
/// Longest detail shown whole (details quote names and references from the archive).
const SHOWN_DETAIL: usize = 1024;

/// `s` for a message: whole up to `max` bytes, else its start and its length.
pub fn shown_up_to(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max / 2;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// A member name for a message (see [`shown_up_to`]).
pub fn shown(name: &str) -> String {
    shown_up_to(name, SHOWN_NAME)
}

fn shown_detail(s: &str) -> String {
    shown_up_to(s, SHOWN_DETAIL)
}

#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("not a tar archive ({})", shown_detail(.0))]
    NotTar(String),
    #[error("archive is truncated (ended inside {})", shown(.member))]
    Truncated { member: String },
    #[error("member {}: {problem}", shown(.member))]
    ForbiddenMember {
        member: String,
        problem: MemberProblem,
    },
    #[error("member {}: {size} bytes of metadata is over the {cap}-byte limit", shown(.member))]
    MetadataTooLarge { member: String, size: u64, cap: u64 },
    #[error("member {}: invalid JSON: {}", shown(.member), shown_detail(.detail))]
    BadJson { member: String, detail: String },
    #[error("member {}: {}", shown(.member), shown_detail(.detail))]
    BadMetadata { member: String, detail: String },
    #[error("{} refers to {}, which is not in the archive", shown(.referrer), shown(.member))]
    MissingMember { member: String, referrer: String },
    #[error("member {}: symlink loop", shown(.member))]
    SymlinkLoop { member: String },
    #[error("member {}: symlink to {} leaves the archive", shown(.member), shown(.target))]
    SymlinkEscape { member: String, target: String },
    /// The member list alone is larger than any image archive's (which have at most a few
    /// thousand members): kept in memory, it would grow with the input.
    #[error(
        "member {}: the archive has more than {cap} {what}, far more than an image archive has",
        shown(.member)
    )]
    TooManyMembers {
        member: String,
        what: &'static str,
        cap: u64,
    },
    /// tar-rs would read such an entry whole into memory (see `scan::extension_cap`).
    #[error(
        "{what} of {size} bytes (after {}) is over the {cap}-byte limit: an image archive's \
         names and PAX records are far shorter",
        shown(.after)
    )]
    ExtensionTooLarge {
        what: &'static str,
        size: u64,
        cap: u64,
        after: String,
    },
    /// A document two clients would read as two different images (see `ambiguity`).
    #[error("member {}: ambiguous document, refused: {}", shown(.member), shown_detail(.detail))]
    Ambiguous { member: String, detail: String },
    #[error("no image in archive: it has neither manifest.json nor an OCI index.json")]
    NoImages,
    #[error(
        "layer {index} ({}): content sha256 is {actual} but the config's rootfs.diff_ids[{index}] is {expected}",
        shown(.member)
    )]
    DiffIdMismatch {
        index: usize,
        member: String,
        expected: String,
        actual: String,
    },
    #[error("image {}: {layers} layers but the config lists {diff_ids} diff_ids", shown(.image))]
    LayerCountMismatch {
        image: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("member {}: sha256 of its content is {}, not {}", shown(.member), shown(.actual), shown(.expected))]
    DigestMismatch {
        member: String,
        expected: String,
        actual: String,
    },
    #[error("member {}: size is {actual}, the descriptor says {expected}", shown(.member))]
    SizeMismatch {
        member: String,
        expected: u64,
        actual: u64,
    },
    #[error("member {}: cannot decompress layer: {}", shown(.member), shown_detail(.detail))]
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
