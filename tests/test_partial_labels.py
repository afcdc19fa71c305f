"""A source that boxes only the fallen (fall-poses): its images train the `fall` logit and nothing
else, its mosaics stay within it, and its rare-posture boost and train-only sources load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.dataset import AugmentConfig, DetectionDataset, collate
from training.data.sources import load_data_config
from training.loss import DetectionLoss, set_bce
from training.model import build_model
from training.presets import make_config
from test_training_sources import _source


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    _source(tmp_path, "rooms", ["fall", "lie", "normal"],
            {"r0": ["2 0.5 0.5 0.2 0.6"], "r1": ["1 0.5 0.5 0.6 0.2"], "r2": ["0 0.5 0.7 0.6 0.2"]})
    _source(tmp_path, "poses", ["fall"], {f"p{i}": ["0 0.5 0.6 0.7 0.3"] for i in range(4)})
    _source(tmp_path, "crowd", ["person"], {"c0": ["0 0.3 0.5 0.2 0.6", "0 0.7 0.5 0.2 0.6"]}, val=False)
    cfg = tmp_path / "mix.yaml"
    cfg.write_text("names: [fall, sit, stand, lie]\nsources:\n"
                   "  rooms: {path: rooms, classes: {fall: fall, lie: lie, normal: [sit, stand]}, boost: {lie: 3.0}}\n"
                   "  poses: {path: poses, classes: {fall: fall}, trains: [fall]}\n"
                   "  crowd: {path: crowd, classes: {person: [sit, stand]}}\n")
    monkeypatch.setenv("FALLDET_DATA", str(tmp_path))
    return cfg


def test_config_reads_trains_boost_and_train_only_sources(mixed) -> None:
    spec = load_data_config(mixed)
    rooms, poses, crowd = spec.sources
    assert poses.trains == (0,) and not poses.boxes_everyone and rooms.boxes_everyone
    assert rooms.boost == ((1, 3.0),) and crowd.val is None
    val = DetectionDataset.from_spec(spec, "val", 64, None)
    assert sorted(val.sources) == ["poses", "rooms"]  # a train-only source has no val part


@pytest.mark.parametrize("body, message", [
    ("  p: {path: poses, classes: {fall: fall}, trains: [sit]}\n", "labels classes \\['fall'\\] it does not train"),
    ("  p: {path: poses, classes: {fall: fall}, boost: {lie: 2}}\n", "boosts a label it does not have"),
    ("  p: {path: poses, classes: {fall: fall}, trains: [jump]}\n", "not model classes"),
])
def test_bad_trains_or_boost_is_a_clear_error(mixed, tmp_path, body, message) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("names: [fall, sit, stand, lie]\nsources:\n" + body)
    with pytest.raises(ValueError, match=message):
        load_data_config(cfg)


def test_boost_draws_rare_postures_more_often_within_their_source(mixed) -> None:
    ds = DetectionDataset.from_spec(load_data_config(mixed), "train", 64, None)
    w = {s.image.stem: p for s, p in zip(ds.samples, ds.sample_weights)}
    assert w["r1"] == pytest.approx(3 * w["r0"]) and w["r2"] == pytest.approx(w["r0"])
    share = lambda prefix: sum(p for k, p in w.items() if k.startswith(prefix))  # noqa: E731
    assert share("r") == pytest.approx(share("p")) == pytest.approx(share("c"))  # sources keep equal shares


def test_class_masks_and_mosaics_of_a_partial_source(mixed) -> None:
    ds = DetectionDataset.from_spec(load_data_config(mixed), "train", 64, AugmentConfig())
    poses = ds.source_indices("poses")
    batch = collate([ds[i] for i in [0, poses[0]]])
    assert batch["class_mask"].tolist() == [[True] * 4, [True, False, False, False]]
    rng = np.random.default_rng(0)
    for i in poses:  # its mosaics take partners from itself only: the mask holds over the whole image
        assert set(ds._mosaic_partners(i, rng)) <= set(poses)
    for _ in range(20):  # and the other sources never take a fall-poses image as a partner
        assert not set(ds._mosaic_partners(0, rng)) & set(poses)


def test_unboxed_regions_of_a_fall_only_source_give_no_loss_to_the_other_classes() -> None:
    logits = torch.randn(2, 50, 4, requires_grad=True)
    allowed = torch.zeros(2, 50, 4, dtype=torch.bool)
    allowed[:, :5, 0] = True  # anchors on the fallen person's box: `fall`
    target = torch.zeros(2, 50)
    target[:, :5] = 0.8
    trained = torch.tensor([[True, True, True, True], [True, False, False, False]]).unsqueeze(1)
    set_bce(logits, allowed, target, trained).sum().backward()
    g = logits.grad
    assert torch.count_nonzero(g[1, :, 1:]) == 0  # sit / stand / lie: no gradient anywhere in image 1
    assert torch.count_nonzero(g[1, 5:, 0]) == 45  # but "no fall here" is learned on its unboxed anchors
    assert torch.count_nonzero(g[0, 5:, 1:]) == 45 * 3  # a fully labelled image trains every class


def test_the_detection_loss_applies_the_class_mask() -> None:
    torch.manual_seed(0)
    cfg = make_config("G-mnv2", nc=4)
    model = build_model(cfg).train()
    out = model(torch.rand(2, 3, 64, 64))
    loss_fn = DetectionLoss(cfg)
    labels = torch.tensor([[0], [0]])
    boxes = torch.tensor([[[10.0, 30.0, 50.0, 50.0]], [[10.0, 30.0, 50.0, 50.0]]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    full, _ = loss_fn(out, labels, boxes, mask)
    only_fall = torch.tensor([[True, False, False, False]] * 2)
    partial, terms = loss_fn(out, labels, boxes, mask, only_fall)
    assert float(partial.detach()) < float(full.detach()) and np.isfinite(terms["cls"])
    model.zero_grad()
    partial.backward()
    w = model.head.cls_out[0].weight.grad  # the first level's class logits conv: [nc, C, 1, 1]
    assert torch.count_nonzero(w[1:]) == 0 and torch.count_nonzero(w[0]) > 0
