"""The pip package end to end (``pip install ./avatar-py`` first; scripts/test.sh does)."""

from __future__ import annotations

import io
import math
from pathlib import Path
import threading
import time

import numpy as np
import pytest
from PIL import Image

import avatar


@pytest.fixture(scope="module")
def small() -> avatar.AvatarGenerator:
    return avatar.AvatarGenerator(size="small", device="cpu")


@pytest.fixture(scope="module")
def large() -> avatar.AvatarGenerator:
    return avatar.AvatarGenerator(size="large")


def test_generate_is_a_deterministic_pil_image(small: avatar.AvatarGenerator) -> None:
    assert (small.resolution, small.size, small.device) == (96, "small", "cpu")
    image = small.generate(seed="alice")
    assert isinstance(image, Image.Image)
    assert (image.mode, image.size) == ("RGBA", (96, 96))
    assert image.tobytes() == small.generate(seed="alice").tobytes()
    assert image.tobytes() != small.generate(seed="bob").tobytes()
    # An int seed and its decimal string agree (as over HTTP and in Node).
    assert small.generate(seed=42).tobytes() == small.generate(seed="42").tobytes()
    # Opaque by default, on white.
    assert np.asarray(image)[..., 3].min() == 255


def test_sizes_alpha_and_background(small: avatar.AvatarGenerator, large: avatar.AvatarGenerator) -> None:
    assert large.generate(seed=1).size == (128, 128)
    assert small.generate(seed=1, output_size=256).size == (256, 256)
    clear = np.asarray(small.generate(seed=3, transparent=True))
    assert clear[..., 3].min() < 255, "a transparent avatar has transparent pixels"
    # The most transparent pixel shows the background colour: red instead of white.
    y, x = np.unravel_index(np.argmin(clear[..., 3]), clear.shape[:2])
    red = np.asarray(small.generate(seed=3, bg_color="#ff0000")).astype(int)
    white = np.asarray(small.generate(seed=3)).astype(int)
    assert red[..., 3].min() == 255
    assert red[y, x, 0] >= white[y, x, 0] - 1 and red[y, x, 1] < white[y, x, 1] - 50


def test_png_bytes_and_formats(small: avatar.AvatarGenerator) -> None:
    png = small.generate_png(seed="alice", transparent=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(png))
    assert (decoded.mode, decoded.size) == ("RGBA", (96, 96))
    assert decoded.tobytes() == small.generate(seed="alice", transparent=True).tobytes()
    assert small.generate_png(seed=1, format="webp")[8:12] == b"WEBP"
    assert small.generate_png(seed=1, format="jpeg")[:2] == b"\xff\xd8"


def test_array_owns_its_pixels_without_a_copy(small: avatar.AvatarGenerator) -> None:
    array = small.generate_array(seed="alice")
    assert (array.shape, array.dtype) == ((96, 96, 4), np.uint8)
    assert array.flags.c_contiguous
    assert array.base is not None, "a view on the moved Rust buffer, not a copy"
    assert np.array_equal(array, np.asarray(small.generate(seed="alice")))


def test_batches_and_progress(small: avatar.AvatarGenerator) -> None:
    seen: list[tuple[int, int]] = []
    images = small.generate_batch(seeds=list(range(40)), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(16, 40), (32, 40), (40, 40)]
    assert len(images) == 40
    assert images[5].tobytes() == small.generate(seed=5).tobytes()
    assert len(small.generate_batch(3)) == 3
    pngs = small.generate_batch(seeds=["a", "b"], format="png")
    assert all(p[:4] == b"\x89PNG" for p in pngs)


def test_a_raising_progress_callback_cancels(small: avatar.AvatarGenerator) -> None:
    calls = []

    def stop(done: int, total: int) -> None:
        calls.append(done)
        raise KeyboardInterrupt("user stop")

    with pytest.raises(KeyboardInterrupt, match="user stop"):
        small.generate_batch(1000, progress=stop)
    assert calls == [16], "the work stopped at the first report"


