"""Live streams: the manager (registry, limits, persistence, shards, result flow), its REST API, and
slow end-to-end runs against real GStreamer RTSP cameras replaying the shared clips in real time.

Fast tests point cameras at a port where nothing listens (their readers sit in backoff) and use
small fakes for the worker, pipeline and bus. The slow fairness test uses the real inference worker,
pipeline and bus with a detector that only costs time (fairness, not the model, is the point); the
end-to-end test uses the real app and model.
"""
from __future__ import annotations

import json
import os
import signal
import stat
import statistics
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.streams import router
from service.frames import Frame, FrameResult, Person
from service.sources.rtsp import RtspSettings
from service.streams import (InvalidStream, StreamExists, StreamLimit, StreamManager, WrongShard, shard_of)
from test_rtsp_reader import RtspCamera, clip, free_port, needs_rtsp_server, wait_for

KEY = "test-key"
STATUS_KEYS = {"id", "url", "state", "last_error", "frames_received", "frames_processed", "frames_dropped",
               "fps_in", "fps_processed", "width", "height"}


# -- fakes ------------------------------------------------------------------------------------------------
class FakeWorker:
    """Resolves each live frame on a thread after `delay_s`; a newer frame replaces a pending one."""

    def __init__(self, delay_s: float = 0.0, persons=None, fail_every: int = 0) -> None:
        self.delay_s = delay_s
        self.persons = persons or []
        self.fail_every = fail_every
        self.submitted: list[Frame] = []
        self.forgotten: list[str] = []
        self._dropped: dict[str, int] = {}
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def submit(self, frame: Frame, live: bool) -> Future:
        assert live is True
        fut: Future = Future()
        with self._lock:
            self.submitted.append(frame)
            old = self._pending.get(frame.source)
            if old is not None and old.cancel():
                self._dropped[frame.source] = self._dropped.get(frame.source, 0) + 1
            self._pending[frame.source] = fut
        n = len(self.submitted)

        def resolve() -> None:
            time.sleep(self.delay_s)
            if fut.set_running_or_notify_cancel():
                if self.fail_every and n % self.fail_every == 0:
                    fut.set_exception(RuntimeError("model failed"))
                else:
                    fut.set_result(list(self.persons))

        if self.delay_s:
            threading.Thread(target=resolve, daemon=True).start()
        else:
            resolve()  # already done when the manager adds its callback: runs on the caller's thread
        return fut

    def dropped(self, source: str) -> int:
        return self._dropped.get(source, 0)

    def forget(self, source: str) -> None:
        self.forgotten.append(source)


class FakeEvent:
    def __init__(self, source: str, type_: str, frame: int) -> None:
        self.source, self.type, self.frame = source, type_, frame
        self.id = f"{source}-{type_}-{frame}"

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.type, "source": self.source, "frame": self.frame}


class FakePipeline:
    """Records steps; raises on frame `explode_at`; emits an event on frame `event_at`."""

    def __init__(self, source: str, explode_at: int = -1, event_at: int = -1) -> None:
        self.source = source
        self.steps: list[tuple[int, int, float, int]] = []
        self.explode_at, self.event_at = explode_at, event_at
        self.finished = False

    def step(self, frame, persons, latency_ms, dropped):
        assert not self.finished, "step after finish"
        if frame.index == self.explode_at:
            raise RuntimeError("tracker bug")
        self.steps.append((frame.index, len(persons), latency_ms, dropped))
        events = [FakeEvent(self.source, "fall_alert", frame.index)] if frame.index == self.event_at else []
        return FrameResult(self.source, frame.index, frame.pts_s, frame.captured_at, latency_ms, dropped), events

    def finish(self):
        self.finished = True
        return [FakeEvent(self.source, "fall_cleared", -1)]

    def timeline(self):
        return {"source": self.source, "tracks": [], "steps": len(self.steps)}


class FakeBus:
    def __init__(self) -> None:
        self.frames: list[FrameResult] = []
        self.events: list[FakeEvent] = []

    def publish_frame(self, result):
        self.frames.append(result)

    def publish_event(self, event):
        self.events.append(event)
        return event.to_json()


