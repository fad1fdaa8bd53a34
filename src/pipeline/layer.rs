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
}

/// Where produced blob bytes go. An error stops the layer (the upload failed).
pub type Emit<'a> = dyn FnMut(Bytes) -> io::Result<()> + 'a;

/// Wraps the member's bytes: hashes and counts them, and keeps a copy when they are
/// pushed as stored.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    hasher: Sha256,
    size: u64,
    capture: Option<Vec<u8>>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some(c) = &mut self.capture {
            c.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

enum Decoded<'a> {
    Plain(BufReader<Tee<'a>>),
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

/// Read a layer to its end. `emit` receives the registry blob in order.
pub fn process(
    member: &str,
    data: &mut dyn Read,
    policy: CompressionPolicy,
    emit: &mut Emit<'_>,
) -> Result<LayerFacts, LayerError> {
    // Capture from the first byte: sniffing already reads a buffer's worth.
    let tee = Tee {
        inner: data,
        hasher: Sha256::new(),
        size: 0,
        capture: Some(Vec::new()),
    };
    let mut buffered = BufReader::with_capacity(256 << 10, tee);
    let stored_codec = sniff(&mut buffered).map_err(LayerError::Read)?;
    let (pushed_codec, as_stored) = policy.plan(stored_codec);
    if !as_stored {
        buffered.get_mut().capture = None;
    }
    let bad = |e: io::Error| {
        LayerError::Archive(ArchiveError::BadCompression {
            member: member.into(),
            detail: e.to_string(),
        })
    };
    let mut decoded = match stored_codec {
        Codec::None => Decoded::Plain(buffered),
        Codec::Gzip => Decoded::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered))),
        Codec::Zstd => Decoded::Zstd(Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(bad)?,
        )),
    };
    let mut encoder = (!as_stored).then(|| ChunkEncoder::new(pushed_codec));
    let mut diff = Sha256::new();
    let mut uncompressed_size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_full(&mut decoded, &mut buf).map_err(|e| {
            if stored_codec == Codec::None {
                LayerError::Read(e)
            } else {
                bad(e)
            }
        })?;
        if n == 0 {
            break;
        }
        // Uncompressed layers: the stored digest is the diff_id; hash the bytes once.
        if stored_codec != Codec::None {
            diff.update(&buf[..n]);
        }
        uncompressed_size += n as u64;
        match &mut encoder {
            Some(enc) => {
                for out in enc.push(&buf[..n]) {
                    emit(out).map_err(LayerError::Sink)?;
                }
            }
            None => flush_capture(decoded.tee(), emit)?,
        }
    }
    // Whatever follows the compressed stream (padding) is part of the stored blob.
    io::copy(decoded.tee(), &mut io::sink()).map_err(LayerError::Read)?;
    match &mut encoder {
        Some(enc) => {
            for out in enc.finish() {
                emit(out).map_err(LayerError::Sink)?;
            }
        }
        None => flush_capture(decoded.tee(), emit)?,
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
    })
}

fn flush_capture(tee: &mut BufReader<Tee<'_>>, emit: &mut Emit<'_>) -> Result<(), LayerError> {
    let tee = tee.get_mut();
    if let Some(c) = &mut tee.capture
        && !c.is_empty()
    {
        let chunk = std::mem::replace(c, Vec::with_capacity(CHUNK + (256 << 10)));
        emit(Bytes::from(chunk)).map_err(LayerError::Sink)?;
    }
    Ok(())
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
}
