"""The inference worker: one thread owns the Runtime and batches frames across all sources.

Live sources keep at most one pending frame: a newer frame replaces it (the old future is cancelled
and counted as dropped), so a slow model makes live sources skip frames instead of falling behind.
Uploads queue every frame and none is dropped. A batch first takes at most one frame per source, in
round-robin order so that sources left out of a full batch go first next time; room left over is
filled with further frames of queued uploads. The worker waits at most `max_wait_ms` for a batch to
fill, and only while sources that were active in the last second have nothing pending yet.

Futures are resolved on a second thread, so the callbacks that run on them (tracking, fall rules,
snapshots, publishing) never hold up the next inference call; its hand-off queue is short, so a slow
consumer pushes back on the worker and live frames are dropped rather than piling up.

When a batch call raises, its frames are run again one by one, so a frame the model cannot take
(one client's odd image) fails only its own future, not the camera and video frames batched with it.

A model swap (`swap_runtime`) takes effect at the next batch. The completion thread tells the
runtime listeners (`add_runtime_listener`) about it before it hands out the first results of the new
runtime, so whatever follows the model's settings (the cameras' tracker thresholds, from the file's
operating point) changes exactly between the last frame inferred by the old model and the first one
inferred by the new model.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
from prometheus_client import Counter, Histogram

from service.frames import Frame, Person

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram("falldet_batch_size", "Frames per inference call",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32))
INFERENCE_SECONDS = Histogram("falldet_inference_seconds", "Duration of one inference call (whole batch)",
                              buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56))
FRAMES_DROPPED = Counter("falldet_frames_dropped", "Live frames replaced by a newer one before inference",
                         ["source"])

ACTIVE_WINDOW_S = 1.0  # a source that submitted this recently is expected to submit again soon


class Detector(Protocol):
    """What the worker needs of a Runtime (tests pass fakes)."""

    def detect(self, images: list[np.ndarray], rgb: bool = False) -> list[list[Person]]: ...


Item = tuple[Frame, "Future[list[Person]]"]
Outcome = list[Person] | BaseException  # one frame's persons, or why it could not be inferred


class InferenceWorker:
    """Batches frames from every source into calls of one Runtime, on one thread."""

    def __init__(self, runtime: Detector, max_batch: int = 8, max_wait_ms: float = 4.0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runtime = runtime
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self._cv = threading.Condition()
        self._live: dict[str, Item] = {}
        self._uploads: dict[str, deque[Item]] = {}
        self._turn: OrderedDict[str, None] = OrderedDict()  # round-robin order of sources
        self._seen: dict[str, float] = {}  # source -> monotonic time of its last submit
        self._dropped: dict[str, int] = {}
        self._running = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._done_thread: threading.Thread | None = None
        self._done: queue.Queue[tuple[list[Item], list[Outcome], Detector] | None] = queue.Queue(2)
        self._listeners: list[Callable[[Detector], None]] = []
        self._answering: Detector = runtime  # whose results the completion thread hands out now
        self.batches = 0  # inference calls made (for tests and benchmarks)
        self.frames = 0  # frames inferred

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the inference and completion threads (idempotent)."""
        with self._cv:
            if self._running:
                return
            self._running = True
            self._stopped = False
        self._done_thread = threading.Thread(target=self._complete_loop, name="inference-done", daemon=True)
        self._thread = threading.Thread(target=self._loop, name="inference-worker", daemon=True)
        self._done_thread.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop the threads; frames still pending are cancelled."""
        with self._cv:
            self._running = False
            self._stopped = True
            pending = [item for item in self._live.values()]
            pending += [item for q in self._uploads.values() for item in q]
            self._live.clear()
            self._uploads.clear()
            self._cv.notify_all()
        for _, fut in pending:
            fut.cancel()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._done_thread is not None:
            self._done.put(None)
            self._done_thread.join()
            self._done_thread = None

    @property
    def running(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    # -- producers ---------------------------------------------------------------------------------
    def submit(self, frame: Frame, live: bool) -> "Future[list[Person]]":
        """Queue `frame`; the future gets its persons (or is cancelled if a newer live frame wins)."""
        fut: Future[list[Person]] = Future()
        source = frame.source
        with self._cv:
            if self._stopped:
                raise RuntimeError("inference worker is stopped")
            if live:
                old = self._live.get(source)
                if old is not None:
                    old[1].cancel()
                    self._dropped[source] = self._dropped.get(source, 0) + 1
                    FRAMES_DROPPED.labels(source).inc()
                self._live[source] = (frame, fut)
            else:
                self._uploads.setdefault(source, deque()).append((frame, fut))
            self._turn.setdefault(source, None)
            self._seen[source] = time.monotonic()
            self._cv.notify()
        return fut

    def swap_runtime(self, runtime: Detector) -> Detector:
        """Use `runtime` from the next batch on (a model swap); returns the one it replaces.

        The inference thread reads `self.runtime` once per call, so the batch in flight finishes on
        the old model and no frame, camera or future is dropped by the swap."""
        with self._cv:
            old, self.runtime = self.runtime, runtime
        return old

    def add_runtime_listener(self, listener: Callable[[Detector], None]) -> None:
        """Call `listener(runtime)` on the completion thread when the results it is about to hand out
        come from another runtime than the ones before (after a swap), before any of them."""
        self._listeners.append(listener)

    def dropped(self, source: str) -> int:
        """Live frames of `source` replaced before inference, so far."""
        with self._cv:
            return self._dropped.get(source, 0)

    def forget(self, source: str) -> None:
        """Drop a source's counters (a removed camera); its pending frame is cancelled."""
        with self._cv:
            item = self._live.pop(source, None)
            self._dropped.pop(source, None)
            self._seen.pop(source, None)
            self._turn.pop(source, None)
        if item is not None:
            item[1].cancel()
        try:
            FRAMES_DROPPED.remove(source)
        except KeyError:
            pass

    # -- the inference thread --------------------------------------------------------------------------
    def _pending(self) -> int:
        return len(self._live) + sum(len(q) for q in self._uploads.values())

    def _expected(self, now: float) -> int:
        """How many frames a batch can hope for: sources active lately, capped by max_batch."""
        active = sum(1 for t in self._seen.values() if now - t <= ACTIVE_WINDOW_S)
        return min(self.max_batch, max(active, 1))

    def _pop(self, source: str) -> Item | None:
        """Next frame of `source` still wanted by its caller, marked running (live first)."""
        item = self._live.pop(source, None)
        if item is not None and item[1].set_running_or_notify_cancel():
            return item
        q = self._uploads.get(source)
        while q:
            item = q.popleft()
            if item[1].set_running_or_notify_cancel():
                return item
        return None

    def _take_batch(self) -> list[Item]:
        """At most one frame per source in turn order, then more frames of queued uploads."""
        batch: list[Item] = []
        served: list[str] = []
        for source in list(self._turn):
            if len(batch) >= self.max_batch:
                break
            item = self._pop(source)
            if item is not None:
                batch.append(item)
                served.append(source)
        while len(batch) < self.max_batch:
            added = False
            for source in list(self._turn):
                q = self._uploads.get(source)
                while q and len(batch) < self.max_batch:
                    item = q.popleft()
                    if item[1].set_running_or_notify_cancel():
                        batch.append(item)
                        added = True
                        break
            if not added:
                break
        for source in served:
            self._turn.move_to_end(source)
        self._prune(time.monotonic())
        return batch

    def _prune(self, now: float) -> None:
        """Forget sources with nothing pending that have gone quiet (finished uploads)."""
        for source in [s for s, q in self._uploads.items() if not q]:
            del self._uploads[source]
        for source in list(self._turn):
            if source not in self._live and source not in self._uploads \
                    and now - self._seen.get(source, 0.0) > ACTIVE_WINDOW_S:
                del self._turn[source]
                self._seen.pop(source, None)

    def _next_batch(self) -> list[Item] | None:
        """Block until frames are pending, wait briefly for the batch to fill, take it (None: stop)."""
        with self._cv:
            while self._running and not self._pending():
                self._cv.wait()
            if not self._running:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while self._running:
                now = time.monotonic()
                if self._pending() >= self._expected(now) or now >= deadline:
                    break
                self._cv.wait(deadline - now)
            return self._take_batch()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            runtime = self.runtime  # read once per batch: a swap takes effect at the next batch, never mid-call
            self._done.put((batch, self._infer(batch, runtime), runtime))

    def _infer(self, batch: list[Item], runtime: Detector) -> list[Outcome]:
        """Each frame's outcome; a failed batch is retried frame by frame so only bad frames fail."""
        try:
            return list(self._run(batch, runtime))
        except Exception as exc:  # a bad frame or a runtime fault must not kill the worker
            if len(batch) == 1:
                self._log_failure(batch[0][0], exc)
                return [exc]
            log.warning("inference failed for a batch of %d (%s); retrying its frames one by one",
                        len(batch), exc)
        outcomes: list[Outcome] = []
        for item in batch:
            try:
                outcomes.extend(self._run([item], runtime))
            except Exception as exc:
                self._log_failure(item[0], exc)
                outcomes.append(exc)
        return outcomes

    def _run(self, batch: list[Item], runtime: Detector) -> list[list[Person]]:
        """One runtime call over `batch`, with its metrics; raises what the runtime raised."""
        start = time.perf_counter()
        result = runtime.detect([f.image for f, _ in batch])
        if len(result) != len(batch):
            raise RuntimeError(f"runtime returned {len(result)} results for {len(batch)} frames")
        INFERENCE_SECONDS.observe(time.perf_counter() - start)
        BATCH_SIZE.observe(len(batch))
        self.batches += 1
        self.frames += len(batch)
        return result

    @staticmethod
    def _log_failure(frame: Frame, exc: BaseException) -> None:
        log.error("inference failed for frame %d of %s (image shape %s)", frame.index, frame.source,
                  getattr(frame.image, "shape", None), exc_info=exc)

    def _complete_loop(self) -> None:
        """Resolve futures off the inference thread; their callbacks run here."""
        while (job := self._done.get()) is not None:
            batch, outcomes, runtime = job
            if runtime is not self._answering:  # the first results of a swapped-in model
                self._answering = runtime
                for listener in list(self._listeners):
                    try:
                        listener(runtime)
                    except Exception:
                        log.exception("a runtime listener failed after a model swap")
            for (_, fut), outcome in zip(batch, outcomes):
                try:
                    if isinstance(outcome, BaseException):
                        fut.set_exception(outcome)
                    else:
                        fut.set_result(outcome)
                except Exception:  # InvalidStateError cannot happen (futures are running); be safe
                    log.exception("could not resolve a frame future")


def infer_in_order(worker: InferenceWorker, frames: Iterable[Frame], window: int = 16
                   ) -> Iterator[tuple[Frame, list[Person]]]:
    """Every frame of an upload with its persons, in order, keeping up to `window` frames in flight.

    Submitting ahead lets the worker batch an upload's frames and overlaps decoding with inference.
    If `frames` raises, the frames already submitted are still yielded, then the error is raised.
    Frames still in flight when the consumer stops early are cancelled.
    """
    pending: deque[Item] = deque()
    source = iter(frames)
    failure: Exception | None = None
    try:
        while True:
            try:
                frame = next(source)
            except StopIteration:
                break
            except Exception as exc:  # a decoding error: finish what was decoded, then raise it
                failure = exc
                break
            pending.append((frame, worker.submit(frame, live=False)))
            if len(pending) >= max(1, window):
                done_frame, fut = pending.popleft()
                yield done_frame, fut.result()
        while pending:
            done_frame, fut = pending.popleft()
            yield done_frame, fut.result()
    finally:
        for _, fut in pending:
            fut.cancel()
    if failure is not None:
        raise failure
