"""Model structure: presets build and train, counts match published YOLO11n, SPD is a pixel unshuffle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from training.loss import DetectionLoss
from training.model import build_model
from training.model.blocks import SPDConv, space_to_depth
from training.model.yolo import count_params
from training.presets import PRESETS, make_config


def _flops(model, imgsz: int) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(torch.zeros(1, 3, imgsz, imgsz))
    return fc.get_total_flops() / 1e9


def test_baseline_n_matches_published_counts() -> None:
    """Published YOLO11n (80 classes): 2.62 M parameters, 6.5 GFLOPs at 640."""
    model = build_model(make_config("baseline", nc=80))
    assert abs(count_params(model) - 2.62e6) / 2.62e6 < 0.01
    assert abs(_flops(model, 640) - 6.5) / 6.5 < 0.05
    # with our 3 classes only the head's class branch narrows (its width is max(64, nc))
    ours = build_model(make_config("baseline", nc=3))
    body = lambda m: sum(p.numel() for n, p in m.named_parameters() if not n.startswith("head."))  # noqa: E731
    assert body(ours) == body(model)


def test_switches_change_the_network_as_specified() -> None:
    base = build_model(make_config("baseline"))
    spd = build_model(make_config("B"))
    assert sum(isinstance(m, SPDConv) for m in spd.modules()) == 6  # all stride-2 convs but the stem
    assert not any(isinstance(m, SPDConv) for m in base.modules())
    strided = [m for m in base.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 7  # stem + the six that SPDConv replaces
    lqe = build_model(make_config("A"))
    out = lqe(torch.zeros(1, 3, 64, 64))
    assert out.quality is not None and out.quality.shape == (1, 8 * 8 + 4 * 4 + 2 * 2, 1)
    assert base(torch.zeros(1, 3, 64, 64)).quality is None


def test_unknown_preset_or_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("H")
    with pytest.raises(ValueError, match="unknown model config keys"):
        make_config("G", spd=True)
    with pytest.raises(ValueError):
        make_config("G", box_loss="giou")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_runs_forward_and_backward(preset: str) -> None:
    torch.manual_seed(0)
    cfg = make_config(preset)
    model = build_model(cfg).train()
    x = torch.rand(2, 3, 96, 96)
    labels = torch.tensor([[0, 2], [1, 0]])
    boxes = torch.tensor([[[10.0, 12, 50, 80], [40, 30, 90, 94]], [[5, 5, 60, 40], [0, 0, 0, 0]]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, terms = DetectionLoss(cfg)(model(x), labels, boxes, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert set(terms) == ({"box", "cls", "dfl", "quality"} if cfg.lqe else {"box", "cls", "dfl"})
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_space_to_depth_is_pixel_unshuffle_up_to_channel_order() -> None:
    x = torch.randn(2, 3, 8, 6)
    ours = space_to_depth(x)  # channels ordered (block position, channel)
    ref = F.pixel_unshuffle(x, 2)  # channels ordered (channel, block row, block col)
    n, c = 2, 3
    # our block order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets
    perm = [ch * 4 + dy * 2 + dx for (dy, dx) in [(0, 0), (1, 0), (0, 1), (1, 1)] for ch in range(c)]
    assert torch.equal(ours, ref[:, perm])
    assert ours.shape == (n, 4 * c, 4, 3)
