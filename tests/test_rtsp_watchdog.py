"""RTSP reader: a camera whose packets keep coming but never decode is dropped and retried.

PyAV's read timeout only fires when nothing arrives; a camera sending corrupt or undecodable
packets (no keyframe, broken references, InvalidDataError on every packet) would otherwise stay
`stalled` or `connecting` forever. Scripted PyAV stand-ins, no server: fast and deterministic.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import av
import pytest

from service.sources.rtsp import RtspReader, RtspSettings, StreamState
from test_rtsp_reader import Collector, FakeContainer, FakeFrame, ScriptedOpener, wait_for

SETTINGS = RtspSettings(open_timeout_s=0.3, read_timeout_s=0.4, stall_timeout_s=0.2,
                        backoff_initial_s=0.05, backoff_max_s=0.1)


def _corrupt() -> list:
    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")


class Endless(FakeContainer):
    """`good` decodable one-frame packets, then packets forever that raise (or decode to nothing)."""

    def __init__(self, good: int = 0, bad: str = "raise", first_good_after: float = 0.0, gap: float = 0.005):
        super().__init__([])
        self.good, self.bad, self.first_good_after, self.gap = good, bad, first_good_after, gap
        self.packets = 0

    def demux(self, stream):
        t0 = time.monotonic()
        sent = 0
        while not self.closed:
            time.sleep(self.gap)
            self.packets += 1
            if sent < self.good and time.monotonic() - t0 >= self.first_good_after:
                sent += 1
                yield SimpleNamespace(decode=lambda t=sent * 0.04: [FakeFrame(t)])
            elif self.bad == "raise":
                yield SimpleNamespace(decode=_corrupt)
            else:  # "empty": the decoder swallows the packet (waiting for a keyframe)
                yield SimpleNamespace(decode=lambda: [])


def _run(reader: RtspReader, until, timeout: float = 5.0) -> list[str]:
    """The states the reader went through until `until()` held, from its own record of its
    transitions (sampling `reader.state` missed a brief state under load: issue 25 item 9); the
    reader is stopped afterwards and its final `stopped` left out."""
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; states "
                                     f"{_states(reader)[-5:]}, status {reader.status()}")
            time.sleep(0.01)
    finally:
        reader.stop()
    seen = _states(reader)
    assert seen[-1] == "stopped"
    return seen[:-1]


def _states(reader: RtspReader) -> list[str]:
    return [state.value for _, state in reader.transitions]


def test_the_reader_records_every_transition_even_one_nobody_sampled():
    """A state that lasts a moment (here: `live` for one frame, then the stream ends) is in the
    record, with its time, however seldom someone looks at `state`."""
    opener = ScriptedOpener([FakeContainer([0.0], gap=0.0)])
    reader = RtspReader("cam", "rtsp://cam/x", Collector(), SETTINGS, opener=opener)
    reader.start()
    wait_for(lambda: len(opener.calls) >= 2, 5)
    reader.stop()
    seen = _states(reader)
    assert seen[:4] == ["connecting", "live", "backoff", "connecting"], seen
    times = [t for t, _ in reader.transitions]
    assert times == sorted(times)


@pytest.mark.parametrize("bad", ["raise", "empty"])
def test_a_camera_that_never_decodes_is_retried_not_left_connecting(bad):
    opener = ScriptedOpener([Endless(bad=bad), Endless(bad=bad), Endless(bad=bad)])
    reader = RtspReader("cam", "rtsp://u:pw@cam/x", Collector(), SETTINGS, opener=opener)
    started = time.monotonic()
    seen = _run(reader, lambda: len(opener.calls) >= 3)
    took = time.monotonic() - started
    assert "backoff" in seen and "live" not in seen
    assert reader.status()["frames_received"] == 0 and reader.reconnects >= 2
    assert all(c.closed for c in opener.opened[:2])
    assert "no decodable frame for" in reader.status()["last_error"]
    # first frame allowance: open_timeout_s + read_timeout_s = 0.7 s per session, plus the short backoff
    assert took >= 2 * 0.7 and opener.opened[0].packets > 10
    if bad == "raise":
        assert reader.decode_errors >= opener.opened[0].packets


def test_a_live_camera_whose_packets_stop_decoding_goes_stalled_then_reconnects():
    opener = ScriptedOpener([Endless(good=5, bad="raise"), FakeContainer([0.0, 0.04, 0.08], gap=0.01)])
    got = Collector()
    reader = RtspReader("cam", "rtsp://cam/x", got, SETTINGS, opener=opener)
    errors: list[str] = []

    reader.on_state = lambda state, error: errors.append(error) if state == StreamState.BACKOFF else None
    seen = _run(reader, lambda: got.count() == 8)
    assert seen[:4] == ["connecting", "live", "stalled", "backoff"], seen
    assert "live" in seen[4:]  # the second session delivers again
    assert any(e.startswith("no decodable frame for") for e in errors), errors
    assert len(opener.calls) >= 2 and opener.opened[0].closed
    assert [f.index for f in got.frames] == list(range(8))


def test_a_healthy_camera_is_not_dropped_and_odd_corrupt_packets_are_tolerated():
    class Healthy(FakeContainer):  # 25 fps for 1.5 s (about 4 read timeouts), every 3rd packet corrupt
        def demux(self, stream):
            for i in range(60):
                time.sleep(0.025)
                if i % 3 == 2:
                    yield SimpleNamespace(decode=_corrupt)
                else:
                    yield SimpleNamespace(decode=lambda t=i * 0.025: [FakeFrame(t)])

    opener = ScriptedOpener([Healthy([])])
    got = Collector()
    reader = RtspReader("cam", "rtsp://cam/x", got, SETTINGS, opener=opener)
    seen = _run(reader, lambda: got.count() == 40 and reader.state == StreamState.BACKOFF)
    assert seen[:2] == ["connecting", "live"]
    assert len(opener.calls) >= 1 and reader.reconnects >= 1
    assert reader.status()["last_error"] == "stream ended"  # the stream's own end, not the guard
    assert reader.decode_errors == 20


def test_a_first_keyframe_later_than_the_read_timeout_still_connects():
    settings = SETTINGS.model_copy(update={"open_timeout_s": 0.8})  # first frame allowed 1.2 s
    opener = ScriptedOpener([Endless(good=10, bad="empty", first_good_after=0.6)])
    got = Collector()
    reader = RtspReader("cam", "rtsp://cam/x", got, settings, opener=opener)
    seen = _run(reader, lambda: got.count() == 10)
    assert seen == ["connecting", "live"]
    assert len(opener.calls) == 1 and reader.reconnects == 0
