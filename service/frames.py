"""Value types that flow through the service: a captured frame, a detected person, an event.

They are plain dataclasses so the pure parts (tracking, timeline, fall rules) can be tested
without threads, HTTP or a model. JSON shapes are the results contract of docs/service.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# The shipped models' classes (index = class id). A model's own `names` metadata wins: the runtime
# names each Person; this order is only the default for code that has no model (tests, replays).
ACTIONS: tuple[str, ...] = ("fall", "sit", "stand", "lie")
SourceKind = Literal["live", "upload"]


@dataclass(slots=True)
class Frame:
    """One decoded frame of a source, as the reader hands it to the inference worker."""

    source: str
    index: int  # frame index in the source, from 0
    pts_s: float  # presentation time in seconds from the start of the source
    captured_at: float  # wall-clock time.time() when the reader got it
    image: np.ndarray  # HxWx3 uint8, BGR (OpenCV order)


@dataclass(slots=True)
class Person:
    """One detected person in original-frame pixels; track_id is set by the tracker."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    class_id: int
    track_id: int | None = None
    action: str = ""  # the model's name of class_id (default: ACTIONS[class_id])
    # Every class's score for this box (index = class id): the graph's NMS is per class, so one
    # person can come as `stand` 0.4 and `fall` 0.2; the runtime merges such rows into one person.
    class_scores: tuple[float, ...] | None = None
    # At or above the reporting threshold (the model's operating point). Weaker boxes still reach
    # the tracker (ByteTrack's second stage keeps a track alive through them) but not clients.
    reported: bool = True
    # Set by the pipeline on tracked persons: the track's smoothed posture, and whether the track is
    # down in the sense of the fall rules (a fall segment, not in a bed zone). `fall` in results
    # then means what an alert means, not one box's class.
    posture: str | None = None
    down: bool | None = None

    def __post_init__(self) -> None:
        if not self.action:
            self.action = ACTIONS[self.class_id]

    @property
    def fall(self) -> bool:
        """The track is down (tracked persons), else this box's class is `fall` (a single frame)."""
        return self.down if self.down is not None else self.action == "fall"

    def to_json(self) -> dict:
        out = {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
               "action": self.action, "fall": self.fall, "track_id": self.track_id}
        if self.posture is not None:
            out["posture"] = self.posture
        if self.class_scores is not None:
            out["class_scores"] = list(self.class_scores)
        return out


@dataclass(slots=True)
class FrameResult:
    """What one frame became after inference, tracking and the fall rules."""

    source: str
    frame: int
    pts_s: float
    captured_at: float
    latency_ms: float  # captured_at -> result ready
    dropped: int  # frames of this source dropped so far
    persons: list[Person] = field(default_factory=list)
    width: int = 0
    height: int = 0
    # tracked boxes under the reporting threshold: not sent to clients; `analyze --weak` writes
    # them so that an evaluation replay sees what the tracker saw
    weak: list[Person] = field(default_factory=list)

    def to_json(self, weak: bool = False) -> dict:
        out = {"type": "frame", "source": self.source, "frame": self.frame, "pts_s": round(self.pts_s, 4),
               "captured_at": round(self.captured_at, 4), "latency_ms": round(self.latency_ms, 2),
               "dropped": self.dropped, "width": self.width, "height": self.height,
               "persons": [p.to_json() for p in self.persons]}
        if weak:
            out["weak"] = [p.to_json() for p in self.weak]
        return out
