"""Fall clips: `GET /v1/alerts/{id}/clip.mp4` (a camera's alert, once its clip is written) and
`GET /v1/videos/clips/{name}` (clips of an analysed upload, named in its `clip` lines).

Served as files with HTTP Range support (`Accept-Ranges: bytes`; `Range: bytes=a-b` -> 206 with
those bytes, an unsatisfiable range -> 416), so a browser's video element can seek without
downloading the whole clip.
"""
from __future__ import annotations

import re
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import FileResponse

from service.api.deps import StoreDep, require_api_key

router = APIRouter(tags=["clips"], dependencies=[Depends(require_api_key)])

UPLOAD_CLIP = re.compile(r"^upload-[0-9a-f]{12}-[0-9a-f]{32}\.mp4$")
MP4 = {200: {"content": {"video/mp4": {}}, "description": "the clip (Range requests: 206)"},
       206: {"description": "the requested byte range"}, 416: {"description": "range not satisfiable"}}


def _file(path: FsPath) -> FileResponse:
    return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/v1/alerts/{alert_id}/clip.mp4", response_class=FileResponse,
            responses={**MP4, 404: {"description": "no such alert, or no clip (not written yet, none, pruned)"}})
def get_alert_clip(alert_id: Annotated[str, Path(max_length=64)], store: StoreDep) -> FileResponse:
    """The MP4 of a fall: `clips.pre_s` before its onset to `clips.post_s` after the alert, the
    person's box drawn. The alert's `clip_url` points here once the clip is written."""
    path = store.clip_path(alert_id)
    if path is None:
        alert = store.get(alert_id)
        if alert is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no alert with id {alert_id!r}")
        status_ = alert.get("clip_status")
        if alert.get("type") != "fall_alert":
            why = "clips are made of fall_alert events only"
        elif status_ == "pending":
            why = "not written yet (it ends clips.post_s after the alert)"
        elif status_ == "pruned":
            why = "pruned by retention"
        elif alert.get("clip_error"):
            why = f"none was made: {alert['clip_error']}"
        else:
            why = "not written yet, not made, or pruned by retention"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"alert {alert_id!r} has no clip: {why}")
    return _file(path)


@router.get("/v1/videos/clips/{name}", response_class=FileResponse,
            responses={**MP4, 404: {"description": "no such clip (or removed after clips' retention)"}})
def get_upload_clip(name: Annotated[str, Path(max_length=80)], request: Request) -> FileResponse:
    """A clip of an analysed upload (`POST /v1/videos?clips=true`), as named in its `clip` line."""
    clips = getattr(request.app.state, "clips", None)
    path = clips.uploads / name if clips is not None and UPLOAD_CLIP.match(name) else None
    if path is None or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no upload clip {name!r}")
    return _file(path)