def make_settings(tmp_path: Path, **kw) -> SimpleNamespace:
    base = dict(max_streams=4, streams_file=tmp_path / "streams.json",
                rtsp=RtspSettings(backoff_initial_s=0.2, backoff_max_s=1.0))
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def parts():
    pipelines: dict[str, FakePipeline] = {}

    def factory(source: str) -> FakePipeline:
        pipelines[source] = FakePipeline(source)
        return pipelines[source]

    return SimpleNamespace(worker=FakeWorker(), bus=FakeBus(), pipelines=pipelines, factory=factory)


@pytest.fixture
def manager(tmp_path, parts):
    m = StreamManager(make_settings(tmp_path), parts.worker, parts.bus, parts.factory)
    m.start()
    yield m
    m.stop()


def dead_url(password: str = "") -> str:
    auth = f"viewer:{password}@" if password else ""
    return f"rtsp://{auth}127.0.0.1:{free_port()}/cam"


def image_frame(source: str, index: int) -> Frame:
    return Frame(source, index, index / 25, time.time(), np.zeros((48, 64, 3), np.uint8))


# -- manager (fast) ---------------------------------------------------------------------------------------
def test_add_list_get_remove_with_masked_url_and_states(manager, parts):
    status = manager.add("cam-1", dead_url("hunter2"))
    assert STATUS_KEYS <= status.keys() and status["id"] == "cam-1"
    assert "hunter2" not in json.dumps(status) and "viewer:***@" in status["url"]
    assert status["state"] in ("connecting", "backoff")
    wait_for(lambda: manager.get("cam-1")["state"] == "backoff" and manager.get("cam-1")["last_error"], 5)
    assert "refused" in manager.get("cam-1")["last_error"].lower()
    assert "hunter2" not in manager.get("cam-1")["last_error"]
    assert [s["id"] for s in manager.list()] == ["cam-1"]
    assert REGISTRY.get_sample_value("falldet_stream_state", {"source": "cam-1", "state": "backoff"}) == 1.0
    assert REGISTRY.get_sample_value("falldet_stream_reconnects_total", {"source": "cam-1"}) >= 1
    final = manager.remove("cam-1")
    assert REGISTRY.get_sample_value("falldet_stream_state", {"source": "cam-1", "state": "backoff"}) is None
    assert final["state"] == "stopped"
    assert manager.get("cam-1") is None and manager.remove("cam-1") is None and manager.list() == []
    assert parts.worker.forgotten == ["cam-1"]


def test_refusals_carry_their_http_codes(manager):
    manager.add("a", dead_url())
    with pytest.raises(StreamExists) as dup:
        manager.add("a", dead_url())
    assert dup.value.status_code == 409
    for bad_url in ("http://cam/x", "file:///etc/passwd", "/dev/video0", "rtsp://"):
        with pytest.raises(InvalidStream) as bad:
            manager.add("b", bad_url)
        assert bad.value.status_code == 422
    for bad_id in ("", "has space", "../x", "x" * 65, "-lead"):
        with pytest.raises(InvalidStream):
            manager.add(bad_id, dead_url())
    for i in range(3):
        manager.add(f"c{i}", dead_url())
    with pytest.raises(StreamLimit, match="max_streams=4") as limit:
        manager.add("one-too-many", dead_url())
    assert limit.value.status_code == 429
    assert len(manager) == 4


def test_streams_file_resumes_cameras_after_restart(tmp_path, parts):
    settings = make_settings(tmp_path)
    first = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    first.start()
    urls = {"a": dead_url("pw1"), "b": dead_url(), "c": dead_url()}
    for sid, url in urls.items():
        first.add(sid, url)
    first.remove("b")
    first.stop()
    saved = json.loads(settings.streams_file.read_text())
    assert saved == [{"id": "a", "url": urls["a"]}, {"id": "c", "url": urls["c"]}]
    assert stat.S_IMODE(os.stat(settings.streams_file).st_mode) == 0o600  # URLs may hold passwords
    second = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    second.start()
    try:
        assert sorted(s["id"] for s in second.list()) == ["a", "c"]
        assert all(s["state"] in ("connecting", "backoff") for s in second.list())
    finally:
        second.stop()


def test_bad_streams_file_entries_are_skipped_not_fatal(tmp_path, parts):
    settings = make_settings(tmp_path)
    settings.streams_file.write_text(json.dumps([{"id": "ok", "url": dead_url()},
                                                 {"id": "bad", "url": "file:///etc/passwd"},
                                                 {"id": "bad id", "url": dead_url()}, "junk"]))
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    try:
        assert [s["id"] for s in m.list()] == ["ok"]
    finally:
        m.stop()
    settings.streams_file.write_text("{not json")
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    assert m.list() == []
    m.stop()


