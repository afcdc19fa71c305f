"""Pure fall rules driven by hand-made track states and injected times (no clock anywhere)."""
from __future__ import annotations

import json

import pytest

from service.events import Event, FallRules
from service.frames import ACTIONS, Person
from service.timeline import Observation, Timeline, TrackStatus

BOX = (10.0, 200.0, 300.0, 280.0)


class Track:
    """One track's smoothed state over time, written by hand: `set(action, at_s)` starts a segment."""

    def __init__(self, rules: FallRules, track_id: int = 7, fps: float = 10.0) -> None:
        self.rules, self.track_id, self.fps = rules, track_id, fps
        self.action, self.start = "stand", 0
        self.frame = -1
        self.events: list[Event] = []

    def set(self, action: str, frame: int) -> None:
        self.action, self.start = action, frame

    def status(self, frame: int) -> TrackStatus:
        t = frame / self.fps
        seen = Observation(frame, t, 1000.0 + t, self.action, 0.8, BOX)
        return TrackStatus(self.track_id, self.action, self.start, self.start / self.fps,
                           1000.0 + self.start / self.fps, frame, t, 1000.0 + t, seen, True)

    def until(self, frame: int) -> list[Event]:
        """Step every frame up to and including `frame`; returns the events of those frames."""
        out = []
        while self.frame < frame:
            self.frame += 1
            out += self.rules.update(self.status(self.frame))
        self.events += out
        return out


def types(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.type, e.frame) for e in events]


def test_alert_after_confirm_s_with_onset_and_time_down():
    rules = FallRules("cam", confirm_s=1.0)
    track = Track(rules)
    track.until(19)
    track.set("fall", 20)  # onset at 2.0 s (10 fps)
    assert track.until(29) == []  # 0.9 s down: not yet
    (alert,) = track.until(30)
    assert (alert.type, alert.frame, alert.started_frame) == ("fall_alert", 30, 20)
    assert alert.pts_s == 3.0 and alert.started_pts_s == 2.0 and alert.time_down_s == pytest.approx(1.0)
    assert alert.at == pytest.approx(1003.0) and alert.box == BOX and alert.track_id == 7
    assert alert.source == "cam" and alert.reason is None and len(alert.id) == 32
    assert track.until(100) == []  # one alert per fall


def test_fall_shorter_than_confirm_raises_nothing_but_is_recorded():
    rules = FallRules("cam", confirm_s=1.0)
    track = Track(rules)
    track.set("fall", 10)
    track.until(18)
    track.set("sit", 19)
    assert track.until(60) == []
    (fall,) = rules.falls
    assert fall.alert_id is None and fall.reason == "recovered"
    assert fall.to_json()["time_down_s"] == pytest.approx(0.9) and fall.to_json()["confirmed"] is False


def test_recovery_clears_with_time_down_to_the_start_of_the_next_segment():
    rules = FallRules("cam")
    track = Track(rules)
    track.set("fall", 10)
    track.until(50)
    track.set("stand", 47)  # the timeline backdates the recovery to frame 47
    (cleared,) = track.until(51)
    assert (cleared.type, cleared.frame, cleared.reason) == ("fall_cleared", 47, "recovered")
    assert cleared.started_frame == 10 and cleared.time_down_s == pytest.approx(3.7)
    assert cleared.pts_s - cleared.started_pts_s == pytest.approx(cleared.time_down_s)
    rec = rules.falls[0].to_json()
    assert rec["confirmed_frame"] == 20 and rec["confirm_delay_s"] == pytest.approx(1.0)
    assert rec["end_frame"] == 47 and rec["recovered"] is True


def test_still_down_after_still_down_s_then_repeated():
    rules = FallRules("cam", confirm_s=1.0, still_down_s=60.0, still_down_every_s=30.0)
    track = Track(rules, fps=2.0)
    track.set("fall", 0)
    events = track.until(2 * 130)  # 130 s down
    assert types(events) == [("fall_alert", 2), ("still_down", 120), ("still_down", 180),
                              ("still_down", 240)]
    assert [e.time_down_s for e in events[1:]] == [60.0, 90.0, 120.0]
    assert all(e.started_frame == 0 for e in events)


def test_still_down_sends_one_message_after_a_gap_in_frames():
    rules = FallRules("cam", confirm_s=1.0, still_down_s=5.0, still_down_every_s=1.0)
    track = Track(rules, fps=1.0)
    track.set("fall", 0)
    track.until(2)
    track.frame = 9  # no frames between 3 s and 9 s (a stalled camera)
    events = track.until(11)
    assert types(events) == [("still_down", 10), ("still_down", 11)]


