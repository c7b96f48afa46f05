#!/usr/bin/env python3
"""Fixture for tiled VAE decoding: diffusers' `AutoencoderKL.enable_tiling()` on the tiny SD1.5 VAE
with latents larger than one tile (tile = sample_size / 2**(levels-1) = 16 latent pixels).

    /work/venv-diffusers/bin/python tools/reference/diffusion/make_tiling_fixture.py
writes avatar-core/tests/fixtures/diffusion/io/sd15_vae_tiled.safetensors:
`z` [1,4,40,24] (seeded), `tiled` = vae.decode(z) with tiling, `untiled` = without.
"""
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "..", "avatar-core", "tests", "fixtures", "diffusion")

torch.manual_seed(7)
vae = AutoencoderKL.from_pretrained(os.path.join(FIXTURES, "sd15_tiny", "vae")).eval()
z = torch.randn(1, 4, 40, 24)
with torch.no_grad():
    untiled = vae.decode(z).sample
    vae.enable_tiling()
    tiled = vae.decode(z).sample
save_file({"z": z.contiguous(), "tiled": tiled.contiguous(), "untiled": untiled.contiguous()},
          os.path.join(FIXTURES, "io", "sd15_vae_tiled.safetensors"), metadata={
              "info": "tile_sample_min_size=%d tile_latent_min_size=%d overlap=%s" % (
                  vae.tile_sample_min_size, vae.tile_latent_min_size, vae.tile_overlap_factor)})
print("tile sample", vae.tile_sample_min_size, "latent", vae.tile_latent_min_size,
      "overlap", vae.tile_overlap_factor, "max |tiled-untiled|", (tiled - untiled).abs().max().item())
