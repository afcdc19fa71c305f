#!/usr/bin/env python3
"""Boxes per class and per image source in each split of the fall-action data.

The merged dataset keeps each image's origin in its file name (`...frame_...` and `...rgb_...`:
video frames of two staged scenes; `...fall...` / `...not-fallen...`: the photo set). A class
that comes from one source in train and another in val measures a change of domain, not only how
well the class was learned: this prints the table that shows it.

usage: python scripts/label_sources.py [DATA_DIR]   (default: $FALLDET_DATA/fall-action)
"""
from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

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
        for line in label.read_text().splitlines():
            if line.strip():
                row[NAMES[int(line.split()[0])]] += 1
    return table


def main(argv: list[str]) -> int:
    default = Path(os.environ.get("FALLDET_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    root = Path(argv[0]) if argv else default / "fall-action"
    print(f"{'split':<6} {'source':<11} {'images':>6} " + " ".join(f"{n:>6}" for n in NAMES))
    for split in ("train", "val"):
        for source, row in sorted(count(root / split).items()):
            print(f"{split:<6} {source:<11} {row['images']:>6} " + " ".join(f"{row[n]:>6}" for n in NAMES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
