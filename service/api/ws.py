"""WebSockets: `/v1/streams/{id}/ws` (frame results and alerts of one camera) and `/v1/events`
(alerts of every camera, this pod's and, through the broker, other pods').

The API key comes as the `X-API-Key` header, or (browsers cannot set WebSocket headers) as the
subprotocol `falldet.key.<base64url of the key>` offered beside `falldet`, or as `?api_key=`
(kept out of the logs, but a URL is seen by proxies: prefer the subprotocol).
Each client reads from its own bounded mailbox on the bus: a slow client loses its own oldest
messages and never holds up the pipeline or other clients.

Refusals are made after the handshake, so that every client can read them (a refused handshake is a
bare HTTP 403 on a real server): close code 1008 with `missing API key ...` / `invalid API key`,
4404 `no stream 'x'` for an unknown camera, and 4404 `stream removed` when the camera is deleted
while the client listens (after its final events).
"""
from __future__ import annotations

import asyncio
import json
from typing import Callable

from fastapi import APIRouter, WebSocket, WebSocketException

from service.api.deps import BusDep, StreamsDep, WsApiKey, accept_websocket
from service.bus import EventBus, Subscription, SubscriptionClosed
from service.streams import WS_STREAM_REMOVED

router = APIRouter(tags=["websocket"])

WS_UNKNOWN_STREAM = WS_STREAM_REMOVED  # 4404, one code for "no such camera (any more)"


@router.websocket("/v1/streams/{stream_id}/ws")
async def stream_ws(websocket: WebSocket, stream_id: str, _: WsApiKey, bus: BusDep, streams: StreamsDep) -> None:
    """Frame results (`"type": "frame"`) and alert messages of one registered camera."""
    if streams.get(stream_id) is None:
        await accept_websocket(websocket)
        raise WebSocketException(code=WS_UNKNOWN_STREAM, reason=f"no stream '{stream_id}'"[:120])
    await _serve(websocket, bus, stream_id, lambda: streams.get(stream_id) is not None)


@router.websocket("/v1/events")
async def events_ws(websocket: WebSocket, _: WsApiKey, bus: BusDep) -> None:
    """Alert messages (fall_alert, still_down, fall_cleared) of every source."""
    await _serve(websocket, bus, None)


async def _serve(websocket: WebSocket, bus: EventBus, source: str | None,
                 exists: Callable[[], bool] | None = None) -> None:
    await accept_websocket(websocket)
    sub = bus.subscribe(source)
    try:
        if exists is not None and not exists():  # removed between the check and the subscription
            await websocket.close(WS_STREAM_REMOVED, "stream removed")
            return
        await _pump(websocket, sub)
    finally:
        bus.unsubscribe(sub)


async def _pump(websocket: WebSocket, sub: Subscription) -> None:
    """Send the mailbox on a task until the client leaves or the subscription is closed (the camera
    was removed: the socket is closed with the subscription's code); what the client sends is read
    and ignored."""

    async def send() -> None:
        while True:
            message = await sub.get()
            await websocket.send_text(json.dumps(message, separators=(",", ":")))

    async def receive() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    sender = asyncio.create_task(send())
    receiver = asyncio.create_task(receive())
    sender.add_done_callback(_collect)
    receiver.add_done_callback(_collect)
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not sender.cancelled() and isinstance(sender.exception(), SubscriptionClosed):
            receiver.cancel()
            closed = sender.exception()
            try:
                await websocket.close(closed.code, closed.reason)
            except Exception:  # the client left at the same moment
                pass
    finally:
        sender.cancel()
        receiver.cancel()


def _collect(task: asyncio.Task) -> None:
    """Retrieve a task's error (a client that vanished mid-send, a closed subscription): nothing to
    report."""
    if not task.cancelled():
        task.exception()
