"""Signed webhooks: every event of this pod POSTed to each configured URL, retried from the store.

Signing follows the Standard Webhooks specification (https://www.standardwebhooks.com): headers
`webhook-id` (the event id, the same on every retry, so receivers drop duplicates),
`webhook-timestamp` (unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256
of "{id}.{timestamp}.{body}">` keyed with the base64-decoded secret (`whsec_...`).

Each endpoint has its own thread and reads its undelivered events from the store in order: a slow
or dead endpoint only delays itself. A failed attempt is retried with exponential backoff and
jitter (or after `Retry-After` when the endpoint sends one) until `max_retry_s` after the event was
stored; 410 Gone disables the endpoint until restart, as the specification asks. One attempt
(connect, TLS, sending, the whole answer) has `timeout_s` in all: every socket operation of the
sender's client shares that deadline, so an endpoint that trickles its answer byte by byte fails
the attempt (and it is retried) instead of holding the sender.

An event is only ever sent while the receiver can still act on it: one that is already older than
`max_retry_s` before its first attempt (a webhook configured again after a long absence, the service
back after a long outage), or whose last retry is long overdue, is given up without being sent.
"""
from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import logging
import random
import ssl
import threading
import time
import typing
from collections import Counter
from urllib.parse import urlsplit

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from service.store import AlertStore, Pending

log = logging.getLogger(__name__)
SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The signing key of a Standard Webhooks secret: base64 after an optional `whsec_` prefix."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret must be base64 (optionally prefixed 'whsec_')") from exc
    if len(key) < 16:
        raise ValueError("webhook secret must decode to at least 16 bytes (24-64 recommended)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` (Standard Webhooks)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes, tolerance_s: float = 300.0) -> bool:
    """Receiver side, for docs and tools: signature matches and the timestamp is recent."""
    h = {k.lower(): v for k, v in headers.items()}
    msg_id, ts_text, signatures = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    # Anything but ASCII text is forged or broken (and compare_digest raises TypeError on non-ASCII str).
    if not all(isinstance(v, str) and v.isascii() for v in (msg_id, ts_text, signatures)):
        return False
    if not ts_text.isdigit():
        return False
    ts = int(ts_text)
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = sign(key, msg_id, ts, body).encode()
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures.split())