def test_shards_run_only_their_cameras_and_keep_the_others_in_the_file(tmp_path, parts):
    ids = [f"ward-{i}" for i in range(12)]
    settings = make_settings(tmp_path, max_streams=16, shard_index=1, shard_count=3)
    settings.streams_file.write_text(json.dumps([{"id": i, "url": dead_url()} for i in ids]))
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    try:
        mine = sorted(s["id"] for s in m.list())
        assert mine == sorted(i for i in ids if shard_of(i, 3) == 1) and 0 < len(mine) < len(ids)
        other = next(i for i in (f"new-{n}" for n in range(50)) if shard_of(i, 3) != 1)
        with pytest.raises(WrongShard) as wrong:
            m.add(other, dead_url())
        assert wrong.value.status_code == 421
        m.remove(mine[0])
        kept = [e["id"] for e in json.loads(settings.streams_file.read_text())]
        assert sorted(kept) == sorted(set(ids) - {mine[0]})  # the other pods' cameras are untouched
    finally:
        m.stop()
    assert {shard_of(i, 3) for i in ids} == {0, 1, 2}


def test_results_flow_in_order_through_pipeline_and_bus(tmp_path):
    bus, worker = FakeBus(), FakeWorker(delay_s=0.005, persons=[Person((1, 2, 3, 4), 0.9, 2)], fail_every=7)
    pipelines: dict[str, FakePipeline] = {}

    def factory(source):
        pipelines[source] = FakePipeline(source, explode_at=11, event_at=5)
        return pipelines[source]

    m = StreamManager(make_settings(tmp_path), worker, bus, factory)
    m.add("cam", dead_url())
    stream = m._streams["cam"]
    for i in range(40):
        stream.on_frame(image_frame("cam", i))
        time.sleep(0.002 if i % 3 else 0.02)  # sometimes faster than the "model": drops
    def accounted() -> int:
        s = m.get("cam")
        return s["frames_processed"] + s["frames_dropped"] + stream.errors

    wait_for(lambda: accounted() == 40, 3)
    status = m.get("cam")
    steps = pipelines["cam"].steps
    stepped = [s[0] for s in steps]
    assert stepped == sorted(stepped) and len(set(stepped)) == len(stepped)
    assert 11 not in stepped and status["frames_processed"] == len(stepped) == len(bus.frames)
    assert all(n == 1 for _, n, _, _ in steps) and all(lat >= 0 for _, _, lat, _ in steps)
    assert [e.type for e in bus.events] == (["fall_alert"] if 5 in stepped else [])
    failed = [f.index for f in worker.submitted if (f.index + 1) % 7 == 0]
    assert not set(failed) & set(stepped)
    # every submitted frame was processed, dropped by the worker, failed, or blew up in the pipeline
    assert status["frames_processed"] + status["frames_dropped"] + stream.errors == 40
    assert steps[-1][3] <= status["frames_dropped"]
    m.remove("cam")
    assert [e.type for e in bus.events][-1] == "fall_cleared" and pipelines["cam"].finished
    stream.on_result(image_frame("cam", 99), _done([]))  # a late result after removal is ignored
    assert pipelines["cam"].steps == steps


def _done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def test_stop_keeps_cameras_in_the_file_and_publishes_final_events(tmp_path, parts):
    settings = make_settings(tmp_path)
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    m.add("a", dead_url())
    m.stop()
    assert [e.type for e in parts.bus.events] == ["fall_cleared"]
    assert json.loads(settings.streams_file.read_text())[0]["id"] == "a"


# -- REST API (fast) ---------------------------------------------------------------------------------------
@pytest.fixture
def client(manager):
    app = FastAPI()
    app.include_router(router)
    app.state.api_keys = [KEY]
    app.state.streams = manager
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


def test_api_needs_a_key(client):
    assert client.get("/v1/streams", headers={"X-API-Key": "wrong"}).status_code == 401
    bare = TestClient(client.app)
    assert bare.get("/v1/streams").status_code == 401
    assert bare.post("/v1/streams", json={"id": "a", "url": dead_url()}).status_code == 401


