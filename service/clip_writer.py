"""Writing a fall clip to disk: the one background thread (`ClipWriter`) that turns a clip job's
frames into an MP4, and the guarantees the rest of the service relies on. service/clips.py buffers
each camera's frames and decides what goes into which clip; this module only encodes and writes, so
it does not know about cameras, buffers or alerts (it never imports service/clips.py at run time).

One writer thread (`ClipWriter`, lowered priority: inference and the readers go first) encodes every
job: JPEG decode, box drawn, H.264 (libx264) into `.<name>.<random>.tmp` beside the final file, then
fsync, rename, fsync of the folder (as snapshots), and only then the job's `on_done` (the alert store
links it: `clip_url`). The alert itself never waits for its clip. A crash or restart mid-write leaves
only a temporary file, which nothing lists and the store removes at its next start.

What it guarantees:
- Durable files: a clip appears at its final path only by the rename, complete and fsynced, and the
  job's `on_done` runs only after the rename and the folder's fsync; the temporary file of a clip
  that fails is removed.
- The reason of a failure: a job that ends without a file has `job.written` False and `job.error`
  "no frames" (nothing reached the encoder) or the encoder's exception as `"<Type>: <message>"`
  (at most 300 characters), counted in `falldet_clips_failed_total{reason="no_frames"|"error"}`
  (service/clips.py adds "too_many" for a fall refused a clip).
- Sources never wait on it: `open`, `frames` and `finish` only queue; when the queue holds more than
  `max_queued_bytes` of frames, the new ones are dropped and counted
  (`falldet_clip_frames_dropped_total{reason="writer_behind"}`; "decode" for a frame whose JPEG
  does not decode).
"""
from __future__ import annotations

import logging
import os
import queue
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import av
import cv2
import numpy as np
from prometheus_client import Counter, Gauge

from service.clip_frames import FrameKeeper

if TYPE_CHECKING:  # type hints only: service/clips.py imports this module, not the other way round
    from service.clips import BufferedFrame, ClipJob, ClipSettings

log = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # clip timestamps in milliseconds (variable frame rate)

CLIPS_WRITTEN = Counter("falldet_clips_written", "Fall clips written (MP4, durable)")
CLIPS_FAILED = Counter("falldet_clips_failed", "Fall clips that could not be written", ["reason"])
CLIPS_ACTIVE = Gauge("falldet_clips_active", "Fall clips being recorded or written now")
CLIP_BYTES = Counter("falldet_clip_bytes_written", "Bytes of fall clips written")
CLIP_FRAMES_DROPPED = Counter("falldet_clip_frames_dropped", "Frames a clip or the buffer could not keep",
                              ["reason"])


