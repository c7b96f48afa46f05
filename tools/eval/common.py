"""Shared pieces of the avatar evaluation tools: image preprocessing, label
handling and the attribute classifier.

Every image (real or generated) goes through `load_image`: RGBA composited on
white at its native resolution, then downsampled to `IMG` x `IMG` with PIL's
antialiased bilinear filter. Real and generated sets must be preprocessed the
same way for the Fréchet distance to mean anything.
"""

import hashlib
import json
import os
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

IMG = 64

# Attributes the classifier predicts (null in labels.jsonl -> class "none").
# Colours of optional parts (glassesColor, earringsColor, ...) are left out:
# they are mostly "none" and tiny at 64 px.
ATTRIBUTES = [
    "hair",             # 48 styles
    "hairColor",        # 13
    "skinColor",        # 8
    "head",             # 4 shapes
    "eyes",             # 24
    "eyebrows",         # 13
    "eyesColor",        # 7
    "mouth",            # 27
    "nose",             # 6
    "glasses",          # none + 5
    "earrings",         # none + 3
    "beard",            # none + 2
    "freckles",         # none + 1
    "hairAccessories",  # none + flowers
]

NONE = "none"


def set_threads(n=2):
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# ---------------------------------------------------------------- images


def load_image(path_or_bytes, size=IMG):
    """RGBA (or RGB) image file -> composited on white -> size x size uint8 RGB."""
    im = Image.open(path_or_bytes)
    im.load()
    return prepare(im, size)


def prepare(im, size=IMG):
    """PIL image -> composited on white -> size x size uint8 RGB."""
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(bg, im).convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)  # antialiased when shrinking
    return np.asarray(im, dtype=np.uint8)


def _load_one(path):
    return load_image(path)


def load_images(paths, workers=2, desc=""):
    """List of paths -> (N, IMG, IMG, 3) uint8."""
    out = np.empty((len(paths), IMG, IMG, 3), dtype=np.uint8)
    chunk = 2000
    with Pool(workers) as pool:
        for i in range(0, len(paths), chunk):
            for j, a in enumerate(pool.map(_load_one, paths[i:i + chunk], chunksize=64)):
                out[i + j] = a
            print(f"  {desc} loaded {min(i + chunk, len(paths))}/{len(paths)}", flush=True)
    return out


def load_images_cached(paths, cache_dir, workers=2, desc=""):
    """Like load_images, with a .npy cache keyed on the path list and mtimes."""
    if cache_dir is None:
        return load_images(paths, workers, desc)
    h = hashlib.sha256()
    h.update(str(IMG).encode())
    for p in paths:
        h.update(os.path.abspath(p).encode())
        h.update(str(os.stat(p).st_mtime_ns).encode())
    os.makedirs(cache_dir, exist_ok=True)
    f = os.path.join(cache_dir, f"img{IMG}_{len(paths)}_{h.hexdigest()[:16]}.npy")
    if os.path.exists(f):
        print(f"  {desc} cache hit {f}", flush=True)
        return np.load(f)
    arr = load_images(paths, workers, desc)
    tmp = f + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, f)
    return arr


def list_pngs(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith(".png"))


def to_tensor(batch_u8):
    """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) float in [-1, 1] (channels_last strides)."""
    t = torch.from_numpy(batch_u8).permute(0, 3, 1, 2).float()
    return t.div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- labels


def read_labels(path):
    rows = [json.loads(l) for l in open(path)]
    rows.sort(key=lambda r: r["index"])
    return rows


def class_names(rows, attributes=ATTRIBUTES):
    """attribute -> sorted list of class names ("none" first when present)."""
    out = {}
    for a in attributes:
        vals = {NONE if r[a] is None else str(r[a]) for r in rows}
        out[a] = sorted(vals, key=lambda v: (v != NONE, v))
    return out


def encode_labels(rows, classes):
    """-> (N, n_attr) int64 array of class indices."""
    y = np.empty((len(rows), len(classes)), dtype=np.int64)
    for j, (a, names) in enumerate(classes.items()):
        idx = {n: i for i, n in enumerate(names)}
        for i, r in enumerate(rows):
            y[i, j] = idx[NONE if r[a] is None else str(r[a])]
    return y


# ---------------------------------------------------------------- model


def _block(cin, cout, stride):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AttrNet(nn.Module):
    """Small multi-head CNN: 64x64 RGB -> FEAT-d penultimate features -> one
    softmax head per attribute."""

    def __init__(self, head_sizes, width=32, feat=256):
        super().__init__()
        w = width
        # Strided stem: ~3x cheaper than a full-resolution first layer on a CPU.
        self.body = nn.Sequential(
            _block(3, w, 2),            # 32
            _block(w, w, 1),
            _block(w, 2 * w, 2),        # 16
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),    # 8
            _block(4 * w, 4 * w, 1),
            _block(4 * w, 8 * w, 2),    # 4
        )
        # Flatten (not global pooling): where a part sits matters here.
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * w * 4 * 4, feat),
            nn.BatchNorm1d(feat),
            nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(0.2)
        self.heads = nn.ModuleList(nn.Linear(feat, k) for k in head_sizes)
        # to_tensor() yields NHWC-strided input; channels_last convs are faster on CPU.
        self.to(memory_format=torch.channels_last)

    def features(self, x):
        return self.fc(self.body(x))

    def forward(self, x, return_features=False):
        f = self.features(x)
        h = self.drop(f)
        logits = [head(h) for head in self.heads]
        return (logits, f) if return_features else logits


def save_classifier(path, model, classes, meta):
    torch.save(
        {
            "state_dict": model.state_dict(),
            "classes": classes,
            "width": meta.get("width", 32),
            "feat": meta.get("feat", 256),
            "img": IMG,
            "meta": meta,
        },
        path,
    )


def load_classifier(path):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    classes = ck["classes"]
    model = AttrNet([len(v) for v in classes.values()], ck["width"], ck["feat"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model, classes, ck


@torch.no_grad()
def predict(model, images_u8, batch=500):
    """-> (features (N, FEAT) float64, list of (N, K_a) softmax prob arrays)."""
    model.eval()
    feats, probs = [], None
    for i in range(0, len(images_u8), batch):
        logits, f = model(to_tensor(images_u8[i:i + batch]), return_features=True)
        feats.append(f.double().numpy())
        p = [torch.softmax(l, 1).numpy() for l in logits]
        probs = [[x] for x in p] if probs is None else [a + [x] for a, x in zip(probs, p)]
    return np.concatenate(feats), [np.concatenate(a) for a in probs]
