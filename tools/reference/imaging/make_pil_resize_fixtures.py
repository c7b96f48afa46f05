"""Pillow's resampling on 8-bit RGB images, for the bit-exact port (avatar-core/tests/pil_resize.rs).

Random RGB images resized by `PIL.Image.resize` with BICUBIC, LANCZOS and BILINEAR, down and up,
non-integer ratios, one axis at a time and both; plus transformers' CLIPImageProcessor (the slow,
PIL-based one diffusers' pipelines load) on a 45x37 image, as float tensors.

    /work/venv-ref/bin/python tools/reference/imaging/make_pil_resize_fixtures.py avatar-core/tests/fixtures/pil_resize
(Pillow, numpy, transformers 5.23, safetensors)
"""
import json
import os
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import save_file
from transformers import CLIPImageProcessor

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(11)
sources = {
    "a": (rng.random((37, 45, 3)) * 255).astype(np.uint8),
    "b": (rng.random((64, 23, 3)) * 255).astype(np.uint8),
}
# Smooth content too: a gradient with a bright square (ringing of the negative lobes).
yy, xx = np.mgrid[0:40, 0:52]
smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
smooth[10:25, 15:35] = [250, 250, 20]
sources["c"] = smooth
for name, array in sources.items():
    Image.fromarray(array).save(os.path.join(out, f"{name}.png"))
cases = []
filters = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "bilinear": Image.Resampling.BILINEAR}
sizes = {"a": [(20, 17), (90, 74), (45, 20), (13, 37), (64, 64)],
         "b": [(10, 30), (23, 100), (7, 7)],
         "c": [(32, 32), (17, 61), (104, 80)]}
for name, targets in sizes.items():
    image = Image.open(os.path.join(out, f"{name}.png"))
    for (w, h) in targets:
        for fname, f in filters.items():
            file = f"{name}_{fname}_{w}x{h}.png"
            image.resize((w, h), f).save(os.path.join(out, file))
            cases.append({"source": f"{name}.png", "filter": fname, "width": w, "height": h, "file": file})
# CLIP preprocessing (resize shortest edge to 24 with BICUBIC, centre crop 24, normalise).
processor = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
pixels = processor(Image.open(os.path.join(out, "a.png")), return_tensors="np").pixel_values
save_file({"clip_a": pixels.astype(np.float32)}, os.path.join(out, "clip.safetensors"))
with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump({"cases": cases, "clip": {"source": "a.png", "shortest_edge": 24, "crop": 24}}, f, indent=1)
print(len(cases), "cases")
