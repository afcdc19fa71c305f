"""The ONNX runtime: pre-processing identical to the independent evaluator, boxes mapped back,
batching, metadata; and on the shipped model, the same boxes as the evaluator on val images."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO_ROOT, TINY_ROWS, make_tiny_model
from service.cuda_check import cuda_problem
from service.runtime import ModelContractError, Runtime, choose_providers, letterbox

# The team's independent evaluator, when it sits beside the checkout (not part of the repository).
EVALUATOR = Path(os.environ.get("FALLDET_EVALUATOR") or REPO_ROOT.parent / "shared" / "tools" / "evaluate_detector.py")


@pytest.fixture(scope="module")
def evaluator():
    """The team's independent evaluator, imported by path when it sits beside the checkout (it
    imports nothing from the project; it is not part of the repository)."""
    pytest.importorskip("pycocotools")
    if not EVALUATOR.is_file():
        pytest.skip(f"parity with the independent evaluator not checked: {EVALUATOR} is not beside this "
                    "checkout (a team tool, not part of the repository)")
    spec = importlib.util.spec_from_file_location("evaluate_detector", EVALUATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (640, 640), (333, 517), (1000, 90), (7, 5)])
def test_letterbox_is_the_evaluators(evaluator, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = letterbox(image, 640)
    theirs = evaluator.letterbox(image, 640)
    assert ours[1:] == theirs[1:]
    np.testing.assert_array_equal(ours[0], theirs[0])


def _expected(row: list[float], w: int, h: int, size: int) -> tuple[float, float, float, float]:
    """Map a letterbox-pixel box back by hand: the geometry of a centred, aspect-keeping resize."""
    r = min(size / h, size / w)
    left, top = (size - round(w * r)) // 2, (size - round(h * r)) // 2
    x1, y1, x2, y2 = row[:4]
    return (min(max((x1 - left) / r, 0), w), min(max((y1 - top) / r, 0), h),
            min(max((x2 - left) / r, 0), w), min(max((y2 - top) / r, 0), h))


@pytest.mark.parametrize("shape", [(480, 640), (720, 1280), (640, 480), (64, 64)])
def test_boxes_are_mapped_back_to_frame_pixels(tiny_model, shape):
    runtime = Runtime(tiny_model, ["CPUExecutionProvider"])
    h, w = shape
    persons = runtime.detect([np.zeros((h, w, 3), np.uint8)])[0]
    kept = [row for row in TINY_ROWS if row[4] >= 0.25]
    assert len(persons) == len(kept)
    for person, row in zip(persons, kept):
        np.testing.assert_allclose(person.box, _expected(row, w, h, 64), atol=1e-3)
        assert person.score == pytest.approx(row[4])
        assert person.class_id == int(row[5]) and person.track_id is None
        x1, y1, x2, y2 = person.box
        assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


def test_score_threshold_applies(tiny_model):
    low = Runtime(tiny_model, ["CPUExecutionProvider"], score_threshold=0.05)
    assert sorted(p.score for p in low.detect([np.zeros((64, 64, 3), np.uint8)])[0]) == pytest.approx([0.1, 0.6, 0.9])


@pytest.mark.parametrize("operating_point, settings_value, expected_scores, source", [
    ('{"score_threshold": 0.05}', None, [0.1, 0.6, 0.9], "model operating point"),
    ('{"score_threshold": 0.05}', 0.5, [0.6, 0.9], "settings"),
    (None, None, [0.6, 0.9], "default"),
    ('{"score_threshold": 0}', None, [0.6, 0.9], "default"),  # not a usable threshold
    ('not json', None, [0.6, 0.9], "default"),
])
def test_score_threshold_follows_the_models_operating_point_unless_set(tmp_path, operating_point, settings_value,
                                                                       expected_scores, source):
    meta = {"operating_point": operating_point} if operating_point is not None else None
    model = make_tiny_model(tmp_path / "m.onnx", metadata=meta)
    runtime = Runtime(model, ["CPUExecutionProvider"], score_threshold=settings_value)
    assert runtime.score_threshold_source == source
    assert sorted(p.score for p in runtime.detect([np.zeros((64, 64, 3), np.uint8)])[0]) == pytest.approx(expected_scores)


def test_metadata_and_providers(tiny_model):
    runtime = Runtime(tiny_model)
    assert runtime.names == ["fall", "sit", "stand"]
    assert (runtime.imgsz, runtime.stride) == (64, 32)
    assert runtime.metadata["imgsz"] == "64"
    assert runtime.providers and set(runtime.providers) <= set(ort.get_available_providers())
    assert runtime.providers[-1] == "CPUExecutionProvider"


def test_choose_providers_puts_cuda_first_when_it_can_run():
    chosen = choose_providers()
    assert chosen[-1] == "CPUExecutionProvider"
    if cuda_problem() is None:
        assert chosen[0] == "CUDAExecutionProvider"
    else:  # asked for anyway, CUDA would only print onnxruntime's red library error
        assert "CUDAExecutionProvider" not in chosen
        assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("fixed_batch", [None, 1])
def test_batches_of_mixed_sizes(tmp_path, fixed_batch):
    """A dynamic batch axis runs once per chunk; a fixed batch of 1 is chunked frame by frame."""
    model = make_tiny_model(tmp_path / "m.onnx", fixed_batch=fixed_batch)
    runtime = Runtime(model, ["CPUExecutionProvider"])
    shapes = [(480, 640), (720, 1280), (100, 50), (64, 64), (300, 301)]
    results = runtime.detect([np.zeros((h, w, 3), np.uint8) for h, w in shapes])
    assert len(results) == len(shapes)
    for (h, w), persons in zip(shapes, results):
        np.testing.assert_allclose(persons[0].box, _expected(TINY_ROWS[0], w, h, 64), atol=1e-3)


def test_contract_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        Runtime(tmp_path / "missing.onnx")
    onnx = pytest.importorskip("onnx")
    path = make_tiny_model(tmp_path / "nometa.onnx")
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, path)
    with pytest.raises(ModelContractError, match="names"):
        Runtime(path, ["CPUExecutionProvider"])


def test_rejects_non_bgr_uint8_frames(tiny_model):
    runtime = Runtime(tiny_model, ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        runtime.detect([np.zeros((10, 10), np.uint8)])


# -- the shipped model ---------------------------------------------------------------------------------
def _evaluator_detections(evaluator, model_path: Path, split: Path, limit: int, threshold: float,
                          monkeypatch) -> dict[int, list[dict]]:
    """Run the evaluator's own main() and capture the detections it hands to pycocotools."""
    captured: list[dict] = []
    real = evaluator.COCO.loadRes

    def spy(self, dets):
        captured.extend(dets)
        return real(self, dets)

    monkeypatch.setattr(evaluator.COCO, "loadRes", spy)
    monkeypatch.setattr(sys, "argv", ["evaluate_detector.py", str(model_path), str(split), "--limit", str(limit),
                                      "--score-threshold", str(threshold)])
    assert evaluator.main() == 0
    by_image: dict[int, list[dict]] = {}
    for det in captured:
        if det["score"] >= threshold:  # the evaluator keeps every row with score > 0
            by_image.setdefault(det["image_id"], []).append(det)
    return by_image


