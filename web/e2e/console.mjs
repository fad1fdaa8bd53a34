// Drives the console in headless Chromium (Debian's /usr/bin/chromium, through playwright-core)
// for tests/console.rs, which runs the real API server, registry, upload service and the
// worker. One scenario per run; each step prints a JSON line on stdout; failures exit 1.
//
//   node e2e/console.mjs <scenario> --url U --token T [--archive F] [--registry R]
//        [--shots DIR] [--namespace NS]
//
// Between the browser and the service sits a TCP relay of this script's own (throttled, so an
// upload lasts long enough to be cut in the middle), which can cut every connection and refuse
// new ones for a while: the network cut of the `network-cut` scenario.

import { chromium } from 'playwright-core';
import { createServer, connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const scenario = args[0];
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const target = new URL(opt('url'));
const token = opt('token', '');
const archive = opt('archive');
const registry = opt('registry', '');
const shots = opt('shots');
const namespace = opt('namespace', 'default');
const rate = Number(opt('rate', String(12 << 20))); // bytes per second through the relay
const STEP_TIMEOUT = 180_000;

const emit = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));

/** A TCP relay to the upload service: throttled upstream bytes, cuttable. */
function relay() {
  const sockets = new Set();
  let down = false;
  let sent = 0;
  let refused = 0;
  const waiters = [];
  const server = createServer((client) => {
    if (down) {
      refused += 1;
      client.destroy();
      for (const w of waiters.splice(0)) w();
      return;
    }
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    upstream.pipe(client);
    // Browser → service, paced at `rate`.
    let budget = 0;
    let last = Date.now();
    client.on('data', (chunk) => {
      sent += chunk.length;
      upstream.write(chunk);
      const now = Date.now();
      budget = Math.max(0, budget - ((now - last) / 1000) * rate) + chunk.length;
      last = now;
      const wait = (budget / rate) * 1000;
      if (wait > 20) {
        client.pause();
        setTimeout(() => client.resume(), wait);
      }
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        cut() {
          down = true;
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        restore() {
          down = false;
        },
        sent: () => sent,
        async refusedAtLeast(n) {
          while (refused < n) await new Promise((r) => waiters.push(r));
        },
        close: () => server.close(),
      });
    });
  });
}

async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'console-e2e-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 900 },
  });
  return { context, close: async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); } };
}

const shot = async (page, name) => {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
};

/** Page requests that leave this origin (there must be none). */
function watchOrigins(page, origin) {
  const foreign = [];
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol !== 'data:' && u.origin !== origin) foreign.push(r.url());
  });
  const violations = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
  });
  return { foreign, violations };
}