def test_bad_input_names_the_field(small: avatar.AvatarGenerator) -> None:
    cases = [
        (lambda: small.generate(bg_color="chartreuse"), "bg_color"),
        (lambda: small.generate(transparent=True, bg_color="#fff000"), "bg_color"),
        (lambda: small.generate(output_size=5000), "output_size"),
        (lambda: small.generate(seed=-1), "seed"),
        (lambda: small.generate(seed=1.5), "seed"),
        (lambda: small.generate_png(format="gif"), "format"),
        (lambda: small.generate_png(transparent=True, format="jpeg"), "format"),
        (lambda: avatar.AvatarGenerator(size="huge"), "size"),
        (lambda: avatar.AvatarGenerator(device="tpu"), "device"),
        (lambda: small.generate_batch(), "n"),
        (lambda: small.generate_batch(0), "n"),
    ]
    for call, field in cases:
        with pytest.raises(ValueError, match=field) as info:
            call()
        assert isinstance(info.value, avatar.InvalidOptionError)
        assert (info.value.code, info.value.field) == ("ERR_INVALID_OPTION", field)
    with pytest.raises(TypeError):
        small.generate(transparent="yes")  # type: ignore[arg-type]


def test_other_failures_are_avatar_errors(tmp_path) -> None:
    with pytest.raises(avatar.BackendNotCompiledError) as info:
        avatar.AvatarGenerator(device="cuda")
    assert info.value.code == "ERR_BACKEND_NOT_COMPILED"
    with pytest.raises(avatar.AvatarIOError, match="missing.safetensors"):
        avatar.AvatarGenerator(weights=tmp_path / "missing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(avatar.WeightsError):
        avatar.AvatarGenerator(weights=broken)
    assert issubclass(avatar.WeightsError, avatar.AvatarError)


def test_inference_releases_the_gil(small: avatar.AvatarGenerator) -> None:
    """Two threads generate at once; while they run, the main thread keeps running Python."""
    results: dict[int, bytes] = {}
    ticks = 0

    def work(i: int) -> None:
        results[i] = b"".join(p for p in small.generate_batch(seeds=list(range(48)), format="png"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ticks += 1
        time.sleep(0.001)
    for t in threads:
        t.join()
    assert results[0] == results[1]
    assert ticks > 10, "the main thread was blocked while the workers ran"


TINY_SD = Path(__file__).resolve().parents[2] / "avatar-core/tests/fixtures/diffusion/sd15_tiny"
# The same pipeline with an 8x VAE, for face avatars (256 px or more): sd15_tiny's 2x VAE would make
# each image cost seconds of attention over 128x128 latents.
TINY_SD_F8 = TINY_SD.with_name("sd15_tiny_f8")


def test_stable_diffusion_text_and_image_to_image() -> None:
    pipe = avatar.StableDiffusion(TINY_SD)
    assert pipe.is_xl is False
    steps: list[tuple[int, int]] = []
    images = pipe.text_to_image(
        "a cartoon avatar",
        negative_prompt="blurry",
        num_inference_steps=3,
        num_images=2,
        seed="alice",
        scheduler="euler_a",
        progress=lambda d, t: steps.append((d, t)),
    )
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    again = pipe.text_to_image("a cartoon avatar", negative_prompt="blurry", num_inference_steps=3,
                               num_images=2, seed="alice", scheduler="euler_a")
    assert images[0].tobytes() == again[0].tobytes()
    out = pipe.image_to_image(images[0], "a cartoon avatar", strength=0.5, num_inference_steps=4, seed=1)
    assert out[0].size == (32, 32)
    with pytest.raises(avatar.InvalidOptionError) as info:
        pipe.text_to_image("x", width=20)
    assert info.value.field == "width"
    with pytest.raises(avatar.InvalidOptionError):
        pipe.text_to_image("x", scheduler="nope")
    with pytest.raises(RuntimeError, match="stop"):
        pipe.text_to_image("x", num_inference_steps=3, progress=lambda d, t: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(avatar.AvatarIOError):
        avatar.StableDiffusion(TINY_SD / "missing")


def test_stable_diffusion_hub_references_fail_cleanly_offline(monkeypatch, tmp_path) -> None:
    # The download itself is tested in Rust against a stand-in hub; here: the binding passes
    # hf:// through, and failures arrive as the library's exceptions.
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.StableDiffusion("hf://no-owner")
    assert info.value.field == "model"
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(avatar.AvatarIOError) as info:
        avatar.StableDiffusion("hf://some-org/some-model")
    assert info.value.code == "ERR_DOWNLOAD"


def test_stable_diffusion_in_half_precision() -> None:
    full = avatar.StableDiffusion(TINY_SD)
    half = avatar.StableDiffusion(TINY_SD, precision="fp16")
    assert (full.precision, half.precision) == ("fp32", "fp16")
    kwargs = dict(num_inference_steps=2, seed="alice", scheduler="ddim")
    a = np.asarray(full.text_to_image("a cartoon avatar", **kwargs)[0], dtype=np.int16)
    b = np.asarray(half.text_to_image("a cartoon avatar", **kwargs)[0], dtype=np.int16)
    # The same picture to within a few 8-bit levels, but computed in f16.
    assert 0 < np.abs(a - b).max() <= 8
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.StableDiffusion(TINY_SD, precision="fp8")
    assert info.value.field == "precision"


def test_face_avatar_from_a_reference_photo() -> None:
    pipe = avatar.StableDiffusion(TINY_SD_F8)
    photo = Image.new("RGB", (300, 200), (200, 120, 90))
    steps: list[tuple[int, int]] = []
    images = pipe.face_avatar(photo, gender="female", batch=1, width=256, height=256,
                              num_inference_steps=1, guidance_scale=1.0, seed=4,
                              bg_color="#00ff00", progress=lambda d, t: steps.append((d, t)))
    assert steps == [(1, 1)]
    assert [im.size for im in images] == [(256, 256)]
    assert images[0].getchannel("A").getextrema() == (255, 255)
    for kwargs, field in [({"batch": 9}, "batch"), ({"width": 100}, "width"),
                          ({"num_inference_steps": 51}, "num_inference_steps"),
                          ({"guidance_scale": 31.0}, "guidance_scale"), ({"bg_color": "nope"}, "bg_color")]:
        with pytest.raises(avatar.InvalidOptionError) as info:
            pipe.face_avatar(photo, **kwargs)
        assert info.value.field == field


VQGAN_CLIP = Path(__file__).resolve().parents[2] / "avatar-core/tests/fixtures/vqgan_clip"


def _vqgan_clip() -> avatar.VqganClip:
    return avatar.VqganClip(
        VQGAN_CLIP / "vqgan.yaml",
        VQGAN_CLIP / "vqgan.ckpt",
        VQGAN_CLIP / "clip.safetensors",
        clip_config=VQGAN_CLIP / "clip_config.json",
    )


def test_vqgan_clip_runs_with_progress_images_and_is_reproducible() -> None:
    engine = _vqgan_clip()
    assert engine.factor == 2
    steps: list[tuple[int, int, float, object]] = []
    image = engine.generate(
        "a cartoon avatar|blurry:-0.5",
        width=32,
        height=16,
        iterations=4,
        cutn=4,
        seed=3,
        display_every=2,
        progress=lambda i, t, loss, im: steps.append((i, t, loss, im)),
    )
    assert image.size == (32, 16) and image.mode == "RGBA"
    assert [(i, t) for i, t, _, _ in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(np.isfinite(loss) for _, _, loss, _ in steps)
    shown = [im for _, _, _, im in steps]
    assert shown[0] is None and shown[2] is None
    assert shown[1].size == (32, 16) and shown[3].tobytes() == image.tobytes()
    again = engine.generate("a cartoon avatar|blurry:-0.5", width=32, height=16, iterations=4, cutn=4, seed=3)
    assert again.tobytes() == image.tobytes()
    # text + image -> image, with an image prompt.
    out = engine.generate("a smile", init_image=image, init_weight=0.5, image_prompts=[(image, 0.5)],
                          width=16, height=16, iterations=2, cutn=2, augment=False, seed="bob")
    assert out.size == (16, 16)


def test_vqgan_clip_cancels_and_names_bad_options() -> None:
    engine = _vqgan_clip()
    seen: list[int] = []

    def stop_after_two(i: int, t: int, loss: float, im: object) -> bool:
        seen.append(i)
        return i < 2

    with pytest.raises(avatar.CancelledError):
        engine.generate("x", width=16, height=16, iterations=50, cutn=2, progress=stop_after_two)
    assert seen == [1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        engine.generate("x", width=16, height=16, iterations=5, cutn=2,
                        progress=lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    for kwargs, field in [
        ({"iterations": 0}, "iterations"),
        ({"width": 1}, "width"),
        ({"cutn": 0}, "cutn"),
        ({"step_size": -1.0}, "step_size"),
    ]:
        with pytest.raises(avatar.InvalidOptionError) as info:
            engine.generate("x", **kwargs)
        assert info.value.field == field
    with pytest.raises(avatar.InvalidOptionError) as info:
        engine.generate(None)
    assert info.value.field == "prompts"
    with pytest.raises(avatar.InvalidOptionError) as info:
        engine.generate("x", init_image="not an image")
    assert info.value.field == "init_image"
    with pytest.raises(avatar.AvatarIOError):
        avatar.VqganClip(VQGAN_CLIP / "vqgan.yaml", VQGAN_CLIP / "missing.ckpt", VQGAN_CLIP / "clip.safetensors",
                         clip_config=VQGAN_CLIP / "clip_config.json")


SAFETY = Path(__file__).resolve().parents[2] / "avatar-core/tests/fixtures/safety_checker"


def test_safety_checker_and_obfuscations() -> None:
    checker = avatar.SafetyChecker(SAFETY)
    photo = Image.new("RGB", (64, 48), (200, 120, 90))
    flags = checker.check([photo, photo.convert("RGBA")])
    assert len(flags) == 2 and all(isinstance(f, bool) for f in flags)
    assert flags[0] == flags[1]
    black = avatar.SafetyChecker.obfuscate(photo, "black")
    assert black.size == (64, 48) and black.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
    assert avatar.SafetyChecker.obfuscate(photo, "sensitive_content_text").size == (64, 48)
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.SafetyChecker.obfuscate(photo, "nope")
    assert info.value.field == "safety_checker_type"
    with pytest.raises(avatar.AvatarIOError):
        avatar.SafetyChecker(SAFETY / "missing")


FIXTURES = Path(__file__).resolve().parents[2] / "avatar-core/tests/fixtures"


def test_ip_adapter_and_controlnet_steer_the_image() -> None:
    adapters = FIXTURES / "ip_adapter"
    nets = FIXTURES / "controlnet"
    pipe = avatar.StableDiffusion(TINY_SD, ip_adapters=[adapters / "ip_adapter.safetensors"],
                                  image_encoder=adapters / "image_encoder",
                                  controlnets=[nets / "sd15_controlnet_0"])
    reference = Image.open(adapters / "reference.png")
    control = Image.open(nets / "control_0.png")
    common = dict(num_inference_steps=2, width=16, height=16, seed=3)
    plain = pipe.text_to_image("a portrait", **common)[0]
    steered = pipe.text_to_image("a portrait", ip_adapter_image=reference, ip_adapter_scale=0.7,
                                 control_image=control, controlnet_conditioning_scale=0.8, **common)[0]
    assert steered.size == (16, 16)
    assert plain.tobytes() != steered.tobytes()
    with pytest.raises(avatar.InvalidOptionError) as info:
        pipe.text_to_image("x", ip_adapter_image=reference, ip_adapter_scale=5.0, **common)
    assert info.value.field == "ip_adapter_scale"
    # Per-block weights (diffusers' dict): every block at 1 is the uniform 1; only some differs.
    uniform = pipe.text_to_image("a portrait", ip_adapter_image=reference, ip_adapter_scale=1.0, **common)[0]
    everywhere = pipe.text_to_image("a portrait", ip_adapter_image=reference,
                                    ip_adapter_scale={"down": 1.0, "mid": 1.0, "up": 1.0}, **common)[0]
    style_only = pipe.text_to_image("a portrait", ip_adapter_image=reference,
                                    ip_adapter_scale={"up": {"block_1": [1.0, 0.0]}}, **common)[0]
    assert everywhere.tobytes() == uniform.tobytes()
    assert style_only.tobytes() != uniform.tobytes()
    with pytest.raises(avatar.InvalidOptionError) as info:
        pipe.text_to_image("x", ip_adapter_image=reference, ip_adapter_scale={"up": {"block_7": 1.0}}, **common)
    assert info.value.field == "ip_adapter_scale"
    with pytest.raises(avatar.WeightsError):
        avatar.StableDiffusion(TINY_SD, ip_adapters=[adapters / "ip_adapter_sdxl.safetensors"],
                               image_encoder=adapters / "image_encoder")


def test_instantid_draws_seed_002_avatars() -> None:
    nets = FIXTURES / "controlnet"
    model = avatar.InstantID(FIXTURES / "diffusion/sdxl_tiny", nets / "instantid_ip_adapter.bin",
                             nets / "sdxl_identitynet", canny_controlnet=nets / "sdxl_controlnet")
    face = Image.open(FIXTURES / "ip_adapter/reference.png").resize((80, 96))
    embedding = [math.sin(i * 0.7) * 3.0 for i in range(16)]
    kps = [(28, 38), (52, 38), (40, 52), (31, 66), (49, 66)]
    steps: list[tuple[int, int]] = []
    images = model.generate(face, embedding, kps, "pretty woman", width=64, height=64, samples=2, seed=5,
                            controlnet_selection=["canny"], progress=lambda d, t: steps.append((d, t)))
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert steps[-1] == (21, 21)
    for kwargs, field in [({"num_inference_steps": 20}, "num_inference_steps"), ({"samples": 3}, "samples"),
                          ({"s_scale": 2.5}, "s_scale"), ({"controlnet_selection": ["depth"]}, "controlnet_selection")]:
        with pytest.raises(avatar.InvalidOptionError) as info:
            model.generate(face, embedding, kps, "x", width=64, height=64, **kwargs)
        assert info.value.field == field
    with pytest.raises(avatar.InvalidOptionError) as info:
        model.generate(face, embedding, kps[:4], "x", width=64, height=64)
    assert info.value.field == "face_keypoints"


def test_safety_checker_option_flags_and_replaces() -> None:
    pipe = avatar.StableDiffusion(TINY_SD, safety_checker=SAFETY)
    images = pipe.text_to_image("a cartoon avatar", num_inference_steps=2, num_images=2, seed=1,
                                safety_checker=True, safety_checker_type="blur")
    assert all(isinstance(im.info["nsfw_content_detected"], bool) for im in images)
    plain = pipe.text_to_image("a cartoon avatar", num_inference_steps=2, num_images=2, seed=1)
    assert all(im.info["nsfw_content_detected"] is False for im in plain)
    for im, checked in zip(plain, images):
        assert (im.tobytes() == checked.tobytes()) != checked.info["nsfw_content_detected"]
    with pytest.raises(avatar.InvalidOptionError) as info:
        pipe.text_to_image("x", num_inference_steps=1, safety_checker=True, safety_checker_type="sepia")
    assert info.value.field == "safety_checker_type"
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.StableDiffusion(TINY_SD).text_to_image("x", num_inference_steps=1, safety_checker=True)
    assert info.value.field == "safety_checker"


U2NET = FIXTURES / "segmentation"


def test_background_remover_follows_rembg_and_serves_face_avatars() -> None:
    remover = avatar.BackgroundRemover(U2NET / "u2net_tiny.pth", input_size=64)
    figure = Image.open(U2NET / "figure.png")
    mask = remover.mask(figure)
    assert mask.mode == "L" and mask.size == figure.size
    reference = np.asarray(Image.open(U2NET / "figure_mask.png"), dtype=np.int32)
    assert np.abs(np.asarray(mask, dtype=np.int32) - reference).max() <= 2
    cut = remover.remove(figure)
    assert cut.mode == "RGBA"
    assert np.array_equal(np.asarray(cut)[:, :, 3], np.asarray(mask))
    assert np.array_equal(np.asarray(cut)[:, :, :3], np.asarray(figure.convert("RGB")))
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.BackgroundRemover(U2NET / "u2net_tiny.pth", input_size=8)
    assert info.value.field == "input_size"
    with pytest.raises(avatar.WeightsError):
        avatar.BackgroundRemover(SAFETY / "model.safetensors")

    pipe = avatar.StableDiffusion(TINY_SD_F8, background_model=U2NET / "u2net_tiny.pth")
    [image] = pipe.face_avatar(Image.new("RGB", (300, 200), (200, 120, 90)), width=256, height=256,
                               num_inference_steps=1, guidance_scale=1.0, seed=4, remove_background=True)
    opaque = image.copy()
    opaque.putalpha(255)
    full_size = avatar.BackgroundRemover(U2NET / "u2net_tiny.pth")
    assert np.array_equal(np.asarray(image)[:, :, 3], np.asarray(full_size.mask(opaque)))


FACES = FIXTURES / "face_analysis"


def test_face_analysis_feeds_instantid() -> None:
    analysis = avatar.FaceAnalysis(FACES / "det_tiny.onnx", FACES / "rec_tiny.onnx", det_size=(160, 160))
    photo = Image.open(FACES / "faces.png")
    faces = analysis.analyze(photo)
    assert len(faces) == 6
    face = max(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
    assert set(face) == {"bbox", "det_score", "kps", "embedding", "normed_embedding"}
    assert len(face["kps"]) == 5 and len(face["embedding"]) == 16
    assert abs(sum(v * v for v in face["normed_embedding"]) - 1.0) < 1e-4
    assert len(analysis.analyze(photo, max_num=2)) == 2
    nets = FIXTURES / "controlnet"
    model = avatar.InstantID(FIXTURES / "diffusion/sdxl_tiny", nets / "instantid_ip_adapter.bin",
                             nets / "sdxl_identitynet")
    [image] = model.generate(photo, face["embedding"], [tuple(p) for p in face["kps"]], "portrait",
                             width=64, height=64, seed=1, controlnet_selection=[])
    assert image.size == (64, 64)
    # Seed 001's face avatars give a loaded FaceID adapter the reference's face.
    faceid = avatar.StableDiffusion(TINY_SD_F8, ip_adapters=[FIXTURES / "ip_adapter/ip_adapter_faceid.bin"],
                                    face_analysis=analysis)
    common = dict(width=256, height=256, num_inference_steps=1, guidance_scale=1.0, seed=3, ip_adapter_scale=1.0)
    steered = faceid.face_avatar(photo, **common)[0]
    plain = avatar.StableDiffusion(TINY_SD_F8, ip_adapters=[FIXTURES / "ip_adapter/ip_adapter_faceid.bin"]).face_avatar(
        photo, **common)[0]
    assert steered.tobytes() != plain.tobytes()
    with pytest.raises(avatar.InvalidOptionError) as info:
        avatar.FaceAnalysis(FACES / "det_tiny.onnx", FACES / "rec_tiny.onnx", det_size=(100, 100))
    assert info.value.field == "det_size"
    with pytest.raises(avatar.WeightsError):
        avatar.FaceAnalysis(FACES / "rec_tiny.onnx", FACES / "rec_tiny.onnx")


def test_long_prompts_and_previews() -> None:
    pipe = avatar.StableDiffusion(TINY_SD)
    long = ", ".join(f"a smiling cartoon avatar number {i} with a hat" for i in range(40))
    common = dict(num_inference_steps=1, guidance_scale=1.0, seed=4)
    whole = pipe.text_to_image(long, long_prompt=True, **common)[0]
    assert whole.tobytes() != pipe.text_to_image(long, **common)[0].tobytes()

    seen: list[tuple[int, int, list[Image.Image]]] = []
    images = pipe.text_to_image("an avatar", num_inference_steps=3, guidance_scale=1.0, seed=2, scheduler="euler",
                                preview=lambda s, t, ims: seen.append((s, t, ims)), preview_every=2,
                                preview_mode="vae")
    assert [(s, t) for s, t, _ in seen] == [(2, 3), (3, 3)]
    assert seen[-1][2][0].tobytes() == images[0].tobytes()

    def broken(step: int, total: int, images: list) -> None:
        raise RuntimeError("preview sink failed")

    with pytest.raises(RuntimeError, match="preview sink failed"):
        pipe.text_to_image("x", num_inference_steps=3, guidance_scale=1.0, preview=broken)
    with pytest.raises(avatar.InvalidOptionError) as info:
        pipe.text_to_image("x", num_inference_steps=1, preview=broken, preview_mode="nope")
    assert info.value.field == "preview_mode"
