"""Logs people can keep: the origin's status, the duration and the count stored and filtered;
pages that cover every row once; filters that say what they accept; requests sent to login
aggregated per application, address and minute; the export (CSV safe from formulas) and the
JSON-lines stream to standard output and to a real UDP syslog socket."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from harness import wait_for
from zerogate import accesslog
from zerogate.accesslog import AccessLogWriter, AccessStream
from zerogate.admin.service import AdminService, Invalid
from zerogate.cli import logs as cli_logs
from zerogate.model.objects import LogSettings
from zerogate.store import (
    ACCESS_DECISIONS,
    AccessEvent,
    AccessFilter,
    Store,
    access_filter,
    cursor_of,
    storage_url,
)


def event(
    at: datetime,
    *,
    path: str = "/",
    decision: str = "allow",
    status: int | None = 200,
    ip: str = "192.0.2.1",
    app: str = "wiki",
    detail: str | None = None,
) -> AccessEvent:
    return AccessEvent(
        at=at,
        kind="request",
        app=app,
        email="ann@example.com",
        idp="otp",
        ip=ip,
        country=None,
        decision=decision,
        policy="staff",
        method="GET",
        host="wiki.example.com",
        path=path,
        detail=detail,
        status=status,
        duration_ms=12.5 if status else None,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        yield opened
    finally:
        await opened.close()


async def test_status_duration_and_count_are_kept_and_filtered(store: Store) -> None:
    now = datetime.now(UTC)
    await store.write_access(
        [
            event(now - timedelta(seconds=3), path="/ok", status=200),
            event(now - timedelta(seconds=2), path="/down", status=502),
            event(now - timedelta(seconds=1), path="/slow", status=504, ip="192.0.2.9"),
            replace(event(now, path="/login", decision="authenticate", status=302), count=40),
        ]
    )
    newest = await store.access_log(limit=10)
    assert [(e.path, e.status, e.count) for e in newest] == [
        ("/login", 302, 40),
        ("/slow", 504, 1),
        ("/down", 502, 1),
        ("/ok", 200, 1),
    ]
    assert newest[1].duration_ms == 12.5

    async def paths(**typed: str) -> list[str | None]:
        where = access_filter(now=datetime.now(UTC), **typed)
        return [e.path for e in await store.access_log(where, limit=10)]

    assert await paths(status="5xx") == ["/slow", "/down"]
    assert await paths(status="502") == ["/down"]
    assert await paths(status="5xx", ip="192.0.2.9") == ["/slow"]
    assert await paths(decision="authenticate") == ["/login"]
    until = (now - timedelta(seconds=1)).isoformat()
    assert await paths(until=until) == ["/down", "/ok"]


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ({"decision": "allowed"}, "decision: 'allowed' is not one of allow, block, authenticate"),
        ({"kind": "visit"}, "kind: 'visit' is not one of request, login, gap, mail"),
        ({"status": "6xx"}, "status: '6xx' is not a status: give a code (502) or a class"),
        ({"status": "abc"}, "status: 'abc' is not a status"),
        ({"since": "yesterday"}, "since: 'yesterday' is neither a duration"),
        ({"cursor": "1.2.3x"}, "cursor: not a cursor this server gave out"),
        ({"ip": "1.2.3.4\x00"}, "ip: not a value any row can hold"),
    ],
)
def test_filters_say_what_they_accept(typed: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        access_filter(now=datetime.now(UTC), **typed)


def test_the_cli_lists_every_decision_the_store_knows() -> None:
    assert cli_logs.DECISIONS == ACCESS_DECISIONS


async def test_pages_cover_every_row_once_even_with_equal_times(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    # 25 rows, many sharing a timestamp (several processes write the same second)
    rows = [event(now - timedelta(seconds=i // 4), path=f"/{i}") for i in range(25)]
    await store.write_access(rows)
    seen: list[str] = []
    where = AccessFilter(app="wiki")
    while True:
        page = await store.access_log(where, limit=7)
        seen += [e.path or "" for e in page]
        if len(page) < 7:
            break
        cursor = cursor_of(page[-1])
        where = access_filter(now=now, app="wiki", cursor=cursor)
    assert sorted(seen) == sorted(f"/{i}" for i in range(25))
    assert len(seen) == 25


async def test_following_reads_new_rows_oldest_first(store: Store) -> None:
    now = datetime.now(UTC)
    await store.write_access([event(now, path="/a")])
    (first,) = await store.access_log(limit=1)
    await store.write_access([event(now, path="/b"), event(now, path="/c", status=500)])
    after = await store.access_log(AccessFilter(after_id=first.id), limit=10)
    assert [e.path for e in after] == ["/b", "/c"]
    failed = await store.access_log(AccessFilter(after_id=first.id, status=(500, 599)), limit=10)
    assert [e.path for e in failed] == ["/c"]


# -------------------------------------------------------------------- aggregation


async def test_a_scan_sent_to_login_becomes_two_rows_a_minute() -> None:
    written: list[AccessEvent] = []

    async def sink(events: Sequence[AccessEvent]) -> None:
        written.extend(events)

    writer = AccessLogWriter(sink, interval=0.05, window=0.3)
    await writer.start()
    now = datetime.now(UTC)
    for i in range(500):
        key = ("wiki", "198.51.100.7")
        writer.record_repeated(
            key, ("wiki", "*"), event(now, path=f"/{i}", decision="authenticate")
        )
    writer.record_repeated(("wiki", "198.51.100.8"), ("wiki", "*"), event(now, ip="198.51.100.8"))
    # the first of each address at once, the rest as one row when the window ends
    await wait_for(lambda: len(written) == 3, timeout=5)
    first, other, summary = written
    assert (first.path, first.count) == ("/0", 1)
    assert other.ip == "198.51.100.8"
    assert summary.count == 499 and summary.path == "/499"
    assert summary.detail == "repeated 499 more times within 0s"
    # a new window starts over
    writer.record_repeated(("wiki", "198.51.100.7"), ("wiki", "*"), event(now, path="/again"))
    await writer.stop()
    assert [e.path for e in written[3:]] == ["/again"]


async def test_aggregation_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog, "REPEAT_KEYS", 50)
    written: list[AccessEvent] = []

    async def sink(events: Sequence[AccessEvent]) -> None:
        written.extend(events)

    writer = AccessLogWriter(sink, interval=0.05, window=60)
    now = datetime.now(UTC)
    for i in range(5000):  # a scan from 5,000 addresses
        ip = f"10.0.{i // 256}.{i % 256}"
        writer.record_repeated(("wiki", ip), ("wiki", "*"), event(now, ip=ip))
    assert len(writer._repeats) <= 51
    await writer.stop()
    assert len(written) <= 52  # 50 addresses, the application-wide key, its summary
    assert sum(e.count for e in written) == 5000, "every request is counted"


# -------------------------------------------------------------------- export


async def test_export_csv_has_every_row_and_no_formula(store: Store) -> None:
    now = datetime.now(UTC)
    hostile = '=HYPERLINK("http://evil.test","x")'
    await store.write_access(
        [event(now - timedelta(seconds=i), path=f"/{i}") for i in range(30)]
        + [event(now, path="/+cmd", detail=hostile, status=None), event(now, path="/@x")]
    )
    service = AdminService(store)
    from zerogate.admin import service as service_module

    original = service_module.EXPORT_PAGE
    service_module.EXPORT_PAGE = 7  # several pages
    try:
        body = b"".join([c async for c in service.export_access(AccessFilter(), "csv")])
        lines = b"".join([c async for c in service.export_access(AccessFilter(), "jsonl")])
    finally:
        service_module.EXPORT_PAGE = original
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 32
    assert {r["path"] for r in rows} >= {"/0", "/29", "/+cmd", "/@x"}
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), row
    (bad,) = [r for r in rows if r["path"] == "/+cmd"]
    assert bad["detail"] == "'" + hostile and bad["status"] == ""
    objects = [json.loads(line) for line in lines.splitlines()]
    assert len(objects) == 32 and objects[-1]["path"] == "/29"
    assert {"status", "duration_ms", "count", "at"} <= set(objects[0])
    with pytest.raises(Invalid, match="format: 'xml' is not one of csv, jsonl"):
        [c async for c in service.export_access(AccessFilter(), "xml")]


# -------------------------------------------------------------------- stream


def test_stream_settings_check_the_syslog_address() -> None:
    ok = LogSettings.model_validate({"stream": {"syslog": {"address": "[::1]:514"}}})
    assert ok.stream.syslog is not None and ok.stream.syslog.facility == "local0"
    for bad in ("localhost", "host:99999", "bad host:514", "relative/path"):
        with pytest.raises(ValueError, match=r"expected HOST:PORT|not a valid hostname"):
            LogSettings.model_validate({"stream": {"syslog": {"address": bad}}})
    with pytest.raises(ValueError, match="stdout"):
        LogSettings.model_validate({"stream": {"stdout": "text"}})


async def test_stream_sends_json_lines_to_stdout_and_a_udp_syslog_server() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    read_end, write_end = os.pipe()
    port = server.getsockname()[1]
    stream = AccessStream(
        stdout=True, syslog_address=f"127.0.0.1:{port}", facility="local3", out_fd=write_end
    )
    written: list[AccessEvent] = []
    calls = 0

    async def flaky_sink(events: Sequence[AccessEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("database away")  # retried: the stream must not repeat the batch
        written.extend(events)

    now = datetime.now(UTC)
    writer = AccessLogWriter(flaky_sink, interval=0.05, retry_delay=0.05, also=stream)
    await writer.start()
    writer.record(event(now, path="/ok"))
    writer.record(event(now, path="/down", status=502, decision="block"))
    writer.record(event(now, path="/x" * 6000))  # too long for one datagram: cut down
    await wait_for(lambda: len(written) == 3, timeout=5)
    await writer.stop()
    stream.close()
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        lines = pipe.read().splitlines()
    assert [json.loads(line)["path"] for line in lines][:2] == ["/ok", "/down"]
    assert len(lines) == 3, "each row once, though the sink was retried"
    assert json.loads(lines[1])["status"] == 502

    received = []
    for _ in range(3):
        data, _ = await asyncio.to_thread(server.recvfrom, 65535)
        received.append(data.decode())
    server.close()
    head, _, body = received[1].partition(" access - ")
    # <PRI>: local3 (19) * 8 + warning (4) for a block; RFC 5424 version 1
    assert head.startswith("<156>1 ") and " zerogate " in head
    assert json.loads(body)["path"] == "/down"
    assert received[0].startswith("<158>1 ")  # informational for an allow
    assert len(received[2].encode()) <= accesslog.SYSLOG_MAX_BYTES
    assert stream.sent == 3 and stream.dropped == 0


async def test_hostile_fields_never_forge_a_stream_line_or_a_syslog_message() -> None:
    """Values from outside (a path, an address, an IdP's detail) with line breaks, a forged
    RFC 5424 head, U+2028, quotes and ESC: each row stays one stdout line and one datagram
    whose JSON reads back the same values (nothing a log reader could split or recolour)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    read_end, write_end = os.pipe()
    stream = AccessStream(
        stdout=True, syslog_address=f"127.0.0.1:{server.getsockname()[1]}", out_fd=write_end
    )
    forged = '\n<13>1 2026-01-01T00:00:00Z host zerogate 1 access - {"decision":"allow"}'
    hostile = [
        replace(event(datetime.now(UTC), path="/a" + forged), email="x\r\n@evil.test"),
        event(datetime.now(UTC), detail='end"}\u2028\u2029\x1b[31mred\x00', decision="block"),
    ]
    stream(hostile)
    stream.close()
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    lines = out.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3, out
    for raw, sent in zip(lines[:2], hostile, strict=True):
        assert raw.isascii() and b"\r" not in raw and b"\x1b" not in raw
        back = json.loads(raw)
        assert (back["path"], back["email"], back["detail"]) == (sent.path, sent.email, sent.detail)
    for sent in hostile:
        data, _ = await asyncio.to_thread(server.recvfrom, 65535)
        assert data.isascii() and not any(c in data for c in b"\r\n\x00\x1b")
        head, sep, body = data.decode().partition(" access - ")
        assert sep and head.count(" ") == 4 and head.startswith("<")
        assert json.loads(body)["path"] == sent.path
    server.close()
    assert stream.sent == 2 and stream.dropped == 0
