#!/usr/bin/env python3
"""Evaluate generated avatars against the real dataset with the attribute
classifier from train_classifier.py (see README.md):

 (a) Fréchet distance (FD) between Gaussians fitted to the classifier's
     penultimate-layer features of N generated and N real images; the floor is
     real vs real (two disjoint random halves of N real images each);
 (b) attribute coverage: per attribute, the share of its classes predicted
     (argmax) at least once / at least 0.1% of the time among the generated
     images, and the total-variation and KL distance between the predicted
     class histogram and the real label histogram.

    PY=/work/venv-diffusers/bin/python
    nice -n 10 $PY tools/eval/evaluate.py --classifier /work/eval/attrnet/classifier.pt \\
        --real /work/data/lorelei/96 --generated small=/work/eval/gen/small --refs \\
        --json /work/eval/results_small.json

--refs adds two sanity references: "noise" (uniform random RGBA images at the
real resolution) and "one_face" (N copies of one real image). Generated RGBA
images are composited on white and downsampled exactly like the real ones.
"""

import argparse
import json
import math
import os
import time

import numpy as np
from PIL import Image

import common


def frechet(a, b):
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets.

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with Tr((S1 S2)^1/2) computed
    as the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric
    PSD, so numpy's eigh suffices; no scipy needed)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def coverage(probs, classes, real_hist, min_share=0.001, confident=0.5):
    """Per attribute: classes predicted >= 1 time / >= min_share of the time,
    TV(real, predicted) and KL(real || predicted); for the KL the predicted
    counts get +0.5 per class (Jeffreys smoothing) so a missing class costs a
    finite, large amount. Also the mean max softmax probability ("confidence")
    and the coverage counting only predictions with probability >= `confident`
    (argmax coverage alone is fooled by garbage, which the classifier spreads
    over many classes)."""
    out = {}
    for (name, names), p in zip(classes.items(), probs):
        n, k = len(p), len(names)
        arg, top = p.argmax(1), p.max(1)
        counts = np.bincount(arg, minlength=k)
        conf_counts = np.bincount(arg[top >= confident], minlength=k)
        hist = counts / n
        q = (counts + 0.5) / (n + 0.5 * k)
        r = real_hist[name]
        nz = r > 0
        out[name] = {
            "classes": k,
            "present": int((counts > 0).sum()),
            "present_0.1%": int((counts >= math.ceil(min_share * n)).sum()),
            "coverage": float((counts > 0).mean()),
            "coverage_0.1%": float((counts >= math.ceil(min_share * n)).mean()),
            "confidence": float(top.mean()),
            "coverage_confident_0.1%": float((conf_counts >= math.ceil(min_share * n)).mean()),
            "tv": float(0.5 * np.abs(hist - r).sum()),
            "kl_real_to_gen": float((r[nz] * np.log(r[nz] / q[nz])).sum()),
            "missing": [names[i] for i in np.flatnonzero(counts == 0)],
            "histogram": {names[i]: int(c) for i, c in enumerate(counts)},
        }
    return out


def noise_set(n, res, seed):
    rng = np.random.default_rng(seed)
    out = np.empty((n, common.IMG, common.IMG, 3), dtype=np.uint8)
    for i in range(n):
        rgba = rng.integers(0, 256, size=(res, res, 4), dtype=np.uint8)
        out[i] = common.prepare(Image.fromarray(rgba, "RGBA"))
    return out


