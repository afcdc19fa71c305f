"""The per-source step on hand-made detections: tracking, segments, events, snapshot, summary."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pydantic
import pytest

from service.frames import Frame, FrameResult, Person
from service.pipeline import PipelineSettings, SourcePipeline, snapshot_jpeg

FPS = 10.0
STAND = (100.0, 20.0, 160.0, 200.0)
DOWN = (60.0, 150.0, 220.0, 210.0)


class Feed:
    """Drives one pipeline with a person whose action is given per frame; times are injected."""

    def __init__(self, pipeline: SourcePipeline, image: bool = True, score: float = 0.8) -> None:
        self.pipeline = pipeline
        self.score = score
        self.image = np.full((240, 320, 3), 90, np.uint8) if image else None
        self.i = 0
        self.events = []
        self.results: list[FrameResult] = []

    def run(self, seconds: float, action: str | None, extra: list[Person] | None = None) -> list:
        """`action` None: the person is not detected during these seconds."""
        out = []
        for _ in range(round(seconds * FPS)):
            persons = [] if action is None else [
                Person(DOWN if action == "fall" else STAND, self.score, ("fall", "sit", "stand").index(action))]
            frame = Frame("cam", self.i, self.i / FPS, 5000.0 + self.i / FPS, self.image)
            result, events = self.pipeline.step(frame, persons + (extra or []), 12.5, 3)
            self.results.append(result)
            out += events
            self.i += 1
        self.events += out
        return out


def kinds(events) -> list[str]:
    return [e.type for e in events]


def test_fall_and_recovery_make_an_alert_with_snapshot_a_clear_and_a_summary():
    feed = Feed(SourcePipeline("cam", PipelineSettings(confirm_s=1.0), live=False))
    feed.run(3.0, "stand")
    feed.run(4.0, "fall")
    feed.run(3.0, "stand")
    feed.events += feed.pipeline.finish()
    assert kinds(feed.events) == ["fall_alert", "fall_cleared"]
    alert, cleared = feed.events
    assert alert.started_frame == 30 and alert.frame == 40 and alert.time_down_s == pytest.approx(1.0)
    assert alert.at == pytest.approx(5004.0) and alert.box == DOWN
    image = cv2.imdecode(np.frombuffer(alert.snapshot, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (240, 320, 3)
    b, g, r = (int(v) for v in image[150, 140])  # on the top edge of the drawn box: red
    assert r > 180 and g < 80 and b < 80
    assert cleared.reason == "recovered" and cleared.frame == 70 and cleared.time_down_s == pytest.approx(4.0)

    result = feed.results[45].to_json()
    assert result["type"] == "frame" and result["frame"] == 45 and result["latency_ms"] == 12.5
    assert result["dropped"] == 3 and (result["width"], result["height"]) == (320, 240)
    assert result["persons"][0]["track_id"] is not None and result["persons"][0]["action"] == "fall"

    summary = feed.pipeline.summary()
    json.dumps(summary)
    assert summary["type"] == "summary" and summary["frames"] == 100 and summary["finished"]
    (track,) = summary["tracks"]
    assert [(s["action"], s["start_frame"], s["end_frame"]) for s in track["segments"]] == [
        ("stand", 1, 29), ("fall", 30, 69), ("stand", 70, 99)]  # frame 0: the track is not confirmed yet
    assert track["segments"][1]["start_s"] == 3.0 and track["segments"][1]["end_s"] == 6.9
    (fall,) = track["falls"]
    assert (fall["onset_frame"], fall["confirmed_frame"], fall["end_frame"]) == (30, 40, 70)
    assert fall["time_down_s"] == 4.0 and fall["recovered"] and fall["alert_id"] == alert.id
    assert summary["events"] == {"fall_alert": 1, "still_down": 0, "fall_cleared": 1}


def test_still_down_then_track_lost_with_injected_times():
    settings = PipelineSettings(still_down_s=3.0, still_down_every_s=2.0, track_lost_s=1.0)
    feed = Feed(SourcePipeline("cam", settings, live=False))
    feed.run(1.0, "stand")
    feed.run(8.0, "fall")  # onset 1.0 s; alert 2.0; still_down 4.0, 6.0, 8.0
    lost = feed.run(2.0, None)  # detections stop at 8.9 s; the track is lost about 1 s later
    assert kinds(feed.events) == ["fall_alert", "still_down", "still_down", "still_down", "fall_cleared"]
    assert [e.pts_s for e in feed.events[1:4]] == pytest.approx([4.0, 6.0, 8.0])
    assert [e.time_down_s for e in feed.events[1:4]] == pytest.approx([3.0, 5.0, 7.0])
    (cleared,) = lost
    assert cleared.reason == "track_lost" and cleared.frame == 89
    assert cleared.time_down_s == pytest.approx(7.9)
    assert feed.pipeline.finish() == []  # nothing left open
    fall = feed.pipeline.summary()["falls"][0]
    assert fall["end_reason"] == "track_lost" and fall["still_down_events"] == 3


def test_source_end_while_down_clears_with_the_time_down():
    feed = Feed(SourcePipeline("cam", PipelineSettings(), live=False))
    feed.run(1.0, "stand")
    feed.run(3.0, "fall")
    (cleared,) = feed.pipeline.finish()
    assert cleared.reason == "source_ended" and cleared.frame == 39
    assert cleared.time_down_s == pytest.approx(2.9)
    assert feed.pipeline.finish() == []
    with pytest.raises(RuntimeError):
        feed.run(0.1, "stand")


def test_flicker_and_bystander_do_not_raise_alerts():
    feed = Feed(SourcePipeline("cam", PipelineSettings(), live=False), image=False)
    for _ in range(10):  # one fall frame every second while standing
        feed.run(0.9, "stand")
        feed.run(0.1, "fall")
    sitter = [Person((250.0, 100.0, 310.0, 200.0), 0.9, 1)]
    feed.run(2.0, "stand", extra=sitter)
    feed.pipeline.finish()
    assert feed.events == []
    summary = feed.pipeline.summary()
    assert sorted(s["action"] for t in summary["tracks"] for s in t["segments"]) == ["sit", "stand"]


def test_live_timeline_keeps_a_window_and_shows_time_down():
    feed = Feed(SourcePipeline("cam", PipelineSettings(segment_keep_s=2.0), live=True), image=False)
    feed.run(3.0, "stand")
    feed.run(2.0, "sit")
    feed.run(3.0, "fall")
    view = feed.pipeline.timeline()
    assert view["live"] and view["now_s"] == 7.9 and view["now_at"] == 5007.9 and view["window_s"] == 2.0
    (track,) = view["tracks"]
    assert [s["action"] for s in track["segments"]] == ["fall"]  # stand and sit ended > 2 s ago
    assert track["down"] == {"onset_s": 5.0, "confirmed": True, "time_down_s": 2.9}
    assert track["falls"][0]["confirmed"] is True
    json.dumps(view)


def test_empty_source_summary():
    pipeline = SourcePipeline("cam", PipelineSettings(), live=False)
    assert pipeline.finish() == []
    summary = pipeline.summary()
    assert summary["frames"] == 0 and summary["tracks"] == [] and summary["duration_s"] == 0.0


def test_snapshot_clips_boxes_outside_the_image():
    jpeg = snapshot_jpeg(np.zeros((50, 80, 3), np.uint8), (-20, -5, 500, 400), "x")
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (50, 80, 3)


def test_settings_are_described_strict_and_validated():
    for name, field in PipelineSettings.model_fields.items():
        assert field.description, name
    with pytest.raises(pydantic.ValidationError):
        PipelineSettings(confirm_seconds=2)
    with pytest.raises(pydantic.ValidationError):
        PipelineSettings(smooth_switch_ratio=0.3)
    assert PipelineSettings.model_validate({"confirm_s": "1.5"}).confirm_s == 1.5  # env strings


@pytest.mark.parametrize("detection_threshold, settings, tracked", [
    (0.05, PipelineSettings(), True),  # tracker thresholds follow the detector's operating point
    (None, PipelineSettings(), False),  # no detector threshold known: 0.5, the weak person is ignored
    (0.05, PipelineSettings(track_activation_score=0.5, track_high_score=0.5), False),  # set: kept
])
def test_tracker_thresholds_follow_the_detection_threshold_unless_set(detection_threshold, settings, tracked):
    # a person the detector sees at score 0.1 only (a from-scratch model's usual confidence)
    feed = Feed(SourcePipeline("cam", settings, live=False, detection_threshold=detection_threshold), image=False,
                score=0.1)
    feed.run(2.0, "stand")
    feed.run(3.0, "fall")
    ids = {p.track_id for r in feed.results for p in r.persons}
    assert (ids != {None}) is tracked, ids
    assert (kinds(feed.events) == ["fall_alert"]) is tracked, kinds(feed.events)


def test_the_summary_reports_the_tracker_thresholds_in_use():
    pipeline = SourcePipeline("cam", PipelineSettings(track_high_score=0.4), live=False, detection_threshold=0.07)
    used = pipeline.summary()["pipeline"]
    assert (used["track_activation_score"], used["track_high_score"]) == (0.07, 0.4)
