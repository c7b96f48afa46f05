#!/usr/bin/env python3
"""PyTorch side of benches/vqgan_clip_shapes.rs: one VQGAN+CLIP iteration with random weights
(taming's vqgan_imagenet_f16_16384 shapes + open_clip ViT-B-32-quickgelu, no download), cutn 32,
no augmentations; median of --runs after a warm-up, peak RSS of the process.

    /work/venv-diffusers/bin/python benches/compare_vqgan_clip.py 256 --runs 3   # one size per process
Versions: tools/reference/vqgan_clip/requirements.txt (torch 2.15 CPU, taming 0.0.6, open_clip 3.3).
The iteration is Crowson's loop exactly as tools/reference/vqgan_clip/make_fixtures.py defines it.
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "reference", "vqgan_clip"))
import make_fixtures as ref  # noqa: E402  (the shim for taming is applied on import)
import open_clip  # noqa: E402
from taming.models.vqgan import VQModel  # noqa: E402

DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("size", type=int)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    vq = VQModel(ddconfig=DDCONFIG, lossconfig={"target": "taming.modules.losses.vqperceptual.DummyLoss"},
                 n_embed=16384, embed_dim=256).eval().requires_grad_(False)
    clip = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        target = clip.encode_text(tokenizer(["a cartoon avatar of a red fox"]))
    codebook = vq.quantize.embedding.weight
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    side, toks = args.size, args.size // 16
    idx = torch.randint(0, 16384, (toks * toks,))
    z = (F.one_hot(idx, 16384).float() @ codebook).view(1, toks, toks, 256).permute(0, 3, 1, 2)
    z = z.contiguous().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    g = torch.Generator().manual_seed(1)

    def iteration():
        opt.zero_grad()
        boxes = ref.boxes_for(side, 224, 32, g)
        z_q = ref.vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        synth = ref.ClampWithGrad.apply(vq.decode(z_q).add(1).div(2), 0.0, 1.0)
        embeds = clip.encode_image(ref.clip_normalize(ref.make_cutouts(synth, boxes, 224)))
        loss = ref.spherical_loss(embeds, target, 1.0, float("-inf"))
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))

    iteration()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    print(f"{'iteration ' + str(side) + 'px cutn 32':<28} median {statistics.median(times):>8.3f} s  "
          f"(runs {args.runs}, min {min(times):.3f} s)  peak RSS {peak_rss_mib():.0f} MiB  "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)


if __name__ == "__main__":
    main()
