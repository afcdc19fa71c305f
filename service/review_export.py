"""`python -m service review-export --out DIR`: reviewed alerts become a YOLO data folder for
`python -m training finetune --site DIR`.

What each review gives (frames from the clip's clean sidecar, `service/clip_frames.py`):
- `false_alarm`: the tracked person's box, on every frame, is `person` ("a person, not a fall");
- `fall`: the tracked person's box is `fall` from the fall's onset on, `person` before it (frames
  after the onset where the track was not found are left out: an unboxed fallen person would teach
  "nothing here");
- `unsure`: left out;
- other tracked people in the frame are `person`; a "nobody fell here" view gives its people as
  `person` (and no box at all when nobody is in it: a clean background).
At most `per_incident` frames of one incident, spread evenly over its clip, so one long incident
does not outweigh the others. Whole incidents are held out (`val`, about `val_percent` of each
verdict, chosen by a hash of the incident id: the same split on every export) for the fine-tune's
before/after; a verdict with a single incident keeps it in train (`split_incidents`).

The folder holds images of people's rooms: every file is written 0600 and every folder 0700; it
stays on this machine unless someone copies it (docs/site-adaptation.md says so). The store is
opened read-only, so an export can run beside the serving process.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from service.clip_frames import frames_path, read_frames
from service.settings import Settings

NAMES = ["fall", "person"]
CLASS_MAP = {"fall": "fall", "person": ["sit", "stand", "lie"]}  # how the trainer maps them (sources.py)
FALL, PERSON = 0, 1


class ExportError(ValueError):
    """The export cannot be made (what to do about it is in the message)."""


@dataclass
class ExportReport:
    out: Path
    frames: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    incidents: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    boxes: dict[str, int] = field(default_factory=lambda: {"fall": 0, "person": 0})
    skipped: list[str] = field(default_factory=list)  # "incident: why"

    def to_json(self) -> dict:
        return {"out": str(self.out), "frames": self.frames, "incidents": self.incidents, "boxes": self.boxes,
                "skipped": self.skipped}


def _held_out(key: str, val_percent: float) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10000 < val_percent * 100


def split_incidents(incidents: list[tuple[str, str]], val_percent: float) -> dict[str, str]:
    """"train" or "val" per (incident, verdict), held out by verdict: a site's only confirmed fall
    must be learnt, not held out (a fine-tune that sees nothing but false alarms learns "nobody
    falls here"), so every verdict keeps an incident in train, and one with two or more gives one
    to val; when that leaves val empty, the most common verdict gives one (a fall last). Inside a
    verdict the hash of the incident id decides (the same split on every export)."""
    splits: dict[str, str] = {}
    by_verdict: dict[str, list[str]] = {}
    for key, verdict in incidents:
        by_verdict.setdefault(verdict, []).append(key)
    for keys in by_verdict.values():
        chosen = {key: "val" if _held_out(key, val_percent) else "train" for key in keys}
        ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
        if len(keys) == 1:
            chosen[keys[0]] = "train"
        elif all(v == "val" for v in chosen.values()):
            chosen[ranked[0]] = "train"
        elif all(v == "train" for v in chosen.values()):
            chosen[ranked[0]] = "val"
        splits.update(chosen)
    if len(splits) >= 2 and "val" not in splits.values():  # every verdict had one: the before/after needs one
        verdict = max(by_verdict, key=lambda v: (len(by_verdict[v]), v != "fall"))  # a fall is the last to go
        splits[by_verdict[verdict][0]] = "val"
    return splits


def _spread(items: list, n: int) -> list:
    """At most `n` of `items`, evenly spaced (first and last included)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _yolo_line(cls: int, box: list[float], w: int, h: int) -> str | None:
    x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT: set it anyway


def _connect_ro(db: Path) -> sqlite3.Connection:
    if not Path(db).is_file():
        raise ExportError(f"no alert store at {db} (set FALLDET_STATE_DIR or FALLDET_DB to the service's)")
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True, timeout=30.0)
    conn.row_factory = sqlite3.Row
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < 6:
        raise ExportError(f"{db} has schema {version}: it has no reviews yet (start the service once to upgrade it)")
    return conn


