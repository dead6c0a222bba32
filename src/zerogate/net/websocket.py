"""WebSocket plumbing every upstream shares: refusing a client, and which close codes may travel.

A client whose WebSocket cannot be relayed (the origin or the connector refused it, or could
not be reached) is **refused before it is accepted**: with the server's
``websocket.http.response`` extension it gets the HTTP error itself (status, headers and body
the upstream chose); without it the session is closed before ``websocket.accept``, which an
ASGI server answers with ``403``. It is never accepted and then closed (a client would see a
session that opened), so every upstream answers the same way.
"""

from __future__ import annotations

from zerogate.net.asgi import Headers, Message, Scope, Send

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
