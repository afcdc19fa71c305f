"""The duplicate-overlap study behind `track_duplicate_iou`: label parsing by hand, a real smoke run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

study = load_script("benchmarks/duplicate_overlap.py")


def test_label_boxes_turn_normalised_centres_into_pixel_corners(tmp_path: Path) -> None:
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.5 0.5 0.25\n\n2 0.25 0.75 0.1 0.5\n")
    boxes = study.label_boxes(label, width=200, height=100)
    assert np.allclose(boxes, [[50, 37.5, 150, 62.5], [40, 50, 60, 100]])
    assert study.label_boxes(tmp_path / "missing.txt", 10, 10).shape == (0, 4)


def test_pairs_are_each_unordered_pair_once() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], dtype=float)
    pairs = [(i, j, round(v, 3)) for i, j, v in study.pair_ious(boxes)]
    assert pairs == [(0, 1, 0.5), (0, 2, 0.0), (1, 2, 0.0)]


def test_study_runs_on_real_val_images(model_path: Path, data_dir: Path, capsys) -> None:
    split = data_dir / "fall-action" / "val"
    if not (split / "images").is_dir():
        pytest.skip(f"no val split under {data_dir}")
    assert study.main(["--model", str(model_path), "--split", str(split), "--limit", "40"]) == 0
    out = capsys.readouterr().out
    print(out)
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("0.")]
    assert [float(r[0]) for r in rows] == list(study.THRESHOLDS)
    merged_same = [int(r[1]) for r in rows]  # a lower threshold merges at least as many pairs
    assert merged_same == sorted(merged_same, reverse=True)
