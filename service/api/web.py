"""The operator page: `/` and its static files from `service/web/`.

The page itself needs no API key (it holds no data); it asks the operator for one and sends it on
every API call it makes. Only the files listed here are served, so nothing else in the package
folder can be read through this router.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# name -> media type; the only files this router will ever send
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    # the script: ES modules, app.js the entry point importing the others (relative URLs)
    "app.js": "text/javascript; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "cameras.js": "text/javascript; charset=utf-8",
    "timeline.js": "text/javascript; charset=utf-8",
    "alerts.js": "text/javascript; charset=utf-8",
    "alarm.js": "text/javascript; charset=utf-8",
    "zones.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# The page loads only its own files and talks only to its own origin (fetch and WebSocket).
_HEADERS = {
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgraded service serves the new page
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self' ws: wss:; media-src 'self' data: blob:; object-src 'none'; "
        "base-uri 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["web"], include_in_schema=False)


def _send(name: str) -> FileResponse:
    path = WEB_DIR / name
    if name not in STATIC_FILES or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no such file: {name}")
    return FileResponse(path, media_type=STATIC_FILES[name], headers=_HEADERS)


@router.get("/")
def operator_page() -> FileResponse:
    """The operator dashboard (no key needed: the page asks for one)."""
    return _send("index.html")


@router.get("/web/{name}")
def static_file(name: str) -> FileResponse:
    """One of the page's own files (script, style)."""
    return _send(name)
