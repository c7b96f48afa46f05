"""Tiny random-weight IP-Adapter fixtures for avatar-core/tests/ip_adapter.rs.

Builds, in the official file formats, on the tiny SD1.5 and SDXL pipelines of
avatar-core/tests/fixtures/diffusion:
- a tiny CLIP image encoder (transformers `CLIPVisionModelWithProjection`, `image_encoder/`);
- IP-Adapter (`ImageProjection`, 4 tokens) as flat `.safetensors` (`image_proj.*`, `ip_adapter.*`);
- IP-Adapter Plus (`Resampler`: latents, proj_in, proj_out, norm_out, layers.N.0.{norm1,norm2,to_q,
  to_kv,to_out}, layers.N.1.{0,1,3}) as a pickled nested dict `.bin`;
- IP-Adapter Full-Face (`proj.0`, `proj.2`, `proj.3`) `.bin`;
- IP-Adapter-FaceID (`MLPProjModel`: proj.0, proj.2, norm) with its LoRA
  (`{i}.to_{q,k,v,out}_lora.{down,up}.weight` in every attention processor) `.bin`;
- an SDXL IP-Adapter (`.safetensors`).
Each is loaded with diffusers' own `load_ip_adapter(..., local_files_only=True,
low_cpu_mem_usage=False)` and run through the pipeline (DDIM, 2 steps, CFG 7.5, explicit latents),
recording the encoder outputs, the projected image tokens and the final images.

    /work/venv-ref/bin/python tools/reference/face_adapters/make_ip_adapter_fixtures.py
(torch 2.15.0, diffusers 0.42.1, transformers 5.23.0, peft 0.18.0)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DIFF = os.path.join(ROOT, "avatar-core/tests/fixtures/diffusion")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "avatar-core/tests/fixtures/ip_adapter")
PROMPT = "a portrait of a smiling woman"
NEGATIVE = "blurry"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# diffusers' set_ip_adapter_scale dicts (tiny UNets: SD1.5 attention in down block 0, mid and up
# block 1 (2 attentions); SDXL in down block 1, mid and up block 0 (2 attentions x 2 layers)).
BLOCK_SCALES = {"down": {"block_0": 0.3}, "mid": 0.6, "up": {"block_1": [1.0, 0.0]}}
SDXL_BLOCK_SCALES = {"up": {"block_0": [0.0, 1.2]}}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, scale=1.0):
    return torch.randn(*shape, generator=gen(seed)) * scale


def save_st(path, tensors, info=None):
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path,
              metadata={"info": json.dumps(info or {})})


def attn2_sizes(unet):
    """(processor name, hidden size, context dim) of every attention processor in diffusers' order."""
    out = []
    cfg = unet.config
    for name in unet.attn_processors.keys():
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = cfg.block_out_channels[int(name[len("down_blocks.")])]
        context = hidden if name.endswith("attn1.processor") else cfg.cross_attention_dim
        out.append((name, hidden, context))
    return out


def ip_layers(unet, seed, lora_rank=None):
    sd = {}
    for i, (name, hidden, context) in enumerate(attn2_sizes(unet)):
        if i % 2 == 1:
            sd[f"{i}.to_k_ip.weight"] = randn((hidden, unet.config.cross_attention_dim), seed + i, 0.3)
            sd[f"{i}.to_v_ip.weight"] = randn((hidden, unet.config.cross_attention_dim), seed + 100 + i, 0.3)
        if lora_rank:
            for j, proj in enumerate(("to_q", "to_k", "to_v", "to_out")):
                fan_in = context if proj in ("to_k", "to_v") else hidden
                sd[f"{i}.{proj}_lora.down.weight"] = randn((lora_rank, fan_in), seed + 1000 + 10 * i + j, 0.3)
                sd[f"{i}.{proj}_lora.up.weight"] = randn((hidden, lora_rank), seed + 2000 + 10 * i + j, 0.3)
    return sd


def basic_proj(cross, embed, seed):
    return {"proj.weight": randn((4 * cross, embed), seed, 0.2), "proj.bias": randn((4 * cross,), seed + 1, 0.1),
            "norm.weight": 1 + randn((cross,), seed + 2, 0.1), "norm.bias": randn((cross,), seed + 3, 0.1)}


def perceiver_layers(sd, prefix, width, seed, depth=4, heads=1, stride=10, ff_out_offset=500):
    """Adds a Resampler's `{prefix}layers.N.{0,1}.*` tensors (original IP-Adapter layout) to `sd`."""
    inner = heads * 64
    for n in range(depth):
        s = seed + stride * (n + 1)
        p = f"{prefix}layers.{n}."
        for norm, k in (("0.norm1", 0), ("0.norm2", 1), ("1.0", 2)):
            sd[p + norm + ".weight"] = 1 + randn((width,), s + k, 0.1)
            sd[p + norm + ".bias"] = randn((width,), s + 3 + k, 0.1)
        sd[p + "0.to_q.weight"] = randn((inner, width), s + 6, 0.2)
        sd[p + "0.to_kv.weight"] = randn((2 * inner, width), s + 7, 0.2)
        sd[p + "0.to_out.weight"] = randn((width, inner), s + 8, 0.2)
        sd[p + "1.1.weight"] = randn((4 * width, width), s + 9, 0.2)
        sd[p + "1.3.weight"] = randn((width, 4 * width), s + ff_out_offset, 0.2)
    return sd


