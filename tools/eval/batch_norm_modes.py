"""Sample 10k avatars from one of our `transposed` generators (safetensors + JSON) in PyTorch with
its batch norms in one of three modes, as PNG files for `tools/eval/evaluate.py`:

  eval      the stored running statistics
  standing  running statistics re-estimated in train mode over 100 x 128 latents, then eval
  train     batch statistics of each batch of 100 at sampling time

    /work/venv-ref/bin/python tools/eval/batch_norm_modes.py W.safetensors standing OUT_DIR
"""

import json
import os
import sys

import torch
import torch.nn as nn
from PIL import Image
from safetensors.torch import load_file

torch.set_num_threads(2)


def build(path):
    """The PyTorch generator of `path`, in eval mode, and its config."""
    cfg = json.load(open(path.replace('.safetensors', '.json')))
    t = {k: v.float() for k, v in load_file(path).items()}
    w = cfg['widths']; s0 = cfg['resolution'] // 2 ** len(w)
    layers = [nn.ConvTranspose2d(cfg['latent_dim'], w[0], s0, 1, 0, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU()]
    for a, b in zip(w, w[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
    layers += [nn.ConvTranspose2d(w[-1], cfg['channels'], 4, 2, 1), nn.Tanh()]
    g = nn.Sequential(*layers)
    mods = [m for m in g if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
    for i in range(len(w)):
        mods[2*i].weight.data = t[f'blocks.{i}.conv.weight']
        n = mods[2*i+1]
        n.weight.data = t[f'blocks.{i}.norm.weight']; n.bias.data = t[f'blocks.{i}.norm.bias']
        n.running_mean.copy_(t[f'blocks.{i}.norm.running_mean']); n.running_var.copy_(t[f'blocks.{i}.norm.running_var'])
        n.eps = cfg['bn_epsilon']
    mods[-1].weight.data = t['output.weight']; mods[-1].bias.data = t['output.bias']
    return g.eval(), cfg


def standing(g, latent, batches=100, bs=128):
    for m in g:
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats(); m.momentum = None
    g.train()
    with torch.no_grad():
        for _ in range(batches):
            g(torch.randn(bs, latent, 1, 1))
    g.eval()


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
        standing(g, L)
    elif mode not in ("eval", "train"):
        sys.exit(f"unknown mode {mode!r}: eval, standing or train")
    write(g, L, out, train_mode=(mode == "train"))
