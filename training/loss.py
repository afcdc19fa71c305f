"""Detection loss: BCE classification, CIoU or Inner-CIoU box loss, DFL, and the LQE quality term.

The loss receives the assignment (computed by training/assign.py) rather than hiding it inside.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.assign import Assignment, task_aligned_assign
from training.boxes import bbox2dist, box_ciou, box_iou, decode_boxes, inner_iou, make_anchors
from training.model.head import HeadOutput
from training.presets import ModelConfig


@dataclass(frozen=True)
class LossGains:
    box: float = 7.5
    cls: float = 0.5
    dfl: float = 1.5
    quality: float = 1.0


def inner_ciou_loss(pred: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    """Inner-CIoU (Inner-IoU paper, Zhang et al. 2023): L = L_CIoU + IoU - IoU_inner, elementwise.

    Note: the fall-detection paper's Eq. (1) divides by the smaller area; we follow Inner-IoU.
    At ratio 1 the inner boxes are the boxes and this is exactly 1 - CIoU.
    """
    return 1.0 - box_ciou(pred, target) + box_iou(pred, target) - inner_iou(pred, target, ratio)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - box_ciou(pred, target)


def dfl_loss(dist: torch.Tensor, target_ltrb: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss: CE to the two bins around each target distance. [N,4*reg],[N,4] -> [N].

    One log-softmax with both neighbouring bins gathered from it (two cross-entropies would
    normalise every row twice)."""
    n = dist.shape[0]
    logp = F.log_softmax(dist.reshape(n * 4, reg_max), dim=-1)
    t = target_ltrb.reshape(-1)
    tl = t.long().clamp(max=reg_max - 2)
    wl = tl + 1 - t
    wr = 1 - wl
    pair = logp.gather(1, torch.stack([tl, tl + 1], 1))
    loss = -(pair[:, 0] * wl + pair[:, 1] * wr)
    return loss.view(n, 4).mean(-1)


def set_bce(logits: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor,
            trained: torch.Tensor | None = None) -> torch.Tensor:
    """Classification loss that says no more than a label did. [B,A,nc], [B,A,nc] bool, [B,A] -> [B,A].

    Classes outside the allowed set S learn 0 (per-class BCE). The set as a whole learns `target`
    through p_S = 1 - prod_{c in S}(1 - p_c), "one of these classes is here", which leaves the
    choice inside S to labels that make it. For |S| = 1 this is exactly the per-class BCE of that
    class, so exact labels train as before; an empty S (background) is all-zero targets.
    `trained` [B,1,nc] bool (default all): classes outside it get no loss at all, for sources that
    box only some people (their unboxed regions say nothing about the other classes).
    """
    sp = F.softplus(logits)  # -log(1 - p_c)
    if trained is not None:
        sp = sp * trained
    outside = (sp * ~allowed).sum(-1)
    u = (sp * allowed).sum(-1)  # -log(1 - p_S)
    has_set = allowed.any(-1)
    log_p_set = torch.log(-torch.expm1(-u.clamp(min=1e-7)))
    inside = torch.where(has_set, -target * log_p_set + (1 - target) * u, torch.zeros_like(u))
    return outside + inside


class DetectionLoss:
    """Callable: (HeadOutput, targets) -> (scalar loss for backward, dict of detached loss terms).

    `allowed` [T, nc] bool maps each target id to the classes its label allows (sources.LabelSpace);
    by default target ids are class ids (one-hot)."""

    def __init__(self, cfg: ModelConfig, gains: LossGains = LossGains(), allowed: torch.Tensor | None = None) -> None:
        self.cfg, self.gains = cfg, gains
        self.allowed = torch.eye(cfg.nc, dtype=torch.bool) if allowed is None else torch.as_tensor(allowed).bool()

    def __call__(self, out: HeadOutput, gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                 class_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """gt_labels [B,M] long, gt_boxes [B,M,4] xyxy input pixels, gt_mask [B,M] bool; class_mask [B,nc]
        bool: the classes each image trains (default all)."""
        reg_max = self.cfg.reg_max
        if out.dist.dtype != torch.float32:  # autocast (bf16 / fp16): boxes, IoUs and losses in fp32
            out = HeadOutput(out.dist.float(), out.cls.float(), None if out.quality is None else out.quality.float(),
                             out.shapes, out.strides)
        b = out.cls.shape[0]
        anchors, strides = make_anchors(out.shapes, out.strides, out.cls.device, out.dist.dtype)
        pred_grid = decode_boxes(out.dist, anchors, reg_max)  # [B,A,4] grid units
        scores = out.scores()
        gt_allowed = self.allowed.to(gt_labels.device)[gt_labels]  # [B,M,nc]
        asg: Assignment = task_aligned_assign(scores.detach().float(), (pred_grid.detach() * strides).float(),
                                              anchors * strides, gt_labels, gt_boxes, gt_mask, gt_allowed)
        norm = asg.align.sum().clamp(min=1.0)
        learn = asg.fg & ~asg.ignore  # [B,A] positives with a usable label
        fg = learn.float()
        weight = asg.align * fg  # [B,A]

        trained = None if class_mask is None else class_mask.to(out.cls.device).bool().unsqueeze(1)
        lcls = set_bce(out.cls.float(), asg.allowed, asg.align, trained)
        loss_cls = (lcls * (~asg.ignore).float()).sum() / norm

        target_grid = asg.boxes / strides  # [B,A,4]
        # Padding anchors get a harmless dummy target (their own box) so no NaN leaks through the weights.
        safe_target = torch.where(learn.unsqueeze(-1), target_grid, pred_grid.detach())
        if self.cfg.box_loss == "inner_ciou":
            lbox = inner_ciou_loss(pred_grid, safe_target, self.cfg.inner_ratio)
        else:
            lbox = ciou_loss(pred_grid, safe_target)
        loss_box = (lbox * weight).sum() / norm

        # DFL on the foreground anchors only (the weight is zero elsewhere): ~1% of the rows
        target_ltrb = bbox2dist(anchors.expand(b, -1, -1), safe_target, reg_max - 1)
        ldfl = dfl_loss(out.dist[learn].float(), target_ltrb[learn], reg_max)
        loss_dfl = (ldfl * weight[learn]).sum() / norm

        terms = {"box": loss_box * self.gains.box, "cls": loss_cls * self.gains.cls, "dfl": loss_dfl * self.gains.dfl}
        if out.quality is not None:
            # q learns the IoU of its own predicted box with the target (GFLv2-style quality), positives only
            with torch.no_grad():
                iou_t = box_iou(pred_grid.detach(), safe_target).clamp(0, 1)
            lq = F.binary_cross_entropy_with_logits(out.quality.squeeze(-1).float(), iou_t, reduction="none")
            terms["quality"] = (lq * fg).sum() / fg.sum().clamp(min=1.0) * self.gains.quality
        total = sum(terms.values()) * b
        return total, {k: float(v.detach()) for k, v in terms.items()}
