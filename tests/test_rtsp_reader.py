"""RTSP camera reader: URL rules, masking, backoff, states; slow tests against a real RTSP server.

The slow tests run `tools/rtsp_server.py` (Debian's GStreamer RTSP server, system python) replaying
the shared GMDCSA24 clips in real time. `RtspCamera` is imported by tests/test_streams.py too.
"""
from __future__ import annotations

import os
import random
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.frames import Frame
from service.sources.rtsp import (RtspReader, RtspSettings, StreamState, _describe, backoff_delay, mask_url,
                                  validate_stream_url)

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "tools" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
CLIPS = Path(os.environ.get("FALLDET_DATA") or REPO.parent / "shared" / "data") / "videos" / "gmdcsa24-s1"


def _has_gst_rtsp() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True)
    return probe.returncode == 0


needs_rtsp_server = pytest.mark.skipif(not _has_gst_rtsp() or not CLIPS.is_dir(),
                                       reason="needs /usr/bin/python3 with gi + GstRtspServer and the shared clips")


def clip(name: str) -> Path:
    return CLIPS / name


def free_port() -> int:
    """A port nothing listens on (bound then released: the kernel will not hand it out again soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspCamera:
    """`tools/rtsp_server.py` as a subprocess: start, kill, restart on the same port."""

    def __init__(self, mounts: dict[str, Path], fps: float | None = 25.0, port: int = 0) -> None:
        self.mounts = mounts
        self.fps = fps
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.urls: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> "RtspCamera":
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port)]
        cmd += [arg for name, path in self.mounts.items() for arg in ("--mount", f"{name}={path}")]
        if self.fps:
            cmd += ["--fps", str(self.fps)]
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody has to drain it
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines: queue.Queue[str] = queue.Queue()

        def pump(out=self.proc.stdout) -> None:  # select() on a buffered text pipe misses buffered lines
            with out:
                for line in out:
                    lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.urls = {}
        while len(self.urls) < len(self.mounts):
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    err = self.error_output() or "timed out"
                    self.stop()
                    raise RuntimeError(f"RTSP server did not get ready: {err}") from None
                continue
            if line.startswith("READY "):
                url = line.split()[1]
                self.urls[url.rsplit("/", 1)[1]] = url
                self.port = int(url.split(":")[2].split("/")[0])
        return self

    def url(self, name: str, userinfo: str = "") -> str:
        url = self.urls[name]
        return url.replace("rtsp://", f"rtsp://{userinfo}@", 1) if userinfo else url

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        self.stderr.close()  # unlinked already; the server keeps its own descriptor
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def error_output(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def __enter__(self) -> "RtspCamera":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test froze it
        self.stop()


def wait_for(predicate, timeout: float, period: float = 0.05) -> float:
    """Seconds until `predicate()` held; fails the test after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(period)
    return time.monotonic() - start


class Collector:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        with self.lock:
            self.frames.append(frame)

    def count(self) -> int:
        with self.lock:
            return len(self.frames)


# -- URL rules and masking (fast) ---------------------------------------------------------------------
@pytest.mark.parametrize("url", ["rtsp://10.0.0.5/stream1", "rtsp://user:pw@cam.local:8554/live/main",
                                 "RTSP://cam/x", "rtsps://cam.example.org:322/a?b=c", "rtsp://[::1]:554/x"])
def test_accepts_rtsp_urls(url):
    assert validate_stream_url(url) == url


@pytest.mark.parametrize("url, reason", [
    ("http://cam/x", "only rtsp:// and rtsps://"),
    ("file:///etc/passwd", "only rtsp:// and rtsps://"),
    ("/etc/passwd", "only rtsp:// and rtsps://"),
    ("concat:rtsp://a|rtsp://b", "only rtsp:// and rtsps://"),
    ("rtmp://cam/live", "only rtsp:// and rtsps://"),
    ("", "non-empty"),
    (None, "non-empty"),
    ("rtsp:///path-only", "no host"),
    ("rtsp://cam:99999/x", "malformed"),
    ("rtsp://cam/a b", "spaces or control"),
    ("rtsp://cam/a\nb", "spaces or control"),
    ("rtsp://cam/" + "a" * 3000, "longer than"),
])
def test_rejects_other_urls_with_a_reason(url, reason):
    with pytest.raises(ValueError, match=reason):
        validate_stream_url(url)


