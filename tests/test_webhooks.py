"""Signed webhooks against a real local HTTP receiver: signatures checked with the Standard Webhooks
reference library, retries with backoff and Retry-After, 410 Gone, bounded retry time, in-order
delivery after an outage, and a slow endpoint that delays nothing else."""
from __future__ import annotations

import base64
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.delivery import Delivery, DeliveryMetrics
from service.delivery.mqtt import MqttSettings
from service.delivery.webhooks import (WebhookEndpoint, WebhookSender, WebhookSettings, decode_secret,
                                       retry_after_s, sign, verify)
from service.events import Event
from service.store import AlertStore

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def make_event(source: str = "cam1", type: str = "fall_alert", track: int = 1, frame: int = 10) -> Event:
    """A lifecycle event as the pipeline makes it; fall alerts carry a (small, fake) JPEG."""
    snapshot = b"\xff\xd8jpeg-" + uuid.uuid4().bytes * 16 + b"\xff\xd9" if type == "fall_alert" else None
    return Event(id=uuid.uuid4().hex, type=type, source=source, track_id=track, frame=frame,
                 started_frame=frame - 5, pts_s=frame / 25, started_pts_s=(frame - 5) / 25, at=time.time(),
                 box=(1.0, 2.0, 30.0, 40.0), time_down_s=0.2,
                 reason="recovered" if type == "fall_cleared" else None, snapshot=snapshot)


Behaviour = Callable[[int], tuple[int, dict[str, str]]]  # n-th request on this path -> status, headers