def test_api_crud_and_clear_refusals(client):
    r = client.post("/v1/streams", json={"id": "door", "url": dead_url("s3cret")})
    assert r.status_code == 201 and r.json()["id"] == "door" and "s3cret" not in r.text
    assert client.post("/v1/streams", json={"id": "door", "url": dead_url()}).status_code == 409
    bad = client.post("/v1/streams", json={"id": "x", "url": "file:///etc/passwd"})
    assert bad.status_code == 422 and "rtsp://" in bad.json()["detail"]
    leaky = client.post("/v1/streams", json={"id": "y", "url": "http://admin:t0psecret@cam/x"})
    assert leaky.status_code == 422 and "t0psecret" not in leaky.text
    assert client.post("/v1/streams", json={"id": "../etc", "url": dead_url()}).status_code == 422
    assert client.post("/v1/streams", json={"id": "z", "url": dead_url(), "extra": 1}).status_code == 422
    assert client.post("/v1/streams", json={"id": "z"}).status_code == 422
    assert client.post("/v1/streams", content=b"not json",
                       headers={"content-type": "application/json"}).status_code == 422
    for i in range(3):
        assert client.post("/v1/streams", json={"id": f"c{i}", "url": dead_url()}).status_code == 201
    over = client.post("/v1/streams", json={"id": "c9", "url": dead_url()})
    assert over.status_code == 429 and "max_streams=4" in over.json()["detail"]

    items = client.get("/v1/streams").json()["items"]
    assert [i["id"] for i in items] == ["door", "c0", "c1", "c2"] and all(STATUS_KEYS <= i.keys() for i in items)
    one = client.get("/v1/streams/door")
    assert one.status_code == 200 and "viewer:***@" in one.json()["url"]
    assert client.get("/v1/streams/nope").status_code == 404
    timeline = client.get("/v1/streams/door/timeline")
    assert timeline.status_code == 200 and timeline.json()["source"] == "door"
    assert client.get("/v1/streams/nope/timeline").status_code == 404
    gone = client.delete("/v1/streams/door")
    assert gone.status_code == 200 and gone.json()["state"] == "stopped"
    assert client.delete("/v1/streams/door").status_code == 404
    assert client.get("/v1/streams/door").status_code == 404
    assert client.post("/v1/streams", json={"id": "c9", "url": dead_url()}).status_code == 201


# -- real cameras (slow) ------------------------------------------------------------------------------------
class SlowDetector:
    """Costs time like a model (fixed + per image) and finds nobody: the worker is the bottleneck."""

    def __init__(self, fixed_s: float = 0.03, per_image_s: float = 0.012) -> None:
        self.fixed_s, self.per_image_s = fixed_s, per_image_s

    def detect(self, images, rgb=False):
        time.sleep(self.fixed_s + self.per_image_s * len(images))
        return [[] for _ in images]


@pytest.mark.slow
@needs_rtsp_server
def test_four_cameras_are_served_fairly(tmp_path):
    from service.bus import EventBus
    from service.pipeline import PipelineSettings, SourcePipeline
    from service.worker import InferenceWorker

    names = ["fall/13.mp4", "fall/14.mp4", "fall/15.mp4", "adl/10.mp4"]
    worker = InferenceWorker(SlowDetector(), max_batch=8, max_wait_ms=4.0)
    worker.start()
    bus = EventBus(store=None)
    manager = StreamManager(make_settings(tmp_path), worker, bus,
                            lambda sid: SourcePipeline(sid, PipelineSettings(), live=True))
    with RtspCamera({f"cam{i}": clip(n) for i, n in enumerate(names)}, fps=25) as camera:
        try:
            for i in range(4):
                manager.add(f"cam{i}", camera.url(f"cam{i}"))
            wait_for(lambda: all(s["state"] == "live" for s in manager.list()), 15)
            time.sleep(1.5)
            before = {s["id"]: s for s in manager.list()}
            t0 = time.monotonic()
            time.sleep(8.0)
            after = {s["id"]: s for s in manager.list()}
            span = time.monotonic() - t0
        finally:
            manager.stop()
            worker.stop()
    fps = {k: (after[k]["frames_processed"] - before[k]["frames_processed"]) / span for k in after}
    fps_in = {k: (after[k]["frames_received"] - before[k]["frames_received"]) / span for k in after}
    spread = (max(fps.values()) - min(fps.values())) / max(fps.values())
    print(f"\nfour cameras, worker-bound (batch {worker.frames / max(worker.batches, 1):.2f} frames/call): "
          f"processed fps {({k: round(v, 2) for k, v in fps.items()})}, received fps "
          f"{({k: round(v, 2) for k, v in fps_in.items()})}, spread {spread:.1%}, "
          f"dropped {({k: after[k]['frames_dropped'] for k in after})}")
    assert all(v > 15 for v in fps_in.values())  # every camera really streamed (25 fps nominal)
    assert min(fps.values()) > 3
    assert spread <= 0.20
    assert all(after[k]["frames_dropped"] > 0 for k in after)  # the worker was the bottleneck