def test_cooldown_delays_a_repeat_alert_and_drops_one_that_ends_inside_it():
    rules = FallRules("cam", confirm_s=1.0, cooldown_s=10.0)
    track = Track(rules)
    track.set("fall", 0)
    track.until(20)  # alert at 1.0 s
    track.set("stand", 21)
    track.until(29)
    track.set("fall", 30)  # down again at 3.0 s, confirmed at 4.0 s but inside the cooldown
    track.until(55)
    track.set("stand", 56)  # up again before the cooldown ends (11.0 s): no alert at all
    track.until(69)
    track.set("fall", 70)  # a third fall at 7.0 s, still down when the cooldown ends
    track.until(130)
    assert types(track.events) == [("fall_alert", 10), ("fall_cleared", 21), ("fall_alert", 110)]
    third = track.events[-1]
    assert third.started_frame == 70 and third.time_down_s == pytest.approx(4.0)
    assert [f.alert_id is not None for f in rules.falls] == [True, False]


def test_cooldown_is_per_track():
    rules = FallRules("cam", confirm_s=0.5, cooldown_s=60.0)
    a, b = Track(rules, track_id=1), Track(rules, track_id=2)
    a.set("fall", 0)
    b.set("fall", 0)
    a.until(10)
    b.until(10)
    assert types(a.events) == [("fall_alert", 5)] and types(b.events) == [("fall_alert", 5)]


def test_track_lost_while_down_clears_at_its_last_detection():
    rules = FallRules("cam")
    track = Track(rules)
    track.set("fall", 0)
    track.until(30)
    gone = track.status(52)
    last = Observation(33, 3.3, 1003.3, "fall", 0.7, (1, 2, 3, 4))
    gone = TrackStatus(gone.track_id, "fall", 0, 0.0, 1000.0, 52, 5.2, 1005.2, last, False)
    (cleared,) = rules.end_track(gone, "track_lost")
    assert (cleared.reason, cleared.frame, cleared.box) == ("track_lost", 33, (1, 2, 3, 4))
    assert cleared.time_down_s == pytest.approx(3.3)
    assert rules.ongoing() == []
    assert rules.end_track(gone, "track_lost") == []  # forgotten: nothing twice


def test_source_end_while_down_clears_at_the_last_frame():
    rules = FallRules("cam")
    track = Track(rules)
    track.set("fall", 5)
    track.until(40)
    (cleared,) = rules.end_track(track.status(40), "source_ended")
    assert (cleared.reason, cleared.frame) == ("source_ended", 40)
    assert cleared.time_down_s == pytest.approx(3.5)


def test_unconfirmed_fall_at_the_end_raises_nothing():
    rules = FallRules("cam")
    track = Track(rules)
    track.set("fall", 5)
    track.until(10)
    assert rules.end_track(track.status(10), "source_ended") == []
    assert rules.falls[0].reason == "source_ended" and rules.falls[0].alert_id is None


def test_flickering_detections_give_one_alert_and_one_clear():
    """End to end through the timeline: flickers neither delay, split nor clear the fall."""
    tl, rules, events = Timeline(), FallRules("cam", confirm_s=1.0), []
    pattern = "T" * 30 + "F" * 5 + "T" + "F" * 20 + "TS" + "F" * 60 + "T" * 40
    for i, ch in enumerate(pattern):
        action = {"T": "stand", "F": "fall", "S": "sit"}[ch]
        tl.observe([Person(BOX, 0.8, ACTIONS.index(action), 3)], i, i / 30, 0.0)
        events += rules.update(tl.status(3, i, i / 30, 0.0))
    assert types(events) == [("fall_alert", 60), ("fall_cleared", 118)]
    assert events[0].started_frame == 30 and events[1].time_down_s == pytest.approx(88 / 30)


def test_event_json_has_no_bytes_and_says_if_a_snapshot_exists():
    event = Event("ab" * 16, "fall_alert", "cam", 1, 30, 20, 3.0, 2.0, 1003.0, BOX, 1.0,
                  snapshot=b"\xff\xd8jpeg")
    js = event.to_json()
    assert js["has_snapshot"] is True and "snapshot" not in js
    assert js["type"] == "fall_alert" and js["box"] == list(BOX) and js["time_down_s"] == 1.0
    json.dumps(js)


def test_bad_interval_is_rejected():
    with pytest.raises(ValueError):
        FallRules("cam", still_down_every_s=0)


