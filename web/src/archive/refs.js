// Saved image names → the target a person confirms: repository and tag.

/** `registry/path:tag` → {host, path, tag}; a bare `1.4` (an OCI ref.name) is only a tag. */
export function splitSaved(saved) {
  let rest = saved.split('@')[0];
  let tag = '';
  const slash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  if (!rest.includes('/') && /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(rest) && !tag && /^[0-9]/.test(rest)) {
    return { host: '', path: '', tag: rest };
  }
  const parts = rest.split('/');
  let host = '';
  if (parts.length > 1 && (parts[0].includes('.') || parts[0].includes(':') || parts[0] === 'localhost')) {
    host = parts.shift();
  }
  return { host, path: parts.join('/').toLowerCase(), tag };
}

/**
 * Where `allImages` puts a saved image under the prefix: its name without the registry, Docker
 * Hub's one-word names under `library/` (`web:1.4` → `library/web:1.4`), as the engine does.
 */
export function savedPath(saved) {
  const { host, path, tag } = splitSaved(saved);
  const p = !host && path && !path.includes('/') ? `library/${path}` : path;
  return tag ? `${p}:${tag}` : p;
}

/** A repository path from a file name: `my-app_1.4.tar.gz` → `my-app_1.4`. */
export function pathFromFileName(fileName) {
  const base = fileName.replace(/\.(tar(\.(gz|zst|zstd))?|tgz|tzst|oci)$/i, '');
  const cleaned = base.toLowerCase().replace(/[^a-z0-9._/-]+/g, '-').replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '');
  return cleaned || 'image';
}

/**
 * The target pre-filled for one saved image: `registry/<saved path>` and the saved tag.
 * Docker Hub's implicit names lose their `docker.io/library/` part.
 */
export function prefill(saved, registry, fileName) {
  const { path, tag } = splitSaved(saved ?? '');
  let p = path.replace(/^library\//, '') || pathFromFileName(fileName ?? '');
  const repository = registry ? `${registry.replace(/\/+$/, '')}/${p}` : p;
  return { repository, tag: tag || 'latest' };
}

/** The registry host of `registry/path` (for a default from earlier imports). */
export function registryOf(repository) {
  const first = (repository ?? '').split('/')[0];
  return first.includes('.') || first.includes(':') || first === 'localhost' ? first : '';
}

/** A name for the ImageImport: lowercase DNS label from the repository, plus a suffix. */
export function importName(repository, random = Math.random) {
  const last = (repository.split('/').pop() || 'image').toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '');
  const suffix = Math.floor(random() * 36 ** 5).toString(36).padStart(5, '0');
  return `${(last || 'image').slice(0, 40)}-${suffix}`;
}

/** Tags typed as `1.4, latest` or `1.4 latest`. */
export function parseTags(text) {
  return (text ?? '').split(/[\s,]+/).filter(Boolean);
}

export const TAG_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
export const REPOSITORY_PATTERN =
  /^(localhost(:[0-9]+)?|[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+(:[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+)\/[a-z0-9]+([._-][a-z0-9]+)*(\/[a-z0-9]+([._-][a-z0-9]+)*)*$/;

/**
 * What the Target repository field offers for a cluster policy pattern: the pattern itself
 * when it names one repository, else its part before the first `*` (`reg:5000/shop/*` →
 * `reg:5000/shop/`), a prefix for the person to complete.
 */
export function patternPrefix(pattern) {
  const star = pattern.indexOf('*');
  return star < 0 ? pattern : pattern.slice(0, star);
}
