"""`/v1/streams/{id}/zones`: read and replace a camera's bed and ignore zones (service/zones.py).

A PUT is checked twice: the body's shape by its model (types, 0 <= x, y <= 1, counts and lengths:
FastAPI's 422 with the field's location), then the geometry by `parse_zones` (a closed polygon
whose edges do not cross, unique names, not a stray click: 422 whose `detail` names the zone and
what is wrong). The zones are then saved with the camera in the streams file and applied to the
running camera from its next frame, without a reconnect.
"""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from service.api.deps import StreamsDep, require_api_key
from service.zones import MAX_NAME, MAX_POINTS, MAX_ZONES, ZoneError, parse_zones

router = APIRouter(prefix="/v1/streams", tags=["zones"], dependencies=[Depends(require_api_key)])

StreamId = Annotated[str, Path(description="the camera's id", max_length=64)]
Coordinate = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ZoneIn(BaseModel):
    """A named polygon in normalised picture coordinates (x right, y down, both 0..1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME, description="unique per camera, e.g. 'bed 1'")
    kind: Literal["bed", "ignore"] = Field(description="bed: a person lying in it is not a fall; "
                                                       "ignore: detections there are dropped")
    points: list[tuple[Coordinate, Coordinate]] = Field(
        min_length=3, max_length=MAX_POINTS + 1,
        description=f"3-{MAX_POINTS} [x, y] points of a closed outline (the last joins the first; "
                    "repeating the first point at the end is allowed)")


class Zones(BaseModel):
    """A camera's zones (the whole list: a PUT replaces it; `[]` removes all)."""

    model_config = ConfigDict(extra="forbid")

    zones: list[ZoneIn] = Field(max_length=MAX_ZONES, description=f"at most {MAX_ZONES}")


def _not_found(stream_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no stream with id {stream_id!r}")


@router.get("/{stream_id}/zones", response_model=Zones, responses={404: {"description": "unknown id"}})
def get_zones(stream_id: StreamId, streams: StreamsDep) -> dict:
    """The camera's zones."""
    zones = streams.zones(stream_id)
    if zones is None:
        raise _not_found(stream_id)
    return {"zones": zones}


@router.put("/{stream_id}/zones", response_model=Zones,
            responses={404: {"description": "unknown id"},
                       422: {"description": "a bad zone list; `detail` says which zone and what is wrong"}})
def put_zones(stream_id: StreamId, body: Zones, streams: StreamsDep) -> dict:
    """Replace the camera's zones: saved with the camera and applied from its next frame."""
    try:
        zones = parse_zones([z.model_dump() for z in body.zones])
    except ZoneError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    saved = streams.set_zones(stream_id, zones)
    if saved is None:
        raise _not_found(stream_id)
    return {"zones": saved}
