// Read an image archive's metadata in the browser before any byte is uploaded.
//
// A plain tar is read by seeking: each 512-byte header is read with Blob.slice at the offset
// the previous one gives, and only the small JSON documents are read whole, so a 10 GB
// archive costs a few hundred kilobytes of reads. A gzip or zstd compressed tar cannot be
// seeked: it is decompressed as a stream (layers are skipped, not kept), which reads the
// whole file once.

import { Decompress as ZstdDecompress } from 'fzstd';
import { BLOCK, ArchiveReadError, HeaderMerger, isExtension, padded, parseHeader } from './tar.js';
import { Catalog } from './catalog.js';
import { describeImages } from './images.js';

export { ArchiveReadError } from './tar.js';

async function bytesAt(blob, start, end) {
  return new Uint8Array(await blob.slice(start, end).arrayBuffer());
}

export function compressionOf(head) {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  return 'none';
}

/** Seek through a plain tar. */
async function scanSeekable(blob, catalog, onProgress) {
  const merger = new HeaderMerger();
  let offset = 0;
  let headers = 0;
  while (offset + BLOCK <= blob.size) {
    const header = parseHeader(await bytesAt(blob, offset, offset + BLOCK), offset);
    if (!header) return;
    const dataStart = offset + BLOCK;
    const next = dataStart + padded(header.size);
    if (dataStart + header.size > blob.size) {
      throw new ArchiveReadError(
        `member ${JSON.stringify(header.name)} claims ${header.size} bytes but the file ends first (truncated?)`,
      );
    }
    if (isExtension(header.kind)) {
      merger.extension(header, await bytesAt(blob, dataStart, dataStart + Math.min(header.size, 1 << 20)));
    } else {
      const member = merger.member(header);
      member.offset = dataStart;
      catalog.add(member);
      if (catalog.wants(member)) {
        const bytes = await bytesAt(blob, dataStart, dataStart + member.size);
        // Blobs are kept only if they are JSON (a manifest or config), as the engine decides.
        if (member.name.startsWith('blobs/') ? bytes[0] === 0x7b : true) catalog.keep(member.name, bytes);
      }
    }
    offset = next;
    if (++headers % 64 === 0) onProgress?.(offset, blob.size);
  }
  if (offset < blob.size || offset === 0) {
    throw new ArchiveReadError('the archive ends in the middle of a tar header (truncated?)');
  }
}

/**
 * A streaming tar parser: push decompressed bytes, it keeps metadata and skips the rest.
 * Never holds more than one header, one extension or one metadata document.
 */
class TarStream {
  constructor(catalog) {
    this.catalog = catalog;
    this.merger = new HeaderMerger();
    this.pos = 0; // tar bytes consumed
    this.state = 'header';
    this.buf = new Uint8Array(BLOCK);
    this.fill = 0;
    this.skip = 0;
    this.ended = false;
  }

  push(chunk) {
    let i = 0;
    while (i < chunk.length && !this.ended) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        this.skip -= n;
        i += n;
        this.pos += n;
        continue;
      }
      const need = this.buf.length - this.fill;
      const n = Math.min(need, chunk.length - i);
      this.buf.set(chunk.subarray(i, i + n), this.fill);
      this.fill += n;
      i += n;
      this.pos += n;
      if (this.fill === this.buf.length) this.complete();
    }
  }

  complete() {
    if (this.state === 'header') {
      const offset = this.pos - BLOCK;
      const header = parseHeader(this.buf, offset);
      if (!header) {
        this.ended = true;
        return;
      }
      this.header = header;
      const dataStart = this.pos;
      if (isExtension(header.kind)) {
        if (header.size > 1 << 20) throw new ArchiveReadError(`tar extension header at byte ${offset} is implausibly large`);
        return this.expect('extension', header.size);
      }
      const member = this.merger.member(header);
      member.offset = dataStart;
      this.catalog.add(member);
      this.member = member;
      if (this.catalog.wants(member) && member.size > 0) return this.expect('data', member.size);
      if (this.catalog.wants(member)) this.catalog.keep(member.name, new Uint8Array(0));
      return this.expect('header', 0, padded(member.size));
    }
    const bytes = this.buf;
    if (this.state === 'extension') {
      this.merger.extension(this.header, bytes);
      return this.expect('header', 0, padded(this.header.size) - this.header.size);
    }
    if (this.state === 'data') {
      const m = this.member;
      if (m.name.startsWith('blobs/') ? bytes[0] === 0x7b : true) this.catalog.keep(m.name, bytes);
      return this.expect('header', 0, padded(m.size) - m.size);
    }
  }

  /** Next, collect `size` bytes in state `state` (a header if 0), after skipping `skip`. */
  expect(state, size, skip = 0) {
    this.state = state;
    this.skip = skip;
    this.buf = new Uint8Array(state === 'header' ? BLOCK : size);
    this.fill = 0;
    if (state !== 'header' && size === 0) this.complete();
  }

  finish() {
    if (!this.ended && !(this.state === 'header' && this.fill === 0 && this.skip === 0 && this.pos > 0)) {
      throw new ArchiveReadError('the compressed archive ends in the middle of a tar member (truncated?)');
    }
  }
}

