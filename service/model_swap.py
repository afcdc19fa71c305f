"""Swapping the detector without a restart: check, warm up, swap between batches, keep the previous.

Why here and not in the runtime: a `Runtime` is one file's session; deciding which file runs (an
admin's `PUT /v1/model`, a file dropped in the watched folder, a rollback) is the service's job.

A new file goes through the same checks as at start (`Runtime`: `images` input, `detections`
output, `names` and `imgsz` metadata) plus: its names include `fall`, and one warm-up run on grey
frames returns [N, K, 6]. Only then does the inference worker take it, at its next batch
(`InferenceWorker.swap_runtime`): the batch in flight ends on the old model, no camera, upload or
WebSocket is touched. A file that fails any check is refused with the reason and the old model
keeps running. The replaced runtime stays loaded as `previous`, so a rollback is instant.

Which file is active survives a restart: `STATE_DIR/models/active.json` names it (and the
previous one), and is honoured while `FALLDET_MODEL` is still the file it was swapped over.
Uploaded files are kept as `STATE_DIR/models/<sha256[:16]>.onnx` (mode 0600).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client import Gauge

from service.runtime import ModelContractError, Runtime, runtime_from_settings
from service.settings import Settings

log = logging.getLogger(__name__)

MODEL_INFO = Gauge("falldet_model_info", "The detector in use (value 1): its file and sha256 as labels",
                   ["file", "sha256"])
MODEL_SWAPS = Gauge("falldet_model_swaps", "Model swaps (and rollbacks) done since start")
HASH_LEN = 16  # hex digits of the sha256 shown as the model's short id (labels, alerts)
ACTIVE_FILE = "active.json"


class ModelRejected(ValueError):
    """A file that cannot replace the running model; the message says why (the old one keeps running)."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (read in blocks, never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _json_or_text(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass
class LoadedModel:
    """One runtime with what identifies it."""

    runtime: Any
    path: Path
    sha256: str
    loaded_at: float = field(default_factory=time.time)
    source: str = "start"  # start | upload | watch | rollback

    @property
    def short(self) -> str:
        return self.sha256[:HASH_LEN]

    def info(self) -> dict:
        """File, hash, figures and provenance from the file's metadata (GET /v1/model)."""
        meta: dict[str, str] = dict(getattr(self.runtime, "metadata", {}) or {})
        return {"file": self.path.name, "path": str(self.path), "sha256": self.sha256, "id": self.short,
                "bytes": self.path.stat().st_size if self.path.exists() else None,
                "loaded_at": self.loaded_at, "loaded_by": self.source,
                "names": list(getattr(self.runtime, "names", [])), "imgsz": getattr(self.runtime, "imgsz", None),
                "score_threshold": getattr(self.runtime, "score_threshold", None),
                "operating_point": _json_or_text(meta.get("operating_point")),
                "metrics": _json_or_text(meta.get("metrics")),
                "training_protocol": _json_or_text(meta.get("training_protocol")),
                "epochs_trained": meta.get("epochs_trained"),
                "finetune": _json_or_text(meta.get("finetune"))}

    def tag(self) -> dict:
        """What an alert records of the model that raised it."""
        return {"file": self.path.name, "sha256": self.short}


