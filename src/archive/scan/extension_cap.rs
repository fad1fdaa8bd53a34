//! A reader under tar-rs that refuses oversized extension entries before tar-rs reads them.
//!
//! tar-rs reads the data of GNU long-name (`L`), long-link (`K`) and PAX (`x`) entries whole
//! (`read_to_end`, sized by the archive's own header) before it hands over the member they
//! describe, and it reads every extended sparse-map block of a GNU sparse member into a list.
//! A few hundred kilobytes of gzip can thus become gigabytes in memory before any check of
//! this project runs. This reader follows the archive header by header, with tar-rs's own
//! rules for where the next header is (its header parser, and the PAX `size` override), and
//! refuses such an entry above [`EXTENSION_CAP`] (or an extended sparse map) as soon as its
//! header is read, before a byte of its data is.

use std::io::{self, Read, Seek, SeekFrom};

/// Largest GNU long name/link or PAX header accepted: an image archive's names are a few
/// hundred bytes (and no path beyond `MAX_PATH` is ever resolved).
pub const EXTENSION_CAP: u64 = 64 << 10;
const BLOCK: u64 = 512;

/// Why the reader stopped: carried inside the `io::Error` tar-rs passes on.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{what} of {size} bytes")]
    TooLarge { what: &'static str, size: u64 },
    #[error("sparse member {member} with an extended sparse map")]
    ExtendedSparse { member: String },
}

impl Refusal {
    /// The refusal inside an error from tar-rs, if this reader caused it.
    pub fn of(e: &io::Error) -> Option<&Refusal> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Refusal>())
    }
}

pub struct ExtensionCap<R> {
    inner: R,
    /// Position in the archive of the next byte handed to tar-rs.
    pos: u64,
    /// Where the next header starts; `None` once headers are no longer followed: after the
    /// end of the archive, or a header tar-rs refuses itself (a bad checksum or size), or a
    /// sparse member (which the scan refuses as soon as tar-rs hands it over).
    next_header: Option<u64>,
    /// Read ahead of tar-rs: a header and, for an extension entry, its data (padded).
    ahead: Vec<u8>,
    ahead_at: usize,
    /// The PAX `size` for the next member, as tar-rs will apply it.
    pax_size: Option<u64>,
    /// The GNU long name for the next member (for the sparse refusal's message).
    long_name: Option<Vec<u8>>,
}

