"""Zones of a camera's view: where beds are (lying there is not a fall) and what to ignore (a TV, a
poster, a mirror). Pure: geometry and per-track rules with times as arguments, no clock, no I/O.

A zone is a named polygon in normalised image coordinates (x right, y down, both in [0, 1]), so a
camera that changes resolution keeps its zones. Two kinds:

- `ignore`: a detection whose box lies at least `IGNORE_OVERLAP` (0.5) inside the zone (area of
  box ∩ polygon over box area) is dropped before tracking: it never becomes a track, an action
  segment or an alert. A person walking past a TV is not ignored (most of their box is outside).
- `bed` (also sofas, couches): a track is *in bed* while the lower half of its latest detected box
  lies at least `BED_OVERLAP` (0.5) inside a bed polygon. The lower half, not the whole box: it is
  where the body rests; a person standing in front of the bed has their feet on the floor, below
  the bed in the picture, and a person lying on the floor beside the bed has their whole box
  outside it. A track must hold the new state for `hold_s` (0.5 s, like the action smoothing) to
  switch, so a flicker of the box does not toggle it; the switch is backdated to the first frame of
  the run. While a track is in bed the fall rules see the action `in_bed` (not `fall`): no
  `fall_alert`; a fall under way is cleared (`recovered`: they are in bed). Getting out of bed
  starts afresh: a `fall` segment that began in bed counts from the frame the person left the bed,
  so lying in bed for an hour and then rolling onto the floor alerts `confirm_s` after the roll.

`BED_OVERLAP` and `IGNORE_OVERLAP` are exact areas (the polygon clipped to the box), not samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Sequence

from service.events import IN_BED  # the action the fall rules see while a track is in bed
from service.frames import FrameResult

ZoneKind = Literal["bed", "ignore"]
KINDS: tuple[str, ...] = ("bed", "ignore")
MAX_ZONES = 32  # per camera
MAX_POINTS = 64
MIN_POINTS = 3
MAX_NAME = 64
MIN_AREA = 1e-4  # of the whole picture (a 1 % x 1 % square): smaller is a stray click, refused
BED_OVERLAP = 0.5  # share of a box's lower half inside a bed zone for "in bed"
IGNORE_OVERLAP = 0.5  # share of a box inside an ignore zone for the detection to be dropped

Point = tuple[float, float]
Box = tuple[float, float, float, float]


class ZoneError(ValueError):
    """A zone list that cannot be used; the message says which zone and what is wrong."""


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    kind: ZoneKind
    points: tuple[Point, ...]  # normalised, open ring (the last point joins the first)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "points": [[x, y] for x, y in self.points]}


# ------------------------------------------------------------------ validation

def _segments_cross(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether segments p1p2 and q1q2 properly intersect or touch (collinear overlap included)."""
    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on(a: Point, b: Point, c: Point) -> bool:
        return min(a[0], b[0]) - 1e-12 <= c[0] <= max(a[0], b[0]) + 1e-12 and \
            min(a[1], b[1]) - 1e-12 <= c[1] <= max(a[1], b[1]) + 1e-12

    d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
    d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    eps = 1e-15
    return (abs(d1) < eps and on(q1, q2, p1)) or (abs(d2) < eps and on(q1, q2, p2)) or \
        (abs(d3) < eps and on(p1, p2, q1)) or (abs(d4) < eps and on(p1, p2, q2))


def polygon_area(points: Sequence[Point]) -> float:
    """Unsigned area (shoelace)."""
    n = len(points)
    s = 0.0
    for i in range(n):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        s += x1 * y2 - x2 * y1
    return abs(s) / 2.0


def _self_intersects(points: Sequence[Point]) -> bool:
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a vertex
            if _segments_cross(*edges[i], *edges[j]):
                return True
    return False


