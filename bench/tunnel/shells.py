"""The tunnel alone: edge listener and connector in one process, CPU time per request and per MB.

``bench/tunnel/run.py`` measures whole paths (granian, the edge pipeline, the tunnel, nginx)
on a machine shared with others, where throughput swings with the load. This measures only
what the tunnel adds: a :class:`~zerogate.edge.tunnel.TunnelListener` (TLS on loopback) and a
real :class:`~zerogate.connector.Connector` (four HA connections) share one event loop
(uvloop) in this process; requests are handed to ``forward_http`` as the edge pipeline does
(hand-made ASGI, no HTTP front) and reach an nginx origin in its own process. What this
process spends, in CPU seconds, is the tunnel's cost at both ends (plus the few lines of the
ASGI stand-in), steady whatever else the machine does.

Run from the repository root (needs nginx)::

    .venv/bin/python bench/tunnel/shells.py                 # 20,000 requests, 256 MiB each way
    .venv/bin/python bench/tunnel/shells.py --profile 30    # and the top 30 functions by CPU
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
for entry in (_ROOT / "src", _ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import uvloop  # noqa: E402

from bench.proxy.run import Processes, free_port, start_nginx  # noqa: E402
from zerogate.connector import Connector, ConnectorConfig, ingress  # noqa: E402
from zerogate.connector.tls import EdgeTrust, parse_edges  # noqa: E402
from zerogate.edge.tunnel import TunnelListener, server_ssl_context  # noqa: E402
from zerogate.identity.secret_hash import SecretKind, hash_secret  # noqa: E402
from zerogate.net.upstream import Outbound  # noqa: E402
from zerogate.tunnel import certs  # noqa: E402
from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id  # noqa: E402

ORIGIN = """\
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location = /small {{ default_type text/plain; return 200 "ok"; }}
        location = /big {{ default_type application/octet-stream; alias {dir}/big.bin; }}
        location = /upload {{
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:{port}/small;
        }}
    }}"""

# what the edge pipeline puts on a tunnelled request (net/headers.upstream_request_headers)
HEADERS = [
    (b"user-agent", b"wrk"),
    (b"accept", b"*/*"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
    (b"x-forwarded-host", b"bench.localhost"),
    (b"x-real-ip", b"127.0.0.1"),
]


@dataclass
class _Cred:
    name: str
    secret_hash: str


class _Table:
    def __init__(self, tunnel_id: str, secret: str) -> None:
        self.tunnel_credentials = {
            tunnel_id: _Cred("bench", hash_secret(SecretKind.TUNNEL, secret))
        }
        self._id, self._secret = tunnel_id, secret

    def tunnel_for_token(self, tunnel_id: str, secret: str) -> str | None:
        return "bench" if (tunnel_id, secret) == (self._id, self._secret) else None


async def _exchange(
    listener: TunnelListener,
    path: str,
    *,
    method: str = "GET",
    body: list[bytes] | None = None,
) -> tuple[int, int]:
    """One request through ``forward_http``; its status and the body bytes received."""
    chunks = body or [b""]
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    got = [0, 0]
    done = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await done
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            got[0] = message["status"]
        else:
            got[1] += len(message.get("body", b""))

    headers = list(HEADERS)
    if body:
        headers.append((b"content-length", str(sum(map(len, body))).encode()))
    scope = {"type": "http", "method": method, "headers": headers}
    out = Outbound("bench", path, headers, authority="bench.localhost", scheme="http")
    try:
        await listener.forward_http(scope, receive, send, out)
    finally:
        if not done.done():
            done.set_result(None)
    return got[0], got[1]


async def _small(listener: TunnelListener, count: int, concurrency: int) -> float:
    """CPU µs per small request, ``concurrency`` at a time."""
    left = min(count, 500)

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, _ = await _exchange(listener, "/small")
            assert status == 200, status

    await asyncio.gather(*(worker() for _ in range(8)))  # warm-up: connections, caches
    left = count
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - cpu) / count * 1e6


async def _bulk(listener: TunnelListener, size: int) -> tuple[float, float]:
    """CPU ms per MB of one body down, then one up."""
    cpu = time.process_time()
    status, received = await _exchange(listener, "/big")
    assert status == 200 and received == size, (status, received)
    down = (time.process_time() - cpu) / (size / 1e6) * 1e3
    piece = os.urandom(64 * 1024)
    body = [piece] * (size // len(piece))
    cpu = time.process_time()
    status, _ = await _exchange(listener, "/upload", method="POST", body=body)
    assert status == 200, status
    up = (time.process_time() - cpu) / (size / 1e6) * 1e3
    return down, up


async def run(args: argparse.Namespace, origin_port: int) -> None:
    generated = certs.generate(["localhost", "127.0.0.1"])
    tunnel_id, secret = new_tunnel_id(), new_secret()
    listener = TunnelListener(_Table(tunnel_id, secret))
    port = free_port()
    context = server_ssl_context(cert_pem=generated.cert_pem, key_pem=generated.key_pem)
    await listener.start("127.0.0.1", port, context)
    token = TunnelToken(tunnel_id, secret, (f"127.0.0.1:{port}",), generated.fingerprint)
    connector = Connector(
        ConnectorConfig(
            token=token.encode(),
            tunnel=token,
            edges=parse_edges(f"127.0.0.1:{port}"),
            rules=ingress.from_url(f"http://127.0.0.1:{origin_port}"),
            trust=EdgeTrust(ca_file=None, fingerprint=generated.fingerprint),
            ha_connections=4,
            metrics_address=f"127.0.0.1:{free_port()}",
        )
    )
    task = asyncio.create_task(connector.run(signals=False))
    try:
        deadline = time.monotonic() + 20
        while sum(1 for c in listener.connections() if c.state == "ready") < 4:
            if time.monotonic() > deadline:
                raise RuntimeError("the connector did not connect")
            await asyncio.sleep(0.05)
        profile = cProfile.Profile(time.process_time) if args.profile else None
        if profile is not None:
            profile.enable()
        rounds = []
        for _ in range(args.repeat):
            small = await _small(listener, args.requests, args.concurrency)
            down, up = await _bulk(listener, args.size_mib * 1024 * 1024)
            rounds.append((small, down, up))
            print(
                f"tunnel alone: {small:6.1f} CPU µs per small request,"
                f" {down:5.2f} / {up:5.2f} CPU ms per MB down / up",
                flush=True,
            )
        if profile is not None:
            profile.disable()
            stats = pstats.Stats(profile)
            stats.sort_stats("tottime").print_stats(args.profile)
    finally:
        connector.shutdown()
        connector.shutdown()
        await asyncio.wait({task}, timeout=5)
        await listener.stop(grace=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    args = parser.parse_args(argv)
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="zg-bench-shells-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        big = work / "big.bin"
        with big.open("wb") as out:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                out.write(block)
        big.chmod(0o644)
        try:
            origin_port = free_port()
            body = ORIGIN.format(port=origin_port, dir=work)
            start_nginx(procs, "origin", work, workers=1, body=body, port=origin_port)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run(args, origin_port))
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
