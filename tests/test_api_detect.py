"""`POST /v1/detect`: multipart or raw image in, a frame result in the image's own pixels out."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import TINY_ROWS


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _expected_box(row, w: int, h: int, size: int = 64) -> list[float]:
    r = min(size / h, size / w)
    left, top = (size - round(w * r)) // 2, (size - round(h * r)) // 2
    return [round(float(np.clip((row[0] - left) / r, 0, w)), 1), round(float(np.clip((row[1] - top) / r, 0, h)), 1),
            round(float(np.clip((row[2] - left) / r, 0, w)), 1), round(float(np.clip((row[3] - top) / r, 0, h)), 1)]


def test_multipart_image_gives_a_frame_result_in_image_pixels(tiny_client, auth):
    image = np.full((480, 640, 3), 90, np.uint8)
    r = tiny_client.post("/v1/detect", files={"file": ("a.jpg", _encode(image, ".jpg"), "image/jpeg")}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "frame" and (body["width"], body["height"]) == (640, 480)
    assert body["dropped"] == 0 and body["latency_ms"] >= 0
    kept = [row for row in TINY_ROWS if row[4] >= 0.25]
    assert [p["box"] for p in body["persons"]] == [_expected_box(row, 640, 480) for row in kept]
    assert [p["action"] for p in body["persons"]] == ["fall", "stand"]
    assert [p["fall"] for p in body["persons"]] == [True, False]
    assert all(p["track_id"] is None for p in body["persons"])


@pytest.mark.parametrize("ext,content_type", [(".png", "image/png"), (".bmp", "image/bmp"),
                                              (".webp", "image/webp"), (".jpg", "application/octet-stream")])
def test_raw_bodies_of_each_format(tiny_client, auth, ext, content_type):
    image = np.random.default_rng(1).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    r = tiny_client.post("/v1/detect", content=_encode(image, ext), headers={**auth, "Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (160, 90)


def test_grayscale_and_alpha_images_are_accepted(tiny_client, auth):
    gray = np.full((50, 70), 128, np.uint8)
    rgba = np.full((50, 70, 4), 200, np.uint8)
    for image in (gray, rgba):
        r = tiny_client.post("/v1/detect", content=_encode(image, ".png"),
                             headers={**auth, "Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (70, 50)


def test_detect_equals_the_runtime_on_val_images(make_client, model_path, auth, val_images):
    """The API answers what the runtime finds on the decoded upload (low threshold: any model has rows)."""
    from service.runtime import Runtime

    runtime = Runtime(model_path, ["CPUExecutionProvider"], score_threshold=0.001)
    client = make_client(runtime)
    found = 0
    for path in val_images[:3]:
        data = path.read_bytes()
        r = client.post("/v1/detect", files={"file": (path.name, data, "image/jpeg")}, headers=auth)
        assert r.status_code == 200, r.text
        expected = [p.to_json() for p in runtime.detect([cv2.imdecode(np.frombuffer(data, np.uint8), 1)])[0]]
        assert r.json()["persons"] == expected
        raw = client.post("/v1/detect", content=data, headers={**auth, "Content-Type": "image/jpeg"})
        assert raw.json()["persons"] == expected
        found += len(expected)
    assert found > 0, "the detector found nothing in three val images, even at score 0.001"
