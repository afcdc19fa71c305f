"""The alert store: every fall event, its snapshot, its acknowledgement and its delivery state.

Why plain `sqlite3` with a versioned schema (PRAGMA user_version + a list of migration scripts)
rather than SQLAlchemy + Alembic: four tables, a dozen statements, and one process per database;
an ORM and a migration tool would be two dependencies and a migrations folder to ship for that.
The migration list below is append-only: a new version is a new script, applied in one transaction.

Durability (why the settings are what they are):
- WAL journal: readers (the REST API) never block the writer (the event bus) and vice versa.
- Events and acknowledgements are written on a connection with `synchronous=FULL`: in WAL mode
  that fsyncs the log on every commit, so an alert that was announced survives a power cut, not
  only a crash of the process (`NORMAL` is durable against a crash but may lose the last commits
  when the machine loses power). Alerts are rare, so one fsync each costs nothing that matters.
- Delivery bookkeeping (attempts, delivered flags) is written on a second connection with
  `synchronous=NORMAL`: losing a "delivered" flag to a power cut only means a resend, which
  receivers already drop by event id (delivery is at-least-once).
- The snapshot JPEG is written to a temporary file, fsynced, renamed into place and its folder
  fsynced BEFORE the row commits, so a row never points at a missing or half-written file.

All methods are thread-safe (one lock around both connections). Alert JSON is the event's
`to_json()` plus `acked`, `ack`, `snapshot_url` and `origin` (None for this pod's events, else the
pod that raised it and sent it over the broker).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from service.store_clips import StoreClips, clip_fields
from service.store_reviews import MIGRATION as REVIEWS_MIGRATION, StoreReviews

log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # event ids become file names: nothing else passes
STATES = ("open", "acked", "all")
EVENT_TYPES = ("fall_alert", "still_down", "fall_cleared", "camera_offline", "camera_online")
Outcome = Literal["pending", "delivered", "given_up"]

# Append-only. Index i brings the schema from version i to version i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- store order = delivery order
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        source TEXT NOT NULL,
        track_id INTEGER,
        at REAL NOT NULL,                        -- wall clock of the event's frame
        created_at REAL NOT NULL,                -- when it was stored
        run TEXT,                                -- the process run that raised it (NULL: mirrored)
        origin TEXT,                             -- NULL: raised here; else the pod that raised it
        body TEXT NOT NULL,                      -- Event.to_json()
        snapshot TEXT,                           -- path relative to the snapshot folder
        snapshot_bytes INTEGER NOT NULL DEFAULT 0,
        acked_at REAL,
        acked_by TEXT,
        ack_comment TEXT,
        ack_sent INTEGER NOT NULL DEFAULT 1      -- 0: a local ack not yet shared with other pods
    );
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_source_at ON events(source, at);
    CREATE INDEX events_snapshot_at ON events(at) WHERE snapshot IS NOT NULL;
    CREATE INDEX events_ack_unsent ON events(seq) WHERE ack_sent = 0;
    CREATE TABLE channels (                      -- one per delivery target (mqtt, each webhook)
        name TEXT PRIMARY KEY,
        start_seq INTEGER NOT NULL,              -- events up to here predate the channel: not sent
        done_seq INTEGER NOT NULL,               -- every event up to here is delivered or given up
        created_at REAL NOT NULL
    );
    CREATE TABLE deliveries (
        channel TEXT NOT NULL,
        seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
        attempts INTEGER NOT NULL DEFAULT 0,
        first_attempt_at REAL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        next_attempt_at REAL,
        delivered_at REAL,
        given_up_at REAL,
        PRIMARY KEY (channel, seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_seq ON deliveries(seq);
    """,
    """
    CREATE TABLE early_acks (                    -- acks from other pods whose event is not here yet
        id TEXT PRIMARY KEY,
        acked_at REAL NOT NULL,
        acked_by TEXT,
        ack_comment TEXT,
        received_at REAL NOT NULL                -- for pruning acks whose event never comes
    ) WITHOUT ROWID;
    """,
    """
    -- AlertStore.open_falls (MQTT ON/OFF state, queried once per sent event and once a second):
    -- this pod's unacknowledged alerts, and the clears that may close them.
    CREATE INDEX events_open_alerts ON events(source, seq)
        WHERE type = 'fall_alert' AND origin IS NULL AND acked_at IS NULL;
    CREATE INDEX events_clears ON events(run, track_id, seq) WHERE type = 'fall_cleared';
    """,
    """
    -- Fall clips (service/clips.py): the MP4 of a fall_alert, linked once written (path relative
    -- to the clip folder), like the snapshot.
    ALTER TABLE events ADD COLUMN clip TEXT;
    ALTER TABLE events ADD COLUMN clip_bytes INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX events_clip_seq ON events(seq) WHERE clip IS NOT NULL;
    """,
    """
    -- Why a fall_alert has no clip (service/store_clips.py), and clip outcomes not yet sent on MQTT.
    ALTER TABLE events ADD COLUMN clip_error TEXT;
    ALTER TABLE events ADD COLUMN clip_sent INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX events_clip_unsent ON events(seq) WHERE clip_sent = 0;
    """,
    REVIEWS_MIGRATION,  # reviews per incident and "nobody fell here" views (service/store_reviews.py)
)
EARLY_ACK_MAX_AGE_S = 7 * 86400  # an event arrives within replay_max_age_s (a day) or never


