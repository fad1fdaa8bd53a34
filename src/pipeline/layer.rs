//! One layer, one pass: hash the bytes as stored, decompress them to check the diff_id, and
//! produce the registry blob (the stored bytes, or a fresh encoding) while they stream.

use std::io::{self, BufReader, Read};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::codec::{CHUNK, ChunkEncoder, Codec, CompressionPolicy};
use crate::archive::{ArchiveError, digest};

/// What reading a layer established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFacts {
    pub member: String,
    /// sha256 and size of the bytes as stored in the archive.
    pub stored_digest: String,
    pub stored_size: u64,
    pub stored_codec: Codec,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    pub uncompressed_size: u64,
    /// Codec of the blob sent to the registry, and whether it is the stored bytes unchanged.
    pub pushed_codec: Codec,
    pub as_stored: bool,
    /// The blob is one another tool encoded (reused with `Reuse::AnyEncoding`).
    pub other_encoder: bool,
}

/// Where produced blob bytes go. An error stops the layer (the upload failed).
pub type Emit<'a> = dyn FnMut(Bytes) -> io::Result<()> + 'a;

/// Stored bytes kept for the blob are handed on once this many are held, whether or not they
/// produced any output yet: input that decompresses to nothing (empty deflate blocks, empty
/// gzip members, zstd skippable frames) must not grow the copy to the member's size.
const CAPTURE_LIMIT: usize = CHUNK;
/// Capacity of the buffer between the member and the decoder: the most one read adds.
const READ_BUFFER: usize = 256 << 10;

/// Wraps the member's bytes: hashes and counts them, and keeps a copy when they are
/// pushed as stored, handing it to `sink` at most `CAPTURE_LIMIT` (plus one read) at a time.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    size: u64,
    capture: Option<Vec<u8>>,
    /// Where the copy goes; `None` until the layer is known to be pushed as stored.
    sink: Option<&'a mut Emit<'a>>,
    /// Why `sink` refused bytes handed on from inside `read`: the upload stopped, not the
    /// archive, whatever the decoder makes of the error it is given.
    sink_error: Option<io::Error>,
}

impl Tee<'_> {
    /// Hand the copy kept so far to the sink.
    fn flush(&mut self) -> io::Result<()> {
        let (Some(c), Some(sink)) = (&mut self.capture, &mut self.sink) else {
            return Ok(());
        };
        if c.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(c, Vec::with_capacity(CAPTURE_LIMIT + READ_BUFFER));
        sink(Bytes::from(chunk)).map_err(|e| {
            let message = e.to_string();
            self.sink_error = Some(e);
            io::Error::other(message)
        })
    }

    /// The error to report for `e`, met while reading through this tee.
    fn failure(&mut self, e: io::Error, read: impl FnOnce(io::Error) -> LayerError) -> LayerError {
        match self.sink_error.take() {
            Some(sink) => LayerError::Sink(sink),
            None => read(e),
        }
    }
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(&buf[..n]);
            if c.len() >= CAPTURE_LIMIT {
                self.flush()?;
            }
        }
        Ok(n)
    }
}

enum Decoded<'a> {
    Plain(Box<BufReader<Tee<'a>>>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<Tee<'a>>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Tee<'a>>>>),
}

impl<'a> Decoded<'a> {
    fn tee(&mut self) -> &mut BufReader<Tee<'a>> {
        match self {
            Decoded::Plain(r) => r,
            Decoded::Gzip(r) => r.get_mut(),
            Decoded::Zstd(r) => r.get_mut(),
        }
    }
}

impl Read for Decoded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Plain(r) => r.read(buf),
            Decoded::Gzip(r) => r.read(buf),
            Decoded::Zstd(r) => r.read(buf),
        }
    }
}

/// Sniff a stored codec from the first bytes of a reader without losing them.
fn sniff(reader: &mut BufReader<Tee<'_>>) -> io::Result<Codec> {
    use io::BufRead;
    let head = reader.fill_buf()?;
    Ok(Codec::sniff(head))
}

