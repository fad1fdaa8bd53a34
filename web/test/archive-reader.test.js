// The browser archive reader on real archives: the repository's fuzz seeds (written by docker,
// podman, skopeo, containerd and by hand), and archives made here with GNU tar (PAX and GNU
// long names), gzip and zstd. Run with `npm test` (node's test runner; Blob, streams,
// DecompressionStream and WebCrypto are the browser's APIs, in node).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openAsBlob, writeFileSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { readArchive, ArchiveReadError } from '../src/archive/reader.js';
import { prefill, splitSaved, savedPath, importName, REPOSITORY_PATTERN } from '../src/archive/refs.js';

const SEEDS = new URL('../../fuzz/seeds/', import.meta.url).pathname;
const seed = (name) => openAsBlob(join(SEEDS, name));

/** A Blob that counts the bytes read through slice(), to prove layers are not read. */
function counted(blob) {
  const stats = { bytes: 0, reads: 0 };
  const wrap = (b) => ({
    size: b.size,
    slice: (s, e) => {
      const part = b.slice(s, e);
      stats.bytes += part.size;
      stats.reads += 1;
      return part;
    },
    stream: () => {
      stats.bytes += b.size;
      return b.stream();
    },
  });
  return { blob: wrap(blob), stats };
}

test('docker save (legacy layout): image, tag, platform, layers', async () => {
  const r = await readArchive(await seed('valid-docker-legacy.tar'));
  assert.equal(r.format, 'docker');
  assert.equal(r.compression, 'none');
  assert.equal(r.images.length, 1);
  assert.deepEqual(r.images[0].tags, ['fuzz:1']);
  assert.equal(r.images[0].layers, 2);
  assert.equal(r.images[0].platforms[0].platform, 'linux/amd64');
  assert.match(r.images[0].id, /^sha256:[a-f0-9]{64}$/);
  assert.deepEqual(r.problems, []);
});

test('two images in one archive, one saved by ID only', async () => {
  const r = await readArchive(await seed('valid-docker-legacy-two-images.tar'));
  assert.equal(r.images.length, 2);
  assert.deepEqual(r.images[0].tags, ['fuzz:1', 'example.com:5000/team/fuzz:v2']);
  assert.deepEqual(r.images[1].tags, []);
});

test('layers deduplicated by symlink count once each and resolve', async () => {
  const r = await readArchive(await seed('valid-docker-legacy-symlink-dedup.tar'));
  assert.deepEqual(r.images[0].tags, ['dedup:1']);
  assert.equal(r.images[0].layers, 3);
});

test('OCI archives: index.json, ref.name tags, stored layer sizes from descriptors', async () => {
  for (const [name, bytes] of [['valid-oci-archive-none.tar', 7168], ['valid-oci-archive-gzip.tar', 1069], ['valid-oci-archive-zstd.tar', 1073]]) {
    const r = await readArchive(await seed(name));
    assert.equal(r.format, 'oci', name);
    assert.deepEqual(r.images[0].tags, ['fuzz:1'], name);
    assert.equal(r.images[0].bytes, bytes, name);
  }
});

test('Docker 25 archive (OCI index + manifest.json): full names from both', async () => {
  const r = await readArchive(await seed('valid-docker25-oci.tar'));
  assert.equal(r.format, 'docker+oci');
  assert.deepEqual(r.images[0].tags, ['docker.io/library/fuzz:1', 'fuzz:1']);
});

test('containerd multi-platform export: the missing platform is left out, not an error', async () => {
  const r = await readArchive(await seed('valid-containerd-multiplatform.tar'));
  assert.equal(r.images.length, 1);
  assert.equal(r.images[0].platforms.length, 1);
  assert.equal(r.images[0].leftOut.length, 1);
});

test('gzip-compressed docker save archive is read as a stream', async () => {
  const r = await readArchive(await seed('valid-docker-legacy.tar.gz'));
  assert.equal(r.compression, 'gzip');
  assert.deepEqual(r.images[0].tags, ['fuzz:1']);
});

