#!/usr/bin/env python3
"""Reference fixtures for the Rust (burn) VQGAN+CLIP port, made with taming-transformers and open_clip.

Builds a TINY random-weight taming `VQModel` and a tiny OpenAI-style open_clip `CLIP` (QuickGELU)
from explicit configs (nothing is downloaded), saves them in their official formats (taming's
Lightning `.ckpt` with `state_dict` inside, including training-loss keys that loaders must ignore;
open_clip's state dict as `.safetensors`; the PyTorch pickle path is the same reader as the `.ckpt`), and records:

- VQGAN: encoder output, `quant_conv` output, quantised latent + indices, decoder output;
- CLIP: image and text embeddings (`encode_image`, `encode_text`) for fixed inputs;
- the VQGAN+CLIP loss and its gradient w.r.t. z for fixed cutouts (text prompts with weights and a
  stop, a negative weight, an image prompt, `init_weight`), for a 64 px image (cutouts downscaled)
  and a 16 px one (cutouts upscaled);
- a 3-step Adam trajectory of z (lr 0.1, clamped to the codebook range after each step).

    nice -n 10 /work/venv-diffusers/bin/python tools/reference/vqgan_clip/make_fixtures.py [--out DIR]

The loss follows Katherine Crowson's VQGAN+CLIP notebook (as in nerdyrodent/VQGAN-CLIP), with the
cutout resampling our port documents: adaptive average pooling when a cutout is larger than CLIP's
input, bilinear (half-pixel) interpolation when smaller. Augmentations are off (fixed cutouts).
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# taming 0.0.6 imports a module that pytorch_lightning 2.x renamed.
import pytorch_lightning  # noqa: E402
import pytorch_lightning.utilities.rank_zero as _rank_zero  # noqa: E402

sys.modules["pytorch_lightning.utilities.distributed"] = _rank_zero
from taming.models.vqgan import VQModel  # noqa: E402
import open_clip  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "avatar-core", "tests", "fixtures", "vqgan_clip")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VQGAN_CONFIG = {
    "embed_dim": 8,
    "n_embed": 64,
    "ddconfig": {
        "double_z": False,
        "z_channels": 8,
        "resolution": 32,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [16],
        "dropout": 0.0,
    },
}

CLIP_CONFIG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Perturbs every parameter so that swapped or untransposed weights cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Straight-through nearest-codebook quantisation of `[.., C]` vectors."""
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    indices = d.argmin(-1)
    x_q = F.one_hot(indices, codebook.shape[0]).to(d.dtype) @ codebook
    return x + (x_q - x).detach()


class ClampWithGrad(torch.autograd.Function):
    """Crowson's clamp: gradients pass except those that push further out of range."""

    @staticmethod
    def forward(ctx, input, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(input)
        return input.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad_in):
        (input,) = ctx.saved_tensors
        return grad_in * (grad_in * (input - input.clamp(ctx.lo, ctx.hi)) >= 0), None, None


def resize_cutout(cutout: torch.Tensor, cut: int) -> torch.Tensor:
    if cutout.shape[-1] >= cut:
        return F.adaptive_avg_pool2d(cutout, cut)
    return F.interpolate(cutout, size=(cut, cut), mode="bilinear", align_corners=False)


def make_cutouts(image: torch.Tensor, boxes, cut: int) -> torch.Tensor:
    return torch.cat(
        [resize_cutout(image[:, :, y : y + s, x : x + s], cut) for (s, x, y) in boxes], dim=0
    )


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def spherical_loss(image_embeds, prompt_embeds, weight, stop):
    """Crowson's `Prompt.forward`: weighted squared great-circle distance with a stop."""
    input_normed = F.normalize(image_embeds.unsqueeze(1), dim=2)
    embed_normed = F.normalize(prompt_embeds.unsqueeze(0), dim=2)
    dists = input_normed.sub(embed_normed).norm(dim=2).div(2).arcsin().pow(2).mul(2)
    dists = dists * np.sign(weight)
    stopped = torch.maximum(dists, torch.tensor(stop))
    return abs(weight) * (dists.detach() + stopped - stopped.detach()).mean()


