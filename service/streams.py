"""Live cameras: register, run, persist and report them; each one feeds the shared inference worker.

Per camera: an `RtspReader` thread -> `worker.submit(frame, live=True)` (latest frame wins) -> in
the future's done-callback `pipeline.step(...)` -> `bus.publish_frame(result)` and
`bus.publish_event(e)` per event. The callback runs on the worker's completion thread (or, if the
future is already done, on the reader thread), so steps of one camera are serialised by a lock and
a frame older than the last one stepped is skipped (counted as dropped). A per-camera publish lock
is held from the step until its events are published, and by close() around finish(), so a camera's
final events (a `fall_cleared` on removal) are always stored after the alert they clear.

After a model swap the inference worker calls `StreamManager.model_changed` between the old model's
last results and the new one's first (`InferenceWorker.add_runtime_listener`): every running camera's
pipeline then follows the new file's score threshold (its operating point) without a reconnect or
losing its tracks; cameras added later get it from the pipeline factory.

The list of cameras lives in `settings.streams_file` (JSON list of `{"id", "url"}`), restored at
start and rewritten on add/remove, so a restarted service resumes its cameras. With Kubernetes
sharding (`shard_index` of `shard_count`, one StatefulSet pod each) a pod runs only the ids whose
hash falls on its shard (`shard_of`) and keeps the other entries of the file untouched. Entries this
pod skips at start (a bad id or URL, over `max_streams`, a duplicate) are logged with the reason,
counted in `falldet_streams_skipped` and written back unchanged on every rewrite, so lowering the
limit or a typo never erases a camera from the file.

Removal keeps the id reserved until the old camera is fully closed (a POST of that id meanwhile is
a 409), so the old close() can never touch a new camera of the same id; then the bus closes the
camera's WebSocket subscribers (`close_source`).

Live preview (`GET /v1/streams/{id}/preview.jpg`, for the operator page): each camera keeps a
reference to its latest processed Frame (no copy, no encode); only a request scales it down and
JPEG-encodes it, cached per (frame index, width) so any number of viewers of one camera cost one
encode per frame and size, and a camera nobody watches costs nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Protocol

import cv2
import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from service.camera_events import CameraEvent, CameraHealth
from service.frames import Frame, FrameResult, Person
from service.sources.rate import RateGate
from service.sources.rtsp import RateMeter, RtspReader, RtspSettings, mask_url, validate_stream_url
from service.zones import Zone, ZoneError, parse_zones, zones_json

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_MAX_STREAMS = 16
WS_STREAM_REMOVED = 4404  # WebSocket close code sent to a camera's subscribers when it is removed
PREVIEW_QUALITY = 80  # JPEG quality of previews: small enough for ~12 pictures/s per viewer
PREVIEW_WIDTHS_KEPT = 4  # encoded sizes kept per camera (viewers at different canvas widths)

FRAMES_PROCESSED = Counter("falldet_stream_frames_processed", "Camera frames that went through the "
                           "model and the pipeline", ["source"])
LATENCY = Histogram("falldet_stream_latency_seconds", "Capture (frame decoded) to result ready, live cameras",
                    buckets=(0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0))
SKIPPED = Gauge("falldet_streams_skipped", "Entries of the streams file this process keeps but does not "
                "run (bad id or URL, over max_streams, duplicate id); see the start-up warnings")
PREVIEW_ENCODES = Counter("falldet_stream_preview_encodes", "Preview JPEGs encoded (one per frame and "
                          "width, whatever the number of viewers)", ["source"])


class StreamError(Exception):
    """A request the manager refuses; `status_code` is the HTTP answer the API gives."""

    status_code = 400


class InvalidStream(StreamError):
    status_code = 422


class StreamExists(StreamError):
    status_code = 409


class StreamLimit(StreamError):
    status_code = 429


class WrongShard(StreamError):
    status_code = 421  # Misdirected Request: another pod owns this camera


class Worker(Protocol):
    def submit(self, frame: Frame, live: bool) -> "Future[list[Person]]": ...
    def dropped(self, source: str) -> int: ...


class Pipeline(Protocol):
    def step(self, frame: Frame, persons: list[Person], latency_ms: float, dropped: int) -> tuple[FrameResult, list]: ...
    def finish(self) -> list: ...
    def timeline(self) -> dict: ...


class Bus(Protocol):
    def publish_frame(self, result: FrameResult) -> Any: ...
    def publish_event(self, event: Any) -> Any: ...


def validate_stream_id(stream_id: object) -> str:
    """Ids name cameras in URLs, metrics and files: 1-64 of letters, digits, `_ . -`."""
    if not isinstance(stream_id, str) or not STREAM_ID.match(stream_id):
        raise InvalidStream("id must be 1-64 characters of letters, digits, '_', '.' or '-', "
                            "starting with a letter or digit")
    return stream_id


def encode_preview(image: np.ndarray, max_width: int, quality: int = PREVIEW_QUALITY) -> bytes:
    """JPEG of a BGR frame scaled down (aspect kept, INTER_AREA: no aliasing) to at most
    `max_width` pixels wide; never scaled up."""
    height, width = image.shape[:2]
    if width > max_width:
        size = (max_width, max(1, round(height * max_width / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not encode a {width}x{height} frame as JPEG")
    return buf.tobytes()


def shard_of(stream_id: str, shard_count: int) -> int:
    """Stable shard of a camera id: the same in every pod and process (unlike `hash()`), and well
    spread even for ids that differ in one character (CRC-32 is not: `ward-0..11` missed a shard)."""
    digest = hashlib.blake2b(stream_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(1, shard_count)


class Stream:
    """One running camera: its reader, its per-source pipeline and its counters."""

    def __init__(self, stream_id: str, url: str, manager: "StreamManager", zones: list[Zone] | None = None,
                 detect_fps: float | None = None) -> None:
        """`detect_fps`: this camera's analysed frames per second (None: the service's `detect_fps`)."""
        self.id = stream_id
        self.url = url
        self.detect_fps_set = detect_fps  # what was asked for this camera (kept in the streams file)
        self.gate = RateGate(detect_fps if detect_fps is not None else manager.detect_fps)
        self._manager = manager
        self.pipeline: Pipeline = manager.pipeline_factory(stream_id)
        self.zones: list[Zone] = []
        self.set_zones(zones or [])
        clips = getattr(manager, "clips", None)
        self.clips = clips.camera(stream_id) if clips is not None else None  # fall clips' frame buffer
        self.lock = threading.Lock()  # serialises pipeline.step / finish / timeline
        # held from before a step until its events are published, and by close() around finish():
        # a final event (fall_cleared, source_ended) can never be stored before the alert it clears.
        # Order: _publish_lock, then lock. Per camera: it makes no camera wait for another one.
        self._publish_lock = threading.Lock()
        self.closed = False
        self.frames_processed = 0
        self.skipped = 0  # results dropped here: out of order, failed inference or submit refused
        self.rate_skipped = 0  # frames not analysed on purpose (detect_fps)
        self.errors = 0
        self._count_lock = threading.Lock()
        self._last_index = -1
        self._last_frame: Frame | None = None  # the latest frame whose result went out (preview)
        self._preview_lock = threading.Lock()  # one encode per (index, width), however many viewers
        self._previews: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._final_dropped: int | None = None
        self._dropped_base = _worker_dropped(manager.worker, stream_id)
        self._meter = RateMeter()
        # a long outage is an alert (camera_offline / camera_online), on the fall alerts' channels
        self.health = CameraHealth(stream_id, manager.rtsp_settings.offline_after_s, self._publish_health)
        self.reader = RtspReader(stream_id, url, self.on_frame, manager.rtsp_settings, on_state=self.health.on_state)

    def _publish_health(self, event: CameraEvent) -> None:
        if self.closed:
            return
        try:
            self._manager.bus.publish_event(event)
        except Exception:
            log.exception("camera %s: publishing %s failed", self.id, event.type)

    def on_frame(self, frame: Frame) -> None:
        """Reader thread: hand the frame to the worker (never blocks; the worker drops stale frames)."""
        if self.closed:
            return
        if self.clips is not None:
            try:
                self.clips.add_frame(frame)  # at most clips.fps a second: one JPEG encode each
            except Exception:
                log.exception("camera %s: buffering a frame for clips failed", self.id)
        if not self.gate.due(frame.pts_s):
            self.rate_skipped += 1  # on purpose (detect_fps): not a drop
            return
        try:
            future = self._manager.worker.submit(frame, live=True)
        except Exception as exc:  # a stopped worker: count it, keep the camera reading
            self._skip(f"submit refused: {exc}")
            return
        future.add_done_callback(lambda fut: self.on_result(frame, fut))

    def on_result(self, frame: Frame, future: "Future[list[Person]]") -> None:
        """Done-callback (worker's completion thread, or the reader's if already done): step, publish."""
        if future.cancelled() or self.closed:
            return  # replaced by a newer frame: the worker counted the drop
        error = future.exception()
        if error is not None:
            self._skip(f"inference failed: {error}")
            return
        persons = future.result()
        try:
            with self._publish_lock:  # until the events are out: close() waits (nothing here calls close())
                with self.lock:
                    if self.closed:
                        return
                    if frame.index <= self._last_index:  # overtaken by a newer frame's result
                        self._skip("result out of order")
                        return
                    self._last_index = frame.index
                    latency_ms = (time.time() - frame.captured_at) * 1000.0
                    result, events = self.pipeline.step(frame, persons, latency_ms, self.dropped)
                    self.frames_processed += 1
                    self._last_frame = frame  # a reference only: encoded if and when someone looks
                    if self.clips is not None:  # boxes for clip frames; a fall_alert starts a clip
                        self.clips.add_result(frame.pts_s, result.persons, events)
                self._meter.tick()
                FRAMES_PROCESSED.labels(self.id).inc()
                LATENCY.observe(latency_ms / 1000.0)
                bus = self._manager.bus
                bus.publish_frame(result)
                for event in events:
                    bus.publish_event(event)
        except Exception:  # tracking, store or a subscriber failed: log it, keep the camera going
            self.errors += 1
            log.exception("camera %s: processing frame %d failed", self.id, frame.index)

    def preview(self, max_width: int) -> tuple[bytes, int] | None:
        """(JPEG, frame index) of the latest processed frame, at most `max_width` wide; None before
        the first one. Encoded on the first request per (index, width), then served from memory."""
        with self._preview_lock:  # read the frame inside: cached indices only ever rise
            frame = self._last_frame
            if frame is None or frame.image is None or self.closed:  # closed: no metric re-created
                return None
            width = min(max(1, int(max_width)), frame.image.shape[1])
            key = (frame.index, width)
            jpeg = self._previews.get(key)
            if jpeg is None:
                jpeg = encode_preview(frame.image, width)
                PREVIEW_ENCODES.labels(self.id).inc()
                for old in [k for k in self._previews if k[0] != frame.index]:
                    del self._previews[old]  # older frames are never asked for again
                self._previews[key] = jpeg
                while len(self._previews) > PREVIEW_WIDTHS_KEPT:
                    self._previews.popitem(last=False)
            else:
                self._previews.move_to_end(key)
        return jpeg, frame.index

    def _skip(self, why: str) -> None:
        with self._count_lock:
            self.skipped += 1
        if self.skipped in (1, 10, 100) or self.skipped % 1000 == 0:
            log.warning("camera %s: %s (%d frames skipped so far)", self.id, why, self.skipped)

    @property
    def dropped(self) -> int:
        if self._final_dropped is not None:  # closed: the worker has forgotten this source
            return self._final_dropped
        return _worker_dropped(self._manager.worker, self.id) - self._dropped_base + self.skipped

    def status(self) -> dict:
        reader = self.reader.status()
        return {"id": self.id, "url": reader["url"], "state": reader["state"],
                "last_error": reader["last_error"], "last_error_detail": reader.get("last_error_detail"),
                "last_error_at": reader.get("last_error_at"), "frames_received": reader["frames_received"],
                "frames_processed": self.frames_processed, "frames_dropped": self.dropped,
                "fps_in": reader["fps_in"], "fps_processed": round(self._meter.rate(), 2),
                "detect_fps": self.gate.fps, "frames_not_analysed": self.rate_skipped,
                "width": reader["width"], "height": reader["height"],
                "reconnects": reader["reconnects"], "retry_in_s": reader["retry_in_s"],
                "offline_alert": self.health.offline,
                "detection_threshold": getattr(self.pipeline, "detection_threshold", None),
                "zones": zones_json(self.zones),
                "clip_buffer": self.clips.status() if self.clips is not None else None}

    def set_zones(self, zones: list[Zone]) -> None:
        """Apply zones to the running pipeline at once (next frame; no reconnect)."""
        setter = getattr(self.pipeline, "set_zones", None)
        if setter is not None:
            setter(zones)
        self.zones = list(zones)

    def close(self, timeout: float = 1.0) -> list:
        """Stop reading (waiting up to `timeout` s for the reader's threads), wait for a result still
        being published, then end the pipeline; returns its final events (not yet published: the
        caller publishes them after this returns, so they come after every other event of the camera)."""
        self.reader.stop(timeout)
        forget = getattr(self._manager.worker, "forget", None)
        # publish lock first: a result being stepped or published is fully out before finish() makes
        # the final events (no deadlock: a publish never calls close(), and the reader never waits on it)
        with self._publish_lock, self.lock:
            self.closed = True
            try:
                events = self.pipeline.finish()
            except Exception:
                log.exception("camera %s: pipeline.finish failed", self.id)
                events = []
        self._final_dropped = self.dropped
        self._last_frame = None
        clips = getattr(self._manager, "clips", None)
        if clips is not None:
            clips.release(self.clips)  # open clips are closed with what they have
        with self._preview_lock:
            self._previews.clear()
        if forget is not None:
            forget(self.id)
        for metric in (FRAMES_PROCESSED, PREVIEW_ENCODES):
            try:
                metric.remove(self.id)
            except KeyError:
                pass
        return events


def _worker_dropped(worker: Worker, source: str) -> int:
    try:
        return int(worker.dropped(source))
    except Exception:
        return 0


class StreamManager:
    """All cameras of this service (or of this pod's shard)."""

    def __init__(self, settings: Any, worker: Worker, bus: Bus,
                 pipeline_factory: Callable[[str], Pipeline], clips: Any = None) -> None:
        """`clips`: a `service.clips.ClipService` (a frame buffer per camera, a clip per fall), or None."""
        self.settings = settings
        self.clips = clips
        self.worker = worker
        self.bus = bus
        self.pipeline_factory = pipeline_factory
        self.max_streams = int(getattr(settings, "max_streams", DEFAULT_MAX_STREAMS))
        self.shard_index = int(getattr(settings, "shard_index", 0) or 0)
        self.shard_count = max(1, int(getattr(settings, "shard_count", 1) or 1))
        self.rtsp_settings: RtspSettings = getattr(settings, "rtsp", None) or RtspSettings()
        self.detect_fps: float | None = getattr(settings, "detect_fps", None)  # per camera unless set there
        path = getattr(settings, "streams_file", None)
        if path is None and getattr(settings, "state_dir", None) is not None:
            path = Path(settings.state_dir) / "streams.json"
        self.streams_file: Path | None = Path(path) if path is not None else None
        self._streams: dict[str, Stream] = {}
        self._foreign: list[dict] = []  # entries of the file that other shards run
        self._skipped: list[Any] = []  # entries of this shard not running: written back unchanged
        self._closing: set[str] = set()  # ids being removed: reserved until close() is done
        self._lock = threading.RLock()
        self._started = False
        self._health_stop = threading.Event()
        self._health_thread: threading.Thread | None = None
        listen = getattr(worker, "add_runtime_listener", None)
        if listen is not None:
            listen(self.model_changed)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Resume the cameras of the streams file (this shard's). Entries that cannot run are logged
        with the reason and kept (written back unchanged), never dropped from the file."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._foreign, self._skipped = [], []
            for entry in self._read_file():
                if not isinstance(entry, dict):
                    self._skip_entry(entry, None, "not a JSON object")
                    continue
                stream_id, url = entry.get("id"), entry.get("url")
                if isinstance(stream_id, str) and STREAM_ID.match(stream_id) \
                        and shard_of(stream_id, self.shard_count) != self.shard_index:
                    self._foreign.append(entry)
                    continue
                try:
                    zones = parse_zones(entry.get("zones", []))
                except ZoneError as exc:
                    self._skip_entry(entry, stream_id, f"bad zones: {exc}")
                    continue
                try:
                    self._add(stream_id, url, persist=False, zones=zones, detect_fps=entry.get("detect_fps"))
                except StreamError as exc:
                    self._skip_entry(entry, stream_id, str(exc))
            SKIPPED.set(len(self._skipped))
            self._start_health()
            log.info("streams: resumed %d camera(s) (shard %d of %d)%s", len(self._streams),
                     self.shard_index, self.shard_count,
                     f"; {len(self._skipped)} entr{'y' if len(self._skipped) == 1 else 'ies'} of the "
                     f"streams file not running but kept in it (see the warnings above)" if self._skipped else "")

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every camera (they stay in the file and resume at the next start): every reader is
        told to stop first, then all are waited for together (at most about `timeout` s in all)."""
        self._health_stop.set()
        thread, self._health_thread = self._health_thread, None
        if thread is not None:
            thread.join(2.0)
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
            self._closing.update(s.id for s in streams)
            self._started = False  # _foreign and _skipped stay: a later rewrite still keeps them
        try:
            for stream in streams:
                stream.closed = True  # no new submits from its reader
                stream.reader.stop(0)  # signal only; joined below
            deadline = time.monotonic() + timeout
            for stream in streams:
                self._publish_final(stream, stream.close(max(0.0, deadline - time.monotonic())))
        finally:
            with self._lock:
                self._closing.difference_update(s.id for s in streams)

    def _start_health(self) -> None:
        """One thread for every camera: raise camera_offline once an outage outlasts its grace."""
        if self._health_thread is not None and self._health_thread.is_alive():
            return
        self._health_stop.clear()
        self._health_thread = threading.Thread(target=self._health_loop, name="camera-health", daemon=True)
        self._health_thread.start()

    def _health_loop(self) -> None:
        period = min(1.0, self.rtsp_settings.offline_after_s / 4)
        while not self._health_stop.wait(period):
            for stream in list(self._streams.values()):
                try:
                    stream.health.check()
                except Exception:
                    log.exception("camera %s: health check failed", stream.id)

    # -- API ---------------------------------------------------------------------------------------
    def add(self, stream_id: str, url: str, detect_fps: float | None = None) -> dict:
        """Register and start a camera; raises a StreamError subclass (its status_code) if refused."""
        with self._lock:
            return self._add(stream_id, url, persist=True, detect_fps=detect_fps).status()

    def remove(self, stream_id: str) -> dict | None:
        """Stop and forget a camera; its pipeline's final events are published, then its WebSocket
        subscribers are closed. None: unknown id. The id stays reserved until all that is done."""
        with self._lock:
            stream = self._streams.pop(stream_id, None)
            if stream is None:
                return None
            self._closing.add(stream_id)
            self._drop_skipped(stream_id)  # a duplicate of a removed camera must not come back
            self._write_file()
        try:
            events = stream.close()
            self._publish_final(stream, events)
            close_source = getattr(self.bus, "close_source", None)
            if close_source is not None:
                try:
                    close_source(stream_id, WS_STREAM_REMOVED, "stream removed")
                except Exception:
                    log.exception("camera %s: closing its WebSocket clients failed", stream_id)
            return stream.status()
        finally:
            with self._lock:
                self._closing.discard(stream_id)

    def get(self, stream_id: str) -> dict | None:
        stream = self._streams.get(stream_id)
        return stream.status() if stream is not None else None

    def list(self) -> list[dict]:
        return [stream.status() for stream in list(self._streams.values())]

    def set_zones(self, stream_id: str, zones: list[Zone]) -> list[dict] | None:
        """Replace a camera's zones: saved in the streams file and applied to the running camera at
        once (its next frame), without a reconnect. None: unknown id."""
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                return None
            stream.set_zones(zones)
            self._write_file()
            return zones_json(stream.zones)

    def zones(self, stream_id: str) -> list[dict] | None:
        stream = self._streams.get(stream_id)
        return zones_json(stream.zones) if stream is not None else None

    def timeline(self, stream_id: str) -> dict | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        with stream.lock:
            return stream.pipeline.timeline()

    def preview(self, stream_id: str, max_width: int) -> tuple[bytes, int] | None:
        """(JPEG, frame index) of a camera's latest processed frame scaled down to at most
        `max_width` pixels wide; None for an unknown camera or before its first processed frame."""
        stream = self._streams.get(stream_id)
        return stream.preview(max_width) if stream is not None else None

    def last_frame(self, stream_id: str) -> Frame | None:
        """A camera's latest processed frame (as decoded, nothing drawn), or None."""
        stream = self._streams.get(stream_id)
        return getattr(stream, "_last_frame", None) if stream is not None else None

    def model_changed(self, runtime: Any) -> None:
        """The worker answers from another model now (a swap, a rollback, the watched folder): every
        running camera follows its score threshold from its next frame on (no reconnect, tracks kept)."""
        threshold = getattr(runtime, "score_threshold", None)
        if threshold is None:
            return
        changed = []
        for stream in list(self._streams.values()):
            setter = getattr(stream.pipeline, "set_detection_threshold", None)
            try:
                if setter is not None and setter(threshold):
                    changed.append(stream.id)
            except Exception:
                log.exception("camera %s: applying the new model's threshold failed", stream.id)
        if changed:
            log.info("model changed: %d camera(s) now track at score threshold %.4g (%s)", len(changed),
                     threshold, ", ".join(changed))

    def owns(self, stream_id: str) -> bool:
        return shard_of(stream_id, self.shard_count) == self.shard_index

    def __len__(self) -> int:
        return len(self._streams)

    # -- internals ---------------------------------------------------------------------------------
    def _add(self, stream_id: Any, url: Any, persist: bool, zones: list[Zone] | None = None,
             detect_fps: Any = None) -> Stream:
        validate_stream_id(stream_id)
        if detect_fps is not None and (isinstance(detect_fps, bool) or not isinstance(detect_fps, (int, float))
                                       or not 0 < detect_fps <= 120):
            raise InvalidStream(f"detect_fps must be a number in (0, 120], got {detect_fps!r}")
        try:
            validate_stream_url(url)
        except ValueError as exc:
            raise InvalidStream(str(exc)) from None
        if not self.owns(stream_id):
            raise WrongShard(f"camera {stream_id!r} belongs to shard {shard_of(stream_id, self.shard_count)} "
                             f"of {self.shard_count}; this is shard {self.shard_index}")
        if stream_id in self._streams:
            raise StreamExists(f"a stream with id {stream_id!r} already exists")
        if stream_id in self._closing:
            raise StreamExists(f"the stream with id {stream_id!r} is still being removed; try again")
        if len(self._streams) >= self.max_streams:
            raise StreamLimit(f"stream limit reached: max_streams={self.max_streams}; remove one first")
        stream = Stream(stream_id, url, self, zones, detect_fps)
        self._streams[stream_id] = stream
        if persist:
            self._drop_skipped(stream_id)  # the new registration supersedes a skipped entry
            self._write_file()
        stream.reader.start()
        self._start_health()
        log.info("camera %s added: %s", stream_id, mask_url(url))
        return stream

    def _publish_final(self, stream: Stream, events: list) -> None:
        for event in events:
            try:
                self.bus.publish_event(event)
            except Exception:
                log.exception("camera %s: publishing a final event failed", stream.id)

    def _skip_entry(self, entry: Any, stream_id: Any, why: str) -> None:
        """Keep an entry this pod cannot run, to write it back unchanged; the log says why."""
        self._skipped.append(entry)
        log.warning("streams file: not running %r (kept in the file): %s", stream_id, why)

    def _drop_skipped(self, stream_id: str) -> None:
        kept = [e for e in self._skipped if not (isinstance(e, dict) and e.get("id") == stream_id)]
        if len(kept) != len(self._skipped):
            self._skipped = kept
            SKIPPED.set(len(kept))

    @property
    def skipped(self) -> int:
        """Entries of the streams file kept but not running here (also `falldet_streams_skipped`)."""
        return len(self._skipped)

    def _read_file(self) -> list[Any]:
        path = self.streams_file
        if path is None or not path.exists():
            return []
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("streams file %s unreadable, starting with no cameras: %s", path, exc)
            return []
        if not isinstance(entries, list):
            log.error("streams file %s is not a JSON list; ignored", path)
            return []
        return entries

    def _write_file(self) -> None:
        """Atomically rewrite the list (mode 0600: URLs may carry passwords); failures only log."""
        path = self.streams_file
        if path is None:
            return
        entries = self._foreign + [{"id": s.id, "url": s.url} | ({"zones": zones_json(s.zones)} if s.zones else {})
                                   | ({"detect_fps": s.detect_fps_set} if s.detect_fps_set is not None else {})
                                   for s in self._streams.values()] + self._skipped
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entries, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("could not save the stream list to %s: %s", path, exc)
            tmp.unlink(missing_ok=True)
