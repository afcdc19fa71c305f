"""A video clip of every fall: a bounded buffer of each camera's recent frames, and a background
writer that turns `PRE_S` seconds before a fall's onset to `POST_S` seconds after its alert into an
MP4 with the person's box drawn.

Per source (`SourceClips`, one per live camera or clip-enabled upload):
- `add_frame` (reader thread): at most `fps` frames a second are kept, scaled down to `max_width`
  and JPEG-compressed (`jpeg_quality`) into a buffer of the last `pre_s + BUFFER_LEAD_S` seconds
  (the lead covers the time from a fall's onset to its alert: `confirm_s` plus latency). Memory
  caps: `buffer_mb_per_camera` per camera and `buffer_mb_total` for all cameras together; a camera
  over a cap drops its oldest frames first, so it keeps fewer seconds, and says so (`capped` in its
  status, `falldet_clip_buffer_capped{source}` = 1, `falldet_clip_buffer_seconds{source}`).
- `add_result` (after the per-frame step): remembers the tracked boxes of recent results (to draw
  the person's box on every clip frame, also on frames the model did not process: the nearest
  result within `BOX_HOLD_S` gives it) and starts a clip job on each `fall_alert`: the buffered frames
  from `onset - pre_s` go to the job at once, later frames as they arrive, until `alert + post_s`.
- A `fall_alert` whose span overlaps a clip of the same camera still being recorded joins that clip
  (its end moves to the new `alert + post_s`, up to `max_clip_s` in all): a camera that alerts
  every few seconds (an alert storm) makes one longer clip, not one encoder job per alert, so the
  single writer keeps up. Every alert of a merged clip is linked to the same file.
- Where a clip cannot be made (over `max_active`, no frames, an encoder error) the alert is told
  why (`on_done` with `job.written` False and `job.error`), never dropped silently.
- A job hands frames to the writer only once a result at or after their time is known (their box
  is then known); it ends at `alert + post_s` of stream time, or, for a live camera, when the wall
  clock passes that point plus `DEADLINE_GRACE_S` (a camera that disconnected mid-way: the clip is
  closed with what it got), or when the source is closed (removed camera, end of an upload).

The writing itself (one background thread, JPEG to H.264 MP4, durable files, why a clip failed)
is service/clip_writer.py (`ClipWriter`).
"""
from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field

from service.clip_writer import CLIP_FRAMES_DROPPED, CLIPS_FAILED, ClipWriter

log = logging.getLogger(__name__)

BUFFER_LEAD_S = 5.0  # buffered beyond pre_s: a fall's onset precedes its alert by confirm_s + latency
BOX_HOLD_S = 1.0  # a frame without its own result takes the nearest result's box within this time
DEADLINE_GRACE_S = 5.0  # live: a job still open this long after alert + post_s (wall clock) is closed

BUFFER_BYTES = Gauge("falldet_clip_buffer_bytes", "Bytes of compressed frames buffered for clips", ["source"])
BUFFER_SECONDS = Gauge("falldet_clip_buffer_seconds", "Seconds of frames buffered for clips (below "
                       "pre_s + lead when capped)", ["source"])
BUFFER_CAPPED = Gauge("falldet_clip_buffer_capped", "1 while a memory cap keeps the camera's clip buffer "
                      "shorter than wanted", ["source"])


