"""Box losses and the task-aligned assigner on hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch

from training.assign import task_aligned_assign
from training.boxes import box_ciou, box_iou
from training.loss import ciou_loss, dfl_loss, inner_ciou_loss


def test_inner_ciou_hand_computed() -> None:
    # pred [0,0,4,4], target [2,0,6,4]; ratio 0.5 -> inner boxes [1,1,3,3] and [3,1,5,3]: touching, IoU_inner 0
    pred = torch.tensor([[0.0, 0, 4, 4]])
    tgt = torch.tensor([[2.0, 0, 6, 4]])
    iou = 8 / 24  # intersection 2x4, union 16+16-8
    rho2, c2 = 2.0**2, 6.0**2 + 4.0**2  # centre distance^2, enclosing diagonal^2; same aspect -> v = 0
    ciou = iou - rho2 / c2
    expected = 1 - ciou + iou - 0.0
    assert float(box_iou(pred, tgt)) == pytest.approx(iou, abs=1e-5)
    assert float(box_ciou(pred, tgt)) == pytest.approx(ciou, abs=1e-5)
    assert float(inner_ciou_loss(pred, tgt, 0.5)) == pytest.approx(expected, abs=1e-5)
    # ratio 1.25 -> inner boxes [-0.5,-0.5,4.5,4.5], [1.5,-0.5,6.5,4.5]: inter 3*5=15, union 25+25-15=35
    assert float(inner_ciou_loss(pred, tgt, 1.25)) == pytest.approx(1 - ciou + iou - 15 / 35, abs=1e-5)


def test_inner_ciou_equals_ciou_at_ratio_one() -> None:
    torch.manual_seed(0)
    xy = torch.rand(100, 2) * 50
    a = torch.cat([xy, xy + torch.rand(100, 2) * 40 + 1], 1)
    xy2 = xy + torch.randn(100, 2) * 5
    b = torch.cat([xy2, xy2 + torch.rand(100, 2) * 40 + 1], 1)
    assert torch.allclose(inner_ciou_loss(a, b, 1.0), ciou_loss(a, b), atol=1e-6)
    assert not torch.allclose(inner_ciou_loss(a, b, 0.7), ciou_loss(a, b), atol=1e-3)


def test_dfl_splits_the_target_between_its_two_bins() -> None:
    reg_max = 4
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0] * 4])  # the same distribution for all four sides
    logp = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    target = torch.tensor([[1.25, 0.0, 3.0, 2.5]])  # 3.0 is the last bin: split 0/1 between bins 2 and 3
    expected = [-(0.75 * logp[1] + 0.25 * logp[2]), -logp[0], -logp[3], -(0.5 * logp[2] + 0.5 * logp[3])]
    assert float(dfl_loss(logits, target, reg_max)) == pytest.approx(float(sum(expected) / 4), abs=1e-6)


def test_ciou_penalizes_aspect_and_distance() -> None:
    t = torch.tensor([[0.0, 0, 10, 10]])
    assert float(box_ciou(t, t)) == pytest.approx(1.0, abs=1e-6)
    wide = torch.tensor([[0.0, 2.5, 10, 7.5]])
    v = 4 / math.pi**2 * (math.atan(1) - math.atan(2)) ** 2
    assert float(box_ciou(wide, t)) < float(box_iou(wide, t))
    assert v > 0


def _grid_anchors(size: int, stride: int) -> torch.Tensor:
    r = torch.arange(size // stride) * stride + stride / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy], -1).view(-1, 2)


def test_assigner_picks_anchors_inside_and_best_aligned() -> None:
    anchors = _grid_anchors(64, 8)  # 64 anchors, centres 4, 12, ..., 60
    a = anchors.shape[0]
    gt_boxes = torch.tensor([[[0.0, 0, 24, 24], [40, 40, 64, 64]]])
    gt_labels = torch.tensor([[2, 0]])
    gt_mask = torch.tensor([[True, True]])
    # predictions: every anchor predicts the first gt's box exactly, with class scores 0.5
    pd_boxes = gt_boxes[0, 0].expand(1, a, 4).clone()
    pd_boxes[0, anchors[:, 0] > 32] = gt_boxes[0, 1]
    pd_scores = torch.full((1, a, 3), 0.5)
    asg = task_aligned_assign(pd_scores, pd_boxes, anchors, gt_labels, gt_boxes, gt_mask, topk=4)
    inside0 = (anchors < 24).all(1)
    inside1 = (anchors > 40).all(1)
    assert asg.fg.sum() == 8  # top-4 per gt, all inside their gt
    assert bool((asg.fg[0] <= (inside0 | inside1)).all())
    assert set(asg.labels[0][asg.fg[0] & inside0].tolist()) == {2}
    assert set(asg.labels[0][asg.fg[0] & inside1].tolist()) == {0}
    assert torch.equal(asg.boxes[0][asg.fg[0] & inside1][0], gt_boxes[0, 1])
    # soft targets: best anchor of each gt gets its IoU (1.0 here), only on the gt's class
    assert float(asg.scores[0, :, 2].max()) == pytest.approx(1.0, abs=1e-4)
    assert float(asg.scores[0, ~asg.fg[0]].abs().sum()) == 0
    assert float(asg.scores[0, :, 1].sum()) == 0


def test_assigner_empty_and_padding() -> None:
    anchors = _grid_anchors(32, 8)
    a = anchors.shape[0]
    pd_scores = torch.rand(2, a, 3)
    pd_boxes = torch.rand(2, a, 4) * 16
    pd_boxes[..., 2:] += 16
    empty = task_aligned_assign(pd_scores, pd_boxes, anchors, torch.zeros(2, 0, dtype=torch.long),
                                torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert not empty.fg.any() and empty.scores.sum() == 0
    padded = task_aligned_assign(pd_scores, pd_boxes, anchors, torch.zeros(2, 3, dtype=torch.long),
                                 torch.tensor([[[0.0, 0, 32, 32]] * 3] * 2), torch.zeros(2, 3, dtype=torch.bool))
    assert not padded.fg.any()  # masked-out gts assign nothing even though boxes cover every anchor