def test_a_recovery_backdated_before_the_alert_clears_at_the_alert_frame():
    """The timeline backdates a recovery up to its window: the clear never precedes the alert."""
    rules = FallRules("cam", confirm_s=1.0)
    track = Track(rules)
    track.set("fall", 10)
    (alert,) = track.until(20)  # confirmed at frame 20 (2.0 s), time down 1.0 s
    track.set("stand", 18)  # at frame 22 the timeline says the stand started at frame 18
    (cleared,) = track.until(22)
    assert (cleared.type, cleared.reason, cleared.frame) == ("fall_cleared", "recovered", alert.frame)
    assert cleared.pts_s == alert.pts_s and cleared.at == alert.at
    assert cleared.time_down_s == pytest.approx(alert.time_down_s) and cleared.time_down_s >= 1.0
    rec = rules.falls[0].to_json()
    assert rec["end_frame"] == 20 and rec["time_down_s"] == pytest.approx(1.0) and rec["confirmed"]


def test_a_backdated_recovery_never_precedes_a_still_down():
    rules = FallRules("cam", confirm_s=1.0, still_down_s=3.0, still_down_every_s=10.0)
    track = Track(rules)
    track.set("fall", 0)
    assert types(track.until(31)) == [("fall_alert", 10), ("still_down", 30)]
    track.set("stand", 27)
    (cleared,) = track.until(32)
    assert cleared.frame == 30 and cleared.time_down_s == pytest.approx(3.0)


def test_a_recovery_after_the_alert_keeps_its_backdated_frame():
    rules = FallRules("cam", confirm_s=1.0)
    track = Track(rules)
    track.set("fall", 10)
    track.until(25)
    track.set("stand", 21)  # backdated, but after the alert (frame 20): kept as is
    (cleared,) = track.until(26)
    assert cleared.frame == 21 and cleared.time_down_s == pytest.approx(1.1)


def test_backdated_recovery_through_the_timeline_keeps_events_in_frame_order():
    """End to end: a short fall confirmed on a frame the recovery is later backdated before."""
    tl, rules, events = Timeline(), FallRules("cam", confirm_s=0.45), []
    pattern = "T" * 30 + "F" * 12 + "T" * 30
    for i, ch in enumerate(pattern):
        action = {"T": "stand", "F": "fall"}[ch]
        tl.observe([Person(BOX, 0.8, ACTIONS.index(action), 3)], i, i / 30, 1000.0 + i / 30)
        events += rules.update(tl.status(3, i, i / 30, 1000.0 + i / 30))
    assert [e.type for e in events] == ["fall_alert", "fall_cleared"]
    alert, cleared = events
    assert cleared.frame >= alert.frame and cleared.time_down_s >= alert.time_down_s >= 0.45


def status_at(frame: int, seen_frame: int, action: str = "fall", start: int = 10, fps: float = 10.0,
              box: tuple = BOX) -> TrackStatus:
    t, ts = frame / fps, seen_frame / fps
    seen = Observation(seen_frame, ts, 1000.0 + ts, action, 0.8, box)
    return TrackStatus(7, action, start, start / fps, 1000.0 + start / fps, frame, t, 1000.0 + t, seen,
                       seen_frame == frame)


def test_a_coasting_track_confirms_nothing_until_it_is_detected_again():
    rules = FallRules("cam", confirm_s=1.0)
    for f in range(10, 18):  # down from frame 10, detected until frame 17
        assert rules.update(status_at(f, f)) == []
    for f in range(18, 25):  # coasting: alive, not detected, past confirm_s from frame 20
        assert rules.update(status_at(f, 17)) == []
    moved = (50.0, 210.0, 340.0, 290.0)
    (alert,) = rules.update(status_at(25, 25, box=moved))  # detected again: confirmed here
    assert (alert.type, alert.frame, alert.box) == ("fall_alert", 25, moved)
    assert alert.time_down_s == pytest.approx(1.5)
    assert rules.falls == [] and rules.ongoing()[0].alert_frame == 25


def test_a_fall_lost_while_coasting_before_any_detection_past_confirm_raises_nothing():
    rules = FallRules("cam", confirm_s=1.0)
    for f in range(10, 15):
        rules.update(status_at(f, f))
    for f in range(15, 40):
        assert rules.update(status_at(f, 14)) == []
    assert rules.end_track(status_at(40, 14), "track_lost") == []
    assert rules.falls[0].alert_id is None and rules.falls[0].end_frame == 14
