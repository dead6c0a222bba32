"""The tunnel protocol core alone, both sides in one process, no sockets: what each wire costs.

Prints request/response pairs per CPU second (a GET with browser-like headers answered with a
small body) and MB per CPU second of one large body handed over in socket-sized reads (CPU
time, not wall time: steady on a shared machine), for protocol 1 (HTTP/2 via h2) and protocol 2 (the
multiplexer). Run from the repository root::

    .venv/bin/python bench/tunnel/core.py [--pairs 20000] [--mib 256]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(_ROOT / "src"))

from zerogate.tunnel.protocol import (  # noqa: E402
    PROTOCOL_H2,
    PROTOCOL_MUX,
    BodyChunk,
    ConnectorSide,
    EdgeSide,
    Registration,
    RequestReceived,
    ResponseStarted,
    StreamEnded,
    WindowOpened,
)

REQUEST_HEADERS = [
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-GB,en;q=0.9"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"app.example.com"),
]
RESPONSE_HEADERS = [
    (b"server", b"nginx"),
    (b"date", b"Mon, 07 Dec 2026 10:00:00 GMT"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"2"),
]


def pair(protocol: int) -> tuple[EdgeSide, ConnectorSide]:
    reg = Registration(token="zgt_x", connector_id="bench", version="0", protocol=protocol)
    edge, conn = EdgeSide(), ConnectorSide(reg)
    edge.receive_data(conn.data_to_send())
    edge.accept("t", "c")
    for _ in range(4):
        conn.receive_data(edge.data_to_send())
        edge.receive_data(conn.data_to_send())
    assert edge.can_open_stream
    return edge, conn


def small(protocol: int, count: int) -> float:
    edge, conn = pair(protocol)
    started = time.process_time()
    batch = 64
    for _ in range(count // batch):
        for _ in range(batch):
            edge.send_request(
                "GET", "app.example.com", "/small?x=1", REQUEST_HEADERS, end_stream=True
            )
        for ev in conn.receive_data(edge.data_to_send()):
            if isinstance(ev, RequestReceived):
                conn.send_response(ev.stream_id, 200, RESPONSE_HEADERS)
                conn.send_body(ev.stream_id, b"ok", end_stream=True)
        done = 0
        for ev in edge.receive_data(conn.data_to_send()):
            if isinstance(ev, BodyChunk):
                edge.ack(ev.stream_id, len(ev.data))
            elif isinstance(ev, StreamEnded):
                done += 1
        assert done == batch, done
        conn.receive_data(edge.data_to_send())
    return (count // batch * batch) / (time.process_time() - started)


def bulk(protocol: int, mib: int, read_kib: int = 256) -> float:
    """MB/s of one body, the bytes handed over in reads of ``read_kib`` KiB as a socket does
    (frames then straddle reads)."""
    edge, conn = pair(protocol)
    read = read_kib * 1024
    sid = edge.send_request("GET", "app.example.com", "/big", end_stream=True)
    conn.receive_data(edge.data_to_send())
    conn.send_response(sid, 200)
    chunk = bytes(64 * 1024)
    total, left, received = mib * 1024 * 1024, mib * 1024 * 1024, 0
    started = time.process_time()
    while received < total:
        while left and conn.send_capacity(sid) >= len(chunk):
            conn.send_body(sid, chunk)
            left -= len(chunk)
        data = conn.data_to_send()
        for at in range(0, len(data), read):
            for ev in edge.receive_data(data[at : at + read]):
                if isinstance(ev, BodyChunk):
                    received += len(ev.data)
                    edge.ack(sid, len(ev.data))
                elif isinstance(ev, ResponseStarted | WindowOpened):
                    pass
        conn.receive_data(edge.data_to_send())
    return total / (time.process_time() - started) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--read-kib", type=int, default=256, help="socket read size")
    parser.add_argument("--mux-only", action="store_true")
    args = parser.parse_args()
    wires = (("h2 (protocol 1)", PROTOCOL_H2), ("mux (protocol 2)", PROTOCOL_MUX))
    for name, protocol in wires[1:] if args.mux_only else wires:
        rps = small(protocol, args.pairs)
        mbs = bulk(protocol, args.mib, args.read_kib)
        print(f"{name:18} {rps:9,.0f} pairs/s  {mbs:7,.0f} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
