"""Clean frames of a fall clip, kept beside it for site training (`<clip stem>.frames.tar`).

Why a second file and not the MP4: the clip has the fallen person's box, a label and a caption drawn
into its pixels, and a detector trained on those frames learns to find red rectangles. The clip
writer already holds every frame as the camera's JPEG (nothing drawn); this keeps a few of them
(`EVERY_S` apart) with the boxes of every tracked person, so `python -m service review-export` can
make labelled images once an operator has reviewed the alert.

The tar holds `frames.json` (`{"alert_id", "source", "track_id", "onset_s", "alert_s", "frames":
[{"file", "pts_s", "captured_at", "width", "height", "box" (the fallen track's, or null),
"others": [[x1, y1, x2, y2], ...]}]}`, boxes in the JPEG's pixels) and the JPEGs. It is written
like the clip (temp file, fsync, rename), mode 0600 (views of people's rooms), and retention
deletes it with its clip.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

EVERY_S = 0.5  # at most two frames a second: neighbouring frames teach nothing new
SUFFIX = ".frames.tar"


def frames_path(clip: Path) -> Path:
    """The sidecar of a clip file."""
    clip = Path(clip)
    return clip.with_name(clip.stem + SUFFIX)


class FrameKeeper:
    """Collects sampled clean frames of one clip job; `write()` once the clip is durable."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.frames: list[tuple[dict, bytes]] = []
        self._next_s: float | None = None

    def add(self, entry: Any, box: tuple | None, others: dict | None) -> None:
        """One buffered frame (`BufferedFrame`: JPEG of the frame scaled by `entry.scale`)."""
        if self._next_s is not None and entry.pts_s + 1e-6 < self._next_s:
            return
        self._next_s = entry.pts_s + EVERY_S
        k = float(entry.scale)
        scaled = lambda b: [round(float(v) * k, 1) for v in b]  # noqa: E731
        other_boxes = [scaled(b) for t, b in (others or {}).items() if t != self.job.track_id]
        meta = {"file": f"{len(self.frames):05d}.jpg", "pts_s": round(float(entry.pts_s), 4),
                "captured_at": getattr(entry, "at", None), "index": getattr(entry, "index", None),
                "box": scaled(box) if box is not None else None, "others": other_boxes}
        self.frames.append((meta, entry.jpeg))

    def write(self, clip: Path) -> Path | None:
        """Write the sidecar beside `clip` (atomic, 0600); None when no frame was kept."""
        if not self.frames:
            return None
        job = self.job
        doc = {"alert_id": job.alert_id, "source": job.source, "track_id": job.track_id,
               "onset_s": round(float(job.onset_s), 4), "alert_s": round(float(job.alert_s), 4),
               "merged": list(getattr(job, "merged", [])), "frames": []}
        for meta, jpeg in self.frames:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                meta["height"], meta["width"] = int(image.shape[0]), int(image.shape[1])
            doc["frames"].append(meta)
        final = frames_path(clip)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    _add(tar, "frames.json", json.dumps(doc).encode())
                    for meta, jpeg in self.frames:
                        _add(tar, meta["file"], jpeg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o600
    tar.addfile(info, io.BytesIO(data))


def read_frames(path: Path) -> tuple[dict, dict[str, bytes]]:
    """(frames.json, {file: JPEG bytes}) of a sidecar."""
    with tarfile.open(path, mode="r") as tar:
        files = {}
        doc = None
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if member.name == "frames.json":
                doc = json.loads(data)
            else:
                files[member.name] = data
    if doc is None:
        raise ValueError(f"{path}: no frames.json")
    return doc, files