def parse_zones(value: object) -> list[Zone]:
    """Check a JSON zone list (as sent to `PUT /v1/streams/{id}/zones` or kept in the streams file)
    and return it as Zones; ZoneError with the zone and the reason otherwise.

    Rules: at most MAX_ZONES zones; a name of 1-MAX_NAME characters, unique per camera; kind `bed`
    or `ignore`; MIN_POINTS-MAX_POINTS points [x, y] with 0 <= x, y <= 1, as a closed polygon: the
    last point joins the first (a repeated first point at the end is accepted and dropped), no
    repeated neighbours, edges that do not cross, and an area of at least MIN_AREA of the picture.
    """
    if not isinstance(value, list):
        raise ZoneError("zones must be a list")
    if len(value) > MAX_ZONES:
        raise ZoneError(f"at most {MAX_ZONES} zones per camera, got {len(value)}")
    zones: list[Zone] = []
    names: set[str] = set()
    for i, raw in enumerate(value):
        where = f"zones[{i}]"
        if not isinstance(raw, dict):
            raise ZoneError(f"{where}: must be an object with name, kind and points")
        extra = set(raw) - {"name", "kind", "points"}
        if extra:
            raise ZoneError(f"{where}: unknown field(s) {sorted(extra)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise ZoneError(f"{where}: name must be 1-{MAX_NAME} characters")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise ZoneError(f"{where}: name must not contain control characters")
        where = f"zones[{i}] ({name!r})"
        if name in names:
            raise ZoneError(f"{where}: duplicate name")
        names.add(name)
        kind = raw.get("kind")
        if kind not in KINDS:
            raise ZoneError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
        points = raw.get("points")
        if not isinstance(points, list):
            raise ZoneError(f"{where}: points must be a list of [x, y]")
        ring: list[Point] = []
        for j, p in enumerate(points):
            if not (isinstance(p, (list, tuple)) and len(p) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)):
                raise ZoneError(f"{where}: points[{j}] must be [x, y] with two numbers")
            x, y = float(p[0]), float(p[1])
            if not (math.isfinite(x) and math.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ZoneError(f"{where}: points[{j}] = [{p[0]}, {p[1]}] is outside [0, 1] "
                                "(coordinates are fractions of the picture's width and height)")
            ring.append((x, y))
        if len(ring) > 1 and ring[0] == ring[-1]:
            ring.pop()  # an explicitly closed ring
        if not MIN_POINTS <= len(ring) <= MAX_POINTS:
            raise ZoneError(f"{where}: a polygon needs {MIN_POINTS}-{MAX_POINTS} points, got {len(ring)}")
        for j in range(len(ring)):
            if ring[j] == ring[(j + 1) % len(ring)]:
                raise ZoneError(f"{where}: points[{j}] repeats its neighbour")
        if _self_intersects(ring):
            raise ZoneError(f"{where}: the polygon's edges cross (draw it as one closed outline)")
        if polygon_area(ring) < MIN_AREA:
            raise ZoneError(f"{where}: the polygon is too small (area below {MIN_AREA:g} of the picture)")
        zones.append(Zone(name=name, kind=kind, points=tuple(ring)))
    return zones


def zones_json(zones: Iterable[Zone]) -> list[dict]:
    return [z.to_json() for z in zones]


# ------------------------------------------------------------------ geometry

def _clip_to_box(points: Sequence[Point], box: Box) -> list[Point]:
    """Sutherland-Hodgman: the polygon clipped to an axis-aligned box (convex clipper, so any
    simple polygon, concave included, gives the right intersection area)."""
    x1, y1, x2, y2 = box
    out = list(points)
    for axis, bound, keep_ge in ((0, x1, True), (0, x2, False), (1, y1, True), (1, y2, False)):
        if not out:
            break
        src, out = out, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            cur_in = cur[axis] >= bound if keep_ge else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_ge else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append(cross)
            if cur_in:
                out.append(cur)
    return out


def inside_fraction(box: Box, points: Sequence[Point]) -> float:
    """Share of `box`'s area (same coordinates as `points`) that lies inside the polygon."""
    x1, y1, x2, y2 = box
    area = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    if area <= 0:
        return 0.0
    clipped = _clip_to_box(points, (x1, y1, x2, y2))
    return min(1.0, polygon_area(clipped) / area) if len(clipped) >= 3 else 0.0


def normalise_box(box: Sequence[float], width: int, height: int) -> Box:
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def lower_half(box: Box) -> Box:
    x1, y1, x2, y2 = box
    return (x1, (y1 + y2) / 2.0, x2, y2)


def ignored_by(box: Box, zones: Sequence[Zone]) -> str | None:
    """Name of the ignore zone holding at least IGNORE_OVERLAP of the (normalised) box, else None."""
    for zone in zones:
        if zone.kind == "ignore" and inside_fraction(box, zone.points) >= IGNORE_OVERLAP:
            return zone.name
    return None


def bed_of(box: Box, zones: Sequence[Zone]) -> str | None:
    """Name of the bed zone holding at least BED_OVERLAP of the (normalised) box's lower half."""
    best, best_share = None, BED_OVERLAP
    half = lower_half(box)
    for zone in zones:
        if zone.kind != "bed":
            continue
        share = inside_fraction(half, zone.points)
        if share >= best_share:
            best, best_share = zone.name, share
    return best


# ------------------------------------------------------------------ the bed state of tracks

@dataclass(slots=True)
class BedPeriod:
    """A run of frames in which one track was in bed (frames inclusive)."""

    zone: str
    start_frame: int
    start_s: float
    start_at: float
    end_frame: int
    end_s: float
    closed: bool = False

    def to_json(self) -> dict:
        return {"zone": self.zone, "start_frame": self.start_frame, "end_frame": self.end_frame,
                "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4),
                "duration_s": round(self.end_s - self.start_s, 4), "open": not self.closed}


@dataclass(slots=True)
class _Bed:
    in_bed: str | None = None  # zone name while in bed
    # since when the state has been what it is (frame, pts_s, at) - the backdated switch
    since: tuple[int, float, float] | None = None
    # the first detection of a run of the other state, not yet held long enough: (zone|None, frame, pts, at)
    pending: tuple[str | None, int, float, float] | None = None
    periods: list[BedPeriod] = field(default_factory=list)


class BedTracker:
    """Per-track in-bed state of one source, from each detected box (pure; times as arguments).

    `observe` once per detected track per frame; `gate` turns the timeline's TrackStatus into what
    the fall rules should see.
    """

    def __init__(self, hold_s: float = 0.5) -> None:
        self.hold_s = hold_s
        self._tracks: dict[int, _Bed] = {}
        self._ended: dict[int, list[BedPeriod]] = {}  # periods of tracks that ended

    def observe(self, track_id: int, zone: str | None, frame: int, pts_s: float, at: float) -> None:
        """This frame's detection of `track_id` lies in bed `zone` (None: not in a bed)."""
        st = self._tracks.setdefault(track_id, _Bed())
        if st.since is None:  # first sight: take the state as it is
            st.since = (frame, pts_s, at)
            st.in_bed = zone
            if zone is not None:
                st.periods.append(BedPeriod(zone, frame, pts_s, at, frame, pts_s))
            return
        if st.in_bed is not None and st.periods and not st.periods[-1].closed and zone is not None:
            st.periods[-1].end_frame, st.periods[-1].end_s = frame, pts_s
        same = (zone is None) == (st.in_bed is None)
        if same:
            st.pending = None
            return
        if st.pending is None or (st.pending[0] is None) != (zone is None):
            st.pending = (zone, frame, pts_s, at)
        if pts_s - st.pending[2] + 1e-9 < self.hold_s:
            return
        new_zone, f0, p0, a0 = st.pending
        st.pending = None
        if st.in_bed is not None and st.periods and not st.periods[-1].closed:
            st.periods[-1].closed = True
        st.in_bed = new_zone
        st.since = (f0, p0, a0)
        if new_zone is not None:
            st.periods.append(BedPeriod(new_zone, f0, p0, a0, frame, pts_s))

    def in_bed(self, track_id: int) -> str | None:
        st = self._tracks.get(track_id)
        return st.in_bed if st is not None else None

    def gate(self, status):
        """The TrackStatus the fall rules should see: `in_bed` while in bed; out of bed, a `fall`
        segment that began before the person left the bed starts at the frame they left it."""
        st = self._tracks.get(status.track_id)
        if st is None or st.since is None:
            return status
        frame, pts_s, at = st.since
        if st.in_bed is not None:
            return replace(status, action=IN_BED, start_frame=frame, start_pts_s=pts_s, start_at=at)
        if status.action == "fall" and status.start_pts_s < pts_s:
            return replace(status, start_frame=frame, start_pts_s=pts_s, start_at=at)
        return status

    def end(self, track_id: int) -> None:
        """The track ended: its open bed period closes (kept for the timeline and summary)."""
        st = self._tracks.pop(track_id, None)
        if st is None:
            return
        if st.periods and not st.periods[-1].closed:
            st.periods[-1].closed = True
        if st.periods:
            self._ended.setdefault(track_id, []).extend(st.periods)

    def periods(self, track_id: int) -> list[BedPeriod]:
        st = self._tracks.get(track_id)
        return list(st.periods) if st is not None else list(self._ended.get(track_id, []))

    def prune(self, before_s: float) -> None:
        """Forget closed periods that ended before `before_s` (live sources keep a window)."""
        for st in self._tracks.values():
            st.periods = [p for p in st.periods if not p.closed or p.end_s >= before_s]
        for tid in list(self._ended):
            self._ended[tid] = [p for p in self._ended[tid] if p.end_s >= before_s]
            if not self._ended[tid]:
                del self._ended[tid]


# ------------------------------------------------------------------ in results

def frame_result_with_zones(result, in_bed: dict[int, str], ignored: int):
    """The frame result's JSON gains `in_bed` (the bed's name) on persons in bed and `ignored` (how
    many detections ignore zones dropped) - only when there is something to say, so results of a
    camera without zones are unchanged."""
    if not in_bed and not ignored:
        return result
    return ZonedFrameResult(source=result.source, frame=result.frame, pts_s=result.pts_s,
                            captured_at=result.captured_at, latency_ms=result.latency_ms,
                            dropped=result.dropped, persons=result.persons, width=result.width,
                            height=result.height, weak=result.weak, in_bed=dict(in_bed), ignored=ignored)


@dataclass(slots=True)
class ZonedFrameResult(FrameResult):
    """A FrameResult that says which persons are in bed and how many detections were ignored."""

    in_bed: dict = field(default_factory=dict)  # track id -> bed zone name
    ignored: int = 0

    def to_json(self, weak: bool = False) -> dict:
        out = FrameResult.to_json(self, weak)
        for person in out["persons"]:
            zone = self.in_bed.get(person["track_id"])
            if zone is not None:
                person["in_bed"] = zone
        if self.ignored:
            out["ignored"] = self.ignored
        return out
