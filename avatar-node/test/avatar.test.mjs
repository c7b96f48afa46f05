// The npm package end to end: run `npm run build` first (scripts/test.sh does).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const require = createRequire(import.meta.url);
const avatar = require('../index.js');

/** Width, height and colour type from a PNG's IHDR chunk. */
function pngInfo(buffer) {
  assert.ok(Buffer.isBuffer(buffer), 'a Buffer');
  assert.deepEqual([...buffer.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], 'PNG signature');
  return { width: buffer.readUInt32BE(16), height: buffer.readUInt32BE(20), colorType: buffer[25] };
}

const small = new avatar.AvatarGenerator({ size: 'small', device: 'cpu' });

test('generateSync draws a 96 px PNG; the same seed gives the same bytes', () => {
  assert.equal(small.resolution, 96);
  assert.equal(small.device, 'cpu');
  const a = small.generateSync({ seed: 'alice' });
  assert.deepEqual(pngInfo(a), { width: 96, height: 96, colorType: 6 });
  assert.ok(a.equals(small.generateSync({ seed: 'alice' })));
  assert.ok(!a.equals(small.generateSync({ seed: 'bob' })));
  // Numeric seeds and their decimal strings agree (as over HTTP and in Python).
  assert.ok(small.generateSync({ seed: 42 }).equals(small.generateSync({ seed: '42' })));
});

test('generate returns a Promise<Buffer> computed off the main thread', async () => {
  const pending = small.generate({ seed: 7, transparent: true, outputSize: 64 });
  assert.ok(pending instanceof Promise);
  const png = await pending;
  assert.deepEqual(pngInfo(png), { width: 64, height: 64, colorType: 6 });
  const many = await Promise.all([1, 2, 3, 4].map((seed) => small.generate({ seed })));
  assert.equal(new Set(many.map((b) => b.toString('base64'))).size, 4);
});

test('module-level generate uses the embedded models by size', async () => {
  const large = await avatar.generate({ size: 'large', seed: 'carol', format: 'webp' });
  assert.equal(large.subarray(8, 12).toString('latin1'), 'WEBP');
  const png = avatar.generateSync({ size: 'large', seed: 'carol' });
  assert.deepEqual(pngInfo(png), { width: 128, height: 128, colorType: 6 });
  assert.equal(avatar.mimeType('jpeg'), 'image/jpeg');
});

test('bad options are Errors with a code and the camelCase field', async () => {
  const check = (fn, field) =>
    assert.throws(fn, (e) => {
      assert.ok(e instanceof Error);
      assert.equal(e.code, 'ERR_INVALID_OPTION');
      assert.equal(e.field, field);
      assert.match(e.message, new RegExp(field));
      return true;
    });
  check(() => small.generateSync({ bgColor: 'chartreuse' }), 'bgColor');
  check(() => small.generateSync({ transparent: true, bgColor: '#ff0000' }), 'bgColor');
  check(() => small.generateSync({ outputSize: 5000 }), 'outputSize');
  check(() => small.generateSync({ seed: 1.5 }), 'seed');
  check(() => small.generateSync({ seed: -1 }), 'seed');
  check(() => small.generateSync({ format: 'gif' }), 'format');
  check(() => small.generate({ transparent: true, format: 'jpeg' }), 'format');
  check(() => new avatar.AvatarGenerator({ size: 'huge' }), 'size');
  check(() => small.generateBatch({}), 'n');
  assert.throws(
    () => new avatar.AvatarGenerator({ device: 'cuda' }),
    (e) => e.code === 'ERR_BACKEND_NOT_COMPILED',
  );
  assert.throws(
    () => new avatar.AvatarGenerator({ weights: '/nonexistent/model.safetensors' }),
    (e) => e.code === 'ERR_IO' && /nonexistent/.test(e.message),
  );
  // A wrong type is rejected by the binding layer, naming the option.
  assert.throws(() => small.generateSync({ transparent: 'yes' }), /transparent/);
});

test('generateBatch reports progress and returns one buffer per seed', async () => {
  const seen = [];
  const seeds = Array.from({ length: 40 }, (_, i) => i);
  const buffers = await small.generateBatch({ seeds }, (p) => seen.push([p.done, p.total]));
  assert.equal(buffers.length, 40);
  assert.ok(buffers[5].equals(small.generateSync({ seed: 5 })));
  // Progress calls are queued to the event loop; let them land.
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, [[16, 40], [32, 40], [40, 40]]);
});

