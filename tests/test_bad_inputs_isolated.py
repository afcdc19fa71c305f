"""Odd or hostile inputs stay the problem of the request that sent them: a 1-pixel-thin image is
inferred, a frame the model cannot take fails only its own future (not the frames batched with
it), an image or video declaring too many pixels is refused from its header before decoding, and
a PNG with bytes after IEND is not mistaken for a truncated one."""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import cv2
import numpy as np
import pytest

from service.frames import Frame, Person
from service.runtime import Runtime, letterbox
from service.worker import InferenceWorker


def _png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A well-formed PNG header declaring `width` x `height` RGB pixels, with a few bytes of IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


@pytest.fixture
def tiny_runtime(tiny_model):
    return Runtime(tiny_model, ["CPUExecutionProvider"])


@pytest.fixture
def imdecode_calls(monkeypatch):
    """Counts cv2.imdecode calls (the service's image decoder) while still decoding."""
    calls = []
    real = cv2.imdecode

    def spy(buf, flags):
        calls.append(len(buf))
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


# -- thin images -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 700, 3), (700, 1, 3)])
def test_letterbox_keeps_a_one_pixel_strip(shape):
    image = np.full(shape, 255, np.uint8)
    canvas, r, left, top = letterbox(image, 64)
    assert canvas.shape == (64, 64, 3)
    white = np.argwhere(canvas[:, :, 0] == 255)
    assert len(white) == 64  # the strip is one row (or column) of the canvas, edge to edge
    assert (top, left) == ((31, 0) if shape[0] == 1 else (0, 31))


@pytest.mark.parametrize("shape", [(1, 700, 3), (700, 1, 3)])
def test_thin_images_get_a_frame_result(tiny_client, auth, shape):
    image = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    r = tiny_client.post("/v1/detect", content=_png(image), headers={**auth, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["height"], body["width"]) == shape[:2]
    for person in body["persons"]:  # boxes are clipped to the image
        x1, y1, x2, y2 = person["box"]
        assert 0 <= x1 <= x2 <= shape[1] and 0 <= y1 <= y2 <= shape[0]


# -- one bad frame in a batch --------------------------------------------------------------------------
POISON = 13


class PoisonDetector:
    """Any call whose images include one marked POISON (pixel (0, 0)) raises, like a model would."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def detect(self, images: list[np.ndarray], rgb: bool = False) -> list[list[Person]]:
        self.entered.set()
        self.gate.wait(10)
        marks = [int(im[0, 0, 0]) for im in images]
        self.calls.append(marks)
        if POISON in marks:
            raise ValueError("cannot letterbox this frame")
        return [[Person((0.0, 0.0, 1.0, 1.0), score=m / 100, class_id=2)] for m in marks]


def _frame(source: str, mark: int) -> Frame:
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 0, 0] = mark
    return Frame(source=source, index=mark, pts_s=0.0, captured_at=time.time(), image=image)


def test_a_poisoned_frame_fails_alone_and_its_batch_mates_get_results():
    detector = PoisonDetector()
    worker = InferenceWorker(detector, max_batch=8, max_wait_ms=0.0)
    worker.start()
    try:
        blocker = worker.submit(_frame("blocker", 1), live=False)
        assert detector.entered.wait(5)  # the worker is inside its first call: the rest queue up
        camera = worker.submit(_frame("cam1", 2), live=True)
        video = [worker.submit(_frame("upload-a", m), live=False) for m in (3, 4)]
        poisoned = worker.submit(_frame("detect", POISON), live=False)
        other_camera = worker.submit(_frame("cam2", 5), live=True)
        detector.gate.set()
        assert blocker.result(5)[0].score == pytest.approx(0.01)
        assert camera.result(5)[0].score == pytest.approx(0.02)
        assert [f.result(5)[0].score for f in video] == pytest.approx([0.03, 0.04])
        assert other_camera.result(5)[0].score == pytest.approx(0.05)
        with pytest.raises(ValueError, match="cannot letterbox"):
            poisoned.result(5)
        # the five frames were one batch call (which failed), then retried one call each
        assert sorted(detector.calls[1]) == [2, 3, 4, 5, POISON]
        assert sorted(detector.calls[2:]) == [[2], [3], [4], [5], [POISON]]
        assert worker.running
        assert worker.submit(_frame("cam1", 6), live=True).result(5)[0].score == pytest.approx(0.06)
    finally:
        worker.stop()


class GatedRuntime:
    """The real runtime behind a gate, so a test can queue frames behind the first call."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def detect(self, images: list[np.ndarray], rgb: bool = False) -> list[list[Person]]:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(images))
        return self.runtime.detect(images, rgb)


def test_the_real_runtime_rejecting_one_frame_spares_the_others(tiny_runtime):
    gated = GatedRuntime(tiny_runtime)
    worker = InferenceWorker(gated, max_batch=8, max_wait_ms=0.0)
    worker.start()
    try:
        worker.submit(_frame("blocker", 1), live=False)
        assert gated.entered.wait(5)
        good = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(3)]
        futures = [worker.submit(Frame(f"cam{i}", 0, 0.0, time.time(), im), live=True) for i, im in enumerate(good)]
        gray = Frame("detect", 0, 0.0, time.time(), np.zeros((48, 64), np.uint8))  # not HxWx3
        bad = worker.submit(gray, live=False)
        gated.gate.set()
        assert [f.result(5) for f in futures] == tiny_runtime.detect(good)
        with pytest.raises(ValueError, match="HxWx3"):
            bad.result(5)
        assert gated.sizes[1:] == [4, 1, 1, 1, 1]
    finally:
        worker.stop()


