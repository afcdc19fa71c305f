"""MQTT delivery: events, per-camera state and availability, as home-automation users expect.

Topics (`<prefix>` defaults to `falldet`, `<camera>` is the source id with anything outside
[A-Za-z0-9_-] replaced by `_`):
- `<prefix>/events`            every event of every pod as JSON (QoS 1, not retained), with `id` and `pod`;
- `<prefix>/<camera>/fall`     `ON` / `OFF`, retained: ON while that camera has an open fall (below);
- `<prefix>/available`         `online` / `offline`, retained; `offline` is also the last will
                               (the topic is a template: `{prefix}/{pod}/available` for several pods);
- `<prefix>/snapshots/<id>`    the event's JPEG (QoS 1), so other pods can mirror it;
- `<prefix>/acks`              acknowledgements made on any pod, so every pod's store converges;
- `<prefix>/reviews`           reviews (`{"id", "verdict": "fall"|"false_alarm"|"unsure", "by",
                               "comment", "at"}`) made on any pod; also a command topic: a client
                               publishing there reviews the alert's whole incident (latest wins);
- `<prefix>/clips`             a fall_alert's clip outcome once known (QoS 1, not retained): `{"id",
                               "source", "clip_status": "ready"|"failed"|..., "clip_url", "clip_error"}`
                               (the alert itself went out with `clip_status` `pending`);
- `<prefix>/<camera>/available` `online` / `offline`, retained: the camera's own availability
                               (`camera_offline` / `camera_online` events), in its discovery config;
- `homeassistant/binary_sensor/<prefix>/<camera>_fall/config`  retained discovery config (device
  class `safety`), sent again whenever Home Assistant announces `online` on `homeassistant/status`.

Guarantees: the sender reads undelivered events from the store in order and only hands them to
paho while connected; an event is marked delivered when the broker's PUBACK arrives. Events made
during an outage stay in the store and go out, in order, after the reconnect (paho's backoff).
paho resends what was in flight when the connection broke; a process crash between publish and
PUBACK resends from the store (at-least-once: receivers drop duplicates by `id`).

A PUBACK with a failure reason code: a permanent refusal (not authorized, topic name or payload
format invalid) gives the event up; any other (quota exceeded, server busy, implementation
specific...) is retried with backoff (`reconnect_min_s` doubling up to `reconnect_max_s`) until
`replay_max_age_s`, the head event holding back the later ones so the order stays. A refused ack is
retried with the same backoff, in memory (a restart retries it at once).

Within a step, events go out before acks: another pod must know an event before its ack arrives
(and the store keeps an ack that still comes first, see `AlertStore.apply_remote_ack`).

Camera state (`<prefix>/<camera>/fall`, what Home Assistant shows carers) is derived from the
store, never from memory (`AlertStore.open_falls`): ON while this pod's store holds, for that
camera, a `fall_alert` raised on this pod (origin NULL) that is not acknowledged (locally, or by
another pod over `<prefix>/acks`, early acks included) and that no `fall_cleared` with reason
`recovered` of the same run and track followed. A clear for `track_lost` (the person went out of
sight, e.g. behind a bed) or `source_ended` (camera removed, video ended, service stopped) keeps it
ON: the person may still be on the floor, so it stays ON until someone acknowledges the alert. It
survives restarts: every (re)connect republishes each camera's state. The state is recomputed
right after each event is published (counting only events already handed to the broker, so a
`fall_alert`'s ON never comes before the alert itself) and at every wake of the sender (acks wake
it; otherwise once a second), so an acknowledgement turns it OFF within about a second.

Several pods: MQTT v5 with a persistent session (`session_expiry_s`) and `noLocal` subscriptions;
events of other pods are mirrored into the local store (deduplicated by id there) and handed to
`on_remote` once each, for this pod's `WS /v1/events`.
"""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from service.store import ID_PATTERN, AlertStore, Pending

log = logging.getLogger(__name__)

CHANNEL = "mqtt"
# PUBACK reason codes (MQTT 5, 3.4.2.1) that no resend can fix; every other failure may pass later.
PERMANENT_REFUSALS = {0x87: "Not authorized", 0x90: "Topic Name invalid", 0x99: "Payload format invalid"}


