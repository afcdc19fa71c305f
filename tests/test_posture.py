"""Weak boxes keep a track alive, its posture over time decides falls: a person tracked standing who
drops to the floor and stays there at score 0.2 is a fall; sitting down on a bed, or lying down
slowly from sitting, is not (until it lasts `slow_confirm_s`)."""
from __future__ import annotations

import numpy as np
import pytest

from service.frames import Frame, Person
from service.pipeline import PipelineSettings, SourcePipeline
from service.posture import PostureSmoother
from service.runtime import Runtime, merge_rows
from conftest import make_tiny_model

FPS = 10.0
THRESHOLD = 0.27  # the reporting threshold (a model's operating point)
STAND = (100.0, 20.0, 160.0, 200.0)
SIT = (100.0, 90.0, 170.0, 200.0)
DOWN = (60.0, 150.0, 220.0, 210.0)
BOXES = {"stand": STAND, "sit": SIT, "fall": DOWN}
CLASSES = ("fall", "sit", "stand", "lie")


def person(action: str, score: float, runner_up: tuple[str, float] | None = None) -> Person:
    """One merged detection: its best class and score, and another class's score on the same box."""
    scores = [0.0] * 4
    scores[CLASSES.index(action)] = score
    if runner_up:
        scores[CLASSES.index(runner_up[0])] = runner_up[1]
    return Person(BOXES[action], score, CLASSES.index(action), class_scores=tuple(scores),
                  reported=score >= THRESHOLD)


class Feed:
    def __init__(self, **settings) -> None:
        self.pipeline = SourcePipeline("cam", PipelineSettings(**settings), live=False, detection_threshold=THRESHOLD)
        self.i, self.events, self.results = 0, [], []
        self.image = np.full((240, 320, 3), 90, np.uint8)

    def run(self, seconds: float, make) -> None:
        for _ in range(round(seconds * FPS)):
            frame = Frame("cam", self.i, self.i / FPS, 1000.0 + self.i / FPS, self.image)
            result, events = self.pipeline.step(frame, [make()] if make else [], 10.0, 0)
            self.results.append(result)
            self.events += events
            self.i += 1

    def finish(self) -> list[str]:
        self.events += self.pipeline.finish()
        return [e.type for e in self.events]


def test_a_drop_to_the_floor_at_score_0_2_is_a_fall_seen_by_the_tracker_not_by_clients() -> None:
    feed = Feed()
    feed.run(3.0, lambda: person("stand", 0.95))
    feed.run(4.0, lambda: person("fall", 0.2, ("stand", 0.12)))  # under the reporting threshold throughout
    assert feed.finish() == ["fall_alert", "fall_cleared"]
    alert = feed.events[0]
    assert 3.0 <= alert.started_pts_s <= 3.3 and alert.pts_s == pytest.approx(alert.started_pts_s + 1.5, abs=0.15)
    assert alert.box == DOWN and alert.track_id is not None
    on_floor = feed.results[50].to_json()
    assert on_floor["persons"] == []  # clients are told about reported boxes only
    (weak,) = feed.results[50].weak  # ... while the track lives on through the weak ones
    assert weak.track_id == alert.track_id and weak.score == pytest.approx(0.2)
    assert "weak" not in on_floor and feed.results[50].to_json(weak=True)["weak"][0]["track_id"] == alert.track_id


def test_walking_to_a_bed_and_sitting_on_it_is_not_a_fall() -> None:
    feed = Feed()
    feed.run(3.0, lambda: person("stand", 0.9))
    feed.run(20.0, lambda: person("sit", 0.6, ("fall", 0.25)))
    assert feed.finish() == []


def test_lying_down_slowly_from_sitting_waits_for_slow_confirm() -> None:
    feed = Feed(slow_confirm_s=15.0)
    feed.run(2.0, lambda: person("stand", 0.9))
    feed.run(6.0, lambda: person("sit", 0.7))  # sits on the floor for a while (not a descent from upright)
    feed.run(10.0, lambda: person("fall", 0.6))  # then lies down: 10 s down, under slow_confirm_s
    feed.run(2.0, lambda: person("sit", 0.7))
    assert feed.finish() == []
    feed = Feed(slow_confirm_s=15.0)
    feed.run(2.0, lambda: person("stand", 0.9))
    feed.run(6.0, lambda: person("sit", 0.7))
    feed.run(17.0, lambda: person("fall", 0.6))  # ... but lying there past slow_confirm_s is alerted
    assert feed.finish() == ["fall_alert", "fall_cleared"]
    assert feed.events[0].pts_s - feed.events[0].started_pts_s == pytest.approx(15.0, abs=0.15)