/// Where the uncompressed bytes of a layer that is only read go, in order.
pub type Tap<'a> = dyn FnMut(&[u8]) -> io::Result<()> + 'a;

/// Read a layer to its end. `emit` receives the registry blob in order.
pub fn process(
    member: &str,
    data: &mut dyn Read,
    policy: CompressionPolicy,
    emit: &mut Emit<'_>,
) -> Result<LayerFacts, LayerError> {
    run(member, data, Some((policy, emit)), &mut |_| Ok(()))
}

/// Read a layer to its end for its facts only, producing no blob: `tap` receives the
/// uncompressed bytes (an error from it stops the layer as [`LayerError::Sink`]).
/// `pushed_codec`/`as_stored` of the result describe the stored bytes.
pub fn read(
    member: &str,
    data: &mut dyn Read,
    tap: &mut Tap<'_>,
) -> Result<LayerFacts, LayerError> {
    run(member, data, None, tap)
}

fn run(
    member: &str,
    data: &mut dyn Read,
    blob: Option<(CompressionPolicy, &mut Emit<'_>)>,
    tap: &mut Tap<'_>,
) -> Result<LayerFacts, LayerError> {
    // Capture from the first byte: sniffing already reads a buffer's worth.
    let tee = Tee {
        inner: data,
        hasher: Sha256::new(),
        size: 0,
        capture: blob
            .is_some()
            .then(|| Vec::with_capacity(CAPTURE_LIMIT + READ_BUFFER)),
        sink: None,
        sink_error: None,
    };
    let mut buffered = BufReader::with_capacity(READ_BUFFER, tee);
    let stored_codec = sniff(&mut buffered).map_err(LayerError::Read)?;
    let (pushed_codec, as_stored) = match &blob {
        Some((policy, _)) => policy.plan(stored_codec),
        None => (stored_codec, true),
    };
    // The blob is either the stored bytes, handed on by the tee as they are read, or a fresh
    // encoding of the decompressed bytes (or nothing, when the layer is only read).
    let mut encoder = match blob {
        Some((_, emit)) if as_stored => {
            buffered.get_mut().sink = Some(emit);
            None
        }
        Some((_, emit)) => {
            buffered.get_mut().capture = None;
            Some((ChunkEncoder::new(pushed_codec), emit))
        }
        None => None,
    };
    let bad = |e: io::Error| {
        LayerError::Archive(ArchiveError::BadCompression {
            member: member.into(),
            detail: e.to_string(),
        })
    };
    let mut decoded = match stored_codec {
        Codec::None => Decoded::Plain(Box::new(buffered)),
        Codec::Gzip => Decoded::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered))),
        Codec::Zstd => Decoded::Zstd(Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(bad)?,
        )),
    };
    let mut diff = Sha256::new();
    let mut uncompressed_size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match read_full(&mut decoded, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                return Err(decoded.tee().get_mut().failure(e, |e| {
                    if stored_codec == Codec::None {
                        LayerError::Read(e)
                    } else {
                        bad(e)
                    }
                }));
            }
        };
        if n == 0 {
            break;
        }
        // Uncompressed layers: the stored digest is the diff_id; hash the bytes once.
        if stored_codec != Codec::None {
            diff.update(&buf[..n]);
        }
        uncompressed_size += n as u64;
        tap(&buf[..n]).map_err(LayerError::Sink)?;
        match &mut encoder {
            Some((enc, emit)) => {
                for out in enc.push(&buf[..n]) {
                    emit(out).map_err(LayerError::Sink)?;
                }
            }
            None => {
                let tee = decoded.tee().get_mut();
                if let Err(e) = tee.flush() {
                    return Err(tee.failure(e, LayerError::Sink));
                }
            }
        }
    }
    // Whatever follows the compressed stream (padding) is part of the stored blob.
    if let Err(e) = io::copy(decoded.tee(), &mut io::sink()) {
        return Err(decoded.tee().get_mut().failure(e, LayerError::Read));
    }
    match &mut encoder {
        Some((enc, emit)) => {
            for out in enc.finish() {
                emit(out).map_err(LayerError::Sink)?;
            }
        }
        None => {
            let tee = decoded.tee().get_mut();
            if let Err(e) = tee.flush() {
                return Err(tee.failure(e, LayerError::Sink));
            }
        }
    }
    let tee = decoded.tee().get_mut();
    let stored_digest = digest::finish(std::mem::take(&mut tee.hasher));
    let diff_id = if stored_codec == Codec::None {
        stored_digest.clone()
    } else {
        digest::finish(diff)
    };
    Ok(LayerFacts {
        member: member.to_string(),
        stored_digest,
        stored_size: tee.size,
        stored_codec,
        diff_id,
        uncompressed_size,
        pushed_codec,
        as_stored,
        other_encoder: false,
    })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("reading archive: {0}")]
    Read(io::Error),
    /// The consumer (upload) stopped; its own error says why.
    #[error("upload stopped: {0}")]
    Sink(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_bytes() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![7u8; 3 * CHUNK + 99];
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "big.bin", &data[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn run(stored: &[u8], policy: CompressionPolicy) -> (LayerFacts, Vec<u8>) {
        let mut out = Vec::new();
        let facts = process("l", &mut &stored[..], policy, &mut |b: Bytes| {
            out.extend_from_slice(&b);
            Ok(())
        })
        .unwrap();
        (facts, out)
    }

    #[test]
    fn uncompressed_layer_is_hashed_and_encoded() {
        let tar = tar_bytes();
        let (facts, out) = run(&tar, CompressionPolicy::default());
        assert_eq!(facts.diff_id, digest::sha256_of(&tar));
        assert_eq!(facts.stored_digest, facts.diff_id);
        assert_eq!(facts.pushed_codec, Codec::Gzip);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, tar);
    }

    #[test]
    fn compressed_layer_is_pushed_as_stored_unless_forced() {
        let tar = tar_bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let (facts, out) = run(&gz, CompressionPolicy::default());
        assert!(facts.as_stored);
        assert_eq!(out, gz);
        assert_eq!(facts.stored_digest, digest::sha256_of(&gz));
        assert_eq!(facts.diff_id, digest::sha256_of(&tar));
        let (facts, out) = run(&gz, CompressionPolicy::Force(Codec::Zstd));
        assert!(!facts.as_stored);
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), tar);
    }

    #[test]
    fn corrupt_gzip_is_a_clear_error() {
        let mut bad = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        bad.extend_from_slice(&[0xde; 100]);
        let r = process(
            "x/layer.tar",
            &mut &bad[..],
            CompressionPolicy::default(),
            &mut |_| Ok(()),
        );
        assert!(
            matches!(
                r,
                Err(LayerError::Archive(ArchiveError::BadCompression { .. }))
            ),
            "{r:?}"
        );
    }

    /// Feeds `stored` to `process` and returns the most stored bytes that were read but not
    /// yet handed to `emit` at any point, checking the blob is the stored bytes unchanged.
    fn most_held(stored: &[u8]) -> usize {
        use std::cell::Cell;
        struct Counting<'a> {
            data: &'a [u8],
            served: &'a Cell<usize>,
            emitted: &'a Cell<usize>,
            most: &'a Cell<usize>,
        }
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.data.read(buf)?;
                self.served.set(self.served.get() + n);
                let held = self.served.get() - self.emitted.get();
                self.most.set(self.most.get().max(held));
                Ok(n)
            }
        }
        let (served, emitted, most) = (Cell::new(0), Cell::new(0), Cell::new(0));
        let mut reader = Counting {
            data: stored,
            served: &served,
            emitted: &emitted,
            most: &most,
        };
        let mut out = Vec::new();
        let facts = process(
            "l",
            &mut reader,
            CompressionPolicy::default(),
            &mut |b: Bytes| {
                emitted.set(emitted.get() + b.len());
                out.extend_from_slice(&b);
                Ok(())
            },
        )
        .unwrap();
        assert!(facts.as_stored);
        assert_eq!(facts.uncompressed_size, 0);
        assert_eq!(facts.stored_size, stored.len() as u64);
        assert_eq!(facts.stored_digest, digest::sha256_of(stored));
        assert!(out == stored, "the blob is the stored bytes");
        most.get()
    }

    const HOSTILE: usize = 24 << 20;
    const BOUND: usize = CAPTURE_LIMIT + READ_BUFFER;

    #[test]
    fn empty_gzip_members_do_not_accumulate() {
        // 20 bytes each: header, an empty final fixed-Huffman block, crc32 and size of nothing.
        let member = [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let stored = member.repeat(HOSTILE / member.len());
        let most = most_held(&stored);
        assert!(most <= BOUND, "held {most} bytes of {}", stored.len());
    }

    #[test]
    fn empty_deflate_blocks_do_not_accumulate() {
        // One member whose deflate stream is empty stored blocks (5 bytes each).
        let mut stored = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        stored.extend([0u8, 0, 0, 0xff, 0xff].repeat(HOSTILE / 5));
        stored.extend([0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        let most = most_held(&stored);
        assert!(most <= BOUND, "held {most} bytes of {}", stored.len());
    }

    #[test]
    fn zstd_skippable_frames_do_not_accumulate() {
        // A real (empty) frame so the stream sniffs as zstd, then skippable frames.
        let mut stored = zstd::encode_all(&[][..], 3).unwrap();
        let payload = 64 << 10;
        let mut frame = vec![0x50, 0x2a, 0x4d, 0x18];
        frame.extend((payload as u32).to_le_bytes());
        frame.extend(vec![0xabu8; payload]);
        stored.extend(frame.repeat(HOSTILE / frame.len()));
        let most = most_held(&stored);
        assert!(most <= BOUND, "held {most} bytes of {}", stored.len());
    }

    #[test]
    fn upload_stopping_inside_the_decoder_is_a_sink_error() {
        // The stored bytes are handed on from inside the decoder's read: a refusal there is
        // the upload's failure, not bad compression.
        let mut stored = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        stored.extend([0u8, 0, 0, 0xff, 0xff].repeat(HOSTILE / 5));
        stored.extend([0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        let r = process(
            "l",
            &mut &stored[..],
            CompressionPolicy::default(),
            &mut |_| Err(io::Error::other("registry went away")),
        );
        assert!(
            matches!(&r, Err(LayerError::Sink(e)) if e.to_string() == "registry went away"),
            "{r:?}"
        );
    }

    #[test]
    fn a_poorly_compressed_layer_is_pushed_unchanged_in_bounded_pieces() {
        // Incompressible content: the stored bytes reach the limit before the output does.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let tar: Vec<u8> = (0..5 * CHUNK + 777)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        for stored in [
            {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&tar).unwrap();
                gz.finish().unwrap()
            },
            zstd::encode_all(&tar[..], 1).unwrap(),
        ] {
            assert!(stored.len() > 4 * CAPTURE_LIMIT);
            let mut out = Vec::new();
            let mut pieces = Vec::new();
            let facts = process(
                "l",
                &mut &stored[..],
                CompressionPolicy::default(),
                &mut |b: Bytes| {
                    pieces.push(b.len());
                    out.extend_from_slice(&b);
                    Ok(())
                },
            )
            .unwrap();
            assert!(facts.as_stored);
            assert!(out == stored, "the blob is the stored bytes");
            assert_eq!(facts.stored_digest, digest::sha256_of(&stored));
            assert_eq!(facts.diff_id, digest::sha256_of(&tar));
            assert_eq!(facts.uncompressed_size, tar.len() as u64);
            assert!(pieces.iter().all(|&n| n <= BOUND), "{pieces:?}");
        }
    }
}
