"""Tiny random-weight U^2-Net fixture for the segmentation parity test (avatar-core/tests/segmentation.rs).

The network is the U^2-Net of xuebinqin/U-2-Net (`model/u2net.py`: REBNCONV, RSU7..RSU4, RSU4F,
U2NET/U2NETP; module names kept, so the state dict has the official `.pth` keys), written here with
the channel widths as parameters: the official models are `FULL` and `SMALL` below; the fixture is
`FULL` scaled down 32x. BatchNorm running statistics are randomised so that they matter.

Background removal follows rembg's U2netSession: RGB resized to `size` x `size` (PIL LANCZOS), divided
by its maximum, ImageNet mean/std; the side output d0 (already a sigmoid) min-max normalised, times
255 truncated to uint8, resized back (PIL LANCZOS) and used as the alpha mask.

    /work/venv-ref/bin/python tools/reference/segmentation/make_u2net_fixtures.py avatar-core/tests/fixtures/segmentation
(torch 2.15.0, Pillow, numpy, safetensors)
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file


class REBNCONV(nn.Module):
    def __init__(self, in_ch, out_ch, dirate=1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _upsample_like(src, tar):
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """RSU-L (L = 7, 6, 5, 4): L-1 pooled encoder levels, a dilated bottom, L-1 decoder levels."""

    def __init__(self, levels, in_ch, mid_ch, out_ch):
        super().__init__()
        self.levels = levels
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, levels):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{levels}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(levels - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for i in range(1, self.levels):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            if i < self.levels - 1:
                hx = self.pool(hx)
        hx = getattr(self, f"rebnconv{self.levels}")(hx)
        for i in range(self.levels - 1, 0, -1):
            skip = skips[i - 1]
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
            if i > 1:
                hx = _upsample_like(hx, skips[i - 2])
        return hx + hxin


class RSU4F(nn.Module):
    def __init__(self, in_ch, mid_ch, out_ch):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch)

    def forward(self, x):
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


# (in, mid, out) per stage: stage1..stage6, then stage5d..stage1d. Levels: 7 6 5 4 F F | F 4 5 6 7.
FULL = [(3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512), (512, 256, 512),
        (1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64)]
SMALL = [(3, 16, 64)] + [(64, 16, 64)] * 5 + [(128, 16, 64)] * 5


class U2NET(nn.Module):
    def __init__(self, widths, out_ch=1):
        super().__init__()
        names = ["stage1", "stage2", "stage3", "stage4", "stage5", "stage6",
                 "stage5d", "stage4d", "stage3d", "stage2d", "stage1d"]
        levels = [7, 6, 5, 4, 0, 0, 0, 4, 5, 6, 7]
        for name, level, (i, m, o) in zip(names, levels, widths):
            setattr(self, name, RSU(level, i, m, o) if level else RSU4F(i, m, o))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        side_in = [widths[10][2], widths[9][2], widths[8][2], widths[7][2], widths[6][2], widths[5][2]]
        for k, c in enumerate(side_in, start=1):
            setattr(self, f"side{k}", nn.Conv2d(c, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x):
        hx1 = self.stage1(x)
        hx2 = self.stage2(self.pool(hx1))
        hx3 = self.stage3(self.pool(hx2))
        hx4 = self.stage4(self.pool(hx3))
        hx5 = self.stage5(self.pool(hx4))
        hx6 = self.stage6(self.pool(hx5))
        hx5d = self.stage5d(torch.cat((_upsample_like(hx6, hx5), hx5), 1))
        hx4d = self.stage4d(torch.cat((_upsample_like(hx5d, hx4), hx4), 1))
        hx3d = self.stage3d(torch.cat((_upsample_like(hx4d, hx3), hx3), 1))
        hx2d = self.stage2d(torch.cat((_upsample_like(hx3d, hx2), hx2), 1))
        hx1d = self.stage1d(torch.cat((_upsample_like(hx2d, hx1), hx1), 1))
        d1 = self.side1(hx1d)
        sides = [d1] + [_upsample_like(getattr(self, f"side{k}")(h), d1)
                        for k, h in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6))]
        d0 = self.outconv(torch.cat(sides, 1))
        return [torch.sigmoid(d) for d in [d0] + sides]


def rembg_input(image, size):
    """rembg's BaseSession.normalize: RGB, LANCZOS to size x size, / max, ImageNet mean/std."""
    im = np.array(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)).astype(np.float64)
    im = im / max(np.max(im), 1e-6)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = np.stack([(im[:, :, c] - mean[c]) / std[c] for c in range(3)])
    return torch.from_numpy(out[None].astype(np.float32))


def rembg_mask(d0, original_size):
    pred = d0[:, 0, :, :].numpy()
    ma, mi = np.max(pred), np.min(pred)
    pred = np.squeeze((pred - mi) / (ma - mi))
    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L")
    return mask.resize(original_size, Image.Resampling.LANCZOS)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    widths = [(3 if k == 0 else i // 32, max(1, m // 32), o // 32) for k, (i, m, o) in enumerate(FULL)]
    model = U2NET(widths).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
                m.num_batches_tracked.fill_(100)
    state = model.state_dict()
    torch.save(state, os.path.join(out, "u2net_tiny.pth"))
    save_file({k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")},
              os.path.join(out, "u2net_tiny.safetensors"))

    # A figure on a plain background, 90x70, RGB.
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:70, 0:90]
    img = np.zeros((70, 90, 3), np.float64)
    img[:] = (30, 160, 70)
    disc = (xx - 45) ** 2 / 28 ** 2 + (yy - 38) ** 2 / 24 ** 2 < 1
    img[disc] = (220, 180, 150)
    img[(xx - 36) ** 2 + (yy - 32) ** 2 < 16] = (20, 20, 40)
    img += rng.normal(0, 6, img.shape)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    image.save(os.path.join(out, "figure.png"))

    size = 64
    x = rembg_input(image, size)
    odd = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        outputs = model(x)
        odd_outputs = model(odd)
    rembg_mask(outputs[0], image.size).save(os.path.join(out, "figure_mask.png"))
    tensors = {"input": x, "odd_input": odd, "odd_d0": odd_outputs[0].contiguous()}
    for k, d in enumerate(outputs):
        tensors[f"d{k}"] = d.contiguous()
    save_file(tensors, os.path.join(out, "outputs.safetensors"))
    print("params", sum(p.numel() for p in model.parameters()), "widths", widths)


if __name__ == "__main__":
    main()
