"""`POST /v1/detect`: one image in, one frame result out (no tracking: a single frame has no track).

The image comes as multipart field `file` or as a raw `image/*` body. Only JPEG, PNG, BMP, WebP and
TIFF are decoded (sniffed from the bytes, not trusted from the header): anything else is a 415, a
truncated or corrupt image a 400, both with the reason. Decoding runs off the event loop.
"""
from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import SettingsDep, WorkerDep, limited_request, read_file_field, require_api_key
from service.frames import Frame, FrameResult

router = APIRouter(prefix="/v1", tags=["detect"], dependencies=[Depends(require_api_key)])

SOURCE = "detect"

_binary = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": _binary, "image/png": _binary, "image/webp": _binary, "image/bmp": _binary}}}


class ImageError(ValueError):
    """Bytes that are not a usable image; `status_code` is 415 (not an image) or 400 (broken)."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The image format from its magic bytes, or None when it is none this service decodes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def decode_image(data: bytes) -> np.ndarray:
    """Decode to an HxWx3 BGR uint8 array, or raise ImageError with a reason a client can act on."""
    if not data:
        raise ImageError(status.HTTP_400_BAD_REQUEST, "empty body: send an image")
    kind = sniff_format(data)
    if kind is None:
        raise ImageError(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                         "not a supported image (JPEG, PNG, BMP, WebP or TIFF expected)")
    # JPEG: the end-of-image marker must follow the last start-of-scan (stuffed scan data never
    # contains FFD9), else the file was cut short.
    if kind == "jpeg" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageError(status.HTTP_400_BAD_REQUEST, "truncated JPEG: no end-of-image marker")
    if kind == "png" and b"IEND" not in data[-64:]:
        raise ImageError(status.HTTP_400_BAD_REQUEST, "truncated PNG: no IEND chunk")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(status.HTTP_400_BAD_REQUEST, f"the {kind.upper()} data is corrupt or truncated")
    return image


async def read_image_bytes(request: Request, max_bytes: int) -> bytes:
    """The uploaded image's bytes from multipart `file` or a raw body, within the size limit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limited = limited_request(request, max_bytes)
    if content_type == "multipart/form-data":
        upload = await read_file_field(limited)
        try:
            return await upload.read()
        finally:
            await upload.close()
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        chunks = [chunk async for chunk in limited.stream()]
        return b"".join(chunks)
    raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                        detail="send the image as multipart field 'file' or as a raw image/* body")


@router.post("/detect", openapi_extra=IMAGE_BODY, responses={
    400: {"description": "empty, truncated or corrupt image"}, 401: {"description": "no valid API key"},
    413: {"description": "larger than FALLDET_MAX_UPLOAD_MB"}, 415: {"description": "not an image"}})
async def detect(request: Request, settings: SettingsDep, worker: WorkerDep) -> dict:
    """Persons in one image with their actions; the `"type": "frame"` result of DESIGN.md."""
    data = await read_image_bytes(request, settings.max_upload_bytes)
    try:
        image = await run_in_threadpool(decode_image, data)
    except ImageError as exc:
        raise HTTPException(exc.status_code, detail=exc.reason) from None
    frame = Frame(source=SOURCE, index=0, pts_s=0.0, captured_at=time.time(), image=image)
    try:
        pending = worker.submit(frame, live=False)
    except RuntimeError:  # the worker is stopped (shutting down)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="shutting down") from None
    persons = await asyncio.wrap_future(pending)
    result = FrameResult(source=SOURCE, frame=0, pts_s=0.0, captured_at=frame.captured_at,
                         latency_ms=(time.time() - frame.captured_at) * 1000.0, dropped=0,
                         persons=persons, width=image.shape[1], height=image.shape[0])
    return result.to_json()
