//! An uncompressed layer member of a seekable archive, memory-mapped and handed on in slices
//! with no copy. Comparing a registry blob with the archive's layer ([`super::reuse`]) read the
//! archive through `read(2)` and a buffer: two copies of every byte, measured at a third of the
//! CPU of a push whose layers the registry already holds. A mapping hashes the page cache's
//! bytes where they are and lends them to the comparer.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::codec::{CHUNK, Codec};
use super::layer::{LayerError, LayerFacts};
use super::progress::Progress;
use crate::archive::digest;

/// Bytes mapped at a time.
const WINDOW: usize = 4 * CHUNK;

/// Where an uncompressed layer member lies in the archive file.
#[derive(Debug, Clone)]
pub(super) struct MappedMember {
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
    pub progress: Arc<Progress>,
}

impl MappedMember {
    /// The archive, checked to hold the whole member.
    fn open(&self) -> io::Result<File> {
        let file = File::open(&self.path)?;
        let end = self.offset.checked_add(self.size);
        if end.is_none_or(|end| end > file.metadata().map(|m| m.len()).unwrap_or(0)) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive is shorter than its index says",
            ));
        }
        Ok(file)
    }

    /// `len` bytes of the member from `at` on, mapped read-only. The mapping goes away with the
    /// last slice of it: a window at a time keeps the pages counted in RSS (and charged to a
    /// Pod's memory) to the few windows in flight.
    fn window(&self, file: &File, at: u64, len: usize) -> io::Result<Bytes> {
        // SAFETY: the mapping is read-only and private to this process; it is only unsound
        // if another process truncates or rewrites the archive while it is mapped (the read
        // then faults or sees the new bytes). An archive changing under an import is refused
        // for every other read too (its members' digests no longer match), and the
        // documentation asks that an archive is not changed while it is imported.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(self.offset + at)
                .len(len)
                .map(file)?
        };
        // Read once, front to back: let the kernel read ahead and drop pages behind.
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Bytes::from_owner(map))
    }

    /// Hash the member (an uncompressed layer: its digest is its diff_id) and hand it to `tap`
    /// in [`CHUNK`] slices of the mapping.
    pub(super) fn read(
        &self,
        member: &str,
        tap: &mut dyn FnMut(Bytes) -> io::Result<()>,
    ) -> Result<LayerFacts, LayerError> {
        let file = self.open().map_err(LayerError::Read)?;
        let mut hasher = Sha256::new();
        let mut at = 0u64;
        while at < self.size {
            let len = (self.size - at).min(WINDOW as u64) as usize;
            let window = self.window(&file, at, len).map_err(LayerError::Read)?;
            at += len as u64;
            for start in (0..len).step_by(CHUNK) {
                let piece = window.slice(start..len.min(start + CHUNK));
                hasher.update(&piece);
                self.progress.add(piece.len() as u64);
                tap(piece).map_err(LayerError::Sink)?;
            }
        }
        let diff_id = digest::finish(hasher);
        Ok(LayerFacts {
            member: member.to_string(),
            stored_digest: diff_id.clone(),
            stored_size: self.size,
            stored_codec: Codec::None,
            diff_id,
            uncompressed_size: self.size,
            pushed_codec: Codec::None,
            as_stored: true,
            other_encoder: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_member_hashes_and_hands_on_exactly_its_bytes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let head = vec![1u8; 5000];
        let layer: Vec<u8> = (0..2 * WINDOW + CHUNK + 17)
            .map(|i| (i % 253) as u8)
            .collect();
        f.write_all(&head).unwrap();
        f.write_all(&layer).unwrap();
        f.write_all(b"tail").unwrap();
        let m = MappedMember {
            path: f.path().to_path_buf(),
            offset: head.len() as u64,
            size: layer.len() as u64,
            progress: Arc::default(),
        };
        let mut got = Vec::new();
        let facts = m
            .read("layer.tar", &mut |b| {
                assert!(b.len() <= CHUNK);
                got.extend_from_slice(&b);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, layer);
        assert_eq!(facts.diff_id, digest::sha256_of(&layer));
        assert_eq!(facts.stored_digest, facts.diff_id);
        assert_eq!(facts.uncompressed_size, layer.len() as u64);
        assert_eq!(m.progress.snapshot().0, layer.len() as u64);

        // A member the file does not hold all of is an error, not a fault.
        let short = MappedMember {
            size: layer.len() as u64 + 10,
            ..m.clone()
        };
        let e = short.read("layer.tar", &mut |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
        // An empty member is an empty layer.
        let empty = MappedMember { size: 0, ..m };
        let facts = empty.read("empty.tar", &mut |_| Ok(())).unwrap();
        assert_eq!(facts.diff_id, digest::sha256_of(b""));
    }
}