def pick_codec() -> str:
    """The encoder this PyAV build has: H.264 (libx264, else FFmpeg's `h264` alias), else MPEG-4 part 2."""
    for name in ("libx264", "h264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise RuntimeError("this PyAV build has no H.264 or MPEG-4 encoder")


class _Encoder:
    """One MP4 being written: JPEG frames in, H.264 out, to a temporary file until `close`."""

    def __init__(self, job: ClipJob, codec: str, settings: ClipSettings) -> None:
        job.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=job.path.parent, prefix=f".{job.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        self.job = job
        self.codec = codec
        self.settings = settings
        self.container = None
        self.stream = None
        self.size: tuple[int, int] | None = None
        self.last_pts = -1
        self.keeper = FrameKeeper(job)  # clean frames for site training (service/clip_frames.py)

    def _open(self, width: int, height: int) -> None:
        w, h = width - width % 2, height - height % 2
        self.container = av.open(str(self.tmp), "w", format="mp4", options={"movflags": "+faststart"})
        rate = max(1, round(self.settings.fps))
        stream = self.container.add_stream(self.codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        if self.codec == "libx264":
            # one encoder thread (it inherits the writer's lowered priority) and a short lookahead:
            # a clip costs at most about one core and a few MiB, however many cameras there are
            stream.options = {"crf": str(self.settings.crf), "preset": "veryfast", "threads": "1",
                              "rc-lookahead": "10"}
        else:
            stream.bit_rate = 2_000_000
        self.stream = stream
        self.size = (w, h)

    def add(self, entry: BufferedFrame, box: tuple | None) -> None:
        image = cv2.imdecode(np.frombuffer(entry.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            CLIP_FRAMES_DROPPED.labels("decode").inc()
            return
        if self.container is None:
            self._open(image.shape[1], image.shape[0])
        w, h = self.size
        if (image.shape[1], image.shape[0]) != (w, h):
            sx = w / image.shape[1]
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        else:
            sx = 1.0
        job = self.job
        if box is not None:
            k = entry.scale * sx
            x1, y1, x2, y2 = (int(round(v * k)) for v in box)
            down = entry.pts_s >= job.onset_s
            colour = (0, 0, 255) if down else (0, 200, 255)
            thickness = max(2, round(min(h, w) / 240))
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, thickness)
            label = f"{'FALL ' if down else ''}track {job.track_id}"
            cv2.putText(image, label, (x1 + 2, max(y1 - 6, 14)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5 * thickness / 2 + 0.25, colour, max(1, thickness - 1), cv2.LINE_AA)
        rel = entry.pts_s - job.alert_s
        cv2.putText(image, f"{job.source}  t{rel:+.1f} s", (6, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        if job.first_s is None:
            job.first_s = entry.pts_s
        pts = int(round((entry.pts_s - job.first_s) * 1000))
        if pts <= self.last_pts:
            pts = self.last_pts + 1
        self.last_pts = pts
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, TIME_BASE
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        job.last_s = entry.pts_s

    def close(self) -> bool:
        """Flush, close, fsync and rename into place; False (and no file) when nothing was written."""
        if self.container is None:
            self.tmp.unlink(missing_ok=True)
            return False
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.job.path)
        try:
            self.keeper.write(self.job.path)
        except Exception:  # the clip stands without its training frames
            log.exception("clip of alert %s: its training frames could not be written", self.job.alert_id)
        dfd = os.open(self.job.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def abort(self) -> None:
        try:
            if self.container is not None:
                self.container.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


class ClipWriter:
    """The background thread that encodes every clip; sources hand it frames and never wait."""

    def __init__(self, settings: ClipSettings, codec: str | None = None,
                 max_queued_bytes: int | None = None) -> None:
        self.settings = settings
        self.codec = codec or pick_codec()
        self.max_queued_bytes = max_queued_bytes or int(settings.buffer_mb_total * 2**20)
        self._queue: queue.Queue = queue.Queue()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._ticks: list[Callable[[float], None]] = []  # called about twice a second (expiry)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="clip-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what was handed over (bounded by `timeout`), then end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(("stop", None, None))
        thread.join(timeout)
        self._thread = None

    def add_tick(self, hook: Callable[[float], None]) -> None:
        """`hook(now)` runs on the writer thread about twice a second (live clip deadlines)."""
        with self._lock:
            self._ticks.append(hook)

    def remove_tick(self, hook: Callable[[float], None]) -> None:
        with self._lock:
            if hook in self._ticks:
                self._ticks.remove(hook)

    # -- called by sources (any thread; never blocks) ---------------------------------------------
    def open(self, job: ClipJob) -> None:
        with self._lock:
            self._active.add(job.alert_id)
            CLIPS_ACTIVE.set(len(self._active))
        self._queue.put(("open", job, None))
        self.start()

    def frames(self, job: ClipJob, items: list[tuple[BufferedFrame, tuple | None, dict]]) -> None:
        size = sum(len(item[0].jpeg) for item in items)
        with self._lock:
            if self._queued_bytes + size > self.max_queued_bytes:  # the writer is far behind
                CLIP_FRAMES_DROPPED.labels("writer_behind").inc(len(items))
                return
            self._queued_bytes += size
        self._queue.put(("frames", job, items))

    def finish(self, job: ClipJob) -> None:
        self._queue.put(("finish", job, None))

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:  # Linux: a thread's own nice value; the clip writer yields to inference and readers
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):
            pass
        encoders: dict[str, _Encoder] = {}
        while True:
            try:
                kind, job, items = self._queue.get(timeout=0.5)
            except queue.Empty:
                kind = None
            if kind is None:
                self._expire()
                continue
            if kind == "stop":
                for enc in encoders.values():
                    self._ended(enc.job, ok=self._close(enc))
                return
            try:
                if kind == "open":
                    encoders[job.alert_id] = _Encoder(job, self.codec, self.settings)
                elif kind == "frames":
                    with self._lock:
                        self._queued_bytes -= sum(len(item[0].jpeg) for item in items)
                    enc = encoders.get(job.alert_id)
                    if enc is not None:
                        for entry, box, *others in items:
                            enc.add(entry, box)
                            enc.keeper.add(entry, box, others[0] if others else None)
                elif kind == "finish":
                    enc = encoders.pop(job.alert_id, None)
                    if enc is not None:
                        self._ended(enc.job, ok=self._close(enc))
            except Exception as exc:
                log.exception("clip of alert %s failed", job.alert_id)
                job.error = f"{type(exc).__name__}: {exc}"[:300]
                enc = encoders.pop(job.alert_id, None)
                if enc is not None:
                    enc.abort()
                    self._ended(enc.job, ok=False)
                elif kind == "open":  # no encoder (its file could not be made): the owner still hears why
                    self._ended(job, ok=False)
            self._expire()

    def _close(self, enc: _Encoder) -> bool:
        try:
            ok = enc.close()
        except Exception as exc:
            log.exception("clip of alert %s could not be finished", enc.job.alert_id)
            enc.job.error = f"{type(exc).__name__}: {exc}"[:300]
            enc.abort()
            return False
        if not ok and enc.job.error is None:
            enc.job.error = "no frames"
        return ok

    def _ended(self, job: ClipJob, ok: bool) -> None:
        """Free the job's place, count it, and tell its owner (also when no encoder could be made)."""
        with self._lock:
            self._active.discard(job.alert_id)
            CLIPS_ACTIVE.set(len(self._active))
        if ok:
            job.written = True
            job.bytes = job.path.stat().st_size
            job.duration_s = (job.last_s - job.first_s) + 1.0 / self.settings.fps \
                if job.first_s is not None and job.last_s is not None else 0.0
            CLIPS_WRITTEN.inc()
            CLIP_BYTES.inc(job.bytes)
            log.info("clip of alert %s written: %s (%.1f s, %d bytes)", job.alert_id, job.path,
                     job.duration_s, job.bytes)
        else:
            CLIPS_FAILED.labels("no_frames" if job.error == "no frames" else "error").inc()
        job.finish()

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            hooks = list(self._ticks)
        for hook in hooks:
            try:
                hook(now)
            except Exception:
                log.exception("clip writer tick failed")
