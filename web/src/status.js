// An ImageImport's status in a person's terms.

const WORKING = new Set(['AwaitingUpload', 'Uploading', 'Importing', 'JobCreated', 'Queued', 'Pending', 'Retrying']);

/** What each failure reason means for the person who dropped the archive. */
export const REASONS = {
  InvalidArchive: 'The file is not an image archive the import can read, or it is damaged.',
  VerificationFailed: "The archive's contents do not match its own checksums (damaged or tampered with); nothing was tagged.",
  TagRequired: 'The image was saved without a tag: enter a tag.',
  ImageNotFound: 'The archive has no image by that name.',
  SourceRefused: 'The upload was refused (larger than allowed, or its checksum does not match the pin).',
  SourceUnavailable: 'The upload broke off; retry to send it again.',
  Unauthorized: 'The registry refused the credentials: choose another credentials Secret.',
  UntrustedCertificate: "The registry's certificate is not trusted by the cluster.",
  RegistryUnavailable: 'The registry did not answer; the import tries again.',
  RegistryRejected: 'The registry refused the image.',
  PolicyViolation: "The cluster's policy does not allow this target repository in this namespace.",
  SecretNotFound: 'The credentials Secret does not exist in this namespace.',
  ConfigMapNotFound: 'A ConfigMap the import names does not exist.',
  InvalidSpec: 'The import is not filled in correctly.',
  InvalidConfiguration: 'The import cannot run as configured.',
  UploadExpired: 'The upload stopped for too long and expired: retry, and select the file again.',
  WorkerFailed: 'The import stopped unexpectedly.',
  InternalError: 'The import failed inside imageimport.',
};

export function condition(obj, type) {
  return (obj?.status?.conditions ?? []).find((c) => c.type === type);
}

/**
 * `{kind, reason, message}` with kind one of: waiting (for the archive), uploading,
 * importing (verify and push), done, failed.
 */
export function phaseOf(obj) {
  const ready = condition(obj, 'Ready');
  const observed = obj?.status?.observedGeneration;
  const current = observed === undefined || observed === obj?.metadata?.generation;
  if (ready?.status === 'True' && current) return { kind: 'done', reason: ready.reason, message: ready.message ?? '' };
  const reason = ready?.reason ?? '';
  const message = ready?.message ?? '';
  if (!ready || !current || WORKING.has(reason)) {
    if (reason === 'AwaitingUpload') return { kind: 'waiting', reason, message };
    if (reason === 'Uploading') return { kind: 'uploading', reason, message };
    return { kind: 'importing', reason: reason || 'Pending', message };
  }
  return { kind: 'failed', reason, message, explanation: REASONS[reason] ?? 'The import failed.' };
}

/** Pull references (`repo:tag@digest`) of a finished import. */
export function pullRefs(obj) {
  const st = obj?.status ?? {};
  if (Array.isArray(st.pushed) && st.pushed.length) return st.pushed;
  const out = [];
  for (const img of st.images ?? []) for (const r of img.refs ?? []) out.push(`${r}@${img.digest}`);
  return out;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function age(timestamp, now = Date.now()) {
  const t = Date.parse(timestamp ?? '');
  if (!Number.isFinite(t)) return '';
  const s = Math.max(0, (now - t) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}