class ModelManager:
    """Owns which model the inference worker runs; thread-safe (one lock around a swap)."""

    def __init__(self, settings: Settings, worker: Any, runtime: Any,
                 on_change: Callable[[LoadedModel], None] | None = None,
                 load: Callable[[Path], Any] | None = None) -> None:
        """`runtime`: the one the worker runs now; `on_change(current)` after each swap (the app
        points `app.state.runtime` and the store's model tag at it); `load(path)` builds a runtime
        (default: as at start, from the settings with the model replaced)."""
        self.settings = settings
        self.worker = worker
        self.folder = Path(settings.state_dir) / "models"
        self.on_change = on_change
        self._load = load or self._load_from_settings
        self._lock = threading.Lock()
        path = Path(getattr(runtime, "model_path", settings.model))
        self.current = LoadedModel(runtime, path, file_sha256(path) if path.is_file() else "0" * 64)
        self.previous: LoadedModel | None = None
        self.last_error: str | None = None
        self._publish()

    # -- loading ----------------------------------------------------------------------------------
    def _load_from_settings(self, path: Path) -> Runtime:
        return runtime_from_settings(self.settings.model_copy(update={"model": path}))

    def check(self, path: Path) -> Any:
        """A warmed-up runtime of `path`, or ModelRejected with the reason."""
        path = Path(path)
        if not path.is_file():
            raise ModelRejected(f"no such model file: {path.name}")
        try:
            runtime = self._load(path)
        except ModelContractError as exc:
            raise ModelRejected(f"{path.name} breaks the model contract: {exc}") from None
        except FileNotFoundError:
            raise ModelRejected(f"no such model file: {path.name}") from None
        except Exception as exc:  # onnxruntime: truncated or not an ONNX file at all
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelRejected(f"{path.name} is not a loadable ONNX model ({first})") from None
        names = list(getattr(runtime, "names", []))
        if "fall" not in names:
            raise ModelRejected(f"{path.name} has no 'fall' class (names {names})")
        try:
            runtime.warmup(2)
        except Exception as exc:
            raise ModelRejected(f"{path.name} failed its warm-up run: {exc}") from None
        return runtime

    # -- swapping ---------------------------------------------------------------------------------
    def swap(self, path: Path, source: str = "upload") -> dict:
        """Check and warm `path`, then make it the running model; returns the new `info()`."""
        path = Path(path)
        sha = file_sha256(path) if path.is_file() else None
        if sha is not None and sha == self.current.sha256:
            return self.info()  # already running: nothing to do
        runtime = self.check(path)  # slow part, outside the lock: the old model keeps running
        with self._lock:
            new = LoadedModel(runtime, path, sha or file_sha256(path), source=source)
            self.worker.swap_runtime(runtime)
            self.previous, self.current = self.current, new
            self._after_swap()
        log.info("model swapped: %s (%s) replaces %s (%s), by %s", new.path.name, new.short,
                 self.previous.path.name, self.previous.short, source)
        return self.info()

    def rollback(self) -> dict:
        """Back to the previous model (the current one becomes the previous). LookupError: none."""
        with self._lock:
            if self.previous is None:
                raise LookupError("there is no previous model to go back to")
            back = self.previous
            self.worker.swap_runtime(back.runtime)
            self.previous, self.current = self.current, back
            back.loaded_at, back.source = time.time(), "rollback"
            self._after_swap()
        log.info("model rolled back to %s (%s)", back.path.name, back.short)
        return self.info()

    def _after_swap(self) -> None:
        MODEL_SWAPS.inc()
        self._publish()
        self._save_active()
        if self.on_change is not None:
            self.on_change(self.current)

    def _publish(self) -> None:
        MODEL_INFO.clear()
        MODEL_INFO.labels(self.current.path.name, self.current.short).set(1)

    def info(self) -> dict:
        out = self.current.info()
        out["previous"] = self.previous.info() if self.previous is not None else None
        out["watch_dir"] = str(self.settings.model_watch_dir) if self.settings.model_watch_dir else None
        out["last_error"] = self.last_error
        return out

    # -- uploads ----------------------------------------------------------------------------------
    def store_upload(self, chunks: Any) -> Path:
        """Write an uploaded file under STATE_DIR/models (0600) named by its hash; returns the path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".upload.", suffix=".tmp")
        os.fchmod(fd, 0o600)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            final = self.folder / f"{h.hexdigest()[:HASH_LEN]}.onnx"
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    # -- persistence ------------------------------------------------------------------------------
    def _save_active(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        doc = {"base": str(Path(self.settings.model).resolve()), "current": str(self.current.path.resolve()),
               "previous": str(self.previous.path.resolve()) if self.previous else None, "at": time.time()}
        tmp = self.folder / f".{ACTIVE_FILE}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.folder / ACTIVE_FILE)


def active_model(settings: Settings) -> Path | None:
    """The file a swap made active before a restart, if it still applies (same FALLDET_MODEL, file there)."""
    path = Path(settings.state_dir) / "models" / ACTIVE_FILE
    try:
        doc = json.loads(path.read_text())
        if doc.get("base") != str(Path(settings.model).resolve()):
            return None
        current = Path(doc["current"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return current if current.is_file() else None


class ModelWatcher:
    """Polls `model_watch_dir` and swaps in the newest complete `*.onnx` not seen before."""

    def __init__(self, manager: ModelManager, folder: Path, interval_s: float) -> None:
        self.manager = manager
        self.folder = Path(folder)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sizes: dict[Path, tuple[float, int]] = {}
        self._done: set[tuple[Path, float, int]] = set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poll(self) -> dict | None:
        """One look: the newest file unchanged since the last look is swapped in (info), else None."""
        try:
            files = [p for p in self.folder.glob("*.onnx") if p.is_file()]
        except OSError:
            return None
        stamps = {}
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            stamps[p] = (st.st_mtime, st.st_size)
        stable = [p for p, s in stamps.items() if self._sizes.get(p) == s and (p, *s) not in self._done]
        self._sizes = stamps
        if not stable:
            return None
        newest = max(stable, key=lambda p: stamps[p][0])
        self._done.add((newest, *stamps[newest]))
        try:
            return self.manager.swap(newest, source="watch")
        except ModelRejected as exc:
            self.manager.last_error = str(exc)
            log.error("watched model refused, the running model stays: %s", exc)
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:
                log.exception("model watch failed")
