// The Next.js example end to end: `next build` must have run (scripts/test.sh does), then this
// starts `next start` on a free loopback port, checks the API route over HTTP, and loads the page
// in headless Chromium (Debian's /usr/bin/chromium) to see the avatars decode.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let server;
let base;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function waitUntilUp(url, deadline) {
  for (;;) {
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`next start did not answer at ${url}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

before(async () => {
  assert.ok(existsSync(join(root, '.next', 'BUILD_ID')), 'run `npx next build` first');
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(join(root, 'node_modules', '.bin', 'next'), ['start', '-p', String(port), '-H', '127.0.0.1'], {
    cwd: root,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitUntilUp(`${base}/`, Date.now() + 60_000);
});

after(() => server?.kill());

test('the API route answers a PNG of the asked size', async () => {
  const response = await fetch(`${base}/api/avatar?seed=alice&size=large&transparent=true`);
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'image/png');
  assert.match(response.headers.get('cache-control'), /immutable/);
  const png = Buffer.from(await response.arrayBuffer());
  assert.equal(png.subarray(1, 4).toString('latin1'), 'PNG');
  assert.deepEqual([png.readUInt32BE(16), png.readUInt32BE(20), png[25]], [128, 128, 6]);
  const again = Buffer.from(await (await fetch(`${base}/api/avatar?seed=alice&size=large&transparent=true`)).arrayBuffer());
  assert.ok(png.equals(again), 'the same seed gives the same bytes');
});

test('bad options are 422 JSON naming the field', async () => {
  const response = await fetch(`${base}/api/avatar?bgColor=nope`);
  assert.equal(response.status, 422);
  const body = await response.json();
  assert.equal(body.code, 'ERR_INVALID_OPTION');
  assert.equal(body.field, 'bgColor');
});

test('the page shows decoded avatars in headless Chromium', { skip: !existsSync('/usr/bin/chromium') && 'no chromium' }, async () => {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(join(tmpdir(), 'avatar-next-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  try {
    const page = await context.newPage();
    await page.goto(`${base}/`);
    await page.waitForFunction(
      () => {
        const images = [...document.querySelectorAll('img.avatar')];
        return images.length === 8 && images.every((img) => img.complete && img.naturalWidth > 0);
      },
      null,
      { timeout: 60_000 },
    );
    const sizes = await page.$$eval('img.avatar', (images) => images.map((img) => [img.naturalWidth, img.naturalHeight]));
    assert.deepEqual(sizes, Array(8).fill([128, 128]));
    await page.screenshot({ path: join(root, '..', '..', 'target', 'artifacts', 'nextjs.png') }).catch(() => {});
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
