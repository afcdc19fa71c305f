"""`POST /v1/videos`: a whole video file in, an NDJSON stream of results out, every frame processed.

The upload is spooled to a temporary file within the size limit and probed with PyAV before the
response starts, so a corrupt or non-video upload is a 4xx with a reason, never a broken 200
stream. Decoding, inference and the per-frame step then run on a thread of their own; lines cross
to the event loop through a bounded hand-off, so a slow client slows only its own analysis and the
loop only forwards lines. Upload events are part of the stream (and of the summary); they are not
alerts of a camera, so they do not go to the alert store or delivery.

Analyses are bounded in number and in how long they wait for their client:

- at most `max_concurrent_videos` run at once (from the request's start to the end of its analysis
  thread); past it the answer is 429 with `Retry-After`, before the body is read, so uploads
  cannot starve the cameras of CPU;
- an analysis whose client has taken no line for `video_client_timeout_s` (the hand-off is full
  and the connection accepts nothing more) is stopped: its decoder, in-flight frames, temporary
  file and slot are freed, an `error` line is queued for the client in case it reads again, and a
  warning is logged. A client that disconnects stops its analysis at once, as before.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import AsyncIterator, Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Gauge
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.deps import SettingsDep, WorkerDep, empty_upload, limited_request, read_file_field, require_api_key
from service.clips import upload_clips
from service.pipeline import SourcePipeline
from service.settings import Settings
from service.sources.upload import CorruptVideoError, NotAVideoError, VideoInfo, analyze, iter_frames, probe_video
from service.worker import InferenceWorker

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"], dependencies=[Depends(require_api_key)])

NDJSON = "application/x-ndjson"
HANDOFF_LINES = 64  # lines decoded ahead of what the client has read
RETRY_AFTER_S = 10  # Retry-After of a 429: analyses take seconds to minutes, no finer estimate exists

VIDEO_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


VIDEOS_RUNNING = Gauge("falldet_video_analyses_running", "POST /v1/videos analyses holding a slot now")
VIDEOS_REFUSED = Counter("falldet_video_analyses_refused", "POST /v1/videos answered 429: every slot was taken")


class _Stopped(Exception):
    """The client went away; the analysis thread ends quietly."""


class _ClientStuck(Exception):
    """The client took no line for video_client_timeout_s; the analysis thread gives up."""


class VideoSlots:
    """How many video analyses run; one slot from the request's start to its thread's end. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._running >= self.limit:
                return False
            self._running += 1
        VIDEOS_RUNNING.inc()
        return True

    def release(self) -> None:
        with self._lock:
            if self._running == 0:
                return
            self._running -= 1
        VIDEOS_RUNNING.dec()

    @property
    def running(self) -> int:
        with self._lock:
            return self._running


def video_slots(request: Request, settings: Settings) -> VideoSlots:
    """The app's slots, made on first use (handlers run on the event loop: no race)."""
    slots = getattr(request.app.state, "video_slots", None)
    if slots is None:
        slots = request.app.state.video_slots = VideoSlots(settings.max_concurrent_videos)
    return slots


def _is_empty(upload: UploadFile) -> bool:
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size == 0


@router.post("/videos", openapi_extra=VIDEO_BODY, response_class=StreamingResponse, responses={
    200: {"content": {NDJSON: {}}, "description": "frame lines, event lines, a final summary line"},
    400: {"description": "an empty upload, a video that cannot be decoded, or frames over FALLDET_MAX_IMAGE_PIXELS"},
    401: {"description": "no valid API key"},
    413: {"description": "larger than FALLDET_MAX_UPLOAD_MB"}, 415: {"description": "not a video"},
    429: {"description": "FALLDET_MAX_CONCURRENT_VIDEOS analyses already running; see Retry-After"}})