def export_reviews(settings: Settings, out: Path, per_incident: int = 20, val_percent: float = 25.0,
                   force: bool = False) -> ExportReport:
    """Write the site data folder `out` from the store of `settings`; see the module docstring."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty: choose a new folder (or --force to write over it)")
    conn = _connect_ro(Path(settings.db))
    try:
        reviews = conn.execute(
            "SELECT r.*, e.clip, e.body FROM reviews r LEFT JOIN events e ON e.id = r.incident"
            " WHERE r.verdict != 'unsure' ORDER BY r.reviewed_at").fetchall()
        negatives = conn.execute("SELECT * FROM negatives ORDER BY at").fetchall()
    finally:
        conn.close()
    report = ExportReport(out)
    groups: list[tuple[str, list[dict]]] = []  # (incident, frames to write)
    for r in reviews:
        frames = _incident_frames(r, Path(settings.clip_dir), per_incident, report)
        if frames:
            groups.append((r["incident"], frames))
    neg_dir = Path(settings.state_dir) / "negatives"
    for n in negatives:
        path = neg_dir / n["image"]
        if not path.is_file():
            report.skipped.append(f"negative {n['id']}: its image is gone")
            continue
        import cv2

        image = cv2.imread(str(path))
        if image is None:
            report.skipped.append(f"negative {n['id']}: its image cannot be read")
            continue
        h, w = image.shape[:2]
        lines = [line for b in json.loads(n["boxes"]) if (line := _yolo_line(PERSON, b, w, h))]
        groups.append((f"negative-{n['id']}", [{
            "jpeg": path.read_bytes(), "lines": lines, "alert_id": None, "camera": n["source"],
            "verdict": "nobody_fell", "reviewer": n["marked_by"], "reviewed_at": n["at"], "frame_at": n["at"],
            "pts_s": None}]))
    if not groups:
        raise ExportError("nothing to export: no alert is reviewed as fall or false_alarm with a clip and its frames, "
                          "and no view is marked 'nobody fell here'")
    splits = split_incidents([(key, frames[0]["verdict"]) for key, frames in groups], val_percent)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    manifest = []
    for key, frames in groups:
        split = splits[key]
        report.incidents[split] += 1
        for k, f in enumerate(frames):
            stem = f"{hashlib.sha256(key.encode()).hexdigest()[:12]}-{k:03d}"
            _write_private(out / "images" / split / f"{stem}.jpg", f["jpeg"])
            _write_private(out / "labels" / split / f"{stem}.txt", ("\n".join(f["lines"]) + "\n").encode()
                           if f["lines"] else b"")
            report.frames[split] += 1
            for line in f["lines"]:
                report.boxes[NAMES[int(line.split()[0])]] += 1
            manifest.append({"image": f"images/{split}/{stem}.jpg", "split": split, "incident": key,
                             "alert_id": f["alert_id"], "camera": f["camera"], "verdict": f["verdict"],
                             "reviewer": f["reviewer"], "reviewed_at": f["reviewed_at"], "frame_at": f["frame_at"],
                             "pts_s": f["pts_s"], "boxes": len(f["lines"])})
    data = {"path": ".", "train": "images/train", "val": "images/val", "names": NAMES, "classes": CLASS_MAP,
            "private": "images of people's rooms: keep on this machine (docs/site-adaptation.md)"}
    _write_private(out / "data.yaml", yaml.safe_dump(data, sort_keys=False).encode())
    _write_manifest(out / "manifest.csv", manifest)
    _write_private(out / "export.json", json.dumps(report.to_json(), indent=2).encode())
    return report


def _incident_frames(r: sqlite3.Row, clip_dir: Path, per_incident: int, report: ExportReport) -> list[dict]:
    """The labelled frames of one reviewed incident (empty, with a note in `report`, when none)."""
    incident = r["incident"]
    if r["clip"] is None:
        report.skipped.append(f"{incident}: no clip (not written, failed or pruned)")
        return []
    sidecar = frames_path(clip_dir / r["clip"])
    if not sidecar.is_file():
        report.skipped.append(f"{incident}: its clip has no training frames ({sidecar.name} missing)")
        return []
    doc, files = read_frames(sidecar)
    if doc.get("alert_id") != incident:
        report.skipped.append(f"{incident}: its clip follows another alert's person (merged clip)")
        return []
    onset = float(doc["onset_s"])
    usable = []
    for fr in doc["frames"]:
        w, h = fr.get("width"), fr.get("height")
        if not w or not h or fr["file"] not in files:
            continue
        lines = []
        if fr.get("box") is not None:
            cls = FALL if r["verdict"] == "fall" and fr["pts_s"] >= onset else PERSON
            line = _yolo_line(cls, fr["box"], w, h)
            if line:
                lines.append(line)
        elif r["verdict"] == "fall" and fr["pts_s"] >= onset:
            continue  # the fallen person is somewhere, unboxed: leave the frame out
        lines += [line for b in fr.get("others", []) if (line := _yolo_line(PERSON, b, w, h))]
        usable.append({"jpeg": files[fr["file"]], "lines": lines, "alert_id": r["alert_id"], "camera": r["source"],
                       "verdict": r["verdict"], "reviewer": r["reviewed_by"], "reviewed_at": r["reviewed_at"],
                       "frame_at": fr.get("captured_at"), "pts_s": fr["pts_s"]})
    if not usable:
        report.skipped.append(f"{incident}: no usable frame in its clip")
    return _spread(usable, per_incident)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["image"])
    writer.writeheader()
    writer.writerows(rows)
    _write_private(path, buf.getvalue().encode())
