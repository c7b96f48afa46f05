#!/usr/bin/env python3
"""CPU timing of the seed's Keras DCGAN generator, as a baseline for the Rust port.

For each full-size generator (96 px / latent 100 and 128 px / latent 128; built
with the seed recipe and seeded random weights, or loaded with --model96 /
--model128) it times
  (a) call:    np.asarray(model(z, training=False))
  (b) predict: model.predict(z, verbose=0)      (Keras' default batch_size=32)
at batch 1 and batch 64, after warm-up, and reports median / p10 / p90 / mean
in milliseconds as JSON on stdout (or --out FILE).

Usage:
  /work/venv-keras/bin/python tools/reference/bench_keras.py [--keras 2|3] [--out FILE]
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from keras_dcgan import build_generator, factors_for, random_weights  # noqa: E402

SEED_FILTERS = [256, 256, 128, 128]
MODELS = {96: 100, 128: 128}  # resolution -> latent


def percentiles(ms):
    a = np.asarray(ms)
    return {
        "median_ms": round(float(np.median(a)), 3),
        "p10_ms": round(float(np.percentile(a, 10)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
    }


def time_it(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keras", choices=["2", "3"], default="2", help="2 = tf_keras (the seed's), 3 = keras 3")
    ap.add_argument("--model96", help="a saved .h5 model to load instead of building one")
    ap.add_argument("--model128", help="a saved .h5 model to load instead of building one")
    ap.add_argument("--runs1", type=int, default=30, help="timed runs at batch 1")
    ap.add_argument("--runs64", type=int, default=10, help="timed runs at batch 64")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0 = TF default)")
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    a = ap.parse_args(argv)

    import tensorflow as tf

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    if a.keras == "2":
        import tf_keras as kmod
    else:
        import keras as kmod

    rng = np.random.default_rng(0)
    results = []
    for res, latent in MODELS.items():
        path = a.model96 if res == 96 else a.model128
        if path:
            model = kmod.models.load_model(path, compile=False)
        else:
            model = build_generator(kmod, latent, SEED_FILTERS, factors_for(res), "nested")
            model.set_weights(random_weights(model, rng))
        for batch, runs in ((1, a.runs1), (64, a.runs64)):
            z = rng.standard_normal((batch, latent)).astype(np.float32)
            modes = {
                "call": lambda: np.asarray(model(z, training=False)),
                "predict": lambda: model.predict(z, verbose=0),
            }
            for mode, fn in modes.items():
                ms = time_it(fn, runs, a.warmup)
                row = {"resolution": res, "latent": latent, "mode": mode, "batch": batch, "runs": runs,
                       **percentiles(ms)}
                results.append(row)
                print(json.dumps(row), file=sys.stderr)

    report = {
        "env": {
            "keras_flavour": "tf_keras (Keras 2)" if a.keras == "2" else "keras 3",
            "keras_version": kmod.__version__,
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "warmup": a.warmup,
            "weights": "loaded" if (a.model96 or a.model128) else "seed recipe, random",
        },
        "results": results,
    }
    text = json.dumps(report, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    sys.exit(main())
