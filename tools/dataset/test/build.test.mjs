// node --test tools/dataset/test/  (or: npm --prefix tools/dataset test)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { readPngHeader, decodeRgbaPng } from '../lib/png.mjs';

const BUILD = fileURLToPath(new URL('../build.mjs', import.meta.url));
const COUNT = 8;
const SIZES = [32, 96];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'avatar-dataset-test-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function build(out, extra) {
  // Strip npm_* so INIT_CWD handling does not kick in when run via `npm test`.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('npm_')));
  return execFileSync(process.execPath, [BUILD, '--out', out, ...extra], { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'pipe'] });
}

function listFiles(dir, rel = '') {
  return fs
    .readdirSync(path.join(dir, rel), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(dir, path.join(rel, e.name)) : [path.join(rel, e.name)]))
    .sort();
}

const common = ['--count', String(COUNT), '--sizes', SIZES.join(','), '--seed', 'test-seed'];
const dirA = path.join(tmp, 'w2');
const dirB = path.join(tmp, 'w1');

test('builds with 2 workers and with 1 worker', () => {
  const log = build(dirA, [...common, '--workers', '2']);
  assert.match(log, /done: 8 avatars/);
  build(dirB, [...common, '--workers', '1']);
});

test('every PNG exists, is RGBA at the right size, with transparent corners and colour', () => {
  for (const size of SIZES) {
    for (let i = 0; i < COUNT; i++) {
      const file = path.join(dirA, String(size), `${String(i).padStart(6, '0')}.png`);
      assert.ok(fs.existsSync(file), `${file} missing`);
      const buf = fs.readFileSync(file);
      const h = readPngHeader(buf);
      assert.equal(h.width, size);
      assert.equal(h.height, size);
      assert.equal(h.bitDepth, 8);
      assert.equal(h.colorType, 6, 'colour type must be RGBA (6)');
      const img = decodeRgbaPng(buf);
      const alpha = (x, y) => img.data[(y * size + x) * 4 + 3];
      for (const [x, y] of [[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]]) {
        assert.equal(alpha(x, y), 0, `corner (${x},${y}) of ${file} is not transparent`);
      }
      let opaque = 0;
      let coloured = 0;
      for (let p = 0; p < size * size; p++) {
        const [r, g, b, a] = img.data.subarray(p * 4, p * 4 + 4);
        if (a === 255) {
          opaque++;
          if (Math.max(r, g, b) - Math.min(r, g, b) > 30) coloured++;
        }
      }
      assert.ok(opaque > size * size * 0.1, `${file} is nearly empty`);
      assert.ok(coloured > opaque * 0.2, `${file} looks black-and-white`);
    }
  }
});

test('labels.jsonl has one line per avatar with drawn attributes', () => {
  const lines = fs.readFileSync(path.join(dirA, 'labels.jsonl'), 'utf8').trimEnd().split('\n');
  assert.equal(lines.length, COUNT);
  const meta = JSON.parse(fs.readFileSync(path.join(dirA, 'dataset.json'), 'utf8'));
  lines.forEach((line, i) => {
    const l = JSON.parse(line);
    assert.equal(l.index, i);
    assert.equal(l.file, `${String(i).padStart(6, '0')}.png`);
    assert.match(l.seed, /^[0-9a-f]{16}$/);
    for (const k of ['hair', 'head', 'eyes', 'eyebrows', 'nose', 'mouth']) assert.match(l[k], /^\w+$/, k);
    for (const k of ['glasses', 'earrings', 'beard', 'freckles', 'hairAccessories']) assert.ok(k in l, k);
    for (const k of ['hairColor', 'skinColor', 'eyesColor']) assert.match(l[k], /^#[0-9a-f]{6}$/, k);
    assert.ok(meta.options.skinColor.includes(l.skinColor.slice(1)), 'skin colour comes from our palette');
    assert.ok(meta.options.hairColor.includes(l.hairColor.slice(1)), 'hair colour comes from our palette');
    if (l.glasses === null) assert.equal(l.glassesColor, null);
    assert.ok(!('primaryBackgroundColor' in l));
  });
  assert.equal(meta.count, COUNT);
  assert.deepEqual(meta.sizes, SIZES);
  assert.equal(meta.style, 'lorelei');
  assert.equal(meta.versions['@dicebear/core'], '9.4.3');
  assert.match(fs.readFileSync(path.join(dirA, 'LICENSE.md'), 'utf8'), /CC0 1\.0/);
  assert.match(fs.readFileSync(path.join(dirA, 'CREDITS.md'), 'utf8'), /Lisa Wischofsky/);
});

test('output is byte-identical regardless of worker count', () => {
  const a = listFiles(dirA);
  const b = listFiles(dirB);
  assert.deepEqual(a, b);
  assert.equal(a.filter((f) => f.endsWith('.png')).length, COUNT * SIZES.length);
  for (const f of a) {
    assert.ok(fs.readFileSync(path.join(dirA, f)).equals(fs.readFileSync(path.join(dirB, f))), `${f} differs`);
  }
});

test('refuses to overwrite without --force, replaces with --force', () => {
  assert.throws(() => build(dirB, [...common, '--workers', '1']), /already holds a dataset/);
  build(dirB, ['--count', '2', '--sizes', '32', '--seed', 'test-seed', '--workers', '1', '--force']);
  assert.deepEqual(fs.readdirSync(path.join(dirB, '32')).sort(), ['000000.png', '000001.png']);
  assert.ok(!fs.existsSync(path.join(dirB, '96')), 'stale size directory removed');
  // Same (seed, index) gives the same image whatever the count.
  assert.ok(fs.readFileSync(path.join(dirB, '32', '000001.png')).equals(fs.readFileSync(path.join(dirA, '32', '000001.png'))));
});

test('adventurer writes the CC BY 4.0 credit', () => {
  const dir = path.join(tmp, 'adv');
  build(dir, ['--count', '2', '--sizes', '32', '--style', 'adventurer', '--workers', '1']);
  const lic = fs.readFileSync(path.join(dir, 'LICENSE.md'), 'utf8');
  assert.match(lic, /CC BY 4\.0/);
  assert.match(lic, /requires attribution/);
  assert.match(lic, /Adventurer.*Lisa Wischofsky/);
  const l = JSON.parse(fs.readFileSync(path.join(dir, 'labels.jsonl'), 'utf8').split('\n')[0]);
  assert.match(l.skinColor, /^#[0-9a-f]{6}$/);
});
