"""Fall lifecycle rules: smoothed per-track state in, `fall_alert` / `still_down` / `fall_cleared` out.

Pure: no clock, no threads, no I/O. Every time is a presentation time taken from the track status
given to `update`, so a test drives the rules with hand-made times and a replayed video gives the
same events as the live camera did.

One lifecycle per fall of a track (docs/timeline.md); every event of it carries `fall_id`, the
id of its `fall_alert`, so that the fall is one incident to receivers (acknowledged as one):
- onset: the first frame of the track's smoothed `fall` segment (see `service/timeline.py`);
- `fall_alert` once the fall segment has lasted `confirm_s`, on a frame where the track is
  detected (a coasting track, predicted but not detected, confirms nothing: its box would be
  stale on the snapshot; the next detection confirms), at most one per track per `cooldown_s`:
  a fall confirmed inside the cooldown is alerted when the cooldown ends if the person is still
  down then, so a repeat alert is delayed, never a person left on the floor;
- `still_down` when the person has been down `still_down_s` since onset, then every
  `still_down_every_s`;
- `fall_cleared` when an alerted fall ends, with `time_down_s` from onset to the end and a reason:
  `recovered` (another action took over: the event's frame is the first frame of that segment),
  `track_lost` (the tracker dropped the track: the event's frame is its last detection), or
  `source_ended` (the video or stream ended while the person was down: its last frame).
  The end is never placed before the fall's latest event (`fall_alert` or `still_down`): the
  timeline backdates a recovery up to its smoothing window, which can be before the alert's frame;
  the clear then takes that event's frame and time (its box stays the latest detection), so
  events of a fall are in frame order and an alerted fall's `time_down_s` is never below
  `confirm_s`.
A fall that ends before it is confirmed raises nothing; it is still recorded for the summary.

How long a fall must last before it is confirmed depends on whether the body was seen coming
down. The reference is the track's highest box (smallest top) in the `descent_s` before the onset;
if the box's top has dropped by at least `min_drop` of that box's height when `confirm_s` has
passed, the person came down: a fall as it happens, alerted then. Leaving a bed zone onto the
floor counts the same. Anything else, a box that was already low (a person first seen down,
crawling) or a `fall` called on a person whose box did not come down (someone walking seen from
behind), is confirmed only after `slow_confirm_s` down: lying there for long may still need a
carer, a one-second false call does not.
"""
from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from service.timeline import TrackStatus

IN_BED = "in_bed"  # the action the bed zones give a track while it is in a bed (service/zones.py)

EventType = Literal["fall_alert", "still_down", "fall_cleared"]
ClearReason = Literal["recovered", "track_lost", "source_ended"]


@dataclass
class Event:
    """One message of a fall lifecycle; `id` is the same everywhere it goes."""

    id: str  # uuid4 hex, made once; same id in store, REST, WS, MQTT, webhooks
    type: EventType
    source: str
    track_id: int
    frame: int  # frame that produced the event
    started_frame: int  # onset of the fall segment
    pts_s: float  # presentation time of `frame`
    started_pts_s: float
    at: float  # wall clock (captured_at) of `frame`
    box: tuple[float, float, float, float]
    time_down_s: float  # pts_s - started_pts_s
    reason: str | None = None  # fall_cleared: "recovered" | "track_lost" | "source_ended"
    snapshot: bytes | None = None  # JPEG with the box drawn (always for fall_alert)
    fall_id: str | None = None  # the id of this fall's `fall_alert`: one incident, acknowledged as one

    def to_json(self) -> dict:
        """The event line of the results contract: no bytes, `has_snapshot` instead."""
        return {"type": self.type, "id": self.id, "source": self.source, "track_id": self.track_id,
                "frame": self.frame, "started_frame": self.started_frame,
                "pts_s": round(self.pts_s, 4), "started_pts_s": round(self.started_pts_s, 4),
                "at": round(self.at, 4), "box": [round(float(v), 1) for v in self.box],
                "time_down_s": round(self.time_down_s, 4), "reason": self.reason,
                "has_snapshot": self.snapshot is not None, "fall_id": self.fall_id}


