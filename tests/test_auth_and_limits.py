"""API keys, upload limits, content checks, no stack traces, and a schemathesis fuzz of every route."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from starlette.websockets import WebSocketDisconnect

from conftest import API_KEY

PROTECTED = [("post", "/v1/detect"), ("post", "/v1/videos"), ("get", "/v1/streams"), ("get", "/v1/alerts"),
             ("get", "/metrics")]


def _jpeg(h: int = 120, w: int = 160) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.mark.parametrize("method,path", PROTECTED)
def test_no_key_or_a_wrong_key_is_401(tiny_client, method, path):
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        r = getattr(tiny_client, method)(path, headers=headers)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"] == "APIKey"


def test_the_key_in_the_query_string_is_only_for_websockets_and_metrics(tiny_client):
    assert tiny_client.get("/v1/alerts", params={"api_key": API_KEY}).status_code == 401
    assert tiny_client.get("/metrics", params={"api_key": API_KEY}).status_code == 200


def test_probes_need_no_key(tiny_client):
    assert tiny_client.get("/healthz").json() == {"status": "ok"}
    ready = tiny_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "CPUExecutionProvider" in ready.json()["providers"]
    # the tiny model has no operating point and the test settings set no threshold
    assert (ready.json()["score_threshold"], ready.json()["score_threshold_source"]) == (0.25, "default")


def test_metrics_are_prometheus_text_without_a_redirect(tiny_client, auth):
    tiny_client.post("/v1/detect", content=_jpeg(), headers={**auth, "Content-Type": "image/jpeg"})
    r = tiny_client.get("/metrics", headers=auth, follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "falldet_batch_size_bucket" in r.text and "falldet_inference_seconds_count" in r.text


def test_websockets_need_a_key(tiny_client, auth):
    # refusals come after the handshake, as a close the client can read (see test_live_server.py)
    with pytest.raises(WebSocketDisconnect) as refused:
        with tiny_client.websocket_connect("/v1/events") as ws:
            ws.receive_json()
    assert refused.value.code == 1008 and refused.value.reason.startswith("missing API key")
    with pytest.raises(WebSocketDisconnect) as wrong:
        with tiny_client.websocket_connect("/v1/events?api_key=wrong") as ws:
            ws.receive_json()
    assert (wrong.value.code, wrong.value.reason) == (1008, "invalid API key")
    with tiny_client.websocket_connect(f"/v1/events?api_key={API_KEY}"):
        pass
    with tiny_client.websocket_connect("/v1/events", headers=auth):
        pass
    with pytest.raises(WebSocketDisconnect) as unknown:
        with tiny_client.websocket_connect("/v1/streams/nope/ws", headers=auth) as ws:
            ws.receive_json()
    assert (unknown.value.code, unknown.value.reason) == (4404, "no stream 'nope'")


def test_uploads_over_the_limit_are_413(make_client, tiny_model, auth):
    from service.runtime import Runtime

    client = make_client(Runtime(tiny_model, ["CPUExecutionProvider"]), max_upload_mb=0.05)  # 51.2 KiB
    big = b"\xff\xd8\xff" + bytes(60_000)
    r = client.post("/v1/detect", content=big, headers={**auth, "Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "MiB" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies to the bytes actually read
        for _ in range(10):
            yield bytes(8000)

    r = client.post("/v1/detect", content=chunks(), headers={**auth, "Content-Type": "image/jpeg"})
    assert r.status_code == 413
    r = client.post("/v1/detect", files={"file": ("a.jpg", big, "image/jpeg")}, headers=auth)
    assert r.status_code == 413
    r = client.post("/v1/videos", files={"file": ("a.mp4", bytes(80_000), "video/mp4")}, headers=auth)
    assert r.status_code == 413
    small = client.post("/v1/detect", content=_jpeg(), headers={**auth, "Content-Type": "image/jpeg"})
    assert small.status_code == 200  # still serving


@pytest.mark.parametrize("body,content_type,status,reason", [
    (b"hello", "text/plain", 415, "multipart field 'file'"),
    (b"GIF89a not supported", "image/gif", 415, "not a supported image"),
    (b"just some text", "image/jpeg", 415, "not a supported image"),
    (b"", "image/jpeg", 400, "empty"),
    (_jpeg()[:900], "image/jpeg", 400, "truncated JPEG"),
    (_jpeg()[:-2], "image/jpeg", 400, "truncated JPEG"),
    (cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()[:-30], "image/png", 400, "PNG"),
    (b"\xff\xd8\xff\xe0" + bytes(500) + b"\xff\xd9", "image/jpeg", 400, "corrupt"),
])
def test_bad_images_are_4xx_with_a_reason(tiny_client, auth, body, content_type, status, reason):
    r = tiny_client.post("/v1/detect", content=body, headers={**auth, "Content-Type": content_type})
    assert r.status_code == status, r.text
    assert reason in r.json()["detail"]
    ok = tiny_client.post("/v1/detect", content=_jpeg(), headers={**auth, "Content-Type": "image/jpeg"})
    assert ok.status_code == 200


def test_a_multipart_without_a_file_is_400(tiny_client, auth):
    r = tiny_client.post("/v1/detect", files={"image": ("a.jpg", _jpeg(), "image/jpeg")}, headers=auth)
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = tiny_client.post("/v1/detect", data={"file": "not a file"}, files={"x": ("a.jpg", b"1", "image/jpeg")},
                         headers=auth)
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = tiny_client.post("/v1/detect", data={"file": "a form, not multipart"}, headers=auth)
    assert r.status_code == 415
    r = tiny_client.post("/v1/detect", content=b"--x\r\nbroken",
                         headers={**auth, "Content-Type": "multipart/form-data"})
    assert r.status_code == 400


def test_unexpected_errors_are_500_without_a_trace(tiny_client, auth, monkeypatch):
    def boom(images, rgb=False):
        raise RuntimeError("secret internals /home/x/file.py line 3")

    monkeypatch.setattr(tiny_client.app.state.runtime, "detect", boom)
    r = tiny_client.post("/v1/detect", content=_jpeg(), headers={**auth, "Content-Type": "image/jpeg"})
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    monkeypatch.undo()
    ok = tiny_client.post("/v1/detect", content=_jpeg(), headers={**auth, "Content-Type": "image/jpeg"})
    assert ok.status_code == 200


def test_a_random_key_is_made_once_kept_in_the_state_folder_and_never_printed(tmp_path, tiny_model, capsys):
    import stat

    from service.app import create_app
    from service.runtime import Runtime
    from service.settings import Settings

    app = create_app(Settings(state_dir=tmp_path, api_keys=[]), runtime=Runtime(tiny_model, ["CPUExecutionProvider"]))
    keys = app.state.api_keys
    assert len(keys) == 1 and len(keys[0]) >= 24
    key_file = tmp_path / "api_key"
    assert key_file.read_text().strip() == keys[0] and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    err = capsys.readouterr().err
    assert keys[0] not in err and str(key_file.resolve()) in err  # where it is, not what it is
    app.state.store.close()
    again = create_app(Settings(state_dir=tmp_path, api_keys=[]), runtime=Runtime(tiny_model, ["CPUExecutionProvider"]))
    assert again.state.api_keys == keys  # a restart keeps the key: tablets stay signed in
    again.state.store.close()


def test_settings_from_the_environment(monkeypatch, tmp_path):
    from service.settings import Settings

    monkeypatch.setenv("FALLDET_API_KEYS", " key-one, key-two ,,")
    monkeypatch.setenv("FALLDET_STATE_DIR", str(tmp_path / "st"))
    monkeypatch.setenv("FALLDET_MAX_UPLOAD_MB", "0.5")
    monkeypatch.setenv("FALLDET_PIPELINE__CONFIRM_S", "1.5")
    monkeypatch.setenv("FALLDET_PROVIDERS", "CPUExecutionProvider")
    s = Settings()
    assert s.api_keys == ["key-one", "key-two"] and s.providers == ["CPUExecutionProvider"]
    assert s.db == tmp_path / "st" / "alerts.db" and s.snapshot_dir == tmp_path / "st" / "snapshots"
    assert s.streams_file == tmp_path / "st" / "streams.json"
    assert s.max_upload_bytes == 512 * 1024 and s.pipeline.confirm_s == 1.5
    monkeypatch.setenv("FALLDET_DB", str(tmp_path / "elsewhere.db"))
    assert Settings().db == tmp_path / "elsewhere.db"
    monkeypatch.setenv("FALLDET_MAX_BATCH", "0")
    with pytest.raises(ValueError):
        Settings()


# -- fuzzing ---------------------------------------------------------------------------------------------
@pytest.fixture
def fuzz_schema(tmp_path, tiny_model):
    """The OpenAPI schema of an app on the tiny model; schemathesis runs its lifespan, we stop it."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.python.asgi import shutdown_lifespans

    from conftest import make_settings
    from service.app import create_app
    from service.runtime import Runtime

    app = create_app(make_settings(tmp_path, max_streams=2, max_upload_mb=1),
                     runtime=Runtime(tiny_model, ["CPUExecutionProvider"]))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutdown_lifespans()


@pytest.mark.slow
def test_no_route_answers_a_server_error(fuzz_schema):
    """Every operation, positive and negative examples, with the key: never a 5xx.

    (Driven by hypothesis directly: schemathesis' lazy pytest fixtures do not run under pytest 9.)
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 8
    tried = {}
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            tried[label] = tried.get(label, 0) + 1
            case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=[schemathesis.checks.not_a_server_error])

        run()
    print("examples per operation:", tried)
