"""Sample 10k avatars from one of our `transposed` generators (safetensors + JSON) in PyTorch with
its batch norms in one of three modes, as PNG files for `tools/eval/evaluate.py`:

  eval      the stored running statistics
  standing  standing statistics re-estimated over 8,192 latents (the PyTorch twin's
            `standing_statistics`, the method of `Generator::with_standing_statistics`)
  train     batch statistics of each batch of 100 at sampling time

    /work/venv-ref/bin/python tools/eval/batch_norm_modes.py W.safetensors standing OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference" / "dcgan_training"))
from train_torch import generator, standing_statistics  # noqa: E402

torch.set_num_threads(2)


def build(path):
    """The PyTorch generator of `path` (the inverse of the twin's `export`), in eval mode, and its config."""
    cfg = json.load(open(path.replace(".safetensors", ".json")))
    t = {k: v.float() for k, v in load_file(path).items()}
    w = cfg["widths"]
    g = generator(cfg["latent_dim"], w, cfg["channels"], cfg["resolution"] // 2 ** len(w))
    mods = [m for m in g if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
    with torch.no_grad():
        for i in range(len(w)):
            conv, norm = mods[2 * i], mods[2 * i + 1]
            conv.weight.copy_(t[f"blocks.{i}.conv.weight"])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, name).copy_(t[f"blocks.{i}.norm.{name}"])
            norm.eps = cfg["bn_epsilon"]
        mods[-1].weight.copy_(t["output.weight"])
        mods[-1].bias.copy_(t["output.bias"])
    return g.eval(), cfg


def write(g, latent, out, n=10000, bs=100, train_mode=False, seed=1234):
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    g.train(train_mode)
    with torch.no_grad():
        for i in range(0, n, bs):
            x = g(torch.randn(bs, latent, 1, 1, generator=gen))
            a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            for j, im in enumerate(a):
                Image.fromarray(im, 'RGBA').save(f'{out}/{i+j:06d}.png')


if __name__ == '__main__':
    path, mode, out = sys.argv[1:4]
    g, cfg = build(path)
    L = cfg['latent_dim']
    if mode == "standing":
        g = standing_statistics(g, L)
    elif mode not in ("eval", "train"):
        sys.exit(f"unknown mode {mode!r}: eval, standing or train")
    write(g, L, out, train_mode=(mode == "train"))
