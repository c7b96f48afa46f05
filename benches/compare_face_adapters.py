#!/usr/bin/env python3
"""diffusers side of benches/face_adapter_shapes.rs: one SD1.5 UNet step at batch 2 on a 32x32
latent with random weights, plain, with an IP-Adapter Plus (16 tokens, ViT-H-sized Resampler),
with IP-Adapter-FaceID (4 tokens + rank-128 LoRA through peft), and with one ControlNet; median of
--runs after a warm-up. diffusers recomputes the image projection inside every UNet call, which is
what its pipelines pay per step.

    /work/venv-ref/bin/python benches/compare_face_adapters.py plain plus faceid controlnet --runs 3
(torch 2.15.0, diffusers 0.42.1, peft 0.18.0)
"""
import argparse
import os
import sys

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_sd15 import UNET, timed  # noqa: E402


def rand(*shape):
    return torch.randn(*shape) * 0.02


def ip_layers(unet, lora_rank=None):
    sd = {}
    cfg = unet.config
    for i, name in enumerate(unet.attn_processors.keys()):
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = cfg.block_out_channels[int(name[len("down_blocks.")])]
        context = hidden if name.endswith("attn1.processor") else cfg.cross_attention_dim
        if i % 2 == 1:
            sd[f"{i}.to_k_ip.weight"] = rand(hidden, 768)
            sd[f"{i}.to_v_ip.weight"] = rand(hidden, 768)
        if lora_rank:
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                fan_in = context if proj in ("to_k", "to_v") else hidden
                sd[f"{i}.{proj}_lora.down.weight"] = rand(lora_rank, fan_in)
                sd[f"{i}.{proj}_lora.up.weight"] = rand(hidden, lora_rank)
    return sd


def plus_proj():
    embed, hidden, out = 1280, 768, 768
    sd = {"latents": rand(1, 16, hidden), "proj_in.weight": rand(hidden, embed), "proj_in.bias": rand(hidden),
          "proj_out.weight": rand(out, hidden), "proj_out.bias": rand(out), "norm_out.weight": rand(out),
          "norm_out.bias": rand(out)}
    for n in range(4):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            sd[f"layers.{n}.{norm}.weight"] = rand(hidden)
            sd[f"layers.{n}.{norm}.bias"] = rand(hidden)
        sd[f"layers.{n}.0.to_q.weight"] = rand(768, hidden)
        sd[f"layers.{n}.0.to_kv.weight"] = rand(1536, hidden)
        sd[f"layers.{n}.0.to_out.weight"] = rand(hidden, 768)
        sd[f"layers.{n}.1.1.weight"] = rand(4 * hidden, hidden)
        sd[f"layers.{n}.1.3.weight"] = rand(hidden, 4 * hidden)
    return sd


def faceid_proj():
    return {"proj.0.weight": rand(1024, 512), "proj.0.bias": rand(1024), "proj.2.weight": rand(4 * 768, 1024),
            "proj.2.bias": rand(4 * 768), "norm.weight": rand(768), "norm.bias": rand(768)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="+", choices=["plain", "plus", "faceid", "controlnet"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 32, 32)
    context = torch.randn(2, 77, 768)
    t = torch.tensor([500.0, 500.0])
    with torch.inference_mode():
        for what in args.what:
            unet = UNet2DConditionModel(**UNET).eval()
            if what == "plain":
                timed("unet step b2 32x32", args.runs, lambda: unet(sample, t, context).sample)
            elif what == "plus":
                unet._load_ip_adapter_weights([{"image_proj": plus_proj(), "ip_adapter": ip_layers(unet)}],
                                              low_cpu_mem_usage=False)
                embeds = [torch.randn(2, 1, 257, 1280)]
                timed("+ ip-adapter plus", args.runs,
                      lambda: unet(sample, t, context, added_cond_kwargs={"image_embeds": embeds}).sample)
            elif what == "faceid":
                from diffusers import StableDiffusionPipeline  # noqa: F401  (peft LoRA loading)
                from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
                sd = {"image_proj": faceid_proj(), "ip_adapter": ip_layers(unet, lora_rank=128)}
                unet._load_ip_adapter_weights([sd], low_cpu_mem_usage=False)
                loras = unet._load_ip_adapter_loras([sd])
                state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(loras[0])
                StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, network_alphas=alphas, unet=unet,
                                                                   adapter_name="faceid_0")
                embeds = [torch.randn(2, 1, 1, 512)]
                timed("+ ip-adapter faceid (lora)", args.runs,
                      lambda: unet(sample, t, context, added_cond_kwargs={"image_embeds": embeds}).sample)
            elif what == "controlnet":
                net = ControlNetModel.from_unet(unet).eval()
                cond = torch.rand(2, 3, 256, 256)

                def step():
                    down, mid = net(sample, t, context, controlnet_cond=cond, return_dict=False)
                    return unet(sample, t, context, down_block_additional_residuals=down,
                                mid_block_additional_residual=mid).sample

                timed("+ controlnet", args.runs, step)


if __name__ == "__main__":
    main()
