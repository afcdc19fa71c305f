#!/usr/bin/env python3
"""Simulated live cameras through the real inference worker: is batching across sources worth it,
and what does a camera see?

For 1, 4 and 8 sources, each camera thread submits a frame every 1/fps s (`--fps 0`: a new frame as
soon as its last one is answered, which saturates the worker) with `live=True` (latest frame wins).
Prints total processed fps, per-source fps, p50/p95 capture-to-result latency, frames dropped, and
the ratio of total fps to the runtime's model-only fps at the same batch size (the ceiling; goal
>= 0.9 when the cameras offer more frames than the model can take). `--with-pipeline` also runs
tracking and the fall rules in the result callbacks, as live cameras do. `--fake-model B,F` replaces
the model by a stand-in that sleeps B + F x batch ms per call (no CPU): it measures the worker's own
scheduling on a machine too busy for the real model to be timed. `--swap-at S` swaps the model S seconds
into each measurement as the service does (load and warm up a second runtime of `--swap-model`, default
the same file, beside the running one, then `swap_runtime` between batches) and prints per camera the
frames lost (neither answered nor replaced by a newer frame) and the longest wait between two results
around the swap, against the longest wait elsewhere in the run.

usage: python benchmarks/bench_live_sources.py [--model PATH] [--sources 1,4,8] [--fps 25] [--seconds 10]
                                               [--quick] [--with-pipeline] [--fake-model B,F] [--json]
                                               [--swap-at S [--swap-model PATH]]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime import REPO_ROOT, machine, sample_frames  # noqa: E402

from service.frames import Frame, Person  # noqa: E402
from service.runtime import Runtime, choose_providers  # noqa: E402
from service.worker import InferenceWorker  # noqa: E402


class SleepingModel:
    """A stand-in for the Runtime: B + F x batch ms of sleep per call, no persons."""

    def __init__(self, base_ms: float, per_frame_ms: float) -> None:
        self.base_s, self.per_frame_s = base_ms / 1000, per_frame_ms / 1000
        self.providers = [f"sleep({base_ms:g} + {per_frame_ms:g} x batch ms)"]

    def detect(self, images: list[np.ndarray], rgb: bool = False) -> list[list[Person]]:
        time.sleep(self.base_s + self.per_frame_s * len(images))
        return [[] for _ in images]


def model_fps(runtime, frames: list[np.ndarray], batch: int, iters: int) -> float:
    """Frames per second of bare `detect` calls at `batch`: the ceiling of the worker."""
    images = [frames[i % len(frames)] for i in range(batch)]
    runtime.detect(images)
    start = time.perf_counter()
    for _ in range(iters):
        runtime.detect(images)
    return batch * iters / (time.perf_counter() - start)


class Camera(threading.Thread):
    """One simulated live source: frames at a fixed rate (or closed loop), results recorded."""

    def __init__(self, name: str, worker: InferenceWorker, image: np.ndarray, fps: float, stop: threading.Event,
                 pipeline=None) -> None:
        super().__init__(name=name, daemon=True)
        self.worker, self.image, self.fps, self.stop, self.pipeline = worker, image, fps, stop, pipeline
        self.results: list[tuple[float, float]] = []  # (done wall time, latency s)
        self.futures: list = []  # every submitted frame's future (lost frames are counted from them)
        self.submitted = 0
        self._answered = threading.Event()
        self._lock = threading.Lock()

    def _done(self, frame: Frame, fut) -> None:
        if not fut.cancelled() and fut.exception() is None:
            now = time.time()
            if self.pipeline is not None:
                with self._lock:
                    self.pipeline.step(frame, fut.result(), (now - frame.captured_at) * 1000, 0)
                now = time.time()
            self.results.append((now, now - frame.captured_at))
        self._answered.set()

    def run(self) -> None:
        index = 0
        next_at = time.perf_counter()
        while not self.stop.is_set():
            frame = Frame(self.name, index, index / (self.fps or 25.0), time.time(), self.image)
            self._answered.clear()
            fut = self.worker.submit(frame, live=True)
            fut.add_done_callback(lambda f, fr=frame: self._done(fr, f))
            self.futures.append(fut)
            self.submitted += 1
            index += 1
            if self.fps > 0:
                next_at += 1.0 / self.fps
                delay = next_at - time.perf_counter()
                if delay > 0:
                    self.stop.wait(delay)
                else:
                    next_at = time.perf_counter()
            else:
                self._answered.wait(1.0)


def max_gap(times: list[float], start: float, end: float) -> float:
    """Longest wait between two results (or the window's edges) inside [start, end], seconds."""
    inside = [start] + sorted(t for t in times if start < t < end) + [end]
    return max(b - a for a, b in zip(inside, inside[1:]))


def swap_report(cams: list["Camera"], swap: dict, t0: float, t1: float) -> dict:
    """Per camera: frames lost, the longest wait between results around the swap (from the start of
    the load to 2 s after the swap) and elsewhere in the measurement."""
    start, end = swap["started"], swap.get("swapped", t1) + 2.0
    out = {}
    for cam in cams:
        for fut in cam.futures:  # the last frames may still be in flight
            if not fut.done():
                try:
                    fut.result(timeout=5)
                except Exception:  # noqa: BLE001 - counted as lost below
                    pass
        lost = sum(1 for f in cam.futures if not f.cancelled() and (not f.done() or f.exception() is not None))
        done = [t for t, _ in cam.results]
        elsewhere = [max_gap(done, t0, start)] + ([max_gap(done, end, t1)] if end < t1 else [])
        out[cam.name] = {"lost": lost, "gap_swap_s": max_gap(done, start, min(end, t1)), "gap_else_s": max(elsewhere)}
    return out


def run_sources(runtime: Runtime, frames: list[np.ndarray], n: int, fps: float, seconds: float, warmup: float,
                max_batch: int, max_wait_ms: float, with_pipeline: bool, swap_at: float | None = None,
                load_swap=None) -> dict:
    """`swap_at`: seconds into the measurement at which `load_swap()` (a warmed-up runtime) is built
    and swapped in, as the service's `PUT /v1/model` does; the result then has `swap` and `per_camera`."""
    worker = InferenceWorker(runtime, max_batch, max_wait_ms)
    worker.start()
    stop = threading.Event()
    pipelines = [None] * n
    if with_pipeline:
        from service.pipeline import PipelineSettings, SourcePipeline

        pipelines = [SourcePipeline(f"cam{i}", PipelineSettings(), live=True) for i in range(n)]
    cams = [Camera(f"cam{i}", worker, frames[i % len(frames)], fps, stop, pipelines[i]) for i in range(n)]
    for cam in cams:
        cam.start()
    time.sleep(warmup)
    t0, cpu0 = time.time(), os.times()
    batches0, frames0 = worker.batches, worker.frames
    swap: dict = {}
    swapper = None
    if swap_at is not None and load_swap is not None:
        def do_swap() -> None:
            swap["started"] = time.time()
            new = load_swap()  # load + warm-up beside the running model, as ModelManager.check does
            swap["loaded_s"] = time.time() - swap["started"]
            worker.swap_runtime(new)
            swap["swapped"] = time.time()

        swapper = threading.Timer(swap_at, do_swap)
        swapper.start()
    time.sleep(seconds)
    t1, cpu1 = time.time(), os.times()
    if swapper is not None:
        swapper.join()
    batches1, frames1 = worker.batches, worker.frames
    stop.set()
    for cam in cams:
        cam.join()
    per_camera = swap_report(cams, swap, t0, t1) if swap else None
    worker.stop()
    window = [[lat for done, lat in cam.results if t0 <= done < t1] for cam in cams]
    per_source = [len(w) / (t1 - t0) for w in window]
    latencies = np.array([lat for w in window for lat in w]) * 1000
    return {"sources": n, "fps_offered": fps, "total_fps": sum(per_source), "per_source_fps": per_source,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
            "p95_ms": float(np.percentile(latencies, 95)) if latencies.size else float("nan"),
            "mean_batch": (frames1 - frames0) / max(1, batches1 - batches0),
            "dropped": sum(worker.dropped(c.name) for c in cams), "submitted": sum(c.submitted for c in cams),
            # CPU of this process (inference, pipeline, camera threads) in cores: 2.0 = both cores busy
            "cpu_cores": ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)} | (
        {"swap": {"at_s": swap["started"] - t0, "load_s": swap.get("loaded_s"),
                  "swapped_at_s": swap["swapped"] - t0 if "swapped" in swap else None},
         "per_camera": per_camera} if swap else {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "fall-detector.onnx")
    ap.add_argument("--providers", default="", help="comma-separated; default: CUDA when present, then CPU")
    ap.add_argument("--sources", default="1,4,8")
    ap.add_argument("--fps", type=float, default=25.0, help="frames per second per camera; 0: closed loop")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=4.0)
    ap.add_argument("--iters", type=int, default=20, help="iterations of the model-only measurement")
    ap.add_argument("--with-pipeline", action="store_true", help="tracking + fall rules in the callbacks")
    ap.add_argument("--fake-model", metavar="B,F", help="sleep B + F x batch ms instead of running the model")
    ap.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--swap-at", type=float, metavar="S", help="swap the model S seconds into each measurement")
    ap.add_argument("--swap-model", type=Path, help="the file swapped in (default: --model again, a new session)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.quick:
        a.seconds, a.warmup, a.iters = 2.0, 0.5, 3
    if a.fake_model:
        base, per_frame = (float(v) for v in a.fake_model.split(","))
        runtime = SleepingModel(base, per_frame)
        name = "fake model"
        load_swap = lambda: SleepingModel(base, per_frame)  # noqa: E731
    else:
        providers = [p for p in a.providers.split(",") if p] or choose_providers()
        runtime = Runtime(a.model, providers, track_threshold=0.1)  # the service's low stage: weak boxes reach the tracker
        name = f"model {a.model.name}"

        def load_swap() -> Runtime:
            new = Runtime(a.swap_model or a.model, providers, track_threshold=0.1)
            new.warmup(2)
            return new
    if a.swap_at is not None and a.swap_at >= a.seconds:
        ap.error("--swap-at must fall inside --seconds")
    counts = [int(s) for s in a.sources.split(",")]
    frames = sample_frames(max(counts))
    print(f"{name} on {runtime.providers[0]} | {machine()}")
    print(f"cameras at {a.fps:g} fps ({'closed loop' if a.fps <= 0 else 'fixed rate'}), max_batch {a.max_batch}, "
          f"max_wait {a.max_wait_ms:g} ms, {a.seconds:g} s each{', with pipeline' if a.with_pipeline else ''}")
    print(f"{'src':>3} {'total fps':>9} {'per-source fps (min..max)':>26} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'batch':>5} {'dropped':>8} {'model fps@b':>11} {'ratio':>6} {'CPU cores':>9}")
    for n in counts:
        r = run_sources(runtime, frames, n, a.fps, a.seconds, a.warmup, a.max_batch, a.max_wait_ms, a.with_pipeline,
                        a.swap_at, load_swap)
        b = min(n, a.max_batch)
        ceiling = model_fps(runtime, frames, b, a.iters)
        r |= {"model_batch": b, "model_fps": ceiling, "ratio": r["total_fps"] / ceiling}
        span = f"{min(r['per_source_fps']):.1f}..{max(r['per_source_fps']):.1f}"
        print(f"{n:3d} {r['total_fps']:9.1f} {span:>26} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['mean_batch']:5.2f} "
              f"{r['dropped']:8d} {r['model_fps']:11.1f} {r['ratio']:6.2f} {r['cpu_cores']:9.2f}")
        if r.get("swap"):
            sw, cams = r["swap"], r["per_camera"]
            print(f"    swap at {sw['at_s']:.1f} s: load + warm-up {sw['load_s']:.2f} s; frames lost "
                  f"{sum(c['lost'] for c in cams.values())}; longest wait between results per camera around the "
                  f"swap {max(c['gap_swap_s'] for c in cams.values()) * 1000:.0f} ms (elsewhere "
                  f"{max(c['gap_else_s'] for c in cams.values()) * 1000:.0f} ms)")
        if a.json:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
