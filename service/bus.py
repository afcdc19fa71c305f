"""The event bus: fans frame results and fall events out to WebSocket clients, the store and delivery.

An event is committed to the alert store first, then offered to WebSocket subscribers (those of its
source and those of `/v1/events`), then delivery is woken (MQTT and webhooks read the store, in
order). Publishers are the worker's threads; subscribers live on the asyncio loop, so messages cross
with `call_soon_threadsafe`. Each subscriber has its own bounded queue that drops its own oldest
message when full, so a slow or stuck client never slows the pipeline or another client.
`close_source` ends a removed camera's subscriptions: each client gets what was already in its
mailbox (the camera's final events), then its handler closes the socket with the given code.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from service.frames import FrameResult

log = logging.getLogger(__name__)

WS_CLIENTS = Gauge("falldet_ws_clients", "WebSocket subscribers connected", ["kind"])
WS_DROPPED = Counter("falldet_ws_messages_dropped", "Messages a slow WebSocket client lost (oldest first)",
                     ["kind"])
STORE_ERRORS = Counter("falldet_bus_store_errors", "Events the alert store failed to write")

DEFAULT_QUEUE = 256


class SubscriptionClosed(Exception):
    """The subscription's source is gone: close the WebSocket with `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Store(Protocol):
    def add(self, event: Any) -> dict: ...


class Delivery(Protocol):
    def notify(self) -> None: ...
    def on_remote_event(self, callback: Any) -> None: ...


class Subscription:
    """One WebSocket client's bounded mailbox; lives on the event loop."""

    def __init__(self, source: str | None, maxsize: int) -> None:
        self.source = source  # None: every source's events (`/v1/events`)
        self.kind = "events" if source is None else "stream"
        self._items: deque[dict] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed: SubscriptionClosed | None = None

    def put(self, message: dict) -> None:
        """Append; when full the oldest message goes (counted). Call on the loop thread only."""
        if self.closed is not None:
            return  # nothing after the close (a new camera of the same id has its own clients)
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            WS_DROPPED.labels(self.kind).inc()
        self._items.append(message)
        self._ready.set()

    async def get(self) -> dict:
        """Next message, oldest first; waits when empty. Raises SubscriptionClosed once closed and
        emptied."""
        while not self._items:
            if self.closed is not None:
                raise self.closed
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self, code: int, reason: str) -> None:
        """End the subscription after its pending messages. Call on the loop thread only."""
        if self.closed is None:
            self.closed = SubscriptionClosed(code, reason)
            self._ready.set()

    def __len__(self) -> int:
        return len(self._items)


class EventBus:
    """Thread-safe publishing from any thread to subscribers on one asyncio loop."""

    def __init__(self, store: Store | None, delivery: Delivery | None = None,
                 queue_size: int = DEFAULT_QUEUE) -> None:
        self.store = store
        self.delivery = delivery
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._subs: dict[str | None, set[Subscription]] = {}
        if delivery is not None:
            delivery.on_remote_event(self.publish_remote)

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Attach the loop that runs the WebSocket handlers (app start), or detach it (None)."""
        self._loop = loop

    # -- subscribers (on the loop) ----------------------------------------------------------------
    def subscribe(self, source: str | None) -> Subscription:
        """A mailbox for one source's frames and events, or (None) for every source's events."""
        sub = Subscription(source, self.queue_size)
        with self._lock:
            self._subs.setdefault(source, set()).add(sub)
        WS_CLIENTS.labels(sub.kind).inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.source)
            if subs is not None and sub in subs:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.source]
                WS_CLIENTS.labels(sub.kind).dec()

    def close_source(self, source: str, code: int, reason: str) -> int:
        """Close the subscriptions of `source` (a removed camera) that exist now, after the messages
        already published to them; returns how many. Any thread."""
        with self._lock:
            targets = list(self._subs.get(source, ()))
        loop = self._loop
        if not targets or loop is None or loop.is_closed():
            return 0

        def close() -> None:
            for sub in targets:
                sub.close(code, reason)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            close()
        else:
            try:
                loop.call_soon_threadsafe(close)  # after the messages already sent the same way
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                return 0
        return len(targets)

    def subscribers(self, source: str | None) -> int:
        with self._lock:
            return len(self._subs.get(source, ()))

    # -- publishers (any thread) -------------------------------------------------------------------
    def publish_frame(self, result: FrameResult) -> None:
        """Offer a frame result to the subscribers of its source (serialised only if someone listens)."""
        with self._lock:
            if not self._subs.get(result.source):
                return
        self._fan_out([result.source], result.to_json())

    def publish_event(self, event: Any) -> dict:
        """Store the event (commit), announce it on WebSockets, wake delivery; returns the alert JSON.

        If the store fails the event is still shown to connected operators (a fall must not vanish),
        but it is not handed to delivery, which only sends what the store holds.
        """
        stored = True
        try:
            message = self.store.add(event) if self.store is not None else event.to_json()
        except Exception:
            log.exception("alert store failed for event %s", getattr(event, "id", "?"))
            STORE_ERRORS.inc()
            message, stored = event.to_json(), False
        self._fan_out([event.source, None], message)
        if stored and self.delivery is not None:
            try:
                self.delivery.notify()
            except Exception:
                log.exception("delivery.notify failed")
        return message

    def publish_remote(self, message: dict) -> None:
        """An event another pod published on the broker: shown on this pod's `/v1/events` only."""
        self._fan_out([None], message)

    def _fan_out(self, keys: list[str | None], message: dict) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # no loop, no subscribers
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(keys, message)
        else:
            try:
                loop.call_soon_threadsafe(self._deliver, keys, message)
            except RuntimeError:  # the loop closed meanwhile (shutdown)
                pass

    def _deliver(self, keys: list[str | None], message: dict) -> None:
        with self._lock:
            targets = [sub for key in keys for sub in self._subs.get(key, ())]
        for sub in targets:
            sub.put(message)
