"""Issue 24 part 1 on the operator page, in headless Chromium, against the real app on a real uvicorn
server (the scripted camera of test_web_page.py): a fall card's "False alarm" / "Real fall" buttons,
the same two under the clip player, and "Nobody fell here" on a camera tile.
"""
from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import av
import numpy as np
import pytest

from service.events import Event
from service.frames import Frame
from test_web_page import FALL_BOX, KEY, ScriptedCameras, _drawn_frames, browser_page, build_app, serve, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
SHOTS = Path(__file__).resolve().parent.parent / "runs" / "screens"


class CamerasWithFrames(ScriptedCameras):
    """The scripted camera, also giving its latest frame (the seam `StreamManager.last_frame`)."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__(frames)
        self.images = frames

    def last_frame(self, stream_id: str) -> Frame | None:
        if stream_id not in self.streams:
            return None
        return Frame(stream_id, self.frame, self.frame / 10.0, time.time(), self.images[self.frame % len(self.images)])


def write_clip(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(10):
            image = np.full((120, 160, 3), 40 + 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.stat().st_size


def test_review_buttons_on_the_card_and_the_clip_player_and_nobody_fell_here(tmp_path: Path) -> None:
    cameras = CamerasWithFrames(_drawn_frames())
    state = tmp_path / "state"
    with browser_page() as page, serve(build_app(state, cameras)) as base:
        store = cameras.bus.store
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(base + "/")
        sign_in(page, KEY, operator="Dana")
        page.wait_for_selector('.camera[data-camera="cam1"][data-state="live"]')
        alert_id = uuid.uuid4().hex
        f = cameras.frame
        cameras.bus.publish_event(Event(
            id=alert_id, type="fall_alert", source="cam1", track_id=2, frame=f, started_frame=f - 12, pts_s=f / 10.0,
            started_pts_s=(f - 12) / 10.0, at=time.time(), box=tuple(FALL_BOX), time_down_s=1.2, fall_id=alert_id))
        size = write_clip(state / "clips" / "20250101" / f"{alert_id}.mp4")
        assert store.attach_clip(alert_id, f"20250101/{alert_id}.mp4", size)
        card = f'.alert[data-alert-id="{alert_id}"]'
        page.wait_for_selector(f"{card} .card-review .review-false")
        page.click(f"{card} .card-review .review-false")
        page.wait_for_selector(f'{card} .card-review[data-verdict="false_alarm"]')
        assert "false alarm" in page.inner_text(f"{card} .card-review .review-info")
        review = store.get(alert_id)["review"]
        assert review["verdict"] == "false_alarm" and review["by"] == "Dana"
        # under the clip player (the card learns its clip_url when it asks again): the same choice
        page.wait_for_function(f"""() => {{ const b = document.querySelector('{card} .clip-btn');
            return b && !b.hidden; }}""", timeout=30000)
        page.click(f"{card} .clip-btn")
        page.wait_for_selector('#clip-dialog[open] .clip-review[data-verdict="false_alarm"]')
        page.click("#clip-dialog .clip-review .review-fall")
        page.wait_for_selector('#clip-dialog .clip-review[data-verdict="fall"]')
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "issue24-clip-review.png"))
        assert store.get(alert_id)["review"]["verdict"] == "fall"
        page.click("#clip-dialog button[type=submit]")
        page.wait_for_selector(f'{card} .card-review[data-verdict="fall"]')
        # "nobody fell here" on the camera's current view
        page.click('.camera[data-camera="cam1"] .negative-btn')
        page.wait_for_function("""() => document.querySelector('.camera[data-camera="cam1"] .negative-btn')
            .textContent.startsWith('Kept')""")
        page.screenshot(path=str(SHOTS / "issue24-card-review.png"))
    from service.store import AlertStore  # the app's store closed with it: read the file again

    reopened = AlertStore(state / "alerts.db", state / "snapshots")
    negatives = reopened.negatives("cam1")
    reopened.close()
    assert len(negatives) == 1 and negatives[0]["by"] == "Dana"
    image = state / "negatives" / negatives[0]["image"]
    assert image.is_file() and stat.S_IMODE(image.stat().st_mode) == 0o600
