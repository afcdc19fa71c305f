"""A camera's final events come after every event it published: removal or shutdown waits for a
result still being published (its fall_alert's snapshot fsync, store.add) before finish() makes the
fall_cleared, so the clear is never stored before the alert it clears. A slow publish holds up only
its own camera.

Fakes of tests/test_streams.py; the publish is held on a threading.Event, never timed.
"""
from __future__ import annotations

import threading

import pytest

from service.streams import StreamManager
from test_streams import FakeBus, FakePipeline, dead_url, image_frame, make_settings, parts  # noqa: F401 (fixture)


class HeldBus(FakeBus):
    """Records an event when it is stored; a fall_alert of `hold` is held (its snapshot fsync) until
    `release` is set."""

    def __init__(self, hold: str = "cam") -> None:
        super().__init__()
        self.hold = hold
        self.publishing, self.release = threading.Event(), threading.Event()

    def publish_event(self, event):
        if event.type == "fall_alert" and event.source == self.hold:
            self.publishing.set()
            assert self.release.wait(10), "test never released the publish"
        return super().publish_event(event)


@pytest.mark.parametrize("how", ["remove", "stop"])
def test_final_events_wait_for_a_result_still_being_published(tmp_path, parts, how):
    bus = HeldBus()
    m = StreamManager(make_settings(tmp_path), parts.worker, bus,
                      lambda source: FakePipeline(source, event_at=0))  # frame 0: a fall_alert
    m.add("cam", dead_url())
    stream = m._streams["cam"]
    reader_stopped = threading.Event()
    real_stop = stream.reader.stop

    def recording_stop(timeout: float = 1.0) -> None:
        real_stop(timeout)
        if timeout:  # stop() signals with 0 first, then close() waits
            reader_stopped.set()

    stream.reader.stop = recording_stop
    # the fake worker resolves at once, so on_frame steps and publishes on this thread
    result = threading.Thread(target=stream.on_frame, args=(image_frame("cam", 0),))
    result.start()
    remover = threading.Thread(target=m.remove if how == "remove" else m.stop,
                               args=("cam",) if how == "remove" else ())
    try:
        assert bus.publishing.wait(10)  # the alert is being published (fsync of its snapshot)
        remover.start()
        assert reader_stopped.wait(10)  # the removal is inside close()
        remover.join(0.5)  # a bound, not an assertion on timing: it must still be waiting afterwards
        assert remover.is_alive(), "the camera closed while its alert was still being published"
        assert not stream.pipeline.finished and bus.events == []
        assert stream.lock.acquire(timeout=10), "the step lock is held during the publish"
        stream.lock.release()  # (timeline() and the preview still answer meanwhile)
    finally:
        bus.release.set()
        result.join(10)
        remover.join(10)
    assert not result.is_alive() and not remover.is_alive()
    assert [(e.type, e.frame) for e in bus.events] == [("fall_alert", 0), ("fall_cleared", -1)]
    assert stream.pipeline.finished and stream.frames_processed == 1 and stream.errors == 0
    m.stop()


def test_a_slow_publish_holds_up_only_its_own_camera(tmp_path, parts):
    bus = HeldBus(hold="slow")
    m = StreamManager(make_settings(tmp_path), parts.worker, bus,
                      lambda source: FakePipeline(source, event_at=0))
    m.add("slow", dead_url())
    m.add("fast", dead_url())
    held = threading.Thread(target=m._streams["slow"].on_frame, args=(image_frame("slow", 0),))
    held.start()
    try:
        assert bus.publishing.wait(10)
        other = threading.Thread(target=m._streams["fast"].on_frame, args=(image_frame("fast", 0),))
        other.start()
        other.join(10)
        assert not other.is_alive() and m.get("fast")["frames_processed"] == 1
        assert [(e.source, e.type) for e in bus.events] == [("fast", "fall_alert")]
        assert m.remove("fast")["state"] == "stopped"  # another camera's removal is not held either
        assert m.timeline("slow")["steps"] == 1  # the held camera's step lock is free meanwhile
    finally:
        bus.release.set()
        held.join(10)
    assert not held.is_alive()
    m.remove("slow")
    assert [(e.source, e.type) for e in bus.events] == [
        ("fast", "fall_alert"), ("fast", "fall_cleared"), ("slow", "fall_alert"), ("slow", "fall_cleared")]
    m.stop()
