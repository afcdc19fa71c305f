"""Issue 25, part 2, item 8: acknowledge many alerts in one call: every open alert of a camera, or a
selection. The real app behind uvicorn; events stored as the bus stores them."""
from __future__ import annotations

import time
import uuid

from service.events import Event
from test_clip_storm import NoModel
from test_streams import LiveServer, app_for


def fall(source: str, kind: str = "fall_alert", fall_id: str | None = None) -> Event:
    event_id = uuid.uuid4().hex
    return Event(id=event_id, type=kind, source=source, track_id=1, frame=10, started_frame=5, pts_s=0.4,
                 started_pts_s=0.2, at=time.time(), box=(1.0, 2.0, 30.0, 40.0), time_down_s=0.2,
                 reason="recovered" if kind == "fall_cleared" else None, fall_id=fall_id or event_id)


def test_all_open_alerts_of_a_camera_or_a_selection_in_one_call(tmp_path):
    app = app_for(tmp_path, NoModel())
    with LiveServer(app) as server, server.http() as http:
        store = app.state.store
        storm = [fall("ward-1") for _ in range(13)]
        for e in storm:
            store.add(e)
        cleared = fall("ward-1", "fall_cleared", fall_id=storm[0].id)
        store.add(cleared)
        others = [fall("ward-2") for _ in range(3)]
        for e in others:
            store.add(e)
        res = http.post("/v1/alerts/ack", json={"by": "ann", "comment": "storm: looping video", "source": "ward-1"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert len(body["acked"]) == 14 and body["unknown"] == []
        assert all(a["acked"] and a["ack"]["by"] == "ann" for a in body["acked"])
        assert http.get("/v1/alerts", params={"state": "open", "source": "ward-1"}).json()["total"] == 0
        assert http.get("/v1/alerts", params={"state": "open", "source": "ward-2"}).json()["total"] == 3
        # a selection: two of ward-2's, and an id that is not there
        missing = uuid.uuid4().hex
        res = http.post("/v1/alerts/ack", json={"by": "bob", "ids": [others[0].id, others[2].id, missing]})
        assert res.status_code == 200
        assert sorted(a["id"] for a in res.json()["acked"]) == sorted([others[0].id, others[2].id])
        assert res.json()["unknown"] == [missing]
        assert [a["id"] for a in http.get("/v1/alerts", params={"state": "open"}).json()["items"]] == [others[1].id]
        # bad requests say what is wrong
        for bad in ({"by": "ann"}, {"by": "ann", "ids": [others[1].id], "source": "ward-2"},
                    {"by": "ann", "ids": []}, {"ids": [others[1].id]}):
            res = http.post("/v1/alerts/ack", json=bad)
            assert res.status_code == 422, (bad, res.text)
        assert "either 'ids'" in http.post("/v1/alerts/ack", json={"by": "ann"}).text
        assert http.post("/v1/alerts/ack", json={"by": "a", "ids": ["x"]}, headers={"X-API-Key": "no"}).status_code == 401