@dataclass
class FallRecord:
    """One fall of one track, for the summary: onset, confirmation, time down, how it ended."""

    track_id: int
    onset_frame: int
    onset_s: float
    alert_id: str | None = None
    alert_frame: int | None = None
    alert_s: float | None = None
    still_down: int = 0  # still_down events sent
    end_frame: int | None = None
    end_s: float | None = None
    reason: ClearReason | None = None  # None while the fall goes on

    def to_json(self) -> dict:
        r = _round
        return {"track_id": self.track_id, "onset_frame": self.onset_frame, "onset_s": r(self.onset_s),
                "confirmed": self.alert_id is not None, "alert_id": self.alert_id,
                "confirmed_frame": self.alert_frame, "confirmed_s": r(self.alert_s),
                "confirm_delay_s": r(None if self.alert_s is None else self.alert_s - self.onset_s),
                "still_down_events": self.still_down, "end_frame": self.end_frame, "end_s": r(self.end_s),
                "time_down_s": r(None if self.end_s is None else self.end_s - self.onset_s),
                "recovered": self.reason == "recovered", "end_reason": self.reason}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class _TrackState:
    fall: FallRecord | None = None
    last_alert_s: float | None = None
    next_still_s: float = float("inf")
    # (frame, pts_s, at) of the current fall's latest event: a clear is never placed before it
    last_event: tuple[int, float, float] | None = None
    left_bed_s: float | None = None  # the latest frame the track was in a bed zone
    # (pts_s, top, height) of the track's recent detected boxes: where the body came down from
    boxes: deque = field(default_factory=lambda: deque(maxlen=256))


