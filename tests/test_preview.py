"""Live preview `GET /v1/streams/{id}/preview.jpg`: the camera's latest processed frame as a JPEG.

Fast tests drive a `StreamManager` with test_streams.py's fakes (worker, pipeline, bus) and frames
whose content says which frame they are, so a picture can be checked against its `X-Frame-Index`.
The slow test runs the real app and the tiny contract model against a real GStreamer RTSP camera
replaying a shared clip, and matches the pictures against the clip's own frames.
"""
from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import Future

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.streams import router
from service.frames import Frame
from service.streams import StreamManager, encode_preview
from test_rtsp_reader import RtspCamera, clip, needs_rtsp_server, wait_for
from test_streams import (KEY, FakeBus, FakePipeline, FakeWorker, LiveServer, WsCollector, app_for,  # noqa: F401
                          dead_url, make_settings, tiny_runtime)

BLUE, RED = (255, 0, 0), (0, 0, 255)  # BGR


# -- frames that say which frame they are ------------------------------------------------------------------
def band_level(index: int) -> int:
    """Green level of frame `index`'s top band: differs between neighbouring frames."""
    return 40 + (index * 37) % 200


def scene(index: int, width: int = 1280, height: int = 720) -> np.ndarray:
    """Left half blue, right half red, a green band over the top quarter whose level encodes `index`."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = BLUE
    image[:, width // 2:] = RED
    image[: height // 4] = (0, band_level(index), 0)
    return image


def scene_frame(source: str, index: int, **size) -> Frame:
    return Frame(source, index, index / 25, time.time(), scene(index, **size))


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def assert_shows(image: np.ndarray, index: int) -> None:
    """`image` is frame `index` of `scene` at any size: regions and band level within JPEG error."""
    h, w = image.shape[:2]
    def near(y: float, x: float, bgr) -> bool:
        return bool(np.abs(image[int(y), int(x)].astype(int) - bgr).max() <= 12)
    assert near(h * 0.6, w * 0.2, BLUE) and near(h * 0.6, w * 0.8, RED), "halves wrong"
    assert near(h * 0.1, w * 0.5, (0, band_level(index), 0)), f"band is not that of frame {index}"


def encodes(source: str) -> float:
    return REGISTRY.get_sample_value("falldet_stream_preview_encodes_total", {"source": source}) or 0.0


def _failed(exc: Exception) -> Future:
    fut: Future = Future()
    fut.set_exception(exc)
    return fut


@pytest.fixture
def cams(tmp_path):
    """A manager whose fake worker answers at once (the result is stepped on the caller's thread)."""
    pipelines: dict[str, FakePipeline] = {}

    def factory(source: str) -> FakePipeline:
        pipelines[source] = FakePipeline(source, explode_at=3)
        return pipelines[source]

    bus = FakeBus()
    m = StreamManager(make_settings(tmp_path), FakeWorker(), bus, factory)
    m.start()
    yield m, bus
    m.stop()


# -- encoding (fast) ---------------------------------------------------------------------------------------
def test_encode_scales_down_with_aspect_kept_and_never_up():
    image = scene(7)
    small = decode(encode_preview(image, 640))
    assert small.shape == (360, 640, 3)
    assert_shows(small, 7)
    odd = decode(encode_preview(image, 333))
    assert odd.shape[1] == 333 and abs(odd.shape[0] - 720 * 333 / 1280) <= 0.5
    assert decode(encode_preview(image, 5000)).shape == image.shape  # never scaled up
    assert_shows(decode(encode_preview(image, 1280)), 7)


# -- manager (fast) ----------------------------------------------------------------------------------------
def test_preview_is_the_latest_processed_frame_encoded_once_per_frame_and_width(cams):
    m, bus = cams
    m.add("cam", dead_url())
    stream = m._streams["cam"]
    assert m.preview("cam", 640) is None  # before the first processed frame
    assert m.preview("nope", 640) is None
    for i in range(3):
        stream.on_frame(scene_frame("cam", i))
    assert encodes("cam") == 0  # nobody looked: nothing was encoded

    jpeg, index = m.preview("cam", 640)
    assert index == 2 == bus.frames[-1].frame
    assert decode(jpeg).shape == (360, 640, 3)
    assert_shows(decode(jpeg), 2)
    for _ in range(20):  # more viewers of the same frame and width: served from memory
        assert m.preview("cam", 640) == (jpeg, 2)
    assert encodes("cam") == 1
    assert decode(m.preview("cam", 320)[0]).shape == (180, 320, 3)
    assert encodes("cam") == 2
    full, _ = m.preview("cam", 1280)
    assert m.preview("cam", 4000) == (full, 2)  # both mean "full size": one encode
    assert decode(full).shape == (720, 1280, 3) and encodes("cam") == 3
    assert m.preview("cam", 640) == (jpeg, 2) and encodes("cam") == 3

    stream.on_frame(scene_frame("cam", 4))  # frame 3 would make the fake pipeline explode; skip it
    jpeg4, index4 = m.preview("cam", 640)
    assert index4 == 4 and encodes("cam") == 4
    assert_shows(decode(jpeg4), 4)


def test_concurrent_viewers_of_one_frame_cost_one_encode(cams):
    m, _ = cams
    m.add("cam", dead_url())
    m._streams["cam"].on_frame(scene_frame("cam", 0))
    before = encodes("cam")
    barrier = threading.Barrier(8)
    got: list = []

    def viewer() -> None:
        barrier.wait()
        got.append(m.preview("cam", 480))

    threads = [threading.Thread(target=viewer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 8 and len(set(got)) == 1 and got[0][1] == 0
    assert encodes("cam") - before == 1


def test_preview_follows_only_results_that_went_out(cams):
    """A frame whose pipeline step failed, whose inference failed, or that came back out of order
    never becomes the picture: the picture's index is always that of the last published result."""
    m, bus = cams
    m.add("cam", dead_url())
    stream = m._streams["cam"]
    for i in range(4):  # frame 3 explodes in the fake pipeline
        stream.on_frame(scene_frame("cam", i))
    assert stream.errors == 1 and bus.frames[-1].frame == 2 and m.preview("cam", 640)[1] == 2
    stream.on_result(scene_frame("cam", 9), _failed(RuntimeError("model failed")))
    assert m.preview("cam", 640)[1] == 2
    stream.on_frame(scene_frame("cam", 6))
    stream.on_frame(scene_frame("cam", 5))  # overtaken by frame 6: skipped
    jpeg, index = m.preview("cam", 640)
    assert index == 6 == bus.frames[-1].frame
    assert_shows(decode(jpeg), 6)


def test_removed_camera_has_no_preview_and_its_metric_goes(cams):
    m, _ = cams
    m.add("gone", dead_url())
    m._streams["gone"].on_frame(scene_frame("gone", 0))
    assert m.preview("gone", 640) is not None and encodes("gone") == 1
    m.remove("gone")
    assert m.preview("gone", 640) is None
    assert REGISTRY.get_sample_value("falldet_stream_preview_encodes_total", {"source": "gone"}) is None


# -- REST API (fast) ---------------------------------------------------------------------------------------
@pytest.fixture
def client(cams):
    app = FastAPI()
    app.include_router(router)
    app.state.api_keys = [KEY]
    app.state.streams = cams[0]
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


def test_api_preview(client):
    m = client.app.state.streams
    url = "/v1/streams/cam/preview.jpg"
    assert TestClient(client.app).get(url).status_code == 401
    assert client.get(url, headers={"X-API-Key": "wrong"}).status_code == 401
    unknown = client.get(url)
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no stream with id 'cam'"
    m.add("cam", dead_url())
    early = client.get(url)
    assert early.status_code == 404 and "no processed frame yet" in early.json()["detail"]
    assert early.headers["cache-control"] == "no-store"
    m._streams["cam"].on_frame(scene_frame("cam", 11))

    r = client.get(url)  # default width 640
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-frame-index"] == "11" and r.headers["cache-control"] == "no-store"
    assert decode(r.content).shape == (360, 640, 3)
    assert_shows(decode(r.content), 11)
    small = client.get(url, params={"max_width": 160})
    assert small.status_code == 200 and decode(small.content).shape == (90, 160, 3)
    assert decode(client.get(url, params={"max_width": 3840}).content).shape == (720, 1280, 3)
    for nonsense in ("0", "-1", "15", "3841", "99999999999999999999", "abc", "1.5", ""):
        bad = client.get(url, params={"max_width": nonsense})
        assert bad.status_code == 422, nonsense
        assert "Traceback" not in bad.text
    m.remove("cam")
    assert client.get(url).status_code == 404


# -- a real camera, the real app and the tiny model (slow) -------------------------------------------------
def clip_frames(path, width: int) -> list[np.ndarray]:
    """Every frame of `path`, decoded independently of the service and scaled as a preview would be."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]
    return [decode(encode_preview(f, width)) if f.shape[1] > width else f for f in frames]


def closest(image: np.ndarray, frames: list[np.ndarray]) -> float:
    """Mean absolute difference (0-255) to the most similar frame of `frames`."""
    return min(float(np.abs(image.astype(np.int16) - f.astype(np.int16)).mean()) for f in frames)


@pytest.mark.slow
@needs_rtsp_server
def test_preview_of_a_real_camera(tmp_path, tiny_runtime):
    source = clip("fall/13.mp4")  # 640 x 480
    reference = clip_frames(source, 320)
    with RtspCamera({"cam": source}, fps=25) as camera, LiveServer(app_for(tmp_path, tiny_runtime)) as server, \
            server.http() as http:
        url = "/v1/streams/cam/preview.jpg"
        assert http.get(url).status_code == 404
        # every frame analysed (detect_fps 30 for a 25-fps camera), as the encode count below assumes
        assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam"),
                                              "detect_fps": 30}).status_code == 201
        with server.ws("/v1/streams/cam/ws") as ws:
            collector = WsCollector(ws)
            wait_for(lambda: http.get("/v1/streams/cam").json()["frames_processed"] >= 10, 60)  # generous: shared CPU
            assert 'falldet_stream_preview_encodes_total{source="cam"}' not in http.get("/metrics").text  # nobody looked

            first = http.get(url)
            assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
            assert decode(first.content).shape == (480, 640, 3)  # default 640: the camera's own size
            half = http.get(url, params={"max_width": 320})
            picture, index = decode(half.content), int(half.headers["x-frame-index"])
            assert picture.shape == (240, 320, 3)
            wait_for(lambda: index in {m["frame"] for _, m in collector.frames}, 15)  # its result line went out
            match = closest(picture, reference)
            other = closest(picture, [np.full_like(picture, 114), np.flipud(reference[len(reference) // 2])])
            assert match < 10 and match < other / 3, (match, other)

            # four viewers pulling like the page (one request at a time, at most ~12/s each) for ~3 s
            before = float(http.get("/metrics").text.split('falldet_stream_preview_encodes_total{source="cam"} ')[1].split()[0])
            seen: list[tuple[int, int]] = []
            timings: list[float] = []
            lock = threading.Lock()

            errors: list[str] = []

            def viewer(width: int) -> None:
                with server.http() as own:
                    last, n, end = -1, 0, time.monotonic() + 3.0
                    while n < 3 or time.monotonic() < end:  # at least 3 pictures each, however slow the machine
                        n += 1
                        t0 = time.perf_counter()
                        r = own.get(url, params={"max_width": width})
                        took = time.perf_counter() - t0
                        got = int(r.headers.get("x-frame-index", -1))
                        if r.status_code != 200 or got < last:  # never an older picture
                            errors.append(f"{r.status_code} frame {got} after {last}")
                            return
                        last = got
                        with lock:
                            seen.append((got, width))
                            timings.append(took)
                        time.sleep(max(0.0, 0.08 - took))

            threads = [threading.Thread(target=viewer, args=(w,)) for w in (320, 320, 640, 640)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            metrics = http.get("/metrics").text
            after = float(metrics.split('falldet_stream_preview_encodes_total{source="cam"} ')[1].split()[0])
            collector.close()
        assert not errors and len(seen) >= 12, errors
        assert after - before == len(set(seen))  # one encode per (frame, width), however many viewers
        assert http.delete("/v1/streams/cam").status_code == 200
        assert http.get(url).status_code == 404
    timings.sort()
    print(f"\npreview, 4 viewers x 3 s: {len(seen)} pictures, {int(after - before)} encodes "
          f"({len(seen) / max(after - before, 1):.2f} pictures per encode); request p50 "
          f"{statistics.median(timings) * 1000:.1f} ms, p95 {timings[int(0.95 * (len(timings) - 1))] * 1000:.1f} ms; "
          f"closest clip frame differs by {match:.2f}/255 (blank or flipped: {other:.2f})")
    big = scene(0, 1920, 1080)
    for width in (640, 1280):
        t0 = time.perf_counter()
        for _ in range(20):
            encode_preview(big, width)
        print(f"encode 1920x1080 -> {width} px wide: {(time.perf_counter() - t0) / 20 * 1000:.2f} ms")
