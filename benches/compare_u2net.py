#!/usr/bin/env python3
"""PyTorch side of benches/u2net_shapes.rs: one forward of the official U2NET / U2NETP (random
weights, eval mode, no grad) on a 320x320 image, batch 1; median of --runs after a warm-up.

    /work/venv-ref/bin/python benches/compare_u2net.py u2net u2netp --runs 5
(torch 2.15.0; the network is tools/reference/segmentation/make_u2net_fixtures.py's)
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tools/reference/segmentation"))
from compare_sd15 import timed  # noqa: E402
from make_u2net_fixtures import FULL, SMALL, U2NET  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*", default=["u2net", "u2netp"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, widths in (("u2net", FULL), ("u2netp", SMALL)):
        if name not in args.names:
            continue
        model = U2NET(widths).eval()
        x = torch.randn(1, 3, 320, 320)

        def run():
            with torch.no_grad():
                model(x)[0].numpy()

        timed(f"{name} 320x320", args.runs, run)


if __name__ == "__main__":
    main()
