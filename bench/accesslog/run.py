"""What recording costs on the request path (issue #16): ``AccessLogWriter.record``, the
aggregated ``record_repeated`` of requests sent to login, and the ``StatusSeen`` wrapper that
tells the pipeline which status the client got (two ``send`` calls, as for a small response).

    PYTHONPATH=src .venv/bin/python bench/accesslog/run.py

Prints nanoseconds per call, best of 5 rounds of 200,000.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from zerogate.accesslog import AccessLogWriter
from zerogate.edge.pipeline import StatusSeen
from zerogate.net.asgi import Message
from zerogate.store import AccessEvent

N = 200_000
ROUNDS = 5


async def _sink(events: Sequence[AccessEvent]) -> None:
    return None


async def _send(message: Message) -> None:
    return None


async def main() -> None:
    event = AccessEvent(
        at=datetime.now(UTC),
        kind="request",
        app="wiki",
        email=None,
        idp=None,
        ip="192.0.2.1",
        country=None,
        decision="authenticate",
        policy=None,
    )
    head: Message = {"type": "http.response.start", "status": 200, "headers": []}
    body: Message = {"type": "http.response.body", "body": b"ok"}
    best: dict[str, float] = {}

    def keep(name: str, started: float) -> None:
        ns = (time.perf_counter() - started) / N * 1e9
        best[name] = min(best.get(name, ns), ns)

    for _ in range(ROUNDS):
        writer = AccessLogWriter(_sink, capacity=N * 2, batch=N * 2)
        started = time.perf_counter()
        for _ in range(N):
            writer.record(event)
        keep("record", started)
        writer = AccessLogWriter(_sink, capacity=N * 2, batch=N * 2)
        started = time.perf_counter()
        for _ in range(N):
            writer.record_repeated(("wiki", "192.0.2.1"), ("wiki", "*"), event)
        keep("record_repeated (one key)", started)
        started = time.perf_counter()
        for _ in range(N):
            await _send(head)
            await _send(body)
        keep("send x2, plain", started)
        started = time.perf_counter()
        for _ in range(N):
            seen = StatusSeen(_send)
            await seen(head)
            await seen(body)
        keep("send x2 through StatusSeen", started)
    for name, ns in best.items():
        print(f"{name:32} {ns:8.0f} ns")


if __name__ == "__main__":
    asyncio.run(main())
