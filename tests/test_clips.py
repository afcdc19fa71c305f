"""Fall clips (service/clips.py, service/clip_writer.py) without a camera: the frame buffer and its
caps, a clip job through the real writer (MP4 decoded back with PyAV), the store's link and
retention, Range requests, a restart mid-write, and uploads with `?clips=true`."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.clip_writer import pick_codec
from service.clips import ClipSettings, ClipWriter, BufferBudget, SourceClips
from service.frames import Frame, Person
from service.store import AlertStore, RetentionSettings

W, H = 320, 240
BOX = (100.0, 120.0, 220.0, 200.0)


def frame(i: int, fps: float = 25.0, noise: bool = False) -> Frame:
    img = np.full((H, W, 3), 60, np.uint8)
    cv2.putText(img, str(i), (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    if noise:  # incompressible: big JPEGs, to hit memory caps
        img = np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8)
    return Frame("cam", i, i / fps, 1000.0 + i / fps, img)


def alert(onset_s: float, alert_s: float, track: int = 7):
    return SimpleNamespace(type="fall_alert", id=uuid.uuid4().hex, track_id=track, started_pts_s=onset_s,
                           pts_s=alert_s, at=time.time())


def test_the_encoder_is_h264_in_this_build():
    assert pick_codec() == "libx264"


def test_buffer_keeps_fps_and_seconds_and_a_memory_cap_shortens_it_visibly():
    settings = ClipSettings(pre_s=2.0, fps=10.0)
    writer = ClipWriter(settings)
    clips = SourceClips("capcam", settings, writer, lambda e: Path("/nonexistent"), live=True)
    for i in range(250):  # 10 s at 25 fps
        clips.add_frame(frame(i))
    st = clips.status()
    assert st["frames"] == pytest.approx((2.0 + 5.0) * 10, abs=2)  # pre_s + lead at 10 fps
    assert st["seconds"] == pytest.approx(7.0, abs=0.15) and not st["capped"]
    # a per-camera cap of ~0.5 MB with incompressible frames: fewer seconds, said so
    small = SourceClips("capcam2", ClipSettings(pre_s=2.0, fps=10.0, buffer_mb_per_camera=0.5), writer,
                        lambda e: Path("/nonexistent"), live=True)
    for i in range(100):
        small.add_frame(frame(i, noise=True))
    st = small.status()
    assert st["capped"] and st["bytes"] <= 0.5 * 2**20 and st["seconds"] < 3.0
    assert REGISTRY.get_sample_value("falldet_clip_buffer_capped", {"source": "capcam2"}) == 1.0
    assert REGISTRY.get_sample_value("falldet_clip_buffer_seconds", {"source": "capcam2"}) == st["seconds"]
    # a total budget shared by cameras: the second camera is capped by what the first holds
    budget = BufferBudget(int(0.6 * 2**20))
    a = SourceClips("cama", ClipSettings(pre_s=2.0, fps=10.0), writer, lambda e: Path("/x"), live=True, budget=budget)
    b = SourceClips("camb", ClipSettings(pre_s=2.0, fps=10.0), writer, lambda e: Path("/x"), live=True, budget=budget)
    for i in range(60):
        a.add_frame(frame(i, noise=True))
        b.add_frame(frame(i, noise=True))
    assert budget.used <= budget.max_bytes and a.status()["capped"] and b.status()["capped"]
    for c in (clips, small, a, b):
        c.close()
    assert budget.used == 0 and REGISTRY.get_sample_value("falldet_clip_buffer_capped", {"source": "cama"}) is None


def run_job(tmp_path: Path, frames: int, onset_s: float, alert_s: float, settings: ClipSettings, close_at: int | None = None):
    writer = ClipWriter(settings)
    done = []
    clips = SourceClips("cam", settings, writer, lambda e: tmp_path / "day" / f"{e.id}.mp4", live=False,
                        on_done=done.append)
    for i in range(frames):
        f = frame(i)
        clips.add_frame(f)
        events = [alert(onset_s, alert_s)] if abs(f.pts_s - alert_s) < 1e-9 else []
        clips.add_result(f.pts_s, [Person(BOX, 0.9, 0, track_id=7)], events)
        if close_at is not None and i == close_at:
            break
    jobs = clips.close()
    assert clips.jobs and all(j.done.wait(60) for j in clips.jobs)
    writer.stop()
    return clips.jobs[0], done


def decode(path: Path) -> tuple[list[np.ndarray], list[float], str]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames, times = [], []
        for f in c.decode(stream):
            frames.append(f.to_ndarray(format="bgr24"))
            times.append(float(f.time))
        return frames, times, stream.codec_context.name


def test_a_clip_spans_pre_s_before_onset_to_post_s_after_the_alert_with_the_box(tmp_path):
    settings = ClipSettings(pre_s=2.0, post_s=3.0, fps=10.0)
    job, done = run_job(tmp_path, frames=25 * 12, onset_s=4.0, alert_s=5.0, settings=settings)
    assert done == [job] and job.written and job.error is None
    assert job.path.is_file() and not list(job.path.parent.glob(".*.tmp"))
    frames, times, codec = decode(job.path)
    assert codec == "h264"
    # from onset - pre_s (2.0 s) to alert + post_s (8.0 s), 10 frames a second
    assert job.first_s == pytest.approx(2.0, abs=0.05) and job.last_s == pytest.approx(8.0, abs=0.1)
    assert times[-1] - times[0] == pytest.approx(6.0, abs=0.15) and len(frames) == pytest.approx(61, abs=2)
    assert job.duration_s == pytest.approx(6.1, abs=0.15)
    # the person's box is drawn: red (after the onset) on the box's top edge
    b, g, r = (int(v) for v in frames[-1][int(BOX[1]), 160])
    assert r > 180 and g < 90 and b < 90
    before_onset = frames[5]  # 2.5 s: before the onset the box is amber, not red
    b, g, r = (int(v) for v in before_onset[int(BOX[1]), 160])
    assert r > 180 and g > 120 and b < 90


def test_a_source_that_ends_mid_clip_closes_it_with_what_it_has(tmp_path):
    settings = ClipSettings(pre_s=2.0, post_s=10.0, fps=10.0)
    job, _ = run_job(tmp_path, frames=25 * 20, onset_s=4.0, alert_s=5.0, settings=settings, close_at=25 * 7)
    frames, times, _ = decode(job.path)
    assert job.written and times[-1] - times[0] == pytest.approx(5.0, abs=0.15)  # 2.0 .. 7.0 s


def test_live_job_is_closed_at_its_wall_clock_deadline(tmp_path, monkeypatch):
    import service.clips as clips_module

    monkeypatch.setattr(clips_module, "DEADLINE_GRACE_S", 0.2)
    settings = ClipSettings(pre_s=1.0, post_s=0.5, fps=10.0)
    writer = ClipWriter(settings)
    clips = SourceClips("livecam", settings, writer, lambda e: tmp_path / f"{e.id}.mp4", live=True)
    writer.add_tick(clips.expire)
    for i in range(50):  # 2 s, then the camera goes silent
        f = frame(i)
        clips.add_frame(f)
        clips.add_result(f.pts_s, [Person(BOX, 0.9, 0, track_id=7)], [alert(1.0, 1.6)] if i == 40 else [])
    t0 = time.monotonic()
    while not list(tmp_path.glob("*.mp4")) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    (path,) = tmp_path.glob("*.mp4")
    frames, times, _ = decode(path)
    assert times[-1] - times[0] == pytest.approx(1.96 - 0.0, abs=0.2)  # 0.0 .. the last frame before silence
    clips.close()
    writer.stop()


# ------------------------------------------------------------------ the store and the API

class FakeEvent:
    def __init__(self, type_: str = "fall_alert") -> None:
        self.id = uuid.uuid4().hex
        self.snapshot = b"\xff\xd8jpeg"
        self.type = type_

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.type, "source": "cam", "track_id": 1, "at": time.time()}


def test_store_links_a_clip_and_retention_covers_clips(tmp_path):
    store = AlertStore(tmp_path / "a.db", tmp_path / "snapshots", clip_dir=tmp_path / "clips")
    try:
        events = [FakeEvent() for _ in range(3)]
        for e in events:
            store.add(e)
            rel = f"20260101/{e.id}.mp4"
            (tmp_path / "clips" / "20260101").mkdir(parents=True, exist_ok=True)
            (tmp_path / "clips" / rel).write_bytes(b"x" * 600_000)
            assert store.get(e.id)["clip_url"] is None  # not linked yet
            assert store.attach_clip(e.id, rel, 600_000)
        assert store.get(events[0].id)["clip_url"] == f"/v1/alerts/{events[0].id}/clip.mp4"
        assert not store.attach_clip(uuid.uuid4().hex, "20260101/x.mp4", 1)  # no such alert (yet)
        store.ack(events[0].id, "op", None)
        store.ack(events[1].id, "op", None)
        # cap 1 MB: the oldest acknowledged clips go; the open alert keeps its clip whatever its age
        out = store.prune(RetentionSettings(clip_max_total_mb=1.0, clip_max_age_days=None))
        assert out["clips"] == 2 and out["clip_bytes"] == 1_200_000
        assert store.clip_path(events[0].id) is None and store.get(events[0].id)["clip_url"] is None
        assert not (tmp_path / "clips" / f"20260101/{events[0].id}.mp4").exists()
        assert store.clip_path(events[2].id) is not None
        out = store.prune(RetentionSettings(clip_max_age_days=1e-9), now=time.time() + 10)
        assert out["clips"] == 0 and store.clip_path(events[2].id) is not None  # open alert: kept
    finally:
        store.close()


def test_a_restart_mid_write_leaves_no_broken_clip_listed(tmp_path):
    clips_dir = tmp_path / "clips" / "20260101"
    clips_dir.mkdir(parents=True)
    store = AlertStore(tmp_path / "a.db", tmp_path / "snapshots", clip_dir=tmp_path / "clips")
    event = FakeEvent()
    store.add(event)
    store.close()
    tmp = clips_dir / f".{event.id}.mp4.abc123.tmp"  # what a writer killed mid-clip leaves
    tmp.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"half a clip")
    store = AlertStore(tmp_path / "a.db", tmp_path / "snapshots", clip_dir=tmp_path / "clips")
    try:
        assert not tmp.exists()
        assert store.get(event.id)["clip_url"] is None and store.clip_path(event.id) is None
    finally:
        store.close()


@pytest.fixture
def clip_client(tiny_client, auth, tmp_path):
    store = tiny_client.app.state.store
    event = FakeEvent()
    store.add(event)
    settings = ClipSettings(pre_s=1.0, post_s=1.0, fps=10.0)
    job, _ = run_job(tmp_path / "made", frames=100, onset_s=1.5, alert_s=2.0, settings=settings)
    rel = f"20260101/{event.id}.mp4"
    (store.clip_dir / "20260101").mkdir(parents=True, exist_ok=True)
    os.replace(job.path, store.clip_dir / rel)
    assert store.attach_clip(event.id, rel, (store.clip_dir / rel).stat().st_size)
    return tiny_client, event.id, (store.clip_dir / rel).read_bytes()


def test_clip_is_served_with_range_support(clip_client, auth):
    client, alert_id, data = clip_client
    url = f"/v1/alerts/{alert_id}/clip.mp4"
    assert client.get(url).status_code == 401
    assert client.get(f"/v1/alerts/{alert_id}", headers=auth).json()["clip_url"] == url
    full = client.get(url, headers=auth)
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-type"] == "video/mp4" and full.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers=auth | {"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get(url, headers=auth | {"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    open_end = client.get(url, headers=auth | {"Range": f"bytes={len(data) - 10}-"})
    assert open_end.status_code == 206 and open_end.content == data[-10:]
    assert client.get(url, headers=auth | {"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_clip_404s_say_why(tiny_client, auth):
    store = tiny_client.app.state.store
    alert, cleared = FakeEvent(), FakeEvent("fall_cleared")
    store.add(alert)
    store.add(cleared)
    res = tiny_client.get(f"/v1/alerts/{alert.id}/clip.mp4", headers=auth)
    assert res.status_code == 404 and "not written yet" in res.json()["detail"]
    res = tiny_client.get(f"/v1/alerts/{cleared.id}/clip.mp4", headers=auth)
    assert res.status_code == 404 and "fall_alert events only" in res.json()["detail"]
    res = tiny_client.get(f"/v1/alerts/{uuid.uuid4().hex}/clip.mp4", headers=auth)
    assert res.status_code == 404 and res.json()["detail"].startswith("no alert with id")
    assert tiny_client.get("/v1/videos/clips/..%2Fa.db", headers=auth).status_code == 404


def test_upload_with_clips_true_gets_a_clip_line_and_the_clip(tiny_client, auth, fall_clips, tmp_path):
    """The tiny model sees a `fall` person in every frame: one alert after confirm_s, one clip (the
    video is short: the clip ends with the video)."""
    import json

    from conftest import cut_clip

    short_clip = cut_clip(fall_clips[0].path, tmp_path / "two-seconds.mp4", 60)
    with short_clip.open("rb") as f:
        res = tiny_client.post("/v1/videos?clips=true", files={"file": ("c.mp4", f, "video/mp4")}, headers=auth)
    assert res.status_code == 200
    lines = [json.loads(x) for x in res.text.splitlines()]
    kinds = [m["type"] for m in lines]
    assert kinds[-1] == "summary" and "clip" in kinds
    alerts = [m for m in lines if m["type"] == "fall_alert"]
    (clip,) = [m for m in lines if m["type"] == "clip"]
    assert clip["alert_id"] == alerts[0]["id"] and clip["written"] and clip["frames"] > 5
    assert lines[-1]["clips"][0]["clip_url"] == clip["clip_url"]
    got = tiny_client.get(clip["clip_url"], headers=auth)
    assert got.status_code == 200 and got.headers["content-type"] == "video/mp4"
    path = tiny_client.app.state.clips.uploads / clip["clip_url"].rsplit("/", 1)[1]
    frames, times, codec = decode(path)
    assert codec == "h264" and len(frames) == clip["frames"]
    assert times[-1] - times[0] == pytest.approx(59 / fall_clips[0].fps, abs=0.1)  # the whole 2 s video
    # without ?clips=true: no clip
    with short_clip.open("rb") as f:
        res = tiny_client.post("/v1/videos", files={"file": ("c.mp4", f, "video/mp4")}, headers=auth)
    assert '"type":"clip"' not in res.text


def test_analyze_cli_with_clips_writes_them_into_the_folder(tiny_model, fall_clips, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO_ROOT, cut_clip

    video = cut_clip(fall_clips[0].path, tmp_path / "two.mp4", 60)
    out = subprocess.run([sys.executable, "-m", "service", "analyze", str(video), "--model", str(tiny_model),
                          "--quiet", "--clips", str(tmp_path / "clips")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FALLDET_STATE_DIR": str(tmp_path / "state"),
                              "FALLDET_PIPELINE__SLOW_CONFIRM_S": "1"})  # the tiny model: down from frame 0
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    (clip,) = [m for m in lines if m["type"] == "clip"]
    alert = next(m for m in lines if m["type"] == "fall_alert")
    assert clip["written"] and clip["alert_id"] == alert["id"]
    assert clip["path"] == str(tmp_path / "clips" / f"two-{alert['id']}.mp4")
    frames, _, codec = decode(Path(clip["path"]))
    assert codec == "h264" and len(frames) == clip["frames"]
    assert lines[-1]["type"] == "summary" and lines[-1]["clips"][0]["path"] == clip["path"]


def test_a_clip_whose_file_cannot_be_made_still_tells_its_owner_why(tmp_path):
    """The encoder's file cannot be created (its folder is a file): the owner hears the error at once
    (an upload does not wait out `wait_s`) and the writer's room for active clips is given back."""
    from service.clips import ClipJob

    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    writer = ClipWriter(ClipSettings(fps=10.0))
    told: list[ClipJob] = []
    job = ClipJob(alert_id="a1", source="cam", track_id=1, onset_s=0.0, alert_s=1.0, start_s=0.0, end_s=2.0,
                  deadline=float("inf"), path=blocker / "a1.mp4", on_done=told.append)
    writer.open(job)
    writer.finish(job)
    assert job.done.wait(10), "the owner was never told"
    assert told == [job] and not job.written and job.error and "Error" in job.error
    assert writer.active == 0
    writer.stop()
