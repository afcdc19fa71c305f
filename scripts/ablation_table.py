#!/usr/bin/env python3
"""The ablation table of docs/ablation.md from the runs `scripts/ablation.sh` wrote.

One row per preset in the paper's order (baseline, A..G on the shipped MobileNetV2 backbone), the
final val of each seed, the seed-to-seed spread where two seeds ran, parameters and GFLOPs of the
trained network, and ONNX milliseconds per frame on this machine (`--speed`: each distinct graph is
exported once and timed at batch 1; the box loss does not change the graph, so C/E/F/G share the
figures of baseline/B/A/D).

usage: python scripts/ablation_table.py [--runs runs/ablation] [--speed] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

ROWS = [  # (row, what it adds to the baseline), the paper's Table 3 order
    ("baseline", "-"),
    ("A", "Detect_LQE"),
    ("B", "SPDConv"),
    ("C", "Inner-CIoU"),
    ("D", "LQE + SPDConv"),
    ("E", "SPDConv + Inner-CIoU"),
    ("F", "LQE + Inner-CIoU"),
    ("G", "all three"),
]
# The paper's own figures (its split, 640 px, 100+ epochs from scratch on a GPU); only its baseline
# and G rows are known to us (quoted by issue 26), the others are left empty rather than guessed.
PAPER = {"baseline": (0.957, 0.695), "G": (0.960, 0.723)}
SOURCE_COLUMNS = [("care-home", "person_AP50"), ("care-home", "fall_AP50"),
                  ("ip-cameras", "person_AP50"), ("ip-cameras", "fall_AP50"),
                  ("fall-action", "person_AP50"), ("fall-action", "fall_AP50"),
                  ("fall-poses", "fall_AP50")]  # fall-poses boxes only the fallen: no person AP
POOLED = ("mAP50", "mAP50_95")
# A graph is decided by these two switches; rows sharing them share parameters, FLOPs and speed.
GRAPH = {"baseline": "baseline", "A": "A", "B": "B", "C": "baseline", "D": "D", "E": "B", "F": "A", "G": "D"}


def final_metrics(run: Path) -> dict | None:
    """The last validation of a finished run (metrics.json's `best`: every row is validated once)."""
    path = run / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["best"]


def figures(metrics: dict) -> dict[str, float]:
    out = {f"{src}/{key}": metrics["sources"][src][key] for src, key in SOURCE_COLUMNS}
    out.update({key: metrics[key] for key in POOLED})
    return out


def size_of(checkpoint: Path, imgsz: int) -> tuple[int, float]:
    """Parameters and GFLOPs (2 x multiply-adds, torch's FlopCounterMode) of the trained network."""
    import torch

    from training.model import build_model
    from training.model.yolo import count_gflops, count_params
    from training.presets import ModelConfig

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = build_model(ModelConfig(**ckpt["model_config"]))
    return count_params(model), count_gflops(model, imgsz)


def onnx_ms(checkpoint: Path, imgsz: int, iters: int) -> float:
    """Median ms of one batch-1 `session.run` of the exported graph (scoring and NMS included)."""
    import numpy as np
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.onnx"
        subprocess.run([sys.executable, "-m", "training", "export", "--weights", str(checkpoint), "--out", str(out),
                        "--no-calibrate"], check=True, cwd=REPO_ROOT, capture_output=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        session = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        feeds = {"images": np.full((1, 3, imgsz, imgsz), 114 / 255, np.float32)}
        for extra in session.get_inputs()[1:]:  # score/iou thresholds: the graph's defaults are fine
            feeds[extra.name] = np.array([0.25 if "score" in extra.name else 0.7], np.float32)
        for _ in range(5):
            session.run(None, feeds)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({'/'.join(f'{v:.3f}' for v in values)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=REPO_ROOT / "runs" / "ablation")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--speed", action="store_true", help="export each distinct graph and time it (about a minute)")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--speeds-from", type=Path, default=None, help="reuse the ONNX ms of an earlier --json")
    a = ap.parse_args()

    results: dict[str, dict[int, dict[str, float]]] = {}
    checkpoints: dict[str, Path] = {}
    for row, _ in ROWS:
        for run in sorted(a.runs.glob(f"{row}-mnv2-s*")):
            metrics = final_metrics(run) if run.is_dir() else None
            if metrics is None:
                continue
            results.setdefault(row, {})[int(run.name.rsplit("-s", 1)[1])] = figures(metrics)
            checkpoints.setdefault(row, run / "last.pt")
    sizes: dict[str, tuple[int, float]] = {}
    speeds: dict[str, float] = json.loads(a.speeds_from.read_text())["onnx_ms"] if a.speeds_from else {}
    for row, ckpt in checkpoints.items():  # any row of a graph stands for all of them
        graph = GRAPH[row]
        if graph not in sizes and ckpt.is_file():
            sizes[graph] = size_of(ckpt, a.imgsz)
            if a.speed and graph not in speeds:
                speeds[graph] = onnx_ms(ckpt, a.imgsz, a.iters)

    columns = [f"{src} {key.split('_')[0]}" for src, key in SOURCE_COLUMNS] + ["mAP50", "mAP50-95"]
    header = ["row", "adds", "seeds", *columns, "params M", "GFLOPs", "ONNX ms", "paper mAP50 / mAP50-95"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, adds in ROWS:
        seeds = results.get(row, {})
        keys = [f"{s}/{k}" for s, k in SOURCE_COLUMNS] + list(POOLED)
        size = sizes.get(GRAPH[row])
        paper = PAPER.get(row)
        lines.append("| " + " | ".join([
            f"{row}-mnv2", adds, ",".join(str(s) for s in sorted(seeds)) or "-",
            *[cell([seeds[s][k] for s in sorted(seeds)]) for k in keys],
            f"{size[0] / 1e6:.2f}" if size else "-", f"{size[1]:.2f}" if size else "-",
            f"{speeds[GRAPH[row]]:.1f}" if GRAPH[row] in speeds else "-",
            f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "-"]) + " |")
    print("\n".join(lines))

    spread = {row: {k: abs(v[0][k] - v[1][k]) for k in v[0]} for row, v in results.items() if {0, 1} <= set(v)}
    if spread:
        print("\nseed-to-seed difference |seed 0 - seed 1|:")
        for row, diffs in spread.items():
            print(f"  {row}-mnv2: " + ", ".join(f"{k} {d:.3f}" for k, d in diffs.items()))
    if a.json:
        a.json.write_text(json.dumps({"results": results, "sizes": sizes, "onnx_ms": speeds, "spread": spread},
                                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
