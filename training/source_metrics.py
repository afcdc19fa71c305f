"""Per-source evaluation: what each kind of camera can say about the model.

Each val source gets the figures of the fall task of the team's independent evaluator (fall AP of
the model's `fall` boxes against the source's `fall` boxes, ambiguous boxes as ignore regions;
class-agnostic person AP against every labelled person; fall precision / recall / F1 at the
operating point, greedy matching at IoU 0.5), plus AP per model class for the classes the source
labels exactly (its coarse boxes are ignore regions for the classes they allow).
Coordinates are those of the cached images; IoU is scale-invariant.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from training.boxes import xywhn_to_xyxy
from training.data.dataset import DetectionDataset

Box = list[float]  # x, y, w, h


def coco_ap(gts: list[tuple[int, Box, bool]], dets: list[tuple[int, Box, float]], n_images: int
            ) -> tuple[float | None, float | None]:
    """AP50 and AP50-95 of one category. gts: (image, box, is_ignore); dets: (image, box, score).

    None when there is nothing to find; 0 when there is but nothing was detected."""
    if not any(not ig for _, _, ig in gts):
        return None, None
    if not dets:
        return 0.0, 0.0
    gt = {"images": [{"id": i} for i in range(n_images)], "categories": [{"id": 1}],
          "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": int(ig)} for k, (i, b, ig) in enumerate(gts)]}
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = gt
        c.createIndex()
        ev = COCOeval(c, c.loadRes([{"image_id": i, "category_id": 1, "bbox": b, "score": s} for i, b, s in dets]),
                      "bbox")
        ev.params.maxDets = [1, 10, 300]
        ev.evaluate()
        ev.accumulate()
    p = ev.eval["precision"][:, :, 0, 0, -1]
    return round(float(p[0][p[0] > -1].mean()), 4), round(float(p[p > -1].mean()), 4)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter + 1e-9)


def decisions_at(gts: list[tuple[int, Box, bool]], dets: list[tuple[int, Box, float]], threshold: float,
                 iou: float = 0.5) -> dict:
    """Precision / recall / F1 of the detections at or above `threshold`, greedy best-first matching.

    A detection on an ignore box counts neither way."""
    by_img: dict[int, list[list]] = {}
    for i, b, ig in gts:
        by_img.setdefault(i, []).append([b, ig, False])
    tp = fp = 0
    for i, b, _ in sorted((d for d in dets if d[2] >= threshold), key=lambda d: -d[2]):
        best, hit = iou, None
        for k, (gb, ig, used) in enumerate(by_img.get(i, [])):
            o = _iou(b, gb)
            if o >= best and (ig or not used):
                best, hit = o, k
        if hit is None:
            fp += 1
        elif not by_img[i][hit][1]:
            by_img[i][hit][2] = True
            tp += 1
    n = sum(1 for _, _, ig in gts if not ig)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / n if n else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "F1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def _xywh(box) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return [x1, y1, x2 - x1, y2 - y1]


def source_metrics(ds: DetectionDataset, dets: list[np.ndarray], threshold: float) -> dict[str, dict]:
    """{source: figures} for every source of `ds` (dets: per image [K,6] in cached-image pixels)."""
    space = ds.space
    allowed = space.allowed_matrix()
    fall = space.names.index("fall")
    out = {}
    for name, source in ds.sources.items():
        idx = ds.source_indices(name)
        fall_gt, person_gt, fall_det, person_det = [], [], [], []
        class_gt: dict[int, list] = {c: [] for c in range(space.nc)}
        class_det: dict[int, list] = {c: [] for c in range(space.nc)}
        for j, i in enumerate(idx):
            s, img = ds.samples[i], ds.images[i]
            boxes = xywhn_to_xyxy(s.boxes_xywhn, img.shape[1], img.shape[0])
            for t, src_label, box in zip(s.labels, s.source_labels, boxes):
                b, ignored = _xywh(box), not allowed[t].any()
                person_gt.append((j, b, False))
                if source.label_names[src_label] == "fall" or ignored:
                    fall_gt.append((j, b, ignored))
                for c in range(space.nc):
                    if allowed[t, c] or ignored:
                        class_gt[c].append((j, b, not space.is_exact(int(t))))
            for d in dets[i]:
                b, score, c = _xywh(d), float(d[4]), int(d[5])
                person_det.append((j, b, score))
                class_det[c].append((j, b, score))
                if c == fall:
                    fall_det.append((j, b, score))
        f50, f5095 = coco_ap(fall_gt, fall_det, len(idx))
        p50, p5095 = coco_ap(person_gt, person_det, len(idx))
        exact = sorted({int(t) for i in idx for t in ds.samples[i].labels if space.is_exact(int(t))})
        per_class = {}
        for c in exact:
            ap50, ap5095 = coco_ap(class_gt[c], class_det[c], len(idx))
            per_class[space.names[c]] = {"AP50": ap50, "AP50_95": ap5095}
        at_op = decisions_at(fall_gt, fall_det, threshold)
        out[name] = {"images": len(idx), "boxes_everyone": source.boxes_everyone, "fall_boxes": sum(1 for *_, ig in fall_gt if not ig),
                     "person_boxes": len(person_gt), "fall_AP50": f50, "fall_AP50_95": f5095,
                     "person_AP50": p50, "person_AP50_95": p5095, "operating_point": threshold,
                     **{f"fall_{k}": v for k, v in at_op.items()}, "per_class": per_class,
                     "mAP50": _mean(v["AP50"] for v in per_class.values()),
                     "mAP50_95": _mean(v["AP50_95"] for v in per_class.values())}
    return out


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return round(float(np.mean(v)), 4) if v else None


def fitness(per_source: dict[str, dict]) -> float:
    """One number to pick the best epoch: mean over sources of (fall AP50-95 + person AP50-95) / 2.

    Every kind of camera counts the same, and it rewards what the product needs (find the person,
    find the fall), not the posture classes only one staged source labels. A source that boxes only
    the fallen (fall-poses) counts by its fall AP alone: its bystanders carry no box."""
    vals = [((m["fall_AP50_95"] or 0.0) + (m["person_AP50_95"] or 0.0)) / 2 if m.get("boxes_everyone", True)
            else (m["fall_AP50_95"] or 0.0) for m in per_source.values()]
    return round(float(np.mean(vals)), 4) if vals else 0.0
