"""WebSockets: `/v1/streams/{id}/ws` (frame results and alerts of one camera) and `/v1/events`
(alerts of every camera, this pod's and, through the broker, other pods').

The API key comes as the `X-API-Key` header or `?api_key=` (browsers cannot set WebSocket headers).
Each client reads from its own bounded mailbox on the bus: a slow client loses its own oldest
messages and never holds up the pipeline or other clients.
"""
from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket, WebSocketException

from service.api.deps import ApiKey, BusDep, StreamsDep
from service.bus import EventBus, Subscription

router = APIRouter(tags=["websocket"])

WS_UNKNOWN_STREAM = 4404


@router.websocket("/v1/streams/{stream_id}/ws")
async def stream_ws(websocket: WebSocket, stream_id: str, _: ApiKey, bus: BusDep, streams: StreamsDep) -> None:
    """Frame results (`"type": "frame"`) and alert messages of one registered camera."""
    if streams.get(stream_id) is None:
        raise WebSocketException(code=WS_UNKNOWN_STREAM, reason=f"no stream '{stream_id}'")
    await _serve(websocket, bus, stream_id)


@router.websocket("/v1/events")
async def events_ws(websocket: WebSocket, _: ApiKey, bus: BusDep) -> None:
    """Alert messages (fall_alert, still_down, fall_cleared) of every source."""
    await _serve(websocket, bus, None)


async def _serve(websocket: WebSocket, bus: EventBus, source: str | None) -> None:
    await websocket.accept()
    sub = bus.subscribe(source)
    try:
        await _pump(websocket, sub)
    finally:
        bus.unsubscribe(sub)


async def _pump(websocket: WebSocket, sub: Subscription) -> None:
    """Send the mailbox on a task until the client leaves; what the client sends is read and ignored."""

    async def send() -> None:
        while True:
            message = await sub.get()
            await websocket.send_text(json.dumps(message, separators=(",", ":")))

    sender = asyncio.create_task(send())
    sender.add_done_callback(_collect)
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    finally:
        sender.cancel()


def _collect(task: asyncio.Task) -> None:
    """Retrieve the sender's error (a client that vanished mid-send): nothing to report."""
    if not task.cancelled():
        task.exception()