def plus_proj(cross, embed, seed, hidden=24, queries=4, depth=4, heads=1):
    sd = {"latents": randn((1, queries, hidden), seed, hidden ** -0.5),
          "proj_in.weight": randn((hidden, embed), seed + 1, 0.2), "proj_in.bias": randn((hidden,), seed + 2, 0.1),
          "proj_out.weight": randn((cross, hidden), seed + 3, 0.2), "proj_out.bias": randn((cross,), seed + 4, 0.1),
          "norm_out.weight": 1 + randn((cross,), seed + 5, 0.1), "norm_out.bias": randn((cross,), seed + 6, 0.1)}
    return perceiver_layers(sd, "", hidden, seed, depth, heads)


def full_proj(cross, embed, seed):
    return {"proj.0.weight": randn((embed, embed), seed, 0.2), "proj.0.bias": randn((embed,), seed + 1, 0.1),
            "proj.2.weight": randn((cross, embed), seed + 2, 0.2), "proj.2.bias": randn((cross,), seed + 3, 0.1),
            "proj.3.weight": 1 + randn((cross,), seed + 4, 0.1), "proj.3.bias": randn((cross,), seed + 5, 0.1)}


def faceid_proj(cross, id_dim, seed, tokens=4, mult=2):
    return {"proj.0.weight": randn((id_dim * mult, id_dim), seed, 0.2), "proj.0.bias": randn((id_dim * mult,), seed + 1, 0.1),
            "proj.2.weight": randn((cross * tokens, id_dim * mult), seed + 2, 0.2),
            "proj.2.bias": randn((cross * tokens,), seed + 3, 0.1),
            "norm.weight": 1 + randn((cross,), seed + 4, 0.1), "norm.bias": randn((cross,), seed + 5, 0.1)}


def save_adapter(path, image_proj, ip_adapter):
    if path.endswith(".safetensors"):
        flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v for k, v in ip_adapter.items()})
        save_file({k: v.contiguous() for k, v in flat.items()}, path)
    else:
        torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)


def make_encoder(folder):
    torch.manual_seed(7001)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return model


