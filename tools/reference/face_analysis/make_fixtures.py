"""Tiny random-weight face-analysis fixtures (SCRFD detector + ArcFace recogniser) for the ONNX port.

Writes, into the given folder (avatar-core/tests/fixtures/face_analysis/):

- `det_tiny.onnx`: an SCRFD-style detector in the layout of insightface's released `det_10g.onnx` /
  `scrfd_*_bnkps.onnx` (exported the way `scrfd/tools/scrfd2onnx.py` does: torch legacy exporter,
  opset 11, input `input.1` with dims `['?', 3, '?', '?']`, nine 2-D outputs `score_8/16/32`,
  `bbox_8/16/32`, `kps_8/16/32`, two anchors per location, sigmoid inside the graph). A tiny ResNet-ish
  backbone (Conv with bias + unfused BatchNormalization + Relu, MaxPool, residual Add), an FPN with
  nearest `Resize` to sizes read from runtime shapes, a shared head tower and per-level output convs
  with an SCRFD `Scale` on the box branch. The score biases are tuned on `faces.png` so that a handful
  of boxes survive NMS; box distances are biased positive and keypoint distances towards a face-like
  five-point pattern (raw conv outputs, as in real SCRFD; insightface multiplies by the stride).
- `rec_tiny.onnx`: an ArcFace IResNet (arcface_torch/backbones/iresnet.py: conv1-bn1-prelu, IBasicBlocks
  bn1-conv1-bn2-prelu-conv2-bn3 + conv1x1/bn downsample, bn2, flatten, fc, features BatchNorm1d) at
  tiny widths with a 16-d embedding (the tiny InstantID adapter's width); input `input.1` `['?', 3, 112, 112]`, BatchNorm not fused.
- `faces.png`: a 197x163 RGB test image (synthetic; no real faces).
- `reference.safetensors` / `reference.json`: what insightface's own `SCRFD` / `ArcFaceONNX` classes
  (insightface 2.1, onnxruntime CPU) compute on `faces.png` — letterboxed detector inputs, raw network
  outputs, detections after NMS at 160x160 and 128x96, alignment matrices, aligned crops, embeddings.

    /work/venv-ref/bin/python tools/reference/face_analysis/make_fixtures.py avatar-core/tests/fixtures/face_analysis
(torch 2.15 (legacy TorchScript ONNX exporter), onnx, onnxruntime, insightface 2.1, opencv, scikit-image,
numpy, Pillow, safetensors)
"""
import json
import os
import sys

import cv2
import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import save_file

import insightface
from insightface.app.common import Face
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

SEED = 20240611
IMG_W, IMG_H = 197, 163
DET_SIZE = (160, 160)  # (width, height), as insightface takes it
DET_SIZE_B = (128, 96)
DET_THRESH = 0.5
NMS_THRESH = 0.4
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
EMBED_DIM = 16  # the tiny InstantID adapter of ../face_adapters takes 16-d embeddings
# Face-ish ellipses drawn on the test image: centre x, y, half axes, RGB colour.
FACES = [(45, 50, 20, 26, (200, 170, 150)), (120, 70, 26, 33, (180, 140, 110)),
         (165, 120, 16, 21, (230, 200, 180)), (70, 125, 14, 18, (150, 110, 90))]
# Which ellipse each anchor's score filter is matched to, per stride (see export_detector).
FACE_FOR_ANCHOR = {8: (0, 3), 16: (1, 2), 32: (1, 0)}
# How many anchors per level should pass the threshold on the 160x160 input (sets the score biases):
# a range; the bias goes into the widest logit gap within it.
TARGET_POSITIVES = {8: (8, 14), 16: (3, 6), 32: (1, 2)}


# ---------------------------------------------------------------------------------------------------
# Detector


def _bn(ch):
    return nn.BatchNorm2d(ch)


