#!/usr/bin/env python3
"""Distance between generated avatars and the real dataset, in the attribute classifier's
penultimate features (a Fréchet distance, like FID with a domain-specific network), and attribute
coverage among the generated avatars. See README.md.

    /work/venv-diffusers/bin/python tools/eval/evaluate.py --classifier /work/eval/classifier.pt \
        --real /work/data/lorelei/96 --labels /work/data/lorelei/labels.jsonl \
        --generated small=/work/eval/gen_small --generated large=/work/eval/gen_large
"""
import argparse
import json
import os

import numpy as np

import common


def frechet(a, b):
    """Fréchet distance between Gaussians fitted to two feature sets (float64, numpy only)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def coverage(probs, classes, real_hist):
    """Per attribute: share of classes predicted at least once / at least 0.1% of the time, and
    the total-variation distance between predicted and real class histograms."""
    out = {}
    for (name, names), p in zip(classes.items(), probs):
        counts = np.bincount(p.argmax(1), minlength=len(names)) / len(p)
        out[name] = {
            "classes": len(names),
            "covered": float((counts > 0).mean()),
            "covered_0.1%": float((counts >= 0.001).mean()),
            "tv_to_real": float(0.5 * np.abs(counts - real_hist[name]).sum()),
        }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--real", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--generated", action="append", default=[], help="NAME=DIR")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/avatar-eval"))
    ap.add_argument("--json")
    args = ap.parse_args()
    common.set_threads(2)
    model, classes, _ = common.load_classifier(args.classifier)
    rows = common.read_labels(args.labels)
    y = common.encode_labels(rows, classes)
    real_hist = {a: np.bincount(y[:, j], minlength=len(n)) / len(y) for j, (a, n) in enumerate(classes.items())}
    paths = [os.path.join(args.real, r["file"]) for r in rows]
    real = common.load_images_cached(paths, args.cache, desc="real")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real))
    half_a, half_b = real[order[: args.n]], real[order[args.n: 2 * args.n]]
    feats_a, _ = common.predict(model, half_a)
    feats_b, probs_b = common.predict(model, half_b)
    results = {"real_vs_real": {"fd": frechet(feats_a, feats_b),
                                "coverage": coverage(probs_b, classes, real_hist)}}
    sets = dict(g.split("=", 1) for g in args.generated)
    # Degenerate references: uniform noise, and one real avatar repeated.
    sets_arrays = {
        "noise": rng.integers(0, 256, size=(args.n, common.IMG, common.IMG, 3), dtype=np.uint8),
        "one_face": np.repeat(half_b[:1], args.n, axis=0),
    }
    for name, d in sets.items():
        files = common.list_pngs(d)[: args.n]
        sets_arrays[name] = common.load_images(files, desc=name)
    for name, arr in sets_arrays.items():
        feats, probs = common.predict(model, arr)
        results[name] = {"fd": frechet(feats_a, feats), "coverage": coverage(probs, classes, real_hist)}
    print(f"| set | FD to real (10k vs 10k) | mean class coverage (>=1 / >=0.1%) | mean TV to real |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        cov = r["coverage"].values()
        print(f"| {name} | {r['fd']:.2f} | {np.mean([c['covered'] for c in cov]):.3f} / "
              f"{np.mean([c['covered_0.1%'] for c in cov]):.3f} | {np.mean([c['tv_to_real'] for c in cov]):.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
