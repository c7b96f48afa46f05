#!/usr/bin/env python3
"""Write N generated avatars as transparent PNG files with the project's Python
package. Run it with the python that has `avatar` installed (target/py-venv
after scripts/test.sh), not the torch venv:

    target/py-venv/bin/python tools/eval/sample.py --size small --n 10000 --out /work/eval/gen/small
    target/py-venv/bin/python tools/eval/sample.py --size large --n 10000 --out /work/eval/gen/large
    target/py-venv/bin/python tools/eval/sample.py --weights model.safetensors --n 10000 --out DIR

Seeds are seed_start .. seed_start+N-1 (integers), so a set is reproducible;
files are named by seed (000000.png, ...).
"""

import argparse
import os
import time

import avatar


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help=".safetensors checkpoint (default: the embedded --size model)")
    ap.add_argument("--size", default="small", choices=["small", "large"], help="embedded model")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=256, help="seeds per generate_batch call")
    args = ap.parse_args()

    t0 = time.time()
    if args.weights:
        gen = avatar.AvatarGenerator(weights=args.weights)
    else:
        gen = avatar.AvatarGenerator(size=args.size)
    os.makedirs(args.out, exist_ok=True)
    for i in range(args.seed_start, args.seed_start + args.n, args.chunk):
        seeds = list(range(i, min(i + args.chunk, args.seed_start + args.n)))
        pngs = gen.generate_batch(seeds=seeds, transparent=True, format="png")
        for seed, png in zip(seeds, pngs):
            with open(os.path.join(args.out, f"{seed:06d}.png"), "wb") as f:
                f.write(png)
        done = seeds[-1] - args.seed_start + 1
        if done % (args.chunk * 10) < args.chunk or done == args.n:
            print(f"  {done}/{args.n}", flush=True)
    src = args.weights or f"embedded {args.size}"
    print(f"wrote {args.n} avatars ({gen.resolution} px, {src}) to {args.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
