"""`python -m service analyze VIDEO`: NDJSON on stdout, one frame line per decoded frame, a summary."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, count_frames


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def parse(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def check_lines(lines: list[dict], decoded: int, source: str) -> list[dict]:
    frames = [m for m in lines if m["type"] == "frame"]
    assert [m["frame"] for m in frames] == list(range(decoded))
    assert all(m["source"] == source for m in frames)
    assert lines[-1]["type"] == "summary" and lines[-1]["frames"] == decoded
    assert sum(1 for m in lines if m["type"] == "summary") == 1
    return frames


def test_analyze_prints_one_line_per_frame_and_a_summary(tiny_model, fall_clips, tmp_path):
    clip = fall_clips[0].path
    # the tiny model's box is `fall` from the first frame: first seen down, confirmed after slow_confirm_s
    done = run_cli("analyze", str(clip), "--model", str(tiny_model),
                   env={"FALLDET_STATE_DIR": str(tmp_path), "FALLDET_PIPELINE__SLOW_CONFIRM_S": "1"})
    assert done.returncode == 0, done.stderr
    lines = parse(done.stdout)
    check_lines(lines, count_frames(clip), clip.stem)
    events = [m for m in lines if m["type"] in ("fall_alert", "still_down", "fall_cleared")]
    assert [e["type"] for e in events] == ["fall_alert", "fall_cleared"]  # the tiny model's steady "fall" box
    assert all(len(e["id"]) == 32 for e in events)
    assert "frame/s" in done.stderr  # tqdm progress on stderr, never on stdout
    # no operating point: the default threshold; weak boxes down to the tracker's low stage (0.1)
    assert lines[-1]["model"] == {"file": "tiny.onnx", "score_threshold": 0.25, "track_threshold": 0.1}


def test_analyze_refuses_a_corrupt_file_with_a_message(tiny_model, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    done = run_cli("analyze", str(bad), "--model", str(tiny_model))
    assert done.returncode == 2 and done.stdout == ""
    assert "not a readable video container" in done.stderr and "Traceback" not in done.stderr
    missing = run_cli("analyze", str(tmp_path / "nope.mp4"), "--model", str(tiny_model))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_analyze_applies_the_frame_size_limit(tiny_model, short_clip, tmp_path):
    done = run_cli("analyze", str(short_clip), "--model", str(tiny_model),
                   env={"FALLDET_STATE_DIR": str(tmp_path), "FALLDET_MAX_IMAGE_PIXELS": "1000"})
    assert done.returncode == 2 and done.stdout == ""
    assert "FALLDET_MAX_IMAGE_PIXELS" in done.stderr and "Traceback" not in done.stderr


def test_analyze_with_the_shipped_model(model_path, short_clip, tmp_path):
    """The default model, no --model; each frame line holds what the runtime finds on that frame."""
    import av

    from service.runtime import Runtime

    done = run_cli("analyze", str(short_clip), "--quiet",
                   env={"FALLDET_STATE_DIR": str(tmp_path), "FALLDET_SCORE_THRESHOLD": "0.001",
                        "FALLDET_INT8": "off",  # the FP32 file, as the Runtime below
                        "FALLDET_MAX_BATCH": "1", "FALLDET_PROVIDERS": "CPUExecutionProvider"})
    assert done.returncode == 0, done.stderr
    frames = check_lines(parse(done.stdout), count_frames(short_clip), Path(short_clip).stem)
    runtime = Runtime(model_path, ["CPUExecutionProvider"], score_threshold=0.001)
    with av.open(str(short_clip)) as container:
        images = [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]
    # what the model saw (the track's id, posture and down state come from the pipeline)
    strip = lambda persons: [{k: v for k, v in p.items() if k not in ("track_id", "posture", "fall")}  # noqa: E731
                             for p in persons]
    for line, image in zip(frames, images):
        assert strip(line["persons"]) == strip([p.to_json() for p in runtime.detect([image])[0]])