class FallRules:
    """The lifecycle of every track of one source. Feed it one `TrackStatus` per live track
    per frame (observed or not), then `end_track` when a track is lost or the source ends."""

    def __init__(self, source: str, *, confirm_s: float = 1.0, cooldown_s: float = 10.0,
                 still_down_s: float = 60.0, still_down_every_s: float = 60.0,
                 descent_s: float | None = None, slow_confirm_s: float | None = None,
                 min_drop: float = 0.25, min_upright_aspect: float = 0.0) -> None:
        """`descent_s` None: every fall is confirmed after `confirm_s` (no descent rule)."""
        if still_down_every_s <= 0:
            raise ValueError("still_down_every_s must be positive")
        self.source = source
        self.confirm_s = confirm_s
        self.descent_s = descent_s
        self.slow_confirm_s = max(slow_confirm_s if slow_confirm_s is not None else confirm_s, confirm_s)
        self.min_drop = min_drop
        self.min_upright_aspect = min_upright_aspect
        self.cooldown_s = cooldown_s
        self.still_down_s = still_down_s
        self.still_down_every_s = still_down_every_s
        self.falls: list[FallRecord] = []  # finished falls, oldest first
        self._tracks: dict[int, _TrackState] = {}

    def ongoing(self) -> list[FallRecord]:
        return [st.fall for st in self._tracks.values() if st.fall is not None]

    def update(self, status: TrackStatus) -> list[Event]:
        """Compare the track's previous fall state with `status` and say what changed."""
        st = self._tracks.setdefault(status.track_id, _TrackState())
        events: list[Event] = []
        if status.action == IN_BED:
            st.left_bed_s = status.pts_s  # out of bed onto the floor is a fall as it happens
        if status.observed:
            x1, y1, x2, y2 = status.box
            st.boxes.append((status.pts_s, float(y1), float(y2 - y1), float(x2 - x1)))
            horizon = status.pts_s - (self.descent_s or 0.0) - max(self.slow_confirm_s, self.confirm_s) - 1.0
            while st.boxes and st.boxes[0][0] < horizon:
                st.boxes.popleft()
        if status.action != "fall":
            if st.fall is not None:  # recovered: the segment after the fall started then
                events += self._finish(st, status.start_frame, status.start_pts_s, status.start_at,
                                       status.box, "recovered")
            return events
        if st.fall is not None and st.fall.onset_frame != status.start_frame:
            # A new fall segment without a visible other action in between (not produced by the
            # timeline, but keep the lifecycle one per segment if it ever happens).
            events += self._finish(st, status.start_frame, status.start_pts_s, status.start_at,
                                   status.box, "recovered")
        if st.fall is None:
            st.fall = FallRecord(track_id=status.track_id, onset_frame=status.start_frame,
                                 onset_s=status.start_pts_s)
        fall = st.fall
        if fall.alert_id is None:
            # Only on a detected frame: a coasting track's box is a prediction (stale on the
            # snapshot), and the person may not be there at all.
            confirmed = status.observed and status.pts_s - fall.onset_s >= self._confirm_after(st, fall, status)
            cooled = st.last_alert_s is None or status.pts_s - st.last_alert_s >= self.cooldown_s
            if confirmed and cooled:
                event = self._event("fall_alert", status, fall, status.frame, status.pts_s, status.at,
                                    status.box)
                fall.alert_id, fall.alert_frame, fall.alert_s = event.id, status.frame, status.pts_s
                st.last_alert_s = status.pts_s
                st.next_still_s = fall.onset_s + self.still_down_s
                st.last_event = (status.frame, status.pts_s, status.at)
                events.append(event)
        elif status.pts_s >= st.next_still_s:
            events.append(self._event("still_down", status, fall, status.frame, status.pts_s,
                                      status.at, status.box))
            fall.still_down += 1
            st.last_event = (status.frame, status.pts_s, status.at)
            while st.next_still_s <= status.pts_s:  # one message per check, even after a gap
                st.next_still_s += self.still_down_every_s
        return events

    def _confirm_after(self, st: _TrackState, fall: FallRecord, status: TrackStatus) -> float:
        """Seconds down before an alert: `confirm_s` if the body was seen coming down (or out of a
        bed), `slow_confirm_s` otherwise (module docstring)."""
        if self.descent_s is None:
            return self.confirm_s
        if st.left_bed_s is not None and fall.onset_s - st.left_bed_s <= self.descent_s:
            return self.confirm_s
        before = [b for b in st.boxes if fall.onset_s - self.descent_s <= b[0] <= fall.onset_s]
        if before:
            _, top, height, width = min(before, key=lambda b: b[1])
            drop = (float(status.box[1]) - top) / max(height, 1e-6)
            upright = height >= self.min_upright_aspect * width  # came down from a tall box, not from sitting low
            if drop >= self.min_drop and upright:
                return self.confirm_s
        return self.slow_confirm_s

    def end_track(self, status: TrackStatus, reason: Literal["track_lost", "source_ended"]
                  ) -> list[Event]:
        """The track is gone (`track_lost`: down until its last detection) or the source ended
        (`source_ended`: down until `status.frame`, the source's last frame)."""
        st = self._tracks.pop(status.track_id, None)
        if st is None or st.fall is None:
            return []
        if reason == "track_lost":
            seen = status.last_seen
            return self._finish(st, seen.frame, seen.pts_s, seen.at, seen.box, reason)
        return self._finish(st, status.frame, status.pts_s, status.at, status.box, reason)

    def prune(self, before_s: float) -> None:
        """Live sources: forget finished falls that ended before `before_s`."""
        self.falls = [f for f in self.falls if f.end_s is None or f.end_s >= before_s]

    def _finish(self, st: _TrackState, frame: int, pts_s: float, at: float,
                box: tuple[float, float, float, float], reason: ClearReason) -> list[Event]:
        fall = st.fall
        assert fall is not None
        if st.last_event is not None and frame < st.last_event[0]:
            # A recovery backdated (by the smoothing window) to before the alert or a still_down:
            # end the fall at that event instead, so a clear never precedes what it clears.
            frame, pts_s, at = st.last_event
        st.last_event = None
        fall.end_frame, fall.end_s, fall.reason = frame, pts_s, reason
        self.falls.append(fall)
        st.fall = None
        st.next_still_s = float("inf")
        if fall.alert_id is None:
            return []
        event = Event(id=uuid.uuid4().hex, type="fall_cleared", source=self.source,
                      track_id=fall.track_id, frame=frame, started_frame=fall.onset_frame,
                      pts_s=pts_s, started_pts_s=fall.onset_s, at=at, box=box,
                      time_down_s=pts_s - fall.onset_s, reason=reason, fall_id=fall.alert_id)
        return [event]

    def _event(self, type_: EventType, status: TrackStatus, fall: FallRecord, frame: int,
               pts_s: float, at: float, box: tuple[float, float, float, float]) -> Event:
        event_id = uuid.uuid4().hex
        return Event(id=event_id, type=type_, source=self.source, track_id=status.track_id,
                     frame=frame, started_frame=fall.onset_frame, pts_s=pts_s,
                     started_pts_s=fall.onset_s, at=at, box=tuple(box), time_down_s=pts_s - fall.onset_s,
                     fall_id=fall.alert_id or event_id)