/** Counts the compressed bytes read, for progress. */
function counting(total, onProgress) {
  let read = 0;
  return new TransformStream({
    transform(chunk, controller) {
      read += chunk.length;
      onProgress?.(read, total);
      controller.enqueue(chunk);
    },
  });
}

/** Decompressed chunks of a zstd stream (fzstd has no web stream of its own). */
function zstdStream() {
  let z;
  return new TransformStream({
    start(controller) {
      z = new ZstdDecompress((chunk) => controller.enqueue(chunk));
    },
    transform(chunk) {
      z.push(chunk);
    },
    flush() {
      z.push(new Uint8Array(0), true);
    },
  });
}

async function scanCompressed(blob, compression, catalog, onProgress) {
  const tar = new TarStream(catalog);
  const inflate = compression === 'gzip' ? new DecompressionStream('gzip') : zstdStream();
  const reader = blob.stream().pipeThrough(counting(blob.size, onProgress)).pipeThrough(inflate).getReader();
  try {
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch (e) {
        throw new ArchiveReadError(`the ${compression} stream is damaged or truncated: ${e.message ?? e}`);
      }
      if (step.done) break;
      tar.push(step.value);
      if (tar.ended) break;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  tar.finish();
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Documents named by their digest (`blobs/sha256/<hex>`, a legacy `<hex>.json` config) must
 * hash to it; the import would refuse them, so say it now. Layers are not hashed here.
 */
async function checkNamedDigests(catalog) {
  for (const [name, bytes] of catalog.meta) {
    const base = name.split('/').pop();
    const expected = name.startsWith('blobs/sha256/') ? base : /^[a-f0-9]{64}\.json$/.test(name) ? base.slice(0, 64) : '';
    if (!expected) continue;
    const actual = hex(await crypto.subtle.digest('SHA-256', bytes));
    if (actual !== expected) catalog.problems.push(`${name} does not match its digest (sha256:${actual})`);
  }
}

/**
 * What the archive holds: `{format, compression, size, members, images, problems}`.
 * `images` lists each image entry with its saved tags, platforms and layer bytes.
 * Throws ArchiveReadError when the archive cannot be read at all.
 */
export async function readArchive(blob, { onProgress } = {}) {
  const head = await bytesAt(blob, 0, Math.min(blob.size, BLOCK));
  if (blob.size === 0) throw new ArchiveReadError('the file is empty');
  const compression = compressionOf(head);
  const catalog = new Catalog();
  if (compression === 'none') await scanSeekable(blob, catalog, onProgress);
  else await scanCompressed(blob, compression, catalog, onProgress);
  onProgress?.(blob.size, blob.size);
  await checkNamedDigests(catalog);
  const { format, images } = describeImages(catalog);
  return {
    format,
    compression,
    size: blob.size,
    members: catalog.members.size,
    images,
    problems: catalog.problems,
  };
}
