"""`POST /v1/videos` limits: at most `max_concurrent_videos` analyses (429 + Retry-After past it),
and an analysis whose client takes no output for `video_client_timeout_s` is stopped and freed.

Starlette's TestClient hands the response body over through a zero-size channel, so a client that
stops reading really blocks the server side, as a full socket would.
"""
from __future__ import annotations

import json
import time

import pytest

from conftest import metric_sum
from service.settings import Settings


def _files(data: bytes, name: str = "clip.mp4") -> dict:
    return {"file": (name, data, "video/mp4")}


def _client(make_client, tiny_model, **overrides):
    from service.runtime import Runtime

    return make_client(Runtime(tiny_model, ["CPUExecutionProvider"]), **overrides)


def _wait(predicate, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_settings_defaults_and_env(monkeypatch):
    assert (Settings().max_concurrent_videos, Settings().video_client_timeout_s) == (2, 60.0)
    monkeypatch.setenv("FALLDET_MAX_CONCURRENT_VIDEOS", "5")
    monkeypatch.setenv("FALLDET_VIDEO_CLIENT_TIMEOUT_S", "2.5")
    assert (Settings().max_concurrent_videos, Settings().video_client_timeout_s) == (5, 2.5)
    monkeypatch.setenv("FALLDET_MAX_CONCURRENT_VIDEOS", "0")
    with pytest.raises(ValueError):
        Settings()


def _metric(client, auth, name: str) -> float:
    return metric_sum(client.get("/metrics", headers=auth).text, name)


def test_a_second_concurrent_upload_is_429_until_the_first_ends(make_client, tiny_model, auth, fall_clips):
    client = _client(make_client, tiny_model, max_concurrent_videos=1, max_upload_mb=1.6)
    data = fall_clips[0].path.read_bytes()  # 1.39 MB
    refused_before = _metric(client, auth, "falldet_video_analyses_refused_total")
    with client.stream("POST", "/v1/videos", files=_files(data), headers=auth) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        assert json.loads(next(lines))["type"] == "frame"
        assert _metric(client, auth, "falldet_video_analyses_running") == 1
        refused = client.post("/v1/videos", files=_files(data), headers=auth)
        assert refused.status_code == 429, refused.text
        assert _metric(client, auth, "falldet_video_analyses_refused_total") == refused_before + 1
        assert refused.headers["retry-after"] == "10"
        detail = refused.json()["detail"]
        assert "max_concurrent_videos=1" in detail and "FALLDET_MAX_CONCURRENT_VIDEOS" in detail
        # an over-limit upload is refused before its body is looked at: 429, not 415
        assert client.post("/v1/videos", files=_files(b"junk"), headers=auth).status_code == 429
        # ...but a declared size over the limit is final, so it is told first
        assert client.post("/v1/videos", files=_files(bytes(2_000_000)), headers=auth).status_code == 413
        assert client.get("/healthz").status_code == 200
        rest = [json.loads(line) for line in lines if line]
    assert rest[-1]["type"] == "summary" and rest[-1]["frames"] == 128
    assert client.app.state.video_slots.running == 0  # freed before the end of the stream
    assert _metric(client, auth, "falldet_video_analyses_running") == 0
    # refused and failed uploads give their slot back
    assert client.post("/v1/videos", files=_files(b"not a video" * 50), headers=auth).status_code == 415
    assert client.post("/v1/videos", files=_files(data[:2000]), headers=auth).status_code in (400, 415)
    ok = client.post("/v1/videos", files=_files(data), headers=auth)
    assert ok.status_code == 200 and json.loads(ok.text.splitlines()[-1])["type"] == "summary"
    assert client.app.state.video_slots.running == 0


def test_a_client_that_stops_reading_is_dropped_and_frees_its_slot(make_client, tiny_model, auth, fall_clips,
                                                                    caplog):
    client = _client(make_client, tiny_model, max_concurrent_videos=1, video_client_timeout_s=0.5)
    worker = client.app.state.worker
    data = fall_clips[0].path.read_bytes()
    with client.stream("POST", "/v1/videos", files=_files(data), headers=auth) as stuck:
        lines = stuck.iter_lines()
        assert json.loads(next(lines))["type"] == "frame"
        # no reading now: the 64-line hand-off fills, the analysis waits 0.5 s, then gives up
        took = _wait(lambda: client.app.state.video_slots.running == 0, 15)
        inferred = worker.frames
        assert inferred < 128, f"{inferred} frames inferred: the analysis did not stop"
        # the freed slot serves another client while the stuck one is still connected
        ok = client.post("/v1/videos", files=_files(data), headers=auth)
        assert ok.status_code == 200 and json.loads(ok.text.splitlines()[-1])["frames"] == 128
        rest = [json.loads(line) for line in lines if line]  # the stuck client reads again
    frames = [m for m in rest if m["type"] == "frame"]
    assert len(frames) < 127 and rest[-1]["type"] == "error"
    assert "no output for 0.5 s" in rest[-1]["reason"] and "FALLDET_VIDEO_CLIENT_TIMEOUT_S" in rest[-1]["reason"]
    assert any("took no output" in r.getMessage() for r in caplog.records)
    print(f"\nstuck client: analysis stopped and slot freed {took:.2f} s after the first line; "
          f"{len(frames) + 1} frame lines handed over")