# -- pixel limits ------------------------------------------------------------------------------------
def test_a_png_declaring_30000_squared_is_413_without_decoding(tiny_client, auth, imdecode_calls):
    bomb = _bomb_png()
    assert len(bomb) < 200
    r = tiny_client.post("/v1/detect", content=bomb, headers={**auth, "Content-Type": "image/png"})
    assert r.status_code == 413, r.text
    assert "30000 x 30000" in r.json()["detail"] and "MAX_IMAGE_PIXELS" in r.json()["detail"]
    assert imdecode_calls == []
    ok = tiny_client.post("/v1/detect", content=_png(np.zeros((20, 30, 3), np.uint8)),
                          headers={**auth, "Content-Type": "image/png"})
    assert ok.status_code == 200 and imdecode_calls  # the spy does see decodes


def test_a_jpeg_declaring_huge_dimensions_is_413(tiny_client, auth, imdecode_calls):
    ok, data = cv2.imencode(".jpg", np.full((16, 24, 3), 80, np.uint8))
    data = bytearray(data.tobytes())
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    r = tiny_client.post("/v1/detect", files={"file": ("a.jpg", bytes(data), "image/jpeg")}, headers=auth)
    assert r.status_code == 413, r.text
    assert "60000 x 60000" in r.json()["detail"]
    assert imdecode_calls == []


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_the_pixel_limit_follows_the_setting(make_client, tiny_runtime, auth, ext):
    client = make_client(tiny_runtime, max_image_pixels=40 * 30)
    for (h, w), expected in [((30, 40), 200), ((31, 40), 413)]:
        ok, data = cv2.imencode(ext, np.full((h, w, 3), 60, np.uint8))
        r = client.post("/v1/detect", files={"file": ("x" + ext, data.tobytes(), "image/*")}, headers=auth)
        assert r.status_code == expected, (ext, h, w, r.text)


def test_max_image_pixels_is_read_from_the_environment(monkeypatch):
    from service.settings import Settings

    assert Settings().max_image_pixels == 40_000_000
    monkeypatch.setenv("FALLDET_MAX_IMAGE_PIXELS", "1234")
    assert Settings().max_image_pixels == 1234


def test_an_image_header_declaring_zero_pixels_is_400(tiny_client, auth):
    r = tiny_client.post("/v1/detect", content=_bomb_png(0, 10), headers={**auth, "Content-Type": "image/png"})
    assert r.status_code == 400 and "0 x 10" in r.json()["detail"]


def _video(width: int, height: int, frames: int = 3) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_a_video_with_too_many_pixels_per_frame_is_refused(make_client, tiny_runtime, auth):
    from service.sources.upload import CorruptVideoError, probe_video

    data = _video(64, 48)
    assert probe_video(io.BytesIO(data), max_pixels=64 * 48).width == 64
    with pytest.raises(CorruptVideoError, match="64 x 48"):
        probe_video(io.BytesIO(data), max_pixels=64 * 48 - 1)
    client = make_client(tiny_runtime, max_image_pixels=1000)
    r = client.post("/v1/videos", files={"file": ("v.mp4", data, "video/mp4")}, headers=auth)
    assert r.status_code == 400, r.text
    assert "64 x 48" in r.json()["detail"] and "MAX_IMAGE_PIXELS" in r.json()["detail"]
    small = make_client(tiny_runtime, max_image_pixels=64 * 48)
    r = small.post("/v1/videos", files={"file": ("v.mp4", data, "video/mp4")}, headers=auth)
    assert r.status_code == 200 and r.text.count('"type":"frame"') == 3


# -- PNG truncation check ----------------------------------------------------------------------------
def test_a_png_with_bytes_after_iend_is_accepted_and_a_cut_one_is_not(tiny_client, auth):
    image = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    data = _png(image)
    headers = {**auth, "Content-Type": "image/png"}
    r = tiny_client.post("/v1/detect", content=data + bytes(range(100)), headers=headers)
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (60, 40)
    cut = tiny_client.post("/v1/detect", content=data[:len(data) // 2], headers=headers)
    assert cut.status_code == 400 and "truncated PNG" in cut.json()["detail"]