impl<R: Read> ExtensionCap<R> {
    /// `inner` must be at the start of the archive (as tar-rs assumes too).
    pub fn new(inner: R) -> Self {
        ExtensionCap {
            inner,
            pos: 0,
            next_header: Some(0),
            ahead: Vec::new(),
            ahead_at: 0,
            pax_size: None,
            long_name: None,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the header at `pos` (and the data of an extension entry) into `ahead`.
    fn read_ahead(&mut self) -> io::Result<()> {
        self.ahead.clear();
        self.ahead_at = 0;
        self.next_header = None;
        fill(&mut self.inner, &mut self.ahead, BLOCK)?;
        let Ok(block) = <&[u8; BLOCK as usize]>::try_from(&self.ahead[..]) else {
            return Ok(()); // the input ends: tar-rs says so
        };
        if block.iter().all(|b| *b == 0) {
            return Ok(()); // the end of the archive: tar-rs reads no further header
        }
        let header = tar::Header::from_byte_slice(block);
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(8 * 32, |a, b| a + u32::from(*b));
        let Ok(size) = header.entry_size() else {
            return Ok(());
        };
        if header.cksum().ok() != Some(sum) {
            return Ok(());
        }
        let kind = header.entry_type();
        let what = if kind.is_gnu_longname() {
            Some("a GNU long-name header")
        } else if kind.is_gnu_longlink() {
            Some("a GNU long-link header")
        } else if kind.is_pax_local_extensions() {
            Some("a PAX header")
        } else if kind.is_pax_global_extensions() {
            Some("a PAX global header")
        } else {
            None
        };
        // tar-rs reads `L`, `K` and `x` data itself only with a ustar or GNU magic; otherwise
        // it hands the entry over, and the scan refuses its type.
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let data_at = self.pos + BLOCK;
        if let Some(what) = what {
            if size > EXTENSION_CAP {
                return Err(io::Error::other(Refusal::TooLarge { what, size }));
            }
            if recognized && !kind.is_pax_global_extensions() {
                let padded = size.div_ceil(BLOCK) * BLOCK;
                fill(&mut self.inner, &mut self.ahead, padded)?;
                let data = &self.ahead[BLOCK as usize..];
                let data = &data[..data.len().min(size as usize)];
                if kind.is_pax_local_extensions() {
                    self.pax_size = pax_size(data);
                } else if kind.is_gnu_longname() {
                    self.long_name = Some(data.to_vec());
                }
                self.next_header = Some(data_at + padded);
                return Ok(());
            }
            // Handed over to the caller: the PAX size and long name are dropped, unused.
            self.pax_size = None;
            self.long_name = None;
            self.next_header = Some(data_at + size.div_ceil(BLOCK) * BLOCK);
            return Ok(());
        }
        let size = self.pax_size.take().unwrap_or(size);
        let long_name = self.long_name.take();
        if kind.is_gnu_sparse() {
            // Byte 482 of a GNU header: more sparse-map blocks follow, each read into a list
            // by tar-rs; an ordinary one (at most four extents) is refused by the scan.
            if header.as_gnu().is_some() && block[482] != 0 {
                let name = long_name.unwrap_or_else(|| header.path_bytes().into_owned());
                return Err(io::Error::other(Refusal::ExtendedSparse {
                    member: String::from_utf8_lossy(&name).into_owned(),
                }));
            }
            return Ok(());
        }
        // An overflow here is tar-rs's "size overflow" error.
        self.next_header = size
            .checked_add(BLOCK - 1)
            .and_then(|s| data_at.checked_add(s / BLOCK * BLOCK));
        Ok(())
    }
}

/// tar-rs's rule for the PAX `size` key: the first `size` record, if every record up to it is
/// well-formed and its value a number.
fn pax_size(data: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(data) {
        let record = record.ok()?;
        if record.key() != Ok("size") {
            continue;
        }
        return record.value().ok()?.parse().ok();
    }
    None
}

/// Appends up to `n` bytes of `r` to `buf` (fewer only at the end of the input).
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, n: u64) -> io::Result<()> {
    r.take(n).read_to_end(buf).map(|_| ())
}

impl<R: Read> Read for ExtensionCap<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.ahead_at == self.ahead.len() && self.next_header == Some(self.pos) {
            self.read_ahead()?;
        }
        if self.ahead_at < self.ahead.len() {
            let n = out.len().min(self.ahead.len() - self.ahead_at);
            out[..n].copy_from_slice(&self.ahead[self.ahead_at..self.ahead_at + n]);
            self.ahead_at += n;
            self.pos += n as u64;
            return Ok(n);
        }
        // Member data: up to the next header, never past it.
        let limit = match self.next_header {
            Some(h) => out
                .len()
                .min(usize::try_from(h - self.pos).unwrap_or(usize::MAX)),
            None => out.len(),
        };
        let n = self.inner.read(&mut out[..limit])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// tar-rs's seekable reader skips member data forward to the next header, never further
/// and never back.
impl<R: Read + Seek> Seek for ExtensionCap<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::Start(s) => Some(s),
            SeekFrom::End(_) => None,
        };
        let target = target
            .filter(|t| *t >= self.pos && self.next_header.is_none_or(|h| *t <= h))
            .ok_or_else(|| io::Error::other("the tar reader seeked outside the member"))?;
        let left = (self.ahead.len() - self.ahead_at) as u64;
        let skip = target - self.pos;
        if skip <= left {
            self.ahead_at += skip as usize;
        } else {
            // The inner reader is `left` bytes ahead of `pos`.
            let d = i64::try_from(skip - left).map_err(io::Error::other)?;
            self.inner.seek(SeekFrom::Current(d))?;
            self.ahead.clear();
            self.ahead_at = 0;
        }
        self.pos = target;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for `kind` claiming `size` bytes (checksum set).
    fn header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(mut data: Vec<u8>) -> Vec<u8> {
        data.resize(data.len().div_ceil(512) * 512, 0);
        data
    }

    fn pax(records: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body = format!(" {k}={v}\n");
            // The length counts its own digits.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        out
    }

    fn names(bytes: &[u8]) -> io::Result<Vec<String>> {
        let mut a = tar::Archive::new(ExtensionCap::new(bytes));
        let mut out = Vec::new();
        for e in a.entries()? {
            let mut e = e?;
            out.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
            io::copy(&mut e, &mut io::sink())?;
        }
        Ok(out)
    }

    #[test]
    fn long_names_pax_sizes_and_members_pass_through_unchanged() {
        let long = "d/".repeat(150) + "layer.tar";
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        t.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        t.append_data(&mut h, "short", &b"xyz"[..]).unwrap();
        let mut bytes = t.into_inner().unwrap();
        // A PAX header whose `size` overrides the next header's (0 there, 600 here).
        let records = pax(&[("path", "p/q"), ("size", "600")]);
        let mut with_pax = header("pax", tar::EntryType::XHeader, records.len() as u64);
        with_pax.extend(padded(records));
        with_pax.extend(header("ignored", tar::EntryType::Regular, 0));
        with_pax.extend(padded(vec![7; 600]));
        let end = bytes.len() - 1024;
        bytes.splice(end..end, with_pax);
        assert_eq!(names(&bytes).unwrap(), [long.as_str(), "short", "p/q"]);
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_their_data_is_read() {
        for (kind, what) in [
            (tar::EntryType::GNULongName, "a GNU long-name header"),
            (tar::EntryType::GNULongLink, "a GNU long-link header"),
            (tar::EntryType::XHeader, "a PAX header"),
            (tar::EntryType::XGlobalHeader, "a PAX global header"),
        ] {
            // Only the header: reading the claimed data would meet the end of the input.
            let bytes = header("x", kind, 600 << 20);
            let e = names(&bytes).unwrap_err();
            match Refusal::of(&e) {
                Some(Refusal::TooLarge { what: w, size }) => {
                    assert_eq!((*w, *size), (what, 600 << 20))
                }
                r => panic!("{kind:?}: expected TooLarge, got {r:?} ({e})"),
            }
        }
        // At the cap, an entry is read as usual.
        let mut bytes = header("n", tar::EntryType::GNULongName, EXTENSION_CAP);
        bytes.extend(vec![b'a'; EXTENSION_CAP as usize]);
        bytes.extend(header("n", tar::EntryType::Regular, 0));
        bytes.extend([0; 1024]);
        assert_eq!(names(&bytes).unwrap()[0].len(), EXTENSION_CAP as usize);
    }

    #[test]
    fn an_extended_sparse_map_is_refused_naming_the_member() {
        let mut h = header("s/layer.tar", tar::EntryType::GNUSparse, 0);
        h[482] = 1;
        let mut t = tar::Header::from_byte_slice(&h[..512]).clone();
        t.set_cksum();
        let e = names(t.as_bytes()).unwrap_err();
        assert!(
            matches!(Refusal::of(&e), Some(Refusal::ExtendedSparse { member }) if member == "s/layer.tar"),
            "{e}"
        );
    }

    #[test]
    fn the_seekable_reader_follows_the_same_headers() {
        let mut bytes = header("x", tar::EntryType::XHeader, 1 << 20);
        bytes.extend([0; 512]);
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, &bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut a = tar::Archive::new(ExtensionCap::new(&f));
        let Some(Err(e)) = a.entries_with_seek().unwrap().next() else {
            panic!("the oversized PAX header is not refused");
        };
        assert!(
            matches!(Refusal::of(&e), Some(Refusal::TooLarge { .. })),
            "{e}"
        );
        // And a normal archive is indexed as before (data skipped by seeking).
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5000);
        h.set_mode(0o644);
        t.append_data(&mut h, "a", &[1u8; 5000][..]).unwrap();
        h.set_size(3);
        t.append_data(&mut h, "b", &b"xyz"[..]).unwrap();
        let bytes = t.into_inner().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, &bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut a = tar::Archive::new(ExtensionCap::new(&f));
        let mut seen = Vec::new();
        for e in a.entries_with_seek().unwrap() {
            let mut e = e.unwrap();
            seen.push((e.path_bytes().into_owned(), e.raw_file_position()));
            if e.size() == 3 {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                assert_eq!(s, "xyz");
            }
        }
        assert_eq!(
            seen,
            [(b"a".to_vec(), 512), (b"b".to_vec(), 512 + 5120 + 512)]
        );
    }
}
