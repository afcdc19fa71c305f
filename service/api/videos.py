"""`POST /v1/videos`: a whole video file in, an NDJSON stream of results out, every frame processed.

The upload is spooled to a temporary file within the size limit and probed with PyAV before the
response starts, so a corrupt or non-video upload is a 4xx with a reason, never a broken 200
stream. Decoding, inference and the per-frame step then run on a thread of their own; lines cross
to the event loop through a bounded hand-off, so a slow client slows only its own analysis and the
loop only forwards lines. Upload events are part of the stream (and of the summary); they are not
alerts of a camera, so they do not go to the alert store or delivery.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.api.deps import SettingsDep, WorkerDep, limited_request, read_file_field, require_api_key
from service.pipeline import SourcePipeline
from service.settings import Settings
from service.sources.upload import CorruptVideoError, NotAVideoError, VideoInfo, analyze, iter_frames, probe_video
from service.worker import InferenceWorker

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["videos"], dependencies=[Depends(require_api_key)])

NDJSON = "application/x-ndjson"
HANDOFF_LINES = 64  # lines decoded ahead of what the client has read

VIDEO_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


class _Stopped(Exception):
    """The client went away; the analysis thread ends quietly."""


@router.post("/videos", openapi_extra=VIDEO_BODY, response_class=StreamingResponse, responses={
    200: {"content": {NDJSON: {}}, "description": "frame lines, event lines, a final summary line"},
    400: {"description": "the video cannot be decoded, or its frames exceed FALLDET_MAX_IMAGE_PIXELS"},
    401: {"description": "no valid API key"},
    413: {"description": "larger than FALLDET_MAX_UPLOAD_MB"}, 415: {"description": "not a video"}})
async def analyze_video(request: Request, settings: SettingsDep, worker: WorkerDep) -> StreamingResponse:
    """Every frame of the uploaded video through the detector, tracker and fall rules, as NDJSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail="send the video as multipart/form-data field 'file'")
    upload = await read_file_field(limited_request(request, settings.max_upload_bytes))
    try:
        info = await run_in_threadpool(probe_video, upload.file, settings.max_image_pixels)
    except CorruptVideoError as exc:
        await upload.close()
        unsupported = isinstance(exc, NotAVideoError)
        code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE if unsupported else status.HTTP_400_BAD_REQUEST
        raise HTTPException(code, detail=exc.reason) from None
    source = f"upload-{uuid.uuid4().hex[:12]}"
    return StreamingResponse(_lines(upload, info, source, settings, worker), media_type=NDJSON,
                             headers={"X-Source": source, "Cache-Control": "no-store"})


async def _lines(upload: UploadFile, info: VideoInfo, source: str, settings: Settings,
                 worker: InferenceWorker) -> AsyncIterator[str]:
    """Forward the analysis thread's lines; when the client leaves, tell the thread to stop."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    slots = threading.Semaphore(HANDOFF_LINES)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, name=f"analyze-{source}", daemon=True,
                              args=(upload, info, source, settings, worker, loop, lines, slots, stop))
    thread.start()
    try:
        while (line := await lines.get()) is not None:
            slots.release()
            yield line
    finally:
        stop.set()  # no await here: this also runs when the response is cancelled


def _produce(upload: UploadFile, info: VideoInfo, source: str, settings: Settings, worker: InferenceWorker,
             loop: asyncio.AbstractEventLoop, lines: asyncio.Queue, slots: threading.Semaphore,
             stop: threading.Event) -> None:
    """The analysis thread: decode, infer, step, serialise; owns and finally closes the upload file."""

    def emit(message: dict | None) -> None:
        line = None if message is None else json.dumps(message, separators=(",", ":")) + "\n"
        if line is not None:
            while not slots.acquire(timeout=0.5):  # the client reads slowly: wait, unless it left
                if stop.is_set():
                    raise _Stopped
            if stop.is_set():
                raise _Stopped
        try:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        except RuntimeError:  # loop closed (shutdown)
            raise _Stopped from None

    try:
        pipeline = SourcePipeline(source, settings.pipeline, live=False)
        frames = iter_frames(upload.file, source, stop=stop.is_set)
        for message in analyze(frames, worker, pipeline, video=info):
            emit(message)
    except _Stopped:
        log.info("analysis of %s stopped: the client went away", source)
    except Exception:
        log.exception("analysis of %s failed", source)
        try:
            emit({"type": "error", "reason": "internal error"})
        except _Stopped:
            pass
    finally:
        upload.file.close()
        try:
            emit(None)
        except _Stopped:
            pass
