"""`/v1/alerts`: filters, paging, one alert, its snapshot, acknowledgement, errors, API key; and the
same routes on the factory-built app, where history and acks survive a restart of the app."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.api import alerts
from service.events import Event
from service.store import AlertStore

KEY = "alerts-test-key"
AUTH = {"X-API-Key": KEY}
T0 = 1_700_000_000.0


def jpeg(seed: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def make_event(source: str = "cam1", type: str = "fall_alert", at: float = T0, track: int = 1) -> Event:
    return Event(id=uuid.uuid4().hex, type=type, source=source, track_id=track, frame=30, started_frame=5,
                 pts_s=1.2, started_pts_s=0.2, at=at, box=(10.0, 20.0, 50.0, 60.0), time_down_s=1.0,
                 reason="recovered" if type == "fall_cleared" else None,
                 snapshot=jpeg(int(at)) if type == "fall_alert" else None)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    s = AlertStore(tmp_path / "alerts.db", tmp_path / "snaps", retention=None)
    yield s
    s.close()


@pytest.fixture
def client(store: AlertStore) -> Iterator[TestClient]:
    app = _router_app()
    app.state.store = store
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_api_key_is_required(client: TestClient, store: AlertStore) -> None:
    ev = make_event()
    store.add(ev)
    for path in ("/v1/alerts", f"/v1/alerts/{ev.id}", f"/v1/alerts/{ev.id}/snapshot.jpg"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post(f"/v1/alerts/{ev.id}/ack", json={"by": "x"}).status_code == 401
    assert store.get(ev.id)["acked"] is False


def test_list_filters_and_paging(client: TestClient, store: AlertStore) -> None:
    evs = [make_event(source=f"cam{i % 2}", at=T0 + 60 * i, track=i) for i in range(5)]
    evs.append(make_event(source="cam1", type="fall_cleared", at=T0 + 400, track=0))
    for ev in evs:
        store.add(ev)
    r = client.get("/v1/alerts", headers=AUTH, params={"limit": 2})
    assert r.status_code == 200
    page = r.json()
    assert page["total"] == 6 and page["next_offset"] == 2
    assert [a["id"] for a in page["items"]] == [evs[5].id, evs[4].id]  # newest first
    ids = []
    offset: int | None = 0
    while offset is not None:
        page = client.get("/v1/alerts", headers=AUTH, params={"limit": 4, "offset": offset}).json()
        ids += [a["id"] for a in page["items"]]
        offset = page["next_offset"]
    assert ids == [e.id for e in reversed(evs)]
    cam0 = client.get("/v1/alerts", headers=AUTH, params={"source": "cam0"}).json()
    assert {a["id"] for a in cam0["items"]} == {evs[0].id, evs[2].id, evs[4].id}
    iso = client.get("/v1/alerts", headers=AUTH, params={"since": "2023-11-14T22:14:00Z",
                                                           "until": "2023-11-14T22:16:00+00:00"}).json()
    assert [a["id"] for a in iso["items"]] == [evs[2].id, evs[1].id]
    unix = client.get("/v1/alerts", headers=AUTH, params={"since": T0 + 60, "until": T0 + 120}).json()
    assert unix["items"] == iso["items"]
    cleared = client.get("/v1/alerts", headers=AUTH, params={"type": "fall_cleared"}).json()
    assert [a["id"] for a in cleared["items"]] == [evs[5].id]
    client.post(f"/v1/alerts/{evs[1].id}/ack", headers=AUTH, json={"by": "ann"})
    acked = client.get("/v1/alerts", headers=AUTH, params={"state": "acked"}).json()
    opened = client.get("/v1/alerts", headers=AUTH, params={"state": "open"}).json()
    assert [a["id"] for a in acked["items"]] == [evs[1].id] and opened["total"] == 5


@pytest.mark.parametrize("params", [{"state": "closed"}, {"limit": 0}, {"limit": 501}, {"offset": -1},
                                    {"since": "yesterday"}, {"since": T0 + 10, "until": T0},
                                    {"type": "fall"}])
def test_bad_list_queries_are_422(client: TestClient, params: dict) -> None:
    r = client.get("/v1/alerts", headers=AUTH, params=params)
    assert r.status_code == 422 and "detail" in r.json()


def test_get_one_and_its_snapshot(client: TestClient, store: AlertStore) -> None:
    ev = make_event()
    store.add(ev)
    r = client.get(f"/v1/alerts/{ev.id}", headers=AUTH)
    assert r.status_code == 200
    alert = r.json()
    assert {k: alert[k] for k in ev.to_json()} == ev.to_json()
    assert alert["acked"] is False and alert["ack"] is None and alert["origin"] is None
    assert alert["deliveries"] == []
    snap = client.get(alert["snapshot_url"], headers=AUTH)
    assert snap.status_code == 200 and snap.headers["content-type"] == "image/jpeg"
    assert snap.content == ev.snapshot
    img = cv2.imdecode(np.frombuffer(snap.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (48, 64, 3)


def test_unknown_ids_and_missing_snapshots_are_404(client: TestClient, store: AlertStore) -> None:
    cleared = make_event(type="fall_cleared")
    store.add(cleared)
    for path in ("/v1/alerts/0123456789abcdef", "/v1/alerts/0123456789abcdef/snapshot.jpg",
                 "/v1/alerts/bad..id/snapshot.jpg"):
        r = client.get(path, headers=AUTH)
        assert r.status_code == 404 and "no alert" in r.json()["detail"]
    r = client.get(f"/v1/alerts/{cleared.id}/snapshot.jpg", headers=AUTH)
    assert r.status_code == 404 and "no snapshot" in r.json()["detail"]
    r = client.post("/v1/alerts/0123456789abcdef/ack", headers=AUTH, json={"by": "ann"})
    assert r.status_code == 404


def test_ack_records_who_when_why_and_is_idempotent(client: TestClient, store: AlertStore) -> None:
    ev = make_event()
    store.add(ev)
    before = time.time()
    r = client.post(f"/v1/alerts/{ev.id}/ack", headers=AUTH, json={"by": "ann", "comment": "on my way"})
    assert r.status_code == 200
    ack = r.json()["ack"]
    assert r.json()["acked"] is True and ack["by"] == "ann" and ack["comment"] == "on my way"
    assert before - 1 <= ack["at"] <= time.time() + 1
    again = client.post(f"/v1/alerts/{ev.id}/ack", headers=AUTH, json={"by": "bob"})
    assert again.status_code == 200 and again.json()["ack"] == ack
    assert client.get(f"/v1/alerts/{ev.id}", headers=AUTH).json()["ack"] == ack


@pytest.mark.parametrize("body", [{}, {"by": ""}, {"by": "x" * 101}, {"by": "a", "comment": "c" * 1001},
                                  {"by": "a", "extra": 1}, ["by"]])
def test_bad_ack_bodies_are_422(client: TestClient, store: AlertStore, body) -> None:
    ev = make_event()
    store.add(ev)
    r = client.post(f"/v1/alerts/{ev.id}/ack", headers=AUTH, json=body)
    assert r.status_code == 422
    assert store.get(ev.id)["acked"] is False


def test_history_snapshot_and_ack_survive_an_app_restart(tmp_path: Path, tiny_model: Path) -> None:
    """The factory-built app: an alert and its ack are still there after the app is rebuilt."""
    from service.app import create_app
    from service.runtime import Runtime
    from service.settings import Settings

    settings = Settings(state_dir=tmp_path / "state", api_keys=[KEY])
    ev = make_event()
    with TestClient(create_app(settings, runtime=Runtime(tiny_model)), raise_server_exceptions=False) as c:
        c.app.state.bus.publish_event(ev)  # how the pipeline announces: store first, then the rest
        assert c.post(f"/v1/alerts/{ev.id}/ack", headers=AUTH, json={"by": "ann"}).status_code == 200
    with TestClient(create_app(settings, runtime=Runtime(tiny_model)), raise_server_exceptions=False) as c:
        alert = c.get(f"/v1/alerts/{ev.id}", headers=AUTH).json()
        assert alert["acked"] is True and alert["ack"]["by"] == "ann"
        assert c.get(alert["snapshot_url"], headers=AUTH).content == ev.snapshot
        assert c.get("/v1/alerts", headers=AUTH).json()["total"] == 1


def _router_app() -> FastAPI:
    """A tiny app with only this router; its deps read app.state like the real app's."""
    app = FastAPI()
    app.state.api_keys = [KEY]
    app.include_router(alerts.router)
    return app


FUZZ_APP = _router_app()  # schemathesis reads the schema at collection; the store comes per test
fuzz_schema = schemathesis.openapi.from_asgi("/openapi.json", FUZZ_APP)


@pytest.fixture
def fuzz_store(tmp_path: Path) -> Iterator[AlertStore]:
    """A few alerts (one acknowledged) behind FUZZ_APP."""
    store = AlertStore(tmp_path / "fuzz.db", tmp_path / "fuzz_snaps", retention=None)
    for i in range(3):
        store.add(make_event(at=T0 + i))
    store.ack(store.list()["items"][0]["id"], "ann", None)
    FUZZ_APP.state.store = store
    yield store
    store.close()


@fuzz_schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.slow
def test_fuzzed_requests_never_500(case, fuzz_store: AlertStore) -> None:
    """Random queries, ids and bodies (with a valid key): always an answer, never a server error."""
    case.call_and_validate(headers=AUTH, checks=[schemathesis.checks.not_a_server_error])
