"""RTSP cameras: one reader thread per camera that never dies, only changes state.

`RtspReader` opens the camera with PyAV over TCP, decodes frames and hands each one to a callback
as a `Frame`. A camera that refuses, drops or freezes the connection is a state, not an exception:

    connecting --first frame--> live --no frame for stall_timeout_s--> stalled --frame--> live
        |                        |                                        |
        +--open failed-----------+--stream ended / read error-------------+--> backoff --delay--> connecting
        +--no decodable frame----+--no decodable frame--------------------+
    any state --stop()--> stopped

A camera whose packets keep coming but never decode (corrupt references, no keyframe, every packet
InvalidDataError) never trips the read timeout, so the decode loop drops the session itself: no
frame for `read_timeout_s` since the last one, or for `open_timeout_s + read_timeout_s` after the
open returned (the first keyframe may be a whole GOP away), ends it with `last_error = "no decodable
frame for N s"` and the normal backoff-and-reconnect path runs.

Reconnects wait `min(backoff_max_s, backoff_initial_s * backoff_factor**n)`, shortened by up to
`backoff_jitter` of itself at random so that cameras that dropped together do not retry in step;
`n` is reset once a session has stayed up for `backoff_reset_s`. Two timeouts bound every blocking
call: FFmpeg's `timeout` socket option (microseconds) and PyAV's interrupt callback
(`timeout=(open, read)` seconds), so a frozen camera cannot hang the thread (without them it hangs
forever; a killed server simply ends the stream, which is treated as a disconnect).

URLs are limited to rtsp:// and rtsps:// (`validate_stream_url`, reused by the API) and passwords
never leave this module unmasked (`mask_url`, `_describe`). A failed open is put in plain words
(`last_error`: no answer, host not found, refused, authentication failed, not RTSP...; see
`camera_errors.py`) with FFmpeg's own text beside it (`last_error_detail`); both are cleared when
the camera is live again.
"""
from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import av
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field

from service.frames import Frame
from service.sources.camera_errors import explain

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("rtsp", "rtsps")
MAX_URL_LENGTH = 2048
NOMINAL_FRAME_S = 1 / 25  # stands in for a frame duration where the stream gives no timestamp

FRAMES_RECEIVED = Counter("falldet_stream_frames_received", "Frames decoded from a live camera", ["source"])
RECONNECTS = Counter("falldet_stream_reconnects", "Camera sessions that failed or ended and were retried",
                     ["source"])
STATE = Gauge("falldet_stream_state", "1 for the camera's current state, 0 for the others",
              ["source", "state"])


class StreamState(enum.StrEnum):
    CONNECTING = "connecting"
    LIVE = "live"
    STALLED = "stalled"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class RtspSettings(BaseModel):
    """Timeouts and reconnect policy of the camera readers (`FALLDET_RTSP__...`)."""

    model_config = ConfigDict(extra="forbid")

    open_timeout_s: float = Field(5.0, gt=0, description="longest wait to connect and read the stream "
                                                         "header before giving up on an attempt")
    read_timeout_s: float = Field(5.0, gt=0, description="a connected camera that sends nothing, or "
                                                         "nothing that decodes, for this long is "
                                                         "disconnected and retried (first frame of a "
                                                         "session: open_timeout_s + this)")
    stall_timeout_s: float = Field(2.0, gt=0, description="no decoded frame for this long: state "
                                                          "'stalled' (shown before the read timeout)")
    backoff_initial_s: float = Field(0.5, gt=0, description="first wait before reconnecting")
    backoff_max_s: float = Field(30.0, gt=0, description="longest wait before reconnecting")
    backoff_factor: float = Field(2.0, ge=1, description="growth of the wait per failed attempt")
    backoff_jitter: float = Field(0.25, ge=0, lt=1, description="each wait is shortened by up to this "
                                                                "fraction, at random")
    backoff_reset_s: float = Field(10.0, ge=0, description="a session that stayed up this long resets "
                                                           "the wait to backoff_initial_s")
    offline_after_s: float = Field(60.0, gt=0, description="a camera not live for this long raises a "
                                                           "camera_offline event (camera_online when it "
                                                           "is live again); shorter outages raise nothing")


