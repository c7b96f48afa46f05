#!/usr/bin/env python3
"""Write N generated avatars as PNG files with the project's Python package (run with the
python that has `avatar` installed, e.g. target/py-venv/bin/python after scripts/test.sh).

    target/py-venv/bin/python tools/eval/sample.py --size small --n 10000 --out /work/eval/gen_small
    target/py-venv/bin/python tools/eval/sample.py --weights model.safetensors --n 10000 --out DIR
"""
import argparse
import os

import avatar


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["small", "large"])
    ap.add_argument("--weights")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed-offset", type=int, default=1_000_000)
    args = ap.parse_args()
    gen = avatar.AvatarGenerator(size=args.size, weights=args.weights)
    os.makedirs(args.out, exist_ok=True)
    for i in range(0, args.n, 256):
        seeds = list(range(args.seed_offset + i, args.seed_offset + min(i + 256, args.n)))
        for seed, png in zip(seeds, gen.generate_batch(seeds=seeds, transparent=True, format="png")):
            with open(os.path.join(args.out, f"{seed}.png"), "wb") as f:
                f.write(png)
    print(f"wrote {args.n} avatars ({gen.resolution} px) to {args.out}")


if __name__ == "__main__":
    main()
