"""The alert store: durability (a SIGKILLed writer loses nothing it returned), filters, acks,
delivery bookkeeping, retention, migrations, thread safety."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.events import Event
from service.store import MIGRATIONS, AlertStore, RetentionSettings

REPO = Path(__file__).resolve().parent.parent


def jpeg(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def make_event(source: str = "cam1", type: str = "fall_alert", track: int = 1, at: float | None = None,
               snapshot: bytes | None = b"", frame: int = 10) -> Event:
    at = time.time() if at is None else at
    if snapshot == b"":
        snapshot = jpeg(frame) if type == "fall_alert" else None
    return Event(id=uuid.uuid4().hex, type=type, source=source, track_id=track, frame=frame,
                 started_frame=frame - 5, pts_s=frame / 25, started_pts_s=(frame - 5) / 25, at=at,
                 box=(1.0, 2.0, 30.0, 40.0), time_down_s=0.2, reason=None if type != "fall_cleared" else "recovered",
                 snapshot=snapshot)


@pytest.fixture
def store(tmp_path: Path):
    s = AlertStore(tmp_path / "state" / "alerts.db", tmp_path / "state" / "snapshots")
    yield s
    s.close()


def test_add_then_get_returns_event_json_with_ack_and_snapshot(store: AlertStore) -> None:
    ev = make_event()
    alert = store.add(ev)
    assert {k: alert[k] for k in ev.to_json()} == ev.to_json()
    assert alert["acked"] is False and alert["ack"] is None and alert["origin"] is None
    assert alert["snapshot_url"] == f"/v1/alerts/{ev.id}/snapshot.jpg"
    assert store.get(ev.id) == alert
    path = store.snapshot_path(ev.id)
    assert path is not None and path.read_bytes() == ev.snapshot
    assert path.is_relative_to(store.snapshot_dir)


def test_event_without_snapshot_has_no_url(store: AlertStore) -> None:
    ev = make_event(type="fall_cleared")
    alert = store.add(ev)
    assert alert["snapshot_url"] is None and store.snapshot_path(ev.id) is None


def test_add_is_idempotent_by_id(store: AlertStore) -> None:
    ev = make_event()
    first = store.add(ev)
    again = store.add(ev)
    assert again == first
    assert store.list()["total"] == 1


def test_bad_or_unknown_ids(store: AlertStore) -> None:
    ev = make_event()
    ev.id = "../../etc/passwd"
    with pytest.raises(ValueError):
        store.add(ev)
    assert store.get("../x") is None and store.get("nope") is None
    assert store.snapshot_path("../x") is None and store.ack("nope", "me", None) is None


def test_list_filters_order_and_paging(store: AlertStore) -> None:
    t0 = 1_700_000_000.0
    evs = [make_event(source=f"cam{i % 2}", at=t0 + i, frame=10 + i) for i in range(7)]
    for ev in evs:
        store.add(ev)
    page = store.list(limit=3)
    assert [a["id"] for a in page["items"]] == [e.id for e in reversed(evs)][:3]  # newest first
    assert page["total"] == 7 and page["next_offset"] == 3
    rest = store.list(limit=3, offset=6)
    assert len(rest["items"]) == 1 and rest["next_offset"] is None
    cam0 = store.list(source="cam0")
    assert cam0["total"] == 4 and all(a["source"] == "cam0" for a in cam0["items"])
    window = store.list(since=t0 + 2, until=t0 + 4)
    assert sorted(a["at"] for a in window["items"]) == [t0 + 2, t0 + 3, t0 + 4]
    store.ack(evs[0].id, "ann", None)
    assert [a["id"] for a in store.list(state="acked")["items"]] == [evs[0].id]
    assert store.list(state="open")["total"] == 6 and store.list(state="all")["total"] == 7
    assert store.list(type="still_down")["total"] == 0
    with pytest.raises(ValueError):
        store.list(state="closed")


def test_ack_is_idempotent_and_survives_reopen(tmp_path: Path) -> None:
    s = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    ev = make_event()
    s.add(ev)
    first = s.ack(ev.id, "ann", "on my way")
    assert first["acked"] and first["ack"]["by"] == "ann" and first["ack"]["comment"] == "on my way"
    second = s.ack(ev.id, "bob", "late")
    assert second["ack"] == first["ack"]
    s.close()
    s2 = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    try:
        assert s2.get(ev.id)["ack"] == first["ack"]
        assert s2.snapshot_path(ev.id).read_bytes() == ev.snapshot
    finally:
        s2.close()


def test_schema_is_versioned_wal_and_refuses_newer(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    s = AlertStore(db, tmp_path / "snaps")
    assert s.schema_version == len(MIGRATIONS)
    s.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        AlertStore(db, tmp_path / "snaps")


def test_delivery_bookkeeping_in_order(store: AlertStore) -> None:
    old = make_event()
    store.add(old)
    store.register_channel("hook")
    assert store.pending("hook") == []  # a new channel does not flood history
    evs = [make_event(frame=20 + i) for i in range(4)]
    for ev in evs:
        store.add(ev)
    store.add_remote(make_event().to_json(), origin="pod-b")  # mirrored: never delivered from here
    pending = store.pending("hook")
    assert [p.id for p in pending] == [e.id for e in evs]
    assert pending[0].snapshot.read_bytes() == evs[0].snapshot and pending[0].attempts == 0
    store.record("hook", pending[0].seq, "delivered", status=200)
    store.record("hook", pending[1].seq, "pending", status=500, error="HTTP 500", next_attempt_at=123.0)
    store.record("hook", pending[1].seq, "pending", status=503, error="HTTP 503", next_attempt_at=456.0)
    store.record("hook", pending[2].seq, "given_up", status=410, error="gone")
    left = store.pending("hook")
    assert [p.id for p in left] == [evs[1].id, evs[3].id]
    assert left[0].attempts == 2 and left[0].next_attempt_at == 456.0
    assert [p.id for p in store.pending("hook", after_seq=left[0].seq)] == [evs[3].id]
    (d,) = store.deliveries(evs[1].id)
    assert d["attempts"] == 2 and d["last_status"] == 503 and d["delivered_at"] is None
    assert store.deliveries(evs[0].id)[0]["delivered_at"] is not None
    assert store.backlog() == {"hook": 2}
    with pytest.raises(KeyError):
        store.pending("never-registered")


def test_remote_events_dedupe_snapshot_and_earliest_ack_wins(store: AlertStore) -> None:
    ev = make_event()
    payload = dict(ev.to_json(), pod="pod-b", snapshot_url="/x", acked=True)
    alert, inserted = store.add_remote(payload, origin="pod-b")
    assert inserted and alert["origin"] == "pod-b" and alert["acked"] is False and alert["snapshot_url"] is None
    assert store.add_remote(payload, origin="pod-b")[1] is False
    assert store.attach_snapshot(ev.id, ev.snapshot)
    assert store.snapshot_path(ev.id).read_bytes() == ev.snapshot
    assert not store.attach_snapshot(ev.id, b"other")  # only once
    with pytest.raises(ValueError):
        store.add_remote({"id": "x"}, origin="pod-b")
    store.ack(ev.id, "late", None)
    local_at = store.get(ev.id)["ack"]["at"]
    assert store.pending_acks() == [{"id": ev.id, "by": "late", "at": local_at, "comment": None}]
    assert store.apply_remote_ack(ev.id, "early", local_at - 5, "first")
    assert store.get(ev.id)["ack"]["by"] == "early" and store.pending_acks() == []
    assert not store.apply_remote_ack(ev.id, "later", local_at + 5, None)



def test_remote_ack_before_its_event_is_kept_across_restart_then_applied(tmp_path: Path) -> None:
    """Pod A may publish an ack before the event reaches this pod; the ack must not be lost."""
    db, snaps = tmp_path / "a.db", tmp_path / "snaps"
    s = AlertStore(db, snaps, retention=None)
    ev = make_event()
    assert s.apply_remote_ack(ev.id, "bob", 1000.0, "seen on pod A") is False  # no event to change yet
    s.apply_remote_ack(ev.id, "amy", 990.0, "earlier")  # the earliest ack wins here too
    s.apply_remote_ack(ev.id, "late", 1010.0, None)
    assert s.early_acks() == 1 and s.get(ev.id) is None and s.list()["total"] == 0
    s.close()
    s = AlertStore(db, snaps, retention=None)  # the event may come only after a restart
    try:
        alert, inserted = s.add_remote(dict(ev.to_json(), pod="pod-c"), origin="pod-c")
        expected = {"by": "amy", "at": 990.0, "comment": "earlier"}
        assert inserted and alert["acked"] and alert["ack"] == expected
        assert s.get(ev.id)["ack"] == expected and s.list(state="open")["total"] == 0
        assert s.early_acks() == 0 and s.pending_acks() == []  # a remote ack is not re-shared
        assert s.apply_remote_ack(ev.id, "x", 2000.0, None) is False and s.early_acks() == 0
        other = make_event()
        s.add(other)  # an ack that is simply later than the stored one is not kept aside either
        s.ack(other.id, "ann", None)
        assert s.apply_remote_ack(other.id, "x", time.time() + 60, None) is False and s.early_acks() == 0
        s.apply_remote_ack("never-comes", "bob", 1.0, None)  # its event never arrives: pruned in time
        assert s.prune(RetentionSettings(snapshot_max_age_days=None, snapshot_max_total_mb=None),
                       now=time.time() + 8 * 86400)["early_acks"] == 1
        assert s.early_acks() == 0
    finally:
        s.close()

def test_open_falls_close_on_recovery_or_ack_only(tmp_path: Path) -> None:
    """The MQTT camera state query: a lost track or an ended source keeps a fall open until acked."""
    db, snaps = tmp_path / "a.db", tmp_path / "snaps"
    s = AlertStore(db, snaps, retention=None)
    try:
        def clear(source: str, track: int, reason: str) -> Event:
            ev = make_event(source=source, type="fall_cleared", track=track)
            ev.reason = reason
            return ev

        lost = s.add(make_event(track=1))["id"]
        s.add(clear("cam1", 1, "track_lost"))  # out of sight: may still be on the floor
        ended = s.add(make_event(track=2))["id"]
        s.add(clear("cam1", 2, "source_ended"))
        got_up = s.add(make_event(track=3))["id"]
        before_recovery = s.last_seq()
        s.add(clear("cam1", 3, "recovered"))
        again = s.add(make_event(track=3))["id"]  # the same track falls again later: a new open fall
        acked = s.add(make_event(track=4))["id"]
        s.ack(acked, "ann", None)
        assert s.open_falls() == {"cam1": [lost, ended, again]}
        assert s.open_falls(upto_seq=before_recovery) == {"cam1": [lost, ended, got_up]}

        other_run = s.add(make_event(source="cam2", track=7))["id"]
        s.run_id = "an-earlier-or-later-run"  # a recovery of the same track id in another run
        s.add(clear("cam2", 7, "recovered"))
        s.add(clear("cam3", 7, "recovered"))  # and of the same track id on another camera
        remote = make_event(source="cam2", track=8)  # raised on another pod: its pod shows it
        s.add_remote(dict(remote.to_json(), pod="pod-b"), origin="pod-b")
        remote_clear = clear("cam1", 1, "recovered")  # another pod's clear closes nothing here
        s.add_remote(dict(remote_clear.to_json(), pod="pod-b"), origin="pod-b")
        assert s.open_falls() == {"cam1": [lost, ended, again], "cam2": [other_run]}
        assert s.open_falls("cam2") == {"cam2": [other_run]} and s.open_falls("cam9") == {}

        assert s.apply_remote_ack(other_run, "bob", time.time(), None)  # acked on another pod
        s.ack(lost, "ann", "found behind the bed")
        s.close()
        s = AlertStore(db, snaps, retention=None)  # derived from the store: the same after a restart
        assert s.open_falls() == {"cam1": [ended, again]}
    finally:
        s.close()


def backdate(store: AlertStore, ids: list[str], created_at: float) -> None:
    """Pretend these events were stored at `created_at` (retention ages count from there)."""
    conn = sqlite3.connect(store.db_path)
    with conn:
        conn.executemany("UPDATE events SET created_at = ? WHERE id = ?", [(created_at, i) for i in ids])
    conn.close()


def test_prune_by_age_size_and_orphans(tmp_path: Path) -> None:
    s = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    now = time.time()
    old = make_event(at=now - 10 * 86400)
    newer = [make_event(at=now - 100 + i, snapshot=bytes(1000) + jpeg(i)) for i in range(5)]
    for ev in [old, *newer]:
        s.add(ev)
        s.ack(ev.id, "ann", None)  # open alerts keep their snapshot: see the test below
    backdate(s, [old.id], now - 10 * 86400)
    orphan = s.snapshot_dir / "19990101" / "orphan.jpg"
    orphan.parent.mkdir()
    orphan.write_bytes(b"x")
    os.utime(orphan, (now - 7200, now - 7200))
    size_each = [len(e.snapshot) for e in newer]
    cap_mb = (sum(size_each[2:]) + 10) / 2**20  # room for the 3 newest only
    result = s.prune(RetentionSettings(snapshot_max_age_days=1, snapshot_max_total_mb=cap_mb), now=now)
    assert result["snapshots"] == 3 and result["orphans"] == 1 and not orphan.exists()
    assert s.snapshot_path(old.id) is None and s.get(old.id)["snapshot_url"] is None  # row kept
    assert [s.snapshot_path(e.id) is not None for e in newer] == [False, False, True, True, True]
    stats = s.stats()
    assert stats["pruned_snapshots"] == 3 and stats["snapshot_bytes"] == sum(size_each[2:])
    gone = s.prune(RetentionSettings(snapshot_max_age_days=None, snapshot_max_total_mb=None,
                                     event_max_age_days=5), now=now)
    assert gone["events"] == 1 and s.get(old.id) is None and s.list()["total"] == 5
    s.close()


def test_prune_keeps_undelivered_events_and_open_alerts_with_their_snapshots(tmp_path: Path) -> None:
    s = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    now = time.time()
    s.register_channel("hook")
    undelivered, open_alert, done = (make_event(frame=10 + i) for i in range(3))
    given_up = make_event(type="still_down", snapshot=jpeg(7))
    for ev in (undelivered, open_alert, done, given_up):
        s.add(ev)
    seq = {p.id: p.seq for p in s.pending("hook")}
    s.record("hook", seq[open_alert.id], "delivered", status=200)
    s.record("hook", seq[done.id], "delivered", status=200)
    s.record("hook", seq[given_up.id], "given_up", error="retry time exhausted")
    s.record("hook", seq[undelivered.id], "pending", status=500, error="HTTP 500", next_attempt_at=now + 5)
    for ev in (undelivered, done, given_up):
        s.ack(ev.id, "ann", None)
    # mirrored events are never delivered from here; their frame clock `at` is another pod's
    recent_mirror, old_mirror = make_event(at=now - 30 * 86400), make_event()
    for ev in (recent_mirror, old_mirror):
        s.add_remote(ev.to_json(), origin="pod-b", snapshot=ev.snapshot)
        s.ack(ev.id, "ann", None)
    backdate(s, [e.id for e in (undelivered, open_alert, done, given_up, old_mirror)], now - 10 * 86400)
    kept = (undelivered, open_alert)
    files = {e.id: s.snapshot_path(e.id) for e in (*kept, done, given_up)}

    snaps = s.prune(RetentionSettings(snapshot_max_age_days=1, snapshot_max_total_mb=1e-6), now=now)
    assert snaps["snapshots"] == 4  # done, given_up, both mirrors (the size cap takes the recent one too)
    assert all(s.snapshot_path(e.id) == files[e.id] and files[e.id].is_file() for e in kept)
    assert not files[done.id].exists() and not files[given_up.id].exists()

    rows = s.prune(RetentionSettings(snapshot_max_age_days=None, snapshot_max_total_mb=None,
                                     event_max_age_days=5), now=now)
    assert rows["events"] == 3  # done, given_up, old_mirror
    assert [s.get(e.id) is not None for e in (undelivered, open_alert, done, given_up, recent_mirror, old_mirror)
            ] == [True, True, False, False, True, False]
    assert all(s.snapshot_path(e.id) is not None for e in kept)
    assert [p.id for p in s.pending("hook")] == [undelivered.id]  # still to deliver, with its attempts
    assert s.deliveries(undelivered.id)[0]["attempts"] == 1

    s.record("hook", seq[undelivered.id], "delivered", status=200)
    s.ack(open_alert.id, "bob", None)
    rows = s.prune(RetentionSettings(snapshot_max_age_days=1, event_max_age_days=5), now=now)
    assert rows["events"] == 2 and rows["snapshots"] == 2
    assert not any(files[e.id].exists() for e in kept) and s.list()["total"] == 1
    s.close()


def test_prune_only_waits_for_channels_registered_by_this_process(tmp_path: Path) -> None:
    """A channel whose endpoint is no longer configured must not keep every later event forever."""
    db, snaps = tmp_path / "a.db", tmp_path / "snaps"
    s = AlertStore(db, snaps, retention=None)
    s.register_channel("old-hook")
    ev = make_event(type="still_down")
    s.add(ev)
    backdate(s, [ev.id], time.time() - 10 * 86400)
    policy = RetentionSettings(event_max_age_days=5)
    assert s.prune(policy)["events"] == 0 and s.get(ev.id) is not None
    s.close()
    s = AlertStore(db, snaps, retention=None)  # restarted without that webhook
    try:
        assert s.prune(policy)["events"] == 1 and s.get(ev.id) is None
    finally:
        s.close()


def test_prune_works_in_batches_and_lets_writers_in_between(tmp_path: Path, monkeypatch) -> None:
    s = AlertStore(tmp_path / "a.db", tmp_path / "snaps", retention=None)
    s.PRUNE_BATCH = 300
    n, old = 2000, time.time() - 10 * 86400
    (s.snapshot_dir / "19990101").mkdir()
    rows = []
    for i in range(n):
        rel = f"19990101/e{i}.jpg"
        (s.snapshot_dir / rel).write_bytes(b"j" * 10)
        rows.append((f"e{i}", "still_down", "cam1", 1, old, old, json.dumps({"id": f"e{i}"}), rel, 10, old))
    conn = sqlite3.connect(s.db_path)
    with conn:
        conn.executemany("INSERT INTO events (id, type, source, track_id, at, created_at, body, snapshot,"
                         " snapshot_bytes, acked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    batches: list[int] = []
    added: list[str] = []
    remove = s._remove_files

    def between_batches(files: list[tuple[str, int]]) -> int:
        """Runs after each batch committed: its rows no longer name the files, and add() gets the lock."""
        names = json.dumps([f[0] for f in files])
        assert conn.execute("SELECT COUNT(*) FROM events WHERE snapshot IN (SELECT value FROM json_each(?))",
                            (names,)).fetchone()[0] == 0
        assert all((s.snapshot_dir / rel).exists() for rel, _ in files)  # row first, then the file
        ev = make_event(type="still_down", snapshot=None)
        writer = threading.Thread(target=lambda: (s.add(ev), added.append(ev.id)))
        writer.start()
        writer.join(60)
        assert not writer.is_alive(), "add() waited for the prune to finish"
        batches.append(len(files))
        return remove(files)

    monkeypatch.setattr(s, "_remove_files", between_batches)
    result = s.prune(RetentionSettings(snapshot_max_age_days=1, snapshot_max_total_mb=None))
    assert result["snapshots"] == n and result["bytes"] == 10 * n
    assert batches == [300] * 6 + [200] and len(added) == 7
    assert not any((s.snapshot_dir / "19990101").iterdir())
    assert conn.execute("SELECT COUNT(*) FROM events WHERE snapshot IS NOT NULL").fetchone()[0] == 0
    batches.clear()
    result = s.prune(RetentionSettings(snapshot_max_age_days=None, snapshot_max_total_mb=None,
                                       event_max_age_days=5))
    assert result["events"] == n and len(batches) == 7 and s.list()["total"] == 14
    assert all(s.get(i) is not None for i in added)
    conn.close()
    s.close()


def test_background_pruner_runs(tmp_path: Path) -> None:
    s = AlertStore(tmp_path / "a.db", tmp_path / "snaps",
                   retention=RetentionSettings(snapshot_max_age_days=1, prune_interval_s=0.05))
    try:
        ev = make_event(at=time.time() - 3 * 86400)
        s.add(ev)
        s.ack(ev.id, "ann", None)
        backdate(s, [ev.id], time.time() - 3 * 86400)
        deadline = time.time() + 5
        while s.stats()["pruned_snapshots"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        assert s.snapshot_path(ev.id) is None and s.stats()["pruned_snapshots"] == 1
    finally:
        s.close()


def test_concurrent_writers_and_readers(store: AlertStore) -> None:
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        try:
            for i in range(25):
                ev = make_event(source=f"cam{k}", frame=100 + i)
                store.add(ev)
                with lock:
                    ids.append(ev.id)
                if i % 5 == 0:
                    store.ack(ev.id, f"w{k}", None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(40):
                store.list(state="open", limit=10)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)] + [
        threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.list()["total"] == 100 == len(set(ids))
    assert store.list(state="acked")["total"] == 20


CHILD = textwrap.dedent("""
    import hashlib, sys, time, uuid
    from pathlib import Path
    from service.events import Event
    from service.store import AlertStore
    store = AlertStore(Path(sys.argv[1]), Path(sys.argv[2]), retention=None)
    print("READY", flush=True)
    i = 0
    while True:
        eid = uuid.uuid4().hex
        snap = hashlib.sha256(eid.encode()).digest() * 600   # ~19 KB, content checkable
        store.add(Event(id=eid, type="fall_alert", source="cam", track_id=i, frame=i, started_frame=i,
                        pts_s=0.0, started_pts_s=0.0, at=time.time(), box=(0, 0, 1, 1), time_down_s=0.0,
                        snapshot=snap))
        print(eid, flush=True)   # add() returned: the event must survive anything from here
        i += 1
