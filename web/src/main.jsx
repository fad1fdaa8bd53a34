// The imageimport console: sign in as yourself, drop archives, get images.

import { render } from 'preact';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { Kube, KubeError, GROUP, VERSION } from './kube.js';
import { readArchive } from './archive/reader.js';
import { importName, parseTags, patternPrefix, prefill, registryOf, savedPath, REPOSITORY_PATTERN, TAG_PATTERN } from './archive/refs.js';
import { age, formatBytes, formatDuration, phaseOf, pullRefs } from './status.js';
import { startUpload } from './uploads.js';
import './style.css';

const FILE_ANNOTATION = 'console.imageimport.dev/file-name';
const SIZE_ANNOTATION = 'console.imageimport.dev/file-size';
const POLL_MS = 2000;

const store = {
  get: (k) => globalThis.localStorage?.getItem(`imageimport.${k}`) ?? '',
  set: (k, v) => globalThis.localStorage?.setItem(`imageimport.${k}`, v),
};

function explainSignInError(e) {
  if (e instanceof KubeError && e.status === 401) {
    return 'The Kubernetes API server did not accept this token (401 Unauthorized): it is mistyped, expired or revoked.';
  }
  if (e instanceof KubeError && e.status === 0) return e.message;
  return `Sign-in failed: ${e.message}`;
}

// ---------------------------------------------------------------------------------------------
// Sign in

