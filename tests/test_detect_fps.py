"""A per-camera detection rate: a 25-fps camera costs `detect_fps` inferences a second; the frames in
between still reach the clip buffer; the status says the rate asked for and what was skipped."""
from __future__ import annotations

import json

import pytest

from conftest import make_settings
from service.sources.rate import RateGate
from service.streams import InvalidStream, StreamManager
from test_streams import FakeBus, FakePipeline, FakeWorker, dead_url, image_frame, wait_for


def test_the_gate_keeps_the_asked_rate_whatever_the_camera_sends() -> None:
    for camera_fps, expected in ((25, 50), (7, 50), (3, 30), (50, 50)):  # 10 s of each
        gate = RateGate(5.0)
        assert abs(sum(gate.due(i / camera_fps) for i in range(camera_fps * 10)) - expected) <= 1, camera_fps
    gate = RateGate(5.0)
    assert [gate.due(t) for t in (0.0, 0.04, 0.08, 0.19, 0.24)] == [True, False, False, True, False]
    assert gate.due(0.0)  # a reconnect restarts the camera's clock: analysed again at once
    assert all(RateGate(None).due(i / 25) for i in range(50))
    with pytest.raises(ValueError):
        RateGate(0)


class Clips:
    def __init__(self) -> None:
        self.frames = 0

    def add_frame(self, frame) -> None:
        self.frames += 1

    def status(self) -> dict:
        return {"frames": self.frames}


def test_a_camera_analyses_detect_fps_and_its_clip_buffer_gets_every_frame(tmp_path) -> None:
    worker, pipelines = FakeWorker(), {}

    def factory(source):
        pipelines[source] = FakePipeline(source)
        return pipelines[source]

    m = StreamManager(make_settings(tmp_path, detect_fps=5.0), worker, FakeBus(), factory)
    m.add("slow", dead_url())  # the service's rate
    m.add("all", dead_url(), detect_fps=30.0)  # its own: every frame of a 25-fps camera
    for name in ("slow", "all"):
        stream = m._streams[name]
        stream.clips = Clips()
        for i in range(50):  # 2 s of a 25-fps camera
            stream.on_frame(image_frame(name, i))
    wait_for(lambda: m.get("all")["frames_processed"] == 50, 3)
    slow, every = m.get("slow"), m.get("all")
    assert slow["frames_processed"] == 10 and slow["frames_not_analysed"] == 40 and slow["frames_dropped"] == 0
    assert slow["detect_fps"] == 5.0 and every["detect_fps"] == 30.0
    assert m._streams["slow"].clips.frames == 50  # clips still get every decoded frame
    saved = json.loads(m.streams_file.read_text())
    assert {e["id"]: e.get("detect_fps") for e in saved} == {"slow": None, "all": 30.0}
    with pytest.raises(InvalidStream, match="detect_fps"):
        m.add("bad", dead_url(), detect_fps=-1)
    m.stop()
