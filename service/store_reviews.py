"""The alert store's reviews: was this incident a fall, a false alarm, or unsure? And "nobody fell
here" marks on a camera's clean view.

Split out of `service/store.py` (a mixin of `AlertStore`). Why a review is kept per incident and not
per event: an operator judges a fall (`fall_alert`, its `still_down` reminders and its clear), so the
verdict is stored once under the incident's key (the `fall_id`, i.e. the id of its `fall_alert`) and
every event of that fall shows it. Unlike an acknowledgement a review may be changed (an operator
who clicked the wrong button, or who learnt more from the clip): the latest verdict wins.

Reviews and negatives are written on the `synchronous=FULL` connection, like acks: they survive a
crash (SIGKILL) and a power cut once the call has returned. They are what `python -m service
review-export` turns into site training data (`service/review_export.py`).
"""
from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

VERDICTS = ("fall", "false_alarm", "unsure")

# Schema version 6 (appended to store.MIGRATIONS).
MIGRATION = """
CREATE TABLE reviews (                       -- one per incident (fall_id): the latest verdict wins
    incident TEXT PRIMARY KEY,               -- fall_id: the id of the fall's fall_alert
    alert_id TEXT NOT NULL,                  -- the event the reviewer marked
    source TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('fall', 'false_alarm', 'unsure')),
    reviewed_by TEXT NOT NULL,
    reviewed_at REAL NOT NULL,
    comment TEXT,
    sent INTEGER NOT NULL DEFAULT 0          -- 0: a local review not yet shared over MQTT
) WITHOUT ROWID;
CREATE INDEX reviews_unsent ON reviews(reviewed_at) WHERE sent = 0;
CREATE TABLE negatives (                     -- "nobody fell here": a camera's view marked clean
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    at REAL NOT NULL,
    marked_by TEXT NOT NULL,
    comment TEXT,
    image TEXT NOT NULL,                     -- JPEG path relative to the negatives folder
    boxes TEXT NOT NULL                      -- JSON [[x1, y1, x2, y2], ...]: people seen (not fallen)
) WITHOUT ROWID;
"""


def incident_of(row: sqlite3.Row) -> str:
    """The incident key of an event row: its `fall_id`, else its own id."""
    body = json.loads(row["body"])
    fall_id = body.get("fall_id")
    return fall_id if isinstance(fall_id, str) and fall_id else row["id"]


def review_json(r: sqlite3.Row | None) -> dict | None:
    if r is None:
        return None
    return {"verdict": r["verdict"], "by": r["reviewed_by"], "at": r["reviewed_at"], "comment": r["comment"],
            "incident": r["incident"], "alert_id": r["alert_id"]}


class StoreReviews:
    """Review and negative rows of `AlertStore` (mixin); every method takes the store's lock itself."""

    _lock: Any
    _durable: sqlite3.Connection
    _book: sqlite3.Connection

    def _review_of(self, row: sqlite3.Row) -> dict | None:
        """The review of `row`'s incident."""
        with self._lock:
            r = self._durable.execute("SELECT * FROM reviews WHERE incident = ?", (incident_of(row),)).fetchone()
        return review_json(r)

    def review(self, alert_id: str, verdict: str, by: str, comment: str | None = None,
               at: float | None = None, shared: bool = False) -> dict | None:
        """Mark the incident of `alert_id`; returns the alert (with `review`), None for an unknown id.

        `shared`: the review came from another pod or an MQTT command (not re-published);
        a review older than the stored one (`at`) is ignored, so pods converge on the latest."""
        from service.store import ID_PATTERN

        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {list(VERDICTS)}, got {verdict!r}")
        if not isinstance(alert_id, str) or not ID_PATTERN.match(alert_id):
            return None
        at = time.time() if at is None else float(at)
        with self._lock:
            row = self._row(alert_id)  # type: ignore[attr-defined]
            if row is None:
                return None
            self._durable.execute(
                "INSERT INTO reviews (incident, alert_id, source, verdict, reviewed_by, reviewed_at, comment, sent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(incident) DO UPDATE SET alert_id = excluded.alert_id,"
                " verdict = excluded.verdict, reviewed_by = excluded.reviewed_by,"
                " reviewed_at = excluded.reviewed_at, comment = excluded.comment, sent = excluded.sent"
                " WHERE excluded.reviewed_at >= reviews.reviewed_at",
                (incident_of(row), alert_id, row["source"], verdict, by, at, comment, 1 if shared else 0))
            alert = self._alert(row)  # type: ignore[attr-defined]
        self._changed()  # type: ignore[attr-defined]
        return alert

    def reviews(self, verdict: str | None = None, source: str | None = None) -> list[dict]:
        """Every review (oldest first), each with its incident's `fall_alert` (for export)."""
        where, args = [], []
        if verdict is not None:
            where.append("r.verdict = ?"); args.append(verdict)
        if source is not None:
            where.append("r.source = ?"); args.append(source)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._durable.execute(f"SELECT r.* FROM reviews r {clause} ORDER BY r.reviewed_at", args).fetchall()
            out = []
            for r in rows:
                alert_row = self._row(r["incident"]) or self._row(r["alert_id"])  # type: ignore[attr-defined]
                out.append({**review_json(r), "source": r["source"],
                            "alert": self._alert(alert_row) if alert_row is not None else None})  # type: ignore[attr-defined]
        return out

    def pending_reviews(self, limit: int = 100) -> list[dict]:
        """Local reviews not yet shared over MQTT, oldest first."""
        with self._lock:
            rows = self._durable.execute("SELECT * FROM reviews WHERE sent = 0 ORDER BY reviewed_at LIMIT ?",
                                         (limit,)).fetchall()
        return [{"id": r["alert_id"], "verdict": r["verdict"], "by": r["reviewed_by"], "at": r["reviewed_at"],
                 "comment": r["comment"]} for r in rows]

    def mark_review_sent(self, alert_id: str, at: float) -> None:
        with self._lock:
            self._book.execute("UPDATE reviews SET sent = 1 WHERE alert_id = ? AND reviewed_at = ?", (alert_id, at))

    # -- "nobody fell here" ------------------------------------------------------------------------
    def add_negative(self, source: str, image_rel: str, boxes: list[list[float]], by: str,
                     comment: str | None = None, at: float | None = None) -> dict:
        """Record a clean view of `source` (its JPEG already written, 0600, under the negatives folder)."""
        neg_id = uuid.uuid4().hex
        at = time.time() if at is None else float(at)
        with self._lock:
            self._durable.execute(
                "INSERT INTO negatives (id, source, at, marked_by, comment, image, boxes) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (neg_id, source, at, by, comment, image_rel, json.dumps(boxes)))
        return {"id": neg_id, "source": source, "at": at, "by": by, "comment": comment, "image": image_rel,
                "boxes": boxes}

    def negatives(self, source: str | None = None) -> list[dict]:
        with self._lock:
            rows = self._durable.execute(
                "SELECT * FROM negatives" + (" WHERE source = ?" if source else "") + " ORDER BY at",
                (source,) if source else ()).fetchall()
        return [{"id": r["id"], "source": r["source"], "at": r["at"], "by": r["marked_by"], "comment": r["comment"],
                 "image": r["image"], "boxes": json.loads(r["boxes"])} for r in rows]
