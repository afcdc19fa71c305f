"""Issue 25, part 2, item 4: an empty upload gets the same answer from `/v1/videos` and `/v1/detect`
(it was 415 "not a supported video container" and 400 "empty body"). The real app behind uvicorn."""
from __future__ import annotations

from test_clip_storm import NoModel
from test_streams import LiveServer, app_for

EXPECTED = "empty upload: the file has no bytes"


def test_an_empty_file_is_the_same_fault_in_the_same_words_on_both_endpoints(tmp_path):
    with LiveServer(app_for(tmp_path, NoModel())) as server, server.http() as http:
        answers = {
            "video": http.post("/v1/videos", files={"file": ("empty.mp4", b"", "video/mp4")}),
            "image": http.post("/v1/detect", files={"file": ("empty.jpg", b"", "image/jpeg")}),
            "raw image": http.post("/v1/detect", content=b"", headers={"content-type": "image/jpeg"}),
        }
        assert {k: r.status_code for k, r in answers.items()} == {k: 400 for k in answers}
        assert answers["video"].json()["detail"] == f"{EXPECTED} (send a video)"
        assert answers["image"].json()["detail"] == answers["raw image"].json()["detail"] == f"{EXPECTED} (send an image)"
        # a next upload is not refused for a slot the empty one kept
        again = http.post("/v1/videos", files={"file": ("empty.mp4", b"", "video/mp4")})
        assert again.status_code == 400
