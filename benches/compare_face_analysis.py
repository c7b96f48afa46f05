#!/usr/bin/env python3
"""onnxruntime side of benches/face_analysis_shapes.rs, and the models both sides run.

`--export DIR` writes two random-weight models in insightface's released layouts (exported as
eval-mode torch models, batch norms folded where torch folds them, as the released files are):
`arcface_r50.onnx`, arcface_torch's IResNet-50 (w600k_r50's architecture: 3-4-14-3 blocks, widths
64-512, 512-d), and `scrfd_wide.onnx`, the fixture's SCRFD-style detector at widths 64/64. Then
one forward each on onnxruntime's CPU provider with 2 threads: ArcFace on a batch of 1 and 8
112x112 crops, the detector on a 640x640 input; median of --runs after a warm-up.

    /work/venv-ref/bin/python benches/compare_face_analysis.py --export /tmp/face_bench --runs 5
    cargo bench -p avatar-core --bench face_analysis_shapes -- /tmp/face_bench --runs 5
(torch 2.15.0, onnxruntime 1.32)
"""
import argparse
import os
import sys

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tools/reference/face_analysis"))
from compare_sd15 import timed  # noqa: E402
from make_fixtures import IResNet, TinySCRFD  # noqa: E402


def export(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    rec = IResNet(layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), num_features=512).eval()
    torch.onnx.export(rec, (torch.randn(1, 3, 112, 112),), os.path.join(out, "arcface_r50.onnx"),
                      input_names=["input.1"], output_names=["683"],
                      dynamic_axes={"input.1": {0: "?"}, "683": {0: "?"}}, opset_version=11, dynamo=False)
    det = TinySCRFD(width=64, fpn=64).eval()
    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.onnx.export(det, (torch.randn(1, 3, 640, 640),), os.path.join(out, "scrfd_wide.onnx"),
                      input_names=["input.1"], output_names=names,
                      dynamic_axes={"input.1": {0: "?", 2: "?", 3: "?"}, **{n: {0: "?", 1: "?"} for n in names}},
                      opset_version=11, dynamo=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--export", required=True, help="directory for the two models")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.export, "arcface_r50.onnx")):
        export(args.export)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    rec = ort.InferenceSession(os.path.join(args.export, "arcface_r50.onnx"), options,
                               providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, 112, 112)).astype(np.float32)
        timed(f"arcface r50 batch {batch}", args.runs, lambda: rec.run(None, {"input.1": x}))
    det = ort.InferenceSession(os.path.join(args.export, "scrfd_wide.onnx"), options,
                               providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, 3, 640, 640)).astype(np.float32)
    timed("scrfd-style 640x640", args.runs, lambda: det.run(None, {"input.1": x}))


if __name__ == "__main__":
    main()
