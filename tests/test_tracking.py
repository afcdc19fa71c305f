"""The tracker adapter: stable ids, class and score carried through, duplicates, lost tracks."""
from __future__ import annotations

import numpy as np

from service.frames import Person
from service.tracking import PersonTracker, box_iou, duplicates

FPS = 30.0


def walk(x0: float, dx: float, i: int, y: float = 50.0) -> tuple[float, float, float, float]:
    return (x0 + dx * i, y, x0 + dx * i + 80, y + 200)


def test_two_people_keep_distinct_ids_and_their_own_class_and_score():
    tracker = PersonTracker()
    ids = []
    for i in range(40):
        a = Person(walk(20, 3, i), 0.9, 2)
        b = Person(walk(500, -3, i, y=150), 0.8 if i < 20 else 0.7, 1 if i < 20 else 0)
        out = tracker.update([a, b], i, i / FPS)
        assert [p.box for p in out] == [a.box, b.box]  # same order, same boxes
        assert [p.class_id for p in out] == [2, b.class_id] and out[1].score == b.score
        assert a.track_id is None and b.track_id is None  # inputs are not mutated
        ids.append((out[0].track_id, out[1].track_id))
    assert ids[0] == (None, None)  # a new track needs two frames before it gets an id
    steady = set(ids[1:])
    assert len(steady) == 1
    (ta, tb), = steady
    assert ta is not None and tb is not None and ta != tb
    assert tracker.alive == {ta, tb}


def test_a_person_who_falls_keeps_the_same_track():
    tracker = PersonTracker()
    seen = set()
    for i in range(30):  # stand, then the box widens and drops over 0.3 s, then lies still
        k = min(max(i - 10, 0), 9) / 9
        box = (100 - 60 * k, 50 + 220 * k, 180 + 120 * k, 250 + 60 * k)
        out = tracker.update([Person(box, 0.85, 2 if k < 0.5 else 0)], i, i / FPS)
        if i > 0:
            seen.add(out[0].track_id)
    assert len(seen) == 1 and None not in seen


def test_a_sudden_fall_box_takes_over_the_id_of_the_standing_track():
    # Tall box to wide box in one frame: the motion model overshoots and the library starts a
    # new track; the relink gives it the standing person's id.
    tracker = PersonTracker()
    ids = set()
    for i in range(40):
        box = (100.0, 20.0, 160.0, 200.0) if i < 20 else (60.0, 150.0, 220.0, 210.0)
        out = tracker.update([Person(box, 0.8, 2 if i < 20 else 0)], i, i / FPS)
        ids.add(out[0].track_id)
    assert ids - {None} == {0}
    assert tracker.alive == {0}


def test_no_relink_to_a_far_away_or_matched_track():
    tracker = PersonTracker()
    for i in range(10):
        out = tracker.update([Person((10.0, 10.0, 60.0, 150.0), 0.9, 2)], i, i / FPS)
    first = out[0].track_id
    for i in range(10, 20):  # the first person leaves, another one enters far away
        out = tracker.update([Person((400.0, 10.0, 450.0, 150.0), 0.9, 2)], i, i / FPS)
    assert out[0].track_id not in (None, first)
    for i in range(20, 30):  # a third one appears on top of the second, who is still matched
        out = tracker.update([Person((400.0, 10.0, 450.0, 150.0), 0.9, 2),
                              Person((380.0, 90.0, 470.0, 160.0), 0.9, 1)], i, i / FPS)
    assert len({p.track_id for p in out}) == 2 and None not in {p.track_id for p in out}


def test_duplicate_boxes_of_one_person_make_one_track():
    tracker = PersonTracker()
    for i in range(5):
        box = walk(100, 2, i)
        out = tracker.update([Person(box, 0.6, 0), Person(tuple(v + 3 for v in box), 0.55, 2)], i, i / FPS)
    assert out[0].track_id is not None and out[1].track_id is None
    assert len(tracker.alive) == 1


def test_track_survives_short_gap_and_is_lost_after_lost_s():
    tracker = PersonTracker(lost_s=0.5)
    for i in range(10):
        out = tracker.update([Person(walk(100, 1, i), 0.9, 2)], i, i / FPS)
    tid = out[0].track_id
    assert tid is not None
    for i in range(10, 19):  # 0.3 s without detections: still held
        tracker.update([], i, i / FPS)
        assert tid in tracker.alive
    out = tracker.update([Person(walk(100, 1, 19), 0.9, 2)], 19, 19 / FPS)
    assert out[0].track_id == tid
    for i in range(20, 40):  # 0.67 s without detections: lost
        tracker.update([], i, i / FPS)
    assert tid not in tracker.alive


def test_time_that_does_not_advance_leaves_persons_untracked():
    tracker = PersonTracker()
    for i in range(3):
        tracker.update([Person(walk(10, 1, i), 0.9, 2)], i, i / FPS)
    out = tracker.update([Person(walk(10, 1, 3), 0.9, 2)], 3, 1 / FPS)
    assert out[0].track_id is None
    assert len(tracker.alive) == 1


def test_box_helpers():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    iou = box_iou(a, np.array([[0, 0, 10, 5]], dtype=np.float32))
    assert np.allclose(iou[:, 0], [0.5, 0.0])
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9.5], [50, 50, 60, 60]], dtype=np.float32)
    assert duplicates(boxes, np.array([0.4, 0.9, 0.3]), 0.7).tolist() == [True, False, False]
    assert duplicates(np.empty((0, 4)), np.empty(0), 0.7).tolist() == []


def test_default_merges_a_second_box_on_one_person_but_not_a_neighbour():
    """At the default `duplicate_iou` (0.5) a second box on one body at IoU ~0.56 (the graph's NMS
    at 0.7 lets it through) is no second track; a person beside another (IoU ~0.33) is tracked."""
    def boxes(i: int) -> tuple:
        body = walk(100, 2, i)
        x1, y1, x2, y2 = body
        return body, (x1 + 20, y1, x2 + 20, y2 + 20), (x1 + 40, y1, x2 + 40, y2)

    body, second, neighbour = (np.array([b]) for b in boxes(0))
    assert 0.5 < box_iou(body, second)[0, 0] < 0.7 and box_iou(body, neighbour)[0, 0] < 0.5
    tracker = PersonTracker()
    for i in range(6):
        body, second, neighbour = boxes(i)
        out = tracker.update([Person(body, 0.6, 0), Person(second, 0.5, 0), Person(neighbour, 0.55, 2)],
                             i, i / FPS)
    assert out[0].track_id is not None and out[1].track_id is None and out[2].track_id is not None
    assert out[0].track_id != out[2].track_id and len(tracker.alive) == 2
