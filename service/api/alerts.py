"""`/v1/alerts`: the alert history (filters, paging), one alert, its snapshot, acknowledgement.

Reads and writes go straight to the alert store (`service/store.py`); the handlers are plain `def`
so that SQLite's fsync on an ack runs in the thread pool, never on the event loop.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.deps import StoreDep, require_api_key

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], dependencies=[Depends(require_api_key)])

AlertId = Annotated[str, Path(description="the event id (uuid4 hex)", max_length=64)]


class Ack(BaseModel):
    by: str
    at: float = Field(description="unix seconds")
    comment: str | None


class Alert(BaseModel):
    """An event of a fall lifecycle as stored (docs/alerts.md), with its acknowledgement."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["fall_alert", "still_down", "fall_cleared", "camera_offline", "camera_online"]
    source: str
    track_id: int | None = None
    at: float = Field(description="wall clock of the event's frame, unix seconds")
    acked: bool
    ack: Ack | None
    snapshot_url: str | None = Field(description="null when the event has no snapshot or it was pruned")
    clip_url: str | None = Field(None, description="the fall's MP4 once written (fall_alert only)")
    clip_status: Literal["pending", "ready", "failed", "pruned", "none"] | None = Field(
        None, description="fall_alert only: pending (being recorded or written), ready (clip_url), failed "
                          "or none (clip_error says why), pruned (by retention); null for other types")
    clip_error: str | None = Field(None, description="why there is no clip (failed, none)")
    origin: str | None = Field(None, description="null: raised by this pod; else the pod that raised it")


class AlertPage(BaseModel):
    items: list[Alert]
    total: int = Field(description="alerts matching the filters")
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class AckIn(BaseModel):
    """Who acknowledges, and optionally why."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(min_length=1, max_length=100, description="who acknowledges (operator name)")
    comment: str | None = Field(None, max_length=1000, description="optional note")


class AckManyIn(AckIn):
    """Who acknowledges, and which alerts: a selection (`ids`) or every open alert of a camera (`source`)."""

    ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, min_length=1, max_length=500, description="the alerts to acknowledge (each with its whole fall)")
    source: str | None = Field(None, min_length=1, max_length=256,
                               description="acknowledge every open alert of this camera")

    @model_validator(mode="after")
    def _one_selection(self) -> "AckManyIn":
        if (self.ids is None) == (self.source is None):
            raise ValueError("give either 'ids' (a selection) or 'source' (every open alert of a camera)")
        return self


class AckManyOut(BaseModel):
    acked: list[Alert] = Field(description="the alerts acknowledged (by this call or already before)")
    unknown: list[str] = Field(description="ids with no alert")


def _unix(value: datetime | None) -> float | None:
    """Query times: ISO 8601 or unix seconds; a time without zone is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _not_found(alert_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert with id {alert_id!r}")


@router.get("", response_model=AlertPage)
def list_alerts(
    store: StoreDep,
    source: Annotated[str | None, Query(max_length=256, description="only this camera or upload")] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601 or unix seconds)")] = None,
    until: Annotated[datetime | None, Query(description="at or before (ISO 8601 or unix seconds)")] = None,
    state: Annotated[Literal["open", "acked", "all"], Query(description="open: not acknowledged")] = "all",
    type: Annotated[Literal["fall_alert", "still_down", "fall_cleared", "camera_offline", "camera_online"] | None,
                    Query(description="only this event type")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict:
    """Newest first."""
    lo, hi = _unix(since), _unix(until)
    if lo is not None and hi is not None and lo > hi:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="'since' is after 'until'")
    return store.list(source=source, since=lo, until=hi, state=state, limit=limit, offset=offset, type=type)


@router.post("/ack", response_model=AckManyOut)
def ack_many(body: AckManyIn, store: StoreDep) -> dict:
    """Acknowledge many at once: `{"by", "ids": [...]}` or `{"by", "source": "cam1"}` (every open
    alert of that camera). Each acknowledgement is the same as `POST /v1/alerts/{id}/ack`'s."""
    return store.ack_many(body.by, body.comment, ids=body.ids, source=body.source)


@router.get("/{alert_id}", response_model=Alert)
def get_alert(alert_id: AlertId, store: StoreDep) -> dict:
    """One alert, with `deliveries`: attempts and outcome per MQTT / webhook channel."""
    alert = store.get(alert_id)
    if alert is None:
        raise _not_found(alert_id)
    alert["deliveries"] = store.deliveries(alert_id)
    return alert


@router.get("/{alert_id}/snapshot.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such alert or snapshot"}})
def get_snapshot(alert_id: AlertId, store: StoreDep) -> Response:
    """The JPEG taken when the event was raised (the person's box drawn on it)."""
    path = store.snapshot_path(alert_id)
    if path is None:
        if store.get(alert_id) is None:
            raise _not_found(alert_id)
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"alert {alert_id!r} has no snapshot "
                                                              "(none taken, or pruned by retention)")
    try:
        jpeg = path.read_bytes()  # small; read now so a prune in between is a 404, not a broken reply
    except FileNotFoundError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"alert {alert_id!r} has no snapshot "
                                                              "(pruned by retention)") from None
    return Response(jpeg, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"})


@router.post("/{alert_id}/ack", response_model=Alert)
def ack_alert(alert_id: AlertId, body: AckIn, store: StoreDep) -> dict:
    """Acknowledge once; acknowledging again returns the first acknowledgement unchanged."""
    alert = store.ack(alert_id, by=body.by, comment=body.comment)
    if alert is None:
        raise _not_found(alert_id)
    return alert