def test_a_fall_from_standing_within_descent_s_is_alerted_after_confirm_s() -> None:
    feed = Feed(descent_s=2.0, confirm_s=1.0)
    feed.run(3.0, lambda: person("stand", 0.9))
    feed.run(1.0, lambda: person("sit", 0.5))  # passes through a crouch on the way down
    feed.run(3.0, lambda: person("fall", 0.7))
    assert feed.finish()[0] == "fall_alert"
    assert feed.events[0].pts_s - feed.events[0].started_pts_s == pytest.approx(1.0, abs=0.15)


def test_fall_margin_keeps_a_near_tie_with_standing_upright() -> None:
    smoother = PostureSmoother(CLASSES, tau_s=0.0, fall_margin=1.3)
    assert smoother.observe(1, person("fall", 0.45, ("stand", 0.4)), 0.0) == "stand"
    assert smoother.observe(1, person("fall", 0.6, ("stand", 0.4)), 0.1) == "fall"
    smoother = PostureSmoother(CLASSES, tau_s=0.5)
    for k in range(10):
        smoother.observe(2, person("stand", 0.9), k / 10)
    assert smoother.observe(2, person("fall", 0.9), 1.0) == "stand"  # one frame does not flip a smoothed track
    for k in range(1, 10):
        posture = smoother.observe(2, person("fall", 0.9), 1.0 + k / 10)
    assert posture == "fall"


def test_runtime_rows_of_one_box_merge_into_one_person() -> None:
    boxes = np.array([[10, 10, 50, 90], [11, 10, 50, 91], [200, 10, 240, 90], [10, 12, 49, 90]], np.float32)
    classes = np.array([2, 0, 2, 2])  # stand, fall on the same box, another person, a second stand row
    assert merge_rows(boxes, classes, 0.7).tolist() == [0, 0, 2, 3]  # one class per person: row 3 stays apart


def test_the_runtime_returns_weak_boxes_flagged_unreported(tmp_path) -> None:
    rows = [[8.0, 16.0, 40.0, 56.0, 0.9, 2.0], [9.0, 16.0, 40.0, 57.0, 0.2, 0.0],  # stand 0.9 + fall 0.2: one person
            [30.0, 2.0, 60.0, 30.0, 0.15, 0.0], [0.0, 0.0, 10.0, 10.0, 0.05, 1.0]]
    model = make_tiny_model(tmp_path / "m.onnx", rows=rows)
    image = np.zeros((64, 64, 3), np.uint8)
    runtime = Runtime(model, ["CPUExecutionProvider"], score_threshold=0.25, track_threshold=0.1)
    standing, weak = runtime.detect([image])[0]
    assert (standing.action, standing.reported, standing.class_scores) == ("stand", True, (0.2, 0.0, 0.9))  # the tiny file names 3 classes
    assert (weak.action, weak.score, weak.reported) == ("fall", pytest.approx(0.15), False)  # 0.05: not at all
    plain = Runtime(model, ["CPUExecutionProvider"], score_threshold=0.25)  # no low stage: reported rows only
    assert [p.score for p in plain.detect([image])[0]] == pytest.approx([0.9])


def test_a_weak_box_beside_a_person_seen_well_starts_no_ghost_track() -> None:
    feed = Feed()
    chair = (150.0, 120.0, 200.0, 200.0)  # overlaps the standing box's side: a weak `fall` on a chair
    ghost = Person(chair, 0.15, 0, class_scores=(0.15, 0.0, 0.0, 0.0), reported=False)

    def both():
        return [person("stand", 0.9), ghost]
    for _ in range(60):
        frame = Frame("cam", feed.i, feed.i / FPS, 1000.0 + feed.i / FPS, feed.image)
        result, events = feed.pipeline.step(frame, both(), 10.0, 0)
        feed.results.append(result)
        feed.events += events
        feed.i += 1
    assert feed.finish() == []
    assert {p.track_id for r in feed.results for p in r.persons + r.weak} <= {0, None}


def test_a_person_first_seen_down_is_alerted_after_slow_confirm_s() -> None:
    feed = Feed(slow_confirm_s=5.0)  # the body was never seen coming down (crawling, already lying there)
    feed.run(4.0, lambda: person("fall", 0.6))
    assert feed.finish() == []
    feed = Feed(slow_confirm_s=5.0)
    feed.run(7.0, lambda: person("fall", 0.6))
    assert feed.finish() == ["fall_alert", "fall_cleared"]
    assert feed.events[0].pts_s - feed.events[0].started_pts_s == pytest.approx(5.0, abs=0.15)
