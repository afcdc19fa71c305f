"""Issue 20, items 5 and 6: what a whole-video analysis (`POST /v1/videos`, `python -m service
analyze`) says is true.

- 5: its events are not stored, so their lines claim no snapshot (`GET /v1/alerts/{id}` is a 404);
- 6: a file cut short (a faststart MP4 whose second half is missing decodes without an error) is
  reported: an `error` line with `"code": "ended_early"` and `"complete": false` in the summary.

The videos are drawn here (no data needed); the tiny contract model sees a fallen person in every
frame, so a fall alert comes after `confirm_s`.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import av
import numpy as np
import pytest

FPS = 25
FRAMES = 128


def drawn_video(path: Path, frames: int = FRAMES, faststart: bool = True) -> Path:
    """An H.264 MP4 of moving noise (hard to compress: the cut lands mid-video), moov first."""
    rng = np.random.default_rng(0)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=FPS, options={"g": "25", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            img[40:80, 10 + i % 100:50 + i % 100] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def post(client, auth, path: Path) -> list[dict]:
    with path.open("rb") as f:
        r = client.post("/v1/videos", files={"file": (path.name, f, "video/mp4")}, headers=auth)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    return drawn_video(tmp_path_factory.mktemp("videos") / "whole.mp4")


@pytest.fixture(scope="module")
def halved(whole: Path) -> Path:
    return cut_in_half(whole, whole.with_name("halved.mp4"))


def test_a_complete_video_says_complete(tiny_client, auth, whole: Path) -> None:
    lines = post(tiny_client, auth, whole)
    assert sum(1 for m in lines if m["type"] == "frame") == FRAMES
    assert not [m for m in lines if m["type"] == "error"]
    assert lines[-1]["type"] == "summary" and lines[-1]["complete"] is True and "error" not in lines[-1]


def test_upload_events_claim_no_snapshot_that_does_not_exist(tiny_client, auth, whole: Path) -> None:
    lines = post(tiny_client, auth, whole)
    events = [m for m in lines if m["type"] in ("fall_alert", "still_down", "fall_cleared")]
    assert [m["type"] for m in events][:1] == ["fall_alert"]
    for event in events:
        assert event["has_snapshot"] is False, event
        assert tiny_client.get(f"/v1/alerts/{event['id']}", headers=auth).status_code == 404
        assert tiny_client.get(f"/v1/alerts/{event['id']}/snapshot.jpg", headers=auth).status_code == 404


def test_a_truncated_video_is_reported_over_the_api(tiny_client, auth, whole: Path, halved: Path) -> None:
    with av.open(str(halved)) as c:  # the cut file still opens and declares every frame
        declared = c.streams.video[0].frames
    assert declared == FRAMES
    lines = post(tiny_client, auth, halved)
    frames = sum(1 for m in lines if m["type"] == "frame")
    assert 0 < frames < FRAMES * 0.9
    (error,) = [m for m in lines if m["type"] == "error"]
    assert error["code"] == "ended_early" and error["frames"] == frames and error["declared_frames"] == FRAMES
    assert f"{frames} of the {FRAMES} frames" in error["reason"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["complete"] is False
    assert summary["error"] == error["reason"]
    # the line comes after the last frame and before the events that close open falls
    assert lines.index(error) > max(i for i, m in enumerate(lines) if m["type"] == "frame")


def test_a_truncated_video_is_reported_by_the_cli(tiny_model: Path, halved: Path) -> None:
    from service.__main__ import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["analyze", str(halved), "--model", str(tiny_model), "--quiet"]) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [m.get("code") for m in lines if m["type"] == "error"] == ["ended_early"]
    assert lines[-1]["complete"] is False
    assert all(m["has_snapshot"] is False for m in lines if m["type"] == "fall_alert")
