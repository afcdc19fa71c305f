"""What the model calls each labelled person, per source label, at its operating point.

For every val box of every source (`lie` in bed, `danger`, `normal`, ...), the detection that
overlaps it best (IoU >= 0.5, score >= the file's operating point) and that detection's class.
Answers questions mAP hides: is a person in bed ever called `fall`? Does a coarse `normal` person
come out as sitting or standing? Runs the ONNX file through the service's runtime.
usage: python scripts/label_calls.py MODEL.onnx [--data training/configs/all-sources.yaml]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.runtime import Runtime  # noqa: E402
from training.data.dataset import label_path, parse_label_file  # noqa: E402
from training.data.sources import load_data_config  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One box a [4] against boxes b [n,4] (xyxy)."""
    lt, rb = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 1)
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[:, 2:] - b[:, :2], 1) - inter + 1e-9)


def calls(model: Path, data: Path) -> dict[str, dict[str, dict]]:
    rt = Runtime(model, providers=["CPUExecutionProvider"])
    spec = load_data_config(data)
    out: dict[str, dict[str, dict]] = {}
    for source in spec.sources:
        if source.val is None:
            continue
        counts: dict[str, Counter] = defaultdict(Counter)
        for path in sorted(source.val.glob("*.jpg")):
            image = cv2.imread(str(path))
            h, w = image.shape[:2]
            labels, boxes, _ = parse_label_file(label_path(path), len(source.label_names))
            persons = rt.detect([image])[0]
            det = np.array([p.box for p in persons], np.float32).reshape(-1, 4)
            for label, (cx, cy, bw, bh) in zip(labels, boxes):
                gt = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                o = iou(gt, det) if len(det) else np.zeros(0)
                best = int(o.argmax()) if len(o) else -1
                called = persons[best].action if best >= 0 and o[best] >= 0.5 else "missed"
                counts[source.label_names[label]][called] += 1
        out[source.name] = {name: {"boxes": sum(c.values()), **dict(c.most_common())} for name, c in counts.items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "training/configs/all-sources.yaml"))
    a = ap.parse_args()
    result = calls(Path(a.model), Path(a.data))
    print(json.dumps(result, indent=1))
    print("| source | label | boxes | called (share of the label's boxes) |", file=sys.stderr)
    print("|---|---|---|---|", file=sys.stderr)
    for source, labels in result.items():
        for name, c in labels.items():
            n = c.pop("boxes")
            text = ", ".join(f"{k} {v / n:.2f}" for k, v in c.items())
            print(f"| {source} | {name} | {n} | {text} |", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
