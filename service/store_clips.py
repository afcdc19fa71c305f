"""The alert store's fall clips: linking a clip to its alerts, why an alert has none, and retention.

Split out of `service/store.py` (a mixin of `AlertStore`: it uses the store's connections, lock and
retention helpers). Why a clip's state is kept in the row and not only in the clip writer's memory:
an alert must say, on the API, the operator page and MQTT, whether its clip is coming, ready, or why
there is none (over `clips.max_active`, no frames, an encoder error, pruned, the service stopped
mid-write); an alert with no clip and no reason was issue 25's complaint.

`clip_status` in the alert JSON (fall_alert events only; null for the other types):
- `ready`: the MP4 is linked (`clip_url`);
- `pending`: being recorded or written by this process;
- `failed`: none was made, `clip_error` says why (also: the service stopped before it was written);
- `pruned`: retention deleted it;
- `none`: not made here (clips disabled, or raised by another pod; `clip_error` says which).
Several alerts of one camera whose clips overlap share one file (service/clips.py merges them), so
a file goes only once no row points at it.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from service.clip_frames import frames_path

PRUNED = "pruned by retention"
STOPPED = "the service stopped before the clip was written"


def clip_fields(row: sqlite3.Row, run_id: str, clips_enabled: bool) -> dict:
    """`clip_url`, `clip_status`, `clip_error` of an alert row (see the module docstring)."""
    alert_id, clip, error = row["id"], row["clip"], row["clip_error"]
    out: dict[str, Any] = {"clip_url": f"/v1/alerts/{alert_id}/clip.mp4" if clip else None,
                           "clip_status": None, "clip_error": None}
    if row["type"] != "fall_alert":
        return out
    if clip:
        status = "ready"
    elif error == PRUNED:
        status = "pruned"
    elif error:
        status = "failed"
    elif row["origin"] is not None:
        status, error = "none", f"raised by pod {row['origin']}: its clip is kept there"
    elif not clips_enabled:
        status, error = "none", "clips are disabled (FALLDET_CLIPS__ENABLED=false)"
    elif row["run"] == run_id:
        status = "pending"
    else:
        status, error = "failed", STOPPED
    out.update(clip_status=status, clip_error=error)
    return out


class StoreClips:
    """Clip columns of `AlertStore` (mixin); every method takes the store's lock itself."""

    clips_enabled: bool = True  # ClipService sets it; False: new falls say "clips are disabled"
    clip_dir: Path
    _lock: Any
    _durable: sqlite3.Connection
    _book: sqlite3.Connection
    _counters: dict
    PRUNE_BATCH: int
    _KEEP: str

    def attach_clip(self, alert_id: str, rel: str, size: int) -> bool:
        """Link a written clip (path relative to `clip_dir`, already durable) to its alert.
        False when the alert is not stored (yet)."""
        return self._set_clip(alert_id, "clip = ?, clip_bytes = ?, clip_error = NULL", (str(rel), int(size)))

    def clip_failed(self, alert_id: str, reason: str) -> bool:
        """No clip will come for this alert, and why. False when the alert is not stored (yet)."""
        return self._set_clip(alert_id, "clip_error = ?", (str(reason)[:300],))

    def _set_clip(self, alert_id: str, assignments: str, args: tuple) -> bool:
        from service.store import _check_id

        alert_id = _check_id(alert_id)
        with self._lock:
            cur = self._durable.execute(
                f"UPDATE events SET {assignments}, clip_sent = CASE WHEN origin IS NULL THEN 0 ELSE 1 END"
                " WHERE id = ?", (*args, alert_id))
            linked = cur.rowcount == 1
        if linked:
            self._changed()
        return linked

    def clip_path(self, alert_id: str) -> Path | None:
        """The alert's clip file, or None (no clip yet, none made, or pruned)."""
        return self._stored_file(alert_id, "clip", self.clip_dir)

    def pending_clip_updates(self, limit: int = 100) -> list[dict]:
        """This pod's alerts whose clip outcome (ready or failed) is not yet on MQTT, oldest first."""
        with self._lock:
            rows = self._durable.execute(
                "SELECT * FROM events WHERE clip_sent = 0 ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [{"seq": r["seq"], "id": r["id"], "source": r["source"],
                 **clip_fields(r, self.run_id, self.clips_enabled)} for r in rows]

    def mark_clip_sent(self, alert_id: str) -> None:
        with self._lock:
            self._book.execute("UPDATE events SET clip_sent = 1 WHERE id = ?", (alert_id,))

    def _remove_clip_files(self, files: list[tuple[str, int]]) -> int:
        """Unlink clip files no row points at any more (a merged clip is shared by several alerts)."""
        from service.store import _unlink_all

        if not files:
            return 0
        with self._lock:
            used = {r[0] for r in self._durable.execute(
                "SELECT clip FROM events WHERE clip IN (SELECT value FROM json_each(?))",
                (json.dumps([rel for rel, _ in files]),))}
        gone = [(rel, size) for rel, size in files if rel not in used]
        _unlink_all(self.clip_dir, [(frames_path(Path(rel)).as_posix(), 0) for rel, _ in gone])  # its site frames
        return _unlink_all(self.clip_dir, gone)

    def _prune_clips(self, policy: Any, now: float, channels: str) -> tuple[int, int]:
        """Clips by age, then the oldest while all together exceed the cap; an unacknowledged fall
        alert keeps its clip (`_KEEP`). Row first (committed), then the file."""
        max_age = getattr(policy, "clip_max_age_days", None)
        max_mb = getattr(policy, "clip_max_total_mb", None)
        with self._lock:
            doomed = self._files_to_prune("clip", max_age, max_mb, now, channels,
                                          "fall clips", "unacknowledged fall alerts")
        count = freed = 0
        for i in range(0, len(doomed), self.PRUNE_BATCH):
            batch = json.dumps(doomed[i:i + self.PRUNE_BATCH])
            with self._lock:
                self._durable.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._durable.execute(
                        f"SELECT e.seq, e.clip, e.clip_bytes FROM events e WHERE e.clip IS NOT NULL"
                        f" AND e.seq IN (SELECT value FROM json_each(:batch)) AND NOT {self._KEEP}",
                        {"batch": batch, "channels": channels}).fetchall()
                    self._durable.execute("UPDATE events SET clip = NULL, clip_error = ?"
                                          " WHERE seq IN (SELECT value FROM json_each(?))",
                                          (PRUNED, json.dumps([r[0] for r in rows])))
                    self._durable.execute("COMMIT")
                except BaseException:
                    if self._durable.in_transaction:
                        self._durable.execute("ROLLBACK")
                    raise
            count += len(rows)
            freed += self._remove_clip_files([(r[1], r[2]) for r in rows])
        with self._lock:
            self._counters["pruned_clips"] = self._counters.get("pruned_clips", 0) + count
        return count, freed

    def _remove_orphan_clips(self, now: float, older_than_s: float = 3600.0) -> int:
        """Clip files no row points at (a clip whose alert was deleted, or a crash before the link),
        and temporary files of writes that died."""
        with self._lock:
            known = {r[0] for r in self._durable.execute("SELECT clip FROM events WHERE clip IS NOT NULL")}
        removed = 0
        for path in self.clip_dir.glob("[0-9]*/*.mp4"):  # day folders (uploads/ is the clip service's)
            rel = path.relative_to(self.clip_dir).as_posix()
            try:
                if rel not in known and path.stat().st_mtime < now - older_than_s:
                    path.unlink()
                    frames_path(path).unlink(missing_ok=True)
                    removed += 1
            except OSError:
                pass
        self._remove_clip_temp_files(older_than_s)
        return removed

    def _remove_clip_temp_files(self, older_than_s: float) -> None:
        cutoff = time.time() - older_than_s
        if not self.clip_dir.is_dir():
            return
        for tmp in self.clip_dir.glob("[0-9]*/.*.tmp"):  # day folders (uploads/ is the clip service's)
            try:
                if older_than_s <= 0 or tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass
