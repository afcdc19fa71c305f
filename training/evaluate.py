"""COCO-style evaluation with pycocotools (mAP50, mAP50-95, per class) and a confusion matrix.

Same protocol as the team's independent evaluator: letterboxed input, boxes mapped back to
the image, maxDets [1, 10, 300], precision at area 'all'. Coordinates are those of the cached
image (long side = imgsz); IoU is scale-invariant, so the numbers equal those on original pixels.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from training.boxes import box_iou_pairwise, xywhn_to_xyxy
from training.data.augment import letterbox
from training.data.dataset import DetectionDataset
from training.postprocess import multilabel_nms


@torch.no_grad()
def predict_dataset(model, ds: DetectionDataset, batch: int = 16, device: str = "cpu", conf: float = 0.001,
                    iou: float = 0.7, max_det: int = 300, progress: bool = True) -> list[np.ndarray]:
    """Detections per image [K,6] in cached-image pixels (x1,y1,x2,y2,score,class)."""
    model.eval()
    out: list[np.ndarray] = []
    it = range(0, len(ds), batch)
    for start in tqdm(it, desc="val", leave=False, disable=not progress):
        imgs, metas = [], []
        for i in range(start, min(start + batch, len(ds))):
            img = ds.images[i]
            lb, r, (left, top) = letterbox(img, ds.imgsz)
            imgs.append(lb[:, :, ::-1].transpose(2, 0, 1))
            metas.append((r, left, top, img.shape[1], img.shape[0]))
        x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs))).to(device).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        boxes, scores = model.predict(x)
        for k, (r, left, top, w, h) in enumerate(metas):
            d = multilabel_nms(boxes[k], scores[k], conf, iou, max_det)
            d[:, [0, 2]] = ((d[:, [0, 2]] - left) / r).clip(0, w)
            d[:, [1, 3]] = ((d[:, [1, 3]] - top) / r).clip(0, h)
            out.append(d)
    return out


def coco_map(ds: DetectionDataset, dets: list[np.ndarray]) -> dict:
    """mAP50 / mAP50-95 overall and per class with pycocotools."""
    names = ds.names
    allowed = ds.space.allowed_matrix()
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}
    results = []
    for img_id, (s, img) in enumerate(zip(ds.samples, ds.images)):
        h, w = img.shape[:2]
        gt["images"].append({"id": img_id, "width": w, "height": h})
        for t, (cx, cy, bw, bh) in zip(s.labels, s.boxes_xywhn):
            x, y, ww, hh = (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h
            # a coarse label is an ignore region of each class it allows; an ambiguous one, of every class
            exact = ds.space.is_exact(int(t))
            cats = [int(t)] if exact else [c for c in range(len(names)) if allowed[t, c] or not allowed[t].any()]
            for c in cats:
                gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": img_id, "category_id": c,
                                          "bbox": [x, y, ww, hh], "area": ww * hh, "iscrowd": int(not exact)})
        for x1, y1, x2, y2, score, c in dets[img_id]:
            results.append({"image_id": img_id, "category_id": int(c), "score": float(score),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    summary = {"images": len(ds), "boxes": sum(len(s.labels) for s in ds.samples), "detections": len(results)}
    if not results:
        return {**summary, "mAP50": 0.0, "mAP50_95": 0.0, "per_class": {n: {"AP50": 0.0, "AP50_95": 0.0} for n in names}}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, 300]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # [IoU thr, recall, class]
    per_class = {}
    for k, n in enumerate(names):
        p, p50 = prec[:, :, k], prec[0, :, k]
        per_class[n] = {"AP50": round(float(p50[p50 > -1].mean()), 4) if (p50 > -1).any() else None,
                        "AP50_95": round(float(p[p > -1].mean()), 4) if (p > -1).any() else None}
    return {**summary, "mAP50": round(float(prec[0][prec[0] > -1].mean()), 4),
            "mAP50_95": round(float(prec[prec > -1].mean()), 4), "per_class": per_class}


def confusion_matrix(ds: DetectionDataset, dets: list[np.ndarray], conf: float = 0.25, iou: float = 0.45) -> np.ndarray:
    """[nc+1, nc+1] counts: rows predicted class (last = missed gt), columns true class (last = background)."""
    nc = len(ds.names)
    m = np.zeros((nc + 1, nc + 1), np.int64)
    for s, img, d in zip(ds.samples, ds.images, dets):
        d = d[d[:, 4] > conf]
        gt = xywhn_to_xyxy(s.boxes_xywhn, img.shape[1], img.shape[0])
        exact = np.array([ds.space.is_exact(int(t)) for t in s.labels], bool)
        matched_gt, matched_det = set(), set()
        if len(gt) and len(d):
            ious = box_iou_pairwise(torch.from_numpy(gt).float(), torch.from_numpy(d[:, :4]).float()).numpy()
            pairs = sorted(((ious[g, k], g, k) for g in range(len(gt)) for k in range(len(d)) if ious[g, k] > iou),
                           reverse=True)
            for _, g, k in pairs:
                if g in matched_gt or k in matched_det:
                    continue
                matched_gt.add(g)
                matched_det.add(k)
                if exact[g]:  # a detection on a coarse or ambiguous box is neither right nor wrong here
                    m[int(d[k, 5]), int(s.labels[g])] += 1
        for g in range(len(gt)):
            if g not in matched_gt and exact[g]:
                m[nc, int(s.labels[g])] += 1
        for k in range(len(d)):
            if k not in matched_det:
                m[int(d[k, 5]), nc] += 1
    return m


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [*names, "background"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    norm = matrix / matrix.sum(0, keepdims=True).clip(min=1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center", fontsize=9,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("confusion (score 0.25, IoU 0.45)\ncolour: share of each true column", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
