"""Issue 24: reviews -> site data -> fine-tune -> a model swapped in without a restart.

The store and clip parts run in-process on real files; the service parts on a real uvicorn server
(`python -m service serve` in a child process, as tests/test_live_server.py); the fine-tune is the
real CLI on a tiny random G-mnv2 checkpoint (64 px, one short epoch, 1 thread, no workers).
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import cv2
import httpx
import numpy as np
import pytest

from conftest import REPO_ROOT, make_tiny_model

KEY = "site-key-" + "s1te" * 5
ADMIN = "admin-key-" + "adm1" * 5
NAMES4 = ["fall", "sit", "stand", "lie"]


# ----------------------------------------------------------------------------- helpers
def make_incident(state: Path, source: str, at: float, frames: int = 24) -> str:
    """A fall_alert with a real clip and its clean training frames, written by the real clip writer."""
    from service.clips import ClipService, ClipSettings
    from service.events import Event
    from service.frames import Frame, Person
    from service.store import AlertStore

    store = AlertStore(state / "alerts.db", state / "snapshots", None, state / "clips")
    clips = ClipService(ClipSettings(pre_s=1.0, post_s=1.0, fps=10.0), state / "clips", store)
    cam = clips.camera(source)
    alert_id = uuid.uuid4().hex
    box = (40.0, 50.0, 110.0, 100.0)
    for i in range(frames):
        pts = i / 10
        image = np.full((120, 160, 3), 90, np.uint8)
        cv2.rectangle(image, (40, 50), (110, 100), (30, 160, 200), -1)
        cam.add_frame(Frame(source, i, pts, at + pts, image))
        events = []
        if i == 12:
            ev = Event(alert_id, "fall_alert", source, 1, i, 2, pts, 0.2, at + pts, box, pts - 0.2,
                       snapshot=cv2.imencode(".jpg", image)[1].tobytes(), fall_id=alert_id)
            store.add(ev)
            events.append(ev)
        cam.add_result(pts, [Person(box, 0.9, 0, track_id=1), Person((0.0, 0.0, 30.0, 80.0), 0.8, 2, track_id=2)],
                       events)
    clips.release(cam)
    clips.stop()
    deadline = time.monotonic() + 20
    while store.get(alert_id)["clip_status"] != "ready":
        assert time.monotonic() < deadline, store.get(alert_id)
        time.sleep(0.1)
    store.close()
    return alert_id


def make_checkpoint(path: Path, imgsz: int = 64) -> Path:
    """A weights-only checkpoint in the shipped format; its class logits are pushed far down, so it
    finds nothing (a deterministic 'before')."""
    import torch

    from training.model import build_model
    from training.presets import make_config

    torch.manual_seed(0)
    cfg = make_config("G-mnv2", nc=4)
    model = build_model(cfg)
    state = model.state_dict()
    for k, v in state.items():  # the classification branches' last biases
        if k.endswith(".bias") and v.numel() == 4:
            v.fill_(-20.0)
    torch.save({"model": state, "model_config": asdict(cfg), "names": NAMES4, "imgsz": imgsz}, path)
    return path


class Server:
    """`python -m service serve` on a free port, with an admin key."""

    def __init__(self, model: Path, state: Path, **env: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        environ = os.environ | {"FALLDET_API_KEYS": KEY, "FALLDET_ADMIN_KEYS": ADMIN, "FALLDET_STATE_DIR": str(state),
                                "PYTHONUNBUFFERED": "1"} | env
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(self.port),
                                      "--model", str(model)], cwd=REPO_ROOT, env=environ,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, "server exited:\n" + "".join(self.lines)
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, kill: bool = False) -> None:
        (self.proc.kill if kill else self.proc.terminate)()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server_factory() -> Iterator:
    started: list[Server] = []

    def start(model: Path, state: Path, **env: str) -> Server:
        started.append(Server(model, state, **env))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop()


H = {"X-API-Key": KEY}
HA = {"X-API-Key": ADMIN}


# ----------------------------------------------------------------------------- part 1: review
@pytest.mark.timeout(180)
def test_review_is_stored_per_incident_and_survives_sigkill(tmp_path: Path, tiny_model: Path, server_factory) -> None:
    state = tmp_path / "state"
    alert_id = make_incident(state, "cam1", 1_700_000_000.0)
    srv = server_factory(tiny_model, state)
    r = httpx.post(f"{srv.url}/v1/alerts/{alert_id}/review", headers=H,
                   json={"verdict": "false_alarm", "by": "ann", "comment": "a chair"})
    assert r.status_code == 200, r.text
    assert r.json()["review"]["verdict"] == "false_alarm" and r.json()["review"]["by"] == "ann"
    bad = httpx.post(f"{srv.url}/v1/alerts/{alert_id}/review", headers=H, json={"verdict": "maybe", "by": "ann"})
    assert bad.status_code == 422 and "verdict" in bad.text
    assert httpx.post(f"{srv.url}/v1/alerts/nope/review", headers=H,
                      json={"verdict": "fall", "by": "a"}).status_code == 404
    assert httpx.post(f"{srv.url}/v1/alerts/{alert_id}/review", json={"verdict": "fall", "by": "a"}).status_code == 401
    srv.stop(kill=True)  # SIGKILL: the review was fsynced before the answer
    srv = server_factory(tiny_model, state)
    item = httpx.get(f"{srv.url}/v1/alerts", headers=H).json()["items"][0]
    assert item["id"] == alert_id and item["review"]["verdict"] == "false_alarm"
    assert item["review"]["comment"] == "a chair"
    exported = httpx.get(f"{srv.url}/v1/reviews", headers=H).json()["items"]
    assert [e["incident"] for e in exported] == [alert_id] and exported[0]["alert"]["type"] == "fall_alert"


def test_a_review_covers_every_event_of_the_fall_and_the_latest_wins(tmp_path: Path) -> None:
    from service.events import Event
    from service.store import AlertStore

    store = AlertStore(tmp_path / "a.db", tmp_path / "snaps")
    fall = Event("f1", "fall_alert", "cam", 3, 10, 5, 1.0, 0.5, 100.0, (0, 0, 1, 1), 0.5, fall_id="f1")
    down = Event("d1", "still_down", "cam", 3, 70, 5, 61.0, 0.5, 160.0, (0, 0, 1, 1), 60.5, fall_id="f1")
    store.add(fall)
    store.add(down)
    store.review("d1", "fall", "bob", None, at=200.0)
    assert store.get("f1")["review"]["verdict"] == "fall" and store.get("d1")["review"]["incident"] == "f1"
    store.review("f1", "unsure", "old", None, at=150.0, shared=True)  # older: ignored
    store.review("f1", "false_alarm", "ann", "a chair", at=300.0)
    assert store.get("d1")["review"]["verdict"] == "false_alarm"
    assert len(store.reviews()) == 1 and store.pending_reviews()[0]["verdict"] == "false_alarm"
    with pytest.raises(ValueError, match="verdict"):
        store.review("f1", "nope", "ann")
    store.close()


# ----------------------------------------------------------------------------- part 2: export
def test_review_export_writes_private_yolo_frames_with_a_manifest(tmp_path: Path) -> None:
    from service.review_export import ExportError, export_reviews
    from service.settings import Settings
    from service.store import AlertStore

    state = tmp_path / "state"
    a = make_incident(state, "cam1", 1_700_000_000.0)
    b = make_incident(state, "cam2", 1_700_000_100.0)
    c = make_incident(state, "cam2", 1_700_000_200.0)
    store = AlertStore(state / "alerts.db", state / "snapshots", None, state / "clips")
    store.review(a, "false_alarm", "ann", "chair")
    store.review(b, "fall", "bob", None)
    store.review(c, "unsure", "bob", None)
    store.close()
    settings = Settings(state_dir=state)
    out = tmp_path / "site"
    report = export_reviews(settings, out, per_incident=5)
    assert report.incidents["train"] + report.incidents["val"] == 2  # unsure left out
    assert report.incidents["train"] and report.incidents["val"]
    assert report.boxes["fall"] > 0 and report.boxes["person"] > 0
    images = sorted((out / "images").rglob("*.jpg"))
    assert 2 <= len(images) <= 10
    for f in [*images, *(out / "labels").rglob("*.txt"), out / "data.yaml", out / "manifest.csv"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    img = cv2.imread(str(images[0]))
    assert img.shape == (120, 160, 3)
    # the clean frame: the fill colour inside the box, no red clip rectangle on its edge
    assert tuple(int(v) for v in img[50, 75]) != (0, 0, 255)
    import csv
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert {r["verdict"] for r in rows} == {"fall", "false_alarm"} and {r["reviewer"] for r in rows} == {"ann", "bob"}
    assert all(r["alert_id"] and r["camera"] and r["frame_at"] for r in rows)
    fall_rows = [r for r in rows if r["verdict"] == "fall"]
    labels = [(out / r["image"].replace("images", "labels", 1)).with_suffix(".txt").read_text() for r in fall_rows]
    assert any(line.startswith("0 ") for text in labels for line in text.splitlines())  # fall after the onset
    import yaml
    doc = yaml.safe_load((out / "data.yaml").read_text())
    assert doc["names"] == ["fall", "person"] and doc["classes"]["person"] == ["sit", "stand", "lie"]
    from training.data.sources import load_data_config
    spec = load_data_config(out / "data.yaml")  # the trainer reads it
    assert spec.sources[0].train.is_dir()
    with pytest.raises(ExportError, match="not empty"):
        export_reviews(settings, out)


def test_finetune_refuses_when_the_site_got_worse() -> None:
    from training.finetune import verdict

    before = {"site": {"frame_accuracy": 0.8}, "base": {"score": 0.5}}
    assert verdict(before, {"site": {"frame_accuracy": 0.7}, "base": {"score": 0.5}}, 0.02) == [
        "the site's held-out frame accuracy got worse (0.800 -> 0.700)"]
    assert "base sources" in verdict(before, {"site": {"frame_accuracy": 0.9}, "base": {"score": 0.45}}, 0.02)[0]
    assert verdict(before, {"site": {"frame_accuracy": 0.8}, "base": {"score": 0.49}}, 0.02) == []


# ----------------------------------------------------------------------------- part 4: swap
@pytest.mark.timeout(180)
def test_swap_checks_the_file_needs_an_admin_key_and_rolls_back(tmp_path: Path, tiny_model: Path,
                                                                 server_factory) -> None:
    srv = server_factory(tiny_model, tmp_path / "state")
    first = httpx.get(f"{srv.url}/v1/model", headers=H).json()
    assert first["file"] == tiny_model.name and len(first["sha256"]) == 64 and first["previous"] is None
    new = make_tiny_model(tmp_path / "new.onnx", rows=[[8.0, 16.0, 40.0, 56.0, 0.9, 2.0]],  # one standing person
                          metadata={"operating_point": json.dumps({"score_threshold": 0.5})})
    body = new.read_bytes()
    put = lambda data, headers: httpx.put(f"{srv.url}/v1/model", headers=headers | {  # noqa: E731
        "content-type": "application/octet-stream"}, content=data, timeout=60)
    assert put(body, H).status_code == 403 and "admin key" in put(body, H).text
    assert put(body, {}).status_code == 401
    truncated = put(body[: len(body) // 2], HA)
    assert truncated.status_code == 422 and "not a loadable ONNX model" in truncated.json()["detail"]
    wrong = make_tiny_model(tmp_path / "wrong.onnx", metadata={"names": '["person"]'})
    refused = put(wrong.read_bytes(), HA)
    assert refused.status_code == 422 and "no 'fall' class" in refused.json()["detail"]
    assert httpx.get(f"{srv.url}/v1/model", headers=H).json()["sha256"] == first["sha256"]  # old one runs
    ok = put(body, HA)
    assert ok.status_code == 200, ok.text
    info = ok.json()
    assert info["sha256"] != first["sha256"] and info["previous"]["sha256"] == first["sha256"]
    assert info["operating_point"]["score_threshold"] == 0.5 and info["score_threshold"] == 0.5
    frame = cv2.imencode(".jpg", np.full((64, 64, 3), 100, np.uint8))[1].tobytes()
    det = httpx.post(f"{srv.url}/v1/detect", headers=H, files={"file": ("f.jpg", frame, "image/jpeg")})
    assert det.status_code == 200 and [p["action"] for p in det.json()["persons"]] == ["stand"]  # the new file
    metrics = httpx.get(f"{srv.url}/metrics", headers=H).text
    assert f'sha256="{info["id"]}"' in metrics and f'sha256="{first["id"]}"' not in metrics
    assert httpx.post(f"{srv.url}/v1/model/rollback", headers=H).status_code == 403
    back = httpx.post(f"{srv.url}/v1/model/rollback", headers=HA).json()
    assert back["sha256"] == first["sha256"] and back["previous"]["sha256"] == info["sha256"]
    assert ADMIN not in srv.log and KEY not in srv.log


@pytest.mark.timeout(120)
def test_a_file_dropped_in_the_watched_folder_is_swapped_in(tmp_path: Path, tiny_model: Path,
                                                            server_factory) -> None:
    watch = tmp_path / "incoming"
    watch.mkdir()
    srv = server_factory(tiny_model, tmp_path / "state", FALLDET_MODEL_WATCH_DIR=str(watch),
                         FALLDET_MODEL_WATCH_INTERVAL_S="0.3")
    (watch / "broken.onnx").write_bytes(b"not a model")
    time.sleep(1.5)
    info = httpx.get(f"{srv.url}/v1/model", headers=H).json()
    assert info["file"] == tiny_model.name and "broken.onnx" in (info["last_error"] or "")
    make_tiny_model(watch / "better.onnx", metadata={"stride": "16"})
    deadline = time.monotonic() + 20
    while httpx.get(f"{srv.url}/v1/model", headers=H).json()["file"] != "better.onnx":
        assert time.monotonic() < deadline, srv.log
        time.sleep(0.3)


# ----------------------------------------------------------------------------- part 5: the loop
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_loop_in_miniature(tmp_path: Path, server_factory) -> None:
    """review -> export -> fine-tune -> swap -> the service answers with the new hash."""
    pytest.importorskip("torch")
    state = tmp_path / "state"
    ids = [make_incident(state, "cam1", 1_700_000_000.0 + 100 * k) for k in range(3)]
    serving = make_tiny_model(tmp_path / "serving.onnx", metadata={"names": json.dumps(NAMES4)})
    srv = server_factory(serving, state)
    for alert_id in ids:
        assert httpx.post(f"{srv.url}/v1/alerts/{alert_id}/review", headers=H,
                          json={"verdict": "false_alarm", "by": "ann"}).status_code == 200
    env = os.environ | {"FALLDET_STATE_DIR": str(state), "FALLDET_DATA": str(tmp_path / "no-data"),
                        "OMP_NUM_THREADS": "1"}
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "service", "review-export", "--out", str(site), "--per-incident", "8"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"]["val"] > 0
    base = make_checkpoint(tmp_path / "fall-detector.pt")
    out = tmp_path / "run"
    tuned = subprocess.run([sys.executable, "-m", "training", "finetune", "--site", str(site), "--from", str(base),
                            "--out", str(out), "--epochs", "1", "--epoch-size", "16", "--batch", "8",
                            "--workers", "0", "--threads", "1", "--no-progress"],
                           cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    report = json.loads(tuned.stdout)
    onnx_path = Path(report["onnx"]["file"])
    assert report["before"]["site"]["frames"] > 0 and report["after"]["site"]["frame_accuracy"] is not None
    put = httpx.put(f"{srv.url}/v1/model", headers=HA | {"content-type": "application/octet-stream"},
                    content=onnx_path.read_bytes(), timeout=120)
    assert put.status_code == 200, put.text
    info = httpx.get(f"{srv.url}/v1/model", headers=H).json()
    assert info["sha256"] == report["onnx"]["sha256"]
    assert info["finetune"]["from"]["sha256"] == report["from"]["sha256"]
    assert info["finetune"]["site"]["incidents"] == json.loads((site / "export.json").read_text())["incidents"]
    assert set(info["finetune"]) >= {"before", "after", "plan", "replay"}


def test_a_review_command_on_mqtt_marks_the_incident(tmp_path: Path) -> None:
    """`<prefix>/reviews` is a command topic like the acks: a client's message reviews the incident;
    this pod's own reviews are what it publishes there (pending until the broker's PUBACK)."""
    from service.delivery.mqtt import MqttChannel, MqttSettings
    from service.events import Event
    from service.store import AlertStore

    store = AlertStore(tmp_path / "a.db", tmp_path / "snaps")
    store.add(Event("f1", "fall_alert", "cam", 3, 10, 5, 1.0, 0.5, 100.0, (0, 0, 1, 1), 0.5, fall_id="f1"))
    channel = MqttChannel(MqttSettings(host="127.0.0.1", pod_id="pod-a"), store)
    channel._handle_message(f"{channel.prefix}/reviews", json.dumps(
        {"id": "f1", "verdict": "false_alarm", "by": "ha-user", "comment": "the cat"}).encode())
    assert store.get("f1")["review"]["verdict"] == "false_alarm" and store.get("f1")["review"]["by"] == "ha-user"
    assert store.pending_reviews() == []  # a received review is not sent back
    channel._handle_message(f"{channel.prefix}/reviews", b'{"id": "f1", "verdict": "maybe"}')  # ignored
    assert store.get("f1")["review"]["verdict"] == "false_alarm"
    store.review("f1", "fall", "ann")
    assert store.pending_reviews()[0]["verdict"] == "fall"
    store.close()


def test_a_swap_between_batches_loses_no_frame_of_four_cameras() -> None:
    """The worker takes the new runtime at its next batch: every submitted upload frame of four
    sources is answered (none lost or failed), the ones after the swap by the new model."""
    from service.frames import Person
    from service.worker import InferenceWorker

    class Fake:
        def __init__(self, tag: int) -> None:
            self.tag = tag

        def detect(self, images, rgb=False):
            time.sleep(0.002)
            return [[Person((0, 0, 1, 1), 0.9, self.tag)] for _ in images]

    from service.frames import Frame

    worker = InferenceWorker(Fake(0), max_batch=4, max_wait_ms=1)
    worker.start()
    futures = []
    image = np.zeros((8, 8, 3), np.uint8)
    try:
        for i in range(200):
            for cam in range(4):
                futures.append(worker.submit(Frame(f"cam{cam}", i, i / 10, time.time(), image), live=False))
            if i == 100:
                futures[-1].result(timeout=20)  # cameras keep submitting while the swap happens
                old = worker.swap_runtime(Fake(2))
                assert old.tag == 0
        tags = [f.result(timeout=20)[0].class_id for f in futures]
    finally:
        worker.stop()
    assert len(tags) == 800 and set(tags) == {0, 2}
    assert tags[-4:] == [2, 2, 2, 2] and tags.index(2) > 0
    assert tags == sorted(tags)  # per submission order: old model first, then the new one, never mixed back


def test_held_out_incidents_are_chosen_per_verdict_and_the_only_fall_is_learnt() -> None:
    """The demo on a real room held out its only confirmed fall: the fine-tune saw false alarms only,
    unlearnt the room's falls and was rightly refused. A verdict's only incident now stays in train."""
    from service.review_export import split_incidents

    incidents = [("fall-1", "fall")] + [(f"fa-{i}", "false_alarm") for i in range(6)] + [("neg-1", "nobody_fell")]
    splits = split_incidents(incidents, val_percent=25.0)
    assert splits["fall-1"] == "train" and splits["neg-1"] == "train"
    false_alarms = [splits[f"fa-{i}"] for i in range(6)]
    assert "train" in false_alarms and "val" in false_alarms
    assert splits == split_incidents(list(reversed(incidents)), 25.0)  # the same split on every export
    everything_held = split_incidents([("a", "fall"), ("b", "fall")], val_percent=100.0)
    assert sorted(everything_held.values()) == ["train", "val"]
    nothing_held = split_incidents([("a", "false_alarm"), ("b", "false_alarm")], val_percent=0.0)
    assert sorted(nothing_held.values()) == ["train", "val"]
    one_each = split_incidents([("f", "fall"), ("x", "false_alarm")], val_percent=25.0)
    assert one_each == {"f": "train", "x": "val"}  # something to score before/after; the fall is learnt
