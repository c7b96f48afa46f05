#!/usr/bin/env python3
"""Fixtures added after `make_fixtures.py` (same environment; run it from the repository root
after that script):

1. `io/{sd15,sdxl}_unet_odd.safetensors`: each tiny UNet's prediction for latents whose sides do
   not divide by its overall downsampling (13x10), where diffusers passes `upsample_size` so
   each upsampler lands on its skip connection's size.
2. `sd15_tiny_f8`: the `sd15_tiny` pipeline (same UNet, text encoder, tokenizer and scheduler,
   linked) with a four-level VAE that downsamples 8x like SD's, random weights.

`sd15_tiny`'s VAE downsamples 2x, so at the face-avatar API's 256 px minimum its UNet and VAE
attend over 128x128 latents (16k tokens) and one image takes ~10 s; with this VAE the latents
are 32x32 and an image takes well under a second. Tests that draw at 256 px and check
behaviour rather than parity (no ControlNet: the ControlNet fixtures embed control images 2x)
use this folder.

    /work/venv-diffusers/bin/python tools/reference/diffusion/make_fixture_additions.py
"""
import os
import shutil
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import randomize_constant_params_, seed_all, vae_config  # noqa: E402

FIXTURES = "avatar-core/tests/fixtures/diffusion"
SOURCE = f"{FIXTURES}/sd15_tiny"
OUT = f"{FIXTURES}/sd15_tiny_f8"


def unet_odd_latents(model: str) -> None:
    """The UNet of `{model}_tiny` on 13x10 latents, with the conditioning of its parity file."""
    unet = UNet2DConditionModel.from_pretrained(f"{FIXTURES}/{model}_tiny/unet").eval()
    inputs = load_file(f"{FIXTURES}/io/{model}_unet.safetensors")
    sample = torch.randn(2, 4, 13, 10, generator=torch.Generator().manual_seed(1009))
    keep = ["timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    io = {k: inputs[k] for k in keep if k in inputs}
    added = None
    if "text_embeds" in io:
        added = {"text_embeds": io["text_embeds"], "time_ids": io["time_ids"]}
    with torch.no_grad():
        out = unet(sample, io["timestep"], io["encoder_hidden_states"], added_cond_kwargs=added).sample
    assert out.shape == sample.shape
    io.update(sample=sample, out=out)
    save_file({k: v.contiguous() for k, v in io.items()}, f"{FIXTURES}/io/{model}_unet_odd.safetensors")


def vae_f8() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    shutil.copy(os.path.join(SOURCE, "model_index.json"), OUT)
    for sub in ("scheduler", "text_encoder", "tokenizer", "unet"):
        os.symlink(os.path.join("..", os.path.basename(SOURCE), sub), os.path.join(OUT, sub))
    config = vae_config(0.18215, False)
    config.update(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        sample_size=64,
    )
    seed_all(1007)
    vae = AutoencoderKL(**config)
    randomize_constant_params_(vae, 1008)
    vae.save_pretrained(os.path.join(OUT, "vae"), safe_serialization=True)
    # The folder reloads to the same weights.
    again = AutoencoderKL.from_pretrained(os.path.join(OUT, "vae"))
    for (name, a), (_, b) in zip(vae.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    print(f"wrote {OUT}")


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for model in ("sd15", "sdxl"):
        unet_odd_latents(model)
    vae_f8()


if __name__ == "__main__":
    main()
