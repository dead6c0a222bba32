"""The plain-HTTP listener of ``listen.tls.acme`` (``acme.http``, port 80 by default).

It answers exactly two things and proxies nothing:

- ``GET /.well-known/acme-challenge/TOKEN`` with the key authorization, only while an order
  waits for that token **for that Host** (else 404): the path is no way around the edge, as no
  request here ever reaches an origin, the portal or the admin;
- any other request for one of this server's hostnames: a 308 redirect to the same path on
  https (the port of ``listen.http`` unless it is 443). Unknown hosts get 404, malformed
  requests 400; one request per connection, a head of at most 8 KiB within 10 seconds, at most
  :data:`MAX_CONNECTIONS` connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket

from zerogate.autotls.manager import CertManager, acme_hostname

log = logging.getLogger("zerogate.autotls")

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
#: an ACME token: base64url (RFC 8555 §8.1), at least 128 bits
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,128}")
_TARGET = re.compile(r"/[\x21-\x7e]*")
MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0
#: connections served at once per worker; more are closed at once (a CA's validation is a
#: handful of requests; nothing here is worth holding sockets for)
MAX_CONNECTIONS = 256


def _reply(status: int, reason: str, body: bytes = b"", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
        f"content-length: {len(body)}\r\ncache-control: no-store\r\n{extra}"
        "connection: close\r\n\r\n"
    ).encode("latin-1") + body


BAD_REQUEST = _reply(400, "Bad Request", b"bad request\n")
NOT_FOUND = _reply(404, "Not Found", b"not found\n")


class ChallengeListener:
    """Serves the HTTP-01 port of one worker on an inherited listening socket."""

    def __init__(self, manager: CertManager, https_port: int) -> None:
        self.manager = manager
        self.https_port = https_port
        self.server: asyncio.AbstractServer | None = None
        self.open = 0

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self.open += 1
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            writer.write(await self.answer(head))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def answer(self, head: bytes) -> bytes:
        """The whole response to one request head."""
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            return BAD_REQUEST
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return BAD_REQUEST
        method, target, _ = parts
        hosts = [
            line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")
        ]
        if len(hosts) != 1 or not _TARGET.fullmatch(target):
            return BAD_REQUEST
        host = acme_hostname(hosts[0])
        if host is None:
            return NOT_FOUND
        if target.startswith(CHALLENGE_PREFIX):
            token = target[len(CHALLENGE_PREFIX) :]
            if method != "GET" or not _TOKEN.fullmatch(token):
                return NOT_FOUND
            value = await self.manager.http_answer(host, token)
            if value is None:
                return NOT_FOUND
            return _reply(200, "OK", value.encode("ascii"))
        if not self.manager.serves(host):
            return NOT_FOUND
        port = "" if self.https_port == 443 else f":{self.https_port}"
        return _reply(
            308, "Permanent Redirect", extra=f"location: https://{host}{port}{target}\r\n"
        )