class _Deadline(threading.local):
    """The end (time.monotonic()) of the attempt under way on this thread; None: no overall limit."""

    at: float | None = None

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        """The timeout for one socket operation: what is left of the attempt, at most `timeout`."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("webhook attempt ran past timeout_s")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.left(timeout, httpcore.ConnectTimeout)), self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with every connection bound to the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(
            host, port, self._deadline.left(timeout, httpcore.ConnectTimeout), local_address, socket_options),
            self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(
            path, self._deadline.left(timeout, httpcore.ConnectTimeout), socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def bound_attempts(client: httpx.Client, deadline: _Deadline) -> int:
    """Route the sockets of `client`'s own transports (direct and proxies) through `deadline`.

    httpx (pinned 0.28) sets timeouts per socket operation only, so a slow answer could hold a
    POST forever; httpcore pools take a network backend, which is where one deadline fits. This
    reaches into httpx's `_transport`/`_mounts` and the pools' `_network_backend`, so it returns
    how many pools it bound: 0 with a default transport means an httpx upgrade moved them (a test
    catches that). Custom transports (tests' MockTransport) are left as they are."""
    bound = 0
    for transport in (getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend, deadline)
            bound += 1
    return bound


class WebhookEndpoint(BaseModel):
    """One receiver of events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http:// or https:// URL that receives every event as a signed JSON POST.")
    secret: SecretStr = Field(description="Signing secret as in Standard Webhooks: 'whsec_' + base64 of "
                                          "24-64 random bytes (e.g. `python -c \"import os,base64;"
                                          "print('whsec_'+base64.b64encode(os.urandom(32)).decode())\"`).")
    name: str | None = Field(None, description="Label in logs and metrics; default: the URL's host and path.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook URL must be an http:// or https:// URL with a host, got {url!r}")
        return url

    @field_validator("secret")
    @classmethod
    def _valid_secret(cls, secret: SecretStr) -> SecretStr:
        decode_secret(secret.get_secret_value())
        return secret

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    @property
    def channel(self) -> str:
        """Store channel name: stable across restarts and reordering, no secret in it."""
        return "webhook:" + hashlib.sha256(self.url.encode()).hexdigest()[:16]


class WebhookSettings(BaseModel):
    """Webhook delivery (`FALLDET_WEBHOOKS__...`); off while `endpoints` is empty."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[WebhookEndpoint] = Field(
        default_factory=list, description='Receivers, e.g. FALLDET_WEBHOOKS__ENDPOINTS=\'[{"url": '
                                          '"https://example.org/hook", "secret": "whsec_..."}]\'.')
    timeout_s: float = Field(5.0, gt=0, description="Seconds one POST may take in all (connect, send, the "
                                                    "whole response); a slower attempt fails and is retried.")
    max_retry_s: float = Field(3600.0, gt=0, description="Retry an event for at most this long after it "
                                                        "was stored, then give it up (bounded retries); an "
                                                        "event older than this before its first try is "
                                                        "given up without being sent.")
    backoff_initial_s: float = Field(1.0, gt=0, description="Delay before the first retry; doubles each time.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest delay between two attempts (before jitter).")


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds asked by a `Retry-After` header (delta-seconds or HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


def backoff_s(attempts: int, settings: WebhookSettings, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(n-1), capped, times a factor in [0.5, 1)."""
    base = min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** max(0, attempts - 1))
    return base * rng.uniform(0.5, 1.0)


class WebhookSender:
    """Delivers the store's events to one endpoint from its own thread, in order."""

    BATCH = 20
    LATE_GRACE_S = 60.0  # a retry scheduled on the deadline still goes out if at most this late

    def __init__(self, endpoint: WebhookEndpoint, settings: WebhookSettings, store: AlertStore,
                 pod_id: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.store = store
        self.pod_id = pod_id
        self._key = decode_secret(endpoint.secret.get_secret_value())
        self._transport = transport
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        self._deadline = _Deadline()
        self._rng = random.Random()
        self.disabled = False
        self.counts: Counter[str] = Counter()  # attempts, delivered, failed, given_up
        self.last_status: int | None = None

    @property
    def channel(self) -> str:
        return self.endpoint.channel

    def start(self) -> None:
        self.store.register_channel(self.channel)
        # Made here, not in the thread: building its TLS context takes tens of ms, not on the first alert.
        self._client = httpx.Client(timeout=self.settings.timeout_s, transport=self._transport,
                                    headers={"user-agent": "falldet-webhooks/1"})
        if not bound_attempts(self._client, self._deadline) and self._transport is None:
            log.warning("webhook %s: cannot bound a whole attempt to timeout_s with this httpx; only each "
                        "connect/read/write is", self.endpoint.label)
        self._thread = threading.Thread(target=self._run, name=f"webhook-{self.endpoint.label}", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, wait: bool = True) -> None:
        """Ask the thread to end (a POST in progress finishes or times out first); wait for it."""
        self._stop.set()
        self._wake.set()
        if wait and self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 2)

    def _run(self) -> None:
        with self._client as client:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    delay = self.step(client)
                except Exception:  # store trouble: retry later, never kill the sender
                    log.exception("webhook sender %s failed a step", self.endpoint.label)
                    delay = 5.0
                if self._stop.is_set():
                    break
                self._wake.wait(delay)

    def step(self, client: httpx.Client) -> float | None:
        """Send what is due, oldest first; return seconds until the next due attempt (None: idle)."""
        if self.disabled:
            return None
        items = self.store.pending(self.channel, limit=self.BATCH)
        for item in items:
            if self._stop.is_set():
                return 0.0
            now = time.time()
            if item.next_attempt_at is not None and item.next_attempt_at > now:
                return item.next_attempt_at - now  # head of line waits; later events keep their order
            stale = self._stale(item, now)
            if stale is not None:
                self._give_up(item, None, stale, attempted=False, quiet=True)
                continue
            retry_in = self._attempt(client, item)
            if retry_in is not None:
                return retry_in
            if self.disabled:
                return None
        return 0.0 if len(items) == self.BATCH else None

    def _stale(self, item: Pending, now: float) -> str | None:
        """Why `item` is too old to send now, or None. Never sends history the receiver cannot use."""
        age = now - item.created_at
        if age <= self.settings.max_retry_s:
            return None
        if item.attempts == 0:
            return (f"not sent: {age:.0f} s old before its first attempt, over max_retry_s "
                    f"({self.settings.max_retry_s:g} s)")
        deadline = item.created_at + self.settings.max_retry_s
        due = item.next_attempt_at if item.next_attempt_at is not None else deadline
        if now - max(due, deadline) > self.LATE_GRACE_S:
            return (f"not sent again: its last retry is {now - max(due, deadline):.0f} s overdue, past "
                    f"max_retry_s ({self.settings.max_retry_s:g} s); retry time exhausted")
        return None

    def _body(self, item: Pending) -> bytes:
        payload = dict(item.payload)
        if self.pod_id is not None:
            payload["pod"] = self.pod_id
        return json.dumps(payload, separators=(",", ":")).encode()

    def _attempt(self, client: httpx.Client, item: Pending) -> float | None:
        """One POST; books the outcome. Returns the retry delay, or None when the item is settled."""
        deadline = item.created_at + self.settings.max_retry_s  # every event gets at least one try
        now = time.time()
        body = self._body(item)
        ts = int(now)
        headers = {"content-type": "application/json", "webhook-id": item.id,
                   "webhook-timestamp": str(ts), "webhook-signature": sign(self._key, item.id, ts, body)}
        status, error, wait_hint = None, None, None
        self.counts["attempts"] += 1
        self._deadline.at = time.monotonic() + self.settings.timeout_s  # the whole attempt, answer included
        try:
            response = client.post(self.endpoint.url, content=body, headers=headers)
            status = response.status_code
            wait_hint = retry_after_s(response.headers.get("retry-after"), time.time())
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self._deadline.at = None
        self.last_status = status
        if status is not None and 200 <= status < 300:
            self.store.record(self.channel, item.seq, "delivered", status=status)
            self.counts["delivered"] += 1
            return None
        self.counts["failed"] += 1
        if status == 410:  # Gone: the receiver asks us to stop (Standard Webhooks)
            self._give_up(item, status, "410 Gone: endpoint disabled until restart", attempted=True)
            self.disabled = True
            log.warning("webhook %s answered 410 Gone: disabled", self.endpoint.label)
            return None
        error = error or f"HTTP {status}"
        if time.time() >= deadline:
            self._give_up(item, status, f"{error}; retry time exhausted", attempted=True)
            return None
        delay = backoff_s(item.attempts + 1, self.settings, self._rng)
        if wait_hint is not None:
            delay = max(delay, wait_hint)
        next_at = min(time.time() + delay, deadline)  # the last try lands on the deadline
        self.store.record(self.channel, item.seq, "pending", status=status, error=error, next_attempt_at=next_at)
        log.info("webhook %s: event %s failed (%s), retry in %.1f s", self.endpoint.label, item.id, error,
                 next_at - time.time())
        return max(0.0, next_at - time.time())

    def _give_up(self, item: Pending, status: int | None, error: str, attempted: bool,
                 quiet: bool = False) -> None:
        self.store.record(self.channel, item.seq, "given_up", attempt=attempted,
                          status=status, error=error)
        self.counts["given_up"] += 1
        # quiet: stale history can be thousands of events after a long absence: one line each at debug
        (log.debug if quiet else log.warning)("webhook %s gave up event %s: %s", self.endpoint.label,
                                              item.id, error)

    def stats(self) -> dict:
        return {"endpoint": self.endpoint.label, "channel": self.channel, "disabled": self.disabled,
                "last_status": self.last_status, **{k: self.counts[k] for k in
                                                    ("attempts", "delivered", "failed", "given_up")}}
