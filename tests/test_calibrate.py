"""The operating point chosen at export: F1 over hand-made detections with known matches."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from training.calibrate import best_f1, match_detections, operating_point


def dataset(images: list[list[tuple[int, tuple[float, float, float, float]]]]) -> SimpleNamespace:
    """A stand-in for DetectionDataset: 100 x 100 images with (class, normalized cx cy w h) labels."""
    samples = [SimpleNamespace(labels=np.array([c for c, _ in gts], np.int64), source="one",
                               boxes_xywhn=np.array([b for _, b in gts], np.float32).reshape(-1, 4)) for gts in images]
    return SimpleNamespace(samples=samples, images=[np.zeros((100, 100, 3), np.uint8)] * len(images),
                           names=["fall", "sit", "stand"], sources={})


def test_best_f1_picks_the_score_that_balances_precision_and_recall():
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2])
    hits = np.array([True, True, False, True, False])
    # 3 ground truths; F1 at each cut: 0.5, 0.8, 0.667, 0.857 (3 tp, 1 fp), 0.75
    result = best_f1(scores, hits, n_gt=3)
    assert result == {"score_threshold": 0.3, "f1": 0.8571, "precision": 0.75, "recall": 1.0}


def test_best_f1_only_offers_thresholds_that_can_be_set():
    # three detections share 0.5: a threshold admits all or none, never just the true one (F1 1.0)
    result = best_f1(np.array([0.9, 0.5, 0.5, 0.5]), np.array([True, True, False, False]), n_gt=2)
    assert result["score_threshold"] == 0.9 and result["f1"] == pytest.approx(2 / 3, abs=1e-4)


def test_best_f1_without_detections_or_ground_truth():
    assert best_f1(np.array([]), np.array([], bool), 3)["score_threshold"] is None
    assert best_f1(np.array([0.5]), np.array([False]), 0)["score_threshold"] is None
    assert best_f1(np.array([0.5, 0.4]), np.array([False, False]), 2)["score_threshold"] is None


def test_matching_is_greedy_by_score_and_one_to_one():
    ds = dataset([[(0, (0.3, 0.3, 0.2, 0.2)), (2, (0.7, 0.7, 0.2, 0.2))]])
    dets = [np.array([
        [20, 20, 40, 40, 0.4, 0],  # on the fall: second best, a duplicate below
        [21, 21, 41, 41, 0.9, 1],  # on the fall too, best score, wrong class: any-class match takes it
        [60, 60, 80, 80, 0.6, 2],  # on the stand
        [0, 0, 5, 5, 0.7, 2],  # nothing there
    ], np.float32)]
    scores, hits, n_gt = match_detections(ds, dets)
    assert n_gt == 2 and scores.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.4])
    assert hits.tolist() == [True, False, True, False]
    scores, hits, n_gt = match_detections(ds, dets, class_id=0)  # the fall class alone
    assert n_gt == 1 and scores.tolist() == pytest.approx([0.4]) and hits.tolist() == [True]


def test_operating_point_reports_person_and_per_class_thresholds():
    ds = dataset([[(0, (0.5, 0.5, 0.4, 0.4))], [(2, (0.5, 0.5, 0.4, 0.4))], []])
    dets = [np.array([[30, 30, 70, 70, 0.3, 0]], np.float32),
            np.array([[30, 30, 70, 70, 0.2, 2]], np.float32),
            np.array([[30, 30, 70, 70, 0.1, 1]], np.float32)]  # a false person in an empty image
    op = operating_point(ds, dets)
    assert op["score_threshold"] == 0.2 and op["person"]["f1"] == 1.0 and op["images"] == 3
    assert op["per_class"]["fall"]["score_threshold"] == 0.3
    assert op["per_class"]["sit"]["score_threshold"] is None  # no sitting person in these images


def test_a_source_that_boxes_only_the_fallen_does_not_vote_on_person_precision() -> None:
    from training.calibrate import match_detections

    ds = dataset([[(0, (0.5, 0.5, 0.2, 0.2))], [(0, (0.5, 0.5, 0.2, 0.2))]])
    ds.samples[1].source = "poses"
    ds.sources = {"one": SimpleNamespace(boxes_everyone=True), "poses": SimpleNamespace(boxes_everyone=False)}
    bystander = np.array([[10, 10, 30, 30, 0.9, 2]], np.float32)  # an unboxed standing person
    hit = np.array([[40, 40, 60, 60, 0.8, 0]], np.float32)
    scores, hits, n_gt = match_detections(ds, [hit, np.concatenate([bystander, hit])])
    assert n_gt == 1 and hits.tolist() == [True]  # image 2 left out of "is there a person?"
    _, fall_hits, fall_gt = match_detections(ds, [hit, np.concatenate([bystander, hit])], class_id=0)
    assert fall_gt == 2 and fall_hits.tolist() == [True, True]  # its falls still count for `fall`
