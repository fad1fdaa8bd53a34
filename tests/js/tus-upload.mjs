// Upload a file with tus-js-client, unchanged, as a browser or Uppy would (tests/upload.rs).
// Usage: node tus-upload.mjs ENDPOINT FILE [--token T] [--chunk-size N] [--abort-after N]
//        [--upload-url URL]
// Prints one JSON line per event: {"url": …}, {"acknowledged": n}, {"done": offset} or
// {"error": message, "status": code}; exit status 0 when done, 3 when aborted on purpose, 1 on error.
import { readFileSync } from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, file, ...rest] = process.argv.slice(2);
const opt = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const data = readFileSync(file);
const token = opt('--token');
const abortAfter = opt('--abort-after') ? Number(opt('--abort-after')) : undefined;
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const upload = new tus.Upload(data, {
  endpoint,
  uploadUrl: opt('--upload-url') || null,
  headers: token ? { Authorization: `Bearer ${token}` } : {},
  chunkSize: opt('--chunk-size') ? Number(opt('--chunk-size')) : Infinity,
  retryDelays: [0, 500, 1000, 2000],
  metadata: { filename: file.split('/').pop(), filetype: 'application/x-tar' },
  onUploadUrlAvailable() {
    say({ url: upload.url });
  },
  onChunkComplete(_size, acknowledged) {
    say({ acknowledged });
    if (abortAfter !== undefined && acknowledged >= abortAfter) {
      upload.abort(false).then(() => {
        say({ aborted: acknowledged });
        process.exit(3);
      });
    }
  },
  onSuccess() {
    say({ done: data.length });
    process.exit(0);
  },
  onError(err) {
    const res = err.originalResponse;
    say({ error: String(err.message || err), status: res ? res.getStatus() : null });
    process.exit(1);
  },
});
upload.start();
