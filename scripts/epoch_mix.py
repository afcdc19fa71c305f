#!/usr/bin/env python3
"""What one training epoch holds: expected images and boxes per source and label, as drawn.

The sampler draws each source by its `weight` and, inside a source, an image by its labels'
`boost` (training/configs/all-sources.yaml). This prints the expected count of images and of boxes
of each label in an epoch of `--epoch-size` samples (before mosaic, which adds three partners per
sample drawn the same way), and the postures they train: exact (`fall`, `sit`, `stand`, `lie`),
coarse ("a person, not a fall") or fall-only. Reads label files only (no images).

usage: python scripts/epoch_mix.py [--data training/configs/all-sources.yaml] [--epoch-size 2500]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from training.data.dataset import IMAGE_EXTS, label_path, parse_label_file  # noqa: E402
from training.data.sources import DROP, load_data_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO_ROOT / "training" / "configs" / "all-sources.yaml"))
    ap.add_argument("--epoch-size", type=int, default=2500)
    a = ap.parse_args(argv)
    spec = load_data_config(a.data)
    total_weight = sum(s.weight for s in spec.sources)
    rows, posture = [], Counter()
    for src in spec.sources:
        images = sorted(p for p in src.train.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        labels = [parse_label_file(label_path(p), len(src.label_names))[0] for p in images]
        boost = dict(src.boost)
        weights = [max([1.0] + [boost.get(int(x), 1.0) for x in lab]) for lab in labels]
        share = src.weight / total_weight * a.epoch_size  # samples of this source per epoch
        per_weight = share / sum(weights)
        boxes = Counter()
        for lab, w in zip(labels, weights):
            for x in lab:
                boxes[src.label_names[int(x)]] += w * per_weight
        rows.append((src.name, len(images), share, boxes))
        for name, n in boxes.items():
            t = src.to_target[src.label_names.index(name)]
            if t == DROP:
                continue
            desc, allowed = spec.space.targets[t]
            kind = desc if len(allowed) == 1 else ("ignored" if not allowed else f"coarse ({desc})")
            posture[kind + (" [fall-only source]" if src.trains is not None else "")] += n
    print(f"one epoch of {a.epoch_size} samples (before mosaic partners)\n")
    print("| source | train images | samples per epoch | passes over the source | boxes per epoch by label |")
    print("|---|---|---|---|---|")
    for name, n, share, boxes in rows:
        mix = ", ".join(f"{k} {v:.0f}" for k, v in sorted(boxes.items(), key=lambda kv: -kv[1]))
        print(f"| {name} | {n} | {share:.0f} | {share / n:.2f} | {mix} |")
    print("\n| what the boxes train | boxes per epoch |\n|---|---|")
    for kind, n in sorted(posture.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {n:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