async function signIn(page, base, withToken = token) {
  await page.goto(base);
  await page.getByLabel('Token').fill(withToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function openNamespace(page) {
  const ns = page.getByLabel('Namespace');
  await ns.fill(namespace);
  await ns.press('Enter');
  await ns.blur();
  await page.getByRole('heading', { name: `ImageImports in ${namespace}` }).waitFor();
}

/** Drop `file` through the Archive input and fill the target (a prefix for several images). */
async function addArchive(page, file, repository, tag) {
  await page.getByLabel('Archive', { exact: true }).setInputFiles(file);
  const draft = page.getByRole('group', { name: /^Archive / }).last();
  await draft.getByRole('table').waitFor({ timeout: STEP_TIMEOUT });
  const repo = draft.getByLabel(/^Target repository/);
  const prefilled = await repo.inputValue();
  await repo.fill(repository);
  if (tag !== undefined) await draft.getByLabel('Tag').fill(tag);
  return { draft, prefilled };
}

async function startImport(page) {
  await page.getByLabel('Plain HTTP registry (insecure)').check();
  await page.getByRole('button', { name: 'Start import' }).click();
}

/** The card of the import just created (named after its repository: `<prefix>-xxxxx`). */
async function newestCard(page, prefix) {
  const card = page.getByRole('article', { name: new RegExp(`^Import ${prefix}-[a-z0-9]{5}$`) }).first();
  await card.waitFor({ timeout: STEP_TIMEOUT });
  const name = (await card.getByRole('heading').textContent()).trim();
  emit('created', { name });
  return { card, name };
}

async function waitReady(card) {
  await card.getByText('Ready', { exact: true }).waitFor({ timeout: STEP_TIMEOUT });
  // One digest for one image; with several images each pull reference carries its own.
  const digest = (await card.locator('dd.mono').count()) ? (await card.locator('dd.mono').textContent()).trim() : '';
  const refs = await card.getByLabel('Pull reference', { exact: true }).evaluateAll((els) => els.map((e) => e.value));
  return { digest, refs };
}

async function acked(card, name) {
  const bar = card.getByLabel(`Upload of ${name}`);
  if ((await bar.count()) === 0) return 0;
  return Number(await bar.evaluate((el) => el.value).catch(() => 0));
}

async function waitAcked(card, name, atLeast) {
  const deadline = Date.now() + STEP_TIMEOUT;
  for (;;) {
    const n = await acked(card, name);
    if (n >= atLeast) return n;
    if (Date.now() > deadline) throw new Error(`upload of ${name} never reached ${atLeast} acknowledged bytes (at ${n})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const scenarios = {
  /** A forged token is refused, with the reason. */
  async 'wrong-token'(page, base) {
    await signIn(page, base, 'forged.token.value');
    const alert = page.getByRole('alert');
    await alert.waitFor();
    emit('refused', { text: (await alert.textContent()).trim() });
    await shot(page, 'console-wrong-token');
  },

  /** A user who may create ImageImports but not upload sees why, and cannot start. */
  async 'no-upload'(page, base) {
    await signIn(page, base);
    await openNamespace(page);
    const why = page.getByText(/not upload archives into them/);
    await why.waitFor({ timeout: STEP_TIMEOUT });
    await addArchive(page, archive, `${registry}/shop/denied`);
    const disabled = await page.getByRole('button', { name: 'Start import' }).isDisabled();
    emit('explained', { text: (await why.textContent()).trim(), startDisabled: disabled });
    // What the cluster policy lets this namespace push to, offered in Target repository.
    const policy = page.locator('#policy-repositories');
    await policy.waitFor({ timeout: STEP_TIMEOUT });
    const options = await page.locator('datalist#repositories option').evaluateAll((os) => os.map((o) => o.value));
    const list = await page.getByRole('group', { name: /^Archive / }).last().getByLabel('Target repository').getAttribute('list');
    emit('offered', { text: (await policy.textContent()).trim(), options, list });
    await shot(page, 'console-no-upload-permission');
  },

  /** Sign in, drop a multi-image archive, see its images, confirm, Ready with digests. */
  async 'multi-image'(page, base) {
    await page.goto(base);
    await page.getByLabel('Token').waitFor();
    await shot(page, 'console-sign-in');
    await signIn(page, base);
    await openNamespace(page);
    const { draft, prefilled } = await addArchive(page, archive, registry);
    const images = await draft.getByRole('row').count();
    const choice = await draft.getByLabel('Images to import').inputValue();
    emit('read', { rows: images - 1, choice, prefilled });
    await shot(page, 'console-archive-read');
    await startImport(page);
    const { card, name } = await newestCard(page, 'web');
    await card.getByText(/Uploading|Verifying and pushing|Ready/).first().waitFor({ timeout: STEP_TIMEOUT });
    await shot(page, 'console-uploading');
    const ready = await waitReady(card);
    emit('ready', { name, ...ready });
    await shot(page, 'console-ready');
    await page.setViewportSize({ width: 390, height: 844 });
    await shot(page, 'console-phone');
  },

  /** A single-image archive, tag typed, keyboard only after the file is chosen. */
  async 'keyboard'(page, base) {
    await page.goto(base);
    await page.getByLabel('Token').focus();
    await page.keyboard.insertText(token);
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter'); // Sign in
    await openNamespace(page);
    await page.getByLabel('Archive', { exact: true }).setInputFiles(archive);
    const draft = page.getByRole('group', { name: /^Archive / }).last();
    await draft.getByRole('table').waitFor({ timeout: STEP_TIMEOUT });
    await draft.getByLabel('Target repository').focus();
    await page.keyboard.press('Control+A');
    await page.keyboard.insertText(`${registry}/shop/keyboard`);
    await page.keyboard.press('Tab');
    await page.keyboard.press('Control+A');
    await page.keyboard.insertText('kb1');
    await page.getByLabel('Plain HTTP registry (insecure)').focus();
    await page.keyboard.press('Space');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Enter'); // Start import
    const { card, name } = await newestCard(page, 'keyboard');
    emit('ready', { name, ...(await waitReady(card)) });
  },

  /** The network breaks mid-upload; the upload resumes where the import stood. */
  async 'network-cut'(page, base, net) {
    await signIn(page, base);
    await openNamespace(page);
    await addArchive(page, archive, `${registry}/shop/cut`, 'cut1');
    await startImport(page);
    const { card, name } = await newestCard(page, 'cut');
    const before = await waitAcked(card, name, 1);
    const sentBefore = net.sent();
    net.cut();
    emit('cut', { acked: before });
    // Once the page has tried again into the outage, bring the network back.
    await net.refusedAtLeast(2);
    await shot(page, 'console-network-cut');
    net.restore();
    const ready = await waitReady(card);
    emit('ready', { name, ...ready, sentBefore, sentTotal: net.sent() });
  },

  /** Reloaded mid-upload: the card asks for the file again and the upload resumes. */
  async 'reload'(page, base, net) {
    await signIn(page, base);
    await openNamespace(page);
    await addArchive(page, archive, `${registry}/shop/reload`, 'r1');
    await startImport(page);
    const { card, name } = await newestCard(page, 'reload');
    const before = await waitAcked(card, name, 1);
    const sentBefore = net.sent();
    await page.reload();
    const again = page.getByLabel(`Archive for ${name}`);
    await again.waitFor({ timeout: STEP_TIMEOUT });
    await shot(page, 'console-reselect');
    emit('reloaded', { acked: before });
    await again.setInputFiles(archive);
    const reloaded = page.getByRole('article', { name: `Import ${name}` });
    const ready = await waitReady(reloaded);
    emit('ready', { name, ...ready, sentBefore, sentTotal: net.sent() });
  },

  /** A hostile archive the page cannot see through (a tampered layer): the import's reason. */
  async 'hostile'(page, base) {
    await signIn(page, base);
    await openNamespace(page);
    await addArchive(page, archive, `${registry}/shop/hostile`, 'bad');
    await startImport(page);
    const { card, name } = await newestCard(page, 'hostile');
    const failure = card.getByRole('alert');
    await failure.waitFor({ timeout: STEP_TIMEOUT });
    emit('failed', { name, text: (await failure.textContent()).trim() });
    await shot(page, 'console-failed');
  },

  /** A structurally hostile archive is refused in the browser before any upload. */
  async 'refused-early'(page, base) {
    await signIn(page, base);
    await openNamespace(page);
    await page.getByLabel('Archive', { exact: true }).setInputFiles(archive);
    const alert = page.getByRole('group', { name: /^Archive / }).getByRole('alert');
    await alert.waitFor({ timeout: STEP_TIMEOUT });
    emit('refused', { text: (await alert.textContent()).trim(), startDisabled: await page.getByRole('button', { name: 'Start import' }).isDisabled() });
  },
};

const run = scenarios[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}; one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
const net = await relay();
const browser = await launch();
const page = await browser.context.newPage();
page.on('dialog', (d) => d.accept());
const origins = watchOrigins(page, net.url);
let code = 0;
try {
  await run(page, net.url, net);
  emit('origins', { foreign: origins.foreign, cspViolations: origins.violations });
} catch (e) {
  code = 1;
  console.error(e?.stack ?? String(e));
  await shot(page, `failure-${scenario}`).catch(() => {});
  emit('error', { message: String(e?.message ?? e) });
} finally {
  await browser.close().catch(() => {});
  net.close();
}
process.exit(code);
