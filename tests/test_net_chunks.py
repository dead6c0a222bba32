"""zerogate.net.chunks: the tunnel's no-copy reader, over real loopback sockets.

``ChunkReader`` replaces asyncio's buffer handling while keeping its flow control, so the
tests check what a tunnel relies on: every byte in order, ``read(n)`` never above ``n``, the
transport paused past twice the limit and resumed once read, EOF, and a lost connection.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from harness import wait_for
from zerogate.net import chunks


async def _pair(limit: int) -> tuple[chunks.ChunkReader, asyncio.StreamWriter, asyncio.Server]:
    """A server-side reader (``limit``) and a client-side writer, connected over loopback."""
    accepted: asyncio.Future[tuple[chunks.ChunkReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )

    async def on_connect(reader: chunks.ChunkReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await chunks.start_server(on_connect, "127.0.0.1", 0, limit=limit)
    port = server.sockets[0].getsockname()[1]
    _, client = await chunks.open_connection("127.0.0.1", port)
    reader, _ = await asyncio.wait_for(accepted, 5)
    return reader, client, server


async def test_every_byte_in_order_and_never_more_than_asked() -> None:
    reader, client, server = await _pair(limit=64 * 1024)
    try:
        payload = os.urandom(3 * 1024 * 1024 + 17)
        client.write(payload)
        await client.drain()
        client.close()
        got = bytearray()
        while True:
            data = await reader.read(10_000)
            assert isinstance(data, bytes) and len(data) <= 10_000
            if not data:
                break
            got += data
        assert bytes(got) == payload
        assert reader.at_eof()
        assert await reader.read(10) == b""
    finally:
        server.close()


async def test_small_chunks_are_joined_up_to_n() -> None:
    reader, client, server = await _pair(limit=64 * 1024)
    try:
        for i in range(20):
            client.write(bytes([i]) * 10)
            await client.drain()
        await wait_for(lambda: len(reader._chunks) and reader._size == 200, timeout=5)
        first = await reader.read(55)
        assert len(first) <= 55 and first[:10] == b"\x00" * 10
        rest = await reader.read(-1)
        assert first + rest == b"".join(bytes([i]) * 10 for i in range(20))
    finally:
        client.close()
        server.close()


async def test_transport_paused_past_twice_the_limit_and_resumed_when_read() -> None:
    limit = 4096
    reader, client, server = await _pair(limit=limit)
    try:
        client.write(b"x" * (1024 * 1024))  # far more than the reader may hold
        await wait_for(lambda: reader._base._paused, timeout=5)
        held = reader._size
        assert held > 2 * limit
        # paused: what is held stops growing (the rest waits in the kernel and the writer)
        await asyncio.sleep(0.1)
        assert reader._size == held
        total = 0
        while total < 1024 * 1024:
            total += len(await reader.read(65536))
        assert total == 1024 * 1024
        assert not reader._base._paused
    finally:
        client.close()
        server.close()


async def test_lost_connection_ends_reading() -> None:
    reader, client, server = await _pair(limit=64 * 1024)
    try:
        client.write(b"last words")
        await client.drain()
        client.transport.abort()
        got = b""
        with pytest.raises(ConnectionError):
            while True:
                data = await reader.read(100)
                if not data:
                    raise ConnectionResetError("clean EOF is also an end")
                got += data
        assert got in (b"", b"last words")
    finally:
        server.close()


async def test_server_on_a_given_listening_socket() -> None:
    """``sock=``: what a server whose workers share one listening socket passes."""
    import socket

    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: chunks.ChunkReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await reader.read(100))
        writer.close()

    server = await chunks.start_server(on_connect, sock=listening)
    try:
        _, client = await chunks.open_connection("127.0.0.1", port)
        client.write(b"hello")
        assert await asyncio.wait_for(got, 5) == b"hello"
        client.close()
    finally:
        server.close()
