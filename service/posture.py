"""A tracked person's posture over time, from the class scores of its boxes.

One frame's argmax is a poor witness: a fallen man on a patterned floor scores `fall` 0.21 for two
seconds, under the reporting threshold, while a woman seen from behind scores `fall` 0.4 in one
frame and `stand` in the next. The tracker keeps the man's track alive through his weak boxes
(ByteTrack's second stage); here each track's class scores are smoothed over time (an exponential
moving average with time constant `tau_s`, updated only on frames where the track is detected) and
the posture is the class with the highest smoothed score. `fall` must beat every other class by the
factor `fall_margin` (1: a plain argmax): a posture that decides alerts needs more than a tie.

Pure: no clock, no threads; times are presentation times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from service.frames import Person


@dataclass(slots=True)
class _TrackPosture:
    scores: list[float]
    pts_s: float


class PostureSmoother:
    """Per-track smoothed class scores of one source."""

    def __init__(self, names: tuple[str, ...] | list[str], tau_s: float = 0.3, fall_margin: float = 1.0) -> None:
        if tau_s < 0:
            raise ValueError("tau_s must be >= 0")
        if fall_margin < 1.0:
            raise ValueError("fall_margin must be >= 1 (below 1 a fall would win while another class scores higher)")
        self.names = tuple(names)
        self.tau_s, self.fall_margin = tau_s, fall_margin
        self._fall = self.names.index("fall") if "fall" in self.names else -1
        self._tracks: dict[int, _TrackPosture] = {}

    def observe(self, track_id: int, person: Person, pts_s: float) -> str:
        """Add one detection of a track; returns the track's posture now (a class name)."""
        x = self._vector(person)
        state = self._tracks.get(track_id)
        if state is None or self.tau_s == 0:
            state = self._tracks[track_id] = _TrackPosture(x, pts_s)
        else:
            dt = max(pts_s - state.pts_s, 0.0)
            alpha = 1.0 - math.exp(-dt / self.tau_s) if dt > 0 else 0.0
            state.scores = [s + alpha * (v - s) for s, v in zip(state.scores, x)]
            state.pts_s = pts_s
        return self.posture(track_id) or person.action

    def posture(self, track_id: int) -> str | None:
        state = self._tracks.get(track_id)
        if state is None:
            return None
        s = state.scores
        best = max(range(len(s)), key=lambda c: s[c])
        if best == self._fall and len(s) > 1:
            runner = max(v for c, v in enumerate(s) if c != self._fall)
            if s[best] < self.fall_margin * runner:
                best = max((c for c in range(len(s)) if c != self._fall), key=lambda c: s[c])
        return self.names[best]

    def scores(self, track_id: int) -> dict[str, float] | None:
        state = self._tracks.get(track_id)
        return None if state is None else {n: round(v, 4) for n, v in zip(self.names, state.scores)}

    def end(self, track_id: int) -> None:
        self._tracks.pop(track_id, None)

    def _vector(self, person: Person) -> list[float]:
        if person.class_scores is not None and len(person.class_scores) == len(self.names):
            return [float(v) for v in person.class_scores]
        x = [0.0] * len(self.names)
        if person.action in self.names:  # a replay or a stand-in runtime: only the best class is known
            x[self.names.index(person.action)] = float(person.score)
        return x