def test_passwords_are_masked():
    assert mask_url("rtsp://admin:s3cret@10.0.0.5:554/live") == "rtsp://admin:***@10.0.0.5:554/live"
    assert mask_url("rtsp://admin@10.0.0.5/live") == "rtsp://admin@10.0.0.5/live"
    assert mask_url("rtsp://10.0.0.5/live") == "rtsp://10.0.0.5/live"
    url = "rtsp://admin:p%40ss@cam/x"
    text = _describe(ConnectionRefusedError(111, f"Connection refused: '{url}'"), url)
    assert "p%40ss" not in text and "admin:***@cam" in text


def test_backoff_grows_exponentially_capped_with_jitter():
    s = RtspSettings(backoff_initial_s=0.5, backoff_factor=2.0, backoff_max_s=5.0, backoff_jitter=0.25)
    rng = random.Random(0)
    for attempt, base in enumerate([0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]):
        delays = [backoff_delay(attempt, s, rng) for _ in range(200)]
        assert base * 0.75 <= min(delays) and max(delays) <= base
        assert max(delays) - min(delays) > base * 0.15  # really jittered
    assert backoff_delay(10_000, s, rng) <= 5.0


# -- reader states with a scripted PyAV stand-in (fast) ----------------------------------------------
class FakeFrame:
    def __init__(self, t: float | None, size=(48, 64)) -> None:
        self.time = t
        self.size = size

    def to_ndarray(self, format: str) -> np.ndarray:
        assert format == "bgr24"
        return np.zeros((*self.size, 3), np.uint8)


class FakeContainer:
    """Yields `times` as one-frame packets (each `gap` s apart), then ends like a killed server."""

    def __init__(self, times, gap: float = 0.0, hang: float = 0.0) -> None:
        self.times, self.gap, self.hang = times, gap, hang
        self.streams = SimpleNamespace(video=[object()])
        self.closed = False

    def demux(self, stream):
        for t in self.times:
            time.sleep(self.gap)
            yield SimpleNamespace(decode=lambda t=t: [FakeFrame(t)])
        time.sleep(self.hang)

    def close(self):
        self.closed = True


class ScriptedOpener:
    """av.open stand-in: each call takes the next scripted container or exception."""

    def __init__(self, script) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, dict, object]] = []
        self.opened: list[FakeContainer] = []

    def __call__(self, url, options=None, timeout=None):
        self.calls.append((url, options, timeout))
        item = self.script.pop(0) if self.script else ConnectionRefusedError(111, f"Connection refused: '{url}'")
        if isinstance(item, BaseException):
            raise item
        self.opened.append(item)
        return item


FAST = RtspSettings(backoff_initial_s=0.05, backoff_max_s=0.2, stall_timeout_s=0.3, read_timeout_s=1.0)