def _sorted(rows: list[list[float]]) -> np.ndarray:
    """Rows x1 y1 x2 y2 score class in a canonical order (score first; ties broken by the box)."""
    table = np.array(rows, np.float64).reshape(-1, 6)
    return table[np.lexsort(table.T[[3, 2, 1, 0, 5]].tolist() + [-table[:, 4]])] if len(table) else table


def _as_rows(dets: list[dict]) -> np.ndarray:
    return _sorted([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3],
                     d["score"], d["category_id"]] for d in dets])


def _person_rows(persons) -> np.ndarray:
    return _sorted([[*p.box, p.score, p.class_id] for p in persons])


def test_runtime_results_equal_the_evaluators_boxes(evaluator, model_path, data_dir, monkeypatch):
    """The evaluator's default threshold (0.001), so that even an early model has rows to compare."""
    split = data_dir / "fall-action" / "val"
    if not split.is_dir():
        pytest.skip(f"{split} is missing")
    limit, threshold = 6, 0.001
    expected = _evaluator_detections(evaluator, model_path, split, limit, threshold, monkeypatch)
    paths = [p for p, _ in evaluator.load_split(str(split))][:limit]
    images = [cv2.imread(p) for p in paths]
    # one person per row, as the file returns them (the service merges a box's classes into one person)
    runtime = Runtime(model_path, ["CPUExecutionProvider"], score_threshold=threshold, merge_classes=False)
    assert sum(len(v) for v in expected.values()) > 0, "the evaluator found nothing to compare"
    # one image per call, as the evaluator runs: the same numbers
    singles = [runtime.detect([image])[0] for image in images]
    for i, persons in enumerate(singles):
        np.testing.assert_allclose(_person_rows(persons), _as_rows(expected.get(i, [])), atol=1e-3,
                                   err_msg=paths[i])
    # one batch of all of them: batched convolutions may differ in the last bits, so every confident
    # single-image row must have its twin in the batched result
    batched = runtime.detect(images)
    for i, persons in enumerate(singles):
        theirs = _person_rows(batched[i])
        for row in _person_rows(persons):
            if row[4] < 0.01:
                continue
            close = np.all(np.abs(theirs[:, :5] - row[:5]) <= [0.5, 0.5, 0.5, 0.5, 1e-3], axis=1) \
                & (theirs[:, 5] == row[5])
            assert close.any(), (paths[i], row)


def test_rgb_input_gives_the_same_result(model_path, val_images):
    runtime = Runtime(model_path, ["CPUExecutionProvider"])
    image = cv2.imread(str(val_images[0]))
    bgr = runtime.detect([image])[0]
    rgb = runtime.detect([np.ascontiguousarray(image[:, :, ::-1])], rgb=True)[0]
    np.testing.assert_allclose(_person_rows(bgr), _person_rows(rgb), atol=1e-4)