# -- the real app behind a real HTTP server (slow) ---------------------------------------------------------
class LiveServer:
    """`create_app(...)` served by uvicorn on a free port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))  # as `serve`
        self.thread: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> "LiveServer":
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 60)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def http(self):
        import httpx

        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": self.app.state.api_keys[0]},
                            timeout=30)

    def ws(self, path: str):
        from websockets.sync.client import connect

        return connect(f"ws://127.0.0.1:{self.port}{path}", additional_headers={"X-API-Key": self.app.state.api_keys[0]},
                       max_size=None)


class WsCollector:
    """Reads one WebSocket on a thread, stamping each frame line with its arrival time."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict]] = []
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                message = json.loads(self.ws.recv())
                with self.lock:
                    if message.get("type") == "frame":
                        self.frames.append((time.time(), message))
                    else:
                        self.events.append(message)
        except Exception:
            return  # closed

    def since(self, t: float) -> list[tuple[float, dict]]:
        with self.lock:
            return [(at, m) for at, m in self.frames if m["captured_at"] >= t]

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def app_for(tmp_path: Path, runtime, **overrides):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(state_dir=tmp_path / "state", api_keys=["e2e-key"], max_wait_ms=2.0,
                        **({"max_streams": 4} | overrides))  # default RTSP timeouts and backoff
    return create_app(settings, runtime=runtime)


def measure_camera(server: LiveServer, seconds: float, warmup_s: float = 2.0) -> dict:
    """Results a WebSocket client receives from camera `cam` over `seconds` of its capture time."""
    with server.ws("/v1/streams/cam/ws") as ws:
        collector = WsCollector(ws)
        time.sleep(warmup_s)
        with server.http() as http:
            before = http.get("/v1/streams/cam").json()
        t0 = time.time()
        time.sleep(seconds)
        t1 = time.time()
        with server.http() as http:
            after = http.get("/v1/streams/cam").json()
        time.sleep(1.0)  # results of frames captured before t1 still on their way
        collector.close()
    got = [(at, m) for at, m in collector.since(t0) if m["captured_at"] < t1]
    indices = [m["frame"] for _, m in got]
    received = after["frames_received"] - before["frames_received"]
    latency = sorted((at - m["captured_at"]) * 1000 for at, m in got)
    return {"received": received, "results": len(got), "fraction": len(got) / max(received, 1),
            "in_order": indices == sorted(set(indices)),
            "p50_ms": statistics.median(latency) if latency else None,
            "p95_ms": latency[int(0.95 * (len(latency) - 1))] if latency else None,
            "server_p50_ms": statistics.median(m["latency_ms"] for _, m in got) if got else None,
            "fps_in": after["fps_in"], "fps_processed": after["fps_processed"], "status": after}


@pytest.fixture(scope="module")
def tiny_runtime(tiny_model):
    """conftest's contract-following model: inference costs almost nothing."""
    from service.runtime import Runtime

    return Runtime(tiny_model, ["CPUExecutionProvider"])


