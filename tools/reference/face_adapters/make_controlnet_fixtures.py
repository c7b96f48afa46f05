"""Tiny random-weight ControlNet / InstantID fixtures for avatar-core/tests/controlnet.rs.

On the tiny SD1.5 and SDXL pipelines of avatar-core/tests/fixtures/diffusion, builds diffusers
`ControlNetModel`s with `ControlNetModel.from_unet` (conditioning embedding widths (4, 8)), with
every zero convolution randomised so that the control contributes, saved as diffusers folders; runs
them through diffusers' ControlNet pipelines (DDIM, 2 steps, CFG 7.5, explicit latents):
- SD1.5 with one ControlNet (scale 0.8);
- SD1.5 with two (MultiControlNet, scales 0.5 / 0.9, the second stopping after half the steps:
  `control_guidance_end` 0.5);
- SD1.5 with a ControlNet and the IP-Adapter of make_ip_adapter_fixtures.py together;
- SDXL with one ControlNet;
- InstantID's wiring on SDXL: a Resampler face adapter (InstantID's `ip-adapter.bin` layout) on the
  raw face embedding (negative: zeros), its tokens given to the UNet's decoupled cross-attention
  (adapter strength 0.8) *and*, instead of the prompt, to the IdentityNet ControlNet (strength
  0.8) whose conditioning image is a keypoint image - as InstantID's community pipeline does
  (`controlnet_prompt_embeds = prompt_image_emb`); diffusers has no InstantID pipeline, so the
  standard SDXL ControlNet pipeline is run with the ControlNet's `encoder_hidden_states` replaced.
Also one ControlNet call's residuals for the component test.

    /work/venv-ref/bin/python tools/reference/face_adapters/make_controlnet_fixtures.py
(run make_ip_adapter_fixtures.py first; torch 2.15.0, diffusers 0.42.1, transformers 5.23.0)
"""
import json
import os
import shutil
import sys

import numpy as np
import torch
from diffusers import (ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline,
                       StableDiffusionXLControlNetPipeline, UNet2DConditionModel)
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_ip_adapter_fixtures import plus_proj, ip_layers, save_adapter  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DIFF = os.path.join(ROOT, "avatar-core/tests/fixtures/diffusion")
IPA = os.path.join(ROOT, "avatar-core/tests/fixtures/ip_adapter")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "avatar-core/tests/fixtures/controlnet")
PROMPT = "a portrait of a smiling woman"
NEGATIVE = "blurry"


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_controlnet(unet, seed, folder):
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    with torch.no_grad():
        for i, (name, p) in enumerate(net.named_parameters()):
            # The zero convolutions (and the conditioning embedding) get random weights.
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.copy_(torch.randn(p.shape, generator=gen(seed + i)) * 0.3)
    net.save_pretrained(folder, safe_serialization=True)
    return ControlNetModel.from_pretrained(folder).eval()


def control_image(seed, size=16):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[rng.random((size, size)) > 0.7] = 255
    img[4:12, 6:8] = [255, 0, 0]
    return Image.fromarray(img)


def configure(pipe):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.float32)


