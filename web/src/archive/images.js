// From a catalog to the images a person picks from: saved tags, platforms, layer bytes. The
// same two routes as the engine (src/archive/resolve.rs): an OCI index.json when present
// (podman/skopeo oci-archive, Docker 25+, containerd), else docker-save's manifest.json.

import { ArchiveReadError } from './tar.js';

const REF_NAME = 'org.opencontainers.image.ref.name';
const IMAGE_NAME = 'io.containerd.image.name';
const INDEX_TYPES = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];
const MAX_VISITS = 1024;

function hexOf(digest, referrer) {
  const m = /^sha256:([a-f0-9]{64})$/.exec(digest ?? '');
  if (!m) throw new ArchiveReadError(`${referrer} holds a descriptor digest ${JSON.stringify(digest)}, not a sha256 digest`);
  return m[1];
}

function platformOf(config) {
  if (!config || typeof config !== 'object') return '';
  const { os, architecture, variant } = config;
  if (!os && !architecture) return '';
  return [os, architecture, variant].filter(Boolean).join('/');
}

function platformOfDescriptor(p) {
  if (!p) return '';
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Image ID of a config member named by its digest (`<hex>.json`, `blobs/sha256/<hex>`). */
function idFromMember(member) {
  const base = member.split('/').pop();
  const hex = member.startsWith('blobs/sha256/') ? base : base.replace(/\.json$/, '');
  return /^[a-f0-9]{64}$/.test(hex) ? `sha256:${hex}` : '';
}

function fromDocker(catalog) {
  const entries = catalog.json('manifest.json', 'archive');
  if (!Array.isArray(entries) || entries.length === 0) throw new ArchiveReadError('manifest.json lists no images');
  return entries.map((entry, i) => {
    const referrer = `manifest.json[${i}]`;
    if (typeof entry?.Config !== 'string' || !Array.isArray(entry.Layers)) {
      throw new ArchiveReadError(`${referrer} has no Config or Layers`);
    }
    const configMember = catalog.resolve(entry.Config, referrer);
    const config = catalog.json(configMember, referrer);
    const layers = entry.Layers.map((l) => catalog.resolve(l, referrer));
    const diffIds = config?.rootfs?.diff_ids ?? [];
    if (diffIds.length !== layers.length) {
      throw new ArchiveReadError(`${referrer} lists ${layers.length} layers but its config has ${diffIds.length} diff_ids`);
    }
    const bytes = layers.reduce((n, l) => n + catalog.size(l), 0);
    return {
      tags: Array.isArray(entry.RepoTags) ? entry.RepoTags.filter((t) => typeof t === 'string') : [],
      id: idFromMember(configMember),
      platforms: [{ platform: platformOf(config), layers: layers.length, bytes }],
      layers: layers.length,
      bytes,
      leftOut: [],
    };
  });
}

function dockerTagsById(catalog) {
  const map = new Map();
  if (!catalog.meta.has('manifest.json')) return map;
  try {
    for (const e of catalog.json('manifest.json', 'archive')) {
      const id = idFromMember(catalog.resolve(e.Config, 'manifest.json'));
      if (id) map.set(id, e.RepoTags ?? []);
    }
  } catch {
    // An unreadable manifest.json only costs the full tag names.
  }
  return map;
}

function fromOci(catalog) {
  const index = catalog.json('index.json', 'archive');
  const manifests = Array.isArray(index?.manifests) ? index.manifests : [];
  const dockerTags = dockerTagsById(catalog);
  const byDigest = new Map();
  const out = [];
  for (const d of manifests) {
    const entry = { tags: [], id: '', platforms: [], layers: 0, bytes: 0, leftOut: [] };
    const visited = new Set();
    walk(catalog, d, '', 0, entry, visited);
    const ann = d.annotations ?? {};
    const tags = ann[IMAGE_NAME] ? [ann[IMAGE_NAME]] : ann[REF_NAME] ? [ann[REF_NAME]] : [];
    for (const p of entry.platforms) {
      for (const t of dockerTags.get(p.id) ?? []) if (!tags.includes(t)) tags.push(t);
    }
    const seen = byDigest.get(d.digest);
    if (seen) {
      for (const t of tags) if (!seen.tags.includes(t)) seen.tags.push(t);
      continue;
    }
    if (entry.platforms.length === 0 && entry.leftOut.length === 0) continue;
    entry.tags = tags;
    entry.id = entry.platforms.length === 1 ? entry.platforms[0].id : d.digest;
    entry.layers = entry.platforms.reduce((n, p) => n + p.layers, 0);
    entry.bytes = entry.platforms.reduce((n, p) => n + p.bytes, 0);
    byDigest.set(d.digest, entry);
    out.push(entry);
  }
  return out;
}

function walk(catalog, d, platform, depth, entry, visited) {
  if (visited.has(d.digest)) return;
  visited.add(d.digest);
  if (visited.size > MAX_VISITS || depth > 4) throw new ArchiveReadError('index.json nests or lists too many manifests');
  const referrer = depth === 0 ? 'index.json' : `index ${d.digest}`;
  const member = `blobs/sha256/${hexOf(d.digest, referrer)}`;
  const here = platformOfDescriptor(d.platform) || platform;
  if (!catalog.members.has(member)) {
    entry.leftOut.push({ platform: here || 'unknown', digest: d.digest });
    return;
  }
  const doc = catalog.json(member, referrer);
  const mediaType = d.mediaType || doc.mediaType || '';
  if (INDEX_TYPES.includes(mediaType) || Array.isArray(doc.manifests)) {
    for (const child of doc.manifests ?? []) walk(catalog, child, here, depth + 1, entry, visited);
    return;
  }
  // Attestation manifests (Docker's buildx) are not images of a platform.
  if (d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest') return;
  const layers = Array.isArray(doc.layers) ? doc.layers : [];
  let configPlatform = '';
  const configMember = doc.config?.digest ? `blobs/sha256/${hexOf(doc.config.digest, member)}` : '';
  if (configMember && catalog.meta.has(configMember)) configPlatform = platformOf(catalog.json(configMember, member));
  entry.platforms.push({
    platform: here || configPlatform,
    id: doc.config?.digest ?? '',
    layers: layers.length,
    bytes: layers.reduce((n, l) => n + (Number(l.size) || 0), 0),
  });
}

export function describeImages(catalog) {
  if (catalog.meta.has('index.json')) {
    const images = fromOci(catalog);
    if (images.length > 0) return { format: catalog.meta.has('manifest.json') ? 'docker+oci' : 'oci', images };
  }
  if (catalog.meta.has('manifest.json')) return { format: 'docker', images: fromDocker(catalog) };
  for (const name of ['index.json', 'manifest.json']) {
    if (catalog.members.has(name)) catalog.json(name, 'archive');
  }
  throw new ArchiveReadError('no image in this archive: it has neither manifest.json nor index.json (is it a docker save or OCI archive?)');
}