async def analyze_video(request: Request, settings: SettingsDep, worker: WorkerDep,
                        clips: bool = Query(False, description="write an MP4 clip of every fall_alert: "
                                            "`clip` lines before the summary name them (clip_url)")
                        ) -> StreamingResponse:
    """Every frame of the uploaded video through the detector, tracker and fall rules, as NDJSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail="send the video as multipart/form-data field 'file'")
    body = limited_request(request, settings.max_upload_bytes)  # 413 from Content-Length: final, before 429
    slots = video_slots(request, settings)
    if not slots.try_acquire():  # before the body is read: a refused upload costs no spooling
        VIDEOS_REFUSED.inc()
        log.info("video upload refused: %d analyses running (max_concurrent_videos)", slots.limit)
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(RETRY_AFTER_S)},
                            detail=f"too many video analyses running (max_concurrent_videos={slots.limit}, "
                                   f"FALLDET_MAX_CONCURRENT_VIDEOS); retry in {RETRY_AFTER_S} s")
    upload: UploadFile | None = None
    handed_over = False  # once the analysis thread runs, it owns the upload and the slot
    try:
        upload = await read_file_field(body)
        if await run_in_threadpool(_is_empty, upload):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=empty_upload("a video"))
        try:
            info = await run_in_threadpool(probe_video, upload.file, settings.max_image_pixels)
        except CorruptVideoError as exc:
            unsupported = isinstance(exc, NotAVideoError)
            code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE if unsupported else status.HTTP_400_BAD_REQUEST
            raise HTTPException(code, detail=exc.reason) from None
        source = f"upload-{uuid.uuid4().hex[:12]}"
        # The thread starts here, not in the response body: a response that never starts (client
        # gone before it) still ends its analysis, by the client timeout, and frees the slot.
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        room = threading.Semaphore(HANDOFF_LINES)
        stop = threading.Event()
        thread = threading.Thread(target=_produce, name=f"analyze-{source}", daemon=True,
                                  args=(upload, info, source, settings, worker, asyncio.get_running_loop(),
                                        lines, room, stop, slots.release),
                                  kwargs={"clips": getattr(request.app.state, "clips", None) if clips else None})
        thread.start()
        handed_over = True
    finally:
        if not handed_over:
            slots.release()
            if upload is not None:
                await upload.close()
    return StreamingResponse(_lines(lines, room, stop), media_type=NDJSON,
                             headers={"X-Source": source, "Cache-Control": "no-store"})


async def _lines(lines: asyncio.Queue, room: threading.Semaphore, stop: threading.Event) -> AsyncIterator[str]:
    """Forward the analysis thread's lines; when the client leaves, tell the thread to stop."""
    try:
        while (line := await lines.get()) is not None:
            room.release()
            yield line
    finally:
        stop.set()  # no await here: this also runs when the response is cancelled


def _produce(upload: UploadFile, info: VideoInfo, source: str, settings: Settings, worker: InferenceWorker,
             loop: asyncio.AbstractEventLoop, lines: asyncio.Queue, room: threading.Semaphore,
             stop: threading.Event, done: Callable[[], None], clips=None) -> None:
    """The analysis thread: decode, infer, step, serialise; owns and finally closes the upload file,
    then calls `done` (frees the concurrency slot) before the end-of-stream marker. `clips`: the app's
    ClipService when the client asked for clips (`?clips=true`)."""
    client_timeout = settings.video_client_timeout_s
    poll = min(0.5, client_timeout / 4)

    def emit(message: dict | None, wait: bool = True) -> None:
        line = None if message is None else json.dumps(message, separators=(",", ":")) + "\n"
        if line is not None and wait:
            deadline = time.monotonic() + client_timeout
            while not room.acquire(timeout=poll):  # the client reads slowly: wait, unless it left
                if stop.is_set():
                    raise _Stopped
                if time.monotonic() >= deadline:
                    raise _ClientStuck
            if stop.is_set():
                raise _Stopped
        try:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        except RuntimeError:  # loop closed (shutdown)
            raise _Stopped from None

    messages = None
    try:
        pipeline = SourcePipeline(source, settings.pipeline, live=False,
                                  detection_threshold=getattr(getattr(worker, "runtime", None), "score_threshold", None))
        if clips is not None:  # a clip per fall_alert, `clip` lines at the end (service/clips.py)
            pipeline = upload_clips(pipeline, clips, source)
        frames = iter_frames(upload.file, source, stop=stop.is_set)
        messages = analyze(frames, worker, pipeline, video=info)
        for message in messages:
            emit(message)
    except _Stopped:
        log.info("analysis of %s stopped: the client went away", source)
    except _ClientStuck:
        reason = (f"analysis stopped: the client took no output for {client_timeout:g} s "
                  f"(FALLDET_VIDEO_CLIENT_TIMEOUT_S)")
        log.warning("analysis of %s stopped: the client took no output for %g s; resources freed",
                    source, client_timeout)
        try:  # for a client that reads again; past the hand-off bound by this one line
            emit({"type": "error", "reason": reason}, wait=False)
        except _Stopped:
            pass
    except Exception:
        log.exception("analysis of %s failed", source)
        try:
            emit({"type": "error", "reason": "internal error"})
        except (_Stopped, _ClientStuck):
            pass
    finally:
        try:
            if messages is not None:
                messages.close()  # now, not at garbage collection: decoder closed, in-flight frames cancelled
        finally:
            if clips is not None and messages is not None:
                pipeline.clips.close()  # a stopped analysis leaves no clip open in the writer
            upload.file.close()
            done()  # before the end marker: a client that read to the end may upload again at once
            try:
                emit(None)
            except _Stopped:
                pass
