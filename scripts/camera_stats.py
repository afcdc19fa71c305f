"""What each source's cameras look like: grey (infrared), dark, sharpness, person size.

The augmentation for unseen cameras is chosen from these numbers (docs/data.md), not assumed.
usage: python scripts/camera_stats.py [--every 3] [--sources fall-action care-home ip-cameras]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np

SMALL = 0.1  # sqrt(box area) under this share of the image: a small, far-away person


def image_stats(path: Path) -> tuple[bool, bool, float]:
    """(grey, dark, sharpness) of one image."""
    img = cv2.imread(str(path))
    b, g, r = (img[..., i].astype(np.int16) for i in range(3))
    grey = bool(np.abs(b - g).mean() < 3 and np.abs(g - r).mean() < 3)
    sharp = float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())
    return grey, bool(img.mean() < 60), sharp


def split_stats(split_dir: Path, every: int) -> dict:
    images = sorted(p for p in (split_dir / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = images[::every]
    grey = dark = 0
    sharp, heights, sides = [], [], []
    for p in images:
        g, d, s = image_stats(p)
        grey, dark = grey + g, dark + d
        sharp.append(s)
        label = split_dir / "labels" / f"{p.stem}.txt"
        if label.exists():
            for line in label.read_text().splitlines():
                v = line.split()
                if len(v) == 5:
                    heights.append(float(v[4]))
                    sides.append(np.sqrt(float(v[3]) * float(v[4])))
    n = max(len(images), 1)
    return {"images": len(images), "grey": grey / n, "dark": dark / n, "sharpness": float(np.median(sharp)),
            "height": float(np.median(heights)) if heights else 0.0,
            "small": float(np.mean(np.array(sides) < SMALL)) if sides else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("FALLDET_DATA", "../shared/data"))
    ap.add_argument("--every", type=int, default=3, help="look at every N-th image")
    ap.add_argument("--sources", nargs="+", default=["fall-action", "care-home", "ip-cameras"])
    a = ap.parse_args()
    print("| source | split | grey | dark | sharpness (median) | person height (median, of image) | small people |")
    print("|---|---|---|---|---|---|---|")
    for src in a.sources:
        for split in ("train", "val"):
            s = split_stats(Path(a.data) / src / split, a.every)
            print(f"| {src} | {split} | {s['grey']:.2f} | {s['dark']:.2f} | {s['sharpness']:.0f} | "
                  f"{s['height']:.2f} | {s['small']:.2f} |")


if __name__ == "__main__":
    main()
