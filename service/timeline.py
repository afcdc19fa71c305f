"""Per-track action timeline: per-frame detections become smoothed action segments.

The detector labels every frame on its own, so a person's action flickers (a `stand` frame in
the middle of a fall, a `fall` frame while sitting down). Segments are made online, so that a live
camera and an uploaded file give the same answer, by a windowed vote with hysteresis:

- the last `window_s` seconds of a track's observations vote (never fewer than the last
  `min_switch_frames`, so a slow source still decides); the candidate is the most frequent action
  (ties: higher score sum);
- the segment switches to the candidate only when it holds at least `switch_ratio` of the window
  and at least `min_switch_frames` observations. A flicker of one or two frames never wins, and
  an action must dominate about `switch_ratio * window_s` seconds to open a segment, so a real
  fall (the person stays down) is never merged away;
- the new segment is backdated to its most likely start, the change point that maximises
  (observations of the candidate) - (observations of anything else) from there to now (a CUSUM
  estimate; ties go to the latest start, so a stray early frame is not taken as the onset);
- a track's first segment is provisional until its action first wins a vote: if another action
  wins first, the provisional segment is relabelled, so a flicker at the start of a track never
  becomes a segment of its own.

Missed frames (the track is alive but not detected) add no observation; the open segment simply
spans them. Times are presentation times (`pts_s`), never a clock.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from service.frames import Person

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Observation:
    """One detection of a track in one frame."""

    frame: int
    pts_s: float
    at: float  # wall clock (captured_at) of the frame
    action: str
    score: float
    box: Box


@dataclass(slots=True)
class Segment:
    """A run of one smoothed action of one track, frames inclusive."""

    action: str
    start: Observation
    end: Observation
    counts: Counter = field(default_factory=Counter)  # raw action -> observed frames
    score_sums: Counter = field(default_factory=Counter)  # raw action -> sum of scores
    closed: bool = False
    confirmed: bool = True  # False only for a track's first segment before its first vote

    def add(self, obs: Observation) -> None:
        self.counts[obs.action] += 1
        self.score_sums[obs.action] += obs.score

    def remove(self, obs: Observation) -> None:
        self.counts[obs.action] -= 1
        self.score_sums[obs.action] -= obs.score

    @property
    def observed(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        """The segment shape of the summary line (docs/timeline.md), plus evidence for the reader."""
        observed = self.observed
        agree = self.counts[self.action]
        return {"action": self.action, "start_frame": self.start.frame, "end_frame": self.end.frame,
                "start_s": round(self.start.pts_s, 4), "end_s": round(self.end.pts_s, 4),
                "duration_s": round(self.end.pts_s - self.start.pts_s, 4),
                "frames_observed": observed,
                "agreement": round(agree / observed, 4) if observed else 0.0,
                "mean_score": round(self.score_sums[self.action] / agree, 4) if agree else 0.0,
                "start_box": [round(float(v), 1) for v in self.start.box],
                "end_box": [round(float(v), 1) for v in self.end.box],
                "open": not self.closed}


@dataclass(frozen=True, slots=True)
class TrackStatus:
    """What the fall rules need to know about one track at one frame."""

    track_id: int
    action: str | None  # smoothed action now; None while the first segment is provisional
    start_frame: int  # first frame of the current segment
    start_pts_s: float
    start_at: float
    frame: int  # the frame being processed now (the track may be unobserved in it)
    pts_s: float
    at: float
    last_seen: Observation  # the track's latest detection
    observed: bool  # detected in this frame

    @property
    def box(self) -> Box:
        return self.last_seen.box


class TrackTimeline:
    """Segments of one track, built one observation at a time."""

    def __init__(self, track_id: int, *, window_s: float, switch_ratio: float,
                 min_switch_frames: int) -> None:
        self.track_id = track_id
        self.window_s = window_s
        self.switch_ratio = switch_ratio
        self.min_switch_frames = min_switch_frames
        self.segments: list[Segment] = []
        self.closed = False
        self._recent: deque[Observation] = deque()  # observations inside the vote window
        self._before: Observation | None = None  # the latest observation that left the window

    @property
    def current(self) -> Segment | None:
        return self.segments[-1] if self.segments else None

    @property
    def last_seen(self) -> Observation | None:
        return self._recent[-1] if self._recent else self._before

    def observe(self, obs: Observation) -> None:
        """Add one detection (times must not go backwards) and update the segments."""
        if self.closed:
            raise ValueError(f"track {self.track_id} is closed")
        self._recent.append(obs)
        horizon = obs.pts_s - self.window_s + 1e-9  # the epsilon keeps exact boundaries stable
        while len(self._recent) > self.min_switch_frames and self._recent[0].pts_s <= horizon:
            self._before = self._recent.popleft()
        seg = self.current
        if seg is None:
            seg = Segment(action=obs.action, start=obs, end=obs, confirmed=False)
            self.segments.append(seg)
        seg.add(obs)
        seg.end = obs
        self._vote()

    def _vote(self) -> None:
        counts = Counter(o.action for o in self._recent)
        scores = Counter()
        for o in self._recent:
            scores[o.action] += o.score
        candidate = max(counts, key=lambda a: (counts[a], scores[a]))
        if counts[candidate] < self.min_switch_frames or \
                counts[candidate] < self.switch_ratio * len(self._recent):
            return
        seg = self.current
        assert seg is not None
        if candidate == seg.action:
            seg.confirmed = True
        elif not seg.confirmed:
            seg.action, seg.confirmed = candidate, True  # a provisional start is relabelled
        else:
            self._switch(candidate)

    def _switch(self, action: str) -> None:
        """Close the current segment and open `action` at its most likely start in the window."""
        old = self.current
        recent = list(self._recent)
        # The new segment may not start before the old one did (it must keep >= 1 frame).
        first = next((i for i, o in enumerate(recent) if o.frame > old.start.frame), len(recent))
        best, best_i, run = None, 0, 0
        for i in range(len(recent) - 1, first - 1, -1):
            run += 1 if recent[i].action == action else -1
            if recent[i].action == action and (best is None or run > best):
                best, best_i = run, i
        if best is None:
            return  # every vote for `action` predates the current segment: nothing to move
        moved = recent[best_i:]
        for o in moved:
            old.remove(o)
        old.end = recent[best_i - 1] if best_i > 0 else self._before
        old.closed = True
        new = Segment(action=action, start=moved[0], end=moved[-1])
        for o in moved:
            new.add(o)
        self.segments.append(new)

    def close(self) -> None:
        """The track ended: its open segment ends at its last observation."""
        if self.segments:
            self.segments[-1].closed = True
        self.closed = True

    def prune(self, before_s: float) -> None:
        """Forget closed segments that ended before `before_s` (live sources keep a window)."""
        self.segments = [s for s in self.segments if not s.closed or s.end.pts_s >= before_s]

    def status(self, frame: int, pts_s: float, at: float) -> TrackStatus | None:
        seg, seen = self.current, self.last_seen
        if seg is None or seen is None:
            return None
        return TrackStatus(track_id=self.track_id, action=seg.action if seg.confirmed else None,
                           start_frame=seg.start.frame, start_pts_s=seg.start.pts_s,
                           start_at=seg.start.at, frame=frame, pts_s=pts_s, at=at, last_seen=seen,
                           observed=seen.frame == frame)

    def to_json(self, since_s: float | None = None) -> dict:
        segs = [s for s in self.segments if s.confirmed and (since_s is None or s.end.pts_s >= since_s)]
        seen = self.last_seen
        return {"track_id": self.track_id, "open": not self.closed,
                "last_seen_frame": seen.frame if seen else None,
                "last_seen_s": round(seen.pts_s, 4) if seen else None,
                "segments": [s.to_json() for s in segs]}


class Timeline:
    """All track timelines of one source."""

    def __init__(self, *, window_s: float = 0.5, switch_ratio: float = 0.6,
                 min_switch_frames: int = 3, keep_s: float | None = None) -> None:
        if not 0.5 <= switch_ratio <= 1.0:
            raise ValueError("switch_ratio must be in [0.5, 1]: below half two actions could both win")
        self.window_s = window_s
        self.switch_ratio = switch_ratio
        self.min_switch_frames = min_switch_frames
        self.keep_s = keep_s  # None: keep everything (uploaded videos)
        self.tracks: dict[int, TrackTimeline] = {}

    def observe(self, persons: list[Person], frame: int, pts_s: float, at: float) -> list[int]:
        """Add this frame's tracked persons (untracked ones are skipped); returns their track ids."""
        seen: list[int] = []
        for p in persons:
            if p.track_id is None:
                continue
            track = self.tracks.get(p.track_id)
            if track is None or track.closed:
                track = self.tracks[p.track_id] = TrackTimeline(
                    p.track_id, window_s=self.window_s, switch_ratio=self.switch_ratio,
                    min_switch_frames=self.min_switch_frames)
            track.observe(Observation(frame=frame, pts_s=pts_s, at=at, action=p.action,
                                      score=float(p.score), box=tuple(float(v) for v in p.box)))
            seen.append(p.track_id)
        return seen

    def open_ids(self) -> set[int]:
        return {tid for tid, t in self.tracks.items() if not t.closed}

    def status(self, track_id: int, frame: int, pts_s: float, at: float) -> TrackStatus | None:
        track = self.tracks.get(track_id)
        return track.status(frame, pts_s, at) if track is not None else None

    def close(self, track_id: int) -> None:
        if track_id in self.tracks:
            self.tracks[track_id].close()

    def prune(self, now_s: float) -> None:
        """Live sources: drop what ended more than `keep_s` before `now_s`."""
        if self.keep_s is None:
            return
        before = now_s - self.keep_s
        for tid in list(self.tracks):
            track = self.tracks[tid]
            track.prune(before)
            seen = track.last_seen
            if track.closed and (not track.segments or seen is None or seen.pts_s < before):
                del self.tracks[tid]

    def to_json(self, since_s: float | None = None) -> list[dict]:
        """Per track (ordered by id): its confirmed segments that end at or after `since_s`."""
        return [self.tracks[tid].to_json(since_s) for tid in sorted(self.tracks)]
