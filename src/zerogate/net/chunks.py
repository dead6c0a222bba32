"""asyncio streams whose reader hands out the received ``bytes`` objects themselves.

``asyncio.StreamReader`` copies every received chunk into a ``bytearray`` and every
``read()`` copies it out again. A tunnel connection reads hundreds of megabytes per second
through one reader and feeds each piece to a sans-IO core at once, so :class:`ChunkReader`
keeps the chunks as the transport delivered them and ``read(n)`` returns one of them whole
when it fits (several small ones are joined, a larger one is cut). Everything else
(``StreamReaderProtocol``, ``StreamWriter``, pausing the transport past twice ``limit``
buffered bytes, EOF and exceptions) is asyncio's own.

:func:`open_connection` and :func:`start_server` are ``asyncio``'s functions of the same names
with this reader.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ChunkReader", "open_connection", "start_server"]

_LIMIT = 256 * 1024


class ChunkReader(asyncio.StreamReader):
    """A ``StreamReader`` for ``read()`` only: no copy of what arrives (see the module).

    It overrides the base class's buffer handling and uses its state (``_eof``,
    ``_exception``, ``_paused``, ``_transport``, ``_limit``, ``_wait_for_data``,
    ``_wakeup_waiter``: CPython's own since 3.4, exercised by ``tests/test_net_chunks.py``).
    ``readline``, ``readuntil`` and ``readexactly`` are not supported (they read the base
    class's buffer, which stays empty).
    """

    def __init__(self, limit: int = _LIMIT) -> None:
        super().__init__(limit=limit)
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._base: Any = self  # the base class's private state, untyped in typeshed

    def feed_data(self, data: Any) -> None:
        base = self._base
        assert not base._eof, "feed_data after feed_eof"
        if not data:
            return
        self._chunks.append(bytes(data))
        self._size += len(data)
        base._wakeup_waiter()
        transport = base._transport
        if transport is not None and not base._paused and self._size > 2 * base._limit:
            try:
                transport.pause_reading()
            except NotImplementedError:
                base._transport = None
            else:
                base._paused = True

    def _maybe_resume_transport(self) -> None:
        base = self._base
        if base._paused and self._size <= base._limit:
            base._paused = False
            base._transport.resume_reading()

    def at_eof(self) -> bool:
        return bool(self._base._eof) and not self._chunks

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: what is buffered) as soon as any arrived; ``b""`` at
        the end."""
        base = self._base
        if base._exception is not None:
            raise base._exception
        if n == 0:
            return b""
        if not self._chunks and not base._eof:
            await base._wait_for_data("read")
        chunks = self._chunks
        if not chunks:
            return b""
        if n < 0:
            n = self._size
        data = chunks.popleft()
        if len(data) > n:
            chunks.appendleft(data[n:])
            data = data[:n]
        elif chunks and len(data) + len(chunks[0]) <= n:
            parts = [data]
            size = len(data)
            while chunks and size + len(chunks[0]) <= n:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        self._size -= len(data)
        self._maybe_resume_transport()
        return data

    async def readexactly(self, n: int) -> bytes:  # pragma: no cover - not for this reader
        raise NotImplementedError("ChunkReader supports read() only")

    async def readuntil(self, separator: Any = b"\n") -> bytes:  # pragma: no cover
        raise NotImplementedError("ChunkReader supports read() only")


async def open_connection(
    host: str, port: int, *, limit: int = _LIMIT, **kwargs: Any
) -> tuple[ChunkReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` with a :class:`ChunkReader`."""
    loop = asyncio.get_running_loop()
    reader = ChunkReader(limit)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.create_connection(lambda: protocol, host, port, **kwargs)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(
    client_connected_cb: Callable[[ChunkReader, asyncio.StreamWriter], Awaitable[None]],
    host: str | None = None,
    port: int | None = None,
    *,
    limit: int = _LIMIT,
    **kwargs: Any,
) -> asyncio.Server:
    """``asyncio.start_server`` with a :class:`ChunkReader` per connection (``sock=`` instead
    of ``host`` and ``port`` accepts on a listening socket, as asyncio's does)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = ChunkReader(limit)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)  # type: ignore[arg-type]

    return await loop.create_server(factory, host, port, **kwargs)
