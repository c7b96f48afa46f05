#!/usr/bin/env python3
"""Train the attribute classifier used to evaluate DCGAN avatars (see README.md).

    /work/venv-diffusers/bin/python tools/eval/train_classifier.py \
        --data /work/data/lorelei/96 --labels /work/data/lorelei/labels.jsonl --out /work/eval/classifier.pt
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import common


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/avatar-eval"))
    args = ap.parse_args()
    common.set_threads(2)
    torch.manual_seed(0)
    rows = common.read_labels(args.labels)
    classes = common.class_names(rows)
    y = common.encode_labels(rows, classes)
    paths = [os.path.join(args.data, r["file"]) for r in rows]
    x = common.load_images_cached(paths, args.cache, desc="real")
    n = min(args.train, len(x) - 5000)
    xtr, ytr, xte, yte = x[:n], y[:n], x[-5000:], y[-5000:]
    model = common.AttrNet([len(v) for v in classes.values()])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    start = time.time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = np.random.default_rng(epoch).permutation(n)
        for i in range(0, n - args.batch + 1, args.batch):
            idx = order[i:i + args.batch]
            xb = common.to_tensor(xtr[idx])
            if np.random.default_rng(step).random() < 0.5:
                pass  # no flips: left/right parts (e.g. hair parting) are attributes
            logits = model(xb)
            yb = torch.from_numpy(ytr[idx])
            loss = sum(F.cross_entropy(l, yb[:, j]) for j, l in enumerate(logits))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} "
                      f"{step * args.batch / (time.time() - start):.0f} img/s", flush=True)
    _, probs = common.predict(model, xte)
    acc = {a: float((p.argmax(1) == yte[:, j]).mean()) for j, (a, p) in enumerate(zip(classes, probs))}
    for a, v in acc.items():
        print(f"  held-out accuracy {a:<16} {v:.3f} ({len(classes[a])} classes)")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    common.save_classifier(args.out, model, classes, {"accuracy": acc, "train_images": n,
                                                      "epochs": args.epochs, "seconds": time.time() - start})
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"classes": classes, "accuracy": acc}, f, indent=1)
    print(f"saved {args.out} after {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
