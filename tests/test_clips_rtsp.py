"""Fall clips and zones end to end: the real app behind uvicorn, real GStreamer RTSP cameras
(tools/rtsp_server.py) replaying a shared fall clip, the real readers, worker, tracker, fall rules,
bus, store and clip writer.

The clip tests use a scripted detector in place of the model: it reports one person standing while
the picture is the clip's first frame (held for HOLD_S seconds before the clip plays) and lying once
the picture changes, so the fall's onset is known and a 2-core machine shared with a training run
still sees it on time. The zone test uses the shipped detector.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from service.clips import ClipSettings
from service.pipeline import PipelineSettings
from test_rtsp_reader import RtspCamera, needs_rtsp_server, wait_for
from test_streams import LiveServer, app_for

PRE_S, POST_S = 3.0, 4.0
HOLD_S = 4.0  # the clip's first frame is held this long before it plays
STAND = (250.0, 60.0, 400.0, 470.0)
DOWN = (180.0, 300.0, 600.0, 470.0)


def thumb(image: np.ndarray) -> np.ndarray:
    return cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32)


class StillThenFall:
    """Stands in for the model: a standing person while the picture is the clip's first frame, a
    fallen one once it differs (the clip plays)."""

    score_threshold = 0.25

    def __init__(self, first: np.ndarray) -> None:
        self.first = thumb(first)

    def detect(self, images, rgb=False):
        from service.frames import Person

        out = []
        for image in images:
            changed = float(np.abs(thumb(image) - self.first).mean()) > 6.0
            out.append([Person(DOWN, 0.9, 0) if changed else Person(STAND, 0.9, 2)])
        return out


def padded(src: Path, dst: Path, before_s: float, after_s: float, fps: int = 25) -> list[np.ndarray]:
    """`src` with its first frame held `before_s` and its last `after_s` (made in a temp folder)."""
    with av.open(str(src)) as inp:
        frames = [f.to_ndarray(format="bgr24") for f in inp.decode(video=0)]
    seq = [frames[0]] * int(before_s * fps) + frames + [frames[-1]] * int(after_s * fps)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"g": str(fps), "bf": "0"}
        for image in seq:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return frames


def clip_frames(path: Path) -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="bgr24"))
            times.append(float(f.time))
    return frames, times


def closest_index(image: np.ndarray, reference: list[np.ndarray]) -> int:
    t = thumb(image)
    return int(np.argmin([np.abs(thumb(r) - t).mean() for r in reference]))


@pytest.fixture
def fall_video(fall_clips, tmp_path):
    clip = fall_clips[0]  # fall/13.mp4: the fall starts at frame 12
    frames = padded(clip.path, tmp_path / "held.mp4", HOLD_S, POST_S + 2.0)
    return clip, frames, tmp_path / "held.mp4"


def clip_settings(**kw):
    return {"clips": ClipSettings(pre_s=PRE_S, post_s=POST_S, fps=10.0, **kw),
            "pipeline": PipelineSettings(confirm_s=0.5)}


def first_alert_with_clip(http, timeout: float = 60.0) -> dict:
    found = {}

    def ready() -> bool:
        items = http.get("/v1/alerts", params={"type": "fall_alert"}).json()["items"]
        with_clip = [a for a in items if a.get("clip_url")]
        if with_clip:
            found["alert"] = with_clip[-1]
        return bool(with_clip)

    wait_for(ready, timeout)
    return found["alert"]


@pytest.mark.slow
@needs_rtsp_server
def test_a_fall_over_rtsp_gets_a_clip_from_before_the_fall(fall_video, tmp_path):
    clip, reference, video = fall_video
    runtime = StillThenFall(reference[0])
    with RtspCamera({"cam": video}, fps=25) as camera, \
            LiveServer(app_for(tmp_path, runtime, **clip_settings())) as server, server.http() as http:
        assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam")}).status_code == 201
        wait_for(lambda: http.get("/v1/streams/cam").json()["state"] == "live", 15)
        status = http.get("/v1/streams/cam").json()
        alert = first_alert_with_clip(http)
        data = http.get(alert["clip_url"]).content
        part = http.get(alert["clip_url"], headers={"Range": "bytes=1000-4999"})
        buffer = http.get("/v1/streams/cam").json()["clip_buffer"]
    path = tmp_path / "got.mp4"
    path.write_bytes(data)
    frames, times = clip_frames(path)
    duration = times[-1] - times[0] + 0.1  # 10 fps: the last frame lasts 0.1 s
    down_at_alert = alert["time_down_s"]
    first = closest_index(frames[0], reference)
    print(f"\nclip {len(data)} bytes, {len(frames)} frames, {duration:.2f} s (pre {PRE_S} + post {POST_S}; "
          f"alert {down_at_alert:.2f} s after onset), {len(data) / duration / 1024:.0f} KiB/s; first frame ~ "
          f"clip frame {first} (fall starts at {clip.fall_start_frame}); buffer {buffer}")
    assert status["clip_buffer"] is not None
    assert part.status_code == 206 and part.content == data[1000:5000]
    assert abs(duration - (PRE_S + POST_S)) <= 1.0
    assert abs(duration - (PRE_S + down_at_alert + POST_S)) <= 0.5
    assert first < clip.fall_start_frame  # the clip shows the person before the fall
    assert not buffer["capped"] and buffer["seconds"] >= PRE_S


@pytest.mark.slow
@needs_rtsp_server
def test_the_clip_of_a_camera_that_disconnects_mid_way_is_closed_cleanly(fall_video, tmp_path, monkeypatch):
    import service.clips as clips_module

    monkeypatch.setattr(clips_module, "DEADLINE_GRACE_S", 1.0)
    clip, reference, video = fall_video
    camera = RtspCamera({"cam": video}, fps=25).start()
    try:
        with LiveServer(app_for(tmp_path, StillThenFall(reference[0]), **clip_settings())) as server, \
                server.http() as http:
            assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam")}).status_code == 201
            wait_for(lambda: http.get("/v1/alerts", params={"type": "fall_alert"}).json()["total"] > 0, 40)
            time.sleep(1.0)
            camera.stop(signal.SIGKILL)  # the camera dies 1 s after the alert, 3 s before the clip's end
            killed = time.monotonic()
            alert = first_alert_with_clip(http, timeout=30)
            took = time.monotonic() - killed
            state = http.get("/v1/streams/cam").json()
            data = http.get(alert["clip_url"]).content
    finally:
        camera.stop()
    path = tmp_path / "got.mp4"
    path.write_bytes(data)
    frames, times = clip_frames(path)  # decodes to the end: a whole, closed MP4
    duration = times[-1] - times[0]
    print(f"\ncamera killed after the alert: clip linked {took:.1f} s later, {duration:.2f} s long, "
          f"camera {state['state']}")
    assert state["state"] in ("backoff", "connecting", "stalled")
    assert PRE_S <= duration < PRE_S + alert["time_down_s"] + POST_S - 1.0
    assert took <= POST_S + 1.0 + 3.0


@pytest.mark.slow
@needs_rtsp_server
def test_an_ignore_zone_over_the_whole_picture_stops_the_alert(fall_clips, runtime, tmp_path):
    """The shipped detector on a shared fall clip, two cameras at once: the one whose whole picture
    is an ignore zone raises nothing, the other one alerts."""
    clip = fall_clips[0]
    everything = {"zones": [{"name": "all", "kind": "ignore", "points": [[0, 0], [1, 0], [1, 1], [0, 1]]}]}
    with RtspCamera({"a": clip.path, "b": clip.path}, fps=25) as camera, \
            LiveServer(app_for(tmp_path, runtime, clips=ClipSettings(enabled=False))) as server, \
            server.http() as http:
        assert http.post("/v1/streams", json={"id": "zoned", "url": camera.url("a")}).status_code == 201
        assert http.put("/v1/streams/zoned/zones", json=everything).status_code == 200
        assert http.post("/v1/streams", json={"id": "plain", "url": camera.url("b")}).status_code == 201
        alerts = lambda sid: http.get("/v1/alerts", params={"source": sid, "type": "fall_alert"}).json()["total"]  # noqa: E731
        wait_for(lambda: alerts("plain") > 0, 60)
        time.sleep(3.0)
        zoned = http.get("/v1/streams/zoned").json()
        assert zoned["frames_processed"] > 10
        assert alerts("zoned") == 0
        timeline = http.get("/v1/streams/zoned/timeline").json()
    assert timeline["tracks"] == []  # no detection there ever became a track
