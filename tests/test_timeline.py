"""Smoothing and segmenting on hand-made per-frame sequences of one or more tracks."""
from __future__ import annotations

import pytest

from service.frames import ACTIONS, Person
from service.timeline import Timeline

FPS = 30.0
CODE = {"F": "fall", "S": "sit", "T": "stand", ".": None}  # "." = not detected in that frame


def run(pattern: str, timeline: Timeline | None = None, track_id: int = 1, score: float = 0.8
        ) -> Timeline:
    """Feed one track a per-frame action string, e.g. 'TTTTFFFF', at 30 fps."""
    tl = timeline or Timeline()
    for i, ch in enumerate(pattern):
        action = CODE[ch]
        persons = [] if action is None else [
            Person((10.0 + i, 20.0, 60.0 + i, 120.0), score, ACTIONS.index(action), track_id)]
        tl.observe(persons, i, i / FPS, 1000.0 + i / FPS)
    return tl


def segs(tl: Timeline, track_id: int = 1) -> list[tuple[str, int, int]]:
    return [(s.action, s.start.frame, s.end.frame) for s in tl.tracks[track_id].segments if s.confirmed]


def test_steady_action_is_one_segment_with_inclusive_frames_and_times():
    tl = run("T" * 45)
    assert segs(tl) == [("stand", 0, 44)]
    js = tl.tracks[1].segments[0].to_json()
    assert js["start_s"] == 0.0 and js["end_s"] == pytest.approx(44 / FPS, abs=1e-4)
    assert js["frames_observed"] == 45 and js["agreement"] == 1.0 and js["mean_score"] == 0.8
    assert js["start_box"] == [10.0, 20.0, 60.0, 120.0] and js["end_box"] == [54.0, 20.0, 104.0, 120.0]
    assert js["open"] is True


@pytest.mark.parametrize("flicker", ["F", "FF", "FSF", "S"])
def test_short_flicker_never_makes_a_segment(flicker):
    tl = run("T" * 30 + flicker + "T" * 30 + flicker + "T" * 30)
    assert segs(tl) == [("stand", 0, 90 + 2 * len(flicker) - 1)]
    assert tl.tracks[1].segments[0].to_json()["agreement"] < 1.0


def test_short_true_fall_is_kept_with_its_boundaries():
    # 0.4 s of fall between two stands: above the ~0.3 s a fall must dominate the window.
    tl = run("T" * 60 + "F" * 12 + "T" * 60)
    assert segs(tl) == [("stand", 0, 59), ("fall", 60, 71), ("stand", 72, 131)]


def test_real_fall_with_flickers_is_one_segment_starting_at_the_run():
    # A stray fall frame before the fall, stand flickers during it: one fall segment from frame 60.
    pattern = "T" * 50 + "F" + "T" * 9 + "FFFFFTFFFFFFFFTFFFFFFFFF" + "F" * 60 + "T" * 40
    tl = run(pattern)
    assert segs(tl) == [("stand", 0, 59), ("fall", 60, 143), ("stand", 144, 183)]


def test_onset_is_backdated_to_the_change_point():
    tl = run("T" * 40 + "F" * 40)
    assert segs(tl) == [("stand", 0, 39), ("fall", 40, 79)]
    status = tl.status(1, 79, 79 / FPS, 0.0)
    assert status.action == "fall" and status.start_frame == 40
    assert status.start_pts_s == pytest.approx(40 / FPS)


def test_switch_waits_for_the_vote():
    tl = run("T" * 40 + "F" * 8)  # 8 fall frames of a 15-frame (0.5 s) window: below 60%
    assert tl.status(1, 47, 47 / FPS, 0.0).action == "stand"
    tl = run("T" * 40 + "F" * 9)  # the ninth reaches it, and the segment starts at the first
    assert tl.status(1, 48, 48 / FPS, 0.0).action == "fall"
    assert segs(tl) == [("stand", 0, 39), ("fall", 40, 48)]


def test_first_segment_is_provisional_and_relabelled():
    tl = run("SS" + "T" * 30)
    assert segs(tl) == [("stand", 0, 31)]
    tl = run("FT")
    assert tl.status(1, 1, 1 / FPS, 0.0).action is None  # nothing has won a vote yet
    assert tl.to_json()[0]["segments"] == []


def test_missed_frames_are_spanned_by_the_open_segment():
    tl = run("TTTTTT" + "." * 20)
    status = tl.status(1, 25, 25 / FPS, 0.0)
    assert status.action == "stand" and status.observed is False and status.last_seen.frame == 5
    tl.observe([Person((0, 0, 10, 10), 0.8, 2, 1)], 26, 26 / FPS, 0.0)
    assert segs(tl) == [("stand", 0, 26)]
    assert tl.tracks[1].segments[0].observed == 7


def test_tracks_are_independent_and_close_ends_the_open_segment():
    tl = Timeline()
    for i in range(60):
        tl.observe([Person((0, 0, 10, 10), 0.9, 2, 1), Person((50, 0, 60, 10), 0.9, 0 if i >= 20 else 1, 2),
                    Person((90, 0, 99, 10), 0.9, 0, None)], i, i / FPS, 0.0)
    assert set(tl.tracks) == {1, 2}  # untracked persons are skipped
    assert segs(tl, 1) == [("stand", 0, 59)]
    assert segs(tl, 2) == [("sit", 0, 19), ("fall", 20, 59)]
    tl.close(2)
    assert tl.open_ids() == {1}
    assert tl.tracks[2].segments[-1].closed


def test_live_timeline_forgets_old_closed_segments():
    tl = run("T" * 30 + "F" * 300 + "S" * 30, Timeline(keep_s=2.0))
    tl.prune(now_s=359 / FPS)
    assert segs(tl) == [("fall", 30, 329), ("sit", 330, 359)]  # the stand ended > 2 s ago
    tl.close(1)
    tl.prune(now_s=359 / FPS + 5.0)
    assert tl.tracks == {}
    kept = run("T" * 30 + "F" * 300, Timeline())  # uploads keep everything
    kept.prune(now_s=1000.0)
    assert len(segs(kept)) == 2


def test_low_frame_rate_still_decides_on_min_frames():
    # At 4 fps a 0.5 s window holds two observations; the vote keeps the last three instead.
    tl = Timeline(window_s=0.5, min_switch_frames=3)
    for i, ch in enumerate("TTTTFFF"):
        tl.observe([Person((0, 0, 10, 10), 0.9, ACTIONS.index(CODE[ch]), 1)], i, i / 4, 0.0)
        if i == 5:
            assert tl.status(1, 5, 5 / 4, 0.0).action == "stand"  # two fall frames are not enough
    assert segs(tl) == [("stand", 0, 3), ("fall", 4, 6)]


def test_bad_ratio_is_rejected():
    with pytest.raises(ValueError):
        Timeline(switch_ratio=0.4)