def summary(name, n, fd, cov, acc=None):
    c = list(cov.values())
    return {
        "set": name, "n": n, "fd": fd,
        "coverage": float(np.mean([x["coverage"] for x in c])),
        "coverage_0.1%": float(np.mean([x["coverage_0.1%"] for x in c])),
        "tv": float(np.mean([x["tv"] for x in c])),
        "kl": float(np.mean([x["kl_real_to_gen"] for x in c])),
        "confidence": float(np.mean([x["confidence"] for x in c])),
        "coverage_confident_0.1%": float(np.mean([x["coverage_confident_0.1%"] for x in c])),
        "classifier_acc": acc,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", default="/work/eval/attrnet/classifier.pt")
    ap.add_argument("--real", required=True, help="real PNG folder (96 or 128 px)")
    ap.add_argument("--labels", help="labels.jsonl (default: next to --real)")
    ap.add_argument("--generated", action="append", default=[],
                    help="[NAME=]DIR of generated PNGs; repeatable")
    ap.add_argument("--n", type=int, default=10000, help="images per set")
    ap.add_argument("--refs", action="store_true", help="add the 'noise' and 'one_face' references")
    ap.add_argument("--min-share", type=float, default=0.001, help="coverage threshold (0.1%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/avatar-eval"),
                    help="preprocessed real-image cache ('' = none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()

    t_start = time.time()
    common.set_threads(args.threads)
    model, classes, ck = common.load_classifier(args.classifier)
    labels = args.labels or os.path.join(os.path.dirname(os.path.abspath(args.real.rstrip("/"))), "labels.jsonl")
    rows = common.read_labels(labels)
    y = common.encode_labels(rows, classes)
    real_hist = {a: np.bincount(y[:, j], minlength=len(v)) / len(y) for j, (a, v) in enumerate(classes.items())}

    if 2 * args.n > len(rows):
        raise SystemExit(f"--n {args.n}: need 2n <= {len(rows)} real images")
    paths = [os.path.join(args.real, r["file"]) for r in rows]
    real = common.load_images_cached(paths, args.cache_dir or None, desc="real")
    real_res = Image.open(paths[0]).size[0]
    order = np.random.default_rng(args.seed).permutation(len(rows))
    idx_a, idx_b = np.sort(order[:args.n]), np.sort(order[args.n:2 * args.n])

    t0 = time.time()
    feats_a, _ = common.predict(model, real[idx_a])
    feats_b, probs_b = common.predict(model, real[idx_b])
    t_feat = time.time() - t0
    acc_b = {a: float((p.argmax(1) == y[idx_b, j]).mean()) for j, (a, p) in enumerate(zip(classes, probs_b))}
    cov_b = coverage(probs_b, classes, real_hist, args.min_share)
    results = {"real_vs_real": {"n": args.n, "fd": frechet(feats_a, feats_b), "coverage": cov_b,
                                "classifier_accuracy": acc_b}}
    rows_out = [summary("real vs real (floor)", args.n, results["real_vs_real"]["fd"], cov_b,
                        float(np.mean(list(acc_b.values()))))]
    print(f"real: {args.real} ({real_res} px), halves of {args.n}; features at "
          f"{2 * args.n / t_feat:.0f} img/s", flush=True)

    sets = []
    for g in args.generated:
        name, d = g.split("=", 1) if "=" in g else (os.path.basename(g.rstrip("/")), g)
        sets.append((name, d))
    if args.refs:
        sets += [("noise", None), ("one_face", None)]

    for name, d in sets:
        t0 = time.time()
        if name == "noise" and d is None:
            imgs = noise_set(args.n, real_res, args.seed + 1)
        elif name == "one_face" and d is None:
            imgs = np.repeat(real[idx_b[:1]], args.n, axis=0)  # not in half A
        else:
            files = common.list_pngs(d)
            if len(files) < args.n:
                print(f"WARNING: {d} has {len(files)} PNGs < --n {args.n}; FD is biased upward "
                      "with fewer samples", flush=True)
            imgs = common.load_images(files[:args.n], desc=name)
        feats, probs = common.predict(model, imgs)
        fd = frechet(feats_a, feats)
        cov = coverage(probs, classes, real_hist, args.min_share)
        results[name] = {"dir": d, "n": len(imgs), "fd": fd, "coverage": cov, "seconds": time.time() - t0}
        rows_out.append(summary(name, len(imgs), fd, cov))
        print(f"{name}: FD {fd:.2f} ({time.time() - t0:.0f}s)", flush=True)

    # ---- report
    print(f"\n### FD and coverage (real = {args.real}, {common.IMG}x{common.IMG}, "
          f"{len(classes)} attributes)\n")
    print("| set | n | FD to real | classes seen (mean over attrs) | seen >= 0.1% | seen >= 0.1% at p >= 0.5 "
          "| mean TV | mean KL(real‖gen) | confidence |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows_out:
        print(f"| {r['set']} | {r['n']} | {r['fd']:.2f} | {r['coverage']:.3f} | {r['coverage_0.1%']:.3f} | "
              f"{r['coverage_confident_0.1%']:.3f} | {r['tv']:.3f} | {r['kl']:.3f} | {r['confidence']:.3f} |")

    names = list(results)
    print("\n### Per attribute: classes seen >= 0.1% of the time / classes (TV to the real histogram)\n")
    print("| attribute | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for a in classes:
        cells = [f"{results[s]['coverage'][a]['present_0.1%']}/{len(classes[a])} "
                 f"({results[s]['coverage'][a]['tv']:.2f})" for s in names]
        print(f"| {a} | " + " | ".join(cells) + " |")
    print(f"\nclassifier accuracy on real half B: mean {np.mean(list(acc_b.values())):.3f} "
          "(most of these images were training images when --real is the 96 px set)")

    if args.json:
        meta = {"classifier": os.path.abspath(args.classifier), "real": os.path.abspath(args.real),
                "labels": labels, "n": args.n, "seed": args.seed, "min_share": args.min_share,
                "img": common.IMG, "classifier_val_accuracy": ck.get("meta", {}).get("val_accuracy"),
                "seconds": time.time() - t_start}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": rows_out, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    print(f"total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
