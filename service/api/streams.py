"""`/v1/streams`: register, list, inspect and remove RTSP cameras.

Refusals come from `StreamManager` as `StreamError`s carrying their HTTP code: 422 bad id or URL
(only rtsp:// and rtsps://), 409 duplicate id, 429 over `max_streams`, 421 a camera of another
shard. URLs are validated here rather than in the request model so that a rejected URL, which may
hold a password, is never echoed back in a validation error.

`GET /v1/streams/{id}/preview.jpg` is the operator page's picture: pulled, one request at a time
per viewer, so a slow viewer gets fewer pictures rather than a backlog; the frame index in
`X-Frame-Index` pairs it with its own result line (boxes) from the WebSocket.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import StreamsDep, require_api_key
from service.sources.rtsp import MAX_URL_LENGTH
from service.streams import STREAM_ID, StreamError

router = APIRouter(prefix="/v1/streams", tags=["streams"], dependencies=[Depends(require_api_key)])

StreamId = Annotated[str, Path(description="the camera's id", max_length=64)]

PREVIEW_DEFAULT_WIDTH = 640
PREVIEW_MIN_WIDTH = 16
PREVIEW_MAX_WIDTH = 3840  # 4K: never scaled up anyway, a bound against nonsense


class StreamIn(BaseModel):
    """A camera to register."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STREAM_ID.pattern, description="1-64 letters, digits, '_', '.', '-'; "
                                                           "names the camera in URLs and results")
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH,
                     description="rtsp:// or rtsps:// URL; a password in it is masked in every answer")
    detect_fps: float | None = Field(None, gt=0, le=120, description=(
        "frames a second this camera's detector analyses (the others still feed its fall clips); "
        "null: the service's FALLDET_DETECT_FPS"))


class StreamStatus(BaseModel):
    """A camera's visible state (`state`: connecting, live, stalled, backoff, stopped)."""

    id: str
    url: str
    state: str
    last_error: str | None = Field(description="why the camera is not live, in plain words (no answer, host "
                                   "not found, refused, authentication failed, not RTSP...); null once live")
    last_error_detail: str | None = Field(None, description="the underlying error text (password masked)")
    last_error_at: float | None = Field(None, description="when last_error happened, unix seconds")
    frames_received: int
    frames_processed: int
    frames_dropped: int
    fps_in: float
    fps_processed: float
    detect_fps: float | None = Field(None, description="analysed frames a second asked for (null: every frame)")
    frames_not_analysed: int = Field(0, description="frames skipped on purpose to keep detect_fps (not drops)")
    width: int
    height: int
    reconnects: int = 0
    retry_in_s: float | None = None
    offline_alert: bool = Field(False, description="true while this outage has raised camera_offline "
                                                   "(down longer than rtsp.offline_after_s)")
    detection_threshold: float | None = Field(None, description=(
        "the detector score threshold this camera's tracker follows: the running model's operating "
        "point (or FALLDET_SCORE_THRESHOLD); a model swap changes it for running cameras at once"))
    zones: list[dict] = Field(default_factory=list, description="bed and ignore zones (GET/PUT .../zones)")
    clip_buffer: dict | None = Field(None, description="fall clips' frame buffer: seconds, frames, bytes, "
                                     "capped (a memory cap keeps it shorter), recording; null: clips off")


class StreamList(BaseModel):
    items: list[StreamStatus]


def _not_found(stream_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no stream with id {stream_id!r}")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StreamStatus,
             responses={409: {"description": "a stream with this id exists"},
                        421: {"description": "the id belongs to another shard (pod)"},
                        422: {"description": "bad id or URL (only rtsp:// and rtsps://)"},
                        429: {"description": "max_streams reached"}})
def add_stream(body: StreamIn, streams: StreamsDep) -> dict:
    """Register a camera and start reading it; it is resumed after a restart."""
    try:
        return streams.add(body.id, body.url, body.detect_fps)
    except StreamError as exc:
        raise HTTPException(exc.status_code, detail=str(exc)) from None


@router.get("", response_model=StreamList)
def list_streams(streams: StreamsDep) -> dict:
    """Every camera of this service (of this pod's shard on Kubernetes)."""
    return {"items": streams.list()}


@router.get("/{stream_id}", response_model=StreamStatus, responses={404: {"description": "unknown id"}})
def get_stream(stream_id: StreamId, streams: StreamsDep) -> dict:
    found = streams.get(stream_id)
    if found is None:
        raise _not_found(stream_id)
    return found


@router.delete("/{stream_id}", response_model=StreamStatus, responses={404: {"description": "unknown id"}})
def remove_stream(stream_id: StreamId, streams: StreamsDep) -> dict:
    """Stop and forget a camera; open falls of it are cleared (`fall_cleared`, source_ended)."""
    final = streams.remove(stream_id)
    if final is None:
        raise _not_found(stream_id)
    return final


@router.get("/{stream_id}/timeline", responses={404: {"description": "unknown id"}})
def stream_timeline(stream_id: StreamId, streams: StreamsDep) -> dict:
    """Recent action segments per track of the camera (for the operator page)."""
    timeline = streams.timeline(stream_id)
    if timeline is None:
        raise _not_found(stream_id)
    return timeline


@router.get("/{stream_id}/preview.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}},
                             "description": "the latest processed frame; `X-Frame-Index` is its `frame`"},
                       404: {"description": "unknown id, or no processed frame yet"},
                       422: {"description": "max_width out of range"}})
def stream_preview(stream_id: StreamId, streams: StreamsDep,
                   max_width: Annotated[int, Query(ge=PREVIEW_MIN_WIDTH, le=PREVIEW_MAX_WIDTH,
                                                   description="scale down to at most this many pixels "
                                                               "wide (aspect kept; never scaled up)")]
                   = PREVIEW_DEFAULT_WIDTH) -> Response:
    """The camera's latest processed frame as a JPEG (encoded once per frame and width, shared by
    every viewer); header `X-Frame-Index` = that frame's index in the result lines."""
    got = streams.preview(stream_id, max_width)
    if got is None:
        reason = (f"no stream with id {stream_id!r}" if streams.get(stream_id) is None
                  else f"stream {stream_id!r} has no processed frame yet")
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=reason, headers={"Cache-Control": "no-store"})
    jpeg, index = got
    return Response(jpeg, media_type="image/jpeg",
                    headers={"X-Frame-Index": str(index), "Cache-Control": "no-store"})
