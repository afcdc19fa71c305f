"""How many frames a second of a camera are analysed: the detection rate, apart from the camera's.

A 25-fps camera costs 25 inferences a second unless something says otherwise; with a per-camera
`detect_fps` (Frigate's default is 5) capacity becomes predictable: N cameras x detect_fps. The frames
in between are still decoded (the clip buffer keeps them) but not analysed. The gate works on the
frames' presentation times, so a camera that sends late bursts is not analysed in bursts.
"""
from __future__ import annotations


class RateGate:
    """`due(pts_s)`: whether this frame should be analysed to keep about `fps` a second."""

    def __init__(self, fps: float | None) -> None:
        if fps is not None and fps <= 0:
            raise ValueError("detect_fps must be > 0 (or empty for every frame)")
        self.fps = fps
        self._next: float | None = None  # the earliest time of the next analysed frame
        self._last: float | None = None  # the latest analysed frame's time

    def due(self, pts_s: float) -> bool:
        if self.fps is None:
            return True
        period = 1.0 / self.fps
        restarted = self._last is not None and pts_s < self._last  # a reconnect restarts the clock
        if self._next is not None and not restarted and pts_s < self._next - 0.1 * period:
            return False  # not yet (a little early still counts: cameras' timestamps jitter)
        if self._next is None or restarted or pts_s >= self._next + period:
            self._next = pts_s + period  # the first frame, a restart, or after a gap
        else:
            self._next += period  # on schedule: the average rate stays `fps`
        self._last = pts_s
        return True