def load_pipe(cls, folder):
    pipe = cls.from_pretrained(folder, local_files_only=True, safety_checker=None, requires_safety_checker=False) \
        if cls is StableDiffusionPipeline else cls.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def run(pipe, latents, **kw):
    captured = {}
    proj = pipe.unet.encoder_hid_proj

    def hook(_m, _inp, out):
        captured.setdefault("tokens", [t.detach().clone() for t in out])

    h = proj.register_forward_hook(hook)
    try:
        with torch.no_grad():
            image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=2, guidance_scale=7.5,
                         height=16, width=16, latents=latents.clone(), output_type="pt", **kw).images
    finally:
        h.remove()
    return image, captured["tokens"]


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    encoder = make_encoder(os.path.join(OUT, "image_encoder"))
    # A 32x32 reference: the tiny encoder's input size, so the processor's resize and crop are identities.
    rng = np.random.default_rng(7002)
    ref = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    ref[8:24, 8:24] = [220, 180, 150]
    Image.fromarray(ref).save(os.path.join(OUT, "reference.png"))
    processor = CLIPImageProcessor(size=32, crop_size=32)
    pixels = processor(Image.fromarray(ref), return_tensors="pt").pixel_values
    manual = torch.from_numpy(((ref / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)[None].astype(np.float32))
    assert torch.allclose(pixels, manual, atol=1e-5), (pixels - manual).abs().max()
    with torch.no_grad():
        enc = encoder(pixels, output_hidden_states=True)
        enc_zero = encoder(torch.zeros_like(pixels), output_hidden_states=True)
    reference = {"pixel_values": pixels, "image_embeds": enc.image_embeds,
                 "penultimate": enc.hidden_states[-2], "penultimate_zeros": enc_zero.hidden_states[-2]}

    latents = randn((1, 4, 8, 8), 7003)
    reference["latents"] = latents
    face = randn((1, 16), 7004)
    reference["face_embedding"] = face

    sd15 = load_pipe(StableDiffusionPipeline, os.path.join(DIFF, "sd15_tiny"))
    cross = sd15.unet.config.cross_attention_dim
    adapters = {
        "ip_adapter.safetensors": (basic_proj(cross, 16, 7100), ip_layers(sd15.unet, 7200)),
        "ip_adapter_plus.bin": (plus_proj(cross, 32, 7300), ip_layers(sd15.unet, 7400)),
        "ip_adapter_full_face.bin": (full_proj(cross, 32, 7500), ip_layers(sd15.unet, 7600)),
        "ip_adapter_faceid.bin": (faceid_proj(cross, 16, 7700), ip_layers(sd15.unet, 7800, lora_rank=4)),
    }
    for name, (proj, layers) in adapters.items():
        save_adapter(os.path.join(OUT, name), proj, layers)

    def fresh():
        pipe = load_pipe(StableDiffusionPipeline, os.path.join(DIFF, "sd15_tiny"))
        pipe.image_encoder = None
        pipe.feature_extractor = None
        return pipe

    ref_image = Image.fromarray(ref)
    for name, scale, key in (("ip_adapter.safetensors", 0.7, "basic"), ("ip_adapter_plus.bin", 1.0, "plus"),
                             ("ip_adapter_full_face.bin", 0.6, "full_face")):
        pipe = fresh()
        pipe.load_ip_adapter(OUT, subfolder="", weight_name=name, image_encoder_folder="image_encoder",
                             local_files_only=True, low_cpu_mem_usage=False)
        pipe.set_ip_adapter_scale(scale)
        image, tokens = run(pipe, latents, ip_adapter_image=ref_image)
        reference[f"{key}_tokens"] = tokens[0][:, 0]
        reference[f"{key}_image"] = image
    # FaceID: the face embedding is passed directly (negative = zeros), its LoRA needs peft.
    pipe = fresh()
    pipe.load_ip_adapter(OUT, subfolder="", weight_name="ip_adapter_faceid.bin", image_encoder_folder=None,
                         local_files_only=True, low_cpu_mem_usage=False)
    assert "faceid_0" in pipe.unet.peft_config, "FaceID LoRA not applied (peft missing?)"
    pipe.set_ip_adapter_scale(0.8)
    # diffusers takes the embedding as given: pass insightface's L2-normalised one, as FaceID's docs do.
    normed = face / face.norm(dim=-1, keepdim=True)
    embeds = torch.cat([torch.zeros_like(normed), normed])[:, None]  # [2, 1, 16]
    image, tokens = run(pipe, latents, ip_adapter_image_embeds=[embeds])
    reference["faceid_tokens"] = tokens[0][:, 0]
    reference["faceid_image"] = image
    # Two adapters at once, each with its own scale.
    pipe = fresh()
    pipe.load_ip_adapter(OUT, subfolder=["", ""], weight_name=["ip_adapter.safetensors", "ip_adapter_plus.bin"],
                         image_encoder_folder="image_encoder", local_files_only=True, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale([0.5, 0.8])
    image, _ = run(pipe, latents, ip_adapter_image=[ref_image, ref_image])
    reference["multi_image"] = image
    # Per-block scales (InstantStyle's dict form); blocks not named get 0.
    pipe = fresh()
    pipe.load_ip_adapter(OUT, subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder="image_encoder",
                         local_files_only=True, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(BLOCK_SCALES)
    image, _ = run(pipe, latents, ip_adapter_image=ref_image)
    reference["blocks_image"] = image

    # SDXL: the basic adapter with SDXL's context width.
    sdxl = load_pipe(StableDiffusionXLPipeline, os.path.join(DIFF, "sdxl_tiny"))
    xcross = sdxl.unet.config.cross_attention_dim
    save_adapter(os.path.join(OUT, "ip_adapter_sdxl.safetensors"), basic_proj(xcross, 16, 7900),
                 ip_layers(sdxl.unet, 8000))
    sdxl.load_ip_adapter(OUT, subfolder="", weight_name="ip_adapter_sdxl.safetensors",
                         image_encoder_folder="image_encoder", local_files_only=True, low_cpu_mem_usage=False)
    sdxl.set_ip_adapter_scale(0.9)
    image, tokens = run(sdxl, latents, ip_adapter_image=ref_image)
    reference["sdxl_tokens"] = tokens[0][:, 0]
    reference["sdxl_image"] = image
    sdxl.set_ip_adapter_scale(SDXL_BLOCK_SCALES)
    image, _ = run(sdxl, latents, ip_adapter_image=ref_image)
    reference["sdxl_blocks_image"] = image

    save_st(os.path.join(OUT, "reference.safetensors"), reference,
            {"prompt": PROMPT, "negative_prompt": NEGATIVE, "scheduler": "DDIM from the folder's config",
             "steps": 2, "guidance_scale": 7.5, "size": 16,
             "scales": {"basic": 0.7, "plus": 1.0, "full_face": 0.6, "faceid": 0.8, "multi": [0.5, 0.8], "sdxl": 0.9,
                        "blocks": BLOCK_SCALES, "sdxl_blocks": SDXL_BLOCK_SCALES}})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
