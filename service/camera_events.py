"""`camera_offline` / `camera_online`: a camera that stays down is an alert, on the fall alerts' channels.

A care home must know when a room is no longer watched: the camera's tile alone (issue 25 item 7)
is missed by a carer looking at an alert list, Home Assistant or a pager. So a camera that has not
been `live` for `rtsp.offline_after_s` (a grace period: a reconnect of a few seconds raises
nothing) raises `camera_offline`, once per outage, and `camera_online` when it is live again.
Both are ordinary events of the alert store: shown on WebSockets and the operator page, delivered
over MQTT (also as the camera's retained `<prefix>/<camera>/available`, which its Home Assistant
sensor uses for availability) and webhooks, acknowledged like a fall. `camera_online` carries
`fall_id` = the offline event's id (the incident id), so acknowledging one acknowledges both.

`CameraHealth` is fed the reader's state changes (`RtspReader.on_state`) and `check()`ed about once
a second by the stream manager; it holds no thread and no clock of its own (tests pass `now`).
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Literal

CameraEventType = Literal["camera_offline", "camera_online"]
CAMERA_EVENT_TYPES = ("camera_offline", "camera_online")


@dataclass
class CameraEvent:
    """One camera availability event; the store, bus and delivery take it like a fall `Event`."""

    id: str
    type: CameraEventType
    source: str
    at: float  # wall clock of the event
    down_since: float  # wall clock the camera stopped being live (or was added, never live)
    down_s: float  # seconds not live, at the event
    reason: str | None  # the reader's last error (passwords masked by the reader)
    fall_id: str  # incident id: the camera_offline event's id
    track_id: None = None
    snapshot: None = None

    def to_json(self) -> dict:
        return {"type": self.type, "id": self.id, "source": self.source, "track_id": None,
                "at": round(self.at, 4), "down_since": round(self.down_since, 4),
                "down_s": round(self.down_s, 2), "reason": self.reason, "has_snapshot": False,
                "fall_id": self.fall_id}


class CameraHealth:
    """One camera's outage bookkeeping: when it stopped being live, whether its offline was sent."""

    def __init__(self, source: str, offline_after_s: float, publish: Callable[[CameraEvent], object]) -> None:
        self.source = source
        self.offline_after_s = offline_after_s
        self.publish = publish
        self._lock = threading.Lock()
        now = time.time()
        self._down_since: float | None = now  # added: not live yet
        self._down_mono: float | None = time.monotonic()
        self._reason: str | None = None
        self._offline: CameraEvent | None = None  # the open outage's camera_offline, once sent

    def on_state(self, state: str, error: str | None) -> None:
        """The reader's state changed (its thread). Live ends an outage; anything else may start one."""
        online = None
        with self._lock:
            if state == "live":
                if self._offline is not None:
                    now = time.time()
                    online = CameraEvent(id=uuid.uuid4().hex, type="camera_online", source=self.source, at=now,
                                         down_since=self._offline.down_since,
                                         down_s=now - self._offline.down_since, reason=None,
                                         fall_id=self._offline.fall_id)
                self._down_since = self._down_mono = None
                self._offline = None
                self._reason = None
            elif state == "stopped":
                self._down_since = self._down_mono = None  # removed or shut down: not an outage
            else:
                if self._down_since is None:
                    self._down_since, self._down_mono = time.time(), time.monotonic()
                if error:
                    self._reason = error
        if online is not None:
            self.publish(online)

    def check(self, now_mono: float | None = None) -> CameraEvent | None:
        """Raise camera_offline once the outage has lasted `offline_after_s`; returns it if raised."""
        now_mono = time.monotonic() if now_mono is None else now_mono
        with self._lock:
            if self._down_mono is None or self._offline is not None \
                    or now_mono - self._down_mono < self.offline_after_s:
                return None
            event_id = uuid.uuid4().hex
            self._offline = CameraEvent(id=event_id, type="camera_offline", source=self.source, at=time.time(),
                                        down_since=self._down_since, down_s=now_mono - self._down_mono,
                                        reason=self._reason, fall_id=event_id)
            offline = self._offline
        self.publish(offline)
        return offline

    @property
    def offline(self) -> bool:
        with self._lock:
            return self._offline is not None