def test_reader_reconnects_and_keeps_indices_and_times_rising():
    opener = ScriptedOpener([FakeContainer([None, 0.04, 0.08, 0.12]),
                             TimeoutError("timed out"),
                             FakeContainer([5.0, 5.04, 5.08])])  # a new session restarts stream time
    got = Collector()
    reader = RtspReader("cam", "rtsp://u:pw@cam.local/x", got, FAST, opener=opener)
    reader.start()
    try:
        wait_for(lambda: got.count() == 7 and reader.state == StreamState.BACKOFF, 5)
    finally:
        reader.stop()
    frames = got.frames
    assert [f.index for f in frames] == list(range(7))
    pts = [f.pts_s for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[1:4] == pytest.approx([0.04, 0.08, 0.12])  # stream times kept within a session
    assert pts[5] - pts[4] == pytest.approx(0.04)
    assert all(f.source == "cam" and f.image.shape == (48, 64, 3) for f in frames)
    assert all(c.closed for c in opener.opened)
    status = reader.status()
    assert status["state"] == "stopped" and status["frames_received"] == 7
    assert (status["width"], status["height"]) == (64, 48)
    assert status["url"] == "rtsp://u:***@cam.local/x"
    assert reader.reconnects >= 3
    url, options, timeout = opener.calls[0]
    assert options["rtsp_transport"] == "tcp" and options["timeout"] == "500000"  # microseconds
    assert timeout == (FAST.open_timeout_s, FAST.read_timeout_s / 2)  # both fire after ~2x their value


def test_a_failing_callback_does_not_kill_the_reader():
    calls = []

    def explode(frame):
        calls.append(frame.index)
        raise RuntimeError("consumer bug")

    reader = RtspReader("cam", "rtsp://cam/x", explode, FAST,
                        opener=ScriptedOpener([FakeContainer([0.0, 0.04, 0.08])]))
    reader.start()
    try:
        wait_for(lambda: len(calls) == 3 and reader.state == StreamState.BACKOFF, 5)
        assert reader.alive
    finally:
        reader.stop()
    assert reader.state == StreamState.STOPPED


def test_watchdog_marks_a_silent_camera_stalled_then_live_again():
    # 3 frames, a 0.8 s silence (stall_timeout 0.3 s), more frames, then a hang past the read timeout
    class Gappy(FakeContainer):
        def demux(self, stream):
            for i, t in enumerate(self.times):
                time.sleep(0.8 if i == 3 else 0.01)
                yield SimpleNamespace(decode=lambda t=t: [FakeFrame(t)])
            time.sleep(5)

    got = Collector()
    reader = RtspReader("cam", "rtsp://cam/x", got, FAST, opener=ScriptedOpener([Gappy([0.0, 0.04, 0.08, 0.12, 0.16])]))
    seen: list[str] = []
    reader.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and got.count() < 5:
            seen.append(reader.state.value)
            time.sleep(0.02)
        wait_for(lambda: reader.state == StreamState.STALLED, 2)
        assert "no frame for" in reader.status()["last_error"]
    finally:
        reader.stop(timeout=0.1)
    assert "live" in seen and "stalled" in seen
    assert seen.index("stalled") > seen.index("live")
    assert reader.state == StreamState.STOPPED


def test_nothing_listening_is_a_backoff_state_not_a_crash():
    url = f"rtsp://viewer:hunter2@127.0.0.1:{free_port()}/cam"
    reader = RtspReader("cam", url, lambda f: None,
                        RtspSettings(backoff_initial_s=0.1, backoff_max_s=0.4, open_timeout_s=2.0))
    reader.start()
    try:
        waited = wait_for(lambda: reader.status()["reconnects"] >= 3, 5)
        status = reader.status()
        assert status["state"] in ("backoff", "connecting")
        assert "refused" in status["last_error"].lower()
        assert "hunter2" not in str(status) and "viewer:***@" in status["url"]
        assert reader.alive and status["frames_received"] == 0
        print(f"\nnothing listening: 3 attempts in {waited:.2f} s, last_error={status['last_error']!r}")
    finally:
        reader.stop()
    assert reader.state == StreamState.STOPPED


# -- the real RTSP server (slow) ------------------------------------------------------------------------
@pytest.mark.slow
@needs_rtsp_server
def test_rtsp_server_cli_rejects_bad_mounts_and_exits_cleanly_on_sigterm():
    bad = subprocess.run([SYSTEM_PYTHON, str(SERVER), "--port", "0", "--mount", "x=/no/such.mp4"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "no such file" in bad.stderr
    camera = RtspCamera({"a": clip("fall/13.mp4")}).start()
    taken = subprocess.run([SYSTEM_PYTHON, str(SERVER), "--port", str(camera.port), "--mount",
                            f"a={clip('fall/13.mp4')}"], capture_output=True, text=True, timeout=30)
    assert taken.returncode == 2 and "cannot listen" in taken.stderr
    assert camera.stop(signal.SIGTERM) == 0


@pytest.mark.slow
@needs_rtsp_server
def test_reads_a_real_25fps_camera_in_real_time():
    got = Collector()
    with RtspCamera({"cam": clip("fall/14.mp4")}, fps=25) as camera:
        reader = RtspReader("cam", camera.url("cam"), got)
        t0 = time.time()
        reader.start()
        try:
            to_live = wait_for(lambda: reader.state == StreamState.LIVE, 10)
            time.sleep(1.0)  # past the opening burst
            n0, t1 = got.count(), time.monotonic()
            time.sleep(4.0)
            rate = (got.count() - n0) / (time.monotonic() - t1)
            status = reader.status()
        finally:
            reader.stop()
    frames = got.frames
    steps = np.diff([f.pts_s for f in frames[30:]])
    print(f"\nreal camera: live after {to_live:.2f} s (first frame at {frames[0].captured_at - t0:.2f} s), "
          f"{rate:.2f} fps received, median pts step {np.median(steps) * 1000:.1f} ms, status {status}")
    assert status["state"] == "live" and (status["width"], status["height"]) == (640, 480)
    assert 18 <= rate <= 32  # real time (25 fps), with room for a loaded CI machine
    assert np.median(steps) == pytest.approx(0.04, abs=0.004)
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in frames[:5])


@pytest.mark.slow
@needs_rtsp_server
def test_killed_then_restarted_camera_goes_backoff_then_live_again():
    got = Collector()
    settings = RtspSettings(backoff_initial_s=0.25, backoff_max_s=1.0, stall_timeout_s=1.0, read_timeout_s=3.0)
    camera = RtspCamera({"cam": clip("fall/13.mp4")}, fps=25).start()
    reader = RtspReader("cam", camera.url("cam", "viewer:hunter2"), got, settings)
    reader.start()
    try:
        wait_for(lambda: reader.state == StreamState.LIVE, 10)
        # a frozen camera (process stopped, socket open): stalled, then dropped after the read timeout
        camera.signal(signal.SIGSTOP)
        to_stalled = wait_for(lambda: reader.state == StreamState.STALLED, 5)
        to_backoff_frozen = to_stalled + wait_for(lambda: reader.state == StreamState.BACKOFF, 10)
        camera.signal(signal.SIGCONT)
        wait_for(lambda: reader.state == StreamState.LIVE, 10)
        # a killed camera: the stream just ends -> backoff at once, refused while it is down
        port = camera.port
        camera.stop(signal.SIGKILL)
        killed = time.monotonic()
        to_backoff = wait_for(lambda: reader.state in (StreamState.BACKOFF, StreamState.STALLED), 5)
        time.sleep(1.5)
        status_down = reader.status()
        camera = RtspCamera({"cam": clip("fall/13.mp4")}, fps=25, port=port).start()
        restarted = time.monotonic()
        to_live = wait_for(lambda: reader.state == StreamState.LIVE, 10)
        n0 = got.count()
        wait_for(lambda: got.count() >= n0 + 25, 5)
    finally:
        reader.stop()
        camera.stop()
    print(f"\nfrozen: stalled after {to_stalled:.2f} s, backoff after {to_backoff_frozen:.2f} s; "
          f"killed: {status_down['state']} after {to_backoff:.2f} s, live again {to_live:.2f} s after restart "
          f"(down {restarted - killed:.1f} s); last_error={status_down['last_error']!r}")
    assert status_down["state"] in ("backoff", "connecting") and status_down["last_error"]
    assert "hunter2" not in str(status_down)
    indices = [f.index for f in got.frames]
    assert indices == list(range(len(indices)))
    assert all(b.pts_s > a.pts_s for a, b in zip(got.frames, got.frames[1:]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
