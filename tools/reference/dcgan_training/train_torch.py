"""PyTorch twin of our DCGAN trainer (`examples/train.rs`), for checking that the burn trainer
learns as fast per image as the reference framework does, and for timing the two side by side.

Same networks (`transposed` generator: 1x1 -> s0 ConvTranspose, then 4x4 stride-2
ConvTranspose + BN + ReLU stages, tanh; discriminator: 4x4 stride-2 convs, BN from the second,
LeakyReLU 0.2, an s0 x s0 conv to one logit), same init (N(0, 0.02) conv weights, BN gamma 1),
same recipe (Adam beta1 0.5, BCE with logits, one-sided label smoothing, instance noise decaying
linearly to zero, horizontal flips, EMA of the generator with the same warm-up; or the hinge loss
and a spectrally normalised D), same data scaling (RGBA / 127.5 - 1). Exports the EMA generator, with standing batch-norm
statistics as ours, in our safetensors layout (+ config JSON) so `tools/eval/sample.py
--weights` and `tools/eval/evaluate.py` score it like ours.

    /work/venv-ref/bin/python tools/reference/dcgan_training/train_torch.py \
        --data /work/data/lorelei/96 --steps 6000 --batch 16 --lr-d 1e-4 \
        --instance-noise 0.1 --noise-steps 20000 --label-smoothing 0.1 --ema 0.999 \
        --threads 1 --out runs/torch_small
"""

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def generator(latent, widths, channels, s0):
    layers = [nn.ConvTranspose2d(latent, widths[0], s0, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    for a, b in zip(widths, widths[1:]):
        layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
    layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator(channels, widths, s0, spectral=False):
    # spectral: every conv spectrally normalised (PyTorch's parametrization: one power iteration
    # per training-mode forward; ours does one per step), no batch norm, every conv with a bias.
    sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
    layers, c = [], channels
    for i, w in enumerate(widths):
        layers.append(sn(nn.Conv2d(c, w, 4, 2, 1, bias=(i == 0 or spectral))))
        if i > 0 and not spectral:
            layers.append(nn.BatchNorm2d(w))
        layers.append(nn.LeakyReLU(0.2))
        c = w
    layers.append(sn(nn.Conv2d(c, 1, s0)))
    return nn.Sequential(*layers)


def init_weights(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def load_images(folder, limit):
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    return np.stack([np.asarray(Image.open(p).convert("RGBA")) for p in files])  # [N, H, W, 4] uint8


def standing_statistics(g, latent, samples=8192, batch=256, seed=0):
    """A copy of `g` whose batch norms hold the population statistics of their inputs over
    `samples` latents, block by block, the earlier blocks already normalised with their new
    statistics (as `Generator::with_standing_statistics` in avatar-core; latents from torch's RNG)."""
    g = copy.deepcopy(g).eval()
    gen = torch.Generator().manual_seed(seed)
    zs = [torch.randn(min(batch, samples - i), latent, 1, 1, generator=gen) for i in range(0, samples, batch)]
    for norm in [m for m in g if isinstance(m, nn.BatchNorm2d)]:
        count, mean, m2 = 0, 0.0, 0.0
        seen = []
        hook = norm.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].double()))
        with torch.no_grad():
            for z in zs:
                g(z)
                x = seen.pop().transpose(0, 1).reshape(norm.num_features, -1)
                k, bm = x.shape[1], x.mean(1)
                bm2 = ((x - bm[:, None]) ** 2).sum(1)
                delta = bm - mean
                mean = mean + delta * k / (count + k)
                m2 = m2 + bm2 + delta**2 * count * k / (count + k)
                count += k
        hook.remove()
        norm.running_mean.copy_(mean.float())
        norm.running_var.copy_((m2 / count).float())
    return g


