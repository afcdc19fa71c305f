"""`TrainConfig.freeze_bn` (`finetune --freeze-bn`): a step trains the convolutions and leaves every
batch norm layer exactly as it was, statistics and affine weights alike."""
from __future__ import annotations

import torch

from training.engine import freeze_batch_norm
from training.loss import DetectionLoss
from training.model import build_model
from training.presets import make_config


def test_a_step_with_frozen_batch_norm_changes_convolutions_only() -> None:
    torch.manual_seed(0)
    cfg = make_config("baseline")
    model = build_model(cfg)
    model.train()
    freeze_batch_norm(model)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(2, 3, 96, 96) * 3  # far from the initial statistics: an unfrozen layer would move
    labels = torch.tensor([[0], [1]])
    boxes = torch.tensor([[[10.0, 12, 50, 80]], [[5, 5, 60, 40]]])
    loss, _ = DetectionLoss(cfg)(model(x), labels, boxes, torch.tensor([[True], [True]]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    bn_keys = {f"{name}.{k}" for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
               for k in ("weight", "bias", "running_mean", "running_var")}
    assert all(torch.equal(before[k], after[k]) for k in bn_keys)
    conv_keys = [k for k in after if k.endswith("conv.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in conv_keys)
