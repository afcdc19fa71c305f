"""Look at a model's boxes on real frames: a grid of val images with labels (thin white) and detections.

Detections at the model's operating point, coloured by action, as the service sees them (same
runtime, same threshold). For the model card and for eyes, not for scoring.
usage: python scripts/draw_detections.py MODEL.onnx SPLIT_DIR [SPLIT_DIR ...] --out grid.png [--per-split 4]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.runtime import Runtime  # noqa: E402

COLOURS = {"fall": (58, 69, 255), "sit": (32, 176, 255), "stand": (75, 215, 50), "lie": (242, 90, 191)}  # BGR
TILE = 360


def draw(image: np.ndarray, labels: list[list[float]], persons) -> np.ndarray:
    h, w = image.shape[:2]
    out = image.copy()
    for _, cx, cy, bw, bh in labels:
        cv2.rectangle(out, (int((cx - bw / 2) * w), int((cy - bh / 2) * h)), (int((cx + bw / 2) * w),
                      int((cy + bh / 2) * h)), (255, 255, 255), 1)
    for p in persons:
        x1, y1, x2, y2 = (int(v) for v in p.box)
        colour = COLOURS.get(p.action, (255, 210, 100))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(out, f"{p.action} {p.score:.2f}", (x1 + 2, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colour, 1, cv2.LINE_AA)
    r = TILE / max(h, w)
    out = cv2.resize(out, (round(w * r), round(h * r)))
    tile = np.zeros((TILE, TILE, 3), np.uint8)
    tile[: out.shape[0], : out.shape[1]] = out
    return tile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("splits", nargs="+", help="folders with images/ and labels/")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-split", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rt = Runtime(Path(a.model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(a.seed)
    rows = []
    for split in a.splits:
        images = sorted((Path(split) / "images").glob("*.jpg"))
        tiles = []
        for path in rng.choice(images, min(a.per_split, len(images)), replace=False):
            image = cv2.imread(str(path))
            label = Path(split) / "labels" / f"{path.stem}.txt"
            labels = [[float(v) for v in line.split()] for line in label.read_text().splitlines()
                      if len(line.split()) == 5] if label.exists() else []
            tiles.append(draw(image, labels, rt.detect([image])[0]))
        rows.append(np.concatenate(tiles, 1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], 0)
    cv2.imwrite(a.out, grid)
    print(f"{a.out}: {len(rows)} splits x {a.per_split} images at threshold {rt.score_threshold}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