class Receiver:
    """A real HTTP server on loopback; each path answers as its behaviour says and records requests."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.release = threading.Event()  # lets hanging handlers go at the end
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.cond:
                    n = sum(1 for r in receiver.requests if r["path"] == self.path)
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                              "t": time.time()})
                    receiver.cond.notify_all()
                status, headers = receiver.behaviours.get(self.path, lambda n: (200, {}))(n)
                if status == 0:  # never answer
                    receiver.release.wait(30)
                    return
                if status < 0:  # -1: headers, -2: body trickled a byte every 50 ms until released
                    self.close_connection = True
                    head = (b"HTTP/1.1 200 OK\r\nx-pad: " if status == -1
                            else b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                    try:
                        self.wfile.write(head)
                        while not receiver.release.wait(0.05):
                            self.wfile.write(b"a")
                    except OSError:  # the client gave up and closed the connection
                        pass
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, path: str) -> list[dict]:
        with self.cond:
            return [r for r in self.requests if r["path"] == path]

    def wait_for(self, path: str, count: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.time() + timeout
        with self.cond:
            while len([r for r in self.requests if r["path"] == path]) < count:
                left = deadline - time.time()
                assert left > 0, f"{path}: {len(self.on(path))} of {count} requests"
                self.cond.wait(left)
        return self.on(path)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path: Path):
    s = AlertStore(tmp_path / "alerts.db", tmp_path / "snaps", retention=None)
    yield s
    s.close()


def hook_settings(*urls: str, **extra) -> WebhookSettings:
    values = {"timeout_s": 2.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5, **extra}
    return WebhookSettings(endpoints=[{"url": u, "secret": SECRET} for u in urls], **values)


def delivery_for(store: AlertStore, webhooks: WebhookSettings) -> Delivery:
    return Delivery(SimpleNamespace(mqtt=MqttSettings(pod_id="pod-w"), webhooks=webhooks), store)


def test_settings_refuse_bad_urls_and_secrets_clearly() -> None:
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        WebhookSettings(endpoints=[{"url": "ftp://example.org/hook", "secret": SECRET}])
    with pytest.raises(ValidationError, match="http:// or https://"):
        WebhookSettings(endpoints=[{"url": "example.org/hook", "secret": SECRET}])
    with pytest.raises(ValidationError, match="base64"):
        WebhookSettings(endpoints=[{"url": "https://example.org", "secret": "not base64 !"}])
    with pytest.raises(ValidationError, match="16 bytes"):
        WebhookSettings(endpoints=[{"url": "https://example.org", "secret": "whsec_YWJj"}])
    ok = WebhookSettings(endpoints=[{"url": "https://example.org/x", "secret": SECRET}])
    assert ok.endpoints[0].label == "example.org/x" and SECRET not in repr(ok)
    assert WebhookSettings().endpoints == []  # off until configured
    for model in (WebhookSettings, WebhookEndpoint):
        assert all(f.description for f in model.model_fields.values())


def test_signature_matches_the_reference_implementation() -> None:
    body = json.dumps({"id": "abc", "type": "fall_alert"}).encode()
    ts = int(time.time())
    ours = sign(decode_secret(SECRET), "abc", ts, body)
    theirs = Webhook(SECRET).sign("abc", datetime.fromtimestamp(ts, tz=timezone.utc), body.decode())
    assert ours == theirs
    headers = {"webhook-id": "abc", "webhook-timestamp": str(ts), "webhook-signature": ours}
    assert verify(decode_secret(SECRET), headers, body)
    assert not verify(decode_secret(SECRET), headers, body + b" ")
    assert not verify(decode_secret(SECRET), dict(headers, **{"webhook-timestamp": str(ts - 3600)}), body)


def test_verify_refuses_non_ascii_headers_instead_of_raising() -> None:
    key, body, ts = decode_secret(SECRET), b'{"id":"abc"}', int(time.time())
    headers = {"webhook-id": "abc", "webhook-timestamp": str(ts), "webhook-signature": sign(key, "abc", ts, body)}
    assert verify(key, headers, body)
    for name, value in [("webhook-signature", "v1,\u00e9t\u00e9"),
                        ("webhook-signature", headers["webhook-signature"][:-2] + "\u00fc="),
                        ("webhook-id", "ab\u00e7"),
                        ("webhook-timestamp", "".join(chr(0x660 + int(c)) for c in str(ts)))]:  # Arabic digits
        assert verify(key, dict(headers, **{name: value}), body) is False, name
    assert verify(key, {k: v for k, v in headers.items() if k != "webhook-signature"}, body) is False


def test_retry_after_parsing() -> None:
    assert retry_after_s("7", 0) == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10.0)
    assert retry_after_s("soon", 0) is None and retry_after_s(None, 0) is None


def test_event_delivered_signed_and_verifiable(receiver: Receiver, store: AlertStore) -> None:
    delivery = delivery_for(store, hook_settings(receiver.url + "/ok"))
    delivery.start()
    try:
        ev = make_event()
        store.add(ev)
        delivery.notify()
        (req,) = receiver.wait_for("/ok", 1)
        payload = Webhook(SECRET).verify(req["body"], req["headers"])  # raises if the signature is wrong
        assert req["headers"]["webhook-id"] == ev.id == payload["id"]
        assert {k: payload[k] for k in ev.to_json()} == ev.to_json() and payload["pod"] == "pod-w"
        assert req["headers"]["content-type"] == "application/json"
        tampered = dict(req["headers"], **{"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()})
        with pytest.raises(WebhookVerificationError):
            Webhook(SECRET).verify(req["body"], tampered)
        time.sleep(0.2)
        (d,) = store.deliveries(ev.id)
        assert d["attempts"] == 1 and d["last_status"] == 200 and d["delivered_at"] is not None
    finally:
        delivery.stop()


def test_500_twice_then_200_is_delivered_on_the_third_attempt(receiver: Receiver, store: AlertStore) -> None:
    receiver.behaviours["/flaky"] = lambda n: (500, {}) if n < 2 else (200, {})
    delivery = delivery_for(store, hook_settings(receiver.url + "/flaky"))
    delivery.start()
    try:
        ev = make_event()
        store.add(ev)
        delivery.notify()
        reqs = receiver.wait_for("/flaky", 3)
        assert {r["headers"]["webhook-id"] for r in reqs} == {ev.id}  # same id on every retry
        for r in reqs:
            Webhook(SECRET).verify(r["body"], r["headers"])
        gaps = [b["t"] - a["t"] for a, b in zip(reqs, reqs[1:])]
        assert all(g >= 0.04 for g in gaps), gaps  # backoff, not a hot loop
        time.sleep(0.3)
        (d,) = store.deliveries(ev.id)
        assert d["attempts"] == 3 and d["last_status"] == 200 and d["delivered_at"] is not None
        assert len(receiver.on("/flaky")) == 3
        stats = delivery.stats()["webhooks"][0]
        assert (stats["attempts"], stats["failed"], stats["delivered"]) == (3, 2, 1)
    finally:
        delivery.stop()


def test_retry_after_is_honoured(receiver: Receiver, store: AlertStore) -> None:
    receiver.behaviours["/busy"] = lambda n: (429, {"Retry-After": "1"}) if n == 0 else (200, {})
    delivery = delivery_for(store, hook_settings(receiver.url + "/busy"))
    delivery.start()
    try:
        store.add(make_event())
        first, second = receiver.wait_for("/busy", 2)
        assert second["t"] - first["t"] >= 0.95
    finally:
        delivery.stop()


def test_410_gone_disables_the_endpoint(receiver: Receiver, store: AlertStore) -> None:
    receiver.behaviours["/gone"] = lambda n: (410, {})
    delivery = delivery_for(store, hook_settings(receiver.url + "/gone", receiver.url + "/ok"))
    delivery.start()
    try:
        first = make_event()
        store.add(first)
        receiver.wait_for("/gone", 1)
        for _ in range(3):
            store.add(make_event())
        receiver.wait_for("/ok", 4)
        time.sleep(0.3)
        assert len(receiver.on("/gone")) == 1
        gone = [d for d in store.deliveries(first.id) if d["last_status"] == 410]
        assert gone and gone[0]["given_up_at"] is not None
        assert delivery.stats()["webhooks"][0]["disabled"] is True
    finally:
        delivery.stop()


def test_retries_are_bounded_in_time_then_the_next_event_goes(receiver: Receiver, store: AlertStore) -> None:
    receiver.behaviours["/down"] = lambda n: (503, {}) if n < 100 and not receiver.release.is_set() else (200, {})
    delivery = delivery_for(store, hook_settings(receiver.url + "/down", max_retry_s=1.0, backoff_max_s=0.2))
    delivery.start()
    try:
        doomed = make_event()
        store.add(doomed)
        receiver.wait_for("/down", 3)
        deadline = time.time() + 10
        while not (store.deliveries(doomed.id) and store.deliveries(doomed.id)[0]["given_up_at"]):
            assert time.time() < deadline, "never gave up"
            time.sleep(0.05)
        (d,) = store.deliveries(doomed.id)
        assert d["last_status"] == 503 and d["attempts"] >= 3 and "exhausted" in d["last_error"]
        assert d["given_up_at"] - d["first_attempt_at"] <= 1.5
        receiver.release.set()
        nxt = make_event()
        store.add(nxt)
        reqs = receiver.wait_for("/down", d["attempts"] + 1)
        assert reqs[-1]["headers"]["webhook-id"] == nxt.id
        text = "".join(f"{s.name} {s.labels} {s.value}\n" for m in DeliveryMetrics(store, delivery).collect()
                       for s in m.samples)
        assert "falldet_webhook_given_up_total {'endpoint': '127.0.0.1:" in text
    finally:
        delivery.stop()


def test_outage_then_recovery_delivers_in_order(receiver: Receiver, store: AlertStore) -> None:
    down = threading.Event()
    down.set()
    receiver.behaviours["/later"] = lambda n: (503, {}) if down.is_set() else (200, {})
    delivery = delivery_for(store, hook_settings(receiver.url + "/later"))
    delivery.start()
    try:
        made = [store.add(make_event(track=i, frame=10 + i))["id"] for i in range(6)]
        receiver.wait_for("/later", 3)
        down.clear()
        deadline = time.time() + 15
        while store.backlog()[delivery.webhooks[0].channel] > 0:
            assert time.time() < deadline
            time.sleep(0.05)
        ok = [r["headers"]["webhook-id"] for r in receiver.on("/later")]
        first_ok = [i for i in dict.fromkeys(ok)]  # order of first appearance
        assert first_ok == made  # in order; retries of the head repeat only its own id
        assert ok[-5:] == made[1:]  # the rest went once each
    finally:
        delivery.stop()


def test_slow_endpoint_delays_nothing_else(receiver: Receiver, store: AlertStore) -> None:
    receiver.behaviours["/hang"] = lambda n: (0, {})  # accepts, never answers
    delivery = delivery_for(store, hook_settings(receiver.url + "/hang", receiver.url + "/ok", timeout_s=3.0))
    delivery.start()
    try:
        store.add(make_event())  # the hanging endpoint now sits on this one for timeout_s
        receiver.wait_for("/hang", 1)
        receiver.wait_for("/ok", 1)
        receiver_t: list[float] = []
        for i in range(5):
            t0 = time.time()
            store.add(make_event(track=i))
            receiver_t.append(receiver.wait_for("/ok", i + 2)[-1]["t"] - t0)
        print(f"\nwith a hanging endpoint beside it: store -> other webhook "
              f"median {statistics.median(receiver_t) * 1000:.1f} ms, max {max(receiver_t) * 1000:.1f} ms")
        assert max(receiver_t) < 1.0  # far below the 3 s the other endpoint hangs
        assert len(receiver.on("/hang")) == 1  # stuck on its first event, alone
    finally:
        receiver.release.set()
        t = time.time()
        delivery.stop()
        assert time.time() - t < 6


@pytest.mark.parametrize("part", ["headers", "body"])
def test_answer_trickled_past_timeout_s_fails_the_attempt_and_is_retried(receiver: Receiver, store: AlertStore,
                                                                           part: str) -> None:
    """timeout_s bounds the whole attempt: a byte every 50 ms never lets a per-read timeout fire."""
    path = f"/trickle-{part}"
    receiver.behaviours[path] = lambda n: (-1 if part == "headers" else -2, {}) if n == 0 else (200, {})
    delivery = delivery_for(store, hook_settings(receiver.url + path, timeout_s=0.5))
    delivery.start()
    try:
        ev = make_event()
        store.add(ev)
        delivery.notify()
        first, second = receiver.wait_for(path, 2)  # without a deadline the first answer never ends
        assert second["t"] - first["t"] >= 0.45  # the first attempt ran to its deadline, then a retry
        deadline = time.time() + 10
        while not store.deliveries(ev.id)[0]["delivered_at"] and time.time() < deadline:
            time.sleep(0.05)
        (d,) = store.deliveries(ev.id)
        assert d["attempts"] == 2 and d["last_status"] == 200 and d["delivered_at"] is not None
        stats = delivery.stats()["webhooks"][0]
        assert (stats["attempts"], stats["failed"], stats["delivered"]) == (2, 1, 1)
    finally:
        delivery.stop()


def test_benchmark_store_to_webhook_latency(receiver: Receiver, store: AlertStore) -> None:
    """Prints confirmation (store.add) -> webhook receipt on loopback; the goal is p95 < 50 ms."""
    delivery = delivery_for(store, hook_settings(receiver.url + "/bench"))
    delivery.start()
    try:
        lat = []
        for i in range(40):
            t0 = time.time()
            store.add(make_event(track=i))
            delivery.notify()
            lat.append((receiver.wait_for("/bench", i + 1)[-1]["t"] - t0) * 1000)
        q = statistics.quantiles(lat, n=100)
        print(f"\nconfirmation -> webhook receipt: p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms "
              f"(goal p95 < 50 ms; n={len(lat)})")
    finally:
        delivery.stop()


def failing_handler():
    """(ids seen, an httpx MockTransport handler answering every POST with 500 after noting its id)."""
    import httpx

    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["webhook-id"])
        return httpx.Response(500)

    return calls, handler


def test_sender_step_reads_only_what_is_due(store: AlertStore) -> None:
    """Unit view of the head-of-line rule: a waiting head makes step() return the wait, sending nothing."""
    import httpx

    calls, handler = failing_handler()

    endpoint = WebhookEndpoint(url="http://hook.test/x", secret=SECRET)
    sender = WebhookSender(endpoint, hook_settings(backoff_initial_s=5, backoff_max_s=5), store,
                           transport=httpx.MockTransport(handler))
    store.register_channel(sender.channel)
    a, b = make_event(), make_event()
    store.add(a)
    store.add(b)
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        wait = sender.step(client)
        assert calls == [a.id] and 2.4 <= wait <= 5.0
        wait2 = sender.step(client)
        assert calls == [a.id] and 0 < wait2 <= wait  # b waits behind a


def test_webhook_back_after_a_long_absence_gets_no_stale_history(receiver: Receiver, store: AlertStore) -> None:
    """Configured again (or the service back) after longer than max_retry_s: old events are given up unsent."""
    settings = hook_settings(receiver.url + "/back", max_retry_s=1.0)
    first = delivery_for(store, settings)
    first.start()
    try:
        delivered = make_event()
        store.add(delivered)
        receiver.wait_for("/back", 1)
    finally:
        first.stop()
    stale = [store.add(make_event(track=i))["id"] for i in range(3)]  # the webhook is not configured meanwhile
    time.sleep(1.3)  # now older than max_retry_s: the receiver could no longer act on them
    fresh = make_event(track=9)
    store.add(fresh)
    again = delivery_for(store, settings)
    again.start()
    try:
        channel = again.webhooks[0].channel
        receiver.wait_for("/back", 2)
        deadline = time.time() + 10
        while store.backlog()[channel] > 0:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        assert [r["headers"]["webhook-id"] for r in receiver.on("/back")] == [delivered.id, fresh.id]
        for alert_id in stale:
            (d,) = store.deliveries(alert_id)
            assert d["given_up_at"] is not None and d["attempts"] == 0 and d["delivered_at"] is None
            assert "before its first attempt" in d["last_error"] and "max_retry_s" in d["last_error"]
        assert again.stats()["webhooks"][0]["given_up"] == 3
    finally:
        again.stop()


def test_overdue_retry_after_a_long_stop_is_given_up_unsent(store: AlertStore) -> None:
    """A retry that should have gone out long ago (the service was down) is not sent late."""
    import httpx

    calls, handler = failing_handler()

    endpoint = WebhookEndpoint(url="http://hook.test/late", secret=SECRET)
    sender = WebhookSender(endpoint, hook_settings(max_retry_s=0.5, backoff_initial_s=5, backoff_max_s=5), store)
    sender.LATE_GRACE_S = 0.2
    store.register_channel(sender.channel)
    a, b = make_event(), make_event()
    store.add(a)
    store.add(b)
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        wait = sender.step(client)
        assert calls == [a.id] and wait <= 0.5  # its last try is due on the deadline
        time.sleep(0.5 + 0.2 + 0.2)  # "the service was stopped" past the deadline and the grace
        assert sender.step(client) is None
    assert calls == [a.id]  # neither a's overdue retry nor b (never tried, too old) was sent
    (da,), (db,) = store.deliveries(a.id), store.deliveries(b.id)
    assert da["given_up_at"] and da["attempts"] == 1 and "overdue" in da["last_error"]
    assert db["given_up_at"] and db["attempts"] == 0 and "before its first attempt" in db["last_error"]
