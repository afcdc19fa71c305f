#!/usr/bin/env python3
"""How much do two boxes of one person overlap, against two different people? (val split)

Sets the tracker's `track_duplicate_iou`: above it, two boxes are taken for one person and only the
higher-scored one is tracked. Too high, and the detector's second box on a person (its NMS is per
class and at IoU 0.7) becomes a second track and a second alert; too low, and a real person next
to another is never tracked. This prints, at several IoUs, how many pairs of the model's detections
that both match one labelled person (IoU >= 0.3 with it) it would merge, and how many pairs of
labelled people (distinct by definition) it would wrongly merge.

usage: python benchmarks/duplicate_overlap.py [--model PATH] [--split DIR] [--score S] [--limit N]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.runtime import Runtime  # noqa: E402
from service.settings import DEFAULT_MODEL, default_data_dir  # noqa: E402
from service.tracking import box_iou  # noqa: E402
from training.boxes import xywhn_to_xyxy  # noqa: E402
from training.data.dataset import label_path, parse_label_file, scan_split  # noqa: E402

THRESHOLDS = (0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


def label_boxes(label: Path, width: int, height: int) -> np.ndarray:
    """A YOLO label file (the training parser's rules) -> [N, 4] pixel x1, y1, x2, y2."""
    _, boxes, _ = parse_label_file(label, nc=3)
    return xywhn_to_xyxy(boxes.astype(np.float64), width, height)


def pair_ious(boxes: np.ndarray) -> list[tuple[int, int, float]]:
    ious = box_iou(boxes, boxes)
    return [(i, j, float(ious[i, j])) for i, j in itertools.combinations(range(len(boxes)), 2)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--split", type=Path, default=default_data_dir() / "fall-action" / "val")
    ap.add_argument("--score", type=float, default=None, help="detection threshold (default: the model's)")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (a smoke run)")
    args = ap.parse_args(argv)
    runtime = Runtime(args.model, score_threshold=args.score)
    same_person, distinct_people = [], []
    images = [s.image for s in scan_split(args.split / "images", nc=3).samples]
    images = images[:args.limit] if args.limit > 0 else images
    for path in images:
        image = cv2.imread(str(path))
        if image is None:
            continue
        truth = label_boxes(label_path(path), image.shape[1], image.shape[0])
        distinct_people += [iou for _, _, iou in pair_ious(truth)]
        dets = np.asarray([p.box for p in runtime.detect([image])[0]], dtype=np.float64).reshape(-1, 4)
        if len(dets) < 2 or len(truth) == 0:
            continue
        to_truth = box_iou(dets, truth)
        person, quality = to_truth.argmax(axis=1), to_truth.max(axis=1)
        same_person += [iou for i, j, iou in pair_ious(dets)
                        if quality[i] >= 0.3 and quality[j] >= 0.3 and person[i] == person[j]]
    same, distinct = np.asarray(same_person), np.asarray(distinct_people)
    print(f"model {args.model.name}, score threshold {runtime.score_threshold:.3f} "
          f"({runtime.score_threshold_source}), {len(images)} images of {args.split}")
    print(f"pairs: {len(same)} of boxes on one person, {len(distinct)} of labelled distinct people "
          f"(largest IoU {distinct.max() if len(distinct) else float('nan'):.3f})")
    print("duplicate IoU  one-person pairs merged  distinct-people pairs merged")
    for t in THRESHOLDS:
        print(f"{t:>13.2f}  {int((same > t).sum()):>10d} / {len(same):<11d}  "
              f"{int((distinct > t).sum()):>10d} / {len(distinct)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
