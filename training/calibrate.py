"""The model's operating point: the score above which the service believes a detection.

mAP integrates over every threshold, but a running service needs one. A from-scratch model after a
few CPU epochs scores its good detections far lower than a converged one (its quality branch is
still unsure), so a fixed 0.25 silences it while a converged model would want more. The threshold is
therefore chosen per model, on the val split, at export (the F1-maximising score of class-agnostic
person detection at IoU 0.5), and stored in the ONNX metadata; the service uses it unless told
otherwise. It is never tuned on the clips the service is evaluated on.
"""
from __future__ import annotations

import numpy as np
import torch

from training.boxes import box_iou_pairwise, xywhn_to_xyxy
from training.data.dataset import DetectionDataset


def match_detections(ds: DetectionDataset, dets: list[np.ndarray], iou: float = 0.5,
                     class_id: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, true-positive flags, ground-truth count) over the split, best score first.

    Greedy COCO-style matching per image: each detection, best first, takes the unmatched ground
    truth it overlaps most (IoU >= `iou`). `class_id` None matches any class to any class (is there
    a person?); otherwise only that class's detections and ground truth count.
    """
    scores, hits, n_gt = [], [], 0
    for s, img, d in zip(ds.samples, ds.images, dets):
        src = ds.sources.get(s.source)
        if class_id is None and src is not None and not src.boxes_everyone:
            continue  # its bystanders carry no box: person precision is not measurable there
        gt = xywhn_to_xyxy(s.boxes_xywhn, img.shape[1], img.shape[0])
        if class_id is not None:
            gt, d = gt[s.labels == class_id], d[d[:, 5] == class_id]
        n_gt += len(gt)
        d = d[np.argsort(-d[:, 4], kind="stable")]
        taken = np.zeros(len(gt), bool)
        ious = (box_iou_pairwise(torch.from_numpy(d[:, :4]).float(), torch.from_numpy(gt).float()).numpy()
                if len(gt) and len(d) else np.zeros((len(d), len(gt))))
        for k in range(len(d)):
            cand = np.where(taken, -1.0, ious[k]) if len(gt) else np.empty(0)
            j = int(cand.argmax()) if len(cand) else -1
            hit = j >= 0 and cand[j] >= iou
            if hit:
                taken[j] = True
            scores.append(float(d[k, 4]))
            hits.append(hit)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.asarray(scores, np.float64)[order], np.asarray(hits, bool)[order], n_gt


def best_f1(scores: np.ndarray, hits: np.ndarray, n_gt: int) -> dict:
    """Threshold (a detection score) with the highest F1, and its precision and recall."""
    if not len(scores) or n_gt == 0:
        return {"score_threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    precision, recall = tp / (tp + fp), tp / n_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    # only the last of equal scores is a threshold that can be set: ">= s" admits all of them
    last_of_score = np.append(scores[1:] != scores[:-1], True)
    f1 = np.where(last_of_score, f1, -1.0)
    k = int(f1.argmax())
    if f1[k] <= 0:  # not one true detection: no threshold is better than another
        return {"score_threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    return {"score_threshold": round(float(scores[k]), 4), "f1": round(float(f1[k]), 4),
            "precision": round(float(precision[k]), 4), "recall": round(float(recall[k]), 4)}


def operating_point(ds: DetectionDataset, dets: list[np.ndarray], iou: float = 0.5) -> dict:
    """The service's score threshold (person F1 on this split) and, for the card, each class's own."""
    person = best_f1(*match_detections(ds, dets, iou))
    per_class = {name: best_f1(*match_detections(ds, dets, iou, k)) for k, name in enumerate(ds.names)}
    return {"score_threshold": person["score_threshold"], "criterion": f"max F1, any-class person boxes, IoU {iou}",
            "images": len(ds.samples), "person": person, "per_class": per_class}
