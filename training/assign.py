"""Task-aligned assignment (TOOD / YOLOv8-11): a pure no_grad function of tensors.

Dense and free of boolean indexing so shapes stay static (CUDA graphs, torch.compile).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from training.boxes import box_ciou


MIN_INSIDE_SIDE = 16.0  # px: the inside-box test sees smaller box sides as this long (as the reference)


@dataclass
class Assignment:
    """Per-anchor targets; anchors with fg == False carry zeros."""

    labels: torch.Tensor  # [B, A] long, target id of the matched gt
    boxes: torch.Tensor  # [B, A, 4] xyxy pixels of the matched gt
    scores: torch.Tensor  # [B, A, nc] allowed classes x normalized alignment (soft one-hot for exact labels)
    fg: torch.Tensor  # [B, A] bool, anchor has a gt
    align: torch.Tensor  # [B, A] normalized alignment, the classification target's height (0 if ignored)
    allowed: torch.Tensor  # [B, A, nc] bool, classes the matched gt's label allows
    ignore: torch.Tensor  # [B, A] bool, matched to an ignored (ambiguous) gt: no loss at all


def inside_test_boxes(gt_boxes: torch.Tensor, min_side: float = MIN_INSIDE_SIDE) -> torch.Tensor:
    """gt boxes [..., 4] widened about their centre to sides of at least `min_side` (inside test only).

    A person far away can be narrower than a stride-16 cell; without this no anchor lies inside it."""
    c = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    half = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=min_side) / 2
    return torch.cat((c - half, c + half), -1)


@torch.no_grad()
def task_aligned_assign(pd_scores: torch.Tensor, pd_boxes: torch.Tensor, anchors: torch.Tensor,
                        gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                        gt_allowed: torch.Tensor | None = None, topk: int = 10, alpha: float = 0.5,
                        beta: float = 6.0, eps: float = 1e-9) -> Assignment:
    """Match anchors to ground truth by s^alpha * IoU^beta among the top-k anchors inside each gt.

    pd_scores [B,A,nc] probabilities; pd_boxes [B,A,4] xyxy pixels; anchors [A,2] pixels;
    gt_labels [B,M] long target ids; gt_boxes [B,M,4] xyxy pixels; gt_mask [B,M] bool (padding False);
    gt_allowed [B,M,nc] bool, the classes each gt's label allows (default: one-hot of gt_labels).
    A coarse gt's alignment score is its best allowed class; an ignored gt (no class allowed) still
    claims its anchors, so they are neither positives nor background.
    """
    b, a, nc = pd_scores.shape
    m = gt_boxes.shape[1]
    device = pd_scores.device
    if m == 0:
        zeros = torch.zeros(b, a, dtype=torch.bool, device=device)
        return Assignment(torch.zeros(b, a, dtype=torch.long, device=device), torch.zeros(b, a, 4, device=device),
                          torch.zeros_like(pd_scores), zeros, torch.zeros(b, a, device=device),
                          torch.zeros_like(pd_scores, dtype=torch.bool), zeros)
    if gt_allowed is None:
        gt_allowed = torch.nn.functional.one_hot(gt_labels.clamp(0, nc - 1), nc).bool()
    gt_valid = gt_mask.unsqueeze(-1).float()  # [B,M,1]
    # anchors whose centre lies strictly inside the gt box (small boxes widened to 16 px for this test)
    inside = inside_test_boxes(gt_boxes)
    lt = anchors[None, None] - inside[:, :, None, :2]
    rb = inside[:, :, None, 2:] - anchors[None, None]
    in_gt = (torch.cat((lt, rb), -1).amin(-1) > eps).float() * gt_valid  # [B,M,A]

    ignored_gt = ~gt_allowed.any(-1)  # [B,M]
    score_mask = (gt_allowed | ignored_gt.unsqueeze(-1)).float()  # [B,M,nc]
    score = (pd_scores[:, None] * score_mask[:, :, None]).amax(-1)  # [B,M,A] best allowed class
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

    t_labels = torch.gather(gt_labels, 1, gt_idx) * fg
    t_boxes = torch.gather(gt_boxes, 1, gt_idx.unsqueeze(-1).expand(b, a, 4)) * fg.unsqueeze(-1)
    allowed = torch.gather(gt_allowed, 1, gt_idx.unsqueeze(-1).expand(b, a, nc)) & fg.unsqueeze(-1)
    ignore = torch.gather(ignored_gt, 1, gt_idx) & fg

    # normalize: each gt's best anchor gets a target equal to its best IoU
    metric = metric * pos
    pos_metric = metric.amax(-1, keepdim=True)  # [B,M,1]
    pos_overlap = (overlaps * pos).amax(-1, keepdim=True)
    norm = (metric * pos_overlap / (pos_metric + eps)).amax(1) * (fg & ~ignore)  # [B,A]
    return Assignment(t_labels, t_boxes, allowed.float() * norm.unsqueeze(-1), fg, norm, allowed, ignore)