def run(pipe, latents, **kw):
    with torch.no_grad():
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=2, guidance_scale=7.5,
                    height=16, width=16, latents=latents.clone(), output_type="pt", **kw).images


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    ref = {}
    latents = torch.randn(1, 4, 8, 8, generator=gen(9001))
    ref["latents"] = latents
    images = [control_image(9002), control_image(9003)]
    for i, image in enumerate(images):
        image.save(os.path.join(OUT, f"control_{i}.png"))

    def sd15(controlnet):
        return configure(StableDiffusionControlNetPipeline.from_pretrained(
            os.path.join(DIFF, "sd15_tiny"), controlnet=controlnet, safety_checker=None,
            requires_safety_checker=False, local_files_only=True))

    unet = UNet2DConditionModel.from_pretrained(os.path.join(DIFF, "sd15_tiny/unet"))
    cn0 = make_controlnet(unet, 9100, os.path.join(OUT, "sd15_controlnet_0"))
    cn1 = make_controlnet(unet, 9200, os.path.join(OUT, "sd15_controlnet_1"))

    # Component: one ControlNet call.
    sample = torch.randn(2, 4, 8, 8, generator=gen(9004))
    context = torch.randn(2, 77, 32, generator=gen(9005))
    cond = torch.from_numpy(np.asarray(images[0], np.float32) / 255.0).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    with torch.no_grad():
        down, mid = cn0(sample, torch.tensor([501.0, 501.0]), encoder_hidden_states=context, controlnet_cond=cond,
                        conditioning_scale=0.7, return_dict=False)
    ref.update({"component_sample": sample, "component_context": context, "component_cond": cond,
                "component_mid": mid})
    for i, d in enumerate(down):
        ref[f"component_down_{i}"] = d

    pipe = sd15(cn0)
    ref["single_image"] = run(pipe, latents, image=images[0], controlnet_conditioning_scale=0.8)
    pipe = sd15([cn0, cn1])
    ref["multi_image"] = run(pipe, latents, image=images, controlnet_conditioning_scale=[0.5, 0.9],
                             control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 0.5])
    pipe = sd15(cn0)
    pipe.load_ip_adapter(IPA, subfolder="", weight_name="ip_adapter.safetensors", image_encoder_folder="image_encoder",
                         local_files_only=True, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(0.7)
    ref["with_ip_adapter_image"] = run(pipe, latents, image=images[0], controlnet_conditioning_scale=0.8,
                                       ip_adapter_image=Image.open(os.path.join(IPA, "reference.png")))

    # SDXL.
    xl_unet = UNet2DConditionModel.from_pretrained(os.path.join(DIFF, "sdxl_tiny/unet"))
    xcn = make_controlnet(xl_unet, 9300, os.path.join(OUT, "sdxl_controlnet"))

    def sdxl(controlnet):
        return configure(StableDiffusionXLControlNetPipeline.from_pretrained(
            os.path.join(DIFF, "sdxl_tiny"), controlnet=controlnet, local_files_only=True))

    pipe = sdxl(xcn)
    ref["sdxl_image"] = run(pipe, latents, image=images[1], controlnet_conditioning_scale=0.6)

    # InstantID's wiring: the face adapter (Resampler on a 16-d face embedding, 4 queries here
    # instead of 16) and an IdentityNet attending to its tokens.
    identitynet = make_controlnet(xl_unet, 9400, os.path.join(OUT, "sdxl_identitynet"))
    cross = xl_unet.config.cross_attention_dim
    save_adapter(os.path.join(OUT, "instantid_ip_adapter.bin"), plus_proj(cross, 16, 9500),
                 ip_layers(xl_unet, 9600))
    pipe = sdxl(identitynet)
    pipe.load_ip_adapter(OUT, subfolder="", weight_name="instantid_ip_adapter.bin", image_encoder_folder=None,
                         local_files_only=True, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(0.8)
    face = torch.randn(1, 16, generator=gen(9700)) * 3.0  # a raw (unnormalised) embedding
    embeds = torch.cat([torch.zeros_like(face), face])[:, None, None]  # [2, 1 image, 1 token, 16]
    with torch.no_grad():
        face_tokens = pipe.unet.encoder_hid_proj([embeds])[0][:, 0]  # [2, 4, 48]
    original = pipe.controlnet.forward

    def identitynet_forward(*args, **kwargs):
        kwargs["encoder_hidden_states"] = face_tokens
        return original(*args, **kwargs)

    pipe.controlnet.forward = identitynet_forward
    kps = control_image(9800)
    kps.save(os.path.join(OUT, "keypoints.png"))
    ref["face_embedding"] = face
    ref["instantid_tokens"] = face_tokens
    ref["instantid_image"] = run(pipe, latents, image=kps, controlnet_conditioning_scale=0.8,
                                 ip_adapter_image_embeds=[embeds])

    save_file({k: v.detach().contiguous() for k, v in ref.items()}, os.path.join(OUT, "reference.safetensors"),
              metadata={"info": json.dumps({"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": 2,
                                            "guidance_scale": 7.5, "scheduler": "DDIM", "size": 16})})
    print("wrote", OUT)


if __name__ == "__main__":
    main()
