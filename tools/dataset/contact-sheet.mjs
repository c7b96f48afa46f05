#!/usr/bin/env node
// Contact sheet of the first N images of one size of a built dataset.
//   node contact-sheet.mjs --dir DIR [--size 96] [--n 64] [--cols 8] [--out DIR/sheet_<size>.png]
// Images are composited (alpha "over") onto a light grey background with a 4 px gap.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { decodeRgbaPng, encodeRgbaPng } from './lib/png.mjs';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    size: { type: 'string', default: '96' },
    n: { type: 'string', default: '64' },
    cols: { type: 'string', default: '8' },
    out: { type: 'string' },
  },
});
if (!values.dir) {
  console.error('usage: node contact-sheet.mjs --dir DIR [--size 96] [--n 64] [--cols 8] [--out FILE]');
  process.exit(2);
}
const size = Number(values.size);
const n = Number(values.n);
const cols = Number(values.cols);
const rows = Math.ceil(n / cols);
const gap = 4;
const bg = [0xe6, 0xe6, 0xe6];
const imgDir = path.join(values.dir, String(size));
const files = fs.readdirSync(imgDir).filter((f) => f.endsWith('.png')).sort().slice(0, n);
const W = cols * size + (cols + 1) * gap;
const H = rows * size + (rows + 1) * gap;
const sheet = new Uint8Array(W * H * 4);
for (let i = 0; i < W * H; i++) sheet.set([...bg, 255], i * 4);
files.forEach((f, k) => {
  const img = decodeRgbaPng(fs.readFileSync(path.join(imgDir, f)));
  const ox = gap + (k % cols) * (size + gap);
  const oy = gap + Math.floor(k / cols) * (size + gap);
  for (let y = 0; y < img.height; y++) {
    for (let x = 0; x < img.width; x++) {
      const s = (y * img.width + x) * 4;
      const d = ((oy + y) * W + ox + x) * 4;
      const a = img.data[s + 3] / 255; // resvg output is straight (non-premultiplied) alpha
      for (let c = 0; c < 3; c++) sheet[d + c] = Math.round(img.data[s + c] * a + sheet[d + c] * (1 - a));
    }
  }
});
const out = values.out ?? path.join(values.dir, `sheet_${size}.png`);
fs.writeFileSync(out, encodeRgbaPng(W, H, sheet));
console.log(`wrote ${out} (${files.length} images, ${W}x${H})`);
