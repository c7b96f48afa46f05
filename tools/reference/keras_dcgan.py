#!/usr/bin/env python3
"""Reference Keras DCGAN generator: builds the seed's generator recipe with
random (but seeded) weights and writes it in every on-disk form the seed
service may meet, plus an input/output pair for numerical parity checks.

Recipe (exactly the seed's):
    Input(latent) -> Dense(4*4*F0, relu) -> Reshape((4, 4, F0)) ->
    4 x [UpSampling2D(s_i) -> Conv2D(F_i, 3x3, same) ->
         BatchNormalization(momentum=0.8) -> Activation(relu)] ->
    Conv2D(3, 3x3, same) -> Activation(tanh)
with F0 = F_1. Seed sizes: F = 256,256,128,128; s = 2,2,2,3 (96 px, latent
100) or s = 2,2,2,4 (128 px, latent 128).

Files written for --name NAME into --out-dir DIR:
    NAME.keras2.h5       Keras 2 full model (tf_keras, legacy HDF5)
    NAME.keras3.h5       Keras 3 full model (legacy HDF5 save)
    NAME.weights.h5      Keras 3 model.save_weights()
    NAME.f16.keras2.h5   (with --f16) Keras 2 full model with floatx=float16
                         (Conv/Dense weights float16, BatchNorm float32) and
                         every string attribute rewritten fixed-length, as
                         Keras <= 2.2 / h5py 2.x wrote them
    NAME.io.safetensors  latent [N, latent] f32 and output [N, H, W, 3] f32
                         (NHWC, after tanh) from model(latent, training=False)

All forms hold the same weights: they are drawn once with numpy and set on
the Keras 3 model and the Keras 2 model alike with set_weights().
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

PRESETS = {
    # Committed test fixtures: tiny filter counts, real latent sizes and
    # resolutions. Distinct channel counts catch transposed layouts.
    # n=2 (not 4) keeps the committed io files small.
    "tiny96": dict(latent=100, resolution=96, filters=[4, 6, 5, 4], n=2, f16=True, api="nested"),
    "tiny128": dict(latent=128, resolution=128, filters=[4, 6, 5, 4], n=2, f16=False, api="sequential"),
    # The seed's real sizes (not committed: tens of MB).
    "full96": dict(latent=100, resolution=96, filters=[256, 256, 128, 128], n=4, f16=False, api="nested"),
    "full128": dict(latent=128, resolution=128, filters=[256, 256, 128, 128], n=4, f16=False, api="nested"),
}


def factors_for(resolution):
    """Upsampling factors of the seed recipe: 2, 2, 2, resolution / 32."""
    if resolution % 32 != 0:
        raise SystemExit(f"resolution {resolution} is not 32 * k")
    return [2, 2, 2, resolution // 32]


def build_generator(kmod, latent, filters, factors, api="sequential"):
    """Build the seed generator with Keras module `kmod` (keras or tf_keras)."""
    L = kmod.layers
    f0 = filters[0]
    layers = [L.Dense(4 * 4 * f0, activation="relu"), L.Reshape((4, 4, f0))]
    for f, s in zip(filters, factors):
        layers += [
            L.UpSampling2D(size=s),
            L.Conv2D(f, kernel_size=(3, 3), padding="same"),
            L.BatchNormalization(momentum=0.8),
            L.Activation("relu"),
        ]
    layers += [L.Conv2D(3, kernel_size=(3, 3), padding="same"), L.Activation("tanh")]
    if api == "sequential":
        return kmod.Sequential([kmod.Input(shape=(latent,))] + layers, name="generator")
    if api == "nested":
        # As the classic Keras-GAN DCGAN does: a Sequential wrapped in
        # Model(noise, model(noise)), so the whole generator is one layer.
        inner = kmod.Sequential([kmod.Input(shape=(latent,))] + layers)
        noise = kmod.Input(shape=(latent,))
        return kmod.Model(noise, inner(noise), name="generator")
    inp = kmod.Input(shape=(latent,))
    x = inp
    for layer in layers:
        x = layer(x)
    return kmod.Model(inp, x, name="generator")


def weighted_layers(model):
    """Leaf layers in model order, descending into nested models."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from weighted_layers(layer)
        else:
            yield layer


def legacy_strings(path):
    """Rewrite every string attribute as a fixed-length (NUL-padded) string,
    as Keras <= 2.2 with h5py 2.x wrote `layer_names`, `weight_names` and
    `model_config`; h5py 3 writes variable-length strings instead."""
    import h5py

    def fix(obj):
        for k in list(obj.attrs.keys()):
            v = obj.attrs[k]
            if isinstance(v, str):
                del obj.attrs[k]
                obj.attrs[k] = np.bytes_(v.encode("utf-8"))
            elif isinstance(v, np.ndarray) and v.dtype == object and v.size:
                b = [x.encode("utf-8") if isinstance(x, str) else bytes(x) for x in v.ravel()]
                del obj.attrs[k]
                obj.attrs[k] = np.array(b, dtype=f"S{max(len(x) for x in b)}").reshape(v.shape)

    with h5py.File(path, "r+") as f:
        fix(f)
        f.visititems(lambda _name, obj: fix(obj))


