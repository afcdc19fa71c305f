"""Box operations as small pure functions named by box format (xyxy unless said otherwise)."""
from __future__ import annotations

import math

import torch


def make_anchors(shapes: list[tuple[int, int]], strides: list[int], device, dtype=torch.float32
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres in grid units (cell + 0.5) [A,2] and the stride of each anchor [A,1]."""
    points, stride_col = [], []
    for (h, w), s in zip(shapes, strides):
        sy, sx = torch.meshgrid(torch.arange(h, device=device, dtype=dtype) + 0.5,
                                torch.arange(w, device=device, dtype=dtype) + 0.5, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_col.append(torch.full((h * w, 1), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_col)


def dfl_expectation(dist: torch.Tensor, reg_max: int) -> torch.Tensor:
    """[B,A,4*reg_max] logits -> [B,A,4] expected distance per side (softmax-weighted bin index)."""
    b, a, _ = dist.shape
    proj = torch.arange(reg_max, device=dist.device, dtype=dist.dtype)
    return (dist.view(b, a, 4, reg_max).softmax(3) * proj).sum(3)


def dist2bbox(ltrb: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Distances (l, t, r, b) from anchor points -> xyxy, same units as the anchors."""
    lt, rb = ltrb.chunk(2, -1)
    return torch.cat((anchors - lt, anchors + rb), -1)


def bbox2dist(anchors: torch.Tensor, boxes: torch.Tensor, max_dist: float) -> torch.Tensor:
    """xyxy -> distances (l, t, r, b) from anchor points, clamped to the DFL range."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((anchors - x1y1, x2y2 - anchors), -1).clamp_(0, max_dist - 0.01)


def decode_boxes(dist: torch.Tensor, anchors: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Head distribution logits -> xyxy boxes in grid units."""
    return dist2bbox(dfl_expectation(dist, reg_max), anchors)


def box_iou_pairwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of a [N,4] with every box of b [M,4] -> [N,M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(0) * (a[:, 3] - a[:, 1]).clamp(0)
    area_b = (b[:, 2] - b[:, 0]).clamp(0) * (b[:, 3] - b[:, 1]).clamp(0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(2)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def _iou_elementwise(b1: torch.Tensor, b2: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    w1, h1 = b1[..., 2] - b1[..., 0], b1[..., 3] - b1[..., 1] + eps
    w2, h2 = b2[..., 2] - b2[..., 0], b2[..., 3] - b2[..., 1] + eps
    iw = (torch.min(b1[..., 2], b2[..., 2]) - torch.max(b1[..., 0], b2[..., 0])).clamp(0)
    ih = (torch.min(b1[..., 3], b2[..., 3]) - torch.max(b1[..., 1], b2[..., 1])).clamp(0)
    inter = iw * ih
    union = w1 * h1 + w2 * h2 - inter + eps
    return inter / union, w1, h1, w2, h2


def box_iou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU of matching boxes [...,4] -> [...]."""
    return _iou_elementwise(b1, b2, eps)[0]


def box_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Element-wise Complete-IoU (Zheng et al. 2020): IoU - centre distance term - aspect term."""
    iou, w1, h1, w2, h2 = _iou_elementwise(b1, b2, eps)
    cw = torch.max(b1[..., 2], b2[..., 2]) - torch.min(b1[..., 0], b2[..., 0])
    ch = torch.max(b1[..., 3], b2[..., 3]) - torch.min(b1[..., 1], b2[..., 1])
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2[..., 0] + b2[..., 2] - b1[..., 0] - b1[..., 2]) ** 2
            + (b2[..., 1] + b2[..., 3] - b1[..., 1] - b1[..., 3]) ** 2) / 4
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def shrink_about_centre(b: torch.Tensor, ratio: float) -> torch.Tensor:
    """Scale xyxy boxes about their centres by `ratio` (Inner-IoU's auxiliary boxes)."""
    c = (b[..., :2] + b[..., 2:]) / 2
    half = (b[..., 2:] - b[..., :2]) * (ratio / 2)
    return torch.cat((c - half, c + half), -1)


def inner_iou(b1: torch.Tensor, b2: torch.Tensor, ratio: float, eps: float = 1e-7) -> torch.Tensor:
    """Inner-IoU (Zhang et al. 2023): IoU of both boxes scaled about their centres by `ratio`."""
    return box_iou(shrink_about_centre(b1, ratio), shrink_about_centre(b2, ratio), eps)


def xywhn_to_xyxy(xywh, w: float, h: float):
    """Normalized YOLO (cx, cy, w, h) -> pixel xyxy (numpy or torch)."""
    out = xywh.copy() if hasattr(xywh, "copy") else xywh.clone()
    out[..., 0] = (xywh[..., 0] - xywh[..., 2] / 2) * w
    out[..., 1] = (xywh[..., 1] - xywh[..., 3] / 2) * h
    out[..., 2] = (xywh[..., 0] + xywh[..., 2] / 2) * w
    out[..., 3] = (xywh[..., 1] + xywh[..., 3] / 2) * h
    return out