function SignIn({ onSignedIn, notice }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    const t = token.trim().replace(/^Bearer\s+/i, '');
    if (!t) {
      setError('Paste a Kubernetes bearer token first.');
      return;
    }
    setBusy(true);
    setError('');
    try {
      const kube = new Kube(t);
      const user = await kube.whoAmI();
      onSignedIn(kube, user, 'token');
    } catch (e) {
      setError(explainSignInError(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <h1>imageimport</h1>
      <p>Drop a <code>docker save</code> or OCI archive here and get a verified image in your registry.</p>
      {notice && <p class="notice" role="status">{notice}</p>}
      <form onSubmit={submit} aria-label="Sign in">
        <label for="token">Token</label>
        <textarea
          id="token"
          name="token"
          rows={4}
          autocomplete="off"
          spellcheck={false}
          value={token}
          onInput={(e) => setToken(e.currentTarget.value)}
          placeholder="A Kubernetes bearer token (kubectl create token …)"
        />
        <p class="hint">
          Every request this page makes acts as you: the cluster's RBAC decides what you see and may do. The token stays in
          this browser tab.
        </p>
        <button type="submit" disabled={busy}>
          Sign in
        </button>
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </form>
    </main>
  );
}

// ---------------------------------------------------------------------------------------------
// Archives dropped, not yet started

function useDropZone(onFiles) {
  const [over, setOver] = useState(false);
  return {
    over,
    handlers: {
      onDragOver: (e) => {
        e.preventDefault();
        setOver(true);
      },
      onDragLeave: () => setOver(false),
      onDrop: (e) => {
        e.preventDefault();
        setOver(false);
        const files = [...(e.dataTransfer?.files ?? [])];
        if (files.length) onFiles(files);
      },
    },
  };
}

let draftSeq = 0;

function newDraft(file) {
  return { id: `d${++draftSeq}`, file, state: 'reading', read: 0, info: null, error: '', choice: '0', repository: '', tag: '' };
}

function draftTarget(draft) {
  const images = draft.info?.images ?? [];
  if (draft.choice === 'all') return { allImages: true };
  const img = images[Number(draft.choice)];
  if (images.length > 1 && img) return { image: img.tags[0] ?? img.id };
  return {};
}

function validateDraft(d) {
  if (d.state === 'error') return d.error;
  if (d.state !== 'ready') return 'still reading the archive';
  if (!REPOSITORY_PATTERN.test(d.repository)) {
    return 'Target repository must be registry/path, with a registry host that has a dot or a port (registry.example:5000/team/app)';
  }
  if (d.choice !== 'all') {
    const tags = parseTags(d.tag);
    const bad = tags.find((t) => !TAG_PATTERN.test(t));
    if (bad) return `"${bad}" is not a valid tag`;
    if (tags.length === 0) return 'enter a tag';
  } else {
    const untagged = d.info.images.filter((i) => i.tags.length === 0);
    if (untagged.length) return `${untagged.length} image(s) of this archive have no saved name: import them one at a time`;
  }
  return '';
}

function Draft({ draft, update, remove }) {
  const images = draft.info?.images ?? [];
  const id = draft.id;
  const problem = draft.state === 'ready' ? validateDraft(draft) : '';
  return (
    <fieldset class="draft" aria-label={`Archive ${draft.file.name}`}>
      <legend>
        {draft.file.name} <span class="muted">{formatBytes(draft.file.size)}</span>
      </legend>
      {draft.state === 'reading' && (
        <p role="status">
          Reading the archive's metadata…{' '}
          {draft.info === null && draft.read > 0 && `${Math.round((100 * draft.read) / Math.max(1, draft.file.size))} %`}
        </p>
      )}
      {draft.state === 'error' && (
        <p class="error" role="alert">
          This archive cannot be imported: {draft.error}
        </p>
      )}
      {draft.state === 'ready' && (
        <>
          <p class="muted">
            {draft.info.format === 'docker' ? 'docker save archive' : draft.info.format === 'oci' ? 'OCI archive' : 'docker save archive with an OCI index'}
            {draft.info.compression !== 'none' && `, ${draft.info.compression}-compressed`}, {draft.info.members} members
          </p>
          <table class="images">
            <caption class="sr-only">Images in {draft.file.name}</caption>
            <thead>
              <tr>
                <th scope="col">Image</th>
                <th scope="col">Platform</th>
                <th scope="col">Layers</th>
                <th scope="col">Size</th>
              </tr>
            </thead>
            <tbody>
              {images.map((img) => (
                <tr key={img.id}>
                  <td>
                    {img.tags.length ? img.tags.join(', ') : <span class="muted">untagged {img.id.slice(7, 19)}</span>}
                  </td>
                  <td>{img.platforms.map((p) => p.platform).join(', ') || '—'}</td>
                  <td>{img.layers}</td>
                  <td>{formatBytes(img.bytes)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {images.some((i) => i.leftOut.length) && (
            <p class="muted">Some platforms the index lists are not in the archive and will be left out.</p>
          )}
          <div class="fields">
            {images.length > 1 && (
              <label>
                Images to import
                <select value={draft.choice} onChange={(e) => update(id, { choice: e.currentTarget.value })}>
                  <option value="all">All {images.length} images, each under its saved name</option>
                  {images.map((img, i) => (
                    <option key={img.id} value={String(i)}>
                      Only {img.tags[0] ?? img.id.slice(0, 19)}
                    </option>
                  ))}
                </select>
              </label>
            )}
            <label>
              {draft.choice === 'all' ? 'Target repository (prefix)' : 'Target repository'}
              <input
                type="text"
                value={draft.repository}
                list="repositories"
                spellcheck={false}
                autocomplete="off"
                onInput={(e) => update(id, { repository: e.currentTarget.value.trim() })}
              />
            </label>
            {draft.choice !== 'all' && (
              <label>
                Tag
                <input type="text" value={draft.tag} spellcheck={false} autocomplete="off" onInput={(e) => update(id, { tag: e.currentTarget.value })} />
              </label>
            )}
          </div>
          {draft.choice === 'all' && (
            <p class="muted">
              Each image goes to the prefix plus its saved path, under its saved tags (e.g.{' '}
              {`${draft.repository || 'registry/prefix'}/${savedPath(images.find((i) => i.tags.length)?.tags[0] ?? 'app:1')}`}).
            </p>
          )}
          {draft.info.problems.length > 0 && (
            <p class="error" role="alert">
              The import would refuse this archive: {draft.info.problems[0]}
            </p>
          )}
          {problem && draft.info.problems.length === 0 && <p class="hint">{problem}</p>}
        </>
      )}
      <button type="button" class="secondary" onClick={() => remove(id)} aria-label={`Remove ${draft.file.name}`}>
        Remove
      </button>
    </fieldset>
  );
}

// ---------------------------------------------------------------------------------------------
// Imports

function CopyButton({ text, label }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Without clipboard access, select the text for a manual copy.
      const field = document.getElementById(`ref-${text}`);
      field?.select();
    }
    setCopied(true);
    setTimeout(() => setCopied(false), 2000);
  };
  return (
    <button type="button" class="secondary small" onClick={copy} aria-label={label}>
      {copied ? 'Copied' : 'Copy'}
    </button>
  );
}

function Progress({ label, value, max, children }) {
  return (
    <div class="progress">
      <progress aria-label={label} value={value ?? undefined} max={max || 1} />
      <span class="muted">{children}</span>
    </div>
  );
}

function ImportCard({ obj, upload, hasFile, onReselect, onResume, onDelete, onRetry, now }) {
  const name = obj.metadata.name;
  const phase = phaseOf(obj);
  const st = obj.status ?? {};
  const fileName = obj.metadata.annotations?.[FILE_ANNOTATION];
  const fileSize = Number(obj.metadata.annotations?.[SIZE_ANNOTATION] ?? st.upload?.length ?? 0);
  const ready = phase.kind === 'done';
  // Several images go under the prefix, each as its saved name and tag (no ellipsis: it read as
  // a reference cut short).
  const target = obj.spec.allImages
    ? `${obj.spec.target.repository}/<saved name>:<saved tag>`
    : `${obj.spec.target.repository}:${(obj.spec.target.tags ?? []).join(',') || '<saved tag>'}`;
  const refs = pullRefs(obj);
  const serverOffset = st.upload?.offset ?? 0;
  const total = upload?.total ?? st.upload?.length ?? fileSize;
  const acked = upload?.acked ?? serverOffset;
  return (
    <article class={`import ${phase.kind}`} aria-label={`Import ${name}`}>
      <header>
        <h3>{name}</h3>
        <span class={`badge ${phase.kind}`}>{ready ? 'Ready' : phase.kind === 'failed' ? 'Failed' : 'Not ready'}</span>
        <span class="muted" title={obj.metadata.creationTimestamp}>
          {age(obj.metadata.creationTimestamp, now)} old
        </span>
      </header>
      <dl>
        <dt>Target</dt>
        <dd class="target" title={target}>
          {target}
        </dd>
        {fileName && (
          <>
            <dt>Archive</dt>
            <dd>
              {fileName} ({formatBytes(fileSize)})
            </dd>
          </>
        )}
        {st.digest && (
          <>
            <dt>Digest</dt>
            <dd class="mono">{st.digest}</dd>
          </>
        )}
      </dl>
      {(phase.kind === 'waiting' || phase.kind === 'uploading') && (
        <section aria-label="Upload">
          {upload && upload.state !== 'error' && (
            <Progress label={`Upload of ${name}`} value={acked} max={total}>
              {upload.state === 'done' ? 'Uploaded; waiting for the import to finish reading' : 'Uploading'}: {formatBytes(acked)} of {formatBytes(total)}
              {upload.speed > 0 && upload.state !== 'done' && (
                <>
                  {' '}
                  · {formatBytes(upload.speed)}/s · {formatDuration((total - acked) / upload.speed)} left
                </>
              )}
            </Progress>
          )}
          {upload?.state === 'error' && (
            <div role="alert" class="error">
              <p>{upload.error}</p>
              {hasFile && (
                <button type="button" onClick={() => onResume(name)}>
                  Resume upload
                </button>
              )}
            </div>
          )}
          {!upload && !hasFile && (
            <div class="reselect">
              <p>
                {serverOffset > 0 ? `${formatBytes(serverOffset)} of ${formatBytes(total)} taken in. ` : ''}
                To {serverOffset > 0 ? 'resume' : 'start'} the upload, select the file again{fileName ? `: ${fileName}` : ''}.
              </p>
              <label>
                Archive for {name}
                <input type="file" onChange={(e) => e.currentTarget.files?.[0] && onReselect(name, e.currentTarget.files[0], e.currentTarget)} />
              </label>
              {upload === undefined && hasFile === false && null}
            </div>
          )}
          {!upload && hasFile && !st.upload?.url && <p role="status">Waiting for the controller to open the upload…</p>}
        </section>
      )}
      {phase.kind === 'importing' && (
        <section aria-label="Import">
          <Progress label={`Import of ${name}`} value={st.progress?.bytesTotal ? st.progress.bytesDone : null} max={st.progress?.bytesTotal}>
            Verifying and pushing{st.progress?.phase ? ` (${st.progress.phase})` : ''}
            {st.progress?.bytesTotal ? `: ${formatBytes(st.progress.bytesDone)} of ${formatBytes(st.progress.bytesTotal)}` : '…'}
          </Progress>
          {phase.message && <p class="muted">{phase.message}</p>}
        </section>
      )}
      {ready && refs.length > 0 && (
        <section aria-label="Pull references">
          <ul class="refs">
            {refs.map((r) => (
              <li key={r}>
                <input id={`ref-${r}`} class="mono" readOnly value={r} aria-label="Pull reference" />
                <CopyButton text={r} label={`Copy pull reference ${r}`} />
              </li>
            ))}
          </ul>
        </section>
      )}
      {phase.kind === 'failed' && (
        <section role="alert" class="failure" aria-label="Failure">
          <p>
            <strong>{phase.explanation}</strong>
          </p>
          <p class="muted">
            {phase.reason}: {phase.message}
          </p>
        </section>
      )}
      <div class="actions">
        {phase.kind === 'failed' && (
          <button type="button" onClick={() => onRetry(obj)} aria-label={`Retry ${name}`}>
            Retry
          </button>
        )}
        <button type="button" class="danger" onClick={() => onDelete(name)} aria-label={`Delete ${name}`}>
          Delete
        </button>
      </div>
    </article>
  );
}

// ---------------------------------------------------------------------------------------------
// The signed-in page

function Console({ kube, user, via, onSignOut }) {
  const [namespace, setNamespace] = useState(store.get('namespace') || 'default');
  // What is typed, applied on Enter or when the field is left (polling re-renders must not undo typing).
  const [nsInput, setNsInput] = useState(namespace);
  const [namespaces, setNamespaces] = useState([]);
  const [imports, setImports] = useState(null);
  const [listError, setListError] = useState('');
  const [access, setAccess] = useState(null);
  const [secrets, setSecrets] = useState(null);
  const [policy, setPolicy] = useState(null);
  const [secret, setSecret] = useState('');
  const [insecure, setInsecure] = useState(store.get('insecure') === 'true');
  const [drafts, setDrafts] = useState([]);
  const [uploads, setUploads] = useState({});
  const [startError, setStartError] = useState('');
  const [busy, setBusy] = useState(false);
  const [now, setNow] = useState(Date.now());
  const files = useRef(new Map());
  const handles = useRef(new Map());
  const [, bump] = useState(0);

  useEffect(() => {
    kube.namespaces().then(setNamespaces, () => setNamespaces([]));
  }, [kube]);

  // The namespace shown now: answers about an earlier one (still in flight when it changed) are
  // dropped, or the first namespace's refusals would land on the next one.
  const shown = useRef(namespace);
  shown.current = namespace;

  // What this user may do in the namespace, asked before they try.
  useEffect(() => {
    setAccess(null);
    setSecrets(null);
    setSecret('');
    setPolicy(null);
    if (!namespace) return;
    let current = true;
    const ifCurrent = (f) => (v) => current && f(v);
    store.set('namespace', namespace);
    Promise.all([
      kube.can('create', 'imageimports', namespace),
      kube.can('create', 'imageimports', namespace, { subresource: 'upload' }),
    ]).then(
      ifCurrent(([create, upload]) => setAccess({ create: create.allowed, upload: upload.allowed })),
      ifCurrent(() => setAccess({ create: true, upload: true })),
    );
    kube.allowedRepositories(namespace).then(
      ifCurrent(setPolicy),
      ifCurrent(() => setPolicy(null)),
    );
    kube.registrySecrets(namespace).then(
      ifCurrent(setSecrets),
      ifCurrent((e) => setSecrets(e instanceof KubeError && e.status === 403 ? 'forbidden' : [])),
    );
    return () => {
      current = false;
    };
  }, [kube, namespace]);

  const refresh = useCallback(async () => {
    if (!namespace) return;
    try {
      const list = await kube.imports(namespace);
      if (shown.current !== namespace) return;
      const items = (list?.items ?? []).sort((a, b) => (b.metadata.creationTimestamp ?? '').localeCompare(a.metadata.creationTimestamp ?? ''));
      setImports(items);
      setListError('');
    } catch (e) {
      if (shown.current !== namespace) return;
      setImports([]);
      setListError(
        e instanceof KubeError && e.status === 403
          ? `You (${user.username ?? 'this account'}) may not list ImageImports in namespace ${namespace}.`
          : e instanceof KubeError && e.status === 401
            ? 'Your sign-in is no longer accepted (token expired?): sign out and in again.'
            : `Cannot list ImageImports: ${e.message}`,
      );
    }
    setNow(Date.now());
  }, [kube, namespace, user]);

  useEffect(() => {
    setImports(null);
    refresh();
    const t = setInterval(refresh, POLL_MS);
    return () => clearInterval(t);
  }, [refresh]);

  const setUpload = (name, patch) => setUploads((u) => ({ ...u, [name]: patch === null ? undefined : { ...(u[name] ?? {}), ...patch } }));

  // An import with a held file and an upload address gets its upload started (new imports,
  // files selected again after a reload, a resume after an error).
  const begin = useCallback(
    async (obj) => {
      const name = obj.metadata.name;
      const file = files.current.get(`${namespace}/${name}`);
      const url = obj.status?.upload?.url;
      if (!file || !url || handles.current.has(name)) return;
      handles.current.set(name, 'starting');
      setUpload(name, { state: 'uploading', acked: obj.status?.upload?.offset ?? 0, total: file.size, speed: 0, error: '' });
      try {
        const handle = await startUpload(
          file,
          { namespace, name, uid: obj.metadata.uid, generation: obj.metadata.generation, url },
          kube.token,
          {
            progress: ({ acked, total, speed }) => setUpload(name, { state: 'uploading', ...(acked === null ? {} : { acked }), total, speed }),
            done: () => {
              handles.current.delete(name);
              setUpload(name, { state: 'done', acked: file.size });
            },
            error: ({ message }) => {
              handles.current.delete(name);
              setUpload(name, { state: 'error', error: message });
            },
          },
        );
        if (handles.current.get(name) === 'starting') handles.current.set(name, handle);
      } catch (e) {
        handles.current.delete(name);
        setUpload(name, { state: 'error', error: e.message });
      }
    },
    [kube, namespace],
  );

  useEffect(() => {
    for (const obj of imports ?? []) {
      const kind = phaseOf(obj).kind;
      const up = uploads[obj.metadata.name];
      if ((kind === 'waiting' || kind === 'uploading') && (!up || up.state === 'uploading') && !handles.current.has(obj.metadata.name)) begin(obj);
    }
  }, [imports, begin]);

  // Start again when the network comes back.
  useEffect(() => {
    const online = () => {
      for (const [name, u] of Object.entries(uploads)) if (u?.state === 'error' && files.current.has(`${namespace}/${name}`)) resume(name);
    };
    window.addEventListener('online', online);
    return () => window.removeEventListener('online', online);
  });

  const resume = (name) => {
    setUpload(name, { state: 'uploading', error: '' });
    const obj = imports?.find((o) => o.metadata.name === name);
    if (obj) begin(obj);
  };

  const reselect = (name, file, input) => {
    const obj = imports?.find((o) => o.metadata.name === name);
    const expected = Number(obj?.metadata.annotations?.[SIZE_ANNOTATION] ?? obj?.status?.upload?.length ?? file.size);
    const expectedName = obj?.metadata.annotations?.[FILE_ANNOTATION];
    if (file.size !== expected) {
      setUpload(name, { state: 'error', error: `${file.name} is ${formatBytes(file.size)}, but this import's archive${expectedName ? ` (${expectedName})` : ''} is ${formatBytes(expected)}: select the same file.` });
      input.value = '';
      return;
    }
    files.current.set(`${namespace}/${name}`, file);
    setUpload(name, null);
    bump((n) => n + 1);
    if (obj) begin(obj);
  };

  const addFiles = async (list) => {
    const fresh = list.map(newDraft);
    setDrafts((d) => [...d, ...fresh]);
    const registry = store.get('registry') || registryOf(imports?.[0]?.spec?.target?.repository);
    for (const draft of fresh) {
      const update = (patch) => setDrafts((ds) => ds.map((d) => (d.id === draft.id ? { ...d, ...patch } : d)));
      try {
        const info = await readArchive(draft.file, { onProgress: (read) => update({ read }) });
        const first = info.images[0];
        const choice = info.images.length > 1 ? 'all' : '0';
        const filled = choice === 'all' ? { repository: registry, tag: '' } : prefill(first?.tags[0], registry, draft.file.name);
        update({ state: 'ready', info, choice, repository: filled.repository, tag: filled.tag });
      } catch (e) {
        update({ state: 'error', error: e.message });
      }
    }
  };

  const updateDraft = (id, patch) =>
    setDrafts((ds) =>
      ds.map((d) => {
        if (d.id !== id) return d;
        const next = { ...d, ...patch };
        // A single image picked out of several: pre-fill its own name and tag.
        if (patch.choice !== undefined && patch.choice !== 'all' && d.info) {
          const img = d.info.images[Number(patch.choice)];
          const filled = prefill(img?.tags[0], registryOf(d.repository) || store.get('registry'), d.file.name);
          next.repository = filled.repository;
          next.tag = filled.tag;
        } else if (patch.choice === 'all') {
          next.repository = registryOf(d.repository) || d.repository;
        }
        return next;
      }),
    );

  const removeDraft = (id) => setDrafts((ds) => ds.filter((d) => d.id !== id));

  const startable = drafts.length > 0 && drafts.every((d) => d.state === 'ready' && !validateDraft(d) && d.info.problems.length === 0);
  const mayUpload = access === null || (access.create && access.upload);

  const start = async () => {
    setStartError('');
    setBusy(true);
    store.set('insecure', String(insecure));
    const remaining = [];
    for (const d of drafts) {
      const registry = registryOf(d.repository);
      if (registry) store.set('registry', registry);
      const first = d.info.images.find((i) => i.tags.length)?.tags[0];
      const name = importName(d.choice === 'all' && first ? savedPath(first).split(':')[0] : d.repository);
      const object = {
        apiVersion: `${GROUP}/${VERSION}`,
        kind: 'ImageImport',
        metadata: {
          name,
          annotations: { [FILE_ANNOTATION]: d.file.name, [SIZE_ANNOTATION]: String(d.file.size) },
        },
        spec: {
          source: { upload: { maxBytes: d.file.size } },
          ...draftTarget(d),
          target: {
            repository: d.repository,
            ...(d.choice === 'all' ? {} : { tags: parseTags(d.tag) }),
            ...(secret ? { credentialsSecretRef: { name: secret } } : {}),
            ...(insecure ? { insecure: true } : {}),
          },
        },
      };
      try {
        await kube.createImport(namespace, object);
        files.current.set(`${namespace}/${name}`, d.file);
      } catch (e) {
        remaining.push(d);
        setStartError(
          e instanceof KubeError && e.status === 403
            ? `You may not create ImageImports in namespace ${namespace}: ${e.message}`
            : `${d.file.name}: the API server refused the import: ${e.message}`,
        );
      }
    }
    setDrafts(remaining);
    setBusy(false);
    refresh();
  };

  const remove = async (name) => {
    if (!window.confirm(`Delete the import ${name}? Images already pushed stay in the registry.`)) return;
    const h = handles.current.get(name);
    if (h && h !== 'starting') h.abort();
    handles.current.delete(name);
    files.current.delete(`${namespace}/${name}`);
    setUpload(name, null);
    try {
      await kube.deleteImport(namespace, name);
    } catch (e) {
      setStartError(`Cannot delete ${name}: ${e.message}`);
    }
    refresh();
  };

  const retry = async (obj) => {
    const old = obj.metadata.name;
    const name = importName(obj.spec.target.repository);
    const copy = {
      apiVersion: obj.apiVersion,
      kind: obj.kind,
      metadata: { name, labels: obj.metadata.labels, annotations: obj.metadata.annotations },
      spec: obj.spec,
    };
    try {
      await kube.createImport(namespace, copy);
      const file = files.current.get(`${namespace}/${old}`);
      if (file) files.current.set(`${namespace}/${name}`, file);
      files.current.delete(`${namespace}/${old}`);
      setUpload(old, null);
      handles.current.delete(old);
      await kube.deleteImport(namespace, old).catch(() => {});
    } catch (e) {
      setStartError(`Cannot retry ${old}: ${e.message}`);
    }
    refresh();
  };

  const drop = useDropZone(addFiles);
  // What the cluster policy allows first (a pattern with `*` as the prefix to complete), then
  // the repositories this namespace's imports already use.
  const allowed = useMemo(() => (policy?.restricted ? policy.patterns : []), [policy]);
  const suggestions = useMemo(
    () => [...new Set([...allowed.map(patternPrefix), ...(imports ?? []).map((o) => o.spec?.target?.repository).filter(Boolean)])],
    [allowed, imports],
  );

  return (
    <div class="page" {...drop.handlers}>
      <header class="top">
        <h1>imageimport</h1>
        <div class="who">
          <span>
            Signed in as <strong>{user.username ?? 'unknown'}</strong>
            {via === 'proxy' && ' (through your sign-in proxy)'}
          </span>
          {via === 'token' && (
            <button type="button" class="secondary small" onClick={onSignOut}>
              Sign out
            </button>
          )}
        </div>
      </header>
      <main>
        <section class="namespace">
          <form
            onSubmit={(e) => {
              e.preventDefault();
              setNamespace(nsInput.trim());
            }}
          >
            <label>
              Namespace
              <input
                type="text"
                list="namespaces"
                value={nsInput}
                spellcheck={false}
                autocomplete="off"
                onInput={(e) => setNsInput(e.currentTarget.value)}
                onChange={(e) => setNamespace(e.currentTarget.value.trim())}
              />
            </label>
          </form>
          <datalist id="namespaces">
            {namespaces.map((n) => (
              <option key={n} value={n} />
            ))}
          </datalist>
          <datalist id="repositories">
            {suggestions.map((r) => (
              <option key={r} value={r} />
            ))}
          </datalist>
        </section>

        <section class="new" aria-labelledby="new-heading">
          <h2 id="new-heading">Import archives</h2>
          {access && !access.create && (
            <p class="error" role="alert">
              You ({user.username}) may not create ImageImports in namespace {namespace}: ask its admin for the edit role, or
              pick another namespace.
            </p>
          )}
          {policy?.restricted && (
            <p class="muted" id="policy-repositories">
              {allowed.length
                ? `The cluster policy lets namespace ${namespace} push to: ${allowed.join(', ')} (offered in Target repository; * is one path part, ** any).`
                : `The cluster policy lets namespace ${namespace} push to no registry repository: ask the platform team.`}
            </p>
          )}
          {access && access.create && !access.upload && (
            <p class="error" role="alert">
              You ({user.username}) may create ImageImports in namespace {namespace} but not upload archives into them: that
              needs the verb create on imageimports/upload (group {GROUP}), which the chart adds to the admin and edit roles.
              Ask the namespace admin to grant it.
            </p>
          )}
          <label class={`dropzone ${drop.over ? 'over' : ''}`}>
            <span>Drop docker save or OCI archives here (.tar, .tar.gz, .tar.zst), or choose them</span>
            <input
              type="file"
              multiple
              aria-label="Archive"
              onChange={(e) => {
                const list = [...(e.currentTarget.files ?? [])];
                e.currentTarget.value = '';
                if (list.length) addFiles(list);
              }}
            />
          </label>
          {drafts.map((d) => (
            <Draft key={d.id} draft={d} update={updateDraft} remove={removeDraft} />
          ))}
          {drafts.length > 0 && (
            <div class="start">
              <div class="fields">
                <label>
                  Registry credentials
                  {secrets === 'forbidden' ? (
                    <input type="text" value={secret} placeholder="Secret name (you may not list Secrets here)" onInput={(e) => setSecret(e.currentTarget.value.trim())} />
                  ) : (
                    <select value={secret} onChange={(e) => setSecret(e.currentTarget.value)}>
                      <option value="">None (anonymous, or the registry needs none)</option>
                      {(secrets ?? []).map((s) => (
                        <option key={s} value={s}>
                          {s}
                        </option>
                      ))}
                    </select>
                  )}
                </label>
                <label class="check">
                  <input type="checkbox" checked={insecure} onChange={(e) => setInsecure(e.currentTarget.checked)} />
                  Plain HTTP registry (insecure)
                </label>
              </div>
              <button type="button" class="primary" disabled={!startable || !mayUpload || busy} onClick={start}>
                Start import
              </button>
              {startError && (
                <p class="error" role="alert">
                  {startError}
                </p>
              )}
            </div>
          )}
        </section>

        <section class="list" aria-labelledby="list-heading">
          <h2 id="list-heading">ImageImports in {namespace}</h2>
          {listError && (
            <p class="error" role="alert">
              {listError}
            </p>
          )}
          {imports === null && <p role="status">Loading…</p>}
          {imports?.length === 0 && !listError && <p class="muted">None yet.</p>}
          {(imports ?? []).map((obj) => (
            <ImportCard
              key={obj.metadata.uid}
              obj={obj}
              now={now}
              upload={uploads[obj.metadata.name]}
              hasFile={files.current.has(`${namespace}/${obj.metadata.name}`)}
              onReselect={reselect}
              onResume={resume}
              onDelete={remove}
              onRetry={retry}
            />
          ))}
        </section>
      </main>
    </div>
  );
}

// ---------------------------------------------------------------------------------------------

function App() {
  const [session, setSession] = useState(null);
  const [checking, setChecking] = useState(true);
  const [notice, setNotice] = useState('');

  useEffect(() => {
    (async () => {
      const saved = globalThis.sessionStorage?.getItem('imageimport.token');
      if (saved) {
        try {
          const kube = new Kube(saved);
          setSession({ kube, user: await kube.whoAmI(), via: 'token' });
          return;
        } catch (e) {
          sessionStorage.removeItem('imageimport.token');
          setNotice(explainSignInError(e));
        }
      }
      // An authenticating proxy in front may already send Authorization for us.
      try {
        const kube = new Kube(null);
        setSession({ kube, user: await kube.whoAmI(), via: 'proxy' });
      } catch {
        // Not behind such a proxy: sign in with a token.
      }
    })().finally(() => setChecking(false));
  }, []);

  if (checking) return <p role="status">Loading…</p>;
  if (!session) {
    return (
      <SignIn
        notice={notice}
        onSignedIn={(kube, user, via) => {
          sessionStorage.setItem('imageimport.token', kube.token);
          setSession({ kube, user, via });
        }}
      />
    );
  }
  return (
    <Console
      {...session}
      onSignOut={() => {
        sessionStorage.removeItem('imageimport.token');
        setSession(null);
      }}
    />
  );
}

render(<App />, document.getElementById('app'));
