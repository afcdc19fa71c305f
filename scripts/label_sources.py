#!/usr/bin/env python3
"""Boxes per class and per image source in each split of the fall-action data.

The merged dataset keeps each image's origin in its file name (`...frame_...` and `...rgb_...`:
video frames of two staged scenes; `...fall...` / `...not-fallen...`: the photo set). A class
that comes from one source in train and another in val measures a change of domain, not only how
well the class was learned: this prints the table that shows it, and with `--evaluate` a
checkpoint's AP50 per class on each (split, source) part (up to `--max-images` of each, sampled
with seed 0), which tells a class not learned from a class learned on another kind of image.

usage: python scripts/label_sources.py [DATA_DIR] [--evaluate RUN/best.pt] [--max-images N]
       (DATA_DIR default: $FALLDET_DATA/fall-action)
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.settings import default_data_dir  # noqa: E402
from training.data.dataset import parse_label_file  # noqa: E402

SOURCES = ("frame", "rgb", "not-fallen", "fall")  # first match wins: "not-fallen" before "fall"
NAMES = ("fall", "sit", "stand")


def source_of(name: str) -> str:
    return next((s for s in SOURCES if s in name), "other")


def count(split_dir: Path) -> dict[str, Counter]:
    """source -> Counter of class names and of `images`."""
    table: dict[str, Counter] = defaultdict(Counter)
    for label in sorted((split_dir / "labels").glob("*.txt")):
        row = table[source_of(label.name)]
        row["images"] += 1
        classes, _, _ = parse_label_file(label, nc=len(NAMES))
        row.update(NAMES[c] for c in classes)
    return table


def evaluate_by_source(weights: Path, root: Path, max_images: int) -> list[dict]:
    """AP50 per class of `weights` on each (split, source) part with at least 50 images."""
    import torch

    from training.data.dataset import DetectionDataset
    from training.engine import load_checkpoint_model
    from training.evaluate import coco_map, predict_dataset

    model, ck = load_checkpoint_model(str(weights), "cpu")
    model = model.to(memory_format=torch.channels_last)
    rows = []
    for split in ("train", "val"):
        parts: dict[str, list[Path]] = defaultdict(list)
        for image in sorted((root / split / "images").iterdir()):
            parts[source_of(image.name)].append(image)
        for source, images in sorted(parts.items()):
            if len(images) < 50:
                continue
            images = random.Random(0).sample(images, min(max_images, len(images)))
            ds = DetectionDataset(root / split / "images", list(NAMES), ck["train_config"]["imgsz"], None,
                                  only=images)
            metrics = coco_map(ds, predict_dataset(model, ds, batch=32, device="cpu", conf=0.001, iou=0.7))
            rows.append({"split": split, "source": source, "images": len(images), "mAP50": metrics["mAP50"],
                         **{n: metrics["per_class"][n]["AP50"] for n in NAMES}})
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, nargs="?", default=default_data_dir() / "fall-action")
    ap.add_argument("--evaluate", type=Path, metavar="WEIGHTS", help="a training checkpoint (.pt)")
    ap.add_argument("--max-images", type=int, default=250)
    args = ap.parse_args(argv)
    print(f"{'split':<6} {'source':<11} {'images':>6} " + " ".join(f"{n:>6}" for n in NAMES))
    for split in ("train", "val"):
        for source, row in sorted(count(args.data_dir / split).items()):
            print(f"{split:<6} {source:<11} {row['images']:>6} " + " ".join(f"{row[n]:>6}" for n in NAMES))
    if args.evaluate:
        print(f"\nAP50 of {args.evaluate} per part (at most {args.max_images} images each; '-': no box of the class)")
        print(f"{'split':<6} {'source':<11} {'images':>6} " + " ".join(f"{n:>6}" for n in (*NAMES, "mAP50")))
        for row in evaluate_by_source(args.evaluate, args.data_dir, args.max_images):
            cells = " ".join(f"{row[n]:>6.3f}" if row[n] is not None else f"{'-':>6}" for n in (*NAMES, "mAP50"))
            print(f"{row['split']:<6} {row['source']:<11} {row['images']:>6} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
