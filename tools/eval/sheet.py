#!/usr/bin/env python3
"""An 8x8 sheet of generated avatars on grey (run with the python that has `avatar`).

    target/py-venv/bin/python tools/eval/sheet.py --size small --out docs/samples/model_small.jpg
"""
import argparse

from PIL import Image

import avatar


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small", choices=["small", "large"])
    ap.add_argument("--weights")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    gen = avatar.AvatarGenerator(size=args.size, weights=args.weights)
    tiles = gen.generate_batch(seeds=list(range(64)), transparent=True)
    r = gen.resolution
    sheet = Image.new("RGBA", (8 * (r + 2) + 2, 8 * (r + 2) + 2), (200, 200, 200, 255))
    for i, tile in enumerate(tiles):
        sheet.alpha_composite(tile, (2 + (i % 8) * (r + 2), 2 + (i // 8) * (r + 2)))
    sheet.convert("RGB").save(args.out, quality=85)  # JPEG keeps noisy sheets small


if __name__ == "__main__":
    main()