def random_weights(model, rng):
    """Seeded weights for every layer, in model.get_weights() order.

    Kernels: Glorot-uniform. Biases: U(-0.1, 0.1). BatchNorm: gamma U(0.8, 1.2),
    beta U(-0.1, 0.1), moving_mean U(-0.2, 0.2), moving_variance U(0.5, 1.5)
    so that inference-mode BatchNorm is exercised with non-trivial stats.
    """
    out = []
    for layer in weighted_layers(model):
        kind = layer.__class__.__name__
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if not shapes:
            continue
        if kind in ("Dense", "Conv2D"):
            kshape, bshape = shapes
            receptive = int(np.prod(kshape[:-2])) if len(kshape) > 2 else 1
            fan_in, fan_out = kshape[-2] * receptive, kshape[-1] * receptive
            lim = np.sqrt(6.0 / (fan_in + fan_out))
            out.append(rng.uniform(-lim, lim, kshape).astype(np.float32))
            out.append(rng.uniform(-0.1, 0.1, bshape).astype(np.float32))
        elif kind == "BatchNormalization":
            (c,) = shapes[0]
            out.append(rng.uniform(0.8, 1.2, c).astype(np.float32))  # gamma
            out.append(rng.uniform(-0.1, 0.1, c).astype(np.float32))  # beta
            out.append(rng.uniform(-0.2, 0.2, c).astype(np.float32))  # moving_mean
            out.append(rng.uniform(0.5, 1.5, c).astype(np.float32))  # moving_variance
        else:
            raise SystemExit(f"unexpected weighted layer {kind}")
    return out


def generate(name, out_dir, latent, resolution, filters, n, seed, f16, api, forms):
    import keras
    import tf_keras

    os.makedirs(out_dir, exist_ok=True)
    factors = factors_for(resolution)
    rng = np.random.default_rng(seed)
    stem = os.path.join(out_dir, name)

    m3 = build_generator(keras, latent, filters, factors, api)
    weights = random_weights(m3, rng)
    m3.set_weights(weights)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    y3 = np.asarray(m3(z, training=False), dtype=np.float32)

    m2 = build_generator(tf_keras, latent, filters, factors, api)
    m2.set_weights(weights)
    y2 = np.asarray(m2(z, training=False), dtype=np.float32)
    if not np.allclose(y2, y3, atol=1e-5):
        raise SystemExit(f"Keras 2 and Keras 3 disagree: {np.abs(y2 - y3).max()}")

    checks = {}
    if "keras3" in forms:
        p = stem + ".keras3.h5"
        m3.save(p)
        back = keras.models.load_model(p, compile=False)
        checks["keras3"] = float(np.abs(np.asarray(back(z, training=False)) - y3).max())
    if "weights" in forms:
        p = stem + ".weights.h5"
        m3.save_weights(p)
        fresh = build_generator(keras, latent, filters, factors, api)
        fresh.load_weights(p)
        checks["weights"] = float(np.abs(np.asarray(fresh(z, training=False)) - y3).max())
    if "keras2" in forms:
        p = stem + ".keras2.h5"
        m2.save(p, save_format="h5")
        back = tf_keras.models.load_model(p, compile=False)
        checks["keras2"] = float(np.abs(back(z, training=False).numpy() - y3).max())
    if f16:
        tf_keras.backend.set_floatx("float16")
        try:
            m16 = build_generator(tf_keras, latent, filters, factors, api)
            m16.set_weights([w.astype(np.float16) for w in weights])
            m16.save(stem + ".f16.keras2.h5", save_format="h5")
            legacy_strings(stem + ".f16.keras2.h5")
        finally:
            tf_keras.backend.set_floatx("float32")

    meta = {
        "latent_dim": str(latent),
        "resolution": str(resolution),
        "filters": ",".join(map(str, filters)),
        "upsample_factors": ",".join(map(str, factors)),
        "seed": str(seed),
        "api": api,
        "keras": keras.__version__,
        "tf_keras": tf_keras.__version__,
    }
    from safetensors.numpy import save_file

    save_file({"latent": z, "output": y3}, stem + ".io.safetensors", metadata=meta)
    report = {
        "name": name,
        "output_shape": list(y3.shape),
        "output_std": float(y3.std()),
        "output_abs_max": float(np.abs(y3).max()),
        "keras2_vs_keras3_max_abs": float(np.abs(y2 - y3).max()),
        "reload_max_abs": checks,
        **meta,
    }
    print(json.dumps(report))
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="named sizes (overrides the size flags)")
    ap.add_argument("--name", help="file stem (default: the preset name)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=96, help="32 * k; factors are 2,2,2,k")
    ap.add_argument("--filters", default="256,256,128,128", help="F1..F4 (F0 = F1)")
    ap.add_argument("--n", type=int, default=4, help="batch size of the io pair")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--f16", action="store_true", help="also write NAME.f16.keras2.h5")
    ap.add_argument("--api", choices=["sequential", "functional", "nested"], default="sequential",
                    help="nested = Model(noise, Sequential(...)(noise)) as in Keras-GAN's DCGAN")
    ap.add_argument("--forms", default="keras2,keras3,weights")
    a = ap.parse_args(argv)

    cfg = dict(latent=a.latent, resolution=a.resolution, filters=[int(x) for x in a.filters.split(",")], n=a.n,
               f16=a.f16, api=a.api)
    if a.preset:
        cfg = dict(PRESETS[a.preset])
    if len(cfg["filters"]) != 4:
        raise SystemExit("--filters needs 4 values")
    name = a.name or a.preset
    if not name:
        raise SystemExit("--name or --preset is required")
    generate(name, a.out_dir, cfg["latent"], cfg["resolution"], cfg["filters"], cfg["n"], a.seed, cfg["f16"],
             cfg["api"], set(a.forms.split(",")))


if __name__ == "__main__":
    sys.exit(main())
