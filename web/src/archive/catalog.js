// What one pass over an archive's headers learns: each member's kind, size, link target, data
// offset, and the bytes of the small JSON documents that describe the images. Mirrors the
// engine's src/archive/catalog.rs, with the same caps, so the page refuses early what the
// import would refuse, and never holds more than a few megabytes.

import { ArchiveReadError } from './tar.js';

export const METADATA_MEMBER_CAP = 4 << 20;
export const METADATA_TOTAL_CAP = 32 << 20;
export const MEMBER_CAP = 100_000;

/** Which members are read into memory. */
export function roleOf(name) {
  const topLevel = !name.includes('/');
  if (topLevel && ['manifest.json', 'index.json', 'repositories', 'oci-layout'].includes(name)) return 'metadata';
  if (topLevel && name.endsWith('.json')) return 'metadata';
  if (name.startsWith('blobs/')) return 'blob';
  return 'layer';
}

export class Catalog {
  constructor() {
    /** name → {kind, size, offset, linkname} */
    this.members = new Map();
    /** name → Uint8Array */
    this.meta = new Map();
    this.metaTotal = 0;
    /** Problems the import would refuse the archive for (first one wins). */
    this.problems = [];
  }

  add(member) {
    if (this.members.size >= MEMBER_CAP) {
      throw new ArchiveReadError(`the archive has more than ${MEMBER_CAP} members`);
    }
    const { name, kind } = member;
    if (name === '') return;
    if (name.startsWith('/')) this.problems.push(`member ${JSON.stringify(name)} has an absolute path`);
    if (name.split('/').includes('..')) this.problems.push(`member ${JSON.stringify(name)} climbs out of the archive with ".."`);
    if (['hardlink', 'char-device', 'block-device', 'fifo', 'other'].includes(kind)) {
      this.problems.push(`member ${JSON.stringify(name)} is a ${kind}, which image archives do not contain`);
    }
    if (this.members.has(name) && kind !== 'directory') {
      this.problems.push(`member ${JSON.stringify(name)} appears twice`);
    }
    this.members.set(name, member);
  }

  /** Whether a regular file's bytes should be kept (after `wantBlobJson` for blobs). */
  wants(member) {
    if (member.kind !== 'file') return false;
    const role = roleOf(member.name);
    if (role === 'metadata') return true;
    if (role === 'blob') return member.size <= METADATA_MEMBER_CAP;
    return false;
  }

  keep(name, bytes) {
    if (bytes.length > METADATA_MEMBER_CAP) {
      throw new ArchiveReadError(`${name} is ${bytes.length} bytes, more than a metadata document may be`);
    }
    this.metaTotal += bytes.length;
    if (this.metaTotal > METADATA_TOTAL_CAP) {
      throw new ArchiveReadError(`the archive's metadata documents exceed ${METADATA_TOTAL_CAP} bytes`);
    }
    this.meta.set(name, bytes);
  }

  /** Follow symlinks (relative to the link's folder) to a regular file's name. */
  resolve(name, referrer) {
    let current = name.replace(/^\.\//, '');
    for (let hops = 0; hops < 16; hops++) {
      const m = this.members.get(current);
      if (!m) throw new ArchiveReadError(`${referrer} names ${JSON.stringify(name)}, which is not in the archive`);
      if (m.kind === 'file') return current;
      if (m.kind !== 'symlink') throw new ArchiveReadError(`${referrer} names ${JSON.stringify(name)}, which is a ${m.kind}`);
      const dir = current.includes('/') ? current.slice(0, current.lastIndexOf('/')) : '';
      current = joinPath(dir, m.linkname);
    }
    throw new ArchiveReadError(`${JSON.stringify(name)} is a symlink loop`);
  }

  size(name) {
    return this.members.get(name)?.size ?? 0;
  }

  json(name, referrer) {
    const bytes = this.meta.get(name);
    if (!bytes) {
      const m = this.members.get(name);
      if (!m) throw new ArchiveReadError(`${referrer} names ${name}, which is not in the archive`);
      throw new ArchiveReadError(`${name} (named by ${referrer}) is a ${m.kind} of ${m.size} bytes, not a readable document`);
    }
    try {
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw new ArchiveReadError(`${name} is not valid JSON: ${e.message}`);
    }
  }
}

export function joinPath(dir, target) {
  const parts = target.startsWith('/') ? [] : dir.split('/').filter(Boolean);
  for (const p of target.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..') {
      if (parts.length === 0) throw new ArchiveReadError(`symlink target ${JSON.stringify(target)} points outside the archive`);
      parts.pop();
    } else parts.push(p);
  }
  return parts.join('/');
}
