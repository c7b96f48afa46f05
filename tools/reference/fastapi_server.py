#!/usr/bin/env python3
"""Reference server of the seed's design: FastAPI + uvicorn + tf.keras + PIL + NumPy.

It is the baseline that `tools/load/bench_http.sh` measures avatar-http against, written as
the seed service describes itself: two Keras DCGAN generators loaded from .h5 files at start-up
(`face_generator_96.h5`, latent 100, and `face_generator_128.h5`, latent 128), a fresh normal
noise vector per request, `generator.predict`, the [-1, 1] output scaled to 8-bit, PIL for the
PNG and for transparency (near-white pixels keyed out), and the seed's two endpoints:

    GET /health                                   -> {"message": "okay"}
    GET /generate-image?size=small|large&transparent=true|false -> image/png

Models: $REF_MODELS_DIR/face_generator_{96,128}.h5 (default ./models); build random-weight
ones of the seed's architecture with tools/reference/keras_dcgan.py (see bench_http.sh).

    REF_MODELS_DIR=target/reference-models uvicorn --app-dir tools/reference fastapi_server:app --port 8001

REF_INFERENCE=predict (default, as the seed) or `call` (`generator(noise, training=False)`,
which skips predict()'s per-call overhead) selects how the model is run.
"""

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from fastapi import FastAPI, Query  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402
from PIL import Image  # noqa: E402

MODELS_DIR = os.environ.get("REF_MODELS_DIR", "models")
INFERENCE = os.environ.get("REF_INFERENCE", "predict")

app = FastAPI(title="Avatar Generation API (reference)")

# Seed: "Latent vector (SEED_SIZE): 100 for 96x96 images and 128 for 128x128 images."
MODELS = {
    "small": (tf.keras.models.load_model(os.path.join(MODELS_DIR, "face_generator_96.h5"), compile=False), 100),
    "large": (tf.keras.models.load_model(os.path.join(MODELS_DIR, "face_generator_128.h5"), compile=False), 128),
}


def generate(size: str, transparent: bool) -> io.BytesIO:
    generator, seed_size = MODELS[size]
    noise = np.random.normal(0, 1, (1, seed_size)).astype(np.float32)
    if INFERENCE == "call":
        image = generator(noise, training=False).numpy()[0]
    else:
        image = generator.predict(noise, verbose=0)[0]
    image = ((image + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(image)
    if transparent:
        img = img.convert("RGBA")
        pixels = np.array(img)
        near_white = (pixels[:, :, 0] > 240) & (pixels[:, :, 1] > 240) & (pixels[:, :, 2] > 240)
        pixels[near_white, 3] = 0
        img = Image.fromarray(pixels, "RGBA")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


@app.get("/health")
async def health():
    return {"message": "okay"}


@app.get("/generate-image")
async def generate_image(transparent: bool = False, size: str = Query("small", pattern="^(small|large)$")):
    return StreamingResponse(generate(size, transparent), media_type="image/png")