def refusal_is_permanent(reason_code: int) -> bool:
    """Give up (True) or retry with backoff (False) after a PUBACK with this failure code."""
    return reason_code in PERMANENT_REFUSALS


def refusal_backoff_s(failures: int, min_s: float, max_s: float) -> float:
    """Delay before resending something the broker refused `failures` times: doubles, capped."""
    return min(max_s, min_s * 2 ** max(0, failures - 1))


def topic_segment(name: str) -> str:
    """A source id made safe for one topic level and for Home Assistant object ids."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def default_pod_id() -> str:
    """The host name (the pod name on Kubernetes), reduced to what topics and client ids accept."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64] or "falldet"


class MqttSettings(BaseModel):
    """MQTT delivery and the pod-to-pod event bus (`FALLDET_MQTT__...`); off while `host` is unset."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(None, description="Broker host name; None (the default) turns MQTT off.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    username: str | None = Field(None, description="Broker user name, if the broker asks for one.")
    password: SecretStr | None = Field(None, description="Broker password.")
    tls: bool = Field(False, description="Connect with TLS (server certificate checked).")
    ca_file: Path | None = Field(None, description="CA bundle for TLS; None: the system's CAs.")
    prefix: str = Field("falldet", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
                        description="First topic level(s) of everything this service publishes.")
    pod_id: str = Field(default_factory=default_pod_id, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                        description="Name of this service instance (default: host name, the pod name "
                                    "on Kubernetes); in every payload and in the MQTT client id.")
    availability_topic: str = Field("{prefix}/available",
                                    description="Retained online/offline topic and last will; "
                                                "{prefix} and {pod} are filled in.")
    keepalive_s: int = Field(30, ge=5, description="MQTT keepalive; the broker sends the will after 1.5x.")
    reconnect_min_s: int = Field(1, ge=1, description="First reconnect delay; doubles up to reconnect_max_s.")
    reconnect_max_s: int = Field(30, ge=1, description="Longest delay between reconnect attempts.")
    session_expiry_s: int = Field(3600, ge=0, description="How long the broker keeps this pod's session "
                                                          "(queued events of other pods) while it is away.")
    share_events: bool = Field(True, description="Subscribe to the events of other pods and relay them "
                                                 "to this pod's WS /v1/events (and mirror them in its store).")
    share_snapshots: bool = Field(True, description="Publish each snapshot on <prefix>/snapshots/<id> "
                                                    "so other pods can mirror it.")
    ha_discovery: bool = Field(True, description="Publish Home Assistant discovery for one binary_sensor "
                                                 "(device class safety) per camera.")
    ha_prefix: str = Field("homeassistant", description="Home Assistant discovery prefix.")
    replay_max_age_s: float = Field(86400.0, gt=0, description="Events older than this when the broker "
                                                               "comes back (or while it keeps refusing them "
                                                               "for a passing reason) are given up, not "
                                                               "published.")

    @property
    def enabled(self) -> bool:
        return self.host is not None


class MqttChannel:
    """One paho client (its own network thread) plus one sender thread that drains the store."""

    def __init__(self, settings: MqttSettings, store: AlertStore,
                 on_remote: Callable[[dict], None] | None = None) -> None:
        if not settings.enabled:
            raise ValueError("MQTT is not configured (FALLDET_MQTT__HOST is unset)")
        self.settings = settings
        self.store = store
        self.on_remote = on_remote
        self.prefix = settings.prefix
        self.pod_id = settings.pod_id
        self.availability_topic = settings.availability_topic.format(prefix=self.prefix, pod=self.pod_id)
        self.connected = False
        self.subscribed = False  # the broker acknowledged this connection's subscriptions
        self.counts: Counter[str] = Counter()
        self._client: mqtt.Client | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._announce = False
        self._cursor = 0  # highest seq handed to paho in this process
        self._inflight: OrderedDict[int, tuple] = OrderedDict()  # mid -> ("event", seq) | ("ack", id, at)
        self._acked: deque[tuple[int, bool, str, int]] = deque()  # (mid, ok, reason, code) from paho's thread
        self._ack_backoff: dict[str, tuple[int, float]] = {}  # refused ack id -> (refusals, not before)
        self._event_refusals: dict[int, int] = {}  # seq -> transient refusals so far
        self._sources: set[str] = set()
        self._state_seq: int | None = None  # state counts the events up to here (handed to paho)
        self._published_state: dict[str, str] = {}
        self._discovered: set[str] = set()
        self._early_snapshots: OrderedDict[str, bytes] = OrderedDict()  # remote snapshot before its event

    # ---------------------------------------------------------------- topics
    def events_topic(self) -> str:
        return f"{self.prefix}/events"

    def state_topic(self, source: str) -> str:
        return f"{self.prefix}/{topic_segment(source)}/fall"

    def camera_available_topic(self, source: str) -> str:
        return f"{self.prefix}/{topic_segment(source)}/available"

    def discovery_topic(self, source: str) -> str:
        node = topic_segment(self.prefix)
        return f"{self.settings.ha_prefix}/binary_sensor/{node}/{topic_segment(source)}_fall/config"

    def discovery_config(self, source: str) -> dict:
        cam, node = topic_segment(source), topic_segment(self.prefix)
        return {"name": "Fall", "unique_id": f"{node}_{cam}_fall",
                "device_class": "safety", "state_topic": self.state_topic(source),
                "payload_on": "ON", "payload_off": "OFF",
                # unavailable while the service is gone or the camera is offline (camera_offline)
                "availability": [{"topic": self.availability_topic}, {"topic": self.camera_available_topic(source)}],
                "availability_mode": "all",
                "payload_available": "online", "payload_not_available": "offline",
                "device": {"identifiers": [f"{node}_{cam}"], "name": f"Fall detector {source}",
                           "manufacturer": "falldet", "model": "video fall detection"}}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        s = self.settings
        self.store.register_channel(CHANNEL)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"falldet-{self.pod_id}",
                             protocol=mqtt.MQTTv5)
        if s.username is not None:
            client.username_pw_set(s.username, s.password.get_secret_value() if s.password else None)
        if s.tls:
            client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None)
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        self._client = client
        client.loop_start()  # paho's thread retries the first connection too
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        client = self._client
        if client is None:
            return
        if self.connected:  # a clean disconnect suppresses the will: say offline ourselves
            info = client.publish(self.availability_topic, "offline", qos=1, retain=True)
            deadline = time.monotonic() + timeout_s
            while self.connected and time.monotonic() < deadline:
                if self._is_acked(info.mid):
                    break
                time.sleep(0.01)
        self._settle()  # what was acknowledged is booked, so a restart does not resend it
        client.disconnect()
        client.loop_stop()

    def notify(self) -> None:
        self._wake.set()

    def set_sources(self, names: Iterable[str]) -> None:
        """Cameras to announce (discovery, state OFF) before they ever raise an event."""
        with self._lock:
            new = set(names) - self._sources
            self._sources |= new
        if new and self.connected:
            self._announce = True
            self._wake.set()

    # ---------------------------------------------------------------- paho callbacks (paho's thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s refused the connection: %s", self.settings.host, reason_code)
            return
        self.connected = True
        self.counts["connects"] += 1
        log.info("MQTT connected to %s:%s (session present: %s)", self.settings.host, self.settings.port,
                 flags.session_present)
        subs = []
        if self.settings.share_events:
            subs += [(self.events_topic(), SubscribeOptions(qos=1, noLocal=True)),
                     (f"{self.prefix}/acks", SubscribeOptions(qos=1, noLocal=True)),
                     (f"{self.prefix}/reviews", SubscribeOptions(qos=1, noLocal=True)),
                     (f"{self.prefix}/snapshots/+", SubscribeOptions(qos=1, noLocal=True))]
        if self.settings.ha_discovery:
            subs.append((f"{self.settings.ha_prefix}/status", SubscribeOptions(qos=1)))
        if subs:
            client.subscribe(subs)
        else:
            self.subscribed = True
        self._discovered.clear()  # a broker without persistence forgot the retained configs
        self._announce = True
        self._wake.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.warning("MQTT broker refused subscriptions: %s", failed)
        self.subscribed = not failed

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            log.warning("MQTT disconnected from %s: %s", self.settings.host, reason_code)
        self.connected = False
        self.subscribed = False

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.append((mid, not reason_code.is_failure, str(reason_code), int(reason_code.value)))
        self._wake.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle_message(message.topic, message.payload)
        except Exception:  # one bad message must not stop the network loop
            self.counts["remote_errors"] += 1
            log.exception("MQTT message on %s could not be handled", message.topic)

    def _handle_message(self, topic: str, payload: bytes) -> None:
        if topic == f"{self.settings.ha_prefix}/status":
            if payload == b"online":
                self._discovered.clear()
                self._announce = True
                self._wake.set()
            return
        if topic.startswith(f"{self.prefix}/snapshots/"):
            alert_id = topic.rsplit("/", 1)[1]
            if ID_PATTERN.match(alert_id) and not self.store.attach_snapshot(alert_id, payload):
                if self.store.get(alert_id) is None:  # it came before its event: keep it briefly
                    self._early_snapshots[alert_id] = payload
                    while len(self._early_snapshots) > 16:
                        self._early_snapshots.popitem(last=False)
            return
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("pod") == self.pod_id:
            return
        if topic == f"{self.prefix}/acks":
            if isinstance(data.get("id"), str) and isinstance(data.get("at"), (int, float)):
                if self.store.apply_remote_ack(data["id"], str(data.get("by") or ""), data["at"],
                                               data.get("comment")):
                    self._wake.set()  # the camera state may turn OFF: reconcile now, not in a second
            return
        if topic == f"{self.prefix}/reviews":
            self._apply_review(data)
            return
        if topic == self.events_topic():
            snapshot = self._early_snapshots.pop(str(data.get("id")), None)
            alert, inserted = self.store.add_remote(data, origin=str(data.get("pod") or "unknown"),
                                                    snapshot=snapshot)
            self.counts["remote_events" if inserted else "remote_duplicates"] += 1
            if inserted and self.on_remote is not None:
                self.on_remote(alert)

    # ---------------------------------------------------------------- sender thread
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.connected:
                    self._step()
                else:
                    self._settle()  # PUBACKs that came just before the connection broke
            except Exception:
                log.exception("MQTT sender step failed")
            self._wake.wait(1.0)

    def _publish(self, topic: str, payload: str | bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        assert self._client is not None
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def _step(self) -> None:
        self._settle()
        if self._state_seq is None:
            self._state_seq = self._initial_state_seq()
        if self._announce:
            self._announce = False
            self._announce_all()
        self._publish_events()  # events before acks: other pods must know an event before its ack
        self._publish_acks()
        self._publish_reviews()
        self._publish_clips()
        self._reconcile_states()
        self._settle()

    def _publish_events(self) -> None:
        in_flight = {e[1] for e in self._inflight.values() if e[0] == "event"}
        while self.connected and not self._stop.is_set():
            items = self.store.pending(CHANNEL, limit=100, after_seq=self._cursor)
            for item in items:
                if not self.connected:
                    return  # the rest stays in the store for the next connection
                if item.seq in in_flight:  # handed to paho already (a refused one is being retried)
                    self._cursor = max(self._cursor, item.seq)
                    continue
                if item.next_attempt_at is not None and item.next_attempt_at > time.time():
                    return  # refused before, waiting for its retry: later events wait behind it, in order
                self._send_event(item)
            if len(items) < 100:
                break

    def _send_event(self, item: Pending) -> None:
        self._cursor = item.seq
        # the state counts this event from now on (monotonic: a resend after a refusal changes nothing)
        self._state_seq = max(self._state_seq or 0, item.seq)
        if time.time() - item.created_at > self.settings.replay_max_age_s:
            error = ("expired while the broker kept refusing it" if item.seq in self._event_refusals
                     else "expired before the broker was back")
            self.store.record(CHANNEL, item.seq, "given_up", attempt=False, error=error)
            self._event_refusals.pop(item.seq, None)
            self.counts["expired"] += 1
            return
        if item.snapshot is not None and self.settings.share_snapshots:
            try:
                self._publish(f"{self.prefix}/snapshots/{item.id}", item.snapshot.read_bytes())
            except OSError:
                pass  # pruned meanwhile: the event still goes out
        if self.settings.ha_discovery and item.source not in self._discovered:
            self._discover(item.source)
        payload = dict(item.payload, pod=self.pod_id)
        info = self._publish(self.events_topic(), json.dumps(payload, separators=(",", ":")))
        self._inflight[info.mid] = ("event", item.seq)
        self.store.record(CHANNEL, item.seq, "pending")
        self.counts["published"] += 1
        if item.type in ("camera_offline", "camera_online"):
            self._publish(self.camera_available_topic(item.source),
                          "offline" if item.type == "camera_offline" else "online", retain=True)
        self._set_state(item.source, self._state(item.source))  # after the event message, never before

    def _settle(self) -> None:
        """Book the PUBACKs paho reported (delivered flags, ack-sent flags)."""
        while self._acked:
            mid, ok, reason, code = self._acked.popleft()
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue
            if entry[0] == "event":
                self._settle_event(entry[1], ok, reason, code)
            elif entry[0] == "clip":
                if ok:  # a refused one stays unsent in the store and is sent again at the next wake
                    self.store.mark_clip_sent(entry[1])
            elif entry[0] == "review":
                if ok:  # a refused one stays unsent in the store and is sent again at the next wake
                    self.store.mark_review_sent(entry[1], entry[2])
            elif entry[0] == "ack":
                if ok:
                    self._ack_backoff.pop(entry[1], None)
                    self.store.mark_ack_sent(entry[1], entry[2])
                else:  # stays ack_sent=0 in the store: resent after a backoff, not at every wake
                    n = self._ack_backoff.get(entry[1], (0, 0.0))[0] + 1
                    delay = refusal_backoff_s(n, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
                    self._ack_backoff[entry[1]] = (n, time.monotonic() + delay)
                    self.counts["ack_refused"] += 1
                    (log.warning if n == 1 else log.debug)(
                        "MQTT broker refused the ack of %s (%s, %d times): retry in %.0f s", entry[1], reason, n, delay)

    def _settle_event(self, seq: int, ok: bool, reason: str, code: int) -> None:
        if ok:
            self.store.record(CHANNEL, seq, "delivered", attempt=False)
            self._event_refusals.pop(seq, None)
            self.counts["delivered"] += 1
            return
        self.counts["refused"] += 1
        if refusal_is_permanent(code):
            self.store.record(CHANNEL, seq, "given_up", attempt=False, error=f"broker refused: {reason}")
            self._event_refusals.pop(seq, None)
            log.warning("MQTT broker refused event seq %d for good: %s", seq, reason)
            return
        n = self._event_refusals.get(seq, 0) + 1
        self._event_refusals[seq] = n
        delay = refusal_backoff_s(n, self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        self.store.record(CHANNEL, seq, "pending", attempt=False, error=f"broker refused: {reason}",
                          next_attempt_at=time.time() + delay)
        self._cursor = min(self._cursor, seq - 1)  # read it again once due (in-flight later ones are skipped)
        (log.warning if n == 1 else log.debug)(
            "MQTT broker refused event seq %d (%s, %d times): retry in %.0f s", seq, reason, n, delay)

    def _is_acked(self, mid: int) -> bool:
        return any(entry[0] == mid for entry in list(self._acked))

    def _publish_acks(self) -> None:
        if not self.settings.share_events:
            return
        in_flight = {e[1] for e in self._inflight.values() if e[0] == "ack"}
        now = time.monotonic()
        for ack in self.store.pending_acks():
            if ack["id"] in in_flight or not self.connected:
                continue
            if self._ack_backoff.get(ack["id"], (0, 0.0))[1] > now:
                continue  # refused before: wait for its backoff
            info = self._publish(f"{self.prefix}/acks", json.dumps(dict(ack, pod=self.pod_id)))
            self._inflight[info.mid] = ("ack", ack["id"], ack["at"])

    def _apply_review(self, data: dict) -> None:
        """A review from another pod or a command (`{"id", "verdict", "by"[, "comment", "at"]}`)."""
        verdict, alert_id = data.get("verdict"), data.get("id")
        if not isinstance(alert_id, str) or verdict not in ("fall", "false_alarm", "unsure"):
            log.warning("MQTT review ignored: it needs an alert 'id' and a verdict fall|false_alarm|unsure")
            return
        at = data.get("at") if isinstance(data.get("at"), (int, float)) else None
        comment = data.get("comment") if isinstance(data.get("comment"), str) else None
        if self.store.review(alert_id, verdict, str(data.get("by") or "mqtt")[:100], comment and comment[:1000],
                             at=at, shared=True) is None:
            log.warning("MQTT review of an unknown alert %s ignored", alert_id)

    def _publish_reviews(self) -> None:
        """Local reviews go to `<prefix>/reviews`, so every pod's store shows them."""
        if not self.settings.share_events:
            return
        in_flight = {(e[1], e[2]) for e in self._inflight.values() if e[0] == "review"}
        for review in self.store.pending_reviews():
            if (review["id"], review["at"]) in in_flight or not self.connected:
                continue
            info = self._publish(f"{self.prefix}/reviews", json.dumps(dict(review, pod=self.pod_id)))
            self._inflight[info.mid] = ("review", review["id"], review["at"])

    def _publish_clips(self) -> None:
        """Clip outcomes of alerts already handed to the broker (an outcome never precedes its alert)."""
        in_flight = {e[1] for e in self._inflight.values() if e[0] == "clip"}
        for update in self.store.pending_clip_updates():
            if update["seq"] > (self._state_seq or 0) or not self.connected:
                break
            if update["id"] in in_flight:
                continue
            payload = {k: update[k] for k in ("id", "source", "clip_status", "clip_url", "clip_error")}
            info = self._publish(f"{self.prefix}/clips", json.dumps(dict(payload, pod=self.pod_id)))
            self._inflight[info.mid] = ("clip", update["id"])

    # ---------------------------------------------------------------- camera state
    def _initial_state_seq(self) -> int:
        """Events this process will still hand to paho are not counted yet: all before the first."""
        top = self.store.last_seq()
        first = self.store.pending(CHANNEL, limit=1)
        return min(top, first[0].seq - 1) if first else top

    def _open_falls(self, source: str | None = None) -> dict[str, list[str]]:
        return self.store.open_falls(source, upto_seq=self._state_seq if self._state_seq is not None else 0)

    def _state(self, source: str) -> str:
        """ON while the store holds an open fall of that camera (see the module docstring)."""
        return "ON" if self._open_falls(source) else "OFF"

    def _set_state(self, source: str, state: str) -> None:
        if self._published_state.get(source) != state:
            self._publish(self.state_topic(source), state, retain=True)
            self._published_state[source] = state

    def _reconcile_states(self) -> None:
        """Acks (local or remote) turn a camera OFF; one store query for every camera."""
        down = self._open_falls()
        for source in sorted(set(self._published_state) | set(down)):
            self._set_state(source, "ON" if source in down else "OFF")

    def _discover(self, source: str) -> None:
        self._publish(self.discovery_topic(source), json.dumps(self.discovery_config(source)), retain=True)
        self._discovered.add(source)

    def _announce_all(self) -> None:
        """On (re)connect: online, discovery, and every camera's current state (retained)."""
        self._publish(self.availability_topic, "online", retain=True)
        with self._lock:
            sources = set(self._sources) | set(self.store.sources())
        down = self._open_falls()
        available = self.store.camera_availability(upto_seq=self._state_seq or 0)
        for source in sorted(sources):
            if self.settings.ha_discovery and source not in self._discovered:
                self._discover(source)
            self._publish(self.camera_available_topic(source), available.get(source, "online"), retain=True)
            state = "ON" if source in down else "OFF"
            self._publish(self.state_topic(source), state, retain=True)
            self._published_state[source] = state

    def stats(self) -> dict:
        return {"connected": self.connected, "inflight": len(self._inflight),
                **{k: self.counts[k] for k in ("connects", "published", "delivered", "refused", "ack_refused",
                                               "expired", "remote_events", "remote_duplicates",
                                               "remote_errors")}}
