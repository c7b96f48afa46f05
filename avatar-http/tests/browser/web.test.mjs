// The web page in real headless Chromium: click Generate, check that a decoded image of the
// right size appears, toggle size/transparency/seed, and keep screenshots as CI artefacts.
//
//   cd avatar-http/tests/browser && npm ci && node --test
//
// Server: AVATAR_URL (a running server), else `cargo run --release -p avatar-http` on a free
// port (set AVATAR_WEIGHTS_DIR to serve other weights than the embedded ones).
// Screenshots: $AVATAR_ARTIFACTS_DIR (default <workspace>/target/artifacts): web.png, docs.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const CHROMIUM = "/usr/bin/chromium";
if (!existsSync(CHROMIUM)) {
  console.log("skipped: no chromium");
  process.exit(0);
}
const { chromium } = await import("playwright-core");

const here = dirname(fileURLToPath(import.meta.url));
const workspace = resolve(here, "../../..");
const artifacts = process.env.AVATAR_ARTIFACTS_DIR || join(workspace, "target", "artifacts");

let server = null;
let baseUrl = process.env.AVATAR_URL || "";
let context = null;
let userDataDir = null;

async function startServer() {
  const child = spawn(
    "cargo",
    ["run", "--release", "--quiet", "-p", "avatar-http", "--", "--port", "0", "--store", "memory"],
    { cwd: workspace, stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" } },
  );
  const url = await new Promise((resolvePromise, reject) => {
    let buffer = "";
    child.stdout.on("data", (chunk) => {
      buffer += chunk;
      const match = buffer.match(/listening on (http:\/\/\S+)/);
      if (match) resolvePromise(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`avatar-http exited with ${code} before listening`)));
  });
  return { child, url };
}

before(async () => {
  if (!baseUrl) {
    server = await startServer();
    baseUrl = server.url;
  }
  mkdirSync(artifacts, { recursive: true });
  userDataDir = mkdtempSync(join(tmpdir(), "avatar-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1100, height: 800 },
  });
});

after(async () => {
  if (context) await context.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  if (server) {
    server.child.kill("SIGTERM");
    await new Promise((r) => server.child.once("exit", r));
  }
});

/** Waits for #avatar to be a decoded image of `side` pixels and returns what the page sees. */
async function waitForAvatar(page, side) {
  await page.waitForFunction(
    (side) => {
      const img = document.querySelector("#avatar");
      return img && img.complete && img.naturalWidth === side;
    },
    side,
    { timeout: 30_000 },
  );
  return page.evaluate(async () => {
    const img = document.querySelector("#avatar");
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const alpha = (x, y) => ctx.getImageData(x, y, 1, 1).data[3];
    const w = img.naturalWidth - 1;
    return {
      width: img.naturalWidth,
      height: img.naturalHeight,
      seed: img.dataset.seed,
      corners: [alpha(0, 0), alpha(w, 0), alpha(0, w), alpha(w, w)],
      centre: alpha(Math.floor(w / 2), Math.floor(w / 2)),
      meta: document.querySelector("#meta").textContent,
      download: document.querySelector("#download").href,
      recent: document.querySelectorAll("#recent img").length,
      error: document.querySelector("#error").textContent,
    };
  });
}

test("Generate shows a decoded avatar of the chosen size", async () => {
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (!["blob:", "data:"].includes(url.protocol) && url.origin !== new URL(baseUrl).origin) {
      problems.push(`external request: ${r.url()}`);
    }
  });

  await page.goto(`${baseUrl}/`);
  assert.equal(await page.title(), "Avatar Generator");

  await page.click("#generate");
  const small = await waitForAvatar(page, 96);
  assert.equal(small.width, 96);
  assert.equal(small.height, 96);
  assert.ok(small.corners.every((a) => a === 255), `opaque by default: ${small.corners}`);
  assert.match(small.download, /^blob:/);
  assert.equal(small.recent, 1);
  assert.equal(small.error, "");

  await page.click("label[for=size-large]");
  await page.check("#transparent");
  await page.fill("#seed", "alice");
  await page.click("#generate");
  const large = await waitForAvatar(page, 128);
  assert.equal(large.height, 128);
  assert.equal(large.seed, "alice");
  assert.match(large.meta, /seed alice · large · 128×128 · transparent/);
  assert.ok(large.corners.every((a) => a < 16), `transparent corners: ${large.corners}`);
  assert.ok(large.centre > 0, "something is drawn in the middle");
  assert.equal(large.recent, 2);
  assert.match(await page.getAttribute("#permalink", "href"), /^\/avatar\/alice\.png\?size=large&transparent=true$/);

  await page.screenshot({ path: join(artifacts, "web.png"), fullPage: true });
  assert.deepEqual(problems, []);
  await page.close();
});

test("the docs page renders the OpenAPI spec without external assets", async () => {
  const page = await context.newPage();
  const external = [];
  page.on("request", (r) => { if (new URL(r.url()).origin !== new URL(baseUrl).origin) external.push(r.url()); });
  await page.goto(`${baseUrl}/docs`);
  await page.waitForSelector("section.op h2");
  const paths = await page.$$eval("section.op h2", (nodes) => nodes.map((n) => n.textContent));
  assert.ok(paths.some((p) => p.includes("/generate-image")), paths.join(", "));
  assert.ok(paths.some((p) => p.includes("/tasks/avatars")), paths.join(", "));
  await page.screenshot({ path: join(artifacts, "docs.png") });
  assert.deepEqual(external, []);
  await page.close();
});
