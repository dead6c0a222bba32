"""Connection limits granian does not enforce by itself (SPEC "HTTP contract": a header not
complete within 10 s, or a keep-alive connection idle for 60 s, is closed; a cap on open
connections per process keeps the edge answering under a flood).

What granian (2.8) does, configured by ``server/run.py``:

- ``http1_settings.header_read_timeout`` = ``listen.header_timeout``: a request head that has
  begun but is not complete in time is dropped, and so is a keep-alive connection that starts
  no next request in time (granian's timer runs while it waits for the next head);
- ``backpressure`` = ``listen.max_connections``: a worker holds at most that many connections;
  the next ones wait in the kernel's accept queue until one closes.

What it does not do: a connection that never sends a byte is held for ever (the header timer
starts with the first byte), and HTTP/2 connections have no idle limit. A flood of silent
connections would therefore fill ``max_connections`` and stop the edge. :class:`ConnectionGuard`
closes those: a watcher in each worker that looks at this process's accepted sockets on the
HTTP port (``/proc/self/fd``; Linux ``TCP_INFO``) and shuts down a connection that has no
request running in the ASGI app and

- has received nothing at all for ``header_timeout`` (connected, never spoke), or
- has received nothing and sent nothing for ``idle_timeout`` (idle keep-alive, HTTP/2), or
- has been quiet for ``PRESSURE_QUIET`` seconds while the process holds ``PRESSURE`` of its
  cap (under a flood, idle connections make room first).

``shutdown()`` on a duplicate of the descriptor ends the connection for granian too (it reads
EOF and closes its own descriptor). Off Linux the guard does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger("zerogate.server")

#: above this share of ``max_connections``, quiet connections are closed sooner
PRESSURE = 0.8
#: how quiet (seconds) a connection without a running request may be under pressure
PRESSURE_QUIET = 1.0
# struct tcp_info (linux/tcp.h): offsets of tcpi_last_data_sent, tcpi_last_data_recv (u32,
# milliseconds ago) and tcpi_bytes_received (u64)
_TCP_INFO_LEN = 136
_LAST_DATA_SENT = 44
_LAST_DATA_RECV = 52
_BYTES_RECEIVED = 128


def peer_key(address: object) -> tuple[str, int] | None:
    """``(ip, port)`` of a socket or ASGI ``client`` address, IPv4-mapped IPv6 unmapped."""
    if not isinstance(address, (tuple, list)) or len(address) < 2:
        return None
    host, port = str(address[0]), address[1]
    if not isinstance(port, int):
        return None
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, port


@dataclass(frozen=True, slots=True)
class Quiet:
    """One accepted connection as the kernel sees it."""

    peer: tuple[str, int]
    received_anything: bool
    #: seconds since data last arrived / left
    recv_quiet: float
    send_quiet: float


@dataclass
class ConnectionGuard:
    port: int
    header_timeout: float
    idle_timeout: float
    max_connections: int
    #: requests running now, by client address (an HTTP/2 connection may run several)
    active: Counter[tuple[str, int]] = field(default_factory=Counter)
    closed: int = 0
    _task: asyncio.Task[None] | None = None

    @staticmethod
    def supported() -> bool:
        return sys.platform == "linux" and os.path.isdir("/proc/self/fd")

    def enter(self, client: object) -> tuple[str, int] | None:
        key = peer_key(client)
        if key is not None:
            self.active[key] += 1
        return key

    def leave(self, key: tuple[str, int] | None) -> None:
        if key is None:
            return
        self.active[key] -= 1
        if self.active[key] <= 0:
            del self.active[key]

    def start(self) -> None:
        if self.supported() and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        interval = max(0.1, min(1.0, self.header_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # the guard must never take the worker down
                log.exception("the connection guard failed; trying again")

    def sweep(self) -> int:
        """Close what the rules above say; how many connections were closed."""
        sockets = list(self._accepted())
        pressure = len(sockets) >= self.max_connections * PRESSURE
        done = 0
        for sock, quiet in sockets:
            with sock:
                if quiet.peer in self.active:
                    continue
                idle = min(quiet.recv_quiet, quiet.send_quiet)
                if (
                    (not quiet.received_anything and quiet.recv_quiet >= self.header_timeout)
                    or idle >= self.idle_timeout
                    or (pressure and idle >= PRESSURE_QUIET)
                ):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                        done += 1
        self.closed += done
        return done

    def _accepted(self) -> Iterator[tuple[socket.socket, Quiet]]:
        """Duplicates of this process's connected TCP sockets on ``port`` (the caller closes
        them) with what TCP_INFO says about them."""
        try:
            names = os.listdir("/proc/self/fd")
        except OSError:
            return
        for name in names:
            try:
                if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                    continue
                sock = socket.socket(fileno=os.dup(int(name)))
            except (OSError, ValueError):
                continue
            keep = False
            try:
                if sock.type != socket.SOCK_STREAM or sock.family not in (
                    socket.AF_INET,
                    socket.AF_INET6,
                ):
                    continue
                if sock.getsockname()[1] != self.port:
                    continue
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue  # the listener itself
                peer = peer_key(sock.getpeername())
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
                if peer is None or len(info) < _TCP_INFO_LEN:
                    continue
                (sent_ms,) = struct.unpack_from("I", info, _LAST_DATA_SENT)
                (recv_ms,) = struct.unpack_from("I", info, _LAST_DATA_RECV)
                (received,) = struct.unpack_from("Q", info, _BYTES_RECEIVED)
                keep = True
                yield sock, Quiet(peer, received > 0, recv_ms / 1000, sent_ms / 1000)
            except OSError:
                continue
            finally:
                if not keep:
                    sock.close()
