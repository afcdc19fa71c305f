#!/usr/bin/env python3
"""Site adaptation before and after on real clips of one room, end to end through the real service.

Why this script: the loop of docs/site-adaptation.md (review -> export -> fine-tune -> swap) is
tested in miniature on synthetic frames (tests/test_site_adaptation.py); this runs it on a real
room (`videos/assist-iot`: 2 falls, 18 daily activities) the way a care home would, and measures
the room's *other* clips before and after. Stages (one progress line each):

1. split the room by clip into a REVIEW half and a TEST half (`--split`); the fine-tune never sees
   the TEST half;
2. "before": `python -m service.evaluate` on the TEST half with the shipped model;
3. the REVIEW half replayed as RTSP cameras (tools/rtsp_server.py) into `python -m service serve`
   (a temporary state folder, an admin key, a short clip post-roll), one play-through per clip; the
   cameras run with the descent rule off (`FALLDET_PIPELINE__DESCENT_S=` empty: alert `confirm_s`
   after any fall posture, the faster rule), so the model's own errors reach the operator; a
   daily-activity camera that shows someone as fallen gets one "nobody fell here" mark;
4. every fall alert reviewed over REST from the clip's annotation (the operator's verdict, scripted);
5. `python -m service review-export`, then `python -m training finetune` (replay of the base
   sources on); its exit code 3 (refused) is a result, recorded, and the demo stops there;
6. the new file swapped in with `PUT /v1/model`, `GET /v1/model` must show its sha256;
7. "after": `service.evaluate` on the TEST half with the tuned model. Both models are scored with
   the shipped rules and with the descent rule off (a replay of the same analyses, no second model run);
8. `OUT/table.md` and `OUT/demo.json`.

Both models run as FP32 by default (`FALLDET_INT8=off`, `--int8`): the fine-tune makes no INT8 copy,
so "auto" would compare the shipped INT8 file with a tuned FP32 one, quantisation against weights.
Every child process runs in its own process group and is stopped by its PID on an error, Ctrl-C or
SIGTERM. Exit status: 0 when the demo ran to its end or the fine-tune refused (exit 3: a result);
1 when a stage failed (the table says which); 130 when interrupted. The table is written in every case.
The API and admin keys are random, live only in the service's environment and the request headers,
and are never printed or written.

Run it under `nice -n 19` on a quiet machine (about 30 minutes; docs/site-adaptation.md):
    nice -n 19 .venv/bin/python scripts/site_adaptation_demo.py --out runs/site-demo
A quick check of the plumbing (a few minutes; the figures mean nothing):
    nice -n 19 .venv/bin/python scripts/site_adaptation_demo.py --out /tmp/site-demo-small \\
        --review-clips fall/05,adl/11 --test-clips fall/07,adl/12 --budget-min 1 --epochs 1 \\
        --finetune-args "--base-val-limit 16 --batch 4"
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SYSTEM_PYTHON = "/usr/bin/python3"  # tools/rtsp_server.py needs Debian's gi with GstRtspServer
REVIEWER = "demo"
COMMENT = "scripted from the clip's annotation (annotations.csv) by scripts/site_adaptation_demo.py"
T0 = time.monotonic()


def progress(stage: str, message: str) -> None:
    """One line per stage and event, with seconds since the start (stderr, unbuffered)."""
    print(f"[{time.monotonic() - T0:7.1f}s] {stage}: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the room
@dataclass(frozen=True)
class Clip:
    """One annotated clip of the room (a row of its annotations.csv)."""

    path: str  # relative to the room folder, e.g. "adl/11_sitting_laying_down_slowly.mp4"
    kind: str  # "fall" or "adl"
    number: int  # the file name's leading number
    frames: int
    fps: float
    fall_s: tuple[float, float] | None  # annotated fall range (s), fall clips only
    row: dict

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    @property
    def camera(self) -> str:
        """Stream id and RTSP mount name: `adl-11_sitting_laying_down_slowly`."""
        return f"{self.kind}-{Path(self.path).stem}"

    def matches(self, key: str) -> bool:
        """`adl/11`, `adl/11_sitting...mp4` or the full path."""
        key = key.strip().removesuffix(".mp4")
        folder, _, name = key.partition("/")
        return folder == self.kind and Path(self.path).stem.startswith(name) and bool(name)


def load_room(room: Path) -> list[Clip]:
    """The room's clips from its annotations.csv (the format service.evaluate reads)."""
    from service.evaluate import parse_ranges

    with open(room / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    clips = []
    for row in rows:
        kind = "fall" if row["label"].strip().lower() == "fall" else "adl"
        number = re.match(r"(\d+)", Path(row["path"]).name)
        if number is None:
            raise ValueError(f"{row['path']}: the split needs a leading clip number in the file name")
        falls = [r for r in parse_ranges(row["classes_seconds_as_published"]) if r.action == "fall"]
        fall_s = (min(r.start_s for r in falls), max(r.end_s for r in falls)) if falls else None
        if kind == "fall" and fall_s is None:
            raise ValueError(f"{row['path']}: a fall clip without an annotated fall range")
        clips.append(Clip(row["path"], kind, int(number.group(1)), int(row["frames"]), float(row["fps"]),
                          fall_s, row))
    return clips


def split_room(clips: list[Clip], split: str) -> tuple[list[Clip], list[Clip]]:
    """(review, test) by clip, deterministic. `odd`: the 1st, 3rd... fall clip (assist-iot: fall/05)
    and the odd-numbered daily-activity clips are reviewed, the rest (fall/07, even adl) tested;
    `even`: the mirror image. Whole clips, so no frame of a test clip reaches the fine-tune."""
    falls = sorted((c for c in clips if c.kind == "fall"), key=lambda c: c.path)
    adls = sorted((c for c in clips if c.kind == "adl"), key=lambda c: c.path)
    first = split == "odd"
    review = [c for i, c in enumerate(falls) if (i % 2 == 0) == first]
    review += [c for c in adls if (c.number % 2 == 1) == first]
    test = [c for c in falls + adls if c not in review]
    return review, test


def limit(clips: list[Clip], spec: str | None, half: str) -> list[Clip]:
    """`--review-clips`/`--test-clips`: N (the fall clips first, then in order) or names in the half."""
    if not spec:
        return clips
    if spec.strip().isdigit():
        ordered = [c for c in clips if c.kind == "fall"] + [c for c in clips if c.kind == "adl"]
        return ordered[: int(spec)]
    chosen = []
    for key in spec.split(","):
        found = [c for c in clips if c.matches(key)]
        if len(found) != 1:
            raise SystemExit(f"--{half}-clips: {key!r} names {len(found)} clips of the {half} half "
                             f"({', '.join(c.path for c in clips)})")
        chosen.append(found[0])
    return chosen


def write_annotations(clips: list[Clip], path: Path) -> Path:
    """The half's rows of annotations.csv (service.evaluate --annotations)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(clips[0].row))
        writer.writeheader()
        writer.writerows(c.row for c in clips)
    return path


# ----------------------------------------------------------------------------- child processes
class Children:
    """Every child this script starts, each in its own process group (its own children too: the
    evaluator's `analyze` runs), stopped by PID: SIGTERM, then SIGKILL after `grace` seconds."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True, **kw)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 30.0) -> int | None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the group this script made for this child
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                progress("cleanup", f"stopping {name} (pid {proc.pid})")
                self.stop(proc)

    def run(self, name: str, cmd: list[str], env: dict[str, str], log: Path,
            timeout: float | None = None) -> tuple[int, str]:
        """Run to the end; stdout returned, stderr to `log` (the command line first, no secrets in it)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as err:
            err.write("$ " + shlex.join(cmd) + "\n")
            err.flush()
            proc = self.start(name, cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop(proc)
                raise RuntimeError(f"{name} took longer than {timeout:.0f} s (log: {log})") from None
        return proc.returncode, out


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's FALLDET_* settings (the demo's rules must be the
    shipped ones unless it says otherwise), FALLDET_DATA kept; plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FALLDET_")}
    env["FALLDET_DATA"] = os.environ.get("FALLDET_DATA") or str(REPO_ROOT.parent / "shared" / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    """Hex sha256 of a file (read in blocks, never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- evaluation
def evaluate(children: Children, room: Path, annotations: Path, model: Path, ndjson: Path, logs: Path,
             env: dict[str, str], tag: str) -> dict:
    """`service.evaluate` on the TEST half: the shipped rules (a real `analyze` per clip, saved), then
    a replay of the same analyses with the descent rule off, and one with the shipped rules (which
    must give the same figures: it shows the replay is faithful)."""
    base = [PYTHON, "-m", "service.evaluate", str(room), "--annotations", str(annotations), "--json"]
    runs = {"default": base + ["--model", str(model), "--save-ndjson", str(ndjson)],
            "replay_default": base + ["--ndjson-dir", str(ndjson), "--replay"],
            "descent_off": base + ["--ndjson-dir", str(ndjson), "--set", "descent_s="]}
    out: dict = {"model": str(model), "sha256": sha256(model)}
    for rules, cmd in runs.items():
        t0 = time.monotonic()
        rc, stdout = children.run(f"evaluate {tag} {rules}", cmd, env, logs / f"evaluate-{tag}-{rules}.log")
        if rc != 0:
            raise RuntimeError(f"service.evaluate ({tag}, {rules}) failed with exit {rc}: see "
                               f"{logs / f'evaluate-{tag}-{rules}.log'}")
        out[rules] = json.loads(stdout)
        out[rules]["seconds"] = round(time.monotonic() - t0, 1)
    out["replay_matches"] = out["replay_default"]["overall"] == out["default"]["overall"]
    return out


def row_figures(report: dict) -> dict:
    """The table's figures of one evaluation."""
    o, clips = report["overall"], report["clips"]
    return {"falls_alerted": o["fall_clips_alerted"], "fall_clips": o["fall_clips"],
            "false_alerts": o["false_alerts_all"],
            "clips_with_false_alerts": sum(1 for c in clips if c["false_alerts"]),
            "clips": len(clips), "false_fall_segments": o["false_fall_segments_all"],
            "frame_accuracy": o["action_accuracy"]}


# ----------------------------------------------------------------------------- the service
class Service:
    """`python -m service serve` on a free port with its own state folder and random keys."""

    def __init__(self, children: Children, state: Path, log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.key = secrets.token_urlsafe(24)
        self.admin = secrets.token_urlsafe(24)
        self.log = log
        self.env = env | {"FALLDET_API_KEYS": self.key, "FALLDET_ADMIN_KEYS": self.admin,
                          "FALLDET_STATE_DIR": str(state)}
        self._children = children
        self._log_file = open(log, "w")
        self.proc = children.start("service", [PYTHON, "-m", "service", "serve", "--port", str(self.port)],
                                   env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", headers={"X-API-Key": self.key},
                                 timeout=60)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode} at start (log: {log})")
            try:
                if self.http.get("/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not answer /healthz within 120 s (log: {log})")
            time.sleep(0.5)

    def call(self, method: str, path: str, ok: tuple[int, ...] = (200, 201), admin: bool = False,
             **kw: Any) -> httpx.Response:
        """One request; a status outside `ok` raises with the answer's detail (never the headers)."""
        headers = {"X-API-Key": self.admin, "content-type": "application/octet-stream"} if admin else {}
        r = self.http.request(method, path, headers=headers, **kw)
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r

    def alerts(self) -> list[dict]:
        items, offset = [], 0
        while offset is not None:
            page = self.call("GET", "/v1/alerts", params={"type": "fall_alert", "limit": 500,
                                                          "offset": offset}).json()
            items += page["items"]
            offset = page["next_offset"]
        return sorted(items, key=lambda a: a["at"])

    def stop(self) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), then check that no key reached the log."""
        self.http.close()
        rc = self._children.stop(self.proc, grace=40)
        self._log_file.close()
        text = self.log.read_text(errors="replace")
        if "Application shutdown complete" in text:  # uvicorn re-raises the SIGTERM after its shutdown
            rc = 0
        if self.key in text or self.admin in text:  # never expected: redact rather than keep a secret
            self.log.write_text(text.replace(self.key, "<api-key>").replace(self.admin, "<admin-key>"))
            progress("service", f"WARNING: a key appeared in {self.log}; redacted")
        return rc


class RtspCameras:
    """tools/rtsp_server.py with one mount per clip: real RTSP cameras replaying the files in a loop."""

    def __init__(self, children: Children, room: Path, clips: list[Clip], log: Path) -> None:
        cmd = [SYSTEM_PYTHON, str(REPO_ROOT / "tools" / "rtsp_server.py"), "--port", "0"]
        for c in clips:
            cmd += ["--mount", f"{c.camera}={room / c.path}"]
        self._log_file = open(log, "w")
        self._children = children
        self.proc = children.start("rtsp server", cmd, stdout=subprocess.PIPE, stderr=self._log_file, text=True,
                                   env=clean_env())
        self.urls: dict[str, str] = {}
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(self.proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while len(self.urls) < len(clips):
            for line in lines:
                if line.startswith("READY "):
                    url = line.split()[1]
                    self.urls[url.rsplit("/", 1)[1]] = url
            if self.proc.poll() is not None:
                raise RuntimeError(f"the RTSP server exited with {self.proc.returncode} (log: {log})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the RTSP server did not get ready within 60 s (log: {log})")
            time.sleep(0.2)

    def stop(self) -> int | None:
        rc = self._children.stop(self.proc, grace=10)
        self._log_file.close()
        return rc


def _fallen(timeline: dict) -> bool:
    """Does the service show someone fallen now (an ongoing fall, or an open `fall` segment)?"""
    for track in timeline.get("tracks", []):
        segs = track.get("segments") or []
        if track.get("down") is not None or (segs and segs[-1]["action"] == "fall" and segs[-1]["open"]):
            return True
    return False


def play(service: Service, cameras: RtspCameras, clip: Clip, negatives: bool, margin_s: float) -> dict:
    """Add the clip's camera, let it play through once (its frame count, or duration + margin once
    live), mark "nobody fell here" once on a daily-activity clip the service shows someone fallen
    in, then remove the camera (its open clips are closed with what they have)."""
    sid = clip.camera
    service.call("POST", "/v1/streams", json={"id": sid, "url": cameras.urls[sid]})
    out: dict = {"clip": clip.path, "camera": sid, "frames": clip.frames, "negative": None}
    connect_deadline = time.monotonic() + 60
    live_since: float | None = None
    status: dict = {}
    try:
        while True:
            status = service.call("GET", f"/v1/streams/{sid}").json()
            now = time.monotonic()
            if status["frames_received"] > 0 and live_since is None:
                live_since = now
            if live_since is None and now > connect_deadline:
                raise RuntimeError(f"camera {sid} did not go live within 60 s: {status.get('last_error')}")
            if status["frames_received"] >= clip.frames or (live_since and now - live_since > clip.duration_s + margin_s):
                break
            if negatives and clip.kind == "adl" and out["negative"] is None and live_since is not None:
                if _fallen(service.call("GET", f"/v1/streams/{sid}/timeline").json()):
                    neg = service.call("POST", f"/v1/streams/{sid}/negative", ok=(201, 409),
                                       json={"by": REVIEWER, "comment": COMMENT})
                    if neg.status_code == 201:
                        body = neg.json()
                        out["negative"] = {"id": body.get("id"), "boxes": len(body.get("boxes") or []),
                                           "at_frame": status["frames_received"]}
            time.sleep(0.25)
        time.sleep(0.5)  # the last frames' inference
    finally:
        final = service.call("DELETE", f"/v1/streams/{sid}", ok=(200, 404))
    if final.status_code == 200:
        status = final.json()
    out.update({k: status.get(k) for k in ("frames_received", "frames_processed", "frames_dropped",
                                            "frames_not_analysed", "state", "last_error")})
    out["played_s"] = round(time.monotonic() - live_since, 1) if live_since else None
    return out


def wait_for_clips(service: Service, timeout: float = 240) -> list[dict]:
    """Fall alerts once none of their clips is still being recorded or written."""
    deadline = time.monotonic() + timeout
    while True:
        alerts = service.alerts()
        pending = [a for a in alerts if a.get("clip_status") == "pending"]
        if not pending or time.monotonic() > deadline:
            return alerts
        time.sleep(1.0)


def verdict_for(alert: dict, clip: Clip) -> tuple[str, float]:
    """The operator's verdict from the annotation, and where in the clip the alert came (s): any
    alert on a daily-activity clip is a false alarm; on a fall clip it is a fall at or after the
    annotated fall start (the camera loops: its time is taken modulo the clip's length)."""
    t = float(alert["pts_s"]) % clip.duration_s
    if clip.kind == "fall" and clip.fall_s is not None and clip.fall_s[0] <= t <= clip.fall_s[1] + 1e-6:
        return "fall", t
    return "false_alarm", t


# ----------------------------------------------------------------------------- the table
def _f(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def render_table(demo: dict) -> str:
    """table.md: the before/after rows, then what the loop did."""
    a = demo["args"]
    split = demo.get("split") or {"review": [], "test": []}
    lines = [f"### Site adaptation on `{Path(a['room']).name}`: before and after, on the TEST half",
             "",
             f"Split `{a['split']}`: REVIEW half {', '.join(split['review'])}; TEST half "
             f"{', '.join(split['test'])} (never seen by the fine-tune). The REVIEW half was played as "
             "RTSP cameras into the service "
             + ("**with the descent rule off** (`FALLDET_PIPELINE__DESCENT_S=` empty: an alert `confirm_s` after any "
                "fall posture, the faster rule a home may choose), so the model's own errors became alerts to review. "
                if a["review_rules"] == "descent-off" else "with the shipped fall rules. ")
             + f"Models run as {'FP32' if a['int8'] == 'off' else 'the service chooses (FALLDET_INT8=auto)'}; "
             "`descent off` rows are replays of the same analyses with `descent_s` empty.",
             "",
             "| model | fall rules | falls alerted | false alerts | clips with false alerts | false fall segments "
             "| frame accuracy |",
             "|---|---|---|---|---|---|---|"]
    for row in demo["rows"]:
        f = row["figures"]
        lines.append(f"| {row['model']} | {row['rules']} | {f['falls_alerted']} of {f['fall_clips']} | "
                     f"{f['false_alerts']} | {f['clips_with_false_alerts']} of {f['clips']} | "
                     f"{f['false_fall_segments']} | {_f(f['frame_accuracy'])} |")
    cams = demo.get("cameras") or []
    rv = demo.get("reviews") or {}
    lines += ["", "| the loop | |", "|---|---|"]
    if cams:
        negs = sum(1 for c in cams if c.get("negative"))
        lines.append(f"| review cameras | {len(cams)} clips ({sum(c['frames'] for c in cams)} frames) played once "
                     f"over RTSP: {sum(c.get('frames_received') or 0 for c in cams)} frames received (a camera loops "
                     f"until removed), {sum(c.get('frames_processed') or 0 for c in cams)} analysed (the service's "
                     f"detect_fps); \"nobody fell here\" marks: {negs} |")
        per_clip: dict[str, list[str]] = {}
        for al in demo.get("alerts") or []:
            per_clip.setdefault(al["clip"], []).append(f"{al['verdict']} at {al['at_clip_s']:.1f} s")
        alerted = "; ".join(f"{Path(k).parent}/{Path(k).stem[:2]}: {', '.join(v)}" for k, v in per_clip.items())
        lines.append(f"| their fall alerts | {alerted or 'none'} |")
    if rv:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(rv.get("verdicts", {}).items())) or "none"
        lines.append(f"| alerts reviewed | {rv.get('reviewed', 0)} ({counts}); by \"{REVIEWER}\" from the annotations |")
    ex = demo.get("export")
    if ex:
        lines.append(f"| frames exported | {ex['frames']['train']} train + {ex['frames']['val']} held out, from "
                     f"{ex['incidents']['train']} + {ex['incidents']['val']} incidents "
                     f"(boxes: fall {ex['boxes']['fall']}, person {ex['boxes']['person']}); "
                     f"skipped {len(ex.get('skipped') or [])}"
                     + (f" ({'; '.join(sorted({w.split(': ', 1)[-1] for w in ex['skipped']}))})" if ex.get("skipped") else "")
                     + " |")
    ft = demo.get("finetune")
    if ft:
        rep = ft.get("report") or {}
        b, af = rep.get("before") or {}, rep.get("after") or {}
        bs, as_ = b.get("site") or {}, af.get("site") or {}
        outcome = {0: "exported", 3: "**refused** (exit 3): " + "; ".join(rep.get("refused") or [])}.get(
            ft["exit"], f"failed (exit {ft['exit']}): {ft.get('error', '')}")
        plan = rep.get("plan") or {}
        wall = demo["stage_s"].get("finetune")
        lines.append(f"| fine-tune | {outcome}; {_f(rep.get('minutes'), '.1f')} min by its own count, "
                     f"{_f(wall / 60 if wall else None, '.1f')} min wall"
                     f"{' with the export and its calibration' if ft['exit'] == 0 else ''} (budget "
                     f"{a['budget_min']} min; {plan.get('epochs')} x {plan.get('epoch_size')} images at "
                     f"{plan.get('imgsz')} px); replay {', '.join(rep.get('replay') or []) or 'none'} |")
        if bs or as_:
            lines.append(f"| its held-out site frames | accuracy {_f(bs.get('frame_accuracy'))} -> "
                         f"{_f(as_.get('frame_accuracy'))}, wrongly fall {bs.get('false_fall_frames')} -> "
                         f"{as_.get('false_fall_frames')}, falls missed {bs.get('missed_fall_frames')} -> "
                         f"{as_.get('missed_fall_frames')} (of {bs.get('frames')} frames) |")
        if (b.get("base") or {}).get("score") is not None:
            lines.append(f"| its base sources' val | (fall AP50 + person AP50) / 2: {_f(b['base']['score'])} -> "
                         f"{_f((af.get('base') or {}).get('score'))} |")
    sw = demo.get("swap")
    if sw:
        lines.append(f"| swap | `PUT /v1/model` {'ok' if sw['matches'] else 'MISMATCH'}: `GET /v1/model` shows "
                     f"{sw['served_sha256'][:12]} (file {sw['file_sha256'][:12]}; before {sw['before_sha256'][:12]}) |")
    if demo.get("stopped_because"):
        lines.append(f"| stopped | {demo['stopped_because']} |")
    lines.append(f"| stage times (s) | {', '.join(f'{k} {v:.0f}' for k, v in demo['stage_s'].items())} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    data = Path(os.environ.get("FALLDET_DATA") or REPO_ROOT.parent / "shared" / "data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--room", type=Path, default=data / "videos" / "assist-iot",
                    help="clip folder of one room with annotations.csv (default %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "runs" / "site-demo", help="results (default %(default)s)")
    ap.add_argument("--force", action="store_true", help="write into a non-empty OUT (its demo folders are replaced)")
    ap.add_argument("--split", choices=["odd", "even"], default="odd",
                    help="odd: review the first fall clip + odd-numbered adl clips, test the rest; even: the mirror")
    ap.add_argument("--review-clips", help="only these of the REVIEW half: N (falls first) or e.g. fall/05,adl/11")
    ap.add_argument("--test-clips", help="only these of the TEST half: N (falls first) or e.g. fall/07,adl/12")
    ap.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "fall-detector.onnx",
                    help="the shipped ONNX (before)")
    ap.add_argument("--base", type=Path, default=REPO_ROOT / "models" / "fall-detector.pt",
                    help="its weights, where the fine-tune starts")
    ap.add_argument("--int8", choices=["off", "auto"], default="off",
                    help="FALLDET_INT8 for every run (off: both models FP32, a fair comparison; default)")
    ap.add_argument("--review-rules", choices=["descent-off", "default"], default="descent-off",
                    help="fall rules of the review cameras (default: descent rule off, see the module docstring)")
    ap.add_argument("--no-negatives", dest="negatives", action="store_false",
                    help="no \"nobody fell here\" mark on daily-activity cameras that show someone fallen")
    ap.add_argument("--post-s", type=float, default=3.0, help="clip post-roll of the review cameras (s)")
    ap.add_argument("--margin-s", type=float, default=3.0, help="seconds a camera may play past its length")
    ap.add_argument("--per-incident", type=int, default=20, help="review-export --per-incident")
    ap.add_argument("--budget-min", type=float, default=12.0, help="finetune --budget-min (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=None, help="finetune --epochs (default: its own)")
    ap.add_argument("--threads", type=int, default=2, help="finetune --threads")
    ap.add_argument("--finetune-args", default="", help="more finetune options, one string "
                    "(e.g. \"--base-val-limit 16 --batch 4\" for a quick run)")
    return ap.parse_args(argv)


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise SystemExit(f"{out} is not empty: choose a new --out or add --force")
        for name in ("state", "site-data", "finetune", "ndjson", "logs", "table.md", "demo.json",
                     "review.csv", "test.csv"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class Stages:
    """Seconds per stage, for the table and the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str) -> "_Timer":
        return _Timer(self, name)


class _Timer:
    def __init__(self, stages: Stages, name: str) -> None:
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        progress(self.name, "start")

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.stages.seconds[self.name] = round(time.monotonic() - self.t0, 1)
        progress(self.name, f"{'done' if kind is None else 'stopped'} after {self.stages.seconds[self.name]:.1f} s")


def run_demo(args: argparse.Namespace, children: Children, demo: dict) -> None:
    """The stages of the module docstring; fills `demo` as it goes (written even after an error)."""
    out = args.out.resolve()
    logs = out / "logs"
    stages = Stages(demo["stage_s"])
    env = clean_env(FALLDET_INT8=args.int8)

    with stages.timed("split"):
        review, test = split_room(load_room(args.room), args.split)
        review, test = limit(review, args.review_clips, "review"), limit(test, args.test_clips, "test")
        if not review or not test:
            raise SystemExit("both halves need at least one clip")
        demo["split"] = {"review": [c.path for c in review], "test": [c.path for c in test]}
        write_annotations(review, out / "review.csv")  # a record of the half; the service plays it
        test_csv = write_annotations(test, out / "test.csv")
        progress("split", f"review {len(review)} clips, test {len(test)} clips ({args.split})")

    with stages.timed("before"):
        demo["before"] = evaluate(children, args.room, test_csv, args.model, out / "ndjson" / "before", logs, env,
                                  "before")
        for rules in ("default", "descent_off"):
            demo["rows"].append({"model": "shipped", "rules": rules.replace("_", " "),
                                 "figures": row_figures(demo["before"][rules])})
        progress("before", json.dumps([r["figures"] for r in demo["rows"]]))

    serve_env = env | {"FALLDET_CLIPS__POST_S": str(args.post_s), "FALLDET_MODEL": str(args.model.resolve())}
    if args.review_rules == "descent-off":
        serve_env["FALLDET_PIPELINE__DESCENT_S"] = ""  # None: alert confirm_s after any fall posture
    service = cameras = None
    try:
        with stages.timed("cameras"):
            service = Service(children, out / "state", logs / "serve.log", serve_env)
            demo["model_before"] = service.call("GET", "/v1/model").json().get("sha256")
            cameras = RtspCameras(children, args.room, review, logs / "rtsp_server.log")
            by_camera = {c.camera: c for c in review}
            for clip in review:
                cam = play(service, cameras, clip, args.negatives, args.margin_s)
                demo["cameras"].append(cam)
                progress("cameras", f"{clip.path}: {cam['frames_received']} frames received, "
                                    f"{cam['frames_processed']} analysed, negative "
                                    f"{'sent' if cam['negative'] else 'no'}")
            cameras.stop()  # not needed any more: the rest works on the store
            cameras = None

        with stages.timed("reviews"):
            alerts = wait_for_clips(service)
            verdicts: dict[str, int] = {}
            for alert in alerts:
                clip = by_camera.get(alert["source"])
                if clip is None:
                    continue
                verdict, t = verdict_for(alert, clip)
                service.call("POST", f"/v1/alerts/{alert['id']}/review",
                             json={"verdict": verdict, "by": REVIEWER, "comment": COMMENT})
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                demo["alerts"].append({"id": alert["id"], "clip": clip.path, "at_clip_s": round(t, 2),
                                       "verdict": verdict, "clip_status": alert.get("clip_status"),
                                       "clip_error": alert.get("clip_error")})
            demo["reviews"] = {"reviewed": sum(verdicts.values()), "verdicts": verdicts,
                               "negatives": sum(1 for c in demo["cameras"] if c.get("negative"))}
            progress("reviews", f"{demo['reviews']}")

        with stages.timed("export"):
            rc, stdout = children.run("review-export", [PYTHON, "-m", "service", "review-export", "--out",
                                                        str(out / "site-data"), "--per-incident",
                                                        str(args.per_incident)],
                                      env | {"FALLDET_STATE_DIR": str(out / "state")}, logs / "review-export.log")
            if rc != 0:
                demo["stopped_because"] = f"review-export failed (exit {rc}; {logs / 'review-export.log'})"
                demo["failed"] = True
                return
            demo["export"] = json.loads(stdout)
            progress("export", f"frames {demo['export']['frames']}, incidents {demo['export']['incidents']}")

        with stages.timed("finetune"):
            cmd = [PYTHON, "-m", "training", "finetune", "--site", str(out / "site-data"), "--from", str(args.base),
                   "--out", str(out / "finetune"), "--budget-min", str(args.budget_min), "--threads",
                   str(args.threads), "--no-progress"]
            cmd += (["--epochs", str(args.epochs)] if args.epochs is not None else []) + shlex.split(args.finetune_args)
            rc, stdout = children.run("finetune", cmd, env | {"OMP_NUM_THREADS": str(args.threads)},
                                      logs / "finetune.log", timeout=args.budget_min * 60 * 4 + 1800)
            report_path = out / "finetune" / "finetune.json"
            report = json.loads(report_path.read_text()) if report_path.is_file() else None
            demo["finetune"] = {"exit": rc, "report": report}
            if rc != 0:
                tail = (logs / "finetune.log").read_text(errors="replace").strip().splitlines()[-1:]
                demo["finetune"]["error"] = tail[0] if tail else ""
                demo["stopped_because"] = ("the fine-tune refused to export (exit 3): the demo stops here, a valid "
                                           "result" if rc == 3 else f"the fine-tune failed (exit {rc}): "
                                           f"{demo['finetune']['error']}")
                demo["failed"] = rc != 3  # a refusal is a result; anything else is not
                progress("finetune", demo["stopped_because"])
                return
            tuned = Path(json.loads(stdout)["onnx"]["file"])
            progress("finetune", f"exported {tuned} in {report.get('minutes')} min")

        with stages.timed("swap"):
            put = service.call("PUT", "/v1/model", admin=True, content=tuned.read_bytes(), timeout=300)
            served = service.call("GET", "/v1/model").json()
            demo["swap"] = {"file": str(tuned), "file_sha256": sha256(tuned), "served_sha256": served.get("sha256"),
                            "before_sha256": demo.get("model_before") or "", "put_status": put.status_code,
                            "previous_sha256": (served.get("previous") or {}).get("sha256")}
            demo["swap"]["matches"] = demo["swap"]["served_sha256"] == demo["swap"]["file_sha256"]
            if not demo["swap"]["matches"]:
                raise RuntimeError("GET /v1/model does not show the swapped file's sha256")
            progress("swap", f"the service runs {served.get('sha256', '')[:12]} (was {demo['model_before'][:12]})")
    finally:
        if cameras is not None:
            progress("cameras", f"stopping the RTSP server (pid {cameras.proc.pid})")
            cameras.stop()
        if service is not None:
            progress("service", f"stopping (pid {service.proc.pid})")
            demo["service_exit"] = service.stop()

    with stages.timed("after"):
        demo["after"] = evaluate(children, args.room, test_csv, tuned, out / "ndjson" / "after", logs, env, "after")
        for rules in ("default", "descent_off"):
            demo["rows"].append({"model": "fine-tuned", "rules": rules.replace("_", " "),
                                 "figures": row_figures(demo["after"][rules])})
        demo["rows"].sort(key=lambda r: (r["rules"], r["model"] != "shipped"))
        progress("after", json.dumps([r["figures"] for r in demo["rows"] if r["model"] == "fine-tuned"]))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.room / "annotations.csv").is_file():
        raise SystemExit(f"{args.room}: no annotations.csv")
    for needed in (args.model, args.base):
        if not needed.is_file():
            raise SystemExit(f"not found: {needed}")
    prepare_out(args.out, args.force)
    sys.path.insert(0, str(REPO_ROOT))
    # a SIGTERM to this script ends it like Ctrl-C: the finally below stops every child by its PID
    signal.signal(signal.SIGTERM, _interrupt)
    children = Children()
    demo: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "stage_s": {}, "rows": [], "cameras": [], "alerts": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    rc = 0
    try:
        run_demo(args, children, demo)
    except KeyboardInterrupt:
        demo["stopped_because"] = "interrupted"
        rc = 130
    except Exception as exc:  # noqa: BLE001 - recorded, then the children are stopped
        demo["stopped_because"] = f"error: {exc}"
        progress("error", str(exc))
        rc = 1
    finally:
        children.stop_all()
        demo["total_s"] = round(time.monotonic() - T0, 1)
        out = args.out
        (out / "demo.json").write_text(json.dumps(demo, indent=2))
        (out / "table.md").write_text(render_table(demo))
        progress("done", f"{out / 'table.md'} and {out / 'demo.json'} written")
    print((args.out / "table.md").read_text())
    return 1 if rc == 0 and demo.get("failed") else rc


if __name__ == "__main__":
    raise SystemExit(main())
