"""The event bus: fans frame results and fall events out to WebSocket clients, the store and delivery.

An event is committed to the alert store first, then offered to WebSocket subscribers (those of its
source and those of `/v1/events`), then delivery is woken (MQTT and webhooks read the store, in
order). Publishers are the worker's threads; subscribers live on the asyncio loop, so messages cross
with `call_soon_threadsafe`. Each subscriber has its own bounded queue that drops its own oldest
message when full, so a slow or stuck client never slows the pipeline or another client.
`close_source` ends a removed camera's subscriptions: each client gets what was already in its
mailbox (the camera's final events), then its handler closes the socket with the given code.

Shown at once, delivered once durable, also when the store fails: an event whose `store.add`
raises (disk full, I/O error) is still shown on WebSockets right away (an operator watching must
not miss a fall because a disk is full), then kept in a bounded in-memory backlog, in order, and
retried by a thread with backoff (`RETRY_FIRST_S` doubling to `RETRY_MAX_S`). While the backlog is
not empty every new event queues behind it (the store, and so delivery, keep the publishing order);
MQTT and webhooks, which only send what the store holds, are woken once it is stored; REST lists it
from then on. `/readyz` answers 503 while the backlog is not empty. The backlog holds at most
`RETRY_QUEUE_MAX` events; when it is full the oldest queued `still_down` (a periodic reminder)
makes room, and if there is none the new event is dropped: the oldest events are kept. A drop is
counted (`falldet_bus_events_dropped_total`) and logged at ERROR with the event's JSON. The
backlog is memory only: a process that stops with a backlog loses it (logged by `close`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from service.frames import FrameResult

log = logging.getLogger(__name__)

WS_CLIENTS = Gauge("falldet_ws_clients", "WebSocket subscribers connected", ["kind"])
WS_DROPPED = Counter("falldet_ws_messages_dropped", "Messages a slow WebSocket client lost (oldest first)",
                     ["kind"])
STORE_ERRORS = Counter("falldet_bus_store_errors", "Events the alert store failed to write")
STORE_BACKLOG = Gauge("falldet_bus_store_backlog", "Events waiting for the alert store to accept them")
EVENTS_DROPPED = Counter("falldet_bus_events_dropped", "Events lost because the store backlog was full",
                         ["type"])

DEFAULT_QUEUE = 256
RETRY_QUEUE_MAX = 1000  # events kept in memory while the store fails (module constants, no setting)
RETRY_FIRST_S = 0.5  # first retry after a store failure; doubles after each failed attempt
RETRY_MAX_S = 30.0


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
                 queue_size: int = DEFAULT_QUEUE, *, retry_queue_max: int = RETRY_QUEUE_MAX,
                 retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S) -> None:
        if retry_queue_max < 1:
            raise ValueError("retry_queue_max must be at least 1")
        self.store = store
        self.delivery = delivery
        self.queue_size = queue_size
        self.retry_queue_max = retry_queue_max
        self.retry_first_s = retry_first_s
        self.retry_max_s = retry_max_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._subs: dict[str | None, set[Subscription]] = {}
        # Store writes and the backlog: one writer at a time, so the store keeps publishing order.
        self._write_lock = threading.Lock()
        self._backlog: deque[Any] = deque()
        self._backlog_since: float | None = None  # wall clock of the first failure of this outage
        self._last_error: str | None = None
        self.dropped = 0  # events lost because the backlog was full (since start)
        self._retry_thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
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

        If the store fails (or earlier events still wait for it) the event is shown on WebSockets
        at once (the event's own JSON, which is returned) and joins the backlog; delivery is woken
        once the retry thread has stored it.
        """
        if self.store is None:
            message = event.to_json()
            self._fan_out([event.source, None], message)
            return message
        with self._write_lock:
            stored = False
            if self._backlog:  # behind the events already waiting: keep the order
                self._enqueue(event)
            else:
                try:
                    message = self.store.add(event)
                    stored = True
                except Exception as exc:
                    self._store_failed(event, exc)
                    self._enqueue(event)
        if not stored:  # shown now, delivered once the retry thread has stored it
            message = event.to_json()
            self._fan_out([event.source, None], message)
            return message
        self._announce(event, message)
        return message

    # -- the store backlog -----------------------------------------------------------------------
    def backlog(self) -> dict:
        """Readiness view: events waiting for the store, since when, the last error, drops.

        Lock-free (plain attribute reads): `/readyz` calls it on the event loop, and the write lock
        can be held for as long as a hung disk takes to answer."""
        pending = len(self._backlog)
        since, error = self._backlog_since, self._last_error
        return {"pending": pending, "since": since, "last_error": error if pending else None,
                "dropped": self.dropped}

    def retry_pending(self) -> bool:
        """Try to store the backlog, oldest first, stopping at the first failure; delivery is woken
        for each stored event (WebSockets showed it when it was published). Returns True when the
        backlog is empty. Any thread."""
        while True:
            with self._write_lock:
                if not self._backlog:
                    self._backlog_since = None
                    return True
                event = self._backlog[0]
                try:
                    message = self.store.add(event)  # idempotent by id: a retry never duplicates
                except Exception as exc:
                    self._store_failed(event, exc)
                    return False
                self._backlog.popleft()
                STORE_BACKLOG.set(len(self._backlog))
                if not self._backlog:
                    self._backlog_since = None
                    log.warning("alert store recovered: backlog written")
            self._notify_delivery()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the retry thread after one last attempt; logs what a backlog loses. Idempotent."""
        self._closed = True
        self._wake.set()
        thread = self._retry_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if self.store is not None and not self.retry_pending():
            with self._write_lock:
                lost = list(self._backlog)
            for event in lost:
                log.error("bus closing: event never stored, lost: %s", _event_json(event))

    def _store_failed(self, event: Any, exc: Exception) -> None:
        """Note a failed store write. Call with `_write_lock` held."""
        STORE_ERRORS.inc()
        self._last_error = f"{type(exc).__name__}: {exc}"[:300]
        if self._backlog_since is None:
            self._backlog_since = time.time()
        log.error("alert store failed for event %s (%s); kept in memory and retried (backlog %d)",
                  getattr(event, "id", "?"), self._last_error, len(self._backlog),
                  exc_info=not self._backlog)  # the traceback once per outage

    def _enqueue(self, event: Any) -> None:
        """Append to the backlog (call with `_write_lock` held); make room or drop when full."""
        if len(self._backlog) >= self.retry_queue_max:
            victim = next((e for e in self._backlog if getattr(e, "type", None) == "still_down"), None)
            if victim is not None:
                self._backlog.remove(victim)
            else:
                victim = event  # keep the oldest: the first events of the outage
            self.dropped += 1
            EVENTS_DROPPED.labels(getattr(victim, "type", "?")).inc()
            log.error("alert store backlog full (%d): event dropped, never stored nor delivered: %s",
                      self.retry_queue_max, _event_json(victim))
            if victim is event:
                return
        self._backlog.append(event)
        if self._backlog_since is None:
            self._backlog_since = time.time()
        STORE_BACKLOG.set(len(self._backlog))
        self._start_retry()

    def _start_retry(self) -> None:
        """Make sure a retry thread runs (call with `_write_lock` held)."""
        if self._closed or (self._retry_thread is not None and self._retry_thread.is_alive()):
            return
        self._retry_thread = threading.Thread(target=self._retry_loop, name="bus-store-retry", daemon=True)
        self._retry_thread.start()

    def _retry_loop(self) -> None:
        delay = self.retry_first_s
        while not self._closed:
            self._wake.wait(delay)
            if self._closed:
                return
            if self.retry_pending():
                with self._write_lock:  # an event queued between the drain and here?
                    if not self._backlog:
                        self._retry_thread = None
                        return
                delay = self.retry_first_s
            else:
                delay = min(delay * 2, self.retry_max_s)

    def _announce(self, event: Any, message: dict) -> None:
        """The event is stored: show it on WebSockets, then wake delivery."""
        self._fan_out([event.source, None], message)
        self._notify_delivery()

    def _notify_delivery(self) -> None:
        if self.delivery is not None:
            try:
                self.delivery.notify()
            except Exception:
                log.exception("delivery.notify failed")

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


def _event_json(event: Any) -> str:
    try:
        return json.dumps(event.to_json(), separators=(",", ":"))
    except Exception:
        return repr(getattr(event, "id", event))
