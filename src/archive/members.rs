//! Checks on tar members and resolution of symlinks inside the archive.
//!
//! An archive is data, never a file system to extract: names are normalised to relative
//! `a/b/c` form, and only regular files, directories and symlinks are accepted.

use std::collections::BTreeMap;

use super::error::{ArchiveError, MemberProblem};

/// The kind of an accepted member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberKind {
    File,
    Dir,
    /// Target as written in the archive (relative to the member's directory or absolute).
    Symlink(String),
}

/// Normalise a member name: strip `./` and trailing `/`, refuse absolute and `..` paths.
pub fn normalize_name(raw: &[u8]) -> Result<String, (String, MemberProblem)> {
    let shown = String::from_utf8_lossy(raw).into_owned();
    let name = std::str::from_utf8(raw).map_err(|_| (shown.clone(), MemberProblem::NonUtf8))?;
    if name.starts_with('/') {
        return Err((shown, MemberProblem::AbsolutePath));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err((shown, MemberProblem::ParentComponent)),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        // "./" itself, as GNU tar writes it first: a directory we can ignore.
        return Ok(String::new());
    }
    Ok(parts.join("/"))
}

/// Map a tar entry type to an accepted kind, or the reason it is refused.
pub fn classify(header: &tar::Header) -> Result<MemberKind, MemberProblem> {
    use tar::EntryType::*;
    match header.entry_type() {
        Regular | Continuous => Ok(MemberKind::File),
        Directory => Ok(MemberKind::Dir),
        Symlink => {
            let target = header
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Ok(MemberKind::Symlink(target))
        }
        Link => Err(MemberProblem::HardLink),
        Char => Err(MemberProblem::ForbiddenType("character device")),
        Block => Err(MemberProblem::ForbiddenType("block device")),
        Fifo => Err(MemberProblem::ForbiddenType("FIFO")),
        GNUSparse => Err(MemberProblem::ForbiddenType("sparse file")),
        _ => Err(MemberProblem::ForbiddenType("unknown-type")),
    }
}