def boxes_for(side: int, cut: int, n: int, g: torch.Generator, cut_pow: float = 1.0):
    """Crowson's cutout sizes and offsets (drawn once here, then fixed)."""
    max_size, min_size = side, min(side, cut)
    boxes = []
    for _ in range(n):
        size = int(torch.rand([], generator=g) ** cut_pow * (max_size - min_size) + min_size)
        ox = int(torch.randint(0, side - size + 1, (), generator=g))
        oy = int(torch.randint(0, side - size + 1, (), generator=g))
        boxes.append((size, ox, oy))
    return boxes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    # ---- models -------------------------------------------------------------------------------
    vq = VQModel(
        ddconfig=VQGAN_CONFIG["ddconfig"],
        lossconfig={"target": "taming.modules.losses.vqperceptual.DummyLoss"},
        n_embed=VQGAN_CONFIG["n_embed"],
        embed_dim=VQGAN_CONFIG["embed_dim"],
    ).eval()
    randomise(vq, 1)
    with torch.no_grad():  # a codebook with a useful spread (taming draws it in +-1/n_embed)
        vq.quantize.embedding.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(2))
    state = dict(vq.state_dict())
    # Lightning checkpoints carry the discriminator of the training loss: loaders must skip it.
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["loss.logvar"] = torch.zeros(())
    torch.save(
        {"state_dict": state, "global_step": 0, "epoch": 0},
        os.path.join(args.out, "vqgan.ckpt"),
    )
    with open(os.path.join(args.out, "vqgan.yaml"), "w") as f:
        dd = VQGAN_CONFIG["ddconfig"]
        f.write(
            "model:\n"
            "  base_learning_rate: 4.5e-06\n"
            "  target: taming.models.vqgan.VQModel\n"
            "  params:\n"
            f"    embed_dim: {VQGAN_CONFIG['embed_dim']}\n"
            f"    n_embed: {VQGAN_CONFIG['n_embed']}\n"
            "    ddconfig:\n"
            f"      double_z: {str(dd['double_z'])}\n"
            f"      z_channels: {dd['z_channels']}\n"
            f"      resolution: {dd['resolution']}\n"
            f"      in_channels: {dd['in_channels']}\n"
            f"      out_ch: {dd['out_ch']}\n"
            f"      ch: {dd['ch']}\n"
            f"      ch_mult:\n" + "".join(f"      - {m}\n" for m in dd["ch_mult"]) +
            f"      num_res_blocks: {dd['num_res_blocks']}\n"
            f"      attn_resolutions:\n" + "".join(f"      - {r}\n" for r in dd["attn_resolutions"]) +
            f"      dropout: {dd['dropout']}\n"
            "    lossconfig:\n"
            "      target: taming.modules.losses.vqperceptual.DummyLoss\n"
        )

    clip = CLIP(
        embed_dim=CLIP_CONFIG["embed_dim"],
        vision_cfg=CLIPVisionCfg(**CLIP_CONFIG["vision_cfg"]),
        text_cfg=CLIPTextCfg(**CLIP_CONFIG["text_cfg"]),
        quick_gelu=True,
    ).eval()
    randomise(clip, 3)
    with torch.no_grad():  # 49408 x 16 embedding stored in f16: round it so both sides agree
        clip.token_embedding.weight.copy_(clip.token_embedding.weight.half().float())
    clip_state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    clip_state["token_embedding.weight"] = clip_state["token_embedding.weight"].half()
    save_file(clip_state, os.path.join(args.out, "clip.safetensors"))
    import json

    with open(os.path.join(args.out, "clip_config.json"), "w") as f:
        json.dump(CLIP_CONFIG, f, indent=2)

    for p in list(vq.parameters()) + list(clip.parameters()):
        p.requires_grad_(False)

    # ---- components ---------------------------------------------------------------------------
    g = torch.Generator().manual_seed(4)
    out = {}
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    out["vq.image"] = image
    with torch.no_grad():
        h = vq.encoder(image)
        out["vq.encoder"] = h
        hq = vq.quant_conv(h)
        out["vq.quant_conv"] = hq
        z_q, _, (_, _, indices) = vq.quantize(hq)
        out["vq.quantized"] = z_q
        out["vq.indices"] = indices.to(torch.int64).reshape(1, 16, 16)
        z = torch.randn(1, 8, 16, 16, generator=g)
        out["vq.z"] = z
        out["vq.decoded"] = vq.decode(z)

        pixels = torch.rand(2, 3, 32, 32, generator=g)
        out["clip.pixels"] = pixels
        out["clip.image_embeds"] = clip.encode_image(pixels)
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        prompts = ["a cartoon avatar with red hair", "flowering magenta orchids in a rainy-day impressionist"]
        tokens = tokenizer(prompts)
        out["clip.tokens"] = tokens.to(torch.int64)
        out["clip.text_embeds"] = clip.encode_text(tokens)

    # ---- loss, gradient and Adam trajectory ---------------------------------------------------
    codebook = vq.quantize.embedding.weight
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    cut = CLIP_CONFIG["vision_cfg"]["image_size"]

    with torch.no_grad():
        text_embeds = clip.encode_text(tokenizer(["a cartoon avatar", "a photo"]))
        image_prompt = torch.rand(1, 3, 32, 32, generator=g)
        image_prompt_embeds = clip.encode_image(clip_normalize(image_prompt))
    out["loss.prompt_image"] = image_prompt

    for case, tokens_side in (("large", 32), ("small", 8)):
        side = tokens_side * 2
        box_gen = torch.Generator().manual_seed(5 if case == "large" else 6)
        boxes = boxes_for(side, cut, 6, box_gen)
        out[f"{case}.boxes"] = torch.tensor(boxes, dtype=torch.int64)
        idx = torch.randint(0, VQGAN_CONFIG["n_embed"], (tokens_side * tokens_side,), generator=g)
        z0 = (F.one_hot(idx, VQGAN_CONFIG["n_embed"]).float() @ codebook)
        z0 = z0.view(1, tokens_side, tokens_side, 8).permute(0, 3, 1, 2).contiguous()
        z0 = z0 + 0.3 * torch.randn(z0.shape, generator=g)  # off the codebook, so quantising matters
        z0 = z0.clamp(z_min, z_max)
        out[f"{case}.z0"] = z0
        z_orig = z0.clone()

        def losses(z, stop):
            z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
            synth = ClampWithGrad.apply(vq.decode(z_q).add(1).div(2), 0.0, 1.0)
            embeds = clip.encode_image(clip_normalize(make_cutouts(synth, boxes, cut)))
            parts = [
                F.mse_loss(z, z_orig) * 0.5 / 2,  # init_weight 0.5
                spherical_loss(embeds, text_embeds[0:1], 1.0, float("-inf")),
                spherical_loss(embeds, text_embeds[1:2], -0.5, float("-inf")),
                spherical_loss(embeds, image_prompt_embeds, 0.7, stop),
            ]
            return parts, embeds

        # The stop sits between the middle distances to the image prompt: half the cutouts are stopped.
        with torch.no_grad():
            _, embeds = losses(z0, float("-inf"))
            d = (
                F.normalize(embeds.unsqueeze(1), dim=2)
                .sub(F.normalize(image_prompt_embeds.unsqueeze(0), dim=2))
                .norm(dim=2).div(2).arcsin().pow(2).mul(2)
            )
            # Midway between the two middle distances (never on a tie, where torch.maximum splits
            # the gradient); when all cutouts coincide (the small case) every one is stopped.
            ds = d.flatten().sort().values
            mid = len(ds) // 2
            stop = float((ds[mid - 1] + ds[mid]) / 2)
            if float(ds[mid] - ds[mid - 1]) < 1e-6:
                stop = float(ds[mid]) + 1e-3
        out[f"{case}.stop"] = torch.tensor([stop], dtype=torch.float64)

        z = z0.clone().requires_grad_(True)
        parts, _ = losses(z, stop)
        loss = sum(parts)
        loss.backward()
        out[f"{case}.loss_parts"] = torch.stack([p.detach() for p in parts])
        out[f"{case}.grad"] = z.grad.clone()

        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)
        trajectory, trajectory_losses = [], []
        for _ in range(3):
            opt.zero_grad()
            parts, _ = losses(z, stop)
            loss = sum(parts)
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(z.maximum(z_min).minimum(z_max))
            trajectory.append(z.detach().clone())
            trajectory_losses.append(loss.detach())
        out[f"{case}.trajectory"] = torch.stack(trajectory)
        out[f"{case}.trajectory_losses"] = torch.stack(trajectory_losses)

    save_file(
        {k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "reference.safetensors")
    )
    for k, v in sorted(out.items()):
        print(f"{k}: {tuple(v.shape)}")
    print("clip keys:", len(clip_state), "vqgan keys:", len(state))


if __name__ == "__main__":
    main()
