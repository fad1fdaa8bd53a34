// `kubectl imageimport ui` in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core), for tests/plugin_ui.rs: the address the plugin printed opens the console
// signed in as the kubeconfig's user, with no token typed, and lists that user's imports.
//
//   node e2e/ui.mjs --address URL --namespace NS --import NAME
//
// Prints one JSON line per step on stdout; a failure exits 1.

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(`--${name}`);
  if (i < 0) throw new Error(`--${name} is required`);
  return args[i + 1];
};
const address = opt('address');
const namespace = opt('namespace');
const importName = opt('import');
const emit = (event, extra = {}) => console.log(JSON.stringify({ event, ...extra }));

const profile = mkdtempSync(join(tmpdir(), 'imageimport-ui-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const origin = new URL(address).origin;
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(origin)) foreign.push(r.url()); });
  await page.goto(address);
  // The key left the address bar: it is the session cookie now.
  emit('landed', { url: page.url() });
  const who = page.getByText(/^Signed in as/);
  await who.waitFor({ timeout: 60_000 });
  emit('signed-in', { text: (await page.locator('.who').textContent()).trim() });
  const ns = page.getByLabel('Namespace');
  await ns.fill(namespace);
  await ns.press('Enter');
  await ns.blur();
  await page.getByRole('heading', { name: `ImageImports in ${namespace}` }).waitFor({ timeout: 60_000 });
  await page.getByRole('article', { name: `Import ${importName}` }).waitFor({ timeout: 60_000 });
  emit('listed', { import: importName });
  emit('origins', { foreign });
} catch (e) {
  emit('failed', { error: String(e) });
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
