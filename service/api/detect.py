"""`POST /v1/detect`: one image in, one frame result out (no tracking: a single frame has no track).

The image comes as multipart field `file` or as a raw `image/*` body. Only JPEG, PNG, BMP, WebP and
TIFF are decoded (sniffed from the bytes, not trusted from the header): anything else is a 415, a
truncated or corrupt image a 400, both with the reason. Decoding runs off the event loop.

The width and height are read from the format's header before decoding, and an image of more than
`FALLDET_MAX_IMAGE_PIXELS` is a 413: a few KiB of PNG can declare 30000 x 30000 pixels and would
decode to gigabytes (a decompression bomb).
"""
from __future__ import annotations

import asyncio
import struct
import time

import cv2
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import SettingsDep, WorkerDep, empty_upload, limited_request, read_file_field, require_api_key
from service.frames import Frame, FrameResult

router = APIRouter(prefix="/v1", tags=["detect"], dependencies=[Depends(require_api_key)])

SOURCE = "detect"

_binary = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": _binary, "image/png": _binary, "image/webp": _binary, "image/bmp": _binary}}}


class ImageError(ValueError):
    """Bytes that are not a usable image; `status_code` is 415 (not an image), 413 (too many pixels)
    or 400 (broken)."""

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


def _png_size(data: bytes) -> tuple[int, int] | None:
    """IHDR must be the first chunk: width and height at bytes 16-24, big-endian."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first frame header (SOF0-SOF15 but DHT, JPG, DAC)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if length < 2:
            return None
        i += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    """BITMAPCOREHEADER (12 bytes) has 16-bit sizes, later headers signed 32-bit (height < 0: top-down)."""
    if len(data) < 26:
        return None
    if struct.unpack("<I", data[14:18])[0] == 12:
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The first chunk: VP8X canvas, VP8L (lossless) or VP8 (lossy) key frame header."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD, the page OpenCV decodes."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    found: dict[int, int] = {}
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            return None
        tag, kind = struct.unpack(order + "HH", data[at:at + 4])
        if tag in (256, 257):
            if kind == 3:
                found[tag] = struct.unpack(order + "H", data[at + 8:at + 10])[0]
            elif kind == 4:
                found[tag] = struct.unpack(order + "I", data[at + 8:at + 12])[0]
            else:
                return None
    return (found[256], found[257]) if len(found) == 2 else None


_SIZE_READERS = {"png": _png_size, "jpeg": _jpeg_size, "bmp": _bmp_size, "webp": _webp_size,
                 "tiff": _tiff_size}


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) the header of a `kind` image declares, without decoding; None if unreadable."""
    try:
        return _SIZE_READERS[kind](data)
    except (struct.error, IndexError, KeyError):
        return None


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode to an HxWx3 BGR uint8 array, or raise ImageError with a reason a client can act on.

    With `max_pixels`, the size declared in the header is checked before any pixel is decoded.
    """
    if not data:
        raise ImageError(status.HTTP_400_BAD_REQUEST, empty_upload("an image"))
    kind = sniff_format(data)
    if kind is None:
        raise ImageError(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                         "not a supported image (JPEG, PNG, BMP, WebP or TIFF expected)")
    size = image_size(data, kind)
    if size is None:
        raise ImageError(status.HTTP_400_BAD_REQUEST, f"the {kind.upper()} header is corrupt: no image size")
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(status.HTTP_400_BAD_REQUEST, f"the {kind.upper()} header declares {width} x {height} "
                                                      "pixels: an image needs at least 1 x 1")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(status.HTTP_413_CONTENT_TOO_LARGE,
                         f"the image is {width} x {height} = {width * height} pixels, more than the "
                         f"{max_pixels} allowed (FALLDET_MAX_IMAGE_PIXELS)")
    # JPEG: the end-of-image marker must follow the last start-of-scan (stuffed scan data never
    # contains FFD9), else the file was cut short.
    if kind == "jpeg" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageError(status.HTTP_400_BAD_REQUEST, "truncated JPEG: no end-of-image marker")
    # PNG: an IEND chunk must follow the last IDAT; bytes after IEND (trailers some tools append)
    # are allowed.
    if kind == "png" and not data.rfind(b"IEND") > data.rfind(b"IDAT"):
        raise ImageError(status.HTTP_400_BAD_REQUEST, "truncated PNG: no IEND chunk after the image data")
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
    413: {"description": "larger than FALLDET_MAX_UPLOAD_MB or FALLDET_MAX_IMAGE_PIXELS"},
    415: {"description": "not an image"}})
async def detect(request: Request, settings: SettingsDep, worker: WorkerDep) -> dict:
    """Persons in one image with their actions; the `"type": "frame"` result (docs/service.md)."""
    data = await read_image_bytes(request, settings.max_upload_bytes)
    try:
        image = await run_in_threadpool(decode_image, data, settings.max_image_pixels)
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