""")


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_loses_no_returned_add(tmp_path: Path, round_: int) -> None:
    db, snaps = tmp_path / "a.db", tmp_path / "snaps"
    returned: list[str] = []
    for _ in range(2):  # two killed writers on the same files
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(snaps)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        seen = 0
        while seen < 20 + 10 * round_:
            line = proc.stdout.readline()
            assert line, "writer died on its own"
            returned.append(line.strip())
            seen += 1
        os.kill(proc.pid, signal.SIGKILL)
        returned += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
    store = AlertStore(db, snaps, retention=None)
    try:
        for eid in returned:
            alert = store.get(eid)
            assert alert is not None, f"event {eid} returned by add() but lost after SIGKILL"
            path = store.snapshot_path(eid)
            assert path is not None and path.read_bytes() == hashlib.sha256(eid.encode()).digest() * 600
        every = store.list(limit=500)["items"]
        assert all(store.snapshot_path(a["id"]) is not None for a in every)  # no row without its file
        assert len(every) >= len(returned)
    finally:
        store.close()


def test_remote_events_with_bad_fields_are_refused(store: AlertStore) -> None:
    good = make_event().to_json()
    for bad in ({"type": "party"}, {"track_id": "3"}, {"at": "noon"}, {"id": "a/b"}):
        with pytest.raises(ValueError):
            store.add_remote(dict(good, **bad), origin="pod-b")
    assert store.list()["total"] == 0
