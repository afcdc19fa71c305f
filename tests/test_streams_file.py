"""Stream manager edge cases found in review: skipped entries of the streams file survive rewrites,
DELETE keeps the id reserved until the old camera is closed, WebSocket clients of a removed camera
are closed with 4404, shutdown stops every reader before waiting for any, and the health probes do
not need the thread pool.

All fast: cameras point at ports where nothing listens (readers sit in backoff), with the fakes of
tests/test_streams.py; concurrency is driven by events, never by sleeps.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from contextlib import asynccontextmanager

import anyio.to_thread
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from starlette.websockets import WebSocketDisconnect

from service.api import health, ws
from service.api.streams import router as streams_router
from service.bus import EventBus
from service.streams import StreamExists, StreamManager
from test_streams import KEY, FakePipeline, dead_url, image_frame, make_settings, parts  # noqa: F401 (fixture)


def skipped_gauge() -> float | None:
    return REGISTRY.get_sample_value("falldet_streams_skipped")


# -- 1. entries skipped at start are kept in the file ------------------------------------------------------
def test_entries_skipped_at_start_survive_every_rewrite(tmp_path, parts, caplog):
    settings = make_settings(tmp_path, max_streams=2)
    bad = {"id": "typo", "url": "htp://cam/x", "note": "kept as written"}
    entries = [{"id": "a", "url": dead_url("pw")}, {"id": "b", "url": dead_url()},
               {"id": "c", "url": dead_url(), "site": "ward 3"}, bad]
    settings.streams_file.write_text(json.dumps(entries))
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    with caplog.at_level(logging.INFO, logger="service.streams"):
        m.start()
    try:
        assert sorted(s["id"] for s in m.list()) == ["a", "b"]
        assert m.skipped == 2 and skipped_gauge() == 2.0
        log = caplog.text
        assert "'c' (kept in the file): stream limit reached: max_streams=2" in log
        assert "'typo' (kept in the file): unsupported url scheme" in log
        assert "2 entries of the streams file not running but kept in it" in log

        assert m.remove("a")["state"] == "stopped"  # a rewrite: c and the typo are still there
        saved = json.loads(settings.streams_file.read_text())
        assert saved == [entries[1], entries[2], bad]  # unchanged, extra fields included
        m.add("d", entries[0]["url"])  # a free slot is used by a new camera, not by the kept one
        saved = json.loads(settings.streams_file.read_text())
        assert [e["id"] for e in saved] == ["b", "d", "c", "typo"] and entries[2] in saved
    finally:
        m.stop()

    # the kept entry runs at a later start once it fits; the typo is still kept
    settings.max_streams = 3
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    try:
        assert sorted(s["id"] for s in m.list()) == ["b", "c", "d"] and m.skipped == 1
        m.remove("b")  # the typo stays until it is re-registered
        assert [e["id"] for e in json.loads(settings.streams_file.read_text())] == ["d", "c", "typo"]
        m.add("typo", dead_url())  # a POST of a kept id replaces its entry
        saved = json.loads(settings.streams_file.read_text())
        assert [e["id"] for e in saved] == ["d", "c", "typo"] and bad not in saved and m.skipped == 0
    finally:
        m.stop()


def test_a_duplicate_kept_entry_goes_with_the_camera_it_duplicates(tmp_path, parts):
    settings = make_settings(tmp_path)
    settings.streams_file.write_text(json.dumps([{"id": "a", "url": dead_url()}, {"id": "a", "url": dead_url()},
                                                 "junk"]))
    m = StreamManager(settings, parts.worker, parts.bus, parts.factory)
    m.start()
    try:
        assert [s["id"] for s in m.list()] == ["a"] and m.skipped == 2
        m.remove("a")  # the operator removed camera a: its duplicate must not bring it back
        assert json.loads(settings.streams_file.read_text()) == ["junk"]
    finally:
        m.stop()


# -- 2. DELETE then POST of the same id --------------------------------------------------------------------
class BlockingPipeline(FakePipeline):
    """finish() waits until the test lets it go: the removal is caught half-way, deterministically."""

    def __init__(self, source: str) -> None:
        super().__init__(source)
        self.finishing = threading.Event()
        self.release = threading.Event()

    def finish(self):
        self.finishing.set()
        assert self.release.wait(10), "test never released finish()"
        return super().finish()


def test_id_stays_reserved_until_the_old_camera_is_closed(tmp_path, parts):
    made: list[FakePipeline] = []

    def factory(source: str) -> FakePipeline:
        made.append(BlockingPipeline(source) if not made else FakePipeline(source))
        return made[-1]

    m = StreamManager(make_settings(tmp_path), parts.worker, parts.bus, factory)
    app = FastAPI()
    app.include_router(streams_router)
    app.state.api_keys = [KEY]
    app.state.streams = m
    try:
        with TestClient(app, headers={"X-API-Key": KEY}) as client:
            assert client.post("/v1/streams", json={"id": "cam", "url": dead_url()}).status_code == 201
            old = made[0]
            deleted: dict = {}
            deleter = threading.Thread(target=lambda: deleted.update(r=client.delete("/v1/streams/cam")))
            deleter.start()
            assert old.finishing.wait(10)  # the old camera is inside close()
            assert client.get("/v1/streams/cam").status_code == 404
            again = client.post("/v1/streams", json={"id": "cam", "url": dead_url()})
            assert again.status_code == 409 and "still being removed" in again.json()["detail"]
            with pytest.raises(StreamExists):
                m.add("cam", dead_url())
            old.release.set()
            deleter.join(10)
            assert deleted["r"].status_code == 200 and deleted["r"].json()["state"] == "stopped"

            assert client.post("/v1/streams", json={"id": "cam", "url": dead_url()}).status_code == 201
            new = m._streams["cam"]
            assert len(made) == 2 and new.pipeline is made[1] and not made[1].finished
            assert parts.worker.forgotten == ["cam"]  # the old close() forgot the id once, before
            new.on_frame(image_frame("cam", 0))
            assert m.get("cam")["frames_processed"] == 1 and REGISTRY.get_sample_value(
                "falldet_stream_frames_processed_total", {"source": "cam"}) == 1.0
    finally:
        m.stop()


# -- 3. shutdown, health probes -----------------------------------------------------------------------------
def test_stop_signals_every_reader_before_waiting_for_any(tmp_path, parts):
    m = StreamManager(make_settings(tmp_path), parts.worker, parts.bus, parts.factory)
    calls: list[tuple[str, float]] = []
    for sid in ("a", "b", "c"):
        m.add(sid, dead_url())
        reader = m._streams[sid].reader
        real_stop = reader.stop

        def recording_stop(timeout: float = 1.0, sid=sid, real_stop=real_stop) -> None:
            calls.append((sid, timeout))
            real_stop(timeout)

        reader.stop = recording_stop
    m.stop(timeout=2.0)
    signals = [c for c in calls if c[1] == 0]
    assert [sid for sid, _ in signals] == ["a", "b", "c"] and calls[:3] == signals  # all signalled first
    assert sorted(sid for sid, t in calls[3:]) == ["a", "b", "c"] and all(0 < t <= 2.0 for _, t in calls[3:])
    assert [e.type for e in parts.bus.events] == ["fall_cleared"] * 3


def test_probes_answer_while_the_thread_pool_is_busy():
    entered, release = threading.Event(), threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # a saturated pool
        yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(health.router)

    @app.get("/busy")
    def busy() -> dict:  # a sync handler holds the only thread
        entered.set()
        release.wait(10)
        return {}

    answers: dict = {}
    with TestClient(app) as client:
        blocker = threading.Thread(target=lambda: client.get("/busy"))
        blocker.start()
        try:
            assert entered.wait(10)
            prober = threading.Thread(target=lambda: answers.update(
                health=client.get("/healthz").json(), ready=client.get("/readyz").status_code))
            prober.start()
            prober.join(5)
            assert not prober.is_alive(), "a probe waited for the thread pool"
        finally:
            release.set()
            blocker.join(10)
    assert answers == {"health": {"status": "ok"}, "ready": 503}  # no runtime, no worker here


# -- 4. WebSocket clients of a removed camera ----------------------------------------------------------------
def test_websocket_clients_of_a_removed_camera_get_its_last_events_then_4404(tmp_path, parts):
    bus = EventBus(None)
    m = StreamManager(make_settings(tmp_path), parts.worker, bus, parts.factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bus.bind_loop(asyncio.get_running_loop())
        yield
        m.stop()
        bus.bind_loop(None)

    app = FastAPI(lifespan=lifespan)
    app.include_router(streams_router)
    app.include_router(ws.router)
    app.state.api_keys = [KEY]
    app.state.bus = bus
    app.state.streams = m
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        assert client.post("/v1/streams", json={"id": "cam", "url": dead_url()}).status_code == 201
        assert client.post("/v1/streams", json={"id": "other", "url": dead_url()}).status_code == 201
        with client.websocket_connect(f"/v1/streams/cam/ws?api_key={KEY}") as cam_ws, \
                client.websocket_connect(f"/v1/streams/other/ws?api_key={KEY}") as other_ws, \
                client.websocket_connect(f"/v1/events?api_key={KEY}") as events_ws:
            assert bus.subscribers("cam") == 1 and bus.subscribers("other") == 1
            assert client.delete("/v1/streams/cam").status_code == 200
            last = cam_ws.receive_json()
            assert last["type"] == "fall_cleared" and last["source"] == "cam"  # final events first
            with pytest.raises(WebSocketDisconnect) as closed:
                cam_ws.receive_json()
            assert (closed.value.code, closed.value.reason) == (4404, "stream removed")
            assert events_ws.receive_json()["source"] == "cam"  # /v1/events stays open
            assert bus.subscribers("other") == 1  # other cameras' clients stay open
            m._streams["other"].on_frame(image_frame("other", 3))  # fake worker: result at once
            assert other_ws.receive_json()["frame"] == 3
        assert bus.subscribers("cam") == 0
        with pytest.raises(WebSocketDisconnect) as unknown:
            with client.websocket_connect(f"/v1/streams/cam/ws?api_key={KEY}") as gone:
                gone.receive_json()
        assert (unknown.value.code, unknown.value.reason) == (4404, "no stream 'cam'")
