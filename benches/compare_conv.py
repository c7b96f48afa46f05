#!/usr/bin/env python3
"""Side-by-side: the discriminator's strided convolutions (k4, stride 2, pad 1, batch 32) in
PyTorch and in burn flex, one operation at a time (forward, input gradient, weight gradient)
and under autodiff (forward, then both gradients), and the generator's stride-2 transposed
convolutions; ours both as burn computes them and through `avatar_core::gemm_conv` (im2col +
gemm, a few images at a time, for the forward pass and the weight gradient; the transposed
convolutions are flex's own). Then the stride-1 3x3 convolutions of Stable Diffusion 1.5's UNet
and VAE decoder (forward) and of the VQGAN decoder (forward and under autodiff).

Times PyTorch (eager, `torch.nn.grad` for the two gradients), then runs
`cargo bench -p avatar-core --bench conv_layers` and prints a Markdown table with the ratios
(`benches/conv_layers.rs`). Pause other jobs first.

    /work/venv-ref/bin/python benches/compare_conv.py [--threads 2] [--part dcgan|3x3] [--skip-rust]
"""
import argparse
import os
import subprocess
import sys

from compare_keras import ROOT, criterion_median_ms, median_ms, speed_verdict  # same folder

LAYERS = [(4, 32, 128), (32, 64, 64), (64, 128, 32), (128, 256, 16)]  # as in conv_layers.rs
TRANSPOSED_LAYERS = [(256, 128, 8), (128, 64, 16), (64, 32, 32), (32, 3, 64)]  # the generator's
BATCH = 32
# The stride-1 3x3 convolutions of SD 1.5's UNet (batch 2) and VAE decoder (batch 1), forward
# only, then the VQGAN decoder's at 256 px, forward and under autodiff: (batch, channels, size).
DIFFUSION_LAYERS = [(2, 320, 32), (2, 640, 16), (2, 1280, 8), (2, 1280, 4),
                    (1, 512, 64), (1, 512, 128), (1, 256, 256), (1, 128, 512)]
VQGAN_LAYERS = [(1, 512, 16), (1, 256, 64), (1, 128, 256)]
OPS = ("forward", "input_grad", "weight_grad", "forward_backward")


