"""The per-frame step after inference, one per source: tracker -> timeline -> fall rules -> snapshot.

A function of its inputs apart from the loop that feeds it (the stream reader's callback, the
upload handler and `analyze` all call `step` the same way), so a video replayed through it gives
the events the live camera gave. Times come from the `Frame`, never from a clock.
"""
from __future__ import annotations

import threading
from collections import Counter

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.events import Event, FallRules
from dataclasses import replace

from service.frames import ACTIONS, Frame, FrameResult, Person
from service.posture import PostureSmoother
from service.timeline import Timeline
from service.tracking import PersonTracker
from service.zones import BedTracker, Zone, bed_of, frame_result_with_zones, ignored_by, normalise_box


def empty_is_none(value: object) -> object:
    """An empty environment value (`FALLDET_PIPELINE__DESCENT_S=`) of an optional setting is None, as
    the settings' descriptions say ("empty: ...")."""
    return None if isinstance(value, str) and not value.strip() else value


class PipelineSettings(BaseModel):
    """Tracking, smoothing and fall-rule parameters (env `FALLDET_PIPELINE__<FIELD>`)."""

    model_config = ConfigDict(extra="forbid")

    confirm_s: float = Field(1.5, ge=0, description=(
        "Seconds a smoothed fall segment must last before `fall_alert` is raised, when the body "
        "was seen coming down (`descent_s`, `min_drop`, `min_upright_aspect`)."))
    descent_s: float | None = Field(2.0, ge=0, description=(
        "Seconds before a fall's onset in which the body must be seen coming down (its box's top "
        "dropping by `min_drop`) for the alert to come after `confirm_s`; otherwise (first seen "
        "down, a box that did not come down) after `slow_confirm_s`. Empty: always `confirm_s`."))
    min_drop: float = Field(0.25, ge=0, description=(
        "How far the box's top must have dropped, as a share of the highest box's height in the "
        "`descent_s` before the onset, for a fall to count as seen coming down."))
    min_upright_aspect: float = Field(1.6, ge=0, description=(
        "The box the body came down from must be at least this many times as tall as wide (a "
        "standing or kneeling body, not someone sitting on the floor); 0: any box."))
    slow_confirm_s: float = Field(15.0, ge=0, description=(
        "Seconds down before `fall_alert` for a fall not seen coming down (`descent_s`)."))
    track_low_score: float = Field(0.1, ge=0, le=1, description=(
        "Least detection score given to the tracker at all (ByteTrack's low stage): boxes between "
        "this and the reporting threshold keep tracks alive and feed their posture, and are not "
        "reported to clients."))
    posture_tau_s: float = Field(0.0, ge=0, description=(
        "Time constant (s) of each track's smoothed class scores (service/posture.py); 0: each "
        "detection's own scores (the timeline's vote still smooths over `smooth_window_s`)."))
    fall_margin: float = Field(1.0, ge=1.0, description=(
        "The smoothed `fall` score must be at least this times every other class's to be the "
        "track's posture."))
    cooldown_s: float = Field(10.0, ge=0, description=(
        "Least seconds between two `fall_alert`s of one track; a fall confirmed inside the "
        "cooldown is alerted when it ends if the person is still down."))
    still_down_s: float = Field(60.0, gt=0, description=(
        "Seconds after the fall onset at which `still_down` is sent if the person is still down."))
    still_down_every_s: float = Field(60.0, gt=0, description=(
        "Interval between repeated `still_down` events while the person stays down."))
    smooth_window_s: float = Field(0.5, gt=0, description=(
        "Seconds of a track's recent detections that vote on its current action."))
    smooth_switch_ratio: float = Field(0.6, ge=0.5, le=1.0, description=(
        "Share of the vote window another action must hold to start a new segment (hysteresis)."))
    smooth_min_frames: int = Field(3, ge=1, description=(
        "Least detections of the new action inside the window to start a segment (guards low fps)."))
    segment_keep_s: float = Field(300.0, gt=0, description=(
        "Live sources keep segments and falls that ended within this many seconds; uploads keep all."))
    track_activation_score: float | None = Field(None, ge=0, le=1, description=(
        "Least detection score that may start a new track; empty: the detector's score threshold."))
    track_high_score: float | None = Field(None, ge=0, le=1, description=(
        "ByteTrack's split between confident detections (matched first) and weak ones (matched "
        "only to tracks left over, to keep them alive); empty: the detector's score threshold."))
    track_match_iou: float = Field(0.1, ge=0, le=1, description=(
        "Least IoU between a track's predicted box and a detection for them to match."))
    track_lost_s: float = Field(2.0, ge=0, description=(
        "Seconds a track survives without a detection before it is lost (then `fall_cleared` "
        "with reason `track_lost` if the person was down)."))
    track_min_frames: int = Field(2, ge=1, description=(
        "Consecutive frames a new track needs before it gets an id."))
    track_frame_rate: float = Field(30.0, gt=0, description=(
        "Nominal frame rate of the tracker's motion model (gaps are measured from timestamps)."))
    track_duplicate_iou: float = Field(0.5, gt=0, le=1, description=(
        "Boxes overlapping a higher-scored box by more than this are one person: not tracked twice "
        "(benchmarks/duplicate_overlap.py measures both sides of this choice on the val split)."))
    track_relink_overlap: float = Field(0.3, ge=0, le=1, description=(
        "A new track whose box covers this share of the smaller box of an unmatched, not yet "
        "lost track's last detection takes over its id (a fall changes the box too fast for the "
        "motion model); 1 disables it in practice."))
    snapshot_quality: int = Field(85, ge=10, le=100, description="JPEG quality of alert snapshots.")

    _empty = field_validator("descent_s", "track_activation_score", "track_high_score", mode="before")(
        empty_is_none)