class EventLike(Protocol):
    """What the store needs of `service.events.Event` (INTERFACES.md)."""

    snapshot: bytes | None

    def to_json(self) -> dict: ...


class RetentionSettings(BaseModel):
    """How long snapshots (and optionally events) are kept; pruned by a background thread."""

    model_config = ConfigDict(extra="forbid")

    snapshot_max_age_days: float | None = Field(
        30.0, gt=0, description="Delete snapshot JPEGs stored more than this many days ago (the alert row stays); "
                                "never those of unacknowledged fall alerts or undelivered events. None: keep.")
    snapshot_max_total_mb: float | None = Field(
        2048.0, gt=0, description="Delete the oldest snapshots while all of them together exceed this size "
                                  "(unacknowledged fall alerts and undelivered events keep theirs). None: no cap.")
    event_max_age_days: float | None = Field(
        None, gt=0, description="Delete alert rows (and their snapshots) stored more than this many days ago, "
                                "except unacknowledged fall alerts and events not yet delivered. None: keep history.")
    clip_max_age_days: float | None = Field(
        30.0, gt=0, description="Delete fall clips (MP4) stored more than this many days ago (the alert row stays); "
                                "never those of unacknowledged fall alerts. None: keep.")
    clip_max_total_mb: float | None = Field(
        10240.0, gt=0, description="Delete the oldest fall clips while all of them together exceed this size "
                                   "(unacknowledged fall alerts keep theirs). None: no cap.")
    prune_interval_s: float = Field(600.0, gt=0, description="Seconds between two background prunes.")


