"""Augmentations that transform an image and its boxes together (pixel xyxy, numpy).

Each function takes (image HxWx3 uint8, boxes [n,4] float32 xyxy, labels [n] int64) and returns the same.
"""
from __future__ import annotations

import cv2
import numpy as np

PAD = 114


def letterbox(img: np.ndarray, size: int, pad: int = PAD) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping aspect so the long side is `size`, centre on a pad-coloured square.

    Exactly the ONNX contract's preprocessing (and the shared evaluator's): returns the image, the
    scale r and the (left, top) offset, so boxes map back as (x - left) / r.
    """
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), pad, np.uint8)
    canvas[top:top + nh, left:left + nw] = img if (nh, nw) == (h, w) else cv2.resize(
        img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, r, (left, top)


def hsv_jitter(img: np.ndarray, rng: np.random.Generator, hgain=0.015, sgain=0.7, vgain=0.4) -> np.ndarray:
    """Random hue/saturation/value gains through lookup tables; returns a new image."""
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def hflip(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = img.shape[1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), out


def random_affine(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator, out_size: int,
                  scale: float = 0.5, translate: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random scale (1 +- scale) and translation (+- translate), warping into an out_size square.

    The input may be larger than out_size (a 2S mosaic canvas is cropped back to S around its
    centre). Boxes are transformed by their corners, clipped, and dropped when they lose most of their area or become slivers.
    """
    h, w = img.shape[:2]
    c = np.eye(3)
    c[0, 2], c[1, 2] = -w / 2, -h / 2  # centre at origin
    s = np.eye(3)
    sc = rng.uniform(1 - scale, 1 + scale)
    s[0, 0] = s[1, 1] = sc
    t = np.eye(3)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_size
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_size
    m = t @ s @ c
    out = cv2.warpAffine(img, m[:2], (out_size, out_size), flags=cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
    if len(boxes) == 0:
        return out, boxes, labels
    corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], 1)  # [n,4,2]
    pts = corners.reshape(-1, 2) @ m[:2, :2].T + m[:2, 2]
    pts = pts.reshape(-1, 4, 2)
    new = np.concatenate([pts.min(1), pts.max(1)], 1)
    new = new.clip(0, out_size)
    keep = box_candidates(boxes * sc, new)
    return out, new[keep].astype(np.float32), labels[keep]


def box_candidates(before: np.ndarray, after: np.ndarray, min_wh: float = 2, min_area: float = 0.1, max_ar: float = 100
                   ) -> np.ndarray:
    """Keep boxes that are still at least 2 px wide and tall and keep 10% of their (scaled) area."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > min_wh) & (h2 > min_wh) & (w2 * h2 / (w1 * h1 + 1e-16) > min_area) & (ar < max_ar)


def mosaic4(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile four (image, boxes, labels) around a random centre of a 2S x 2S canvas."""
    canvas = np.full((2 * size, 2 * size, 3), PAD, dtype=np.uint8)
    xc, yc = (int(rng.uniform(size * 0.5, size * 1.5)) for _ in range(2))
    all_boxes, all_labels = [], []
    for i, (img, boxes, labels) in enumerate(items):
        h, w = img.shape[:2]
        if i == 0:
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif i == 1:
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * size), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif i == 2:
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * size, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * size), min(2 * size, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        if len(boxes):
            b = boxes.copy()
            b[:, [0, 2]] += x1a - x1b
            b[:, [1, 3]] += y1a - y1b
            all_boxes.append(b)
            all_labels.append(labels)
    boxes = np.concatenate(all_boxes).clip(0, 2 * size) if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros((0,), np.int64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w > 2) & (h > 2)
    return canvas, boxes[keep].astype(np.float32), labels[keep]


def mosaic_then_affine(items, size: int, rng: np.random.Generator, scale: float, translate: float):
    """Mosaic on a 2S canvas, then a random affine that crops it back to S around the centre."""
    canvas, boxes, labels = mosaic4(items, size, rng)
    return random_affine(canvas, boxes, labels, rng, size, scale, translate)


def greyscale(img: np.ndarray) -> np.ndarray:
    """Three equal channels, as an infrared night camera gives."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.merge((g, g, g))


def blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (out of focus) or a short horizontal/vertical motion streak."""
    k = int(rng.choice([3, 5, 7]))
    if rng.random() < 0.5:
        return cv2.GaussianBlur(img, (k, k), 0)
    kernel = np.zeros((k, k), np.float32)
    if rng.random() < 0.5:
        kernel[k // 2, :] = 1.0 / k
    else:
        kernel[:, k // 2] = 1.0 / k
    return cv2.filter2D(img, -1, kernel)


def _fisheye_forward(pts: np.ndarray, k: float, cx: float, cy: float, f: float) -> np.ndarray:
    """Undistorted points -> distorted (barrel) points: solve r_u = r_d (1 + k r_d^2) for r_d."""
    d = (pts - (cx, cy)) / f
    ru = np.linalg.norm(d, axis=1, keepdims=True)
    rd = ru.copy()
    for _ in range(20):  # fixed point; converges fast for the small k used here
        rd = ru / (1 + k * rd ** 2)
    scale = np.where(ru > 1e-9, rd / np.maximum(ru, 1e-9), 1.0)
    return d * scale * f + (cx, cy)


def fisheye(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            k_range: tuple[float, float] = (0.1, 0.4)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Barrel distortion about the centre (ceiling fisheye cameras), boxes mapped through their edges."""
    h, w = img.shape[:2]
    k = float(rng.uniform(*k_range))
    cx, cy, f = w / 2, h / 2, max(w, h) / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = (xs - cx) / f, (ys - cy) / f
    s = 1 + k * (dx * dx + dy * dy)  # each output pixel samples the input farther out
    out = cv2.remap(img, (dx * s * f + cx).astype(np.float32), (dy * s * f + cy).astype(np.float32),
                    cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
    if len(boxes) == 0:
        return out, boxes, labels
    t = np.linspace(0, 1, 9, dtype=np.float32)
    new = []
    for x1, y1, x2, y2 in boxes:
        xs_e, ys_e = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
        edge = np.concatenate([np.stack([xs_e, np.full_like(t, y1)], 1), np.stack([xs_e, np.full_like(t, y2)], 1),
                               np.stack([np.full_like(t, x1), ys_e], 1), np.stack([np.full_like(t, x2), ys_e], 1)])
        p = _fisheye_forward(edge, k, cx, cy, f)
        new.append([*p.min(0), *p.max(0)])
    new = np.array(new, np.float32).clip(0, [w, h, w, h])
    keep = box_candidates(boxes, new)
    return out, new[keep], labels[keep]
