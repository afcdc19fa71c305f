"""Detection heads: YOLO11's decoupled Detect, and Detect_LQE with a localization-quality branch.

Both return a `HeadOutput` of flattened per-anchor tensors; decoding to boxes lives in
`training/boxes.py`, assignment and loss in their own modules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.model.blocks import Conv, DWConv


@dataclass
class HeadOutput:
    """Raw head outputs over all A anchors of all levels (level-major, row-major in each level)."""

    dist: torch.Tensor  # [B, A, 4*reg_max] box-side distribution logits (l, t, r, b)
    cls: torch.Tensor  # [B, A, nc] class logits
    quality: torch.Tensor | None  # [B, A, 1] localization-quality logits (Detect_LQE only)
    shapes: list[tuple[int, int]]  # (H, W) of each level
    strides: list[int]

    def scores(self) -> torch.Tensor:
        """Final per-class score: sigmoid(cls), times q = sigmoid(quality) when the head has LQE."""
        s = self.cls.sigmoid()
        return s * self.quality.sigmoid() if self.quality is not None else s


class Detect(nn.Module):
    """Per level: a box branch (two 3x3 convs -> 4*reg_max) and a class branch (DW/PW convs -> nc)."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32), reg_max: int = 16) -> None:
        super().__init__()
        self.nc, self.reg_max, self.strides = nc, reg_max, list(strides)
        c2 = max(16, ch[0] // 4, reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.c3 = c3
        self.box = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        # Class branch split into its features and its final 1x1 conv so Detect_LQE can read the features.
        self.cls_feat = nn.ModuleList(
            nn.Sequential(nn.Sequential(DWConv(c, c, 3), Conv(c, c3, 1)), nn.Sequential(DWConv(c3, c3, 3), Conv(c3, c3, 1)))
            for c in ch)
        self.cls_out = nn.ModuleList(nn.Conv2d(c3, nc, 1) for _ in ch)

    def init_bias(self) -> None:
        """Prior biases: box logits flat, class logits at about 5 objects per 640x640 image."""
        for box, cls, s in zip(self.box, self.cls_out, self.strides):
            box[-1].bias.data[:] = 1.0
            cls.bias.data[:] = math.log(5 / self.nc / (640 / s) ** 2)

    def quality_logits(self, dist: torch.Tensor, cls_feat: torch.Tensor, level: int) -> torch.Tensor | None:
        return None

    def forward(self, xs: list[torch.Tensor]) -> HeadOutput:
        dists, clss, quals, shapes = [], [], [], []
        for i, x in enumerate(xs):
            b, _, h, w = x.shape
            d = self.box[i](x)  # [B, 4*reg_max, H, W]
            f = self.cls_feat[i](x)
            c = self.cls_out[i](f)  # [B, nc, H, W]
            q = self.quality_logits(d, f, i)
            dists.append(d.flatten(2))
            clss.append(c.flatten(2))
            if q is not None:
                quals.append(q.flatten(2))
            shapes.append((h, w))
        dist = torch.cat(dists, 2).transpose(1, 2)
        cls = torch.cat(clss, 2).transpose(1, 2)
        qual = torch.cat(quals, 2).transpose(1, 2) if quals else None
        return HeadOutput(dist, cls, qual, shapes, self.strides)


def distribution_stats(dist: torch.Tensor, reg_max: int, topk: int = 4) -> torch.Tensor:
    """GFLv2 DGQP input: per side, the top-k bin probabilities and their mean: [B,4*reg,H,W] -> [B,4*(k+1),H,W].

    A sharp distribution (confident edge) has a large top-1 value; a flat one does not.
    """
    b, _, h, w = dist.shape
    p = dist.view(b, 4, reg_max, h, w).softmax(2)
    top = p.topk(topk, dim=2).values  # [B, 4, k, H, W]
    stats = torch.cat([top, top.mean(2, keepdim=True)], 2)  # [B, 4, k+1, H, W]
    return stats.reshape(b, 4 * (topk + 1), h, w)


class DetectLQE(Detect):
    """Detect with a localization-quality estimator: q from DFL statistics fused with class features.

    score = sigmoid(cls) * q; q is trained against the IoU of the predicted box (see loss.py), so
    ranking and NMS follow how well a box is localized, not only how sure the class is.
    """

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...] = (8, 16, 32), reg_max: int = 16,
                 topk: int = 4, hidden: int = 64, cls_proj: int = 32) -> None:
        super().__init__(nc, ch, strides, reg_max)
        self.topk = topk
        n_stats = 4 * (topk + 1)
        self.q_cls = nn.ModuleList(nn.Conv2d(self.c3, cls_proj, 1) for _ in ch)
        self.q_mlp = nn.ModuleList(
            nn.Sequential(nn.Conv2d(n_stats + cls_proj, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, 1, 1)) for _ in ch)

    def init_bias(self) -> None:
        super().init_bias()
        for mlp in self.q_mlp:
            mlp[-1].bias.data[:] = 0.0  # q starts at 0.5 everywhere

    def quality_logits(self, dist: torch.Tensor, cls_feat: torch.Tensor, level: int) -> torch.Tensor:
        stats = distribution_stats(dist, self.reg_max, self.topk)
        return self.q_mlp[level](torch.cat([stats, self.q_cls[level](cls_feat)], 1))
