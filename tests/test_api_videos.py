"""`POST /v1/videos`: one frame line per decoded frame, events, a summary; bad uploads are 4xx."""
from __future__ import annotations

import json
import time

import pytest

from conftest import count_frames, cut_clip


def _post(client, data: bytes, auth, name: str = "clip.mp4"):
    return client.post("/v1/videos", files={"file": (name, data, "video/mp4")}, headers=auth)


def _lines(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def _check_stream(lines: list[dict], decoded: int) -> list[dict]:
    """One frame line per decoded frame, in order, then the summary last; returns the frame lines."""
    frames = [m for m in lines if m["type"] == "frame"]
    assert len(frames) == decoded
    assert [m["frame"] for m in frames] == list(range(decoded))
    pts = [m["pts_s"] for m in frames]
    assert pts == sorted(pts) and pts[0] == 0.0
    assert all(m["dropped"] == 0 for m in frames)
    assert lines[-1]["type"] == "summary" and lines[-1]["frames"] == decoded
    assert {m["type"] for m in lines} <= {"frame", "summary", "fall_alert", "still_down", "fall_cleared"}
    return frames


def test_every_frame_of_a_clip_gets_a_line(tiny_client, auth, fall_clips):
    clip = fall_clips[0].path
    r = _post(tiny_client, clip.read_bytes(), auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = _lines(r)
    frames = _check_stream(lines, count_frames(clip))
    assert all(m["source"] == r.headers["x-source"] for m in frames)
    # the tiny model reports the same two persons on every frame: two tracks, one steady fall
    assert {p["track_id"] for m in frames[5:] for p in m["persons"]} == {p["track_id"] for p in frames[-1]["persons"]}
    events = [m for m in lines if m["type"] in ("fall_alert", "fall_cleared")]
    assert [e["type"] for e in events] == ["fall_alert", "fall_cleared"]
    assert events[0]["track_id"] == events[1]["track_id"] and events[0]["id"] != events[1]["id"]
    assert events[1]["reason"] == "source_ended"
    assert lines[-1]["video"]["codec"] == "h264"


@pytest.mark.parametrize("cut", ["junk", "half", "head"])
def test_corrupt_uploads_are_4xx_with_a_reason_and_the_server_keeps_serving(tiny_client, auth, fall_clips, cut):
    data = fall_clips[0].path.read_bytes()
    body = {"junk": b"this is not a video at all" * 100, "half": data[: len(data) // 2], "head": data[:2000]}[cut]
    r = _post(tiny_client, body, auth)
    assert r.status_code in (400, 415), r.text
    assert r.json()["detail"] and "Traceback" not in r.text
    assert tiny_client.get("/healthz").status_code == 200
    ok = _post(tiny_client, data, auth)
    assert ok.status_code == 200 and _lines(ok)[-1]["type"] == "summary"


def test_a_video_without_video_stream_is_415(tiny_client, auth, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame(format="s16", layout="mono", samples=800)
        for p in frame.planes:
            p.update(bytes(p.buffer_size))
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    r = _post(tiny_client, path.read_bytes(), auth, "audio.wav")
    assert r.status_code == 415 and "no video stream" in r.json()["detail"]


def test_form_problems_are_4xx(tiny_client, auth, fall_clips):
    r = tiny_client.post("/v1/videos", content=b"raw bytes", headers={**auth, "Content-Type": "video/mp4"})
    assert r.status_code == 415
    r = tiny_client.post("/v1/videos", data={"other": "x"}, files={"notfile": ("a.mp4", b"x", "video/mp4")},
                         headers=auth)
    assert r.status_code == 400 and "'file'" in r.json()["detail"]


def test_a_client_that_leaves_early_stops_the_analysis(tiny_client, auth, fall_clips):
    worker = tiny_client.app.state.worker
    data = fall_clips[0].path.read_bytes()
    with tiny_client.stream("POST", "/v1/videos", files={"file": ("c.mp4", data, "video/mp4")}, headers=auth) as r:
        first = json.loads(next(r.iter_lines()))
        assert first["type"] == "frame" and first["frame"] == 0
    time.sleep(1.0)
    decoded = count_frames(fall_clips[0].path)
    # it stopped: the lines handed over plus the frames in flight, not the whole clip
    assert worker.frames < decoded, f"{worker.frames} of {decoded} frames inferred after the client left"
    assert tiny_client.get("/healthz").status_code == 200


def decoded_frames(path) -> list:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(container.streams.video[0])]


def without_track(persons: list[dict]) -> list[dict]:
    """What the model saw: the track's id, posture and down state (`fall`) come from the pipeline."""
    return [{k: v for k, v in p.items() if k not in ("track_id", "posture", "fall")} for p in persons]


def test_frame_lines_carry_the_runtimes_persons_frame_by_frame(make_client, model_path, auth, short_clip):
    """Each frame line holds what the runtime finds on that very frame (batch 1: identical numbers)."""
    from service.runtime import Runtime

    runtime = Runtime(model_path, ["CPUExecutionProvider"], score_threshold=0.001)
    client = make_client(runtime, max_batch=1)
    r = _post(client, short_clip.read_bytes(), auth)
    assert r.status_code == 200, r.text
    images = decoded_frames(short_clip)
    frames = _check_stream(_lines(r), len(images))
    for line, image in zip(frames, images):
        assert without_track(line["persons"]) == without_track([p.to_json() for p in runtime.detect([image])[0]])
    assert sum(len(m["persons"]) for m in frames) > 0


def test_other_codecs(tiny_client, auth, fall_clips, tmp_path):
    clip = cut_clip(fall_clips[0].path, tmp_path / "mpeg4.mp4", 15, codec="mpeg4")
    r = _post(tiny_client, clip.read_bytes(), auth)
    assert r.status_code == 200
    _check_stream(_lines(r), count_frames(clip))


@pytest.mark.parametrize("suffix", [".mkv", ".avi", ".ts", ".mov"])
def test_common_containers_are_analysed(tiny_client, auth, fall_clips, tmp_path, suffix):
    clip = cut_clip(fall_clips[0].path, tmp_path / f"clip{suffix}", 8, codec="mpeg4")
    r = _post(tiny_client, clip.read_bytes(), auth, clip.name)
    assert r.status_code == 200, r.text
    _check_stream(_lines(r), count_frames(clip))


def test_a_list_of_local_files_is_refused_before_ffmpeg_opens_them(tiny_client, auth, fall_clips, tmp_path,
                                                                   monkeypatch):
    """FFmpeg's concat demuxer would read a file of the server's own disk named in an upload."""
    monkeypatch.chdir(tmp_path)  # the server's working folder, where the named clip really is
    (tmp_path / "secret.mp4").write_bytes(fall_clips[0].path.read_bytes())
    for name, data in [("list.ffconcat", b"ffconcat version 1.0\nfile secret.mp4\n"),
                       ("list.m3u8", b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsecret.mp4\n#EXT-X-ENDLIST\n")]:
        r = _post(tiny_client, data, auth, name)
        assert r.status_code == 415 and "not a supported video container" in r.json()["detail"], r.text
    assert tiny_client.get("/healthz").status_code == 200
