"""The operator page's zone editor and clip player, in Debian's headless Chromium against the real
service (uvicorn, a real RTSP camera replaying a shared fall clip, conftest's tiny contract model
that sees a fallen and a standing person in every frame, so an alert and its clip are certain).

A user draws two zones on the camera's picture (clicks on the canvas, a name, a kind, Close shape),
saves, and the service has them; after a reload the page shows them again on the live picture and in
the editor; deleting one and saving removes it. The fall alert's card then offers its clip, which
plays in the page's video element.
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from test_web_page import FALL_CLIP, KEY, browser_page, rtsp_camera, serve, sign_in, skip_without_camera

BED = [(0.10, 0.60), (0.45, 0.60), (0.45, 0.95), (0.10, 0.95)]
TV = [(0.70, 0.05), (0.95, 0.05), (0.95, 0.35)]


def click_points(page, points) -> None:
    box = page.locator("#zones-canvas").bounding_box()
    for x, y in points:
        page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_draw_zones_save_reload_delete_and_play_a_clip(tiny_model: Path, tmp_path: Path) -> None:
    skip_without_camera()
    from service.app import create_app
    from service.clips import ClipSettings
    from service.settings import Settings

    from conftest import PLUMBING_PIPELINE  # the tiny model is `fall` from the first frame: alert after 1 s

    settings = Settings(model=tiny_model, state_dir=tmp_path / "state", api_keys=[KEY], max_wait_ms=2.0,
                        clips=ClipSettings(pre_s=1.0, post_s=2.0, fps=10.0), pipeline=PLUMBING_PIPELINE)
    headers = {"X-API-Key": KEY}
    shots = Path(os.environ.get("FALLDET_WEB_ZONES_SHOTS", tmp_path))
    with rtsp_camera(FALL_CLIP) as url, serve(create_app(settings)) as base, browser_page() as page:
        assert httpx.post(base + "/v1/streams", headers=headers, json={"id": "cam1", "url": url}).status_code == 201
        page.goto(base + "/")
        sign_in(page, KEY, operator="ci")
        tile = '.camera[data-camera="cam1"]'
        page.wait_for_selector(f'{tile}[data-state="live"]', timeout=60000)
        page.wait_for_function(f"() => Number(document.querySelector('{tile} canvas').dataset.boxes) >= 1",
                               timeout=60000)  # the picture and its boxes are there

        page.click(f"{tile} .zones-btn")
        page.wait_for_selector("#zones-dialog[open]")
        click_points(page, BED)
        assert page.get_attribute("#zones-canvas", "data-points") == "4"
        page.fill("#zone-name", "bed 1")
        page.select_option("#zone-kind", "bed")
        page.click("#zone-close")
        click_points(page, TV[:2])
        assert page.is_disabled("#zone-close")  # 2 points: not a zone yet
        click_points(page, TV[2:])
        page.click("#zone-close")  # no name yet: the page says so
        assert "name" in page.inner_text("#zones-error")
        page.fill("#zone-name", "tv")
        page.select_option("#zone-kind", "ignore")
        page.click("#zone-close")
        assert page.locator("#zone-list li").count() == 2
        page.screenshot(path=str(shots / "zones-editor.png"))
        page.click("#zones-save")
        page.wait_for_selector("#zones-dialog:not([open])", state="attached")

        saved = httpx.get(base + "/v1/streams/cam1/zones", headers=headers).json()["zones"]
        assert [(z["name"], z["kind"]) for z in saved] == [("bed 1", "bed"), ("tv", "ignore")]
        for (x, y), (sx, sy) in zip(BED, saved[0]["points"]):
            assert abs(x - sx) < 0.01 and abs(y - sy) < 0.01
        page.wait_for_function(f"() => document.querySelector('{tile} canvas').dataset.zones === '2'")

        page.reload()  # the key is kept by the browser: no sign-in
        page.wait_for_function(f"() => document.querySelector('{tile} canvas')?.dataset.zones === '2'",
                               timeout=30000)
        page.click(f"{tile} .zones-btn")
        page.wait_for_selector("#zones-dialog[open]")
        assert page.eval_on_selector_all("#zone-list li", "els => els.map(e => e.dataset.zone)") == ["bed 1", "tv"]
        page.click('#zone-list li[data-zone="tv"] .zone-delete')
        page.click("#zones-save")
        page.wait_for_selector("#zones-dialog:not([open])", state="attached")
        saved = httpx.get(base + "/v1/streams/cam1/zones", headers=headers).json()["zones"]
        assert [z["name"] for z in saved] == ["bed 1"]
        page.wait_for_function(f"() => document.querySelector('{tile} canvas').dataset.zones === '1'")

        # the fall alert's clip, once written, plays in the page (alerts are re-read every 15 s)
        page.wait_for_selector(".alert .clip-btn:not([hidden])", timeout=90000)
        page.screenshot(path=str(shots / "zones-page.png"), full_page=True)
        page.click(".alert .clip-btn:not([hidden])")
        page.wait_for_selector("#clip-dialog[open]")
        try:
            page.wait_for_function("() => document.querySelector('#clip-video').readyState >= 1", timeout=30000)
        except Exception:
            pytest.fail("the clip did not load: " + page.evaluate(
                "() => { const v = document.querySelector('#clip-video'); return JSON.stringify({src: v.src, "
                "error: v.error && v.error.code, message: v.error && v.error.message, "
                "page: document.querySelector('#clip-error').textContent}) }") + f" {page.errors}")
        duration = page.evaluate("() => document.querySelector('#clip-video').duration")
        assert duration > 1.0
        page.screenshot(path=str(shots / "clip-player.png"))
        assert not page.errors, page.errors
