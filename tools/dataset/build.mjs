#!/usr/bin/env node
// Offline cartoon-avatar dataset builder.
//
//   node build.mjs --out DIR [--count 50000] [--sizes 96,128]
//                  [--style lorelei|adventurer] [--seed 42] [--workers N] [--force]
//
// Renders `count` DiceBear avatars, rasterises each with resvg at every requested
// size as an RGBA PNG with a transparent background, and writes
//   DIR/<size>/<index zero-padded>.png, DIR/labels.jsonl, DIR/dataset.json,
//   DIR/LICENSE.md, DIR/CREDITS.md, DIR/STYLE-LICENSE.txt
// Output is a pure function of (style, seed, count, sizes, package versions):
// the worker count does not change a single byte.
//
// The same file is the worker script (worker_threads); see runWorker().

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

import { createAvatar, license as dicebearLicense } from '@dicebear/core';
import * as collection from '@dicebear/collection';
import { Resvg } from '@resvg/resvg-js';

const require = createRequire(import.meta.url);

// ---------------------------------------------------------------------------
// Styles, licences and palettes
// ---------------------------------------------------------------------------

// What we expect each style's `meta` to say. The build refuses to run if the
// installed package says otherwise, so a licence change cannot slip in silently.
const EXPECTED_META = {
  lorelei: { license: 'CC0 1.0', creator: 'Lisa Wischofsky', attributionRequired: false },
  adventurer: { license: 'CC BY 4.0', creator: 'Lisa Wischofsky', attributionRequired: true },
};

// Shared palettes (hex without '#', the format DiceBear options use).
const SKIN = [
  'ffe3d3', // very light
  'f6d1b1', // light
  'eab98f', // light-medium
  'd9a066', // medium
  'c08352', // tan
  '9d6438', // medium-dark
  '744424', // dark
  '4a2a17', // very dark
];
const HAIR = [
  '1c1c1c', // black
  '3b2719', // dark brown
  '5c3a21', // brown
  '8a5a2e', // light brown / chestnut
  'b88a4c', // dark blonde
  'e3c27c', // blonde
  'f3e2b0', // platinum blonde
  '9a3b1c', // auburn
  'd0612a', // ginger / red
  'a3a3a3', // grey
  'ef8fbd', // pink (fun)
  '4a78d0', // blue (fun)
  '8049b8', // purple (fun)
];

// Per-style options. Every key must exist in the style's JSON schema (checked
// at start-up), and no background colour is set, so backgrounds stay transparent.
const STYLE_OPTIONS = {
  lorelei: {
    skinColor: SKIN,
    hairColor: HAIR,
    // Lorelei draws the whole eye (lashes, iris) as one filled shape in eyesColor.
    eyesColor: ['1c1c1c', '3b2719', '5c3a21', '2f5d8c', '3f7a4a', '6b6b3a', '5a6675'],
    eyebrowsColor: ['1c1c1c', '3b2719', '5c3a21', '8a5a2e', 'b88a4c', '7a7a7a'],
    mouthColor: ['1c1c1c', 'b4423c', 'd2675f', '8e3b37', 'c9707e', '6e4032'],
    noseColor: ['1c1c1c', '5c3a21', '8a5a44', 'b0705a'],
    glassesColor: ['1c1c1c', '5c3a21', '2f5fa8', 'b33a3a', '2e7d4f', 'c9a227', '8e44ad'],
    earringsColor: ['d4af37', 'c0c0c0', 'e74c3c', '3498db', '2ecc71', 'ff79c6'],
    hairAccessoriesColor: ['ff6b9a', 'ffd166', 'ef476f', '06d6a0', '9b5de5', 'ffffff'],
    frecklesColor: ['a0522d', '8b5a2b', 'c68642', 'd08c60'],
    glassesProbability: 20,
    earringsProbability: 25,
    beardProbability: 10,
    frecklesProbability: 15,
    hairAccessoriesProbability: 10,
  },
  adventurer: {
    // Adventurer only exposes skin and hair colours.
    skinColor: SKIN,
    hairColor: HAIR,
    glassesProbability: 20,
    earringsProbability: 25,
    featuresProbability: 25,
  },
};

