"""Reviews: an operator says whether a fall alert was a fall, a false alarm, or unsure; and marks a
camera's current view as "nobody fell here". Both become site training data (`review-export`).

Plain `def` handlers: the store fsyncs each review (it must survive a SIGKILL, like an ack), which
runs in the thread pool, never on the event loop.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path as FsPath
from typing import Annotated, Literal

import cv2
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from service.api.deps import SettingsDep, StoreDep, StreamsDep, require_api_key
from service.store import write_atomic

router = APIRouter(prefix="/v1", tags=["reviews"], dependencies=[Depends(require_api_key)])

NEGATIVES_DIR = "negatives"  # under STATE_DIR: the clean views, JPEG, mode 0600


class ReviewIn(BaseModel):
    """The verdict on a whole incident (every event of the same fall)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["fall", "false_alarm", "unsure"] = Field(description="fall: someone really fell; "
                                                                          "false_alarm: nobody fell; unsure")
    by: str = Field(min_length=1, max_length=100, description="who reviews (operator name)")
    comment: str | None = Field(None, max_length=1000, description="optional note (what it really was)")


class NegativeIn(BaseModel):
    """Who says that nobody fell in the camera's current view."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=100)
    comment: str | None = Field(None, max_length=1000)


@router.post("/alerts/{alert_id}/review", responses={404: {"description": "no such alert"}})
def review_alert(alert_id: Annotated[str, Path(max_length=64)], body: ReviewIn, store: StoreDep,
                 conn: HTTPConnection) -> dict:
    """Mark the alert's incident as `fall`, `false_alarm` or `unsure`; a later review replaces it.
    Returns the alert with its `review`."""
    alert = store.review(alert_id, body.verdict, body.by, body.comment)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert with id {alert_id!r}")
    delivery = getattr(conn.app.state, "delivery", None)
    if delivery is not None and hasattr(delivery, "notify"):
        delivery.notify()  # shared over MQTT with the other pods
    return alert


@router.get("/reviews")
def list_reviews(store: StoreDep,
                 verdict: Annotated[Literal["fall", "false_alarm", "unsure"] | None, Query()] = None,
                 source: Annotated[str | None, Query(max_length=256)] = None) -> dict:
    """Every review (oldest first) with its incident's alert, and the "nobody fell here" views."""
    return {"items": store.reviews(verdict=verdict, source=source),
            "negatives": [n for n in store.negatives(source) if verdict in (None, "false_alarm")]}


@router.post("/streams/{stream_id}/negative", status_code=201,
             responses={404: {"description": "no such camera"}, 409: {"description": "no frame yet"}})
def mark_negative(stream_id: Annotated[str, Path(max_length=256)], body: NegativeIn, store: StoreDep,
                  streams: StreamsDep, settings: SettingsDep, conn: HTTPConnection) -> dict:
    """"Nobody fell here": keep the camera's latest frame (as decoded, nothing drawn) as a hard
    negative. The people the model sees in it are kept as "person, not a fall" boxes."""
    if streams.get(stream_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no camera with id {stream_id!r}")
    frame = streams.last_frame(stream_id)
    if frame is None or frame.image is None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"camera {stream_id!r} has no processed frame yet")
    image = frame.image
    runtime = getattr(conn.app.state.worker, "runtime", None)
    persons = runtime.detect([image])[0] if runtime is not None else []
    boxes = [[round(float(v), 1) for v in p.box] for p in persons if getattr(p, "reported", True)]
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, detail="could not encode the frame")
    rel = f"{time.strftime('%Y%m%d', time.gmtime())}/{stream_id}-{uuid.uuid4().hex[:12]}.jpg"
    path = FsPath(settings.state_dir) / NEGATIVES_DIR / rel
    write_atomic(path, jpeg.tobytes())
    os.chmod(path, 0o600)  # a view of someone's room: owner only
    neg = store.add_negative(stream_id, rel, boxes, body.by, body.comment)
    neg["width"], neg["height"] = int(image.shape[1]), int(image.shape[0])
    return neg
