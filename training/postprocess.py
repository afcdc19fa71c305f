"""Post-processing for validation: class-aware (multi-label) greedy NMS, written in numpy/torch.

Mirrors the exported graph: ONNX NonMaxSuppression per class (boxes with score > conf), at most
`max_det` per class, then the best `max_det` over all classes.
"""
from __future__ import annotations

import numpy as np
import torch


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, max_keep: int) -> np.ndarray:
    """Indices kept by greedy NMS, best first. boxes [n,4] xyxy, scores [n]."""
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    suppressed = np.zeros(len(b), bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        if len(keep) >= max_keep:
            break
        xx1 = np.maximum(b[i, 0], b[i + 1:, 0])
        yy1 = np.maximum(b[i, 1], b[i + 1:, 1])
        xx2 = np.minimum(b[i, 2], b[i + 1:, 2])
        yy2 = np.minimum(b[i, 3], b[i + 1:, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        iou = inter / (area[i] + area[i + 1:] - inter + 1e-9)
        suppressed[i + 1:] |= iou > iou_thr
    return np.array(keep, dtype=np.int64)


def multilabel_nms(boxes: torch.Tensor, scores: torch.Tensor, conf: float = 0.001, iou: float = 0.7,
                   max_det: int = 300) -> np.ndarray:
    """One image: boxes [A,4], scores [A,nc] -> [K,6] (x1,y1,x2,y2,score,class) best first, K <= max_det."""
    boxes_np = boxes.detach().float().cpu().numpy()
    scores_np = scores.detach().float().cpu().numpy()
    rows = []
    for c in range(scores_np.shape[1]):
        s = scores_np[:, c]
        idx = np.nonzero(s > conf)[0]
        if len(idx) == 0:
            continue
        keep = idx[greedy_nms(boxes_np[idx], s[idx], iou, max_det)]
        rows.append(np.concatenate([boxes_np[keep], s[keep, None], np.full((len(keep), 1), c, np.float32)], 1))
    if not rows:
        return np.zeros((0, 6), np.float32)
    out = np.concatenate(rows)
    return out[np.argsort(-out[:, 4], kind="stable")[:max_det]]
