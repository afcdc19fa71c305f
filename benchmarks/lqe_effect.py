#!/usr/bin/env python3
"""Does the localization-quality branch help a trained checkpoint? (val split, no retraining)

G's final score is sigmoid(cls) x q, q = sigmoid(quality). This evaluates one LQE checkpoint twice on
the same images and boxes: with that score, and with sigmoid(cls) alone (q taken as 1). The boxes
are the same; only the ranking (and so NMS and AP) changes. A gap in favour of the reweighted score
says the branch has learned which boxes are well placed; none, or one against it, says it has not
(yet) and G competes with the baseline on its other two changes alone.

usage: python benchmarks/lqe_effect.py [--weights RUN/best.pt] [--data DATA_YAML] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from training.__main__ import DEFAULT_DATA  # noqa: E402
from training.data.dataset import DetectionDataset, load_data_yaml  # noqa: E402
from training.engine import load_checkpoint_model  # noqa: E402
from training.evaluate import coco_map, predict_dataset  # noqa: E402
from training.model.head import HeadOutput  # noqa: E402


@contextmanager
def without_quality():
    """Score = sigmoid(cls) only, for every prediction made while inside."""
    with mock.patch.object(HeadOutput, "scores", lambda out: out.cls.sigmoid()):
        yield


def measure(weights: str | Path, data_yaml: str | Path, limit: int = 0, batch: int = 16) -> dict[str, dict]:
    model, ck = load_checkpoint_model(weights)
    if not ck["model_config"].get("lqe"):
        raise SystemExit(f"{weights}: its head has no quality branch (preset {ck['train_config'].get('preset')})")
    model = model.to(memory_format=torch.channels_last)
    spec = load_data_yaml(data_yaml)
    ds = DetectionDataset(spec.val, spec.names, ck["train_config"]["imgsz"], None, limit=limit)
    with torch.no_grad():
        reweighted = coco_map(ds, predict_dataset(model, ds, batch=batch, progress=False))
        with without_quality():
            cls_only = coco_map(ds, predict_dataset(model, ds, batch=batch, progress=False))
    return {"sigmoid(cls) x q": reweighted, "sigmoid(cls) only": cls_only}


def _fmt(ap: float | None) -> str:
    return "-" if ap is None else f"{ap:.4f}"  # None: no box of that class in the images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="runs/train/G-320-e30/best.pt")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="first N val images only")
    a = ap.parse_args()
    results = measure(a.weights, a.data, a.limit)
    names = list(next(iter(results.values()))["per_class"])
    print("| score | mAP50 | mAP50-95 | " + " | ".join(f"AP50 {n}" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    for label, m in results.items():
        per = " | ".join(_fmt(m["per_class"][n]["AP50"]) for n in names)
        print(f"| {label} | {m['mAP50']:.4f} | {m['mAP50_95']:.4f} | {per} |")
    print(json.dumps({k: {"mAP50": v["mAP50"], "mAP50_95": v["mAP50_95"]} for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
