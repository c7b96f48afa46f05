#!/usr/bin/env python3
"""Train the multi-head attribute classifier used by evaluate.py.

Real avatars (RGBA) are composited on white and downsampled to 64x64; one
softmax head per attribute in common.ATTRIBUTES (null -> "none"). A fixed
held-out split is used for per-attribute accuracy. The number of epochs is
sized from a measured throughput so training fits in --time-budget seconds.

    nice -n 10 /work/venv-diffusers/bin/python tools/eval/train_classifier.py \
        --data /work/data/lorelei/96 --labels /work/data/lorelei/labels.jsonl \
        --out /work/eval/classifier.pt
"""

import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

import common


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/data/lorelei/96")
    ap.add_argument("--labels", default="/work/data/lorelei/labels.jsonl")
    ap.add_argument("--out", default="/work/eval/classifier.pt", help="model file (keep it outside the repo)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/avatar-eval"),
                    help="preprocessed-image cache ('' = none)")
    ap.add_argument("--val", type=int, default=5000, help="held-out images")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--feat", type=int, default=256)
    ap.add_argument("--time-budget", type=float, default=20 * 60, help="seconds of training (epochs sized from it)")
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=0, help="force the epoch count (0 = from --time-budget)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (smoke tests)")
    args = ap.parse_args()

    common.set_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    t_start = time.time()

    rows = common.read_labels(args.labels)
    classes = common.class_names(rows)  # from all rows, so --limit keeps the same heads
    if args.limit:
        rows = rows[:args.limit]
    y_all = common.encode_labels(rows, classes)
    paths = [os.path.join(args.data, r["file"]) for r in rows]
    print("attributes:", {a: len(v) for a, v in classes.items()}, flush=True)

    t0 = time.time()
    x_all = common.load_images_cached(paths, args.cache_dir or None, workers=2, desc="real")
    t_load = time.time() - t0
    print(f"loaded {len(x_all)} images in {t_load:.0f}s", flush=True)

    perm = np.random.RandomState(args.seed).permutation(len(rows))
    val_idx, tr_idx = np.sort(perm[:args.val]), perm[args.val:]
    x_val, y_val = x_all[val_idx], torch.from_numpy(y_all[val_idx])
    n_tr = len(tr_idx)

    model = common.AttrNet([len(v) for v in classes.values()], args.width, args.feat)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    def train_step(xb_u8, yb, opt, sched=None):
        model.train()
        x = common.to_tensor(xb_u8)
        x.add_(torch.randn_like(x).mul_(0.03))  # mild noise: a little robustness to GAN speckle
        logits = model(x)
        loss = sum(F.cross_entropy(l, yb[:, j]) for j, l in enumerate(logits)) / len(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        return loss.item()

    @torch.no_grad()
    def evaluate():
        model.eval()
        correct = torch.zeros(len(classes))
        for i in range(0, len(x_val), 500):
            logits = model(common.to_tensor(x_val[i:i + 500]))
            yb = y_val[i:i + 500]
            for j, l in enumerate(logits):
                correct[j] += (l.argmax(1) == yb[:, j]).sum()
        return {a: float(c) / len(x_val) for a, c in zip(classes, correct)}

    # ---- throughput probe (on a throwaway copy of the weights/optimizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe_opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    probe_steps = 8
    rng = np.random.RandomState(args.seed + 1)
    for s in range(probe_steps + 2):
        if s == 2:
            t0 = time.time()
        b = rng.choice(tr_idx, args.batch, replace=False)
        train_step(x_all[b], torch.from_numpy(y_all[b]), probe_opt)
    step_s = (time.time() - t0) / probe_steps
    t0 = time.time()
    evaluate()
    eval_s = time.time() - t0
    model.load_state_dict(state)
    steps_per_epoch = n_tr // args.batch
    epoch_s = steps_per_epoch * step_s + eval_s
    if args.epochs > 0:
        epochs = args.epochs
    else:
        epochs = max(1, min(args.max_epochs, int(args.time_budget // epoch_s)))
    print(f"throughput: {args.batch / step_s:.0f} img/s train, {len(x_val) / eval_s:.0f} img/s eval; "
          f"~{epoch_s:.0f}s/epoch -> {epochs} epochs", flush=True)

    # ---- training
    # One-cycle LR (15% linear warm-up, cosine decay) over progress =
    # max(step / planned steps, elapsed / time budget): on an unloaded machine
    # that is the planned step schedule; if the shared CPU gets busier than
    # during the probe, the schedule is compressed and training still ends on
    # time (the steps actually run are recorded).
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    total = epochs * steps_per_epoch
    budget = args.time_budget if args.epochs <= 0 else float("inf")

    def lr_at(frac):
        if frac < 0.15:
            return args.lr * (0.04 + 0.96 * frac / 0.15)
        return args.lr * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (frac - 0.15) / 0.85)))

    history = []
    t_train = time.time()
    step, done, acc = 0, False, None
    t_log = time.time()
    for ep in range(epochs):
        te = time.time()
        order = np.random.RandomState(args.seed + 100 + ep).permutation(tr_idx)
        losses = []
        for s in range(steps_per_epoch):
            frac = max(step / total, (time.time() - t_train) / budget)
            if frac >= 1:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(frac)
            b = np.sort(order[s * args.batch:(s + 1) * args.batch])
            losses.append(train_step(x_all[b], torch.from_numpy(y_all[b]), opt))
            step += 1
            if step % 50 == 0:
                print(f"  step {step}/{total}  progress {frac:.2f}  lr {lr_at(frac):.2e}  "
                      f"loss {np.mean(losses[-50:]):.4f}  {50 * args.batch / (time.time() - t_log):.0f} img/s",
                      flush=True)
                t_log = time.time()
        if not losses:
            break
        acc = evaluate()
        mean_acc = float(np.mean(list(acc.values())))
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "val_mean_acc": mean_acc,
                        "seconds": time.time() - te})
        print(f"epoch {ep + 1}/{epochs}  loss {np.mean(losses):.4f}  val mean acc {mean_acc:.4f}  "
              f"({time.time() - te:.0f}s)  " + " ".join(f"{a}={v:.3f}" for a, v in acc.items()), flush=True)
        if done:
            print(f"time budget reached after {step} steps ({step / steps_per_epoch:.2f} epochs)", flush=True)
            break
    t_train = time.time() - t_train
    if acc is None:
        acc = evaluate()

    # chance = majority-class rate on the held-out split
    majority = {a: float(np.bincount(y_all[val_idx, j], minlength=len(classes[a])).max()) / len(val_idx) for j, a in enumerate(classes)}
    meta = {
        "data": os.path.abspath(args.data), "labels": os.path.abspath(args.labels),
        "img": common.IMG, "width": args.width, "feat": args.feat, "seed": args.seed,
        "train_images": int(n_tr), "val_images": int(len(val_idx)), "planned_epochs": epochs,
        "steps": step, "epochs": step / steps_per_epoch, "batch": args.batch,
        "lr": args.lr, "params": int(n_params), "val_accuracy": acc, "val_majority_baseline": majority,
        "history": history, "load_seconds": t_load, "train_seconds": t_train,
        "total_seconds": time.time() - t_start,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or ".", exist_ok=True)
    common.save_classifier(args.out, model, classes, meta)
    base = os.path.splitext(args.out)[0]
    with open(base + ".classes.json", "w") as f:
        json.dump(classes, f, indent=1)
    with open(base + ".metrics.json", "w") as f:
        json.dump(meta, f, indent=1)

    print("\n| attribute | classes | held-out acc | majority baseline |\n|---|---:|---:|---:|")
    for a in classes:
        print(f"| {a} | {len(classes[a])} | {acc[a]:.4f} | {majority[a]:.4f} |")
    print(f"| **mean** | | {np.mean(list(acc.values())):.4f} | |")
    print(f"\nsaved {args.out} (+ .classes.json, .metrics.json); train {t_train / 60:.1f} min, "
          f"total {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