class ClipSettings(BaseModel):
    """Fall clips (env `FALLDET_CLIPS__<FIELD>`); see docs/alerts.md."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="buffer live cameras' frames and write a clip of every fall_alert")
    pre_s: float = Field(10.0, ge=0, le=120, description="seconds of video before the fall's onset")
    post_s: float = Field(20.0, ge=0, le=300, description="seconds of video after the fall_alert")
    fps: float = Field(15.0, gt=0, le=60, description="most frames per second kept in the buffer and the clip")
    max_width: int = Field(1280, ge=160, le=3840, description="frames wider than this are scaled down "
                                                             "before buffering (aspect kept)")
    jpeg_quality: int = Field(75, ge=10, le=100, description="JPEG quality of buffered frames")
    buffer_mb_per_camera: float = Field(64.0, gt=0, description="memory cap of one camera's buffer, MiB")
    buffer_mb_total: float = Field(512.0, gt=0, description="memory cap of all cameras' buffers together, MiB")
    crf: int = Field(28, ge=0, le=51, description="H.264 quality (libx264 CRF; lower is better and larger)")
    max_active: int = Field(8, ge=1, description="most clips recorded or written at once (a clip of "
                                                 "several overlapping alerts of one camera counts once); a "
                                                 "fall beyond it gets no clip and its alert says why "
                                                 "(clip_status failed, falldet_clips_failed_total)")
    max_clip_s: float = Field(120.0, gt=0, le=1800, description="longest clip when overlapping alerts of one "
                                                                "camera are merged into one; a later alert "
                                                                "starts a new clip")


@dataclass(slots=True)
class BufferedFrame:
    index: int
    pts_s: float
    at: float  # wall clock of capture
    jpeg: bytes
    scale: float  # buffered width / original width (boxes are in original pixels)


class BufferBudget:
    """Bytes all cameras' buffers may hold together (thread-safe)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.max_bytes:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


