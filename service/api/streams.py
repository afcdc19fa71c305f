"""`/v1/streams`: register, list, inspect and remove RTSP cameras.

Refusals come from `StreamManager` as `StreamError`s carrying their HTTP code: 422 bad id or URL
(only rtsp:// and rtsps://), 409 duplicate id, 429 over `max_streams`, 421 a camera of another
shard. URLs are validated here rather than in the request model so that a rejected URL, which may
hold a password, is never echoed back in a validation error.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import StreamsDep, require_api_key
from service.sources.rtsp import MAX_URL_LENGTH
from service.streams import STREAM_ID, StreamError

router = APIRouter(prefix="/v1/streams", tags=["streams"], dependencies=[Depends(require_api_key)])

StreamId = Annotated[str, Path(description="the camera's id", max_length=64)]


class StreamIn(BaseModel):
    """A camera to register."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STREAM_ID.pattern, description="1-64 letters, digits, '_', '.', '-'; "
                                                           "names the camera in URLs and results")
    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH,
                     description="rtsp:// or rtsps:// URL; a password in it is masked in every answer")


class StreamStatus(BaseModel):
    """A camera's visible state (`state`: connecting, live, stalled, backoff, stopped)."""

    id: str
    url: str
    state: str
    last_error: str | None
    frames_received: int
    frames_processed: int
    frames_dropped: int
    fps_in: float
    fps_processed: float
    width: int
    height: int
    reconnects: int = 0
    retry_in_s: float | None = None


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
        return streams.add(body.id, body.url)
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
