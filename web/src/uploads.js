// tus uploads of archives into ImageImports. Progress counts the bytes the server
// acknowledged (what the import has taken in), not the bytes the browser sent.

import * as tus from 'tus-js-client';

/** Each PATCH carries at most this much, so a proxy's body-size limit never bites. */
export const CHUNK_SIZE = 16 << 20;
/** Waits between tries after a network break (reset after each acknowledged chunk). */
const RETRY_DELAYS = [0, 1000, 2000, 4000, 8000, 15000, 30000, 30000, 60000, 60000, 60000, 60000];
/** Answers that another try cannot fix. */
const FINAL = new Set([400, 401, 403, 404, 410, 413, 415, 422]);

/**
 * The upload address for this page: `status.upload.url`, on this page's origin when the
 * controller's address names another host (this page is served by the upload service
 * itself, so the same path works here and needs no CORS).
 */
export function endpointFor(url, origin = globalThis.location?.origin) {
  try {
    const u = new URL(url, origin);
    if (origin && u.origin !== origin && u.pathname.startsWith('/uploads/')) return `${origin}${u.pathname}`;
    return u.href;
  } catch {
    return url;
  }
}

/** Same import, same file → same key: a reloaded page finds its upload again. */
export function fingerprintOf(target, file) {
  return ['imageimport', target.namespace, target.name, target.uid, target.generation, file.name, file.size, file.lastModified].join('/');
}

function describe(error) {
  const res = error?.originalResponse;
  const status = res?.getStatus?.() ?? 0;
  const body = (res?.getBody?.() ?? '').trim();
  if (status === 401) return { status, message: `The upload service did not accept your sign-in: ${body || 'sign in again'}` };
  if (status === 403) return { status, message: `You may not upload into this import: ${body}` };
  if (status === 410 || status === 404) return { status, message: body || 'This upload is gone (its import changed or finished).' };
  if (status === 422) return { status, message: body };
  if (status === 413) return { status, message: body || 'The archive is larger than this import accepts.' };
  if (status) return { status, message: body || `The upload service answered ${status}.` };
  return { status: 0, message: 'The connection to the upload service broke off. Resume when the network is back.' };
}

/**
 * Start (or resume) the upload of `file` into import `target` ({namespace, name, uid,
 * generation, url}). `on.progress({acked, sent, total, speed})`, `on.done()`, `on.error({status,
 * message})`. Returns {abort()}.
 */
export async function startUpload(file, target, token, on) {
  let lastAcked = null;
  let speed = 0;
  const upload = new tus.Upload(file, {
    endpoint: endpointFor(target.url),
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    chunkSize: CHUNK_SIZE,
    retryDelays: RETRY_DELAYS,
    storeFingerprintForResuming: true,
    removeFingerprintOnSuccess: true,
    fingerprint: async () => fingerprintOf(target, file),
    metadata: { filename: file.name },
    onShouldRetry(err) {
      const status = err?.originalResponse?.getStatus?.() ?? 0;
      return !FINAL.has(status);
    },
    onProgress(sent, total) {
      on.progress?.({ acked: lastAcked?.bytes ?? null, sent, total, speed });
    },
    onChunkComplete(_chunk, acked, total) {
      const now = performance.now();
      if (lastAcked && now > lastAcked.at) {
        const rate = ((acked - lastAcked.bytes) * 1000) / (now - lastAcked.at);
        speed = speed ? 0.7 * speed + 0.3 * rate : rate;
      }
      lastAcked = { bytes: acked, at: now };
      on.progress?.({ acked, sent: acked, total, speed });
    },
    onSuccess() {
      on.done?.();
    },
    onError(err) {
      on.error?.(describe(err));
    },
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length > 0) upload.resumeFromPreviousUpload(previous[0]);
  upload.start();
  return {
    abort: () => upload.abort(false),
  };
}