def export(g, path, latent, resolution, channels, widths):
    """Our `transposed` layout: blocks.{i}.conv.weight / blocks.{i}.norm.*, output.weight/bias."""
    from safetensors.torch import save_file

    mods = [m for m in g if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d))]
    tensors = {}
    for i in range(len(widths)):
        conv, norm = mods[2 * i], mods[2 * i + 1]
        tensors[f"blocks.{i}.conv.weight"] = conv.weight
        tensors[f"blocks.{i}.norm.weight"] = norm.weight
        tensors[f"blocks.{i}.norm.bias"] = norm.bias
        tensors[f"blocks.{i}.norm.running_mean"] = norm.running_mean
        tensors[f"blocks.{i}.norm.running_var"] = norm.running_var
    tensors["output.weight"] = mods[-1].weight
    tensors["output.bias"] = mods[-1].bias
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}, str(path))
    config = {"latent_dim": latent, "resolution": resolution, "channels": channels, "architecture": "Transposed",
              "widths": widths, "bn_epsilon": 1e-5, "bn_momentum": 0.1}
    Path(path).with_suffix(".json").write_text(json.dumps(config, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=1_000_000, help="use at most this many images")
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--widths", default="128,64,32,16")
    ap.add_argument("--d-widths", default="16,32,64,128")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--lr-g", type=float, default=2e-4)
    ap.add_argument("--lr-d", type=float, default=2e-4)
    ap.add_argument("--beta1", type=float, default=0.5)
    ap.add_argument("--spectral-norm", action="store_true", help="SN-GAN discriminator (no batch norm)")
    ap.add_argument("--loss", choices=["bce", "hinge"], default="bce")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--instance-noise", type=float, default=0.0)
    ap.add_argument("--noise-steps", type=int, default=20000)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshot-every", type=int, default=0, help="also export the EMA generator every N steps")
    ap.add_argument("--out", required=True, help="folder for model.safetensors, log.jsonl and snapshots")
    a = ap.parse_args()
    if a.loss == "hinge" and a.label_smoothing:
        ap.error("label smoothing applies to the bce loss only (as in examples/train.rs)")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    images = load_images(a.data, a.limit)
    n, r = images.shape[0], images.shape[1]
    widths = [int(w) for w in a.widths.split(",")]
    d_widths = [int(w) for w in a.d_widths.split(",")]
    s0, d0 = r // 2 ** len(widths), r // 2 ** len(d_widths)
    print(f"{n} images of {r} px loaded in {time.time() - started:.0f} s", flush=True)

    g = generator(a.latent, widths, a.channels, s0)
    d = discriminator(a.channels, d_widths, d0, a.spectral_norm)
    g.apply(init_weights)
    d.apply(init_weights)
    ema = copy.deepcopy(g).eval()
    opt_g = torch.optim.Adam(g.parameters(), lr=a.lr_g, betas=(a.beta1, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=a.lr_d, betas=(a.beta1, 0.999))
    bce = F.binary_cross_entropy_with_logits
    log = open(out / "log.jsonl", "w")
    train_seconds = 0.0
    for step in range(1, a.steps + 1):
        t0 = time.time()
        idx = rng.integers(0, n, a.batch)
        batch = images[idx][..., : a.channels].copy()
        flips = rng.random(a.batch) < 0.5
        batch[flips] = batch[flips, :, ::-1]
        real = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        fake = g(torch.randn(a.batch, a.latent, 1, 1))
        sigma = a.instance_noise * max(0.0, 1.0 - step / max(a.noise_steps, 1))
        if sigma > 0:
            real = real + sigma * torch.randn_like(real)
            fake = fake + sigma * torch.randn_like(fake)
        real_logits = d(real).flatten()
        fake_logits = d(fake.detach()).flatten()
        if a.loss == "hinge":
            loss_d = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        else:
            loss_d = bce(real_logits, torch.full_like(real_logits, 1.0 - a.label_smoothing)) + bce(
                fake_logits, torch.zeros_like(fake_logits))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        gen_logits = d(fake).flatten()
        loss_g = -gen_logits.mean() if a.loss == "hinge" else bce(gen_logits, torch.ones_like(gen_logits))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        with torch.no_grad():
            decay = min(a.ema, (1.0 + step) / (10.0 + step))
            for pe, p in zip(ema.state_dict().values(), g.state_dict().values()):
                if pe.dtype.is_floating_point:
                    pe.mul_(decay).add_(p, alpha=1.0 - decay)
        train_seconds += time.time() - t0
        if step % 25 == 0:
            row = {"step": step, "loss_d": loss_d.item(), "loss_g": loss_g.item(),
                   "d_real": torch.sigmoid(real_logits).mean().item(),
                   "d_fake": torch.sigmoid(fake_logits).mean().item(),
                   "img_per_s": step * a.batch / train_seconds}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if step % 500 == 0:
                print(row, flush=True)
        if a.snapshot_every and step % a.snapshot_every == 0:
            final = standing_statistics(ema, a.latent)
            export(final, out / f"step_{step:07d}.safetensors", a.latent, r, a.channels, widths)
    if not (a.snapshot_every and a.steps and a.steps % a.snapshot_every == 0):  # else the last snapshot is final
        final = standing_statistics(ema, a.latent)
    export(final, out / "model.safetensors", a.latent, r, a.channels, widths)
    print(f"done: {a.steps} steps in {train_seconds:.0f} s of training ({a.steps * a.batch / train_seconds:.1f} img/s)")


if __name__ == "__main__":
    main()
