"""Per-source person tracker: gives each detected person a stable track id across frames.

A thin adapter over the `trackers` library's ByteTrack (two-stage association: confident boxes
first, then weaker boxes to keep tracks alive through partial occlusion). ByteTrack here is
class-agnostic on purpose: a person who goes from `stand` to `fall` must keep the same id, so the
class and score of each detection are carried through to its track by index, never used to match.
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from service.frames import Person


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def duplicates(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Mask of boxes that overlap a higher-scored box by more than `iou` (class-agnostic).

    A detector whose NMS is per class can report one person twice (say `fall` 0.5 and `stand`
    0.4); tracking both would make two tracks for one person.
    """
    order = np.argsort(-scores, kind="stable")
    dup = np.zeros(len(boxes), dtype=bool)
    if len(boxes) < 2:
        return dup
    ious = box_iou(boxes, boxes)
    for rank, i in enumerate(order):
        if dup[i]:
            continue
        later = order[rank + 1:]
        dup[later[ious[i, later] > iou]] = True
    return dup


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller box's area: high when one box sits on the other, whatever
    their shapes (a standing box and the lying box at its feet)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller) if smaller > 0 else 0.0


class PersonTracker:
    """Assigns `track_id` to persons, one instance per source (it keeps motion state).

    `update` is the whole interface; `alive` tells which confirmed tracks the tracker still
    holds (matched now or within `lost_s`), so that callers can notice a track that ended.

    A fall breaks a constant-velocity motion model: the box turns from tall to wide within a few
    frames, the prediction overshoots and the library starts a new track for the person on the
    floor. So when the library confirms a new track whose box overlaps (by `relink_overlap` of the
    smaller box) the last detection of a track that is unmatched but not yet lost, the new track
    takes over the old id: a fall stays one track, as the fall rules need.

    Weak boxes (under `high_score`) only keep existing tracks alive, in ByteTrack's second stage.
    A person who falls is often seen weakly as he lands (a body on a patterned floor scores 0.2),
    exactly when the motion model overshoots: so a weak box that sits on a live track's last
    box (by `relink_overlap` of the smaller box) is given to the library as confident, and the
    relink above keeps the id. The person's own score is unchanged.
    """

    def __init__(self, *, activation_score: float = 0.5, high_score: float = 0.5,
                 match_iou: float = 0.1, lost_s: float = 2.0, min_frames: int = 2,
                 frame_rate: float = 30.0, duplicate_iou: float = 0.5,
                 relink_overlap: float = 0.3) -> None:
        # The library counts its lost buffer in 30-fps frames and, with timestamps, turns it
        # into seconds as buffer / 30: so seconds * 30 is exact whatever the source fps.
        self._tracker = ByteTrackTracker(
            lost_track_buffer=max(0, round(lost_s * 30.0)), frame_rate=frame_rate,
            track_activation_threshold=activation_score, minimum_consecutive_frames=min_frames,
            minimum_iou_threshold=match_iou, high_conf_det_threshold=high_score)
        self._duplicate_iou = duplicate_iou
        self._relink_overlap = relink_overlap
        self._confident = max(high_score, activation_score)
        self._last_pts: float | None = None
        self._alias: dict[int, int] = {}  # library id -> public id (differs after a relink)
        self._last_box: dict[int, np.ndarray] = {}  # public id -> its latest detected box

    @property
    def scores(self) -> tuple[float, float]:
        """(activation_score, high_score) in use."""
        return (float(self._tracker.track_activation_threshold), float(self._tracker.high_conf_det_threshold))

    def set_scores(self, activation_score: float, high_score: float) -> None:
        """Change the score thresholds from the next `update` on (a model swapped in with another
        operating point): the tracks, their ids and their motion state are kept."""
        self._tracker.track_activation_threshold = float(activation_score)
        self._tracker.high_conf_det_threshold = float(high_score)
        self._confident = max(float(high_score), float(activation_score))

    def _public_ids(self) -> dict[int, int]:
        """Library ids of the confirmed tracklets the library holds -> their public ids."""
        return {int(t.tracker_id): self._alias.get(int(t.tracker_id), int(t.tracker_id))
                for t in self._tracker.tracks if t.tracker_id >= 0}

    @property
    def alive(self) -> frozenset[int]:
        """Ids of confirmed tracks still held (seen now, or missed for less than `lost_s`)."""
        return frozenset(self._public_ids().values())

    def update(self, persons: list[Person], frame_index: int, pts_s: float) -> list[Person]:
        """Return copies of `persons` (same order) with `track_id` set, or None while a new
        track is unconfirmed (seen fewer than `min_frames` frames) or for a duplicate box.

        `pts_s` drives the motion model and the lost-track budget, so dropped frames of a live
        source are handled as the time gap they are. A frame whose time does not advance past
        the previous one is not given to the library (it would skip or warn); its persons come
        back untracked.
        """
        del frame_index  # time, not the index, is what the motion model needs
        out = [replace(p, track_id=None) for p in persons]
        if self._last_pts is not None and pts_s <= self._last_pts:
            return out
        self._last_pts = pts_s
        if persons:
            boxes = np.asarray([p.box for p in persons], dtype=np.float32).reshape(-1, 4)
            scores = np.asarray([p.score for p in persons], dtype=np.float32)
        else:
            boxes, scores = np.empty((0, 4), np.float32), np.empty((0,), np.float32)
        keep = np.flatnonzero(~duplicates(boxes, scores, self._duplicate_iou))
        detections = sv.Detections(
            xyxy=boxes[keep], confidence=self._library_scores(boxes[keep], scores[keep]),
            class_id=np.asarray([persons[i].class_id for i in keep], dtype=int),
            data={"index": keep.astype(int)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tracked = self._tracker.update(detections, timestamp=float(pts_s))
        pairs = [(int(i), int(t)) for i, t in zip(tracked.data.get("index", []), tracked.tracker_id)
                 if t >= 0] if len(tracked) else []
        matched = {self._alias[lib] for _, lib in pairs if lib in self._alias}
        for index, lib in pairs:
            if lib not in self._alias:  # confirmed this frame
                self._alias[lib] = self._relink(boxes[index], matched, lib)
            public = self._alias[lib]
            matched.add(public)
            self._last_box[public] = boxes[index]
            out[index].track_id = public
        self._forget()
        return out

    def _library_scores(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The scores given to the library: a weak box on the last box of a live track that no
        confident box covers in this frame counts as confident (never a second box for a person
        who is seen well: that would start a ghost track beside them)."""
        out = scores.copy()
        confident = np.flatnonzero(scores >= self._confident)
        uncovered = [last for last in self._last_box.values()
                     if not any(overlap_of_smaller(boxes[j], last) >= self._relink_overlap for j in confident)]
        if not uncovered:
            return out
        for i in np.flatnonzero(scores < self._confident):
            if any(overlap_of_smaller(boxes[i], last) >= self._relink_overlap for last in uncovered):
                out[i] = self._confident
        return out

    def _relink(self, box: np.ndarray, matched: set[int], lib: int) -> int:
        """The public id a newly confirmed library track should carry (its own, or a relink)."""
        best, best_overlap = lib, self._relink_overlap
        for public in set(self._public_ids().values()) - matched - {lib}:
            last = self._last_box.get(public)
            overlap = overlap_of_smaller(box, last) if last is not None else 0.0
            if overlap >= best_overlap:
                best, best_overlap = public, overlap
        if best != lib:  # the old tracklet must not match anyone again under the same id
            self._tracker.tracks = [t for t in self._tracker.tracks
                                    if t.tracker_id < 0 or t.tracker_id == lib
                                    or self._alias.get(int(t.tracker_id), int(t.tracker_id)) != best]
        return best

    def _forget(self) -> None:
        held = self._public_ids()
        self._alias = {lib: pub for lib, pub in self._alias.items() if lib in held}
        alive = set(held.values())
        self._last_box = {pub: box for pub, box in self._last_box.items() if pub in alive}
