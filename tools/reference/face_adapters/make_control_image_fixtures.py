"""OpenCV reference outputs for avatar-core's ControlNet conditioning images
(avatar-core/src/imaging/{canny,keypoints}.rs), checked pixel by pixel by
avatar-core/tests/control_images.rs.

Writes to avatar-core/tests/fixtures/control_images/:
- three small RGB test images (`<name>.png`: a 96x80 photo-like image made of smooth gradients,
  shapes and noise; a 61x47 posterised one whose channels often tie, which exercises the
  channel choice of colour Canny; a 9x6 random one for the borders) and for each:
  - `<name>_gray.png`: `cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`;
  - `<name>_canny_gray_<low>_<high>.png`: `cv2.Canny(gray, low, high)` for (100, 200), (50, 150)
    and (30.5, 90.9) (fractional thresholds are floored by OpenCV);
  - `<name>_canny_bgr_<low>_<high>.png`: `cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), low,
    high)` for (100, 200) and (50, 150): InstantID's `get_canny_image`
    (gradio_demo/controlnet_util.py), which runs Canny on the 3-channel BGR image (per pixel the
    channel with the largest |dx| + |dy| wins), not on a grey one;
- `kps_<case>.png`: InstantID's `draw_kps` (copied from gradio_demo/app-multicontrolnet.py) for every
  case of `keypoints.json` (`{"cases": [{"name", "width", "height", "kps": [[x, y] x 5]}]}`,
  float32 keypoints as insightface returns them, written as exact decimal floats).

    /work/venv-ref/bin/pip install opencv-python-headless
    /work/venv-ref/bin/python tools/reference/face_adapters/make_control_image_fixtures.py

(opencv-python-headless 5.0.0.93, numpy 2.4.6, Pillow 13.0.0, Python 3.11; the outputs are
identical with opencv-python-headless 4.14.0.94 and with any cv2.setNumThreads.) Note that
OpenCV's 8-bit RGB2GRAY uses 15-bit fixed point: (9798 R + 19235 G + 3735 B + 2^14) >> 15.
"""
import json
import math
import os
import sys

import cv2
import numpy as np
import PIL
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "avatar-core/tests/fixtures/control_images")

GRAY_THRESHOLDS = [(100, 200), (50, 150), (30.5, 90.9)]
BGR_THRESHOLDS = [(100, 200), (50, 150)]


def draw_kps(image_pil, kps, color_list=[(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]):
    # InstantID gradio_demo/app-multicontrolnet.py, verbatim but for formatting.
    stickwidth = 4
    limbSeq = np.array([[0, 2], [1, 2], [3, 2], [4, 2]])
    kps = np.array(kps)

    w, h = image_pil.size
    out_img = np.zeros([h, w, 3])

    for i in range(len(limbSeq)):
        index = limbSeq[i]
        color = color_list[index[0]]

        x = kps[index][:, 0]
        y = kps[index][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth), int(angle), 0, 360, 1)
        out_img = cv2.fillConvexPoly(out_img.copy(), polygon, color)
    out_img = (out_img * 0.6).astype(np.uint8)

    for idx_kp, kp in enumerate(kps):
        color = color_list[idx_kp]
        x, y = kp
        out_img = cv2.circle(out_img.copy(), (int(x), int(y)), 10, color, -1)

    out_img_pil = PIL.Image.fromarray(out_img.astype(np.uint8))
    return out_img_pil


def photo(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([
        90 + 100 * xx / w + 20 * np.sin(yy / 7),
        60 + 120 * yy / h,
        140 + 60 * np.cos((xx + yy) / 11),
    ], axis=-1)
    face = (xx - 0.52 * w) ** 2 / (0.22 * w) ** 2 + (yy - 0.45 * h) ** 2 / (0.3 * h) ** 2 < 1
    img[face] = 0.3 * img[face] + 0.7 * np.array([225, 182, 150])
    for ex in (0.44, 0.6):
        eye = (xx - ex * w) ** 2 + (yy - 0.4 * h) ** 2 < (0.03 * w) ** 2
        img[eye] = [40, 30, 35]
    img[int(0.62 * h):int(0.9 * h), int(0.08 * w):int(0.3 * w)] = [40, 60, 200]
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).round().astype(np.uint8)


