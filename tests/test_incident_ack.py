"""Issue 20, item 3: acknowledging a fall acknowledges the incident, over REST, WebSocket and MQTT.

Every event of one fall carries `fall_id` (its `fall_alert`'s id). An ack of any of them covers the
others, and later events of that fall are stored (and announced) already acknowledged; another
fall, even of the same camera, stays open. Over MQTT, an ack made on one pod covers the whole fall
on the pod that raised it, whose camera state turns OFF.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from service.events import Event, FallRules
from service.store import AlertStore
from test_events import Track

BOX = (1.0, 2.0, 30.0, 40.0)


def fall_events(source: str = "cam1", track: int = 1, onset: int = 100, still: int = 2) -> list[Event]:
    """One fall as FallRules raises it: fall_alert, `still` still_downs, and (last) fall_cleared."""
    rules = FallRules(source, confirm_s=1.0, still_down_s=3.0, still_down_every_s=1.0)
    t = Track(rules, track_id=track)
    t.until(onset - 1)
    t.set("fall", onset)
    t.until(onset + 30 + 10 * (still - 1) + 5)
    t.set("stand", onset + 30 + 10 * still)
    t.until(onset + 30 + 10 * still + 1)
    return t.events


def test_every_event_of_a_fall_carries_its_alerts_id() -> None:
    events = fall_events(still=2)
    assert [e.type for e in events] == ["fall_alert", "still_down", "still_down", "fall_cleared"]
    alert = events[0]
    assert {e.fall_id for e in events} == {alert.id}
    assert all(e.to_json()["fall_id"] == alert.id for e in events)
    other = fall_events(track=2)
    assert other[0].fall_id != alert.fall_id


def _open_ids(client, auth) -> set[str]:
    items = client.get("/v1/alerts", params={"state": "open", "limit": 500}, headers=auth).json()["items"]
    return {a["id"] for a in items}


def test_an_ack_over_rest_covers_the_fall_and_its_later_events(tiny_client, auth) -> None:
    bus = tiny_client.app.state.bus
    fall = fall_events(track=1, still=2)  # alert, still_down, still_down, cleared
    other = fall_events(track=2, still=1)  # another person of the same camera
    alert, first_still, later_still, cleared = fall
    bus.publish_event(alert)
    bus.publish_event(first_still)
    bus.publish_event(other[0])
    assert _open_ids(tiny_client, auth) == {alert.id, first_still.id, other[0].id}

    r = tiny_client.post(f"/v1/alerts/{alert.id}/ack", json={"by": "ann", "comment": "on my way"}, headers=auth)
    assert r.status_code == 200 and r.json()["acked"]
    assert _open_ids(tiny_client, auth) == {other[0].id}  # only the other person's fall
    still = tiny_client.get(f"/v1/alerts/{first_still.id}", headers=auth).json()
    assert still["acked"] and still["ack"]["by"] == "ann" and still["ack"]["comment"] == "on my way"
    assert still["ack"]["at"] == r.json()["ack"]["at"]

    # later events of the same fall arrive acknowledged, on the WebSocket too
    with tiny_client.websocket_connect("/v1/events", headers=auth) as ws:
        bus.publish_event(later_still)
        bus.publish_event(cleared)
        bus.publish_event(other[1])  # the other fall's clear: not acknowledged
        got = {m["id"]: m for m in (ws.receive_json() for _ in range(3))}
    assert got[later_still.id]["acked"] and got[later_still.id]["ack"]["by"] == "ann"
    assert got[cleared.id]["acked"]
    assert not got[other[1].id]["acked"]
    assert _open_ids(tiny_client, auth) == {other[0].id, other[1].id}


def test_acknowledging_a_follow_up_event_acknowledges_the_alert(tiny_client, auth) -> None:
    bus = tiny_client.app.state.bus
    alert, still, *_ = fall_events(still=1)
    bus.publish_event(alert)
    bus.publish_event(still)
    assert tiny_client.post(f"/v1/alerts/{still.id}/ack", json={"by": "bo"}, headers=auth).status_code == 200
    assert tiny_client.get(f"/v1/alerts/{alert.id}", headers=auth).json()["ack"]["by"] == "bo"
    assert _open_ids(tiny_client, auth) == set()


def test_events_stored_before_fall_id_are_grouped_by_run_track_and_onset(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    try:
        events = fall_events(still=1) + fall_events(onset=400, still=1)  # two falls of one track
        for e in events:
            e.fall_id = None  # as stored by an older version
            store.add(e)
        store.ack(events[0].id, "cy", None)
        acked = {e.id for e in events if store.get(e.id)["acked"]}
        assert acked == {e.id for e in events[:3]}  # the first fall, not the second
    finally:
        store.close()


# ------------------------------------------------------------------ MQTT: two pods

def test_an_ack_on_another_pod_covers_the_fall_where_it_was_raised(tmp_path: Path) -> None:
    from test_mqtt import MOSQUITTO, Broker, settings, wait_until

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    from service.delivery import Delivery

    broker = Broker(tmp_path)
    broker.start()
    store_a = AlertStore(tmp_path / "a.db", tmp_path / "snaps_a", retention=None)
    store_b = AlertStore(tmp_path / "b.db", tmp_path / "snaps_b", retention=None)
    pod_a = Delivery(settings(broker.port, "pod-a"), store_a)
    pod_b = Delivery(settings(broker.port, "pod-b"), store_b)
    pod_a.start()
    pod_b.start()
    try:
        wait_until(lambda: pod_a.mqtt.subscribed and pod_b.mqtt.subscribed)
        alert, still, later, cleared = fall_events(source="cam-b", still=2)
        for e in (alert, still):
            e.at = time.time()
            store_b.add(e)
        pod_b.notify()
        wait_until(lambda: store_a.get(still.id) is not None)
        state = broker_state(broker, "falldet/cam-b/fall")
        wait_until(lambda: state() == "ON")

        store_a.ack(alert.id, "ann", None)  # the operator of pod A acknowledges the fall
        assert store_a.get(still.id)["acked"]  # pod A's mirror of the fall, at once
        wait_until(lambda: (store_b.get(still.id) or {}).get("acked"))
        assert store_b.get(alert.id)["ack"]["by"] == "ann" and store_b.get(still.id)["ack"]["by"] == "ann"
        wait_until(lambda: state() == "OFF")  # the camera's Home Assistant state follows

        later.at = time.time()
        assert store_b.add(later)["acked"]  # a later still_down of that fall arrives acknowledged
        pod_b.notify()
        wait_until(lambda: store_a.get(later.id) is not None)
        assert store_a.get(later.id)["acked"]
        assert state() == "OFF"
    finally:
        pod_a.stop()
        pod_b.stop()
        store_a.close()
        store_b.close()
        broker.stop()


def broker_state(broker, topic: str):
    """The latest retained payload on `topic`, read by a client of our own."""
    import paho.mqtt.client as mqtt

    seen: dict[str, str] = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload.decode())
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    return lambda: seen.get(topic)