class ConvBNReLU(nn.Module):
    def __init__(self, cin, cout, k, s):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=True)
        self.bn = _bn(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True)
        self.bn2 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=True), _bn(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Scale(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return x * self.scale


class TinySCRFD(nn.Module):
    """SCRFD-shaped detector: backbone C3/C4/C5 at strides 8/16/32, top-down FPN, shared head tower."""

    def __init__(self, width=8, fpn=8):
        super().__init__()
        self.stem = ConvBNReLU(3, width, 3, 2)  # /2
        self.pool = nn.MaxPool2d(3, 2, 1)  # /4
        self.layer1 = nn.Sequential(BasicBlock(width, width, 2), BasicBlock(width, width, 1))  # /8
        self.layer2 = BasicBlock(width, 2 * width, 2)  # /16
        self.layer3 = BasicBlock(2 * width, 2 * width, 2)  # /32
        self.lateral = nn.ModuleList([nn.Conv2d(c, fpn, 1) for c in (width, 2 * width, 2 * width)])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(fpn, fpn, 3, 1, 1) for _ in STRIDES])
        self.tower = ConvBNReLU(fpn, fpn, 3, 1)  # shared across levels, as SCRFD's stacked convs
        self.cls = nn.ModuleList([nn.Conv2d(fpn, NUM_ANCHORS * 1, 3, 1, 1) for _ in STRIDES])
        self.reg = nn.ModuleList([nn.Conv2d(fpn, NUM_ANCHORS * 4, 3, 1, 1) for _ in STRIDES])
        self.kps = nn.ModuleList([nn.Conv2d(fpn, NUM_ANCHORS * 10, 3, 1, 1) for _ in STRIDES])
        self.scales = nn.ModuleList([Scale(1.0) for _ in STRIDES])

    def features(self, x):
        x = self.pool(self.stem(x))
        c3 = self.layer1(x)
        c4 = self.layer2(c3)
        c5 = self.layer3(c4)
        l3, l4, l5 = (lat(c) for lat, c in zip(self.lateral, (c3, c4, c5)))
        # mmdet FPN top-down path: nearest upsampling to the lower level's runtime size.
        l4 = l4 + F.interpolate(l5, size=l4.shape[2:], mode="nearest")
        l3 = l3 + F.interpolate(l4, size=l3.shape[2:], mode="nearest")
        return [conv(l) for conv, l in zip(self.fpn_convs, (l3, l4, l5))]

    def cls_logits(self, x):
        return [cls(self.tower(p)) for cls, p in zip(self.cls, self.features(x))]

    def forward(self, x):
        scores, bboxes, kpss = [], [], []
        for i, p in enumerate(self.features(x)):
            t = self.tower(p)
            s = torch.sigmoid(self.cls[i](t))
            b = self.scales[i](self.reg[i](t))
            k = self.kps[i](t)
            scores.append(s.permute(0, 2, 3, 1).reshape(-1, 1))
            bboxes.append(b.permute(0, 2, 3, 1).reshape(-1, 4))
            # The keypoint branch reshapes to a shape computed from the runtime shape (Shape/Gather/Mul/...).
            n, _, h, w = k.shape
            kpss.append(k.permute(0, 2, 3, 1).reshape(n * h * w * NUM_ANCHORS, 10))
        return tuple(scores + bboxes + kpss)


