"""The bus when the alert store fails: events are shown at once, wait in memory in order, and are
delivered only once stored.

A real `AlertStore` behind a wrapper whose `add` raises N times (disk full) before it works; the retry
is driven by hand (`retry_pending`) where timing matters, by the bus's own thread elsewhere.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api import health
from service.bus import EventBus
from service.events import Event
from service.store import AlertStore


def make_event(type_: str = "fall_alert", source: str = "cam1", at: float | None = None) -> Event:
    return Event(id=uuid.uuid4().hex, type=type_, source=source, track_id=3, frame=40, started_frame=10,
                 pts_s=1.6, started_pts_s=0.4, at=at if at is not None else time.time(),
                 box=(1.0, 2.0, 30.0, 40.0), time_down_s=1.2,
                 snapshot=b"\xff\xd8jpeg" if type_ == "fall_alert" else None)


class FlakyStore:
    """The real store, but `add` raises OSError `fails` times first (or forever with fails=None)."""

    def __init__(self, store: AlertStore, fails: int | None) -> None:
        self.store, self.fails = store, fails
        self.calls = 0
        self.lock = threading.Lock()

    def add(self, event: Event) -> dict:
        with self.lock:
            self.calls += 1
            if self.fails is None or self.fails > 0:
                if self.fails is not None:
                    self.fails -= 1
                raise OSError(28, "No space left on device")
        return self.store.add(event)


class Notes:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1

    def on_remote_event(self, callback) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path):
    s = AlertStore(tmp_path / "alerts.db", tmp_path / "snaps", retention=None)
    yield s
    s.close()


def ready_app(bus: EventBus) -> TestClient:
    app = FastAPI()
    app.include_router(health.router)
    app.state.runtime = SimpleNamespace(providers=["CPUExecutionProvider"], model_path=None, imgsz=640,
                                        names=["fall", "sit", "stand"])
    app.state.worker = SimpleNamespace(running=True)
    app.state.bus = bus
    return TestClient(app)  # no lifespan: nothing to start


def stored_ids(store: AlertStore) -> list[str]:
    return [a["id"] for a in reversed(store.list(limit=1000)["items"])]  # oldest first


def test_a_failed_write_is_shown_at_once_and_delivered_in_order_once_stored(store):
    flaky, notes = FlakyStore(store, fails=3), Notes()
    bus = EventBus(flaky, notes, retry_first_s=3600.0)  # the thread sleeps: retries driven here
    announced: list[dict] = []
    bus._fan_out = lambda keys, message: announced.append(message)  # what WebSockets would get
    client = ready_app(bus)
    try:
        assert client.get("/readyz").status_code == 200
        first, second = make_event(at=100.0), make_event("fall_cleared", at=101.0)
        assert bus.publish_event(first)["id"] == first.id  # add fails (1)
        bus.publish_event(second)  # queued behind the first, not tried
        # operators see both at once; nothing is stored or handed to delivery yet
        assert flaky.calls == 1 and stored_ids(store) == [] and notes.notified == 0
        assert [m["id"] for m in announced] == [first.id, second.id]

        ready = client.get("/readyz")
        body = ready.json()
        assert ready.status_code == 503 and body["ready"] is False and body["store_ok"] is False
        assert body["store_backlog"] == 2 and "alert store" in body["reason"]
        assert "No space left on device" in body["reason"]
        assert body["model_loaded"] is True and body["worker_running"] is True

        assert bus.retry_pending() is False  # fails (2)
        assert bus.retry_pending() is False  # fails (3)
        assert client.get("/readyz").status_code == 503 and notes.notified == 0
        assert bus.retry_pending() is True  # works: both written, in order, then delivery woken
        assert stored_ids(store) == [first.id, second.id]
        assert notes.notified == 2 and len(announced) == 2  # not shown a second time

        assert bus.retry_pending() is True  # nothing left: no second write, no second announcement
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["reason"] is None
        assert ready.json()["store_backlog"] == 0
        assert stored_ids(store) == [first.id, second.id] and len(announced) == 2

        third = make_event("still_down", at=102.0)  # the store works again: straight through
        bus.publish_event(third)
        assert stored_ids(store)[-1] == third.id and announced[-1]["id"] == third.id
    finally:
        bus.close()


async def test_the_retry_thread_stores_and_wakes_delivery_once_after_the_store_recovers(store):
    flaky, notes = FlakyStore(store, fails=3), Notes()
    bus = EventBus(flaky, notes, retry_first_s=0.01, retry_max_s=0.05)
    bus.bind_loop(asyncio.get_running_loop())
    own, every, other = bus.subscribe("cam1"), bus.subscribe(None), bus.subscribe("cam2")
    event = make_event()
    try:
        await asyncio.to_thread(bus.publish_event, event)  # from a worker thread, as the cameras do
        for sub in (own, every):
            message = await asyncio.wait_for(sub.get(), 5)
            assert message["id"] == event.id  # shown at once, while the store still refuses it
        deadline = time.monotonic() + 10
        while notes.notified < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert flaky.calls == 4 and stored_ids(store) == [event.id] and notes.notified == 1
        await asyncio.sleep(0.2)  # no second announcement, no second write
        assert len(own) == len(every) == len(other) == 0
        assert flaky.calls == 4 and bus.backlog()["pending"] == 0
    finally:
        bus.close()


def test_a_full_backlog_drops_reminders_first_then_the_newest_and_counts_it(store, caplog):
    flaky = FlakyStore(store, fails=None)
    bus = EventBus(flaky, Notes(), retry_queue_max=3, retry_first_s=3600.0)
    before = REGISTRY.get_sample_value("falldet_bus_events_dropped_total", {"type": "still_down"}) or 0.0
    try:
        a1, s1, a2, a3, a4 = (make_event(t, at=100.0 + i) for i, t in
                              enumerate(["fall_alert", "still_down", "fall_alert", "fall_alert", "fall_alert"]))
        for e in (a1, s1, a2):
            bus.publish_event(e)
        bus.publish_event(a3)  # full: the queued reminder makes room
        bus.publish_event(a4)  # full, no reminder left: the newest is dropped, the oldest kept
        assert [e.id for e in bus._backlog] == [a1.id, a2.id, a3.id]
        assert bus.dropped == 2 and bus.backlog()["dropped"] == 2
        assert REGISTRY.get_sample_value("falldet_bus_events_dropped_total", {"type": "still_down"}) == before + 1
        dropped_logs = [r.getMessage() for r in caplog.records if "backlog full" in r.getMessage()]
        assert len(dropped_logs) == 2 and s1.id in dropped_logs[0] and a4.id in dropped_logs[1]

        flaky.fails = 0
        assert bus.retry_pending() is True
        assert stored_ids(store) == [a1.id, a2.id, a3.id]
    finally:
        bus.close()


def test_readyz_names_every_reason_it_is_not_ready(store):
    bus = EventBus(FlakyStore(store, fails=None), Notes(), retry_first_s=3600.0)
    client = ready_app(bus)
    client.app.state.worker = SimpleNamespace(running=False)
    try:
        bus.publish_event(make_event())
        body = client.get("/readyz").json()
        assert "inference worker not running" in body["reason"] and "1 event(s) waiting" in body["reason"]
    finally:
        bus.close()
