#!/usr/bin/env python3
"""Soak of the fall-clip buffer and writer with live cameras: memory, processed fps with and without
clips being written (same run), clip size per second.

Four real RTSP cameras (tools/rtsp_server.py, system python3 with GStreamer) replay the shared clips
at 25 fps into a StreamManager with the real inference worker on the shipped detector, pipelines,
an alert store and a ClipService (default settings: pre_s 10, post_s 20, 15 fps, 1280 px, JPEG 75)
- what `create_app` builds, without HTTP. The fall rules' confirm time is set out of reach so that
no real alert starts a clip: clips are started by the benchmark, at known times, with alert events
for each camera's current track (or a fixed box), so the windows compare like with like.

After a warm-up (`--warmup-s`, buffers fill) and one clip written (the first clip allocates the
encoder's memory once: RSS growth is measured from after it), the run alternates windows of `--window-s` seconds:
`idle` (no clip being recorded or written) and `writing` (one clip recorded and written at all
times: when one is done the next camera's starts, as when falls follow one another). Per window: the
processed fps of all cameras together; every 10 s the process RSS. Prints the per-window table,
the mean fps of each kind, RSS after the warm-up and at the end (growth), the buffer per camera,
and the clips written (bytes per second of clip).

usage: python benchmarks/bench_clips.py [--minutes 10] [--window-s 60] [--warmup-s 60] [--model PATH]
                                        [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from service.bus import EventBus  # noqa: E402
from service.clips import ClipService, ClipSettings  # noqa: E402
from service.pipeline import PipelineSettings, SourcePipeline  # noqa: E402
from service.runtime import Runtime  # noqa: E402
from service.settings import default_data_dir  # noqa: E402
from service.store import AlertStore  # noqa: E402
from service.streams import StreamManager  # noqa: E402
from service.worker import InferenceWorker  # noqa: E402

CLIPS = ["fall/13.mp4", "fall/14.mp4", "fall/15.mp4", "adl/10.mp4"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_cameras(paths: list[Path]) -> tuple[subprocess.Popen, list[str]]:
    cmd = ["/usr/bin/python3", str(REPO_ROOT / "tools" / "rtsp_server.py"), "--port", "0", "--fps", "25"]
    for i, p in enumerate(paths):
        cmd += ["--mount", f"cam{i}={p}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    urls = []
    while len(urls) < len(paths):
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("RTSP server did not start")
        if line.startswith("READY "):
            urls.append(line.split()[1])
    return proc, sorted(urls)


def fake_alert(stream, now_pts: float) -> SimpleNamespace:
    """An alert for the camera's person now (its latest tracked box), or for a fixed box."""
    return SimpleNamespace(type="fall_alert", id=uuid.uuid4().hex, track_id=1, started_pts_s=now_pts - 1.0,
                           pts_s=now_pts, at=time.time(), box=(100.0, 100.0, 300.0, 400.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "fall-detector.onnx")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = default_data_dir() / "videos" / "gmdcsa24-s1"
    proc, urls = start_cameras([data / c for c in CLIPS])
    state = Path(tempfile.mkdtemp(prefix="bench-clips-"))
    settings = SimpleNamespace(state_dir=state, max_streams=8, streams_file=state / "streams.json")
    runtime = Runtime(args.model)
    worker = InferenceWorker(runtime, 8, 4.0)
    worker.start()
    store = AlertStore(state / "alerts.db", state / "snapshots", clip_dir=state / "clips")
    clip_settings = ClipSettings()
    clips = ClipService(clip_settings, state / "clips", store)
    bus = EventBus(store)
    never = PipelineSettings(confirm_s=1e9)  # no real alert: clips only when the benchmark starts them
    manager = StreamManager(settings, worker, bus,
                            lambda sid: SourcePipeline(sid, never, live=True,
                                                       detection_threshold=runtime.score_threshold),
                            clips=clips)
    written: list = []
    try:
        for i, url in enumerate(urls):
            manager.add(f"cam{i}", url)
        streams = [manager._streams[f"cam{i}"] for i in range(len(urls))]
        for s in streams:
            s.clips.on_done = written.append
        t_end = time.monotonic() + args.minutes * 60
        time.sleep(args.warmup_s)
        rss_warm = rss_mb()
        # one clip recorded and written before the baseline: the first clip allocates the encoder's
        # and the writer's memory once (a step, not growth); growth is measured from after it
        s = streams[0]
        with s.lock:
            s.clips.add_result(s._last_frame.pts_s, [], [fake_alert(s, s._last_frame.pts_s)])
        time.sleep(1.0)
        while clips.writer.active:
            time.sleep(0.5)
        rss0 = rss_mb()
        print(f"RSS after the {args.warmup_s:g} s warm-up {rss_warm:.1f} MB; after a first clip {rss0:.1f} MB",
              flush=True)
        rss_samples = [(0.0, rss0)]
        windows = []
        kind = "idle"
        turn = 0
        t_start = time.monotonic()
        while time.monotonic() + args.window_s <= t_end + 1:
            # wait until no clip is recorded or written before an idle window
            if kind == "idle":
                while clips.writer.active:
                    time.sleep(0.5)
            before = sum(s.frames_processed for s in streams)
            w0 = time.monotonic()
            while time.monotonic() - w0 < args.window_s:
                if kind == "writing" and not clips.writer.active:  # one clip at a time, cameras in turn
                    s = streams[turn % len(streams)]
                    turn += 1
                    last = s._last_frame
                    if last is not None:
                        with s.lock:
                            s.clips.add_result(last.pts_s, [], [fake_alert(s, last.pts_s)])
                time.sleep(0.25)
                if int(time.monotonic() - t_start) % 10 == 0 and time.monotonic() - t_start - rss_samples[-1][0] >= 9.5:
                    rss_samples.append((time.monotonic() - t_start, rss_mb()))
            span = time.monotonic() - w0
            fps = (sum(s.frames_processed for s in streams) - before) / span
            windows.append({"kind": kind, "fps": round(fps, 2), "clips_active": clips.writer.active,
                            "load1": round(os.getloadavg()[0], 1)})
            print(f"window {len(windows):2d} {kind:7s} processed {fps:5.2f} fps (4 cameras), "
                  f"rss {rss_mb():6.1f} MB, load {os.getloadavg()[0]:.1f}", flush=True)
            kind = "writing" if kind == "idle" else "idle"
        # let the last clips finish
        deadline = time.monotonic() + clip_settings.post_s + 30
        while clips.writer.active and time.monotonic() < deadline:
            time.sleep(0.5)
        rss1 = rss_mb()
        buffers = {s.id: s.clips.status() for s in streams}
        fps_in = {s.id: s.reader.status()["fps_in"] for s in streams}
    finally:
        manager.stop()
        clips.stop()
        worker.stop()
        store.close()
        proc.terminate()
        proc.wait(10)

    ok = [j for j in written if j.written]
    per_s = [j.bytes / j.duration_s for j in ok if j.duration_s > 0]
    idle = [w["fps"] for w in windows if w["kind"] == "idle"]
    writing = [w["fps"] for w in windows if w["kind"] == "writing"]
    out = {
        "minutes": args.minutes, "cameras": len(urls), "codec": clips.codec,
        "clip_settings": clip_settings.model_dump(),
        "fps_idle_mean": round(statistics.mean(idle), 2) if idle else None,
        "fps_writing_mean": round(statistics.mean(writing), 2) if writing else None,
        "windows": windows,
        "rss_after_warmup_mb": round(rss_warm, 1), "rss_baseline_mb": round(rss0, 1), "rss_end_mb": round(rss1, 1),
        "rss_growth": round((rss1 - rss0) / rss0, 4),
        "rss_max_mb": round(max(r for _, r in rss_samples), 1),
        "buffers": buffers, "fps_in": fps_in,
        "clips_written": len(ok), "clips_failed": len(written) - len(ok),
        "clip_duration_s_mean": round(statistics.mean(j.duration_s for j in ok), 2) if ok else None,
        "clip_kib_per_s_mean": round(statistics.mean(per_s) / 1024, 1) if per_s else None,
        "clip_mib_mean": round(statistics.mean(j.bytes for j in ok) / 2**20, 2) if ok else None,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"\n{out['cameras']} cameras, {args.minutes:g} min, encoder {out['codec']}")
        print(f"processed fps (all cameras): idle windows {out['fps_idle_mean']}, writing windows "
              f"{out['fps_writing_mean']}")
        print(f"RSS after warm-up {out['rss_after_warmup_mb']} MB, after a first clip {out['rss_baseline_mb']} MB, "
              f"end {out['rss_end_mb']} MB "
              f"(growth {out['rss_growth']:.1%}), max {out['rss_max_mb']} MB")
        for sid, b in buffers.items():
            print(f"  {sid}: buffer {b['seconds']} s, {b['frames']} frames, {b['bytes'] / 2**20:.1f} MiB, "
                  f"capped {b['capped']}; fps in {fps_in[sid]}")
        print(f"clips written {out['clips_written']} (failed {out['clips_failed']}), mean "
              f"{out['clip_duration_s_mean']} s, {out['clip_mib_mean']} MiB, {out['clip_kib_per_s_mean']} KiB per "
              f"second of clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
