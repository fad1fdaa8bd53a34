//! Walking a tar archive once: checking every member, keeping the metadata, and handing
//! each possible layer to the caller while it streams (or noting its offset when the archive
//! is a seekable file, so layers can be read later, in parallel).

use std::fs::File;
use std::io::{self, Read};

use super::catalog::{Catalog, METADATA_MEMBER_CAP, Role, looks_like_json, role_of};
use super::error::ArchiveError;
use super::members::{self, MemberKind};

/// What the caller does with a possible layer: read it to the end (or not; the rest is
/// drained and counted here so truncation is always noticed).
pub trait LayerVisitor {
    type Error: From<ArchiveError>;
    fn layer(&mut self, member: &str, size: u64, data: &mut dyn Read) -> Result<(), Self::Error>;
}

/// Reads an archive front to back, never seeking. Returns the catalog and the reader (so
/// the caller can drain it, e.g. to finish hashing the whole input).
pub fn stream<R: Read, V: LayerVisitor>(
    reader: R,
    visitor: &mut V,
) -> Result<(Catalog, R), V::Error> {
    let mut archive = tar::Archive::new(reader);
    let mut catalog = Catalog::default();
    {
        let entries = archive
            .entries()
            .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
        let mut last = String::from("the first header");
        let mut seen_any = false;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_error(e, &last, seen_any))?;
            seen_any = true;
            let Some((name, kind, size)) = admit(&mut catalog, &entry)? else {
                continue;
            };
            last = name.clone();
            if kind != MemberKind::File {
                continue;
            }
            let mut counted = Counted {
                inner: &mut entry,
                n: 0,
            };
            match role_of(&name) {
                Role::Metadata => {
                    catalog.admit_metadata(&name, size)?;
                    let bytes = read_exact_len(&mut counted, size, &name)?;
                    catalog.meta.insert(name.clone(), bytes);
                }
                Role::Blob if size <= METADATA_MEMBER_CAP => {
                    let bytes = read_exact_len(&mut counted, size, &name)?;
                    if looks_like_json(&bytes) && catalog.admit_metadata(&name, size).is_ok() {
                        catalog.meta.insert(name.clone(), bytes);
                    } else {
                        visitor.layer(&name, size, &mut io::Cursor::new(bytes))?;
                    }
                }
                Role::Blob | Role::Layer => visitor.layer(&name, size, &mut counted)?,
                Role::Ignored => {}
            }
            io::copy(&mut counted, &mut io::sink()).map_err(|e| tar_error(e, &name, true))?;
            if counted.n != size {
                return Err(ArchiveError::Truncated { member: name }.into());
            }
        }
        if !seen_any {
            return Err(ArchiveError::NotTar("no tar members in input".into()).into());
        }
    }
    Ok((catalog, archive.into_inner()))
}

/// Indexes a seekable uncompressed tar file: members, metadata bytes and data offsets.
/// Layer data is not read here.
pub fn index(file: &File) -> Result<Catalog, ArchiveError> {
    let len = file.metadata()?.len();
    let mut archive = tar::Archive::new(file);
    let mut catalog = Catalog::default();
    let entries = archive
        .entries_with_seek()
        .map_err(|e| ArchiveError::NotTar(e.to_string()))?;
    let mut last = String::from("the first header");
    let mut seen_any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(e, &last, seen_any))?;
        seen_any = true;
        let offset = entry.raw_file_position();
        let Some((name, kind, size)) = admit(&mut catalog, &entry)? else {
            continue;
        };
        last = name.clone();
        // Seeking past the end succeeds silently; a member must lie inside the file.
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(ArchiveError::Truncated { member: name });
        }
        if kind != MemberKind::File {
            continue;
        }
        catalog.offsets.insert(name.clone(), offset);
        match role_of(&name) {
            Role::Metadata => {
                catalog.admit_metadata(&name, size)?;
                let bytes = read_exact_len(&mut entry, size, &name)?;
                catalog.meta.insert(name, bytes);
            }
            // The whole small blob decides, exactly as in `stream` (leading whitespace is
            // valid JSON): both readers must agree on what is metadata.
            Role::Blob if size <= METADATA_MEMBER_CAP => {
                let bytes = read_exact_len(&mut entry, size, &name)?;
                if looks_like_json(&bytes) && catalog.admit_metadata(&name, size).is_ok() {
                    catalog.meta.insert(name, bytes);
                }
            }
            _ => {}
        }
    }
    if !seen_any {
        return Err(ArchiveError::NotTar("no tar members in input".into()));
    }
    Ok(catalog)
}

/// Check one member and record it. `None` for members that carry nothing (`./`, PAX globals).
fn admit<R: Read>(
    catalog: &mut Catalog,
    entry: &tar::Entry<'_, R>,
) -> Result<Option<(String, MemberKind, u64)>, ArchiveError> {
    if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
        return Ok(None);
    }
    let raw_name = entry.path_bytes();
    let name = members::normalize_name(&raw_name)
        .map_err(|(member, problem)| ArchiveError::ForbiddenMember { member, problem })?;
    let kind = match members::classify(entry.header()) {
        Ok(MemberKind::Symlink(_)) => {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            MemberKind::Symlink(target)
        }
        Ok(kind) => kind,
        Err(problem) => {
            return Err(ArchiveError::ForbiddenMember {
                member: String::from_utf8_lossy(&raw_name).into_owned(),
                problem,
            });
        }
    };
    if name.is_empty() {
        return Ok(None);
    }
    let size = if kind == MemberKind::File {
        entry.size()
    } else {
        0
    };
    catalog.add(&name, kind.clone(), size)?;
    Ok(Some((name, kind, size)))
}

fn tar_error(e: io::Error, last: &str, seen_any: bool) -> ArchiveError {
    // The tar crate's messages can quote raw header bytes: never echo them.
    let msg = e.to_string();
    let header_problem =
        msg.contains("checksum") || msg.contains("numeric field") || msg.contains("header");
    if !seen_any {
        return ArchiveError::NotTar(if header_problem {
            "the input does not start with a tar header".into()
        } else {
            "the input ended before the first tar header".into()
        });
    }
    if header_problem {
        ArchiveError::NotTar(format!("corrupt tar header after {last}"))
    } else {
        ArchiveError::Truncated {
            member: last.to_string(),
        }
    }
}

/// Read exactly `size` bytes (size already checked against a cap by the caller).
fn read_exact_len(r: &mut dyn Read, size: u64, name: &str) -> Result<Vec<u8>, ArchiveError> {
    let mut buf = Vec::with_capacity(size as usize);
    r.take(size)
        .read_to_end(&mut buf)
        .map_err(|_| ArchiveError::Truncated {
            member: name.into(),
        })?;
    if buf.len() as u64 != size {
        return Err(ArchiveError::Truncated {
            member: name.into(),
        });
    }
    Ok(buf)
}

/// Counts bytes read through it.
pub struct Counted<'a, R: Read + ?Sized> {
    pub inner: &'a mut R,
    pub n: u64,
}

impl<R: Read + ?Sized> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}
