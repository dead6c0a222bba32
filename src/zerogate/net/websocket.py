"""WebSocket plumbing every upstream shares: refusing a client, and which close codes may travel.

A client whose WebSocket cannot be relayed (the origin or the connector refused it, or could
not be reached) is **refused before it is accepted**: with the server's
``websocket.http.response`` extension it gets the HTTP error itself (status, headers and body
the upstream chose); without it the session is closed before ``websocket.accept``, which an
ASGI server answers with ``403``. It is never accepted and then closed (a client would see a
session that opened), so every upstream answers the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from zerogate.net.asgi import Headers, Message, Receive, Scope, Send

T = TypeVar("T")
U = TypeVar("U")

#: the longest close reason (RFC 6455 §5.5: a control frame's payload is at most 125 bytes)
MAX_REASON_BYTES = 123


def sendable_close_code(code: object, fallback: int) -> int:
    """A close code that may appear in a close frame (RFC 6455 §7.4), else ``fallback``."""
    if isinstance(code, int) and (
        1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    ):
        return code
    return fallback


def client_close(message: Message) -> tuple[int, str]:
    """The close code and reason to pass on from an ASGI ``websocket.disconnect``: 1005 (no
    code) becomes 1000, anything else unsendable 1001 (the client vanished); the reason is cut
    to what a close frame holds, never in the middle of a character."""
    code = message.get("code", 1005)
    reason = str(message.get("reason") or "")
    cut = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore")
    return sendable_close_code(code, 1000 if code == 1005 else 1001), cut


async def reject(scope: Scope, send: Send, status: int, headers: Headers, body: bytes) -> None:
    """Refuse a WebSocket that was not accepted (see the module docstring)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
        return
    await send({"type": "websocket.close", "code": 1011})


async def both_ways(
    client_to_upstream: Coroutine[Any, Any, T], upstream_to_client: Coroutine[Any, Any, U]
) -> tuple[Ended[T], Ended[U]]:
    """Run the two directions of a WebSocket relay until either ends, then stop the other
    (cancel, and wait for it). For each direction: whether it finished by itself (not
    cancelled, not failed) and its result — what the caller needs to pick the close code it
    sends (every upstream's relay ends through here)."""
    forward = asyncio.ensure_future(client_to_upstream)
    backward = asyncio.ensure_future(upstream_to_client)
    try:
        done, _ = await asyncio.wait({forward, backward}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (forward, backward):
            task.cancel()
        await asyncio.gather(forward, backward, return_exceptions=True)
    return _ended(forward, done), _ended(backward, done)


@dataclass(frozen=True, slots=True)
class Ended(Generic[T]):
    """How one direction of a relay ended: ``ok`` when it finished by itself."""

    ok: bool
    value: T | None = None


def _ended(task: asyncio.Future[T], done: set[Any]) -> Ended[T]:
    if task in done and not task.cancelled() and task.exception() is None:
        return Ended(True, task.result())
    return Ended(False)


async def relay_aiohttp(ws: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send) -> None:
    """Relay an accepted ASGI WebSocket and an aiohttp client WebSocket (an origin's, or
    another edge's) both ways until either side closes; the other side gets the close code
    and reason (a code that may not travel becomes 1011)."""

    async def client_to_upstream() -> tuple[int, str]:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    await ws.send_str(text)
                else:
                    await ws.send_bytes(message.get("bytes") or b"")
            elif kind == "websocket.disconnect":
                return client_close(message)

    async def upstream_to_client() -> tuple[int, str]:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": msg.data})
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": msg.data})
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                return sendable_close_code(msg.data, 1000), str(msg.extra or "")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return 1011, ""
            else:  # CLOSING / CLOSED: the upstream went away without a close frame
                return sendable_close_code(ws.close_code, 1011), ""

    client, upstream = await both_ways(client_to_upstream(), upstream_to_client())
    if client.ok and client.value is not None:
        code, reason = client.value
        await ws.close(code=code, message=reason.encode())
        return
    code, reason = upstream.value if upstream.ok and upstream.value is not None else (1011, "")
    await send({"type": "websocket.close", "code": code, "reason": reason})
