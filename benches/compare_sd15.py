#!/usr/bin/env python3
"""PyTorch/diffusers side of benches/sd15_shapes.rs: Stable Diffusion 1.5 shapes with random
weights (no download), median of --runs after a warm-up, peak RSS of the process.

    /work/venv-diffusers/bin/python benches/compare_sd15.py unet64 --runs 3   # one shape per process
Versions: tools/reference/diffusion/requirements.txt (torch 2.15 CPU, diffusers 0.42.1).
"""
import argparse
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

UNET = dict(in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2, attention_head_dim=8, cross_attention_dim=768, sample_size=64)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
CLIP = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, hidden_act="quick_gelu")


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(name, runs, fn):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(f"{name:<28} median {statistics.median(times):>8.3f} s  (runs {runs}, min {min(times):.3f} s)"
          f"  peak RSS {peak_rss_mib():.0f} MiB", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="+", choices=["unet64", "unet32", "vae", "clip"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.inference_mode():
        for what in args.what:
            if what.startswith("unet"):
                side = int(what[4:])
                unet = UNet2DConditionModel(**UNET).eval()
                sample = torch.randn(2, 4, side, side)
                context = torch.randn(2, 77, 768)
                t = torch.tensor([500.0, 500.0])
                timed(f"unet step b2 {side}x{side}", args.runs, lambda: unet(sample, t, context).sample)
            elif what == "vae":
                vae = AutoencoderKL(**VAE).eval()
                z = torch.randn(1, 4, 64, 64)
                timed("vae decode 64x64 -> 512px", args.runs, lambda: vae.decode(z).sample)
            else:
                clip = CLIPTextModel(CLIP).eval()
                ids = torch.arange(154).reshape(2, 77)
                timed("clip-l encode b2 x 77", args.runs, lambda: clip(ids).last_hidden_state)


if __name__ == "__main__":
    main()
