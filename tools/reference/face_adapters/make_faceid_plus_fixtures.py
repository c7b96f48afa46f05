"""Tiny random-weight IP-Adapter-FaceID-Plus(v2) fixture for avatar-core/tests/ip_adapter.rs.

FaceID-Plus projects the face embedding to 4 tokens (`proj.0`, `proj.2`, `norm`), refines them
with a perceiver over the CLIP image encoder's penultimate hidden states of the face crop
(`perceiver_resampler.*`), and v2 adds the projected face tokens back with weight `s_scale`
(diffusers: `image_projection_layers[0].shortcut = True`, `.shortcut_scale = s_scale`). Its LoRA sits
in every attention processor as FaceID's does. Run through diffusers' own loader and pipeline on the
tiny SD1.5 pipeline (DDIM, 2 steps, CFG 7.5, explicit latents) with s_scale 1.3 (v2) and without
the shortcut (v1).

    /work/venv-ref/bin/python tools/reference/face_adapters/make_faceid_plus_fixtures.py
(run make_ip_adapter_fixtures.py first; torch 2.15.0, diffusers 0.42.1, transformers 5.23.0, peft 0.18.0)
"""
import os
import sys

import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_ip_adapter_fixtures import (DIFF, NEGATIVE, OUT, PROMPT, StableDiffusionPipeline,  # noqa: E402
                                      ip_layers, load_pipe, perceiver_layers, randn, save_adapter)

FOLDER = os.path.join(os.path.dirname(OUT), "ip_adapter_faceid_plus")


def faceid_plus_proj(cross, id_dim, clip_dim, seed, embed=32, depth=4, heads=1):
    """diffusers' IPAdapterFaceIDPlusImageProjection in the original key layout (embed == cross for
    the shortcut)."""
    sd = {"proj.0.weight": randn((id_dim * 2, id_dim), seed, 0.2), "proj.0.bias": randn((id_dim * 2,), seed + 1, 0.1),
          "proj.2.weight": randn((embed * 4, id_dim * 2), seed + 2, 0.2), "proj.2.bias": randn((embed * 4,), seed + 3, 0.1),
          "norm.weight": 1 + randn((embed,), seed + 4, 0.1), "norm.bias": randn((embed,), seed + 5, 0.1)}
    p = "perceiver_resampler."
    sd.update({p + "proj_in.weight": randn((embed, clip_dim), seed + 6, 0.2), p + "proj_in.bias": randn((embed,), seed + 7, 0.1),
               p + "proj_out.weight": randn((cross, embed), seed + 8, 0.2), p + "proj_out.bias": randn((cross,), seed + 9, 0.1),
               p + "norm_out.weight": 1 + randn((cross,), seed + 10, 0.1), p + "norm_out.bias": randn((cross,), seed + 11, 0.1)})
    perceiver_layers(sd, p, embed, seed, depth, heads, stride=20, ff_out_offset=10)
    return sd


def main():
    os.makedirs(FOLDER, exist_ok=True)
    sd15 = load_pipe(StableDiffusionPipeline, os.path.join(DIFF, "sd15_tiny"))
    cross = sd15.unet.config.cross_attention_dim
    save_adapter(os.path.join(FOLDER, "ip_adapter_faceid_plus.bin"), faceid_plus_proj(cross, 16, 32, 8100),
                 ip_layers(sd15.unet, 8200, lora_rank=4))
    face = randn((1, 16), 8300)
    normed = face / face.norm(dim=-1, keepdim=True)
    latents = randn((1, 4, 8, 8), 7003)
    reference = Image.open(os.path.join(OUT, "reference.png"))
    out = {"face_embedding": face, "latents": latents}
    for key, shortcut in (("v2", 1.3), ("v1", None)):
        pipe = load_pipe(StableDiffusionPipeline, os.path.join(DIFF, "sd15_tiny"))
        pipe.image_encoder = None
        pipe.feature_extractor = None
        pipe.load_ip_adapter(FOLDER, subfolder="", weight_name="ip_adapter_faceid_plus.bin",
                             image_encoder_folder=os.path.join(OUT, "image_encoder"), local_files_only=True,
                             low_cpu_mem_usage=False)
        assert "faceid_0" in pipe.unet.peft_config
        pipe.set_ip_adapter_scale(0.8)
        with torch.no_grad():
            clip_embeds = pipe.prepare_ip_adapter_image_embeds([reference], None, "cpu", 1, True)[0]
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        layer.clip_embeds = clip_embeds.to(dtype=torch.float32)
        layer.shortcut = shortcut is not None
        layer.shortcut_scale = shortcut or 1.0
        id_embeds = torch.cat([torch.zeros_like(normed), normed])[:, None]
        captured = {}

        def capture(_m, _i, out):  # must return None: a returned value would replace the output
            captured.setdefault("tokens", out[0][:, 0].detach().clone())

        hook = pipe.unet.encoder_hid_proj.register_forward_hook(capture)
        with torch.no_grad():
            image = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=2, guidance_scale=7.5,
                         height=16, width=16, latents=latents.clone(), output_type="pt",
                         ip_adapter_image_embeds=[id_embeds]).images
        hook.remove()
        out[f"{key}_tokens"] = captured["tokens"]
        out[f"{key}_image"] = image
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(FOLDER, "reference.safetensors"))
    print("wrote", FOLDER)


if __name__ == "__main__":
    main()