def posterised(w, h, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 90 * np.sin(xx / 6 + yy / 9) * np.cos(yy / 5)
    img = np.repeat(base[..., None], 3, axis=-1)
    img[: h // 2, : w // 2, 0] += 40  # a reddish quadrant, the rest grey (channels tie)
    img[h // 2 :, w // 2 :] = img[h // 2 :, w // 2 :] * [0.5, 1.0, 0.5]
    img += rng.integers(-3, 4, (h, w, 1))
    return (np.floor(img.clip(0, 255) / 32) * 32).astype(np.uint8)


def keypoint_cases():
    frontal = np.array([[30.2, 50.7], [66.9, 49.8], [48.4, 67.3], [35.6, 88.1], [61.2, 88.9]])
    cases = [("frontal", 96, 128, frontal)]
    centre = np.array([48.0, 64.0])
    for angle in (17, 45, 90, 135, -60, 180, -170.3):
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        cases.append((f"rotated_{angle}".replace("-", "m").replace(".", "p"), 96, 128, (frontal - centre) @ rot.T + centre))
    cases += [
        ("border", 96, 128, np.array([[-3.7, 10.2], [20.5, -6.1], [5.0, 5.0], [-12.0, 60.0], [100.3, 130.2]])),
        ("negative_fraction", 64, 64, np.array([[-0.6, 10.3], [20.9, -0.99], [9.5, 9.5], [-0.2, 30.7], [30.5, 40.5]])),
        ("offscreen", 64, 48, np.array([[-60.0, 10.0], [-40.0, 12.0], [-50.0, 25.0], [-58.0, 35.0], [-42.0, 36.0]])),
        ("far_corner", 64, 48, np.array([[70.0, 50.0], [90.0, 52.0], [60.5, 44.5], [72.0, 70.0], [88.0, 71.0]])),
        ("tiny", 64, 64, np.array([[40.0, 40.0], [45.0, 40.5], [42.5, 42.0], [41.0, 44.5], [44.2, 44.6]])),
        ("coincident", 64, 64, np.array([[32.0, 30.0], [44.0, 31.0], [32.0, 30.0], [30.0, 45.0], [46.0, 44.0]])),
        ("integral", 80, 80, np.array([[20.0, 30.0], [60.0, 30.0], [40.0, 50.0], [25.0, 65.0], [55.0, 65.0]])),
        ("wide", 128, 96, np.array([[50.3, 40.1], [80.7, 36.2], [66.6, 55.5], [54.1, 72.9], [79.9, 70.4]])),
        ("odd", 97, 61, np.array([[28.25, 20.75], [61.5, 24.125], [44.0, 36.0], [30.0, 47.5], [58.0, 50.0]])),
        ("large", 200, 232, np.array([[52.4, 90.3], [148.8, 84.1], [101.7, 140.6], [63.9, 190.2], [141.2, 186.5]])),
        # numpy's float32 `** 2` and `** 0.5` call libm's powf, which is not correctly rounded:
        # here the eye-nose length is 54.0 (powf) where sqrt(x*x + y*y) gives 53.999996, and
        # 49.999996 where it gives 50.0, so int(length / 2) differs.
        ("powf_rounding_a", 96, 96, np.array([[49.96991729736328, 40.78874588012695], [80.0, 45.0],
                                               [25.14572525024414, -7.167060852050781], [30.0, 70.0], [70.0, 75.0]])),
        ("powf_rounding_b", 96, 96, np.array([[20.0, 60.0], [14.130778312683105, 13.401053428649902],
                                               [62.167423248291016, -0.4726886749267578], [40.0, 80.0], [75.0, 70.0]])),
    ]
    large = cases[-3][3]
    for angle in (33, -121):
        t = math.radians(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        cases.append((f"large_rotated_{angle}".replace("-", "m"), 200, 232, (large - [100.0, 116.0]) @ rot.T + [100.0, 116.0]))
    rng = np.random.default_rng(7)
    for i in range(8):
        scale = rng.uniform(0.15, 1.2)
        t = rng.uniform(-math.pi, math.pi)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        centre = rng.uniform([-10, -10], [90, 106])
        kps = (frontal - [48.0, 64.0]) * scale @ rot.T + centre + rng.normal(0, 1.5, (5, 2))
        cases.append((f"random_{i}", 80, 96, kps))
    return [(n, w, h, k.astype(np.float32)) for n, w, h, k in cases]


def save_gray(path, array):
    Image.fromarray(array, "L").save(path, optimize=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    images = {"photo": photo(96, 80, 1234), "posterised": posterised(61, 47, 99),
              "random": np.random.default_rng(5).integers(0, 256, (6, 9, 3), dtype=np.uint8)}
    for name, rgb in images.items():
        Image.fromarray(rgb, "RGB").save(os.path.join(OUT, f"{name}.png"), optimize=True)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        save_gray(os.path.join(OUT, f"{name}_gray.png"), gray)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for low, high in GRAY_THRESHOLDS:
            edges = cv2.Canny(gray, low, high)
            save_gray(os.path.join(OUT, f"{name}_canny_gray_{low}_{high}.png"), edges)
            print(name, "gray", low, high, int((edges > 0).sum()), "edge pixels")
        for low, high in BGR_THRESHOLDS:
            edges = cv2.Canny(bgr, low, high)
            save_gray(os.path.join(OUT, f"{name}_canny_bgr_{low}_{high}.png"), edges)
            print(name, "bgr", low, high, int((edges > 0).sum()), "edge pixels")

    cases = []
    for name, w, h, kps in keypoint_cases():
        image = draw_kps(Image.new("RGB", (w, h)), kps)
        image.save(os.path.join(OUT, f"kps_{name}.png"), optimize=True)
        cases.append({"name": name, "width": w, "height": h, "kps": [[float(x), float(y)] for x, y in kps]})
    with open(os.path.join(OUT, "keypoints.json"), "w") as f:
        json.dump({"opencv": cv2.__version__, "cases": cases}, f, indent=1)
        f.write("\n")
    print(len(cases), "keypoint cases; cv2", cv2.__version__)


if __name__ == "__main__":
    main()
