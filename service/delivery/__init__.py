"""Alert delivery beyond WebSocket: MQTT (also the bus between pods) and signed webhooks.

Every sender reads the events it has not delivered yet from the alert store, in store order, so
nothing depends on memory: events raised while a receiver is down wait in the store, and a restart
resumes where the last one stopped. `notify()` only wakes the senders; it never blocks the caller.
Both channels are off until configured (`FALLDET_MQTT__HOST`, `FALLDET_WEBHOOKS__ENDPOINTS`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.delivery.mqtt import MqttChannel, MqttSettings
from service.delivery.webhooks import WebhookSender, WebhookSettings
from service.store import AlertStore

__all__ = ["Delivery", "DeliveryMetrics", "MqttSettings", "WebhookSettings"]
log = logging.getLogger(__name__)


class DeliveryConfig(Protocol):
    """The part of the service settings delivery reads (`Settings.mqtt`, `Settings.webhooks`)."""

    mqtt: MqttSettings
    webhooks: WebhookSettings


class Delivery:
    """Owns the MQTT channel and one webhook sender per endpoint; see the module docstring."""

    def __init__(self, settings: DeliveryConfig, store: AlertStore) -> None:
        self.store = store
        self._callbacks: list[Callable[[dict], None]] = []
        self.mqtt = MqttChannel(settings.mqtt, store, self._remote) if settings.mqtt.enabled else None
        pod = settings.mqtt.pod_id
        self.webhooks = [WebhookSender(ep, settings.webhooks, store, pod_id=pod)
                         for ep in settings.webhooks.endpoints]
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.mqtt is not None:
            self.mqtt.start()
        for sender in self.webhooks:
            sender.start()
        self.store.add_listener(self.notify)  # acks (and adds) wake the senders too
        log.info("delivery started: mqtt=%s, webhooks=%d", self.mqtt is not None, len(self.webhooks))

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for sender in self.webhooks:  # all asked at once: one hanging endpoint, one timeout
            sender.stop(wait=False)
        if self.mqtt is not None:
            self.mqtt.stop()
        for sender in self.webhooks:
            sender.stop()

    def notify(self) -> None:
        """New events (or acks) are in the store: wake every sender. Never blocks."""
        if self.mqtt is not None:
            self.mqtt.notify()
        for sender in self.webhooks:
            sender.notify()

    def on_remote_event(self, callback: Callable[[dict], None]) -> None:
        """`callback(alert_json)` once per event another pod published (called from MQTT's thread)."""
        self._callbacks.append(callback)

    def set_sources(self, names: Iterable[str]) -> None:
        """Optional: announce cameras (HA discovery, state OFF) before their first event."""
        if self.mqtt is not None:
            self.mqtt.set_sources(names)

    def _remote(self, alert: dict) -> None:
        for callback in list(self._callbacks):
            try:
                callback(alert)
            except Exception:
                log.exception("remote event callback failed")

    def stats(self) -> dict:
        return {"mqtt": self.mqtt.stats() if self.mqtt is not None else None,
                "webhooks": [s.stats() for s in self.webhooks], "backlog": self.store.backlog()}


class DeliveryMetrics(Collector):
    """Prometheus collector over the store and delivery counters (register it on the app's registry)."""

    def __init__(self, store: AlertStore, delivery: Delivery | None = None) -> None:
        self.store = store
        self.delivery = delivery

    def collect(self):
        s = self.store.stats()
        yield GaugeMetricFamily("falldet_alerts_stored", "Alerts in the store", value=s["events"])
        yield GaugeMetricFamily("falldet_alerts_open", "Alerts not acknowledged", value=s["open"])
        yield GaugeMetricFamily("falldet_snapshot_bytes", "Bytes of snapshots on disk", value=s["snapshot_bytes"])
        yield CounterMetricFamily("falldet_snapshots_pruned", "Snapshots deleted by retention",
                                  value=s["pruned_snapshots"])
        yield CounterMetricFamily("falldet_snapshot_pruned_bytes", "Snapshot bytes deleted by retention",
                                  value=s["pruned_snapshot_bytes"])
        yield CounterMetricFamily("falldet_alerts_pruned", "Alert rows deleted by retention",
                                  value=s["pruned_events"])
        if self.delivery is None:
            return
        backlog = GaugeMetricFamily("falldet_delivery_backlog", "Events a channel still has to deliver",
                                    labels=["channel"])
        names = {s.channel: f"webhook {s.endpoint.label}" for s in self.delivery.webhooks}
        for channel, n in self.store.backlog().items():
            backlog.add_metric([names.get(channel, channel)], n)
        yield backlog
        counters = {k: CounterMetricFamily(f"falldet_webhook_{k}", f"Webhook {k.replace('_', ' ')}",
                                           labels=["endpoint"])
                    for k in ("attempts", "delivered", "failed", "given_up")}
        last = GaugeMetricFamily("falldet_webhook_last_status", "HTTP status of the last attempt (0: none)",
                                 labels=["endpoint"])
        for sender in self.delivery.webhooks:
            st = sender.stats()
            for k, family in counters.items():
                family.add_metric([st["endpoint"]], st[k])
            last.add_metric([st["endpoint"]], st["last_status"] or 0)
        yield from counters.values()
        yield last
        if self.delivery.mqtt is not None:
            m = self.delivery.mqtt.stats()
            yield GaugeMetricFamily("falldet_mqtt_connected", "1 while connected to the broker",
                                    value=int(m["connected"]))
            for k in ("published", "delivered", "refused", "ack_refused", "expired", "remote_events",
                      "remote_duplicates"):
                yield CounterMetricFamily(f"falldet_mqtt_{k}", f"MQTT {k.replace('_', ' ')}", value=m[k])