def time_torch(runs: int, part: str) -> dict[tuple[str, str], float]:
    """Median ms per (operation, layer label)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.grad import conv2d_input, conv2d_weight

    medians = {}
    for cin, cout, size in LAYERS if part != "3x3" else []:
        label = f"{cin}-{cout}@{size}"
        x = torch.randn(BATCH, cin, size, size)
        w = torch.randn(cout, cin, 4, 4)
        g = torch.randn(BATCH, cout, size // 2, size // 2)
        calls = {
            "forward": lambda: F.conv2d(x, w, stride=2, padding=1),
            "input_grad": lambda: conv2d_input(x.shape, w, g, stride=2, padding=1),
            "weight_grad": lambda: conv2d_weight(x, w.shape, g, stride=2, padding=1),
        }
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        calls_grad = {"forward_backward": lambda: torch.autograd.grad(F.conv2d(xg, wg, stride=2, padding=1), (xg, wg), g)}
        with torch.no_grad():
            for op, call in calls.items():
                medians[(op, label)] = median_ms(call, runs, warmup=2)
        for op, call in calls_grad.items():
            medians[(op, label)] = median_ms(call, runs, warmup=2)
    for cin, cout, size in TRANSPOSED_LAYERS if part != "3x3" else []:
        x = torch.randn(BATCH, cin, size, size)
        w = torch.randn(cin, cout, 4, 4)
        with torch.no_grad():
            medians[("transposed", f"{cin}-{cout}@{size}")] = median_ms(
                lambda: F.conv_transpose2d(x, w, stride=2, padding=1), runs, warmup=2)
    for layers, grad in ((DIFFUSION_LAYERS, False), (VQGAN_LAYERS, True)) if part != "dcgan" else []:
        for batch, ch, size in layers:
            label = f"{batch}x{ch}@{size}"
            x, w, b = torch.randn(batch, ch, size, size), torch.randn(ch, ch, 3, 3), torch.randn(ch)
            with torch.no_grad():
                medians[("conv3x3_forward", label)] = median_ms(
                    lambda: F.conv2d(x, w, b, padding=1), runs, warmup=2)
            if grad:
                g = torch.randn(batch, ch, size, size)
                xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
                medians[("conv3x3_forward_backward", label)] = median_ms(
                    lambda: torch.autograd.grad(F.conv2d(xg, wg, padding=1), (xg, wg), g), runs, warmup=2)
    return medians


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads (ours: RAYON_NUM_THREADS)")
    ap.add_argument("--runs", type=int, default=15, help="timed PyTorch runs per case")
    ap.add_argument("--part", choices=("all", "dcgan", "3x3"), default="all",
                    help="the DCGAN layers, the 3x3 diffusion/VQGAN layers, or both")
    ap.add_argument("--skip-rust", action="store_true", help="reuse the last criterion results")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    theirs = time_torch(a.runs, a.part)
    if not a.skip_rust:
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        only = {"all": [], "dcgan": ["--", "discriminator_conv|generator_conv"], "3x3": ["--", "conv3x3"]}
        subprocess.run(["cargo", "bench", "-p", "avatar-core", "--bench", "conv_layers", *only[a.part]],
                       check=True, cwd=ROOT, env=env)
    header = ["| operation | PyTorch (ms) | burn flex (ms) | flex vs PyTorch "
              "| ours, gemm_conv (ms) | gemm_conv vs PyTorch |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = ["| layer (batch 32) " + header[0], header[1]] if a.part != "3x3" else []
    for cin, cout, size in LAYERS if a.part != "3x3" else []:
        label = f"{cin}-{cout}@{size}"
        for op in OPS:
            t = theirs[(op, label)]
            ours = criterion_median_ms("discriminator_conv", op, label)
            verdict = speed_verdict(t, ours)
            gemm, gemm_verdict = "", ""
            if op != "input_grad":  # gemm_conv takes flex's own input gradient
                g = criterion_median_ms("discriminator_conv", "gemm_" + op, label)
                gemm, gemm_verdict = f"{g:.1f}", speed_verdict(t, g)
            rows.append(f"| {label} | {op} | {t:.1f} | {ours:.1f} | {verdict} | {gemm} | {gemm_verdict} |")
    for cin, cout, size in TRANSPOSED_LAYERS if a.part != "3x3" else []:
        label = f"{cin}-{cout}@{size}"
        t = theirs[("transposed", label)]
        ours = criterion_median_ms("generator_conv_transpose", "forward", label)
        rows.append(f"| {label} (generator) | conv_transpose2d | {t:.1f} | {ours:.1f} | "
                    f"{speed_verdict(t, ours)} | (flex's) | |")
    if a.part != "dcgan":
        rows += ["", "| layer (3x3, stride 1) " + header[0], header[1]]
    parts_3x3 = ((DIFFUSION_LAYERS, ("forward",)), (VQGAN_LAYERS, ("forward", "forward_backward")))
    for layers, ops in parts_3x3 if a.part != "dcgan" else ():
        for batch, ch, size in layers:
            label = f"{batch}x{ch}@{size}"
            for op in ops:
                t = theirs[("conv3x3_" + op, label)]
                ours = criterion_median_ms("conv3x3", op, label)
                g = criterion_median_ms("conv3x3", "gemm_" + op, label)
                rows.append(f"| {ch}-{ch}@{size}, batch {batch} | {op} | {t:.1f} | {ours:.1f} | "
                            f"{speed_verdict(t, ours)} | {g:.1f} | {speed_verdict(t, g)} |")
    print(f"\nPyTorch {torch.__version__} eager, {a.threads} threads; ours: burn 0.22.1 flex (release), "
          f"RAYON_NUM_THREADS={a.threads}. Medians.\n")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
