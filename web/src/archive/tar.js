// Tar headers (ustar, PAX and GNU long names), parsed from 512-byte blocks. Only what an
// image archive needs: a member's name, kind, size, link target and where its data starts.

export const BLOCK = 512;

export class ArchiveReadError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ArchiveReadError';
  }
}

const decoder = new TextDecoder('utf-8', { fatal: false });

function text(block, start, length) {
  let end = start;
  while (end < start + length && block[end] !== 0) end++;
  return decoder.decode(block.subarray(start, end));
}

/** A numeric field: octal text, or base-256 (high bit set) for sizes over 8 GiB. */
function number(block, start, length, what, offset) {
  if (block[start] & 0x80) {
    let n = 0n;
    for (let i = start; i < start + length; i++) {
      n = (n << 8n) | BigInt(i === start ? block[i] & 0x7f : block[i]);
    }
    if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ArchiveReadError(`tar header at byte ${offset}: ${what} is too large`);
    }
    return Number(n);
  }
  const s = text(block, start, length).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) {
    throw new ArchiveReadError(`tar header at byte ${offset}: ${what} ${JSON.stringify(s)} is not a number`);
  }
  return parseInt(s, 8);
}

function isZeroBlock(block) {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

function checksumOk(block, offset) {
  let stored;
  try {
    stored = number(block, 148, 8, 'checksum', offset);
  } catch {
    return false;
  }
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i];
  return sum === stored;
}

/** Kinds as the engine names them (src/archive/members.rs). */
export function kindOf(flag) {
  switch (flag) {
    case '0': case '\0': case '': case '7': return 'file';
    case '1': return 'hardlink';
    case '2': return 'symlink';
    case '3': return 'char-device';
    case '4': return 'block-device';
    case '5': return 'directory';
    case '6': return 'fifo';
    case 'x': return 'pax';
    case 'g': return 'pax-global';
    case 'L': return 'gnu-longname';
    case 'K': return 'gnu-longlink';
    default: return 'other';
  }
}

/**
 * Parse one header block at archive byte `offset`. Returns null for the zero block that
 * ends an archive.
 */
export function parseHeader(block, offset) {
  if (block.length < BLOCK) {
    throw new ArchiveReadError(`the archive ends inside the tar header at byte ${offset} (truncated?)`);
  }
  if (isZeroBlock(block)) return null;
  if (!checksumOk(block, offset)) {
    throw new ArchiveReadError(
      offset === 0
        ? 'this file is not a tar archive (nor a gzip or zstd compressed one)'
        : `the tar header at byte ${offset} is damaged (bad checksum)`,
    );
  }
  let name = text(block, 0, 100);
  const magic = text(block, 257, 6);
  if (magic.startsWith('ustar')) {
    const prefix = text(block, 345, 155);
    if (prefix) name = `${prefix}/${name}`;
  }
  const flag = String.fromCharCode(block[156]);
  return {
    name,
    kind: kindOf(flag === '\0' ? '0' : flag),
    size: number(block, 124, 12, 'size', offset),
    linkname: text(block, 157, 100),
    offset,
  };
}

/** PAX extended header records (`len key=value\n`). */
export function parsePax(bytes) {
  const out = {};
  let i = 0;
  while (i < bytes.length) {
    let sp = i;
    while (sp < bytes.length && bytes[sp] !== 0x20) sp++;
    const len = parseInt(decoder.decode(bytes.subarray(i, sp)), 10);
    if (!Number.isFinite(len) || len <= 0 || i + len > bytes.length) break;
    const record = decoder.decode(bytes.subarray(sp + 1, i + len - 1));
    const eq = record.indexOf('=');
    if (eq > 0) out[record.slice(0, eq)] = record.slice(eq + 1);
    i += len;
  }
  return out;
}

/** `./a/b/` → `a/b` (the engine's member names). */
export function normalizeName(name) {
  let n = name;
  while (n.startsWith('./')) n = n.slice(2);
  while (n.endsWith('/')) n = n.slice(0, -1);
  return n;
}

export function padded(size) {
  return Math.ceil(size / BLOCK) * BLOCK;
}

/** Largest PAX or GNU long-name record read (real ones are well under a kilobyte). */
export const EXTENSION_CAP = 1 << 20;

/**
 * Applies PAX and GNU long-name headers to the member that follows them. Feed it every
 * header with the extension's data (for pax / gnu-* kinds); it answers the real members.
 */
export class HeaderMerger {
  constructor() {
    this.pending = {};
  }

  /** `data` is the member's bytes for extension kinds, ignored otherwise. */
  extension(header, data) {
    if (header.size > EXTENSION_CAP) {
      throw new ArchiveReadError(`tar extension header at byte ${header.offset} is implausibly large (${header.size} bytes)`);
    }
    if (header.kind === 'pax') Object.assign(this.pending, parsePax(data));
    else if (header.kind === 'gnu-longname') this.pending.path = text(data, 0, data.length);
    else if (header.kind === 'gnu-longlink') this.pending.linkpath = text(data, 0, data.length);
  }

  member(header) {
    const p = this.pending;
    this.pending = {};
    const m = { ...header };
    if (p.path !== undefined) m.name = p.path;
    if (p.linkpath !== undefined) m.linkname = p.linkpath;
    if (p.size !== undefined) {
      const n = Number(p.size);
      if (!Number.isSafeInteger(n) || n < 0) {
        throw new ArchiveReadError(`PAX size ${JSON.stringify(p.size)} at byte ${header.offset} is not a number`);
      }
      m.size = n;
    }
    m.name = normalizeName(m.name);
    return m;
  }
}

export function isExtension(kind) {
  return kind === 'pax' || kind === 'pax-global' || kind === 'gnu-longname' || kind === 'gnu-longlink';
}