@dataclass
class ClipJob:
    """One clip being recorded: which alert, which person, which time span."""

    alert_id: str
    source: str
    track_id: int
    onset_s: float
    alert_s: float
    start_s: float  # onset - pre_s
    end_s: float  # alert + post_s
    deadline: float  # wall clock after which a live job is closed with what it has (inf: uploads)
    path: Path  # final file
    on_done: Callable[["ClipJob"], None] | None = None
    merged: list[str] = field(default_factory=list)  # later alerts of the camera that share this clip
    pending: deque = field(default_factory=deque)  # frames waiting for their box
    frames: int = 0  # frames handed to the writer
    ended: bool = False
    # filled by the writer
    written: bool = False
    error: str | None = None
    bytes: int = 0
    duration_s: float = 0.0
    first_s: float | None = None  # stream time of the first frame written
    last_s: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self) -> None:
        """Tell the owner (the alert's clip status) how it ended, then wake whoever waits on `done`,
        even when the owner's callback fails."""
        try:
            if self.on_done is not None:
                self.on_done(self)
        except Exception:
            log.exception("clip of alert %s: on_done failed", self.alert_id)
        finally:
            self.done.set()

    def to_json(self) -> dict:
        return {"alert_id": self.alert_id, "source": self.source, "track_id": self.track_id,
                "merged": list(self.merged), "written": self.written, "error": self.error, "frames": self.frames, "bytes": self.bytes,
                "duration_s": round(self.duration_s, 3),
                "first_s": None if self.first_s is None else round(self.first_s, 4),
                "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4)}


class SourceClips:
    """The clip buffer and clip jobs of one source (a live camera or one upload)."""

    def __init__(self, source: str, settings: ClipSettings, writer: "ClipWriter",
                 path_for: Callable[[Any], Path], live: bool, budget: BufferBudget | None = None,
                 on_done: Callable[[ClipJob], None] | None = None) -> None:
        """`path_for(event)`: where the clip of that fall_alert goes; `on_done(job)` runs on the
        writer thread once the clip is durable (or failed: `job.written` False, `job.error` says why;
        a fall refused a clip gets a job that never started, with its reason)."""
        self.source = source
        self.settings = settings
        self.writer = writer
        self.path_for = path_for
        self.live = live
        self.budget = budget
        self.on_done = on_done
        self.keep_s = settings.pre_s + BUFFER_LEAD_S
        self.max_bytes = int(settings.buffer_mb_per_camera * 2**20)
        self._buffer: deque[BufferedFrame] = deque()
        self._bytes = 0
        self._capped = False
        self._next_s: float | None = None  # next stream time a frame is due (fps cap)
        self._results: deque[tuple[float, dict[int, tuple]]] = deque()  # (pts_s, {track: box})
        self._jobs: list[ClipJob] = []
        self._lock = threading.Lock()
        self._closed = False
        self.jobs: list[ClipJob] = []  # every job started (whole videos only: live cameras keep none)

    # -- frames ------------------------------------------------------------------------------------
    def add_frame(self, frame: Any) -> None:
        """Buffer a decoded frame if it is due (at most `fps` a second); cheap when it is not."""
        if self._closed or frame.image is None:
            return
        pts = frame.pts_s
        step = 1.0 / self.settings.fps
        if self._next_s is not None and pts + 1e-6 < self._next_s:
            return
        self._next_s = pts + step if self._next_s is None or self._next_s + step < pts else self._next_s + step
        image = frame.image
        h, w = image.shape[:2]
        scale = 1.0
        if w > self.settings.max_width:
            scale = self.settings.max_width / w
            image = cv2.resize(image, (self.settings.max_width, max(2, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            CLIP_FRAMES_DROPPED.labels("encode").inc()
            return
        entry = BufferedFrame(frame.index, pts, frame.captured_at, buf.tobytes(), scale)
        with self._lock:
            if self._closed:
                return
            self._push(entry)
            for job in list(self._jobs):
                if entry.pts_s > job.end_s:
                    self._end(job)
                elif entry.pts_s >= job.start_s:
                    job.pending.append(entry)
        self._gauges()

    def _push(self, entry: BufferedFrame) -> None:
        """Append under the caps: time first, then memory (oldest frames go). Call with the lock."""
        n = len(entry.jpeg)
        trimmed = False
        while self._buffer and entry.pts_s - self._buffer[0].pts_s > self.keep_s:
            self._pop()
            trimmed = True
        evicted = False
        while not (self._bytes + n <= self.max_bytes and (self.budget is None or self.budget.take(n))):
            if not self._buffer:  # one frame over the whole cap: keep nothing
                self._capped = True
                CLIP_FRAMES_DROPPED.labels("memory_cap").inc()
                return
            self._pop()
            evicted = True
        self._buffer.append(entry)
        self._bytes += n
        if evicted:
            self._capped = True  # shorter than keep_s because of a memory cap
        elif trimmed:
            self._capped = False  # the buffer reached its full length

    def _pop(self) -> None:
        old = self._buffer.popleft()
        self._bytes -= len(old.jpeg)
        if self.budget is not None:
            self.budget.give(len(old.jpeg))

    def buffered_seconds(self) -> float:
        with self._lock:
            return self._buffer[-1].pts_s - self._buffer[0].pts_s if len(self._buffer) > 1 else 0.0

    def status(self) -> dict:
        """For the camera's status: what the buffer holds and whether a cap holds it back."""
        with self._lock:
            seconds = self._buffer[-1].pts_s - self._buffer[0].pts_s if len(self._buffer) > 1 else 0.0
            return {"seconds": round(seconds, 2), "frames": len(self._buffer), "bytes": self._bytes,
                    "capped": self._capped, "recording": len(self._jobs)}

    def _gauges(self) -> None:
        if not self.live or self._closed:
            return
        st = self.status()
        BUFFER_BYTES.labels(self.source).set(st["bytes"])
        BUFFER_SECONDS.labels(self.source).set(st["seconds"])
        BUFFER_CAPPED.labels(self.source).set(1.0 if st["capped"] else 0.0)

    # -- results -----------------------------------------------------------------------------------
    def add_result(self, pts_s: float, persons: list, events: list) -> None:
        """After the per-frame step: remember the tracked boxes; start a clip per `fall_alert`; hand
        frames whose box is now known to the writer."""
        boxes = {p.track_id: tuple(p.box) for p in persons if p.track_id is not None}
        with self._lock:
            if self._closed:
                return
            self._results.append((pts_s, boxes))
            while self._results and pts_s - self._results[0][0] > self.keep_s + self.settings.post_s:
                self._results.popleft()
            for event in events:
                if getattr(event, "type", None) == "fall_alert":
                    self._start(event)
            for job in list(self._jobs):
                self._release(job, upto=pts_s)

    def _start(self, event: Any) -> None:
        s = self.settings
        if self._merge(event):
            return
        if self.writer.active >= s.max_active:
            CLIPS_FAILED.labels("too_many").inc()
            reason = f"{s.max_active} clips already being made at once (clips.max_active)"
            log.warning("%s: no clip for alert %s: %s", self.source, event.id, reason)
            self._refused(event, reason)
            return
        job = ClipJob(alert_id=event.id, source=self.source, track_id=event.track_id,
                      onset_s=event.started_pts_s, alert_s=event.pts_s,
                      start_s=event.started_pts_s - s.pre_s, end_s=event.pts_s + s.post_s,
                      deadline=(time.time() + s.post_s + DEADLINE_GRACE_S) if self.live else float("inf"),
                      path=self.path_for(event), on_done=self.on_done)
        job.pending.extend(e for e in self._buffer if e.pts_s >= job.start_s)
        self._jobs.append(job)
        if not self.live:
            self.jobs.append(job)
        self.writer.open(job)
        if self._buffer and self._buffer[-1].pts_s > job.end_s:
            self._end(job)

    def _merge(self, event: Any) -> bool:
        """Join an overlapping clip of this camera still being recorded (call with the lock)."""
        s = self.settings
        start, end = event.started_pts_s - s.pre_s, event.pts_s + s.post_s
        for job in self._jobs:
            if job.ended or start > job.end_s or end - job.start_s > s.max_clip_s:
                continue
            if end > job.end_s:
                if self.live:
                    job.deadline += end - job.end_s
                job.end_s = end
            job.merged.append(event.id)  # an upload's clip line lists them (`merged`)
            log.info("%s: alert %s joins the clip of alert %s (now to %.1f s)", self.source, event.id,
                     job.alert_id, job.end_s)
            return True
        return False

    def _refused(self, event: Any, reason: str) -> None:
        """A fall that gets no clip: its alert is told why through `on_done` (a job never started)."""
        job = ClipJob(alert_id=event.id, source=self.source, track_id=event.track_id,
                      onset_s=event.started_pts_s, alert_s=event.pts_s, start_s=event.started_pts_s,
                      end_s=event.pts_s, deadline=0.0, path=Path(os.devnull), on_done=self.on_done,
                      ended=True, error=reason)
        if not self.live:
            self.jobs.append(job)
        job.finish()

    def _box(self, job: ClipJob, pts_s: float) -> tuple | None:
        """The job's person's box at `pts_s`: from the nearest result within BOX_HOLD_S."""
        times = [t for t, _ in self._results]
        i = bisect.bisect_left(times, pts_s)
        best, best_dt = None, BOX_HOLD_S + 1e-9
        for k in (i - 2, i - 1, i, i + 1):
            if 0 <= k < len(times) and job.track_id in self._results[k][1]:
                dt = abs(times[k] - pts_s)
                if dt <= best_dt:
                    best, best_dt = self._results[k][1][job.track_id], dt
        if best is None:  # the track may be missing around here: look a little wider
            for t, boxes in self._results:
                if job.track_id in boxes and abs(t - pts_s) <= best_dt:
                    best, best_dt = boxes[job.track_id], abs(t - pts_s)
        return best

    def _boxes_at(self, pts_s: float) -> dict[int, tuple]:
        """Every tracked box of the nearest result within BOX_HOLD_S (site frames label everyone)."""
        best, best_dt = {}, BOX_HOLD_S + 1e-9
        for t, boxes in self._results:
            if abs(t - pts_s) <= best_dt:
                best, best_dt = boxes, abs(t - pts_s)
        return dict(best)

    def _release(self, job: ClipJob, upto: float) -> None:
        out = []
        while job.pending and job.pending[0].pts_s <= upto:
            entry = job.pending.popleft()
            out.append((entry, self._box(job, entry.pts_s), self._boxes_at(entry.pts_s)))
        if out:
            job.frames += len(out)
            self.writer.frames(job, out)

    def _end(self, job: ClipJob) -> None:
        """No more frames for this job: flush what waits (boxes as known now) and let it be written."""
        if job.ended:
            return
        job.ended = True
        self._release(job, upto=float("inf"))
        self._jobs.remove(job)
        self.writer.finish(job)

    def expire(self, now: float) -> None:
        """Live: close jobs past their wall-clock deadline (a camera that stopped sending)."""
        with self._lock:
            for job in list(self._jobs):
                if now >= job.deadline:
                    log.info("%s: clip of alert %s closed early: no frame reached alert + post_s",
                             self.source, job.alert_id)
                    self._end(job)

    def close(self) -> list[ClipJob]:
        """The source ended: every open job is closed with what it has; the buffer is freed.
        Returns the jobs closed now (an upload waits for them with `ClipJob.done`)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
            for job in jobs:
                self._end(job)
            while self._buffer:
                self._pop()
            self._results.clear()
        if self.live:
            for metric in (BUFFER_BYTES, BUFFER_SECONDS, BUFFER_CAPPED):
                try:
                    metric.remove(self.source)
                except KeyError:
                    pass
        return jobs


class ClipService:
    """The app's clips: one writer, one shared memory budget, a SourceClips per live camera; clips
    of live cameras go to `folder/YYYYMMDD/<alert id>.mp4` and are linked in the alert store."""

    def __init__(self, settings: ClipSettings, folder: Path, store: Any = None,
                 upload_max_age_s: float | None = 30 * 86400) -> None:
        """`upload_max_age_s`: uploads' clips (`folder/uploads/`, no alert row) are deleted this
        long after they were written (the store's retention covers the cameras' clips)."""
        self.settings = settings
        self.folder = Path(folder)
        self.uploads = self.folder / "uploads"
        self.store = store
        self.upload_max_age_s = upload_max_age_s
        self._next_sweep = 0.0
        self.writer = ClipWriter(settings)
        self.budget = BufferBudget(int(settings.buffer_mb_total * 2**20))
        self._unlinked: dict[str, tuple[str | None, int, str | None, float]] = {}  # id -> (rel, bytes, error, since)
        self._lock = threading.Lock()
        self.writer.add_tick(self._retry_links)
        self.writer.add_tick(self._sweep_uploads)
        if store is not None:  # the store says "clips disabled" rather than "pending" for new falls
            store.clips_enabled = settings.enabled
        self._sweep_uploads(time.time(), temp_age_s=0.0)  # temp files of a previous run: dead writes

    @property
    def codec(self) -> str:
        return self.writer.codec

    def camera(self, source: str) -> SourceClips | None:
        """A live camera's buffer and jobs; None when clips are disabled."""
        if not self.settings.enabled:
            return None
        clips = SourceClips(source, self.settings, self.writer, self._live_path, live=True,
                            budget=self.budget, on_done=self._link)
        self.writer.add_tick(clips.expire)
        return clips

    def release(self, clips: SourceClips | None) -> None:
        """The camera is gone: its open clips are closed with what they have, its buffer freed."""
        if clips is None:
            return
        clips.close()
        self.writer.remove_tick(clips.expire)

    def upload(self, source: str, folder: Path, on_done: Callable[[ClipJob], None] | None = None) -> SourceClips:
        """Clips of one analysed video (every frame comes; no wall-clock deadline, no shared budget)."""
        return SourceClips(source, self.settings, self.writer, lambda e: Path(folder) / f"{source}-{e.id}.mp4",
                           live=False, on_done=on_done)

    def _live_path(self, event: Any) -> Path:
        day = time.strftime("%Y%m%d", time.gmtime(event.at))
        return self.folder / day / f"{event.id}.mp4"

    def _link(self, job: ClipJob) -> None:
        """Tell the store how the clip of every alert of `job` ended: the file, or why there is none."""
        if self.store is None:
            return
        rel = job.path.relative_to(self.folder).as_posix() if job.written else None
        error = None if job.written else (job.error or "not written")
        for alert_id in (job.alert_id, *job.merged):
            if not self._settle(alert_id, rel, job.bytes, error):
                # the alert is not stored yet (it is published after its clip starts, and the bus
                # retries a failing store): settle it when it is
                with self._lock:
                    self._unlinked[alert_id] = (rel, job.bytes, error, time.time())

    def _settle(self, alert_id: str, rel: str | None, size: int, error: str | None) -> bool:
        try:
            if rel is not None:
                return bool(self.store.attach_clip(alert_id, rel, size))
            return bool(self.store.clip_failed(alert_id, error or "not written"))
        except Exception:
            log.exception("clip of alert %s: the store refused its outcome", alert_id)
            return False

    def _retry_links(self, now: float) -> None:
        with self._lock:
            waiting = list(self._unlinked.items())
        for alert_id, (rel, size, error, since) in waiting:
            if self._settle(alert_id, rel, size, error) or now - since > 3600:
                with self._lock:
                    self._unlinked.pop(alert_id, None)

    def _sweep_uploads(self, now: float, temp_age_s: float = 3600.0) -> None:
        """Uploads' clips past `upload_max_age_s`, and temp files of writes that died (at most
        every 10 minutes)."""
        if now < self._next_sweep or not self.uploads.is_dir():
            return
        self._next_sweep = now + 600.0
        for path in self.uploads.iterdir():
            try:
                age = now - path.stat().st_mtime
                if (path.name.startswith(".") and path.name.endswith(".tmp") and age >= temp_age_s) or (
                        path.suffix in (".mp4", ".tar") and self.upload_max_age_s is not None and age > self.upload_max_age_s):
                    path.unlink()
            except OSError:
                pass

    def start(self) -> None:
        self.writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.writer.stop(timeout)


class ClippingPipeline:
    """A SourcePipeline with clips for a whole video (uploads, `analyze --clips`): every frame is
    buffered before its step and its result after; `finish` closes the clips, waits for them and
    returns them as `{"type": "clip", ...}` lines after the pipeline's final events."""

    def __init__(self, pipeline: Any, clips: SourceClips, url_for: Callable[[ClipJob], dict] | None = None,
                 wait_s: float = 600.0) -> None:
        self.pipeline = pipeline
        self.clips = clips
        self.url_for = url_for
        self.wait_s = wait_s
        self._jobs: list[ClipJob] = []

    def step(self, frame: Any, persons: list, latency_ms: float, dropped: int) -> tuple:
        self.clips.add_frame(frame)
        result, events = self.pipeline.step(frame, persons, latency_ms, dropped)
        self.clips.add_result(frame.pts_s, result.persons, events)
        return result, events

    def finish(self) -> list:
        events = list(self.pipeline.finish())
        self.clips.close()
        jobs = list(self.clips.jobs)
        deadline = time.monotonic() + self.wait_s
        for job in jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        self._jobs = jobs
        return events + [_ClipLine(job, self.url_for) for job in jobs]

    def summary(self) -> dict:
        summary = dict(self.pipeline.summary())
        summary["clips"] = [_ClipLine(job, self.url_for).to_json() for job in self._jobs]
        return summary

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


class _ClipLine:
    """A `{"type": "clip"}` result line for a whole-video analysis."""

    type = "clip"

    def __init__(self, job: ClipJob, url_for: Callable[[ClipJob], dict] | None) -> None:
        self.job = job
        self.url_for = url_for

    def to_json(self) -> dict:
        out = {"type": "clip", **self.job.to_json()}
        if self.job.written:
            out.update(self.url_for(self.job) if self.url_for else {"path": str(self.job.path)})
        return out


def upload_clips(pipeline: Any, service: ClipService, source: str) -> ClippingPipeline:
    """`POST /v1/videos?clips=true`: clips into `service.uploads`, named `<source>-<alert id>.mp4`
    and served at `/v1/videos/clips/<name>` (`clip_url` in the `clip` lines)."""
    clips = service.upload(source, service.uploads)
    return ClippingPipeline(pipeline, clips, url_for=lambda job: {"clip_url": f"/v1/videos/clips/{job.path.name}"})


def file_clips(pipeline: Any, settings: ClipSettings, folder: Path, source: str) -> tuple[ClippingPipeline, ClipWriter]:
    """`python -m service analyze VIDEO --clips DIR`: clips into DIR as `<source>-<alert id>.mp4`
    (`path` in the `clip` lines); the caller stops the returned writer at the end."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    writer = ClipWriter(settings)
    clips = SourceClips(source, settings, writer, lambda e: folder / f"{source}-{e.id}.mp4", live=False)
    return ClippingPipeline(pipeline, clips, url_for=lambda job: {"path": str(job.path)}), writer