# ---------------------------------------------------------------------------------------------------
# Recogniser (arcface_torch/backbones/iresnet.py, tiny)


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers, widths, num_features):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(widths[0], layers[0], 2)
        self.layer2 = self._make_layer(widths[1], layers[1], 2)
        self.layer3 = self._make_layer(widths[2], layers[2], 2)
        self.layer4 = self._make_layer(widths[3], layers[3], 2)
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=0.0, inplace=True)
        self.fc = nn.Linear(widths[3] * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        for _ in range(1, blocks):
            layers.append(IBasicBlock(self.inplanes, planes))
        return nn.Sequential(*layers)

    def pre_features(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)

    def forward(self, x):
        return self.features(self.pre_features(x))


# ---------------------------------------------------------------------------------------------------


def randomise_bn(model, g):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = 0.6 + 0.8 * torch.rand(c, generator=g)
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean.data = 0.2 * torch.randn(c, generator=g)
            m.running_var.data = 0.5 + torch.rand(c, generator=g)
        if isinstance(m, nn.PReLU):
            m.weight.data = 0.1 + 0.3 * torch.rand(m.weight.shape, generator=g)


def make_image():
    """Smooth colours, four face-ish ellipses and a rectangle; RGB uint8 (IMG_H, IMG_W, 3)."""
    y, x = np.mgrid[0:IMG_H, 0:IMG_W].astype(np.float64)
    r = 120 + 90 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 60 + 150 * x / IMG_W
    b = 200 - 140 * y / IMG_H + 20 * np.sin((x + y) / 9.0)
    img = np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(img[..., ::-1])
    for cx, cy, ax, ay, col in FACES:
        cv2.ellipse(bgr, (cx, cy), (ax, ay), 0, 0, 360, col[::-1], -1, cv2.LINE_AA)
        for ex in (-ax // 2.5, ax // 2.5):
            cv2.circle(bgr, (int(cx + ex), int(cy - ay // 4)), max(2, ax // 7), (40, 30, 30), -1, cv2.LINE_AA)
        cv2.ellipse(bgr, (cx, int(cy + ay // 2)), (ax // 3, ay // 9 + 1), 0, 0, 180, (60, 40, 150), 2, cv2.LINE_AA)
    cv2.rectangle(bgr, (150, 10), (190, 40), (20, 200, 240), -1)
    return np.ascontiguousarray(bgr[..., ::-1])


def letterbox(img, input_size):
    """insightface SCRFD._detect_candidates' resize + zero pad (BGR in, BGR out)."""
    im_ratio = float(img.shape[0]) / img.shape[1]
    model_ratio = float(input_size[1]) / input_size[0]
    if im_ratio > model_ratio:
        new_height = input_size[1]
        new_width = int(new_height / im_ratio)
    else:
        new_width = input_size[0]
        new_height = int(new_width * im_ratio)
    det_scale = float(new_height) / img.shape[0]
    det_img = np.zeros((input_size[1], input_size[0], 3), dtype=np.uint8)
    det_img[:new_height, :new_width, :] = cv2.resize(img, (new_width, new_height))
    return det_img, det_scale


def det_blob(det_img_bgr):
    # insightface: cv2.dnn.blobFromImage(img, 1/128, size, (127.5,)*3, swapRB=True)
    rgb = det_img_bgr[..., ::-1].astype(np.float32)
    return ((rgb - 127.5) / 128.0).transpose(2, 0, 1)[None].copy()


def op_types(path):
    return sorted({n.op_type for n in onnx.load(path).graph.node})


def io_desc(path):
    g = onnx.load(path).graph
    init = {i.name for i in g.initializer}

    def dims(v):
        return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]

    return {"inputs": [[v.name, dims(v)] for v in g.input if v.name not in init],
            "outputs": [[v.name, dims(v)] for v in g.output]}


def export_detector(out_dir, det_img_160, det_scale_160, g):
    torch.manual_seed(SEED)
    model = TinySCRFD()
    randomise_bn(model, g)
    with torch.no_grad():
        for i, s in enumerate(STRIDES):
            model.reg[i].weight.mul_(0.25)
            # Distances in stride units, positive: boxes about 3-5 strides across.
            model.reg[i].bias.copy_(1.3 + 1.0 * torch.rand(NUM_ANCHORS * 4, generator=g))
            model.scales[i].scale.fill_(0.9 + 0.2 * torch.rand(1, generator=g).item())
            model.kps[i].weight.mul_(0.15)
            pattern = torch.tensor([[-0.7, -0.5], [0.7, -0.5], [0.0, 0.2], [-0.55, 0.9], [0.55, 0.9]])
            kb = torch.cat([(pattern * (1.0 + 0.3 * a)).reshape(-1) for a in range(NUM_ANCHORS)])
            model.kps[i].bias.copy_(kb + 0.1 * torch.randn(NUM_ANCHORS * 10, generator=g))
        model.eval()
        # Score logits, tuned on the 160x160 test input. First make each anchor's score conv a (mean-free) matched filter of the head features at one
        # of the drawn "faces", mixed with its random weights, so that detections land on them.
        blob = torch.from_numpy(det_blob(det_img_160))
        towers = [model.tower(p) for p in model.features(blob)]
        for i, s in enumerate(STRIDES):
            t = F.pad(towers[i], (1, 1, 1, 1))
            for a, face in enumerate(FACE_FOR_ANCHOR[s]):
                cx, cy = (v * det_scale_160 / s for v in FACES[face][:2])
                x, y = int(round(cx)), int(round(cy))
                tmpl = t[0, :, y:y + 3, x:x + 3]
                tmpl = (tmpl - tmpl.mean()) / tmpl.std()
                w = model.cls[i].weight[a]
                model.cls[i].weight[a] = 0.7 * tmpl * w.std() + 0.3 * w
        # Then rescale each level's cls weights so the raw logits spread with std 2.5, and pick a bias
        # that puts the threshold in the widest gap between the k-th and (k+1)-th largest logits, k in
        # the level's range (robust margins for the port).
        for i, s in enumerate(STRIDES):
            raw = model.cls_logits(blob)[i] - model.cls[i].bias.view(1, -1, 1, 1)
            model.cls[i].weight.mul_(2.5 / raw.std().item())
        logits = model.cls_logits(blob)
        for i, s in enumerate(STRIDES):
            # logits with bias b: raw + b; sigmoid(raw + b) >= 0.5 <=> raw >= -b.
            raw = (logits[i] - model.cls[i].bias.view(1, -1, 1, 1)).flatten().sort(descending=True).values
            lo, hi = TARGET_POSITIVES[s]
            k = max(range(lo, hi + 1), key=lambda k: (raw[k - 1] - raw[k]).item())
            model.cls[i].bias.fill_(-0.5 * (raw[k - 1] + raw[k]).item())

    path = os.path.join(out_dir, "det_tiny.onnx")
    input_names = ["input.1"]
    output_names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    # As scrfd/tools/scrfd2onnx.py: every dynamic dim is called '?'.
    dynamic_axes = {o: {0: "?", 1: "?"} for o in output_names}
    dynamic_axes[input_names[0]] = {0: "?", 2: "?", 3: "?"}
    torch.onnx.export(model, (torch.randn(1, 3, 160, 160),), path, input_names=input_names,
                      output_names=output_names, dynamic_axes=dynamic_axes, opset_version=11,
                      keep_initializers_as_inputs=False, do_constant_folding=True,
                      training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    return model, path


def rec_blob(crops_bgr):
    # insightface: cv2.dnn.blobFromImages(imgs, 1/127.5, (112, 112), (127.5,)*3, swapRB=True)
    rgb = np.stack([c[..., ::-1] for c in crops_bgr]).astype(np.float32)
    return ((rgb - 127.5) / 127.5).transpose(0, 3, 1, 2).copy()


def export_recogniser(out_dir, crops_bgr, g):
    torch.manual_seed(SEED + 1)
    model = IResNet(layers=(1, 2, 1, 1), widths=(4, 8, 8, 8), num_features=EMBED_DIM)
    randomise_bn(model, g)
    model.eval()
    with torch.no_grad():
        model.features.weight.fill_(1.0)  # iresnet: constant 1, not trained
        # The final BatchNorm1d's statistics are those of the fc outputs over the test crops (as if
        # trained on them), so that the embeddings depend visibly on the face rather than on the biases.
        f = model.pre_features(torch.from_numpy(rec_blob(crops_bgr)))
        model.features.running_mean.copy_(f.mean(0))
        model.features.running_var.copy_(f.var(0) + 1e-3)
    path = os.path.join(out_dir, "rec_tiny.onnx")
    torch.onnx.export(model, (torch.randn(1, 3, 112, 112),), path, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "?"}, "embedding": {0: "?"}},
                      opset_version=11, keep_initializers_as_inputs=False, do_constant_folding=True,
                      training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    return model, path


def decision_margins(scrfd, net_outs, det_scale, input_size):
    """Smallest distance of any score to the threshold and of any NMS IoU to nms_thresh (f32, as insightface)."""
    scores = np.concatenate([net_outs[i].ravel() for i in range(3)])
    score_margin = float(np.min(np.abs(scores - DET_THRESH)))
    boxes = []
    for idx, s in enumerate(STRIDES):
        h, w = input_size[1] // s, input_size[0] // s
        c = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32)
        c = np.stack([(c * s).reshape(-1, 2)] * NUM_ANCHORS, axis=1).reshape(-1, 2)
        d = net_outs[idx + 3] * s
        keep = net_outs[idx].ravel() >= DET_THRESH
        b = np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], -1)
        boxes.append(np.hstack([b[keep] / det_scale, net_outs[idx][keep]]))
    dets = np.vstack(boxes).astype(np.float32)
    dets = dets[np.argsort(-dets[:, 4], kind="stable")]
    gaps = np.diff(-dets[:, 4]) if len(dets) > 1 else np.array([1.0])
    iou_margin = 1.0
    order = np.arange(len(dets))
    areas = (dets[:, 2] - dets[:, 0] + 1) * (dets[:, 3] - dets[:, 1] + 1)
    while order.size > 0:
        i, rest = order[0], order[1:]
        xx1 = np.maximum(dets[i, 0], dets[rest, 0])
        yy1 = np.maximum(dets[i, 1], dets[rest, 1])
        xx2 = np.minimum(dets[i, 2], dets[rest, 2])
        yy2 = np.minimum(dets[i, 3], dets[rest, 3])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[rest] - inter)
        if ovr.size:
            iou_margin = min(iou_margin, float(np.min(np.abs(ovr - NMS_THRESH))))
        order = rest[ovr <= NMS_THRESH]
    return {"candidates": int(len(dets)), "min_abs_score_minus_thresh": score_margin,
            "min_abs_iou_minus_nms_thresh": iou_margin, "min_candidate_score_gap": float(np.min(gaps))}


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)

    # ---- image: written as RGB PNG; insightface reads it back with cv2 (BGR)
    png = os.path.join(out, "faces.png")
    Image.fromarray(make_image(), "RGB").save(png, optimize=True)
    img = cv2.imread(png, cv2.IMREAD_COLOR)
    assert np.array_equal(img[..., ::-1], np.asarray(Image.open(png).convert("RGB")))

    det_img_a, det_scale_a = letterbox(img, DET_SIZE)
    det_model, det_path = export_detector(out, det_img_a, det_scale_a, g)

    # ---- detection with insightface's SCRFD (capturing the letterboxed image it builds)
    scrfd = SCRFD(model_file=det_path)
    scrfd.prepare(-1, input_size=DET_SIZE, det_thresh=DET_THRESH, nms_thresh=NMS_THRESH)
    captured = []
    orig_forward = scrfd.forward

    def forward(det_img, threshold):
        captured.append(det_img.copy())
        return orig_forward(det_img, threshold)

    scrfd.forward = forward
    bboxes, kpss = scrfd.detect(img, input_size=DET_SIZE, max_num=0)
    bboxes_b, kpss_b = scrfd.detect(img, input_size=DET_SIZE_B, max_num=0)
    assert len(captured) == 2
    assert np.array_equal(captured[0], det_img_a)
    det_img_b, det_scale_b = letterbox(img, DET_SIZE_B)
    assert np.array_equal(captured[1], det_img_b)

    # Raw outputs: insightface 2.1 runs a dynamic graph through a per-size Session whose graph has the
    # input H/W and output dims fixed; take them from that Session (what detect() decoded), and check
    # them against the plain dynamic-shape Session and torch.
    blob = scrfd._prepare_input_blob(det_img_a, DET_SIZE)
    assert np.array_equal(blob, det_blob(det_img_a)), np.abs(blob - det_blob(det_img_a)).max()
    net_outs = scrfd._session_for_input_size(DET_SIZE).run(scrfd.output_names, {scrfd.input_name: blob})
    sess = onnxruntime.InferenceSession(det_path, providers=["CPUExecutionProvider"])
    dynamic_outs = sess.run(scrfd.output_names, {scrfd.input_name: blob})
    with torch.no_grad():
        torch_outs = det_model(torch.from_numpy(blob))
    for a, b_, t in zip(net_outs, dynamic_outs, torch_outs):
        assert np.abs(a - b_).max() < 1e-5 and np.abs(a - t.numpy()).max() < 1e-4
    blob_b = scrfd._prepare_input_blob(det_img_b, DET_SIZE_B)
    net_outs_b = scrfd._session_for_input_size(DET_SIZE_B).run(scrfd.output_names, {scrfd.input_name: blob_b})

    margins = {"det_160x160": decision_margins(scrfd, net_outs, det_scale_a, DET_SIZE),
               "det_128x96": decision_margins(scrfd, net_outs_b, det_scale_b, DET_SIZE_B)}

    # ---- recognition with insightface's ArcFaceONNX
    rec_model, rec_path = export_recogniser(out, [face_align.norm_crop(img, k, 112) for k in kpss], g)
    rec = ArcFaceONNX(model_file=rec_path)
    rec.prepare(-1)
    assert (rec.input_mean, rec.input_std) == (127.5, 127.5) and rec.input_size == (112, 112)
    tensors = {
        "det_input": np.ascontiguousarray(det_img_a[..., ::-1]),
        "det_scale": np.array([det_scale_a], dtype=np.float64),
        "bboxes": bboxes.astype(np.float32),
        "kps": kpss.astype(np.float32),
        "det_input_b": np.ascontiguousarray(det_img_b[..., ::-1]),
        "det_scale_b": np.array([det_scale_b], dtype=np.float64),
        "bboxes_b": bboxes_b.astype(np.float32),
        "kps_b": kpss_b.astype(np.float32),
    }
    for i, o in enumerate(net_outs):
        tensors[f"net_out_{i}"] = o.astype(np.float32)
    faces_json = []
    for i in range(bboxes.shape[0]):
        face = Face(bbox=bboxes[i, 0:4], kps=kpss[i], det_score=bboxes[i, 4])
        emb = rec.get(img, face)
        M = face_align.estimate_norm(kpss[i], 112)
        crop = face_align.norm_crop(img, kpss[i], 112)
        tensors[f"M_{i}"] = np.ascontiguousarray(M, dtype=np.float64)
        tensors[f"crop_{i}"] = np.ascontiguousarray(crop[..., ::-1])
        tensors[f"embedding_{i}"] = np.asarray(emb, dtype=np.float32)
        if i == 0:
            out0 = rec.get_feat(crop)[0]
            with torch.no_grad():
                t0 = rec_model(torch.from_numpy(rec_blob([crop])))[0].numpy()
            print("rec crop0: max |onnxruntime - torch|", float(np.abs(out0 - t0).max()), "max |emb|", float(np.abs(t0).max()))
            assert np.abs(out0 - t0).max() < 1e-4 * max(1.0, np.abs(t0).max()), np.abs(out0 - t0).max()
            tensors["rec_out_crop0"] = out0.astype(np.float32)
        faces_json.append({"bbox": [float(v) for v in bboxes[i, :4]], "score": float(bboxes[i, 4]),
                           "kps": kpss[i].astype(float).tolist(), "embedding_norm": float(np.linalg.norm(emb))})

    ref = os.path.join(out, "reference.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, ref)

    import skimage
    info = {
        "image": {"file": "faces.png", "width": IMG_W, "height": IMG_H},
        "embedding_dim": EMBED_DIM,
        "det_thresh": DET_THRESH, "nms_thresh": NMS_THRESH,
        "det_blob": "RGB, (x - 127.5) / 128, NCHW",
        "rec_blob": "RGB, (x - 127.5) / 127.5, NCHW",
        "run_a": {"det_size_wh": list(DET_SIZE), "det_scale": det_scale_a, "faces": faces_json},
        "run_b": {"det_size_wh": list(DET_SIZE_B), "det_scale": det_scale_b,
                  "faces": [{"bbox": [float(v) for v in bboxes_b[i, :4]], "score": float(bboxes_b[i, 4]),
                             "kps": kpss_b[i].astype(float).tolist()} for i in range(bboxes_b.shape[0])]},
        "decision_margins": margins,
        "det_graph": {"ops": op_types(det_path), **io_desc(det_path)},
        "rec_graph": {"ops": op_types(rec_path), **io_desc(rec_path)},
        "versions": {"insightface": insightface.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": onnx.__version__, "torch": torch.__version__, "opencv": cv2.__version__,
                     "numpy": np.__version__, "scikit-image": skimage.__version__},
        "seed": SEED,
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")

    for name in ("det_tiny.onnx", "rec_tiny.onnx", "faces.png", "reference.safetensors", "reference.json"):
        os.chmod(os.path.join(out, name), 0o644)

    print("det ops:", " ".join(info["det_graph"]["ops"]))
    print("det io:", io_desc(det_path))
    print("rec ops:", " ".join(info["rec_graph"]["ops"]))
    print("rec io:", io_desc(rec_path))
    print(f"run a {DET_SIZE}: det_scale {det_scale_a}, {bboxes.shape[0]} faces; "
          f"run b {DET_SIZE_B}: det_scale {det_scale_b}, {bboxes_b.shape[0]} faces")
    print("margins:", json.dumps(margins))
    for n in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, n)):>8}  {n}")


if __name__ == "__main__":
    main()