def snapshot_jpeg(image: np.ndarray, box: tuple[float, float, float, float], label: str,
                  quality: int = 85) -> bytes:
    """JPEG of `image` (BGR) with `box` drawn and labelled: the evidence carried by an alert."""
    canvas = image.copy()
    h, w = canvas.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
    y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
    thickness = max(2, round(min(h, w) / 240))
    cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 255), thickness)
    cv2.putText(canvas, label, (x1 + 2, max(y1 - 6, 14)), cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * thickness / 2 + 0.25, (0, 0, 255), max(1, thickness - 1), cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


class SourcePipeline:
    """Everything that happens to one source's frames after inference.

    `step` is called in frame order by one feeder; `timeline()` and `summary()` may be called
    from another thread (the operator page), hence the lock.
    """

    def __init__(self, source: str, settings: PipelineSettings, live: bool,
                 detection_threshold: float | None = None, zones: list[Zone] | None = None) -> None:
        """`detection_threshold`: the runtime's score threshold, the tracker's default (else 0.5);
        `zones`: the source's bed and ignore zones (service/zones.py; `set_zones` replaces them)."""
        self.source = source
        self.settings = settings
        self.live = live
        s = settings
        self.detection_threshold = detection_threshold if detection_threshold is not None else 0.5
        self._track_scores = self._scores_for(self.detection_threshold)  # what the tracker really uses
        self._tracker = PersonTracker(
            activation_score=self._track_scores["track_activation_score"],
            high_score=self._track_scores["track_high_score"],
            match_iou=s.track_match_iou, lost_s=s.track_lost_s, min_frames=s.track_min_frames,
            frame_rate=s.track_frame_rate, duplicate_iou=s.track_duplicate_iou,
            relink_overlap=s.track_relink_overlap)
        self._timeline = Timeline(window_s=s.smooth_window_s, switch_ratio=s.smooth_switch_ratio,
                                  min_switch_frames=s.smooth_min_frames,
                                  keep_s=s.segment_keep_s if live else None)
        self._rules = FallRules(source, confirm_s=s.confirm_s, cooldown_s=s.cooldown_s,
                                still_down_s=s.still_down_s, still_down_every_s=s.still_down_every_s,
                                descent_s=s.descent_s, slow_confirm_s=s.slow_confirm_s,
                                min_drop=s.min_drop, min_upright_aspect=s.min_upright_aspect)
        self._posture = PostureSmoother(ACTIONS, tau_s=s.posture_tau_s, fall_margin=s.fall_margin)
        self._zones: list[Zone] = list(zones or [])
        self._beds = BedTracker(hold_s=s.smooth_window_s)  # in-bed state per track (zones.py)
        self._lock = threading.Lock()
        self._frames = 0
        self._first: tuple[int, float] | None = None  # (index, pts_s) of the first frame
        self._last: tuple[int, float, float] | None = None  # (index, pts_s, captured_at)
        self._event_counts: Counter = Counter()
        self._finished = False

    def step(self, frame: Frame, persons: list[Person], latency_ms: float, dropped: int
             ) -> tuple[FrameResult, list[Event]]:
        """Track, smooth and apply the fall rules to one inferred frame."""
        with self._lock:
            if self._finished:
                raise RuntimeError(f"source {self.source!r} already finished")
            h, w = frame.image.shape[:2] if frame.image is not None else (0, 0)
            zones = self._zones if w and h else []
            kept = [p for p in persons if not (zones and ignored_by(normalise_box(p.box, w, h), zones))]
            tracked = self._tracker.update(kept, frame.index, frame.pts_s)
            # the timeline and the fall rules see each track's smoothed posture, not one box's argmax
            postures = [replace(p, action=self._posture.observe(p.track_id, p, frame.pts_s))
                        if p.track_id is not None else p for p in tracked]
            self._timeline.observe(postures, frame.index, frame.pts_s, frame.captured_at)
            in_bed: dict[int, str] = {}
            for p in tracked:
                if p.track_id is not None:
                    zone = bed_of(normalise_box(p.box, w, h), zones) if zones else None
                    self._beds.observe(p.track_id, zone, frame.index, frame.pts_s, frame.captured_at)
                    if self._beds.in_bed(p.track_id) is not None:
                        in_bed[p.track_id] = self._beds.in_bed(p.track_id)
            alive = self._tracker.alive
            events: list[Event] = []
            postures_now: dict[int, str | None] = {}
            for tid in sorted(self._timeline.open_ids()):
                status = self._timeline.status(tid, frame.index, frame.pts_s, frame.captured_at)
                if status is None:
                    continue
                postures_now[tid] = status.action
                if tid in alive:
                    events += self._rules.update(self._beds.gate(status))
                else:
                    events += self._rules.end_track(status, "track_lost")
                    self._timeline.close(tid)
                    self._beds.end(tid)
                    self._posture.end(tid)
            for event in events:
                if event.type == "fall_alert" and frame.image is not None:
                    event.snapshot = snapshot_jpeg(frame.image, event.box,
                                                   f"FALL track {event.track_id}",
                                                   self.settings.snapshot_quality)
            self._note(frame, events)
            reported = [self._with_state(p, postures_now, in_bed) for p in tracked if p.reported]
            result = FrameResult(source=self.source, frame=frame.index, pts_s=frame.pts_s,
                                 captured_at=frame.captured_at, latency_ms=latency_ms,
                                 dropped=dropped, persons=reported, width=w, height=h,
                                 weak=[p for p in tracked if not p.reported and p.track_id is not None])
            ignored = sum(1 for p in persons if p.reported) - sum(1 for p in kept if p.reported)
            return frame_result_with_zones(result, in_bed, ignored), events

    @staticmethod
    def _with_state(p: Person, postures: dict[int, str | None], in_bed: dict[int, str]) -> Person:
        """A tracked person with its track's smoothed posture and `down` (a fall segment, not in bed)."""
        if p.track_id is None or p.track_id not in postures:
            return p
        posture = postures[p.track_id]
        return replace(p, posture=posture, down=posture == "fall" and p.track_id not in in_bed)

    def _scores_for(self, threshold: float) -> dict[str, float]:
        """The tracker's scores for a detector threshold: the settings' own where set, else it
        (the summary reports these, not None)."""
        s = self.settings
        return {"track_activation_score": threshold if s.track_activation_score is None else s.track_activation_score,
                "track_high_score": threshold if s.track_high_score is None else s.track_high_score}

    def set_detection_threshold(self, threshold: float) -> bool:
        """Follow a new detector threshold (a model swapped in with another operating point) from
        the next frame on: the tracker's activation and high scores that the settings leave to the
        detector move with it; tracks, timeline and fall rules are kept. True if anything changed."""
        threshold = float(threshold)
        with self._lock:
            if threshold == self.detection_threshold:
                return False
            self.detection_threshold = threshold
            scores = self._scores_for(threshold)
            if scores != self._track_scores:
                self._track_scores = scores
                self._tracker.set_scores(scores["track_activation_score"], scores["track_high_score"])
            return True

    def set_zones(self, zones: list[Zone]) -> None:
        """Replace the source's zones; the next frame uses them (no reconnect, tracks kept)."""
        with self._lock:
            self._zones = list(zones)

    @property
    def zones(self) -> list[Zone]:
        return list(self._zones)

    def _note(self, frame: Frame, events: list[Event]) -> None:
        self._frames += 1
        if self._first is None:
            self._first = (frame.index, frame.pts_s)
        self._last = (frame.index, frame.pts_s, frame.captured_at)
        self._event_counts.update(e.type for e in events)
        if self.live:
            before = frame.pts_s - self.settings.segment_keep_s
            self._timeline.prune(frame.pts_s)
            self._rules.prune(before)
            self._beds.prune(before)

    def finish(self) -> list[Event]:
        """End of the source: close every open segment and clear every fall still going on."""
        with self._lock:
            if self._finished:
                return []
            self._finished = True
            events: list[Event] = []
            if self._last is None:
                return events
            index, pts_s, at = self._last
            for tid in sorted(self._timeline.open_ids()):
                status = self._timeline.status(tid, index, pts_s, at)
                if status is not None:
                    events += self._rules.end_track(status, "source_ended")
                self._timeline.close(tid)
                self._beds.end(tid)
            self._event_counts.update(e.type for e in events)
            return events

    def _falls_by_track(self) -> dict[int, list[dict]]:
        by_track: dict[int, list[dict]] = {}
        for fall in sorted(self._rules.falls + self._rules.ongoing(), key=lambda f: f.onset_s):
            by_track.setdefault(fall.track_id, []).append(fall.to_json())
        return by_track

    def summary(self) -> dict:
        """The `{"type": "summary"}` line: per track its segments and falls (docs/timeline.md)."""
        with self._lock:
            falls = self._falls_by_track()
            tracks = []
            for entry in self._timeline.to_json():
                if not entry["segments"]:
                    continue  # a track that never held an action long enough (a ghost)
                entry["falls"] = falls.get(entry["track_id"], [])
                entry["bed"] = [p.to_json() for p in self._beds.periods(entry["track_id"])]
                tracks.append(entry)
            first_index, first_pts = self._first if self._first else (None, None)
            last_index, last_pts, _ = self._last if self._last else (None, None, None)
            return {"type": "summary", "source": self.source, "frames": self._frames,
                    "first_frame": first_index, "last_frame": last_index,
                    "duration_s": round(last_pts - first_pts, 4) if self._last else 0.0,
                    "finished": self._finished, "tracks": tracks,
                    "falls": [f for fs in falls.values() for f in fs],
                    "events": {t: self._event_counts[t]
                               for t in ("fall_alert", "still_down", "fall_cleared")},
                    "pipeline": self.settings.model_dump() | self._track_scores}

    def timeline(self) -> dict:
        """Recent segments per track for the operator page (live: the last `segment_keep_s`).

        `now_s` and `now_at` are the presentation and wall-clock times of the latest frame, so a
        page can place any `*_s` time at `now_at - (now_s - t)`.
        """
        with self._lock:
            falls = self._falls_by_track()
            ongoing = {f.track_id: f for f in self._rules.ongoing()}
            now_s = self._last[1] if self._last else None
            since = now_s - self.settings.segment_keep_s if (self.live and now_s is not None) else None
            tracks = []
            for entry in self._timeline.to_json(since):
                tid = entry["track_id"]
                entry["falls"] = falls.get(tid, [])
                entry["in_bed"] = self._beds.in_bed(tid)  # the bed zone's name while in bed (zones.py)
                entry["bed"] = [p.to_json() for p in self._beds.periods(tid)]
                fall = ongoing.get(tid)
                entry["down"] = None if fall is None or now_s is None else {
                    "onset_s": round(fall.onset_s, 4), "confirmed": fall.alert_id is not None,
                    "time_down_s": round(now_s - fall.onset_s, 4)}
                tracks.append(entry)
            return {"source": self.source, "live": self.live,
                    "now_s": None if now_s is None else round(now_s, 4),
                    "now_at": None if self._last is None else round(self._last[2], 4),
                    "window_s": self.settings.segment_keep_s if self.live else None,
                    "tracks": tracks}