@pytest.mark.slow
@needs_rtsp_server
@pytest.mark.parametrize("model", ["tiny", "shipped"])
def test_client_gets_results_for_a_25fps_camera(tmp_path, request, model):
    """The acceptance check: fraction of a 25-fps camera's frames a WebSocket client gets, and latency.

    `tiny` (a contract model that costs almost nothing) shows what the stream path itself delivers;
    `shipped` is the real detector on this machine's CPU, where the model sets the pace.
    """
    runtime = request.getfixturevalue("tiny_runtime" if model == "tiny" else "runtime")
    with RtspCamera({"cam": clip("fall/14.mp4")}, fps=25) as camera, LiveServer(app_for(tmp_path, runtime)) as server:
        with server.http() as http:
            # every frame analysed (the service's default is 5 a second; this camera asks for all 25)
            assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam"),
                                                  "detect_fps": 30}).status_code == 201
            wait_for(lambda: http.get("/v1/streams/cam").json()["state"] == "live", 15)
        m = measure_camera(server, seconds=8.0)
        with server.http() as http:
            metrics = http.get("/metrics").text
    print(f"\n[{model} model] {m['results']}/{m['received']} frames got results = {m['fraction']:.1%}; "
          f"capture-to-client latency p50 {m['p50_ms']:.0f} ms, p95 {m['p95_ms']:.0f} ms "
          f"(server-side p50 {m['server_p50_ms']:.0f} ms); fps in {m['fps_in']}, processed {m['fps_processed']}; "
          f"dropped so far {m['status']['frames_dropped']}")
    assert m["received"] >= 8.0 * 20 and m["in_order"]
    assert 'falldet_stream_frames_received_total{source="cam"}' in metrics
    assert 'falldet_stream_state{source="cam",state="live"} 1.0' in metrics
    if model == "tiny":
        assert m["fraction"] >= 0.75  # "most frames": the stream path itself loses little (94-99 % measured)
    else:
        assert m["results"] > 0  # the fraction on a shared 2-core CPU is reported, not asserted


@pytest.mark.slow
@needs_rtsp_server
def test_camera_restart_without_service_restart(tmp_path, tiny_runtime):
    """Kill the camera: the stream shows stalled/backoff within seconds; restart it: live again and the
    same WebSocket keeps receiving results. A URL where nothing listens is a backoff state."""
    camera = RtspCamera({"cam": clip("fall/13.mp4")}, fps=25).start()
    try:
        with LiveServer(app_for(tmp_path, tiny_runtime)) as server, server.http() as http:
            assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam", "viewer:hunter2")}).status_code == 201
            dead = http.post("/v1/streams", json={"id": "dead", "url": dead_url("pw")})
            assert dead.status_code == 201
            state = lambda sid: http.get(f"/v1/streams/{sid}").json()  # noqa: E731
            wait_for(lambda: state("cam")["state"] == "live", 15)
            with server.ws("/v1/streams/cam/ws") as ws:
                collector = WsCollector(ws)
                wait_for(lambda: len(collector.frames) > 10, 10)

                port = camera.port
                camera.stop(signal.SIGKILL)
                killed = time.time()
                to_down = wait_for(lambda: state("cam")["state"] in ("stalled", "backoff"), 10)
                down = state("cam")
                time.sleep(2.0)
                camera = RtspCamera({"cam": clip("fall/13.mp4")}, fps=25, port=port).start()
                restarted = time.time()
                to_live = wait_for(lambda: state("cam")["state"] == "live", 15)
                wait_for(lambda: len(collector.since(restarted)) >= 25, 10)
                after = state("cam")
                collector.close()
            dead_status = state("dead")
            listed = http.get("/v1/streams").json()["items"]
            timeline = http.get("/v1/streams/cam/timeline")
            assert timeline.status_code == 200 and isinstance(timeline.json(), dict)
        # a restarted service resumes its cameras from the streams file
        with LiveServer(app_for(tmp_path, tiny_runtime)) as server, server.http() as http:
            resumed = sorted(s["id"] for s in http.get("/v1/streams").json()["items"])
            to_resumed = wait_for(lambda: http.get("/v1/streams/cam").json()["state"] == "live", 15)
    finally:
        camera.stop()
    print(f"\ncamera killed: {down['state']} after {to_down:.2f} s ({down['last_error']}); restarted after "
          f"{restarted - killed:.1f} s down: live again in {to_live:.2f} s, "
          f"{len(collector.since(restarted))} results on the same WebSocket since; reconnects {after['reconnects']}; "
          f"dead camera: {dead_status['state']} ({dead_status['last_error']}); after a service restart "
          f"{resumed} resumed, cam live in {to_resumed:.2f} s")
    assert resumed == ["cam", "dead"]
    assert down["last_error"] and "hunter2" not in json.dumps(down)
    assert after["state"] == "live" and after["reconnects"] >= 1
    assert dead_status["state"] in ("backoff", "connecting") and "refused" in dead_status["last_error"].lower()
    assert "pw@" not in json.dumps(listed) and {s["id"] for s in listed} == {"cam", "dead"}
    frames = [m["frame"] for _, m in collector.frames]
    assert frames == sorted(set(frames))  # indices keep rising across the reconnect
