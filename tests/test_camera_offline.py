"""Issue 25, part 2, item 7: a camera that stays down raises `camera_offline`, and `camera_online`
when it is back, on the fall alerts' channels (store and REST, MQTT with the camera's retained
availability for Home Assistant); a short reconnect raises nothing.

The real app behind uvicorn, a real GStreamer RTSP camera (tools/rtsp_server.py) killed and
restarted on the same port, a real mosquitto broker.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from service.camera_events import CameraHealth
from service.clips import ClipSettings
from service.delivery.mqtt import MqttSettings
from service.sources.rtsp import RtspSettings
from test_clip_storm import NoModel, broker  # noqa: F401  (fixture)
from test_mqtt import Listener
from test_rtsp_reader import RtspCamera, needs_rtsp_server, wait_for
from test_streams import LiveServer, app_for


def test_a_short_outage_raises_nothing_a_long_one_raises_offline_then_online() -> None:
    sent = []
    health = CameraHealth("cam", 10.0, sent.append)
    health.on_state("connecting", None)
    health.on_state("live", None)
    health.on_state("backoff", "stream ended")
    assert health.check(time.monotonic() + 5.0) is None  # inside the grace period
    health.on_state("live", None)
    assert health.check(time.monotonic() + 60.0) is None and sent == []  # back in time: nothing
    health.on_state("stalled", "no frame for 2.1 s")
    offline = health.check(time.monotonic() + 11.0)
    assert offline is not None and offline.type == "camera_offline" and offline.reason == "no frame for 2.1 s"
    assert health.check(time.monotonic() + 30.0) is None  # once per outage
    health.on_state("live", None)
    assert [e.type for e in sent] == ["camera_offline", "camera_online"]
    assert sent[1].fall_id == offline.id and sent[1].down_s >= 0
    health.on_state("stopped", None)  # removed: not an outage
    assert health.check(time.monotonic() + 99.0) is None


@pytest.mark.slow
@needs_rtsp_server
def test_a_camera_down_past_its_grace_raises_offline_and_online_on_rest_and_mqtt(broker, fall_clips, tmp_path):  # noqa: F811
    listener = Listener(broker.port, ["falldet/#", "homeassistant/#"])
    rtsp = RtspSettings(offline_after_s=2.0, backoff_initial_s=0.2, backoff_max_s=0.5, read_timeout_s=2.0,
                        stall_timeout_s=1.0)
    app = app_for(tmp_path, NoModel(), rtsp=rtsp, clips=ClipSettings(enabled=False),
                  mqtt=MqttSettings(host="127.0.0.1", port=broker.port, pod_id="p1"))
    camera = RtspCamera({"cam": fall_clips[0].path}, fps=25).start()
    try:
        with LiveServer(app) as server, server.http() as http:
            def events(kind: str) -> list[dict]:
                return http.get("/v1/alerts", params={"type": kind}).json()["items"]

            assert http.post("/v1/streams", json={"id": "cam", "url": camera.url("cam")}).status_code == 201
            wait_for(lambda: http.get("/v1/streams/cam").json()["state"] == "live", 30)
            time.sleep(2.5)
            assert events("camera_offline") == []  # connecting took less than the grace period
            camera.stop(signal.SIGKILL)
            wait_for(lambda: events("camera_offline"), 30)
            (offline,) = events("camera_offline")
            assert http.get("/v1/streams/cam").json()["offline_alert"] is True
            assert offline["source"] == "cam" and offline["acked"] is False and offline["reason"]
            assert offline["down_s"] >= 2.0 and http.get("/v1/alerts", params={"state": "open"}).json()["total"] == 1
            listener.wait_for(lambda m: (("falldet/cam/available", b"offline", True) in m
                                         or ("falldet/cam/available", b"offline", False) in m))
            camera = RtspCamera({"cam": fall_clips[0].path}, fps=25, port=camera.port).start()
            wait_for(lambda: events("camera_online"), 40)
            (online,) = events("camera_online")
            assert online["fall_id"] == offline["id"] and online["down_s"] >= offline["down_s"]
            assert http.get("/v1/streams/cam").json()["offline_alert"] is False
            listener.wait_for(lambda m: [p for t, p, _ in m if t == "falldet/cam/available"][-1:] == [b"online"])
            # one acknowledgement closes the outage (offline and online are one incident)
            assert http.post(f"/v1/alerts/{offline['id']}/ack", json={"by": "ann"}).status_code == 200
            assert http.get(f"/v1/alerts/{online['id']}").json()["acked"] is True
            sent = [e["type"] for e in listener.events()]
            assert sent[-2:] == ["camera_offline", "camera_online"], sent
            config = [json.loads(p) for t, p, _ in listener.messages
                      if t == "homeassistant/binary_sensor/falldet/cam_fall/config"]
            assert config and {"topic": "falldet/cam/available"} in config[-1]["availability"]
    finally:
        camera.stop()
        listener.close()