def backoff_delay(attempt: int, settings: RtspSettings, rng: random.Random | None = None) -> float:
    """Wait before reconnect number `attempt` (0-based): capped exponential, minus random jitter."""
    base = min(settings.backoff_max_s, settings.backoff_initial_s * settings.backoff_factor ** min(attempt, 64))
    return base * (1.0 - settings.backoff_jitter * (rng or random).random())


def validate_stream_url(url: object) -> str:
    """Return `url` if it names an RTSP camera; else ValueError with a reason fit for a 4xx reply.

    Only rtsp:// and rtsps:// are accepted: anything else would let a client make the service
    open local files, other protocols or FFmpeg pseudo-URLs.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("url is malformed (bad host or port)") from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"unsupported url scheme ({shown}): only rtsp:// and rtsps:// cameras are accepted")
    if not parts.hostname:
        raise ValueError("url has no host")
    if port == 0:
        raise ValueError("url has port 0")
    return url


def mask_url(url: str) -> str:
    """`rtsp://user:secret@host/x` -> `rtsp://user:***@host/x`; other URLs unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<invalid url>"
    if password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _describe(exc: BaseException, url: str) -> str:
    """One line for `last_error`, with the URL's password masked (FFmpeg errors quote the URL)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text.replace(url, mask_url(url))
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    return text[:300]


class RateMeter:
    """Events per second over a sliding window (fps_in, fps_processed); thread-safe."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return len(self._times) / self.window_s

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class RtspReader:
    """Reads one camera on its own thread and calls `on_frame` with every decoded frame.

    `on_frame` runs on the reader thread and must be quick (the stream manager only submits the
    frame to the inference worker). `opener` is `av.open` unless a test passes another.
    """

    TRANSITIONS_KEPT = 64  # the reader's own record of its state changes (tests, diagnosis)

    def __init__(self, source: str, url: str, on_frame: Callable[[Frame], None],
                 settings: RtspSettings | None = None, opener: Callable[..., Any] = av.open,
                 rng: random.Random | None = None,
                 on_state: Callable[[StreamState, str | None], None] | None = None) -> None:
        """`on_state(state, error)` runs on the thread that changed the state, after each change
        (the stream manager turns long outages into camera_offline / camera_online events)."""
        self.source = source
        self.on_state = on_state
        # every change, in order, as (monotonic time, state): a brief state is never missed by
        # someone who samples `state` now and then (issue 25 item 9)
        self.transitions: deque[tuple[float, StreamState]] = deque(maxlen=self.TRANSITIONS_KEPT)
        self.url = validate_stream_url(url)
        self.on_frame = on_frame
        self.settings = settings or RtspSettings()
        self._opener = opener
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._meter = RateMeter()
        self._state = StreamState.STOPPED
        self._last_error: str | None = None
        self._last_error_detail: str | None = None
        self._last_error_at: float | None = None
        self._last_frame_at = 0.0  # monotonic time of the last frame (watchdog)
        self._retry_at = 0.0  # monotonic time of the next attempt while in backoff
        self.frames_received = 0
        self.reconnects = 0
        self.decode_errors = 0
        self.width = 0
        self.height = 0
        # Continuity across reconnects: frame indices keep counting and presentation times keep
        # rising, so tracking and the fall timeline see one source, with the outage as a time gap.
        self._index = 0
        self._pts_offset = 0.0
        self._last_pts: float | None = None
        self._last_wall: float | None = None
        self._session_frames = 0
        self._session_pts0: float | None = None
        self._session_base = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader and watchdog threads (once)."""
        if self._thread is not None:
            return
        self._set_state(StreamState.CONNECTING)
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{self.source}", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name=f"rtsp-watchdog-{self.source}",
                                          daemon=True)
        self._thread.start()
        self._watchdog.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the threads to end and wait up to `timeout` s.

        A read blocked inside FFmpeg ends by itself within read_timeout_s; the thread delivers
        nothing after stop() and the state reads 'stopped' at once.
        """
        self._stop.set()
        self._set_state(StreamState.STOPPED)
        with self._lock:  # the reader thread touches metrics only under this lock, before stop
            for state in StreamState:
                _remove_metric(STATE, self.source, state.value)
            _remove_metric(FRAMES_RECEIVED, self.source)
            _remove_metric(RECONNECTS, self.source)
        for thread in (self._thread, self._watchdog):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> StreamState:
        return self._state

    def status(self) -> dict:
        """The camera's visible state; the URL's password is masked."""
        with self._lock:
            retry_in = max(0.0, self._retry_at - time.monotonic()) if self._state == StreamState.BACKOFF else None
            return {"url": mask_url(self.url), "state": self._state.value, "last_error": self._last_error,
                    "last_error_detail": self._last_error_detail, "last_error_at": self._last_error_at,
                    "frames_received": self.frames_received, "fps_in": round(self._meter.rate(), 2),
                    "width": self.width, "height": self.height, "reconnects": self.reconnects,
                    "retry_in_s": None if retry_in is None else round(retry_in, 2)}

    # -- state -------------------------------------------------------------------------------------
    def _set_state(self, state: StreamState, error: str | None = None, detail: str | None = None) -> None:
        with self._lock:
            if self._stop.is_set() and state != StreamState.STOPPED:
                return  # stop() wins over anything the reader thread still reports
            if error is not None:
                self._last_error, self._last_error_detail, self._last_error_at = error, detail, time.time()
            elif state == StreamState.LIVE:  # working again: an old error would only mislead
                self._last_error = self._last_error_detail = self._last_error_at = None
            previous, self._state = self._state, state
            if previous != state:
                self.transitions.append((time.monotonic(), state))
            if state != StreamState.STOPPED:
                for s in StreamState:
                    STATE.labels(self.source, s.value).set(1.0 if s == state else 0.0)
        if previous != state:
            log.info("camera %s: %s -> %s%s", self.source, previous.value, state.value,
                     f" ({error}{'; ' + detail if detail else ''})" if error else "")
            if self.on_state is not None:
                try:
                    self.on_state(state, error if error is not None else self._last_error)
                except Exception:  # a consumer bug must not take the camera down
                    log.exception("camera %s: state callback failed", self.source)

    def _watch(self) -> None:
        """Stall watchdog: a live camera with no frame for stall_timeout_s shows 'stalled'.

        It only relabels: the session is ended by the read timeout (nothing arrives) or by the
        decode loop (packets arrive, nothing decodes; `_undecodable_for`).
        """
        period = min(0.25, self.settings.stall_timeout_s / 4)
        while not self._stop.wait(period):
            silent = time.monotonic() - self._last_frame_at
            if self._state == StreamState.LIVE and silent > self.settings.stall_timeout_s:
                self._set_state(StreamState.STALLED, f"no frame for {silent:.1f} s")

    # -- the reader thread -------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._set_state(StreamState.CONNECTING)
            started = time.monotonic()
            detail = None
            try:
                error = self._session()
            except Exception as exc:  # any failure of a session is a state, never a dead thread
                detail = _describe(exc, self.url)
                error = explain(exc, self.url, detail, min(2.0, self.settings.open_timeout_s)).message
            if self._stop.is_set():
                break
            if time.monotonic() - started >= self.settings.backoff_reset_s and self._session_frames:
                attempt = 0
            delay = backoff_delay(attempt, self.settings, self._rng)
            attempt += 1
            with self._lock:
                self.reconnects += 1
                self._retry_at = time.monotonic() + delay
                if not self._stop.is_set():
                    RECONNECTS.labels(self.source).inc()
            self._set_state(StreamState.BACKOFF, error, detail)
            self._stop.wait(delay)
        self._set_state(StreamState.STOPPED)

    def _session(self) -> str:
        """One connection: open, decode until the stream ends; returns why it ended."""
        self._session_frames = 0
        self._session_pts0 = None  # stream time of the session's first timed frame
        self._session_base = 0.0  # our pts_s for that frame
        s = self.settings
        # FFmpeg's socket timeout and PyAV's interrupt each fire after about twice their value
        # (measured, docs/streams.md): give each half, so a frozen camera is dropped after ~read_timeout_s.
        half_read = s.read_timeout_s / 2
        container = self._opener(
            self.url,
            options={"rtsp_transport": "tcp", "timeout": str(int(half_read * 1_000_000))},
            timeout=(s.open_timeout_s, half_read))
        try:
            if not container.streams.video:
                return "no video stream"
            stream = container.streams.video[0]
            opened_at = time.monotonic()
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return "stopped"
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:  # one corrupt packet is not a reason to reconnect...
                    self.decode_errors += 1
                    frames = ()
                for decoded in frames:
                    self._deliver(decoded)
                # ...but packets that keep coming without a frame are: the read timeout never fires
                silent = self._undecodable_for(opened_at)
                if silent is not None:
                    return f"no decodable frame for {silent:.1f} s"
            return "stream ended"
        finally:
            container.close()

    def _undecodable_for(self, opened_at: float) -> float | None:
        """Seconds without a decoded frame when that is past the limit of this session, else None."""
        now = time.monotonic()
        if self._session_frames:
            silent, limit = now - self._last_frame_at, self.settings.read_timeout_s
        else:
            silent, limit = now - opened_at, self.settings.open_timeout_s + self.settings.read_timeout_s
        return silent if silent > limit else None

    def _next_pts(self, stream_time: float | None, now_wall: float) -> float:
        """Presentation time from the stream, continued across reconnects and always rising."""
        last = self._last_pts
        if self._session_frames == 0 and last is not None and self._last_wall is not None:
            self._pts_offset = last + max(now_wall - self._last_wall, NOMINAL_FRAME_S)
        elif self._session_frames == 0:
            self._pts_offset = 0.0
        if stream_time is None:  # no timestamp (first frame of some streams): one frame on
            pts_s = self._pts_offset if self._session_frames == 0 else last + NOMINAL_FRAME_S
        else:
            if self._session_pts0 is None:
                self._session_pts0 = stream_time
                self._session_base = self._pts_offset if self._session_frames == 0 else last + NOMINAL_FRAME_S
            pts_s = self._session_base + (stream_time - self._session_pts0)
        if last is not None and pts_s <= last:
            pts_s = last + 1e-3
        return pts_s

    def _deliver(self, decoded: Any) -> None:
        if self._stop.is_set():  # removed: count nothing more (its metric series are gone)
            return
        now_wall, now = time.time(), time.monotonic()
        pts_s = self._next_pts(decoded.time, now_wall)
        image = decoded.to_ndarray(format="bgr24")
        frame = Frame(source=self.source, index=self._index, pts_s=pts_s, captured_at=now_wall, image=image)
        self._index += 1
        self._session_frames += 1
        self._last_pts, self._last_wall, self._last_frame_at = pts_s, now_wall, now
        with self._lock:
            self.frames_received += 1
            self.height, self.width = image.shape[:2]
            if not self._stop.is_set():
                FRAMES_RECEIVED.labels(self.source).inc()
        self._meter.tick(now)
        if self._state != StreamState.LIVE:
            self._set_state(StreamState.LIVE)
        try:
            self.on_frame(frame)
        except Exception:  # a consumer bug must not take the camera down
            log.exception("camera %s: frame callback failed", self.source)


def _remove_metric(metric: Counter | Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
