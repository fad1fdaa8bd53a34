//! Decoding the chunked gzip that [`super::codec`] writes (one independent member per
//! [`CHUNK`] input bytes) member by member with libdeflate. Reading a layer blob back from the
//! registry ([`super::reuse`]) is dominated by inflating it; libdeflate's whole-buffer decoder
//! inflates about 1.6x faster than a streaming one (zlib-rs) on layer data, measured here.
//!
//! Only members of this codec's shape are read: each decodes to at most [`CHUNK`] bytes from
//! at most [`MEMBER_CAP`] compressed bytes. Anything else (a single large member from another
//! encoder, trailing bytes that are not a member) is [`MemberError::NotChunked`]: such a blob
//! is not one this import's encoder wrote, so it is not reused, and memory stays bounded.

use std::io::{self, Read};
use std::ptr::NonNull;

use super::codec::CHUNK;

/// The largest compressed member this codec writes: libdeflate's worst case for [`CHUNK`]
/// input is a few bytes per 64 KiB block above the input size; this leaves room to spare.
pub(super) const MEMBER_CAP: usize = CHUNK + (CHUNK >> 4);

/// Compressed bytes read at a time, and held at most: a whole member, a read, and room to
/// consume a few members between moves of the rest to the front.
const READ: usize = 256 << 10;
const WINDOW: usize = 4 * MEMBER_CAP;

/// Why a blob is not a chunked gzip this codec wrote.
#[derive(Debug, thiserror::Error)]
pub(super) enum MemberError {
    #[error("reading it failed: {0}")]
    Read(#[from] io::Error),
    #[error(
        "it is not gzip in this encoder's chunking at byte {at} (not a gzip member, or one decoding to more than 1 MiB)"
    )]
    NotChunked { at: u64 },
}

/// The members of a chunked gzip stream, decoded one at a time.
pub(super) struct Members<R> {
    src: R,
    /// Compressed bytes read ahead; `window[start..]` are not decoded yet.
    window: Vec<u8>,
    start: usize,
    eof: bool,
    /// Compressed bytes decoded so far (for messages).
    consumed: u64,
    out: Vec<u8>,
    decoder: Decoder,
}

impl<R: Read> Members<R> {
    pub(super) fn new(src: R) -> Self {
        Members {
            src,
            window: Vec::with_capacity(WINDOW),
            start: 0,
            eof: false,
            consumed: 0,
            out: vec![0; CHUNK],
            decoder: Decoder::new(),
        }
    }

    /// The next member's decoded bytes; None after the last member.
    pub(super) fn next_member(&mut self) -> Result<Option<&[u8]>, MemberError> {
        self.fill()?;
        let pending = &self.window[self.start..];
        if pending.is_empty() {
            return Ok(None);
        }
        let (used, n) = self
            .decoder
            .member(pending, &mut self.out)
            .ok_or(MemberError::NotChunked { at: self.consumed })?;
        self.start += used;
        self.consumed += used as u64;
        Ok(Some(&self.out[..n]))
    }

    /// Reads until a whole member can be in the window (or the input ends).
    fn fill(&mut self) -> io::Result<()> {
        while self.window.len() - self.start < MEMBER_CAP && !self.eof {
            // Move what is left to the front only when no read fits behind it: once every few
            // members rather than once each (the moves were a tenth of a read-back's CPU).
            if self.window.capacity() - self.window.len() < READ {
                self.window.drain(..self.start);
                self.start = 0;
            }
            // Straight into the window (a read this large bypasses the caller's buffer).
            let len = self.window.len();
            self.window.resize(len + READ, 0);
            let read = self.src.read(&mut self.window[len..]);
            self.window.truncate(len + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A libdeflate decompressor (not shared between threads: owned by one [`Members`]).
struct Decoder(NonNull<libdeflate_sys::libdeflate_decompressor>);

impl Decoder {
    fn new() -> Self {
        // SAFETY: no preconditions; a null result (out of memory) is checked.
        let p = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        Decoder(NonNull::new(p).expect("libdeflate could not allocate a decompressor"))
    }

    /// Decodes the gzip member at the start of `input` into `out`: (compressed bytes used,
    /// bytes written). None when it is not a whole member whose output fits `out`.
    fn member(&mut self, input: &[u8], out: &mut [u8]) -> Option<(usize, usize)> {
        let (mut used, mut written) = (0usize, 0usize);
        // SAFETY: both slices are valid for the lengths given, libdeflate reads at most
        // `input.len()` and writes at most `out.len()` bytes, and the decompressor is ours
        // alone (&mut self).
        let r = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut used,
                &mut written,
            )
        };
        (r == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS && used > 0)
            .then_some((used, written))
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor and freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::codec::{ChunkEncoder, Codec};

    fn sample(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 4 == 0 {
                    x as u8
                } else {
                    b'a' + (x % 5) as u8
                }
            })
            .collect()
    }

    fn chunked(data: &[u8]) -> Vec<u8> {
        let mut e = ChunkEncoder::new(Codec::Gzip);
        let mut out = Vec::new();
        for b in e.push(data).into_iter().chain(e.finish()) {
            out.extend_from_slice(&b);
        }
        out
    }

    fn decode_all(blob: &[u8]) -> Result<Vec<u8>, MemberError> {
        // Reads in small pieces, as a network stream does.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7_777);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut m = Members::new(Trickle(blob));
        let mut back = Vec::new();
        while let Some(b) = m.next_member()? {
            back.extend_from_slice(b);
        }
        Ok(back)
    }

    #[test]
    fn this_codecs_members_decode_to_the_input() {
        for n in [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 4321] {
            let data = sample(n);
            assert_eq!(decode_all(&chunked(&data)).unwrap(), data, "{n} bytes");
        }
    }

    #[test]
    fn a_single_large_member_or_trailing_garbage_is_not_this_codecs() {
        let data = sample(3 * CHUNK);
        let mut one = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut one, &data).unwrap();
        let one = one.finish().unwrap();
        assert!(matches!(
            decode_all(&one),
            Err(MemberError::NotChunked { at: 0 })
        ));

        let mut tail = chunked(&sample(CHUNK + 10));
        let good = tail.len() as u64;
        tail.extend_from_slice(b"not gzip");
        match decode_all(&tail) {
            Err(MemberError::NotChunked { at }) => assert_eq!(at, good),
            other => panic!("trailing bytes accepted: {other:?}"),
        }
    }
}