// Constant output of DiceBear's background handling; checked, then left out of labels.
const BACKGROUND_KEYS = ['primaryBackgroundColor', 'secondaryBackgroundColor', 'backgroundType', 'backgroundRotation'];

export const SEED_DERIVATION = 'sha256(`${seed}/${index}`) as hex, first 16 characters';

export function deriveSeed(masterSeed, index) {
  return createHash('sha256').update(`${masterSeed}/${index}`).digest('hex').slice(0, 16);
}

function getStyle(name) {
  const style = collection[name];
  if (!style || !EXPECTED_META[name]) {
    throw new Error(`unknown style "${name}" (supported: ${Object.keys(EXPECTED_META).join(', ')})`);
  }
  return style;
}

function checkMeta(name, style) {
  const meta = style.meta;
  const want = EXPECTED_META[name];
  if (!meta || !meta.license || !meta.creator) {
    throw new Error(`@dicebear/collection "${name}" has no meta/licence information; refusing to build`);
  }
  if (meta.license.name !== want.license || meta.creator !== want.creator) {
    throw new Error(
      `licence check failed for "${name}": package says ${meta.license.name} by ${meta.creator}, ` +
        `expected ${want.license} by ${want.creator}. Review the new licence, then update EXPECTED_META.`,
    );
  }
  return meta;
}

function checkOptions(name, style) {
  const props = style.schema?.properties ?? {};
  const opts = STYLE_OPTIONS[name];
  for (const key of Object.keys(opts)) {
    if (!(key in props)) throw new Error(`option "${key}" is not in the ${name} schema (DiceBear version drift?)`);
  }
  return opts;
}

// Turn DiceBear's `extra` into a label: drop the (constant, checked) background
// fields, turn absent components into null, and null out the colour of a part
// that was not drawn (DiceBear still picks one).
function labelFromExtra(extra) {
  for (const k of ['primaryBackgroundColor', 'secondaryBackgroundColor']) {
    if (extra[k] !== 'transparent') throw new Error(`background is not transparent: ${k}=${extra[k]}`);
  }
  const out = {};
  for (const [k, v] of Object.entries(extra)) {
    if (BACKGROUND_KEYS.includes(k)) continue;
    out[k] = v === undefined ? null : v;
  }
  for (const k of Object.keys(out)) {
    if (k.endsWith('Color')) {
      const part = k.slice(0, -'Color'.length);
      if (part in out && out[part] === null) out[k] = null;
    }
  }
  return out;
}

export function renderOne({ styleName, masterSeed, index, sizes }) {
  const style = getStyle(styleName);
  const seed = deriveSeed(masterSeed, index);
  const { svg, extra } = createAvatar(style, { seed, ...STYLE_OPTIONS[styleName] }).toJson();
  const attrs = labelFromExtra(extra);
  const pngs = sizes.map((size) => {
    const resvg = new Resvg(svg, {
      fitTo: { mode: 'width', value: size },
      font: { loadSystemFonts: false }, // avatars contain no text; loading fonts is slow
    });
    return resvg.render().asPng();
  });
  return { seed, attrs, pngs };
}

function pad(index, width) {
  return String(index).padStart(width, '0');
}

function padWidth(count) {
  return Math.max(6, String(count - 1).length);
}

// ---------------------------------------------------------------------------
// Worker
// ---------------------------------------------------------------------------

// resvg-js keeps each parsed tree and rendered pixmap in native memory that is
// only released by a finalizer after a full GC *and* a turn of the event loop
// (thx/resvg-js#216). V8 does not see that memory, so a tight synchronous loop
// grows by ~170 KB per avatar (8 GB RSS for 50k avatars). Workers therefore
// force a GC and yield every GC_EVERY avatars, which keeps RSS flat
// (~150 MB for the whole process; GC costs ~3% of the time at 128).
const GC_EVERY = 128;

