"""`GET`/`PUT /v1/streams/{id}/zones` on the real app (tiny contract model; the camera URL points
where nothing listens, so no RTSP server is needed): validation, persistence in the streams file,
applied to the running camera at once, shown in the camera's status, kept across a restart."""
from __future__ import annotations

import json

import pytest

ZONES = {"zones": [
    {"name": "bed 1", "kind": "bed", "points": [[0.55, 0.2], [0.95, 0.2], [0.95, 0.6], [0.55, 0.6]]},
    {"name": "tv", "kind": "ignore", "points": [[0.0, 0.0], [0.3, 0.0], [0.3, 0.45]]},
]}
URL = "rtsp://127.0.0.1:9/cam"  # discard port: connection refused, the camera stays in backoff


@pytest.fixture
def client(tiny_client, auth):
    assert tiny_client.post("/v1/streams", json={"id": "cam", "url": URL}, headers=auth).status_code == 201
    return tiny_client


def test_zones_need_a_key_and_a_known_camera(client, auth):
    assert client.get("/v1/streams/cam/zones").status_code == 401
    assert client.put("/v1/streams/cam/zones", json=ZONES).status_code == 401
    res = client.get("/v1/streams/nope/zones", headers=auth)
    assert res.status_code == 404 and res.json()["detail"] == "no stream with id 'nope'"
    assert client.put("/v1/streams/nope/zones", json=ZONES, headers=auth).status_code == 404


def test_put_saves_applies_at_once_and_shows_in_the_status(client, auth, tmp_path):
    assert client.get("/v1/streams/cam/zones", headers=auth).json() == {"zones": []}
    res = client.put("/v1/streams/cam/zones", json=ZONES, headers=auth)
    assert res.status_code == 200 and res.json() == ZONES
    assert client.get("/v1/streams/cam/zones", headers=auth).json() == ZONES
    assert client.get("/v1/streams/cam", headers=auth).json()["zones"] == ZONES["zones"]
    # applied to the running camera's pipeline, without a reconnect (same reader object)
    stream = client.app.state.streams._streams["cam"]
    reader = stream.reader
    assert [z.name for z in stream.pipeline.zones] == ["bed 1", "tv"]
    # saved with the camera
    saved = json.loads((tmp_path / "state" / "streams.json").read_text())
    assert saved == [{"id": "cam", "url": URL, "zones": ZONES["zones"]}]
    # an empty list removes them
    assert client.put("/v1/streams/cam/zones", json={"zones": []}, headers=auth).json() == {"zones": []}
    assert stream.pipeline.zones == [] and client.app.state.streams._streams["cam"].reader is reader
    assert json.loads((tmp_path / "state" / "streams.json").read_text()) == [{"id": "cam", "url": URL}]


def test_zones_survive_a_restart(make_client, tiny_model, auth, tmp_path):
    from service.runtime import Runtime

    runtime = Runtime(tiny_model, ["CPUExecutionProvider"])
    first = make_client(runtime)
    assert first.post("/v1/streams", json={"id": "cam", "url": URL}, headers=auth).status_code == 201
    assert first.put("/v1/streams/cam/zones", json=ZONES, headers=auth).status_code == 200
    first.__exit__(None, None, None)
    second = make_client(runtime)  # same state folder
    assert second.get("/v1/streams/cam/zones", headers=auth).json() == ZONES
    assert [z.kind for z in second.app.state.streams._streams["cam"].pipeline.zones] == ["bed", "ignore"]


def test_a_streams_file_entry_with_bad_zones_is_kept_but_not_run(make_client, tiny_model, auth, tmp_path):
    from service.runtime import Runtime

    state = tmp_path / "state"
    state.mkdir()
    entry = {"id": "cam", "url": URL, "zones": [{"name": "x", "kind": "bed", "points": [[0, 0], [2, 0], [0, 1]]}]}
    (state / "streams.json").write_text(json.dumps([entry]))
    client = make_client(Runtime(tiny_model, ["CPUExecutionProvider"]))
    assert client.get("/v1/streams", headers=auth).json()["items"] == []
    assert client.app.state.streams.skipped == 1
    assert json.loads((state / "streams.json").read_text()) == [entry]


def _bad(zone: dict) -> dict:
    return {"zones": [ZONES["zones"][0] | zone]}


@pytest.mark.parametrize("body, where, words", [
    (_bad({"points": [[0.1, 0.1], [1.5, 0.1], [0.5, 0.5]]}), ["body", "zones", 0, "points", 1, 0], "less than or equal to 1"),
    (_bad({"points": [[0.1, 0.1], [0.5, 0.1]]}), ["body", "zones", 0, "points"], "at least 3"),
    (_bad({"points": [[0.1, 0.1]] * 66}), ["body", "zones", 0, "points"], "at most 65"),
    (_bad({"kind": "sofa"}), ["body", "zones", 0, "kind"], "'bed' or 'ignore'"),
    (_bad({"name": ""}), ["body", "zones", 0, "name"], "at least 1 character"),
    (_bad({"name": "n" * 65}), ["body", "zones", 0, "name"], "at most 64 characters"),
    (_bad({"colour": "red"}), ["body", "zones", 0, "colour"], "Extra inputs are not permitted"),
    ({"zones": [ZONES["zones"][0]] * 33}, ["body", "zones"], "at most 32"),
    ({}, ["body", "zones"], "Field required"),
])
def test_bad_shapes_are_422_with_the_field(client, auth, body, where, words):
    res = client.put("/v1/streams/cam/zones", json=body, headers=auth)
    assert res.status_code == 422
    errors = res.json()["detail"]
    assert any(e["loc"] == where and words in e["msg"] for e in errors), errors
    assert client.get("/v1/streams/cam/zones", headers=auth).json() == {"zones": []}  # nothing applied


@pytest.mark.parametrize("body, detail", [
    (_bad({"points": [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]}),
     "zones[0] ('bed 1'): the polygon's edges cross (draw it as one closed outline)"),
    ({"zones": [ZONES["zones"][0], ZONES["zones"][1] | {"name": "bed 1"}]}, "zones[1] ('bed 1'): duplicate name"),
    (_bad({"points": [[0.1, 0.1], [0.1, 0.1], [0.5, 0.5]]}), "zones[0] ('bed 1'): points[0] repeats its neighbour"),
    (_bad({"points": [[0.1, 0.1], [0.101, 0.1], [0.1, 0.101]]}), "zones[0] ('bed 1'): the polygon is too small"),
])
def test_bad_geometry_is_422_saying_which_zone_and_what(client, auth, body, detail):
    res = client.put("/v1/streams/cam/zones", json=body, headers=auth)
    assert res.status_code == 422
    assert res.json()["detail"].startswith(detail)
