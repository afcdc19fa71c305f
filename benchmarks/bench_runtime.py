#!/usr/bin/env python3
"""Model-only speed of the service runtime: ms per frame and frames per second at batch 1 and 8.

Measures `Runtime.detect` (letterbox + one session.run + boxes mapped back), which is the ceiling of
the inference worker, and `session.run` alone on a ready batch (the model itself). Frames are real
640x480 frames of a shared clip when FALLDET_DATA has them, else noise of that size.

usage: python benchmarks/bench_runtime.py [--model PATH] [--batches 1,8] [--iters N] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from service.runtime import Runtime, choose_providers  # noqa: E402

CLIP = Path("videos") / "gmdcsa24-s1" / "fall" / "13.mp4"


def sample_frames(count: int) -> list[np.ndarray]:
    """`count` BGR frames from a shared clip (spread over it), or noise when the data is absent."""
    data = Path(os.environ.get("FALLDET_DATA") or REPO_ROOT.parent / "shared" / "data")
    path = data / CLIP
    if path.is_file():
        import av

        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]
        step = max(1, len(frames) // count)
        return [frames[(i * step) % len(frames)] for i in range(count)]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(count)]


def measure(runtime: Runtime, frames: list[np.ndarray], batch: int, iters: int, warmup: int = 2) -> dict:
    """Time `detect` and bare `session.run` on batches of `batch` frames."""
    images = [frames[i % len(frames)] for i in range(batch)]
    for _ in range(warmup):
        runtime.detect(images)
    start = time.perf_counter()
    for _ in range(iters):
        runtime.detect(images)
    detect_s = (time.perf_counter() - start) / iters
    size = runtime.imgsz
    ready = {"images": np.full((batch, 3, size, size), 114 / 255, np.float32), **runtime.extra_inputs}
    runtime.session.run(["detections"], ready)
    start = time.perf_counter()
    for _ in range(iters):
        runtime.session.run(["detections"], ready)
    run_s = (time.perf_counter() - start) / iters
    return {"batch": batch, "detect_ms_per_frame": 1000 * detect_s / batch, "detect_fps": batch / detect_s,
            "session_ms_per_frame": 1000 * run_s / batch, "session_fps": batch / run_s, "iters": iters}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "fall-detector.onnx")
    ap.add_argument("--providers", default="", help="comma-separated; default: CUDA when present, then CPU")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="a few iterations only (CI smoke)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line per batch size")
    a = ap.parse_args()
    iters = 3 if a.quick else a.iters
    providers = [p for p in a.providers.split(",") if p] or choose_providers()
    runtime = Runtime(a.model, providers)
    batches = [int(b) for b in a.batches.split(",")]
    frames = sample_frames(max(batches))
    print(f"model {a.model.name} imgsz {runtime.imgsz} on {runtime.providers[0]} | {machine()}")
    print(f"{'batch':>5} {'detect ms/frame':>16} {'detect fps':>11} {'session ms/frame':>17} {'session fps':>12}")
    for batch in batches:
        r = measure(runtime, frames, batch, iters)
        print(f"{batch:5d} {r['detect_ms_per_frame']:16.2f} {r['detect_fps']:11.1f} "
              f"{r['session_ms_per_frame']:17.2f} {r['session_fps']:12.1f}")
        if a.json:
            print(json.dumps({"provider": runtime.providers[0], **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
