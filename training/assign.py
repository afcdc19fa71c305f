"""Task-aligned assignment (TOOD / YOLOv8-11): a pure no_grad function of tensors.

Dense and free of boolean indexing so shapes stay static (CUDA graphs, torch.compile).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.boxes import box_ciou


@dataclass
class Assignment:
    """Per-anchor targets; anchors with fg == False carry zeros."""

    labels: torch.Tensor  # [B, A] long, class of the matched gt
    boxes: torch.Tensor  # [B, A, 4] xyxy pixels of the matched gt
    scores: torch.Tensor  # [B, A, nc] soft one-hot class targets (normalized alignment)
    fg: torch.Tensor  # [B, A] bool, anchor has a gt


@torch.no_grad()
def task_aligned_assign(pd_scores: torch.Tensor, pd_boxes: torch.Tensor, anchors: torch.Tensor,
                        gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                        topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """Match anchors to ground truth by s^alpha * IoU^beta among the top-k anchors inside each gt.

    pd_scores [B,A,nc] probabilities; pd_boxes [B,A,4] xyxy pixels; anchors [A,2] pixels;
    gt_labels [B,M] long; gt_boxes [B,M,4] xyxy pixels; gt_mask [B,M] bool (padding False).
    """
    b, a, nc = pd_scores.shape
    m = gt_boxes.shape[1]
    device = pd_scores.device
    if m == 0:
        return Assignment(torch.zeros(b, a, dtype=torch.long, device=device), torch.zeros(b, a, 4, device=device),
                          torch.zeros_like(pd_scores), torch.zeros(b, a, dtype=torch.bool, device=device))
    gt_valid = gt_mask.unsqueeze(-1).float()  # [B,M,1]
    # anchors whose centre lies strictly inside the gt box
    lt = anchors[None, None] - gt_boxes[:, :, None, :2]
    rb = gt_boxes[:, :, None, 2:] - anchors[None, None]
    in_gt = (torch.cat((lt, rb), -1).amin(-1) > eps).float() * gt_valid  # [B,M,A]

    labels = gt_labels.clamp(0, nc - 1)
    score = torch.gather(pd_scores.transpose(1, 2), 1, labels.unsqueeze(-1).expand(b, m, a))  # [B,M,A]
    overlaps = box_ciou(gt_boxes[:, :, None, :].expand(b, m, a, 4), pd_boxes[:, None].expand(b, m, a, 4)).clamp(0)
    overlaps = overlaps * in_gt
    metric = score.pow(alpha) * overlaps.pow(beta) * in_gt  # [B,M,A]

    k = min(topk, a)
    top_idx = metric.topk(k, dim=-1).indices  # [B,M,k]
    is_top = torch.zeros_like(metric).scatter_(-1, top_idx, 1.0)
    pos = is_top * in_gt  # [B,M,A]

    # an anchor claimed by several gts keeps the one it overlaps most
    multi = pos.sum(1, keepdim=True) > 1  # [B,1,A]
    best = torch.zeros_like(pos).scatter_(1, overlaps.argmax(1, keepdim=True), 1.0)
    pos = torch.where(multi, best, pos)
    fg = pos.sum(1) > 0  # [B,A]
    gt_idx = pos.argmax(1)  # [B,A]

    t_labels = torch.gather(labels, 1, gt_idx) * fg
    t_boxes = torch.gather(gt_boxes, 1, gt_idx.unsqueeze(-1).expand(b, a, 4)) * fg.unsqueeze(-1)
    one_hot = torch.nn.functional.one_hot(t_labels, nc).float() * fg.unsqueeze(-1)

    # normalize: each gt's best anchor gets a target equal to its best IoU
    metric = metric * pos
    pos_metric = metric.amax(-1, keepdim=True)  # [B,M,1]
    pos_overlap = (overlaps * pos).amax(-1, keepdim=True)
    norm = (metric * pos_overlap / (pos_metric + eps)).amax(1)  # [B,A]
    return Assignment(t_labels, t_boxes, one_hot * norm.unsqueeze(-1), fg)