@dataclass(frozen=True, slots=True)
class Pending:
    """An event a channel still has to deliver, with that channel's attempts so far."""

    seq: int
    id: str
    source: str
    type: str
    track_id: int | None
    run: str | None
    created_at: float
    payload: dict  # the event JSON as sent over MQTT and webhooks (no ack state: it is an event)
    snapshot: Path | None
    attempts: int
    first_attempt_at: float | None
    next_attempt_at: float | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """temp file in the same folder -> fsync -> rename -> fsync the folder: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _check_id(alert_id: str) -> str:
    if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
        raise ValueError(f"invalid event id {alert_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    return alert_id


def _unlink_all(folder: Path, files: list[tuple[str, int]]) -> int:
    """Unlink (relative path, size) files under `folder`; the bytes actually freed (gone ones count 0)."""
    freed = 0
    for rel, size in files:
        try:
            (folder / rel).unlink()
            freed += size
        except FileNotFoundError:
            pass
    return freed


class AlertStore(StoreClips, StoreReviews):
    """SQLite (WAL) alert store with snapshots on disk; see the module docstring for guarantees."""

    def __init__(self, db_path: Path, snapshot_dir: Path,
                 retention: RetentionSettings | None = None, clip_dir: Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.snapshot_dir = Path(snapshot_dir)
        self.clip_dir = Path(clip_dir) if clip_dir is not None else self.snapshot_dir.parent / "clips"
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = uuid.uuid4().hex  # this process's run: marks which events it raised
        self.model_tag: dict | None = None  # the model running now ({file, sha256}): stamped on new events
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        self._channels: set[str] = set()  # registered by this process: retention keeps what they still owe
        self._durable = self._connect("FULL")
        self._migrate()
        self._book = self._connect("NORMAL")
        self._counters = {"pruned_snapshots": 0, "pruned_snapshot_bytes": 0, "pruned_events": 0,
                          "prune_runs": 0, "prune_errors": 0}
        self._remove_stale_temp_files()
        self._remove_clip_temp_files(0.0)  # one process per state folder: any clip temp file is a dead write
        self.retention = retention
        self._stop = threading.Event()
        self._pruner: threading.Thread | None = None
        if retention is not None:
            self._pruner = threading.Thread(target=self._prune_loop, name="alert-store-pruner", daemon=True)
            self._pruner.start()

    # ---------------------------------------------------------------- setup
    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _migrate(self) -> None:
        with self._lock:
            version = self._durable.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.db_path}: schema version {version} is newer than this code "
                                   f"({len(MIGRATIONS)}); refusing to open it")
            for target in range(version + 1, len(MIGRATIONS) + 1):
                # executescript commits first; BEGIN inside the script keeps each step atomic.
                self._durable.executescript(
                    f"BEGIN IMMEDIATE;\n{MIGRATIONS[target - 1]}\nPRAGMA user_version={target};\nCOMMIT;")
                log.info("alert store %s migrated to schema %d", self.db_path, target)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._durable.execute("PRAGMA user_version").fetchone()[0]

    def _remove_stale_temp_files(self, older_than_s: float = 60.0) -> None:
        """A crash between temp write and rename leaves a `.tmp` file; nothing points at it."""
        cutoff = time.time() - older_than_s
        for tmp in self.snapshot_dir.rglob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:
                pass

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called (without arguments, outside the lock) after an event or an ack commits."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # a listener must never break a write that already committed
                log.exception("alert store listener failed")

    # ---------------------------------------------------------------- writing events
    def _snapshot_rel(self, alert_id: str, at: float) -> str:
        day = datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y%m%d")
        return f"{day}/{alert_id}.jpg"

    def add(self, event: EventLike) -> dict:
        """Store an event of this pod (snapshot file first, then the row). Idempotent by id."""
        body = event.to_json()
        if self.model_tag is not None:  # which model raised it (a swap changes it between batches)
            body.setdefault("model", dict(self.model_tag))
        return self._insert(body, event.snapshot, run=self.run_id, origin=None)[0]

    def add_remote(self, payload: dict, origin: str, snapshot: bytes | None = None) -> tuple[dict, bool]:
        """Mirror an event another pod raised (received over the broker); never delivered from here.

        Returns (alert JSON, inserted): inserted is False for a duplicate id.
        """
        required = {"id": str, "type": str, "source": str, "at": (int, float)}
        for key, kind in required.items():
            if not isinstance(payload.get(key), kind):
                raise ValueError(f"remote event lacks a valid {key!r}")
        if payload["type"] not in EVENT_TYPES or not isinstance(payload.get("track_id"), (int, type(None))):
            raise ValueError(f"remote event has an unknown type {payload['type']!r} or a bad track_id")
        body = {k: v for k, v in payload.items() if k not in {"acked", "ack", "snapshot_url", "clip_url", "clip_status", "clip_error",
                                                        "origin", "pod", "review"}}
        return self._insert(body, snapshot, run=None, origin=str(origin))

    def _insert(self, body: dict, snapshot: bytes | None, run: str | None, origin: str | None
                ) -> tuple[dict, bool]:
        alert_id = _check_id(body.get("id"))
        at = float(body["at"])
        with self._lock:
            known = self._row(alert_id)
        if known is not None:  # a repeat (QoS 1 redelivery, a resend after a crash): nothing to write
            return self._alert(known), False
        rel = None
        if snapshot:
            rel = self._snapshot_rel(alert_id, at)
            write_atomic(self.snapshot_dir / rel, snapshot)  # before the row: never a dangling path
        track = body.get("track_id")
        with self._lock:
            self._durable.execute("BEGIN IMMEDIATE")
            try:
                cur = self._durable.execute(
                    "INSERT INTO events (id, type, source, track_id, at, created_at, run, origin, body,"
                    " snapshot, snapshot_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(id) DO NOTHING",
                    (alert_id, str(body["type"]), str(body["source"]), int(track) if track is not None else None,
                     at, time.time(), run, origin, json.dumps(body, separators=(",", ":")), rel,
                     len(snapshot) if snapshot else 0))
                inserted = cur.rowcount == 1
                if inserted:  # an ack from another pod that came before this event: apply it now
                    early = self._durable.execute(
                        "SELECT acked_at, acked_by, ack_comment FROM early_acks WHERE id = ?",
                        (alert_id,)).fetchone()
                    if early is not None:
                        self._durable.execute(
                            "UPDATE events SET acked_at = ?, acked_by = ?, ack_comment = ?, ack_sent = 1"
                            " WHERE id = ?", (early["acked_at"], early["acked_by"], early["ack_comment"], alert_id))
                        self._durable.execute("DELETE FROM early_acks WHERE id = ?", (alert_id,))
                        self._spread_ack(self._row(alert_id))
                    else:
                        self._inherit_ack(alert_id)
                self._durable.execute("COMMIT")
            except BaseException:
                self._durable.execute("ROLLBACK")
                raise
            row = self._row(alert_id)
        if inserted:
            self._changed()
        return self._alert(row), inserted

    def attach_snapshot(self, alert_id: str, jpeg: bytes) -> bool:
        """Give a mirrored event the snapshot that arrived for it; False if no such row needs one."""
        alert_id = _check_id(alert_id)
        with self._lock:
            row = self._row(alert_id)
        if row is None or row["snapshot"] is not None or row["origin"] is None or not jpeg:
            return False
        rel = self._snapshot_rel(alert_id, row["at"])
        write_atomic(self.snapshot_dir / rel, jpeg)
        with self._lock:
            self._durable.execute("UPDATE events SET snapshot = ?, snapshot_bytes = ? WHERE id = ?",
                                  (rel, len(jpeg), alert_id))
        return True

    # ---------------------------------------------------------------- reading
    def _row(self, alert_id: str) -> sqlite3.Row | None:
        return self._durable.execute("SELECT * FROM events WHERE id = ?", (alert_id,)).fetchone()

    def _alert(self, row: sqlite3.Row) -> dict:
        alert = json.loads(row["body"])
        acked = row["acked_at"] is not None
        alert["acked"] = acked
        alert["ack"] = ({"by": row["acked_by"], "at": row["acked_at"], "comment": row["ack_comment"]}
                        if acked else None)
        alert["snapshot_url"] = f"/v1/alerts/{row['id']}/snapshot.jpg" if row["snapshot"] else None
        alert.update(clip_fields(row, self.run_id, self.clips_enabled))
        alert["origin"] = row["origin"]
        alert["review"] = self._review_of(row)
        return alert

    def get(self, alert_id: str) -> dict | None:
        if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
            return None
        with self._lock:
            row = self._row(alert_id)
        return self._alert(row) if row is not None else None

    def list(self, source: str | None = None, since: float | None = None, until: float | None = None,
             state: str | None = None, limit: int = 50, offset: int = 0, type: str | None = None) -> dict:
        """Newest first. state: "open" (not acknowledged), "acked", or None/"all"."""
        if state not in (None, *STATES):
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        if limit < 1 or offset < 0:
            raise ValueError("limit must be >= 1 and offset >= 0")
        where, args = [], []
        if source is not None:
            where.append("source = ?"); args.append(source)
        if since is not None:
            where.append("at >= ?"); args.append(float(since))
        if until is not None:
            where.append("at <= ?"); args.append(float(until))
        if state == "open":
            where.append("acked_at IS NULL")
        elif state == "acked":
            where.append("acked_at IS NOT NULL")
        if type is not None:
            where.append("type = ?"); args.append(type)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._durable.execute(f"SELECT COUNT(*) FROM events {clause}", args).fetchone()[0]
            rows = self._durable.execute(
                f"SELECT * FROM events {clause} ORDER BY at DESC, seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset)).fetchall()
        next_offset = offset + len(rows) if offset + len(rows) < total else None
        return {"items": [self._alert(r) for r in rows], "total": total, "next_offset": next_offset}

    def snapshot_path(self, alert_id: str) -> Path | None:
        return self._stored_file(alert_id, "snapshot", self.snapshot_dir)

    def _stored_file(self, alert_id: str, column: str, folder: Path) -> Path | None:
        """An alert's file named in `column` (snapshot, clip), if the alert, the name and the file exist."""
        if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
            return None
        with self._lock:
            row = self._durable.execute(f"SELECT {column} FROM events WHERE id = ?", (alert_id,)).fetchone()
        if row is None or row[column] is None:
            return None
        path = folder / row[column]
        return path if path.is_file() else None

    def _files_to_prune(self, column: str, max_age_days: float | None, max_mb: float | None, now: float,
                        channels: str, what: str, kept: str) -> list[int]:
        """Seqs whose file (`column`: snapshot or clip) goes: those older than `max_age_days`, then the
        oldest while the rest exceed `max_mb`; files of `_KEEP` events stay. Call with the lock held."""
        doomed: list[int] = []
        if max_age_days is not None:
            doomed += [r[0] for r in self._durable.execute(
                f"SELECT e.seq FROM events e WHERE e.{column} IS NOT NULL AND e.created_at < :cutoff"
                f" AND NOT {self._KEEP} ORDER BY e.seq",
                {"cutoff": now - max_age_days * 86400, "channels": channels})]
        if max_mb is None:
            return doomed
        cap = int(max_mb * 1024 * 1024)
        aged = set(doomed)
        total = self._durable.execute(
            f"SELECT COALESCE(SUM({column}_bytes), 0) FROM events WHERE {column} IS NOT NULL"
            " AND seq NOT IN (SELECT value FROM json_each(?))", (json.dumps(doomed),)).fetchone()[0]
        if total > cap:
            for seq, size in self._durable.execute(
                    f"SELECT e.seq, e.{column}_bytes FROM events e WHERE e.{column} IS NOT NULL"
                    f" AND NOT {self._KEEP} ORDER BY e.seq", {"channels": channels}).fetchall():
                if total <= cap:
                    break
                if seq not in aged:
                    doomed.append(seq)
                    total -= size
        if total > cap:
            log.warning("%s take %.1f MB, over the %.1f MB cap: the rest belong to %s, which retention keeps",
                        what, total / 2**20, cap / 2**20, kept)
        return doomed

    def sources(self) -> list[str]:
        """Sources of this pod that ever raised an event (for MQTT state and discovery)."""
        with self._lock:
            rows = self._durable.execute(
                "SELECT DISTINCT source FROM events WHERE origin IS NULL ORDER BY source").fetchall()
        return [r[0] for r in rows]

    def camera_availability(self, upto_seq: int | None = None) -> dict[str, str]:
        """Per source of this pod, `online` / `offline` from its latest camera_offline / camera_online
        event (up to `upto_seq`); sources that never had one are not listed (online)."""
        limit = " AND seq <= ?" if upto_seq is not None else ""
        with self._lock:
            rows = self._durable.execute(
                "SELECT source, type FROM events e WHERE origin IS NULL"
                " AND type IN ('camera_offline', 'camera_online')" + limit +
                " AND seq = (SELECT MAX(seq) FROM events x WHERE x.source = e.source AND x.origin IS NULL"
                " AND x.type IN ('camera_offline', 'camera_online')" + limit + ")",
                (int(upto_seq), int(upto_seq)) if upto_seq is not None else ()).fetchall()
        return {r[0]: "offline" if r[1] == "camera_offline" else "online" for r in rows}

    def last_seq(self) -> int:
        """The newest event's `seq` (0 when the store is empty)."""
        with self._lock:
            return self._durable.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def open_falls(self, source: str | None = None, upto_seq: int | None = None) -> dict[str, list[str]]:
        """Per source, the ids of this pod's falls that may still have someone on the floor.

        An open fall is a `fall_alert` raised here (origin NULL) that is not acknowledged (locally,
        by another pod, or by an early ack) and that no `fall_cleared` with reason `recovered` of
        the same source, run and track followed. A clear for `track_lost` or `source_ended` does
        not close it: the person may still be down, out of sight, until someone acknowledges.
        `upto_seq` only counts events up to that `seq` (MQTT: those already published). This
        is the MQTT `<camera>/fall` state: ON for every source in the result.
        """
        where, args = "", []
        if source is not None:
            where += " AND a.source = ?"; args.append(source)
        if upto_seq is not None:
            where += " AND a.seq <= ?"; args.append(int(upto_seq))
        limit = " AND c.seq <= ?" if upto_seq is not None else ""
        sql = ("SELECT a.source, a.id FROM events a"
               " WHERE a.type = 'fall_alert' AND a.origin IS NULL AND a.acked_at IS NULL" + where +
               " AND NOT EXISTS (SELECT 1 FROM events c WHERE c.type = 'fall_cleared'"
               " AND c.run IS a.run AND c.track_id IS a.track_id AND c.seq > a.seq" + limit +
               " AND c.source = a.source AND c.origin IS NULL"
               " AND json_extract(c.body, '$.reason') = 'recovered')"
               " ORDER BY a.source, a.seq")
        if upto_seq is not None:
            args.append(int(upto_seq))
        with self._lock:
            rows = self._durable.execute(sql, args).fetchall()
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(r[1])
        return out

    # ---------------------------------------------------------------- acknowledgement
    def ack(self, alert_id: str, by: str, comment: str | None) -> dict | None:
        """Acknowledge once: a second ack returns the first one unchanged. None: unknown id.

        The ack covers the whole incident (every event of the same fall, `_incident`): its other
        events are acknowledged with it, and later ones arrive acknowledged (`_insert`). Only the
        event named is shared with other pods; each pod spreads it over its own copy of the fall.
        """
        if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
            return None
        with self._lock:
            self._durable.execute("BEGIN IMMEDIATE")
            try:
                cur = self._durable.execute(
                    "UPDATE events SET acked_at = ?, acked_by = ?, ack_comment = ?, ack_sent = 0"
                    " WHERE id = ? AND acked_at IS NULL", (time.time(), by, comment, alert_id))
                changed = cur.rowcount == 1
                row = self._row(alert_id)
                if row is not None:
                    changed = self._spread_ack(row) or changed
                self._durable.execute("COMMIT")
            except BaseException:
                self._durable.execute("ROLLBACK")
                raise
            row = self._row(alert_id)
        if changed:
            self._changed()
        return self._alert(row) if row is not None else None

    def ack_many(self, by: str, comment: str | None, ids: list[str] | None = None,
                 source: str | None = None) -> dict:
        """Acknowledge a selection (`ids`) or every open alert of a camera (`source`) in one call
        (an alert storm left 13 cards to click one by one). Each is acknowledged as `ack` does it
        (its whole incident). Returns `acked` (alerts now acknowledged) and `unknown` ids."""
        if source is not None:
            with self._lock:
                ids = [r[0] for r in self._durable.execute(
                    "SELECT id FROM events WHERE source = ? AND acked_at IS NULL ORDER BY seq", (source,))]
        acked, unknown = [], []
        for alert_id in dict.fromkeys(ids or []):  # once each, in the order given
            alert = self.ack(alert_id, by, comment)
            (acked if alert is not None else unknown).append(alert if alert is not None else alert_id)
        return {"acked": acked, "unknown": unknown}

    # An incident's events lie within its time down of each other; a margin for clock steps.
    INCIDENT_MARGIN_S = 600.0

    def _incident(self, row: sqlite3.Row) -> tuple[str, list]:
        """SQL condition (and arguments) for the events of the same fall as `row`: the same
        `fall_id` (the id of the fall's `fall_alert`); for events stored before `fall_id` existed,
        the same run, camera, track and onset frame (this pod's events only)."""
        body = json.loads(row["body"])
        onset_at = float(row["at"]) - float(body.get("time_down_s") or 0.0) - self.INCIDENT_MARGIN_S
        fall_id = body.get("fall_id")
        if isinstance(fall_id, str) and fall_id:
            return ("source = ? AND at >= ? AND (id = ? OR json_extract(body, '$.fall_id') = ?)",
                    [row["source"], onset_at, fall_id, fall_id])
        if row["run"] is not None and body.get("started_frame") is not None:
            return ("source = ? AND at >= ? AND run = ? AND track_id IS ?"
                    " AND json_extract(body, '$.started_frame') = ?",
                    [row["source"], onset_at, row["run"], row["track_id"], body["started_frame"]])
        return "id = ?", [row["id"]]

    def _spread_ack(self, row: sqlite3.Row) -> bool:
        """Give the other events of `row`'s fall its ack where they have none or a later one (the
        earliest ack wins everywhere); inside the caller's transaction. True if any changed."""
        if row["acked_at"] is None:
            return False
        where, args = self._incident(row)
        cur = self._durable.execute(
            "UPDATE events SET acked_at = ?, acked_by = ?, ack_comment = ?"
            f" WHERE id != ? AND (acked_at IS NULL OR acked_at > ?) AND {where}",
            (row["acked_at"], row["acked_by"], row["ack_comment"], row["id"], row["acked_at"], *args))
        return cur.rowcount > 0

    def _inherit_ack(self, alert_id: str) -> None:
        """A new event of a fall already acknowledged arrives acknowledged (same ack, not re-shared)."""
        row = self._row(alert_id)
        if row is None or row["acked_at"] is not None:
            return
        where, args = self._incident(row)
        acked = self._durable.execute(
            f"SELECT acked_at, acked_by, ack_comment FROM events WHERE acked_at IS NOT NULL AND {where}"
            " ORDER BY acked_at LIMIT 1", args).fetchone()
        if acked is not None:
            self._durable.execute(
                "UPDATE events SET acked_at = ?, acked_by = ?, ack_comment = ?, ack_sent = 1 WHERE id = ?",
                (acked["acked_at"], acked["acked_by"], acked["ack_comment"], alert_id))

    def apply_remote_ack(self, alert_id: str, by: str, at: float, comment: str | None) -> bool:
        """An ack made on another pod. The earliest ack wins everywhere, so all pods converge.

        True when it changed a stored event. An ack for an event not stored yet (its own message
        is still on the way, or queued across a restart) is kept durably in `early_acks` and
        applied when the event arrives: dropping it would leave that alert open here for good.
        """
        if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
            return False
        with self._lock:
            cur = self._durable.execute(
                "UPDATE events SET acked_at = ?, acked_by = ?, ack_comment = ?, ack_sent = 1"
                " WHERE id = ? AND (acked_at IS NULL OR acked_at > ?)",
                (float(at), by, comment, alert_id, float(at)))
            if cur.rowcount == 1:
                self._spread_ack(self._row(alert_id))  # the rest of that fall, on this pod too
                return True
            if self._row(alert_id) is None:
                self._durable.execute(
                    "INSERT INTO early_acks (id, acked_at, acked_by, ack_comment, received_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET acked_at = excluded.acked_at,"
                    " acked_by = excluded.acked_by, ack_comment = excluded.ack_comment"
                    " WHERE excluded.acked_at < early_acks.acked_at",
                    (alert_id, float(at), by, comment, time.time()))
        return False

    def early_acks(self) -> int:
        """How many remote acks wait for their event (for stats and tests)."""
        with self._lock:
            return self._durable.execute("SELECT COUNT(*) FROM early_acks").fetchone()[0]

    def pending_acks(self, limit: int = 100) -> list[dict]:
        """Local acks not yet shared with the other pods, oldest first."""
        with self._lock:
            rows = self._durable.execute(
                "SELECT id, acked_by, acked_at, ack_comment FROM events WHERE ack_sent = 0"
                " ORDER BY acked_at LIMIT ?", (limit,)).fetchall()
        return [{"id": r["id"], "by": r["acked_by"], "at": r["acked_at"], "comment": r["ack_comment"]}
                for r in rows]

    def mark_ack_sent(self, alert_id: str, at: float) -> None:
        with self._lock:
            self._book.execute("UPDATE events SET ack_sent = 1 WHERE id = ? AND acked_at = ?", (alert_id, at))

    # ---------------------------------------------------------------- delivery bookkeeping
    def register_channel(self, channel: str) -> None:
        """A new channel starts after the newest stored event: it never floods old history.

        A channel known from before (a webhook configured again, a restart after an outage) resumes
        where it stopped; its sender gives up, unsent, what has become too old to act on."""
        with self._lock:
            self._channels.add(channel)
            top = self._book.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            self._book.execute(
                "INSERT INTO channels (name, start_seq, done_seq, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO NOTHING", (channel, top, top, time.time()))

    def pending(self, channel: str, limit: int = 100, after_seq: int = 0) -> list[Pending]:
        """This pod's events the channel has neither delivered nor given up, in store order."""
        with self._lock:
            ch = self._book.execute("SELECT start_seq, done_seq FROM channels WHERE name = ?",
                                    (channel,)).fetchone()
            if ch is None:
                raise KeyError(f"unknown delivery channel {channel!r}: register_channel() first")
            done = ch["done_seq"]
            first_open = self._book.execute(  # short scan: done_seq trails the oldest open event
                "SELECT MIN(e.seq) FROM events e LEFT JOIN deliveries d ON d.channel = ? AND d.seq = e.seq"
                " WHERE e.seq > ? AND e.origin IS NULL AND d.delivered_at IS NULL AND d.given_up_at IS NULL",
                (channel, done)).fetchone()[0]
            top = first_open - 1 if first_open is not None else self._book.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            if top > done:
                self._book.execute("UPDATE channels SET done_seq = ? WHERE name = ?", (top, channel))
                done = top
            rows = self._book.execute(
                "SELECT e.seq, e.id, e.source, e.type, e.track_id, e.run, e.created_at, e.body, e.snapshot,"
                " e.clip, e.clip_error, e.origin, d.attempts, d.first_attempt_at, d.next_attempt_at"
                " FROM events e LEFT JOIN deliveries d ON d.channel = ? AND d.seq = e.seq"
                " WHERE e.seq > ? AND e.origin IS NULL AND d.delivered_at IS NULL AND d.given_up_at IS NULL"
                " ORDER BY e.seq LIMIT ?", (channel, max(done, after_seq), limit)).fetchall()
        out = []
        for r in rows:
            payload = json.loads(r["body"])
            payload["snapshot_url"] = f"/v1/alerts/{r['id']}/snapshot.jpg" if r["snapshot"] else None
            if r["type"] == "fall_alert":  # usually `pending`; the outcome follows on <prefix>/clips
                payload.update(clip_fields(r, self.run_id, self.clips_enabled))
            out.append(Pending(seq=r["seq"], id=r["id"], source=r["source"], type=r["type"],
                               track_id=r["track_id"], run=r["run"], created_at=r["created_at"],
                               payload=payload,
                               snapshot=self.snapshot_dir / r["snapshot"] if r["snapshot"] else None,
                               attempts=r["attempts"] or 0, first_attempt_at=r["first_attempt_at"],
                               next_attempt_at=r["next_attempt_at"]))
        return out

    def record(self, channel: str, seq: int, outcome: Outcome, *, attempt: bool = True,
               status: int | None = None, error: str | None = None,
               next_attempt_at: float | None = None) -> None:
        """Book one attempt (or only its outcome, attempt=False) of `channel` for event `seq`."""
        if outcome not in ("pending", "delivered", "given_up"):
            raise ValueError(f"unknown outcome {outcome!r}")
        now = time.time()
        with self._lock:
            self._book.execute(
                "INSERT INTO deliveries (channel, seq, attempts, first_attempt_at, last_attempt_at,"
                " last_status, last_error, next_attempt_at, delivered_at, given_up_at)"
                " VALUES (:ch, :seq, :n, :first, :first, :status, :error, :next, :done, :gone)"
                " ON CONFLICT(channel, seq) DO UPDATE SET attempts = attempts + :n,"
                " first_attempt_at = COALESCE(first_attempt_at, :first),"
                " last_attempt_at = COALESCE(:first, last_attempt_at),"
                " last_status = COALESCE(:status, last_status), last_error = :error,"
                " next_attempt_at = :next, delivered_at = :done, given_up_at = :gone",
                {"ch": channel, "seq": seq, "n": 1 if attempt else 0, "first": now if attempt else None,
                 "status": status, "error": error, "next": next_attempt_at,
                 "done": now if outcome == "delivered" else None,
                 "gone": now if outcome == "given_up" else None})

    def deliveries(self, alert_id: str) -> list[dict]:
        """Per channel: attempts, last status/error, delivered or given up (for the detail view)."""
        with self._lock:
            rows = self._durable.execute(
                "SELECT d.* FROM deliveries d JOIN events e ON e.seq = d.seq WHERE e.id = ?"
                " ORDER BY d.channel", (alert_id,)).fetchall()
        return [{"channel": r["channel"], "attempts": r["attempts"], "last_status": r["last_status"],
                 "last_error": r["last_error"], "first_attempt_at": r["first_attempt_at"],
                 "last_attempt_at": r["last_attempt_at"], "delivered_at": r["delivered_at"],
                 "given_up_at": r["given_up_at"], "next_attempt_at": r["next_attempt_at"]} for r in rows]

    def backlog(self) -> dict[str, int]:
        """Per channel, events still to deliver (a gauge for metrics)."""
        with self._lock:
            rows = self._book.execute(
                "SELECT c.name, (SELECT COUNT(*) FROM events e LEFT JOIN deliveries d"
                "  ON d.channel = c.name AND d.seq = e.seq WHERE e.seq > c.done_seq AND e.origin IS NULL"
                "  AND d.delivered_at IS NULL AND d.given_up_at IS NULL) FROM channels c").fetchall()
        return {r[0]: r[1] for r in rows}

    # ---------------------------------------------------------------- retention
    PRUNE_BATCH = 500  # rows per prune transaction; the lock is released between two batches

    # What retention never removes (a condition on `events e`; parameter: the JSON list of channels):
    # an unacknowledged fall alert (someone may still be on the floor), and an event of this pod
    # that a channel registered by this process has neither delivered nor given up (as in pending()).
    _KEEP = ("((e.type = 'fall_alert' AND e.acked_at IS NULL)"
             " OR (e.origin IS NULL AND EXISTS (SELECT 1 FROM channels c"
             "  WHERE c.name IN (SELECT value FROM json_each(:channels)) AND e.seq > c.done_seq"
             "  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.channel = c.name AND d.seq = e.seq"
             "   AND (d.delivered_at IS NOT NULL OR d.given_up_at IS NOT NULL)))))")

    def prune(self, retention: RetentionSettings | None = None, now: float | None = None) -> dict:
        """Apply retention once: old rows, old snapshots, then the oldest until under the size cap.

        Ages count from `created_at` (when this store got the event), not from the frame clock `at`.
        Unacknowledged fall alerts and events a registered channel still has to deliver keep their
        row and their snapshot (see `_KEEP`). Rows change in transactions of `PRUNE_BATCH`, with
        the lock released in between, so `add()` never waits for a whole prune; each batch commits
        before its files are deleted (a crash leaves an orphan file, never a row without its file).
        """
        policy = retention or self.retention or RetentionSettings()
        now = time.time() if now is None else now
        with self._lock:
            channels = json.dumps(sorted(self._channels))
        totals = {"snapshots": 0, "bytes": 0, "events": 0}
        if policy.event_max_age_days is not None:
            cutoff = now - policy.event_max_age_days * 86400
            with self._lock:
                seqs = [r[0] for r in self._durable.execute(
                    f"SELECT e.seq FROM events e WHERE e.created_at < :cutoff AND NOT {self._KEEP} ORDER BY e.seq",
                    {"cutoff": cutoff, "channels": channels})]
            self._prune_batches(seqs, totals, delete_rows=True,
                                check=f"e.created_at < :cutoff AND NOT {self._KEEP}",
                                params={"cutoff": cutoff, "channels": channels})
        with self._lock:  # seqs whose snapshot goes
            doomed = self._files_to_prune("snapshot", policy.snapshot_max_age_days, policy.snapshot_max_total_mb,
                                          now, channels, "snapshots",
                                          "unacknowledged fall alerts or undelivered events")
        self._prune_batches(doomed, totals, delete_rows=False, check=f"e.snapshot IS NOT NULL AND NOT {self._KEEP}",
                            params={"channels": channels})
        with self._lock:
            stale_acks = self._durable.execute("DELETE FROM early_acks WHERE received_at < ?",
                                               (now - EARLY_ACK_MAX_AGE_S,)).rowcount
        totals["clips"], totals["clip_bytes"] = self._prune_clips(policy, now, channels)
        orphans = self._remove_orphan_snapshots(now)
        self._remove_orphan_clips(now)
        with self._lock:
            self._counters["prune_runs"] += 1
        return {**totals, "orphans": orphans, "early_acks": stale_acks}

    def _prune_batches(self, seqs: list[int], totals: dict, delete_rows: bool, check: str, params: dict) -> None:
        """Delete rows (or only clear their snapshot), PRUNE_BATCH per transaction, then their files.

        `check` is tested again inside each transaction: an event that became protected since it
        was selected stays untouched."""
        for i in range(0, len(seqs), self.PRUNE_BATCH):
            batch = json.dumps(seqs[i:i + self.PRUNE_BATCH])
            with self._lock:
                self._durable.execute("BEGIN IMMEDIATE")
                try:
                    rows = self._durable.execute(
                        f"SELECT e.seq, e.snapshot, e.snapshot_bytes, e.clip, e.clip_bytes FROM events e"
                        f" WHERE e.seq IN (SELECT value FROM json_each(:batch)) AND {check}",
                        {**params, "batch": batch}).fetchall()
                    chosen = json.dumps([r[0] for r in rows])
                    if delete_rows:
                        self._durable.execute("DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?))",
                                              (chosen,))
                    else:
                        self._durable.execute("UPDATE events SET snapshot = NULL"
                                              " WHERE seq IN (SELECT value FROM json_each(?))", (chosen,))
                    self._durable.execute("COMMIT")
                except BaseException:
                    if self._durable.in_transaction:
                        self._durable.execute("ROLLBACK")
                    raise
            # Row first (committed above), then file: a crash in between leaves an orphan file only.
            files = [(r[1], r[2]) for r in rows if r[1]]
            if delete_rows:  # a deleted row's clip goes with it
                self._remove_clip_files([(r[3], r[4]) for r in rows if r[3]])
            freed = self._remove_files(files)
            with self._lock:
                if delete_rows:
                    self._counters["pruned_events"] += len(rows)
                self._counters["pruned_snapshots"] += len(files)
                self._counters["pruned_snapshot_bytes"] += freed
            totals["events"] += len(rows) if delete_rows else 0
            totals["snapshots"] += len(files)
            totals["bytes"] += freed
            time.sleep(0.001)  # outside the lock: a waiting add() gets in before the next batch

    def _remove_files(self, files: list[tuple[str, int]]) -> int:
        """Unlink snapshot files (outside the lock); the bytes actually freed."""
        return _unlink_all(self.snapshot_dir, files)

    def _remove_orphan_snapshots(self, now: float, older_than_s: float = 3600.0) -> int:
        """Files no row points at (a crash between file and row, or a failed insert)."""
        with self._lock:
            known = {r[0] for r in self._durable.execute("SELECT snapshot FROM events WHERE snapshot IS NOT NULL")}
        removed = 0
        for path in self.snapshot_dir.glob("*/*.jpg"):
            rel = path.relative_to(self.snapshot_dir).as_posix()
            try:
                if rel not in known and path.stat().st_mtime < now - older_than_s:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed

    def _prune_loop(self) -> None:
        assert self.retention is not None
        while not self._stop.wait(self.retention.prune_interval_s):
            try:
                self.prune()
            except Exception:  # a failed prune is retried next interval; it never kills the thread
                self._counters["prune_errors"] += 1
                log.exception("snapshot pruning failed")

    def stats(self) -> dict[str, int]:
        """Counts for the metrics endpoint."""
        with self._lock:
            events, snaps, size = self._durable.execute(
                "SELECT COUNT(*), COUNT(snapshot), COALESCE(SUM(CASE WHEN snapshot IS NOT NULL"
                " THEN snapshot_bytes END), 0) FROM events").fetchone()
            unacked = self._durable.execute("SELECT COUNT(*) FROM events WHERE acked_at IS NULL").fetchone()[0]
            return {"events": events, "open": unacked, "snapshots": snaps, "snapshot_bytes": size,
                    **self._counters}

    def close(self) -> None:
        self._stop.set()
        if self._pruner is not None:
            self._pruner.join(timeout=5)
        with self._lock:
            for conn in (self._book, self._durable):
                try:
                    conn.close()
                except sqlite3.Error:
                    pass

