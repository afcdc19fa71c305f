"""Dependencies shared by the routers: the API key check and the app's collaborators.

Collaborators live on `app.state` (put there by `service.app.create_app`), so a test builds an app
with its own settings, fakes or temp folders and every route sees those, with no global to patch.
"""
from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, WebSocket, WebSocketException, status
from fastapi.security import APIKeyHeader, APIKeyQuery
from starlette.datastructures import UploadFile
from starlette.requests import HTTPConnection
from starlette.types import Message

from service.bus import EventBus
from service.runtime import Runtime
from service.settings import Settings
from service.store import AlertStore
from service.streams import StreamManager
from service.worker import InferenceWorker

API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"
# Browsers cannot set headers on a WebSocket, but they can offer subprotocols: the page offers
# `falldet` and `falldet.key.<base64url of the key>`, so the key stays out of the URL (and out of
# every access log and proxy log); the server answers with `falldet`.
WS_SUBPROTOCOL = "falldet"
WS_KEY_PREFIX = "falldet.key."

_header_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="One of FALLDET_API_KEYS (printed at start when unset)")
_query_scheme = APIKeyQuery(name=API_KEY_QUERY, auto_error=False,
                            description="The API key as a query parameter (WebSockets, Prometheus)")


def _valid(conn: HTTPConnection, key: str | None) -> bool:
    """Constant-time comparison against every configured key."""
    if not key:
        return False
    given = key.encode()
    return any(secrets.compare_digest(given, k.encode()) for k in conn.app.state.api_keys)


def _refuse(conn: HTTPConnection, key: str | None) -> None:
    reason = "invalid API key" if key else f"missing API key (send the {API_KEY_HEADER} header)"
    if conn.scope["type"] == "websocket":
        if not key:
            reason = f"missing API key ({API_KEY_HEADER} header or {WS_KEY_PREFIX}<base64url> subprotocol)"
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=reason)
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": "APIKey"})


def require_api_key(conn: HTTPConnection, header: Annotated[str | None, Security(_header_scheme)] = None) -> str:
    """The `X-API-Key` header (WebSockets use `require_ws_api_key`)."""
    key = header
    if key is None and conn.scope["type"] == "websocket":
        key = websocket_key(conn)
    if not _valid(conn, key):
        _refuse(conn, key)
    return key  # type: ignore[return-value]


def require_admin_key(conn: HTTPConnection, header: Annotated[str | None, Security(_header_scheme)] = None) -> str:
    """An admin key (`FALLDET_ADMIN_KEYS`) in `X-API-Key`: 401 without a valid key, 403 for an
    ordinary key (it may read the model, not change it) or when no admin key is configured."""
    admin = getattr(conn.app.state, "admin_keys", [])
    given = (header or "").encode()
    if header and any(secrets.compare_digest(given, k.encode()) for k in admin):
        return header
    if not _valid(conn, header):
        _refuse(conn, header)
    detail = ("this needs an admin key (FALLDET_ADMIN_KEYS); an ordinary API key can read the model, not change it"
              if admin else "model changes are off: no admin key is configured (set FALLDET_ADMIN_KEYS)")
    raise HTTPException(status.HTTP_403_FORBIDDEN, detail=detail)


def websocket_key(conn: HTTPConnection) -> str | None:
    """A WebSocket's key: the header, else the `falldet.key.` subprotocol, else `?api_key=`."""
    key = conn.headers.get(API_KEY_HEADER)
    if key is not None:
        return key
    for offered in conn.scope.get("subprotocols") or ():
        if offered.startswith(WS_KEY_PREFIX):
            encoded = offered.removeprefix(WS_KEY_PREFIX)
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return ""  # offered but unreadable: refused as an invalid key
    return conn.query_params.get(API_KEY_QUERY)


async def accept_websocket(websocket: WebSocket) -> None:
    """Accept, naming our subprotocol when the client offered it (a browser that offered
    subprotocols drops a connection whose answer names none)."""
    offered = websocket.scope.get("subprotocols") or ()
    await websocket.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)


async def require_ws_api_key(websocket: WebSocket) -> str:
    """The key of a WebSocket, or a refusal the client can read: the handshake is accepted, then
    closed with 1008 and the reason (a refused handshake reaches clients as a bare HTTP 403)."""
    key = websocket_key(websocket)
    if not _valid(websocket, key):
        await accept_websocket(websocket)
        _refuse(websocket, key)
    return key  # type: ignore[return-value]


def require_api_key_or_query(conn: HTTPConnection,
                             header: Annotated[str | None, Security(_header_scheme)] = None,
                             query: Annotated[str | None, Security(_query_scheme)] = None) -> str:
    """Header or `?api_key=`, for clients that cannot set headers on plain HTTP (scrapers)."""
    key = header if header is not None else query
    if not _valid(conn, key):
        _refuse(conn, key)
    return key  # type: ignore[return-value]


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


def get_runtime(conn: HTTPConnection) -> Runtime:
    return conn.app.state.runtime


def get_worker(conn: HTTPConnection) -> InferenceWorker:
    return conn.app.state.worker


def get_store(conn: HTTPConnection) -> AlertStore:
    return conn.app.state.store


def get_bus(conn: HTTPConnection) -> EventBus:
    return conn.app.state.bus


def get_streams(conn: HTTPConnection) -> StreamManager:
    return conn.app.state.streams


ApiKey = Annotated[str, Depends(require_api_key)]
AdminKey = Annotated[str, Depends(require_admin_key)]
WsApiKey = Annotated[str, Depends(require_ws_api_key)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
WorkerDep = Annotated[InferenceWorker, Depends(get_worker)]
StoreDep = Annotated[AlertStore, Depends(get_store)]
BusDep = Annotated[EventBus, Depends(get_bus)]
StreamsDep = Annotated[StreamManager, Depends(get_streams)]


# -- upload limits ---------------------------------------------------------------------------------
def limited_request(request: Request, max_bytes: int) -> Request:
    """A view of `request` whose body raises 413 past `max_bytes` (declared length or bytes read).

    Routes that take uploads parse the body through this view instead of FastAPI's `File()`, which
    would read the whole upload before any limit could apply.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large(max_bytes)
        return message

    return Request(request.scope, receive)


def too_large(max_bytes: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                         detail=f"upload larger than the limit of {max_bytes / 2**20:g} MiB (FALLDET_MAX_UPLOAD_MB)")


def empty_upload(what: str) -> str:
    """The one answer (400) to an upload with no bytes, for images and videos alike (issue 25 item 4)."""
    return f"empty upload: the file has no bytes (send {what})"


async def read_file_field(request: Request, field: str = "file") -> UploadFile:
    """The multipart upload in `field`, spooled to a temporary file by Starlette (caller closes it)."""
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get(field)
    if not isinstance(upload, UploadFile):
        await form.close()
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"multipart field '{field}' with a file is required")
    return upload
