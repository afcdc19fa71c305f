"""The per-source label table (scripts/label_sources.py) on a hand-made split."""
from __future__ import annotations

from pathlib import Path

from conftest import load_script

label_sources = load_script("scripts/label_sources.py")


def test_sources_come_from_file_names_not_fallen_before_fall() -> None:
    assert label_sources.source_of("train-not-fallen001_jpg.rf.9f.txt") == "not-fallen"
    assert label_sources.source_of("test-fall034_jpg.rf.47.txt") == "fall"
    assert label_sources.source_of("train-rgb_0177_png.rf.ec.txt") == "rgb"
    assert label_sources.source_of("test-frame_103_jpg.rf.f7.txt") == "frame"
    assert label_sources.source_of("camera7.txt") == "other"


def test_count_tallies_images_and_boxes_per_class(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a-rgb_1.txt").write_text("1 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n")
    (labels / "a-rgb_2.txt").write_text("")  # an image with nobody in it still counts
    (labels / "b-not-fallen3.txt").write_text("0 0.5 0.5 0.2 0.2\n\n")
    table = label_sources.count(tmp_path)
    assert table["rgb"] == {"images": 2, "sit": 1, "stand": 1}
    assert table["not-fallen"] == {"images": 1, "fall": 1}