test('an AbortSignal cancels: before the start, and between chunks', async () => {
  const before = new AbortController();
  before.abort();
  await assert.rejects(small.generate({ seed: 1 }, before.signal), (e) => e.code === 'ERR_CANCELLED');

  const during = new AbortController();
  let calls = 0;
  await assert.rejects(
    small.generateBatch({ n: 2000 }, () => {
      calls += 1;
      during.abort();
    }, during.signal),
    (e) => e.code === 'ERR_CANCELLED' || e.name === 'AbortError',
  );
  assert.ok(calls < 125, `stopped early (${calls} progress calls of 125)`);
});

test('StableDiffusion draws PNGs from a prompt and from an image, with progress and cancel', async () => {
  const model = new URL('../../avatar-core/tests/fixtures/diffusion/sd15_tiny', import.meta.url).pathname;
  const pipe = new avatar.StableDiffusion(model, 'cpu');
  assert.equal(pipe.isXl, false);
  const seen = [];
  const images = await pipe.textToImage(
    { prompt: 'a cartoon avatar', numInferenceSteps: 3, numImages: 2, seed: 'alice', scheduler: 'euler_a' },
    (p) => seen.push([p.done, p.total]),
  );
  assert.equal(images.length, 2);
  assert.deepEqual(pngInfo(images[0]), { width: 32, height: 32, colorType: 6 });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, [[1, 3], [2, 3], [3, 3]]);
  const again = await pipe.textToImage({ prompt: 'a cartoon avatar', numInferenceSteps: 3, numImages: 2, seed: 'alice', scheduler: 'euler_a' });
  assert.ok(images[0].equals(again[0]), 'seeded runs repeat');
  const edited = await pipe.textToImage({ prompt: 'a cartoon avatar', image: images[0], strength: 0.5, numInferenceSteps: 4, seed: 1 });
  assert.deepEqual(pngInfo(edited[0]), { width: 32, height: 32, colorType: 6 });
  assert.throws(() => pipe.textToImage({ prompt: 'x', image: Buffer.from('nope') }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'image');
  await assert.rejects(pipe.textToImage({ prompt: 'x', width: 20 }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'width');
  const controller = new AbortController();
  await assert.rejects(
    pipe.textToImage({ prompt: 'x', numInferenceSteps: 50 }, () => controller.abort(), controller.signal),
    (e) => e.code === 'ERR_CANCELLED' || e.name === 'AbortError',
  );
  assert.throws(() => new avatar.StableDiffusion('/nonexistent'), (e) => e.code === 'ERR_IO');
});

test('StableDiffusion takes hf:// references and fails cleanly when the hub is unreachable', () => {
  // The download itself is tested in Rust against a stand-in hub.
  assert.throws(() => new avatar.StableDiffusion('hf://no-owner'), (e) => e.code === 'ERR_INVALID_OPTION');
  const saved = { home: process.env.HF_HOME, endpoint: process.env.HF_ENDPOINT };
  process.env.HF_HOME = fs.mkdtempSync(path.join(os.tmpdir(), 'hf-'));
  process.env.HF_ENDPOINT = 'http://127.0.0.1:9';
  try {
    assert.throws(() => new avatar.StableDiffusion('hf://some-org/some-model'), (e) => e.code === 'ERR_DOWNLOAD');
  } finally {
    for (const [key, value] of [['HF_HOME', saved.home], ['HF_ENDPOINT', saved.endpoint]]) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
});

test('StableDiffusion computes in half precision on request', async () => {
  const model = new URL('../../avatar-core/tests/fixtures/diffusion/sd15_tiny', import.meta.url).pathname;
  const full = new avatar.StableDiffusion(model, 'cpu');
  const half = new avatar.StableDiffusion(model, 'cpu', { precision: 'fp16' });
  assert.equal(full.precision, 'fp32');
  assert.equal(half.precision, 'fp16');
  const options = { prompt: 'a cartoon avatar', numInferenceSteps: 2, seed: 'alice', scheduler: 'ddim' };
  const [a] = await full.textToImage(options);
  const [b] = await half.textToImage(options);
  assert.deepEqual(pngInfo(b), { width: 32, height: 32, colorType: 6 });
  assert.ok(!a.equals(b), 'f16 is not the f32 computation');
  assert.throws(
    () => new avatar.StableDiffusion(model, 'cpu', { precision: 'fp8' }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'precision',
  );
});

test('VqganClip optimises towards prompts with progress images, seeds and cancel', async () => {
  const dir = new URL('../../avatar-core/tests/fixtures/vqgan_clip/', import.meta.url).pathname;
  const engine = new avatar.VqganClip(`${dir}vqgan.yaml`, `${dir}vqgan.ckpt`, `${dir}clip.safetensors`, `${dir}clip_config.json`);
  assert.equal(engine.factor, 2);
  const seen = [];
  const options = { prompt: 'a cartoon avatar|blurry:-0.5', width: 32, height: 16, iterations: 4, cutn: 4, seed: 3, displayEvery: 2 };
  const png = await engine.generate(options, (p) => seen.push(p));
  assert.deepEqual(pngInfo(png), { width: 32, height: 16, colorType: 6 });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen.map((p) => [p.iteration, p.total]), [[1, 4], [2, 4], [3, 4], [4, 4]]);
  assert.ok(seen.every((p) => Number.isFinite(p.loss)));
  assert.equal(seen[0].image, undefined);
  assert.deepEqual(pngInfo(seen[1].image), { width: 32, height: 16, colorType: 6 });
  assert.ok(seen[3].image.equals(png), 'the last progress image is the result');
  assert.ok(png.equals(await engine.generate(options)), 'seeded runs repeat');
  const edited = await engine.generate({
    prompt: 'a smile', initImage: png, initWeight: 0.5, imagePrompts: [{ image: png, weight: 0.5 }],
    width: 16, height: 16, iterations: 2, cutn: 2, augment: false, seed: 'bob',
  });
  assert.deepEqual(pngInfo(edited), { width: 16, height: 16, colorType: 6 });
  assert.throws(() => engine.generate({ prompt: 'x', iterations: 0 }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'iterations');
  assert.throws(() => engine.generate({ prompt: 'x', stepSize: -1 }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'stepSize');
  assert.throws(() => engine.generate({}), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'prompt');
  assert.throws(() => engine.generate({ prompt: 'x', initImage: Buffer.from('nope') }), (e) => e.field === 'initImage');
  const controller = new AbortController();
  let calls = 0;
  await assert.rejects(
    engine.generate({ prompt: 'x', width: 16, height: 16, iterations: 200, cutn: 2 }, () => { calls += 1; controller.abort(); }, controller.signal),
    (e) => e.code === 'ERR_CANCELLED' || e.name === 'AbortError',
  );
  assert.ok(calls < 200, `stopped early (${calls} progress calls of 200)`);
  assert.throws(() => new avatar.VqganClip(`${dir}vqgan.yaml`, `${dir}missing.ckpt`, `${dir}clip.safetensors`, `${dir}clip_config.json`), (e) => e.code === 'ERR_IO');
});

test('StableDiffusion.textToImage reports previews with its progress', async () => {
  const model = new URL('../../avatar-core/tests/fixtures/diffusion/sd15_tiny', import.meta.url).pathname;
  const pipe = new avatar.StableDiffusion(model, 'cpu');
  const seen = [];
  const [image] = await pipe.textToImage(
    { prompt: 'an avatar', numInferenceSteps: 3, guidanceScale: 1, seed: 2, scheduler: 'euler', previewEvery: 2, previewMode: 'vae' },
    (p) => seen.push(p),
  );
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen.map((p) => [p.done, p.preview ? p.preview.length : 0]), [[1, 0], [2, 1], [3, 1]]);
  assert.deepEqual(pngInfo(seen[2].preview[0]), pngInfo(image));
  assert.throws(() => pipe.textToImage({ prompt: 'x', previewEvery: 1, previewMode: 'nope' }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'previewMode');
  const long = Array.from({ length: 40 }, (_, i) => `a smiling cartoon avatar number ${i} with a hat`).join(', ');
  const [truncated] = await pipe.textToImage({ prompt: long, numInferenceSteps: 1, guidanceScale: 1, seed: 4 });
  const [whole] = await pipe.textToImage({ prompt: long, numInferenceSteps: 1, guidanceScale: 1, seed: 4, longPrompt: true });
  assert.ok(!truncated.equals(whole), 'the whole long prompt is seen');
});

test('StableDiffusion.faceAvatar draws seed 001 avatars from a reference photo', async () => {
  // sd15_tiny with an 8x VAE: at 256 px sd15_tiny's 2x VAE would cost seconds of attention per image.
  const model = new URL('../../avatar-core/tests/fixtures/diffusion/sd15_tiny_f8', import.meta.url).pathname;
  const pipe = new avatar.StableDiffusion(model, 'cpu');
  const photo = avatar.generateSync({ seed: 'face', size: 'small' });
  const seen = [];
  const images = await pipe.faceAvatar(
    { image: photo, gender: 'male', width: 256, height: 256, numInferenceSteps: 1, guidanceScale: 1, seed: 3, bgColor: '#00ff00' },
    (p) => seen.push([p.done, p.total]),
  );
  assert.equal(images.length, 1);
  assert.deepEqual(pngInfo(images[0]), { width: 256, height: 256, colorType: 6 });
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(seen, [[1, 1]]);
  assert.throws(() => pipe.faceAvatar({ image: photo, batch: 9 }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'batch');
  assert.throws(() => pipe.faceAvatar({ image: photo, numInferenceSteps: 51 }), (e) => e.field === 'numInferenceSteps');
  assert.throws(() => pipe.faceAvatar({ image: Buffer.from('x') }), (e) => e.field === 'image');
});

test('SafetyChecker checks encoded images and obfuscates them', async () => {
  const dir = new URL('../../avatar-core/tests/fixtures/safety_checker', import.meta.url).pathname;
  const checker = new avatar.SafetyChecker(dir);
  const png = avatar.generateSync({ seed: 'safe', size: 'small' });
  const flags = await checker.check([png, png]);
  assert.equal(flags.length, 2);
  assert.equal(flags[0], flags[1]);
  assert.equal(typeof flags[0], 'boolean');
  const black = avatar.SafetyChecker.obfuscate(png, 'pixelate');
  assert.deepEqual(pngInfo(black), { width: 96, height: 96, colorType: 6 });
  assert.throws(() => avatar.SafetyChecker.obfuscate(png, 'nope'), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'how');
  assert.throws(() => checker.check([Buffer.from('x')]), (e) => e.field === 'images');
  assert.throws(() => new avatar.SafetyChecker('/nonexistent'), (e) => e.code === 'ERR_IO');
});

test('BackgroundRemover cuts the subject out; faceAvatar uses it for removeBackground', async () => {
  const fixtures = new URL('../../avatar-core/tests/fixtures/', import.meta.url).pathname;
  const fs = await import('node:fs');
  const weights = `${fixtures}segmentation/u2net_tiny.pth`;
  const remover = new avatar.BackgroundRemover(weights, 'cpu', 64);
  const figure = fs.readFileSync(`${fixtures}segmentation/figure.png`);
  assert.deepEqual(pngInfo(await remover.mask(figure)), { width: 90, height: 70, colorType: 0 });
  assert.deepEqual(pngInfo(await remover.remove(figure)), { width: 90, height: 70, colorType: 6 });
  assert.throws(() => new avatar.BackgroundRemover(weights, 'cpu', 8), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'inputSize');
  assert.throws(() => new avatar.BackgroundRemover(`${fixtures}safety_checker/model.safetensors`), (e) => e.code === 'ERR_WEIGHTS');
  assert.throws(() => remover.remove(Buffer.from('x')), (e) => e.field === 'image');

  const model = `${fixtures}diffusion/sd15_tiny_f8`;
  const pipe = new avatar.StableDiffusion(model, 'cpu', { backgroundModel: weights });
  const [image] = await pipe.faceAvatar({ image: figure, width: 256, height: 256, numInferenceSteps: 1, guidanceScale: 1, seed: 3, removeBackground: true });
  assert.deepEqual(pngInfo(image), { width: 256, height: 256, colorType: 6 });
});

test('FaceAnalysis finds faces with keypoints and embeddings', async () => {
  const fixtures = new URL('../../avatar-core/tests/fixtures/face_analysis/', import.meta.url).pathname;
  const fs = await import('node:fs');
  const analysis = new avatar.FaceAnalysis(`${fixtures}det_tiny.onnx`, `${fixtures}rec_tiny.onnx`, 'cpu', { detSize: [160, 160] });
  const photo = fs.readFileSync(`${fixtures}faces.png`);
  const faces = await analysis.analyze(photo);
  assert.equal(faces.length, 6);
  for (const face of faces) {
    assert.equal(face.bbox.length, 4);
    assert.equal(face.kps.length, 5);
    assert.equal(face.embedding.length, 16);
    assert.ok(Math.abs(face.normedEmbedding.reduce((s, v) => s + v * v, 0) - 1) < 1e-4);
  }
  assert.equal((await analysis.analyze(photo, 2)).length, 2);
  assert.throws(() => new avatar.FaceAnalysis(`${fixtures}det_tiny.onnx`, `${fixtures}rec_tiny.onnx`, 'cpu', { detSize: [100, 100] }), (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'detSize');
  assert.throws(() => new avatar.FaceAnalysis(`${fixtures}rec_tiny.onnx`, `${fixtures}rec_tiny.onnx`), (e) => e.code === 'ERR_WEIGHTS');
  assert.throws(() => analysis.analyze(Buffer.from('x')), (e) => e.field === 'image');
});

test('StableDiffusion takes IP-Adapters and ControlNets; InstantId draws seed 002 avatars', async () => {
  const fixtures = new URL('../../avatar-core/tests/fixtures/', import.meta.url).pathname;
  const fs = await import('node:fs');
  const pipe = new avatar.StableDiffusion(`${fixtures}diffusion/sd15_tiny`, 'cpu', {
    ipAdapters: [`${fixtures}ip_adapter/ip_adapter.safetensors`],
    imageEncoder: `${fixtures}ip_adapter/image_encoder`,
    controlnets: [`${fixtures}controlnet/sd15_controlnet_0`],
  });
  const reference = fs.readFileSync(`${fixtures}ip_adapter/reference.png`);
  const control = fs.readFileSync(`${fixtures}controlnet/control_0.png`);
  const common = { prompt: 'a portrait', numInferenceSteps: 2, width: 16, height: 16, seed: 3 };
  const [plain] = await pipe.textToImage(common);
  const [steered] = await pipe.textToImage({
    ...common,
    ipAdapter: [{ image: reference, scale: 0.7 }],
    controlnet: [{ image: control, scale: 0.8 }],
  });
  assert.ok(!plain.equals(steered), 'the adapters change the image');
  // Per-block weights: every block at 1 is the uniform weight 1.
  const [uniform] = await pipe.textToImage({ ...common, ipAdapter: [{ image: reference, scale: 1 }] });
  const [everywhere] = await pipe.textToImage({ ...common, ipAdapter: [{ image: reference, blockScales: { down: 1, mid: 1, up: 1 } }] });
  const [styleOnly] = await pipe.textToImage({ ...common, ipAdapter: [{ image: reference, blockScales: { up: { block_1: [1, 0] } } }] });
  assert.ok(uniform.equals(everywhere));
  assert.ok(!uniform.equals(styleOnly));
  assert.throws(
    () => pipe.textToImage({ ...common, ipAdapter: [{ image: reference, blockScales: { sideways: 1 } }] }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'ipAdapter.blockScales',
  );
  await assert.rejects(
    pipe.textToImage({ ...common, controlnet: [{ image: control, scale: 9 }] }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'controlnet.scale',
  );

  const model = new avatar.InstantId({
    model: `${fixtures}diffusion/sdxl_tiny`,
    ipAdapter: `${fixtures}controlnet/instantid_ip_adapter.bin`,
    identitynet: `${fixtures}controlnet/sdxl_identitynet`,
    cannyControlnet: `${fixtures}controlnet/sdxl_controlnet`,
  });
  const face = {
    faceImage: reference,
    faceEmbedding: Array.from({ length: 16 }, (_, i) => Math.sin(i * 0.7) * 3),
    faceKeypoints: [[10, 12], [22, 12], [16, 18], [11, 24], [21, 24]],
    prompt: 'pretty woman',
    width: 64,
    height: 64,
    samples: 2,
    seed: 5,
    controlnetSelection: ['canny'],
  };
  const avatars = await model.generate(face);
  assert.equal(avatars.length, 2);
  assert.deepEqual(pngInfo(avatars[0]), { width: 64, height: 64, colorType: 6 });
  assert.throws(
    () => model.generate({ ...face, numInferenceSteps: 20 }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'numInferenceSteps',
  );
  await assert.rejects(
    model.generate({ ...face, faceKeypoints: [[1, 2]] }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'faceKeypoints',
  );
});

test('StableDiffusion runs the safety checker when asked', async () => {
  const fixtures = new URL('../../avatar-core/tests/fixtures/', import.meta.url).pathname;
  const model = `${fixtures}diffusion/sd15_tiny`;
  const pipe = new avatar.StableDiffusion(model, 'cpu', { safetyChecker: `${fixtures}safety_checker` });
  const options = { prompt: 'a cartoon avatar', numInferenceSteps: 2, seed: 1 };
  const [checked] = await pipe.textToImage({ ...options, safetyChecker: true, safetyCheckerType: 'blur' });
  assert.deepEqual(pngInfo(checked), { width: 32, height: 32, colorType: 6 });
  assert.throws(
    () => pipe.textToImage({ ...options, safetyChecker: true, safetyCheckerType: 'sepia' }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'safetyCheckerType',
  );
  const bare = new avatar.StableDiffusion(model, 'cpu');
  assert.throws(
    () => bare.textToImage({ ...options, safetyChecker: true }),
    (e) => e.code === 'ERR_INVALID_OPTION' && e.field === 'safetyChecker',
  );
});
