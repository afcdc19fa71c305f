"""`python -m service watch [CAMERA]`: print a running service's live messages as NDJSON.

The project's own WebSocket client, so that following a camera needs nothing beyond the set-up:
`WS /v1/streams/{id}/ws` (frame results and alerts of one camera) or, without a camera,
`WS /v1/events` (alerts of every camera). The key goes in the `X-API-Key` header, never in the
URL. A refusal (close code 1008: key; 4404: camera) is printed with the server's reason.
"""
from __future__ import annotations

import sys
from typing import TextIO
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

REFUSALS = {1008: "the API key was refused", 4404: "no such camera"}


def ws_url(base: str, camera: str | None) -> str:
    """`http://host:8000` -> `ws://host:8000/v1/streams/<camera>/ws` (or `/v1/events`)."""
    parts = urlsplit(base if "://" in base else f"http://{base}")
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use http(s)://host:port")
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    path = f"/v1/streams/{quote(camera, safe='')}/ws" if camera else "/v1/events"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def watch(base: str, key: str, camera: str | None, out: TextIO = sys.stdout, limit: int | None = None) -> int:
    """Print messages until the server closes (or `limit` messages); 0 on a normal end, 2 on a refusal."""
    url = ws_url(base, camera)
    try:
        with connect(url, additional_headers={"X-API-Key": key}, max_size=1 << 22, open_timeout=10) as ws:
            count = 0
            for message in ws:
                out.write((message if isinstance(message, str) else message.decode()) + "\n")
                out.flush()
                count += 1
                if limit is not None and count >= limit:
                    return 0
    except ConnectionClosed as exc:
        return _closed(exc)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        print(f"error: cannot connect to {url}: {exc}", file=sys.stderr)
        return 2
    return 0


def _closed(exc: ConnectionClosed) -> int:
    close = exc.rcvd
    if close is None or close.code in (1000, 1001):
        return 0
    what = REFUSALS.get(close.code, "closed by the server")
    print(f"error: {what} (close code {close.code}: {close.reason or 'no reason'})", file=sys.stderr)
    return 2