test('a plain tar is read by seeking: only headers and metadata documents, never the layers', async () => {
  // A 24 MiB layer: reading it would show in the byte count.
  const dir = mkdtempSync(join(tmpdir(), 'web-reader-'));
  try {
    const layer = Buffer.alloc(24 << 20, 7);
    const archive = dockerArchive(dir, { tag: 'big:1', layers: [layer] });
    const { blob, stats } = counted(await openAsBlob(archive));
    const r = await readArchive(blob);
    assert.equal(r.images[0].bytes, layer.length);
    assert.ok(stats.bytes < 64 << 10, `read ${stats.bytes} bytes of a ${blob.size}-byte archive`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('GNU tar archives with PAX and GNU long names (over 100 bytes)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'web-reader-'));
  try {
    const deep = `${'d'.repeat(60)}/${'e'.repeat(60)}`;
    for (const format of ['pax', 'gnu']) {
      const archive = dockerArchive(dir, { tag: `long:${format}`, layers: [Buffer.from('x'.repeat(3000))], layerDir: deep, format });
      const r = await readArchive(await openAsBlob(archive));
      assert.deepEqual(r.images[0].tags, [`long:${format}`], format);
      assert.equal(r.images[0].bytes, 3000, format);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('zstd-compressed archive (zstd CLI) is read as a stream', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'web-reader-'));
  try {
    const out = join(dir, 'a.tar.zst');
    execFileSync('zstd', ['-q', '-o', out, join(SEEDS, 'valid-docker25-oci.tar')]);
    const r = await readArchive(await openAsBlob(out));
    assert.equal(r.compression, 'zstd');
    assert.deepEqual(r.images[0].tags, ['docker.io/library/fuzz:1', 'fuzz:1']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('truncated compressed archives are refused, not half-read', async () => {
  const whole = readFileSync(join(SEEDS, 'valid-docker-legacy.tar'));
  const gz = gzipSync(whole);
  const cut = new Blob([gz.subarray(0, Math.floor(gz.length / 2))]);
  await assert.rejects(readArchive(cut), ArchiveReadError);
  const tarCut = new Blob([whole.subarray(0, 2048 + 100)]);
  await assert.rejects(readArchive(tarCut), ArchiveReadError);
});

test('not an archive at all', async () => {
  await assert.rejects(readArchive(new Blob(['hello, this is not a tar file'.repeat(40)])), /not a tar archive/);
  await assert.rejects(readArchive(new Blob([])), /empty/);
});

// What the import refuses, the page says before uploading (seeds with a structural problem or
// a document that does not match its digest). Layers are not hashed in the browser: a tampered
// layer is found by the import (tests/console_e2e).
const REFUSED = {
  'hostile-absolute-path-member.tar': /absolute path/,
  'hostile-char-device-member.tar': /char-device/,
  'hostile-config-digest-mismatch.tar': /does not match its digest/,
  'hostile-diff-ids-count-mismatch.tar': /diff_ids/,
  'hostile-dotdot-member.tar': /\.\./,
  'hostile-duplicate-member.tar': /appears twice/,
  'hostile-enormous-member-size.tar': /claims/,
  'hostile-fifo-member.tar': /fifo/,
  'hostile-hardlink-member.tar': /hardlink/,
  'hostile-manifest-json-size-lie.tar': /claims/,
  'hostile-oci-config-digest-mismatch.tar': /does not match its digest/,
  'hostile-oci-digest-path-traversal.tar': /not a sha256 digest/,
  'hostile-symlink-loop.tar': /loop/,
  'hostile-symlink-outside.tar': /outside/,
  'hostile-truncated-mid-layer.tar': /truncated/,
};

for (const [name, why] of Object.entries(REFUSED)) {
  test(`hostile seed ${name} is refused with its reason`, async () => {
    let message;
    try {
      const r = await readArchive(await seed(name));
      message = r.problems[0];
    } catch (e) {
      assert.ok(e instanceof ArchiveReadError, `${name}: ${e}`);
      message = e.message;
    }
    assert.ok(message, `${name} was read as a good archive`);
    assert.match(message, why);
  });
}

test('target pre-fill from saved names', () => {
  assert.deepEqual(prefill('web:1.4', 'registry.local:5000', 'x.tar'), { repository: 'registry.local:5000/web', tag: '1.4' });
  assert.deepEqual(prefill('docker.io/library/nginx:1.25', 'reg.example', 'x.tar'), { repository: 'reg.example/nginx', tag: '1.25' });
  assert.deepEqual(prefill('example.com:5000/team/fuzz:v2', 'r.example', 'x.tar'), { repository: 'r.example/team/fuzz', tag: 'v2' });
  assert.deepEqual(prefill('1.4', 'r.example', 'My App.tar.gz'), { repository: 'r.example/my-app', tag: '1.4' });
  assert.deepEqual(prefill(undefined, 'r.example', 'saved.tar'), { repository: 'r.example/saved', tag: 'latest' });
  assert.deepEqual(splitSaved('localhost:5000/a/b@sha256:00'), { host: 'localhost:5000', path: 'a/b', tag: '' });
  assert.ok(REPOSITORY_PATTERN.test(prefill('web:1', 'localhost:5000', '').repository));
  assert.match(importName('r.example/team/Web_App', () => 0.5), /^web-app-[a-z0-9]{5}$/);
  assert.equal(savedPath('web:1.4'), 'library/web:1.4');
  assert.equal(savedPath('docker.io/team/app:2'), 'team/app:2');
  assert.equal(savedPath('tools/api:2'), 'tools/api:2');
});

// ---------------------------------------------------------------------------------------------

/** A docker save archive built with GNU tar (`format`: pax, gnu, ustar). */
function dockerArchive(dir, { tag, layers, layerDir = 'layers', format = 'pax' }) {
  const root = mkdtempSync(join(dir, 'src-'));
  const sha = (b) => createHash('sha256').update(b).digest('hex');
  const layerPaths = layers.map((bytes, i) => {
    const path = `${layerDir}/${i}/layer.tar`;
    mkdirSync(join(root, layerDir, String(i)), { recursive: true });
    writeFileSync(join(root, path), bytes);
    return path;
  });
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((b) => `sha256:${sha(b)}`) } }),
  );
  const configName = `${sha(config)}.json`;
  writeFileSync(join(root, configName), config);
  writeFileSync(join(root, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [tag], Layers: layerPaths }]));
  const out = join(dir, `${tag.replace(/[^a-z0-9]/g, '_')}.tar`);
  execFileSync('tar', [`--format=${format}`, '-cf', out, '-C', root, 'manifest.json', configName, ...layerPaths]);
  return out;
}