/// Resolve a symlink target relative to the directory of `member`, staying inside the archive.
pub fn join_link(member: &str, target: &str) -> Result<String, ArchiveError> {
    if target.starts_with('/') {
        return Err(ArchiveError::SymlinkEscape {
            member: member.to_string(),
            target: target.to_string(),
        });
    }
    let mut parts: Vec<&str> = member.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(ArchiveError::SymlinkEscape {
                        member: member.to_string(),
                        target: target.to_string(),
                    });
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Follow symlinks (with loop detection) until a regular file is reached.
///
/// `links` maps a symlink member to its raw target. Symlinked directories are followed too
/// (`a/layer.tar` where `a` is a link), one component at a time. Every path on the way must
/// fit [`MAX_PATH`] and [`MAX_COMPONENTS`], so each hop costs at most a few thousand bytes
/// of work whatever the links (a link may otherwise expand to megabytes on every hop).
pub fn resolve(links: &BTreeMap<String, String>, start: &str) -> Result<String, ArchiveError> {
    fits(start, start)?;
    if links.is_empty() {
        return Ok(start.to_string());
    }
    const MAX_HOPS: usize = 40;
    let mut current = start.to_string();
    for _ in 0..MAX_HOPS {
        match resolve_step(links, &current)? {
            Some(next) => {
                fits(start, &next)?;
                current = next;
            }
            None => return Ok(current),
        }
    }
    Err(ArchiveError::SymlinkLoop {
        member: start.to_string(),
    })
}

/// PATH_MAX on Linux; archive paths beyond it cannot have come from a file system.
pub const MAX_PATH: usize = 4096;
/// Most components in a path that is resolved. Image archives' paths have at most three
/// (`blobs/sha256/<hex>`); the cap bounds the prefixes looked up on each hop.
pub const MAX_COMPONENTS: usize = 64;

/// `path` (reached from `start`) is short enough to resolve.
fn fits(start: &str, path: &str) -> Result<(), ArchiveError> {
    let via = if path == start {
        "the path"
    } else {
        "following its symlinks, the path"
    };
    let detail = if path.len() > MAX_PATH {
        format!("{via} is longer than {MAX_PATH} bytes")
    } else if path.split('/').nth(MAX_COMPONENTS).is_some() {
        format!("{via} has more than {MAX_COMPONENTS} components")
    } else {
        return Ok(());
    };
    Err(ArchiveError::BadMetadata {
        member: start.to_string(),
        detail,
    })
}

/// One hop: if any prefix of `path` is a symlink, rewrite it through the link.
fn resolve_step(
    links: &BTreeMap<String, String>,
    path: &str,
) -> Result<Option<String>, ArchiveError> {
    let mut from = 0;
    loop {
        let end = path[from..].find('/').map_or(path.len(), |i| from + i);
        let prefix = &path[..end];
        if let Some(target) = links.get(prefix) {
            // Before joining: a target alone may be megabytes long.
            if target.len() > MAX_PATH {
                return Err(ArchiveError::BadMetadata {
                    member: prefix.to_string(),
                    detail: format!("symlink target is longer than {MAX_PATH} bytes"),
                });
            }
            let mut resolved = join_link(prefix, target)?;
            resolved.push_str(&path[end..]);
            return Ok(Some(resolved.trim_start_matches('/').to_string()));
        }
        if end == path.len() {
            return Ok(None);
        }
        from = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(normalize_name(b"./a/b/").unwrap(), "a/b");
        assert_eq!(normalize_name(b"a//b").unwrap(), "a/b");
        assert_eq!(normalize_name(b"./").unwrap(), "");
        assert_eq!(
            normalize_name(b"/etc/passwd").unwrap_err().1,
            MemberProblem::AbsolutePath
        );
        assert_eq!(
            normalize_name(b"a/../../x").unwrap_err().1,
            MemberProblem::ParentComponent
        );
        assert_eq!(
            normalize_name(b"a\xff").unwrap_err().1,
            MemberProblem::NonUtf8
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_archive() {
        let mut links = BTreeMap::new();
        links.insert("b/layer.tar".to_string(), "../a/layer.tar".to_string());
        links.insert("c".to_string(), "b".to_string());
        assert_eq!(resolve(&links, "b/layer.tar").unwrap(), "a/layer.tar");
        assert_eq!(resolve(&links, "c/layer.tar").unwrap(), "a/layer.tar");
        assert_eq!(resolve(&links, "a/layer.tar").unwrap(), "a/layer.tar");
    }

    #[test]
    fn symlink_escapes_and_loops_are_refused() {
        let mut links = BTreeMap::new();
        links.insert("x/layer.tar".to_string(), "../../etc/passwd".to_string());
        links.insert("y/layer.tar".to_string(), "/etc/passwd".to_string());
        links.insert("p".to_string(), "q".to_string());
        links.insert("q".to_string(), "p".to_string());
        assert!(matches!(
            resolve(&links, "x/layer.tar"),
            Err(ArchiveError::SymlinkEscape { .. })
        ));
        assert!(matches!(
            resolve(&links, "y/layer.tar"),
            Err(ArchiveError::SymlinkEscape { .. })
        ));
        assert!(matches!(
            resolve(&links, "p"),
            Err(ArchiveError::SymlinkLoop { .. })
        ));
    }

    fn detail(r: Result<String, ArchiveError>) -> String {
        match r {
            Err(ArchiveError::BadMetadata { detail, .. }) => detail,
            r => panic!("expected BadMetadata, got {r:?}"),
        }
    }

    /// A link that grows the path on every hop is refused on the hop that passes the limit,
    /// not after 40 hops of megabytes.
    #[test]
    fn the_path_limits_hold_after_every_hop() {
        // `x -> x/x/…`: each hop adds 2 KiB.
        let mut links = BTreeMap::new();
        links.insert("x".to_string(), vec!["x"; 1000].join("/"));
        assert_eq!(
            detail(resolve(&links, "x/layer.tar")),
            "following its symlinks, the path has more than 64 components"
        );
        // Few components, each long: `l -> l/aaa…` adds 2 KiB on each hop.
        let mut links = BTreeMap::new();
        links.insert("l".to_string(), format!("l/{}", "a".repeat(2000)));
        assert_eq!(
            detail(resolve(&links, "l/layer.tar")),
            "following its symlinks, the path is longer than 4096 bytes"
        );
        // A target of megabytes is refused before it is joined.
        let mut links = BTreeMap::new();
        links.insert("big".to_string(), "b/".repeat(1 << 20));
        let d = detail(resolve(&links, "big/layer.tar"));
        assert_eq!(d, "symlink target is longer than 4096 bytes");
        // The start itself.
        let deep = vec!["d"; 65].join("/");
        assert_eq!(
            detail(resolve(&BTreeMap::new(), &deep)),
            "the path has more than 64 components"
        );
        assert_eq!(
            resolve(&BTreeMap::new(), &vec!["d"; 64].join("/"))
                .unwrap()
                .len(),
            127
        );
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let name = "n/".repeat(100_000) + "layer.tar";
        let e = ArchiveError::ForbiddenMember {
            member: name.clone(),
            problem: MemberProblem::ParentComponent,
        };
        let msg = e.to_string();
        assert!(msg.len() < 300, "{} bytes", msg.len());
        assert!(msg.contains("(200009 bytes)"), "{msg}");
        let e = ArchiveError::MissingMember {
            member: name.clone(),
            referrer: name,
        };
        assert!(e.to_string().len() < 600);
    }
}