function exposeGc() {
  if (typeof globalThis.gc === 'function') return globalThis.gc;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc');
}

async function runWorker() {
  const { styleName, masterSeed, count, sizes, outDir, workerId, workers } = workerData;
  const width = padWidth(count);
  const gc = exposeGc();
  let batch = [];
  const flush = () => {
    if (batch.length) parentPort.postMessage({ type: 'labels', items: batch });
    batch = [];
  };
  try {
    // Strided share: worker w renders indices w, w+N, w+2N, ...
    let n = 0;
    for (let index = workerId; index < count; index += workers) {
      const { seed, attrs, pngs } = renderOne({ styleName, masterSeed, index, sizes });
      const file = `${pad(index, width)}.png`;
      sizes.forEach((size, k) => fs.writeFileSync(path.join(outDir, String(size), file), pngs[k]));
      batch.push({ index, label: { index, file, seed, ...attrs } });
      if (++n % GC_EVERY === 0) {
        flush();
        gc();
        await new Promise(setImmediate);
      }
    }
    flush();
    parentPort.postMessage({ type: 'done', rss: process.memoryUsage().rss });
  } catch (err) {
    flush();
    parentPort.postMessage({ type: 'error', message: err?.stack ?? String(err) });
  }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const USAGE = `usage: node build.mjs --out DIR [--count 50000] [--sizes 96,128]
                      [--style lorelei|adventurer] [--seed 42] [--workers N] [--force]

  --out DIR      output directory (relative paths resolve against the directory
                 npm was started from when run via "npm run build")
  --count N      number of avatars (default 50000)
  --sizes LIST   comma-separated square sizes in px (default 96,128)
  --style NAME   lorelei (CC0 1.0, default) or adventurer (CC BY 4.0)
  --seed S       master seed (string, default 42)
  --workers N    worker threads (default: number of CPUs); does not affect output
  --force        replace an existing dataset in DIR
`;

function parseCli(argv) {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string' },
      count: { type: 'string', default: '50000' },
      sizes: { type: 'string', default: '96,128' },
      style: { type: 'string', default: 'lorelei' },
      seed: { type: 'string', default: '42' },
      workers: { type: 'string', default: String(os.cpus().length) },
      force: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const fail = (msg) => {
    process.stderr.write(`error: ${msg}\n\n${USAGE}`);
    process.exit(2);
  };
  if (!values.out) fail('--out is required');
  const posInt = (s, what, max) => {
    if (!/^\d+$/.test(s) || Number(s) < 1 || Number(s) > max) fail(`${what} must be an integer in 1..${max}, got "${s}"`);
    return Number(s);
  };
  const count = posInt(values.count, '--count', 100_000_000);
  const sizes = [...new Set(values.sizes.split(',').map((s) => posInt(s.trim(), '--sizes entry', 4096)))];
  const workers = Math.min(posInt(values.workers, '--workers', 256), count);
  if (!EXPECTED_META[values.style]) fail(`--style must be one of ${Object.keys(EXPECTED_META).join(', ')}`);
  // Under "npm run", the cwd is the package dir; resolve relative paths against
  // where the user actually typed the command.
  const base = process.env.npm_lifecycle_event && process.env.INIT_CWD ? process.env.INIT_CWD : process.cwd();
  const outDir = path.resolve(base, values.out);
  return { outDir, count, sizes, workers, styleName: values.style, masterSeed: values.seed, force: values.force };
}

function pkgInfo(name) {
  // Walk up from the resolved entry point to the package's own package.json.
  let dir = path.dirname(require.resolve(name));
  for (;;) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p)) {
      const pj = JSON.parse(fs.readFileSync(p, 'utf8'));
      if (pj.name === name) return { version: pj.version, license: pj.license, dir };
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find package.json of ${name}`);
    dir = up;
  }
}

const KNOWN_FILES = ['labels.jsonl', 'dataset.json', 'LICENSE.md', 'CREDITS.md', 'STYLE-LICENSE.txt'];

function prepareOutDir(outDir, sizes, force) {
  fs.mkdirSync(outDir, { recursive: true });
  const existing = fs.readdirSync(outDir).filter((n) => KNOWN_FILES.includes(n) || /^\d+$/.test(n));
  if (existing.length) {
    if (!force) {
      throw new Error(`${outDir} already holds a dataset (${existing.slice(0, 4).join(', ')}...); pass --force to replace it`);
    }
    for (const n of existing) fs.rmSync(path.join(outDir, n), { recursive: true, force: true });
  }
  for (const s of sizes) fs.mkdirSync(path.join(outDir, String(s)), { recursive: true });
}

function fmtDuration(sec) {
  if (!Number.isFinite(sec)) return '?';
  const s = Math.round(sec);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return (h ? `${h}h` : '') + (h || m ? `${String(m).padStart(h ? 2 : 1, '0')}m` : '') + `${String(s % 60).padStart(h || m ? 2 : 1, '0')}s`;
}

function computeStats(labels) {
  const stats = {};
  for (const l of labels) {
    for (const [k, v] of Object.entries(l)) {
      if (k === 'index' || k === 'file' || k === 'seed') continue;
      const key = v === null ? '(none)' : String(v);
      (stats[k] ??= {})[key] = (stats[k][key] ?? 0) + 1;
    }
  }
  // Sorted keys so dataset.json is byte-stable.
  const sorted = {};
  for (const k of Object.keys(stats).sort()) {
    sorted[k] = Object.fromEntries(Object.entries(stats[k]).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
  return sorted;
}

function writeDocs(cfg, meta, versions, styleDir) {
  const { outDir, styleName, count, sizes, masterSeed } = cfg;
  const attribution = dicebearLicense.text(getStyle(styleName));
  const needsCredit = EXPECTED_META[styleName].attributionRequired;
  const license = `# Licence of this dataset

The images in this directory were generated with DiceBear's **${meta.title}** avatar style.

- Design: "${meta.title}" by **${meta.creator}** (${meta.homepage ?? 'no homepage given'})
- Source: ${meta.source}
- Licence of the design: **${meta.license.name}** — ${meta.license.url}

${
  needsCredit
    ? `The design is licensed under ${meta.license.name}, which requires attribution. Any use or
redistribution of these images (or of material derived from them) must credit:

> ${attribution}

and indicate if changes were made. Here the design was recombined by DiceBear and
rasterised to PNG; no other changes were made.`
    : `The design is dedicated to the public domain under ${meta.license.name}; no attribution is
required. It is given anyway:

> ${attribution}`
}

STYLE-LICENSE.txt is the LICENSE file shipped in @dicebear/${styleName} ${versions[`@dicebear/${styleName}`] ?? ''}.
`;
  const credits = `# Credits

## Artwork
- Style: ${meta.title} (@dicebear/${styleName})
- Creator: ${meta.creator}${meta.homepage ? ` — ${meta.homepage}` : ''}
- Source: ${meta.source}
- Licence: ${meta.license.name} — ${meta.license.url}
- Attribution: ${attribution}

## Generator
${Object.entries(versions)
  .map(([name, v]) => `- ${name} ${v}${name.startsWith('@') ? ` (${pkgInfo(name).license})` : ''}`)
  .join('\n')}

DiceBear is by Florian Körner (https://www.dicebear.com); resvg-js by the resvg-js
contributors (https://github.com/yisibl/resvg-js).

## Parameters
- count: ${count}
- sizes: ${sizes.join(', ')} px
- master seed: ${JSON.stringify(masterSeed)}
- per-avatar DiceBear seed: ${SEED_DERIVATION}
- builder: tools/dataset/build.mjs
`;
  fs.writeFileSync(path.join(outDir, 'LICENSE.md'), license);
  fs.writeFileSync(path.join(outDir, 'CREDITS.md'), credits);
  fs.copyFileSync(path.join(styleDir, 'LICENSE'), path.join(outDir, 'STYLE-LICENSE.txt'));
}

async function main() {
  const cfg = parseCli(process.argv.slice(2));
  const { outDir, count, sizes, workers, styleName, masterSeed, force } = cfg;
  const style = getStyle(styleName);
  const meta = checkMeta(styleName, style);
  const options = checkOptions(styleName, style);
  const styleInfo = pkgInfo(`@dicebear/${styleName}`);
  const versions = {
    '@dicebear/core': pkgInfo('@dicebear/core').version,
    '@dicebear/collection': pkgInfo('@dicebear/collection').version,
    [`@dicebear/${styleName}`]: styleInfo.version,
    '@resvg/resvg-js': pkgInfo('@resvg/resvg-js').version,
  };
  prepareOutDir(outDir, sizes, force);

  console.log(
    `building ${count} ${styleName} avatars (${meta.license.name}, ${meta.creator}) at ${sizes.join(',')} px ` +
      `seed=${JSON.stringify(masterSeed)} workers=${workers} -> ${outDir}`,
  );
  const t0 = performance.now();
  const labels = new Array(count);
  let done = 0;
  let lastPrint = t0;
  const progress = (final = false) => {
    const now = performance.now();
    if (!final && now - lastPrint < 5000) return;
    lastPrint = now;
    const el = (now - t0) / 1000;
    const rate = done / el;
    console.log(
      `  ${String(done).padStart(String(count).length)}/${count} (${((100 * done) / count).toFixed(1).padStart(5)}%)` +
        `  ${rate.toFixed(1)} avatars/s  elapsed ${fmtDuration(el)}  eta ${fmtDuration((count - done) / rate)}`,
    );
  };

  const pool = [];
  await new Promise((resolve, reject) => {
    let running = workers;
    let failed = false;
    for (let w = 0; w < workers; w++) {
      const worker = new Worker(fileURLToPath(import.meta.url), {
        workerData: { styleName, masterSeed, count, sizes, outDir, workerId: w, workers },
      });
      pool.push(worker);
      worker.on('message', (msg) => {
        if (msg.type === 'labels') {
          for (const { index, label } of msg.items) labels[index] = label;
          done += msg.items.length;
          progress();
        } else if (msg.type === 'error') {
          failed = true;
          for (const p of pool) p.terminate();
          reject(new Error(`worker ${w} failed: ${msg.message}`));
        }
      });
      worker.on('error', (err) => {
        failed = true;
        for (const p of pool) p.terminate();
        reject(err);
      });
      worker.on('exit', (code) => {
        if (failed) return;
        if (code !== 0) {
          failed = true;
          reject(new Error(`worker ${w} exited with code ${code}`));
          return;
        }
        if (--running === 0) resolve();
      });
    }
  });
  progress(true);

  for (let i = 0; i < count; i++) if (!labels[i]) throw new Error(`missing label for index ${i}`);
  fs.writeFileSync(path.join(outDir, 'labels.jsonl'), labels.map((l) => JSON.stringify(l) + '\n').join(''));
  writeDocs(cfg, meta, versions, styleInfo.dir);
  const dataset = {
    name: `dicebear-${styleName}`,
    count,
    sizes,
    style: styleName,
    styleMeta: meta,
    seed: masterSeed,
    seedDerivation: SEED_DERIVATION,
    layout: {
      images: `<size>/<index zero-padded to ${padWidth(count)}>.png, RGBA, transparent background`,
      labels: 'labels.jsonl, one object per index in index order; attributes read back from DiceBear toJson().extra',
    },
    options,
    versions,
    stats: computeStats(labels),
  };
  // Written last: its presence marks a complete dataset.
  fs.writeFileSync(path.join(outDir, 'dataset.json'), JSON.stringify(dataset, null, 2) + '\n');
  const total = (performance.now() - t0) / 1000;
  console.log(`done: ${count} avatars x ${sizes.length} sizes in ${fmtDuration(total)} (${total.toFixed(1)} s, ${(count / total).toFixed(1)} avatars/s)`);
}

if (!isMainThread) {
  runWorker();
} else if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    console.error(`error: ${err?.message ?? err}`);
    process.exit(1);
  });
}
