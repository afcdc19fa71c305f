"""benchmarks/lqe_effect.py: its 'q taken as 1' switch really drops the quality factor, and only inside."""
from __future__ import annotations

import torch

from conftest import load_script
from training.model import build_model
from training.presets import make_config


def test_without_quality_scores_are_sigmoid_cls_and_the_patch_is_undone() -> None:
    lqe_effect = load_script("benchmarks/lqe_effect.py")
    torch.manual_seed(0)
    model = build_model(make_config("G", nc=3)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        reweighted = model.predict(x)[1]
        with lqe_effect.without_quality():
            cls_only = model.predict(x)[1]
        again = model.predict(x)[1]
    assert torch.allclose(cls_only, out.cls.sigmoid())
    assert torch.allclose(reweighted, out.cls.sigmoid() * out.quality.sigmoid())
    assert (cls_only > reweighted).all()  # q = sigmoid(.) < 1 lowers every score
    assert torch.equal(again, reweighted)
