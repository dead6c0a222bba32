"""A running server records what the client got from the origin and how long it took (an
allowed request whose origin failed is not just "allow"), records requests sent to login
without letting a scan flood the log, copies every row to a real UDP syslog listener, and
``zerogate logs --follow`` prints rows as they are written."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness import free_port, wait_for, wait_until
from zerogate.admin.service import Actor, AdminService
from zerogate.store import AccessEvent, AccessFilter
from zg_harness import ZEROGATE, HttpBrowser, ThreadedOutbox, Zerogate, open_store

pytestmark = pytest.mark.e2e


class _Origin(BaseHTTPRequestHandler):
    """``/status/NNN`` answers NNN; ``/slow`` answers after 0.3 s."""

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.3)
            status = 200
        else:
            status = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/status/") else 200
        body = b"origin\n"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def syslog() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def zg(
    tmp_path_factory: pytest.TempPathFactory, origin: int, syslog: socket.socket
) -> Iterator[Zerogate]:
    box = ThreadedOutbox().start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg"), free_port(), box.port)
    closed = free_port()  # nothing listens there: the origin is down
    zerogate.apply(
        f"""
logs: {{stream: {{syslog: {{address: "127.0.0.1:{syslog.getsockname()[1]}"}}}}}}
identity_providers: [{{name: otp, type: onetimepin}}]
service_tokens: [{{name: ci-bot, duration: 24h}}]
applications:
  - name: api
    domain: api.localhost
    origin: http://127.0.0.1:{origin}
    policies: [{{name: ci, decision: service_auth, include: [{{service_token: [ci-bot]}}]}}]
  - name: dead
    domain: dead.localhost
    origin: http://127.0.0.1:{closed}
    policies: [{{name: ci, decision: service_auth, include: [{{service_token: [ci-bot]}}]}}]
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin}
    policies: [{{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}]
"""
    )
    zerogate.start()
    try:
        yield zerogate
    finally:
        zerogate.stop()
        box.stop()


async def _token(zg: Zerogate) -> dict[str, str]:
    async with open_store(zg) as store:
        credential, text = await AdminService(store).rotate_service_token("ci-bot", Actor("test"))
    return {"Zerogate-Client-Id": credential.client_id, "Zerogate-Client-Secret": text}


async def _rows(zg: Zerogate, **filters: Any) -> list[AccessEvent]:
    async with open_store(zg) as store:
        return await store.access_log(AccessFilter(**filters), limit=500)


async def test_status_duration_and_login_redirects_reach_log_syslog_and_follow(
    zg: Zerogate, syslog: socket.socket
) -> None:
    follow = await asyncio.to_thread(
        subprocess.Popen,
        [*ZEROGATE, "logs", "-c", str(zg.config), "--follow", "--json", "--kind", "request"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=zg.workdir,
    )
    followed: list[dict[str, Any]] = []

    def read_follow() -> None:
        assert follow.stdout is not None
        for line in follow.stdout:
            followed.append(json.loads(line))

    reader = threading.Thread(target=read_follow, daemon=True)
    reader.start()
    headers = await _token(zg)
    async with HttpBrowser() as client:

        async def authorised() -> bool:
            reply = await client.get(zg.url("api.localhost", "/status/204"), headers=headers)
            return reply.status == 204

        await wait_for(authorised, timeout=15, what="the server knows the new credential")
        for path, want in (("/status/503", 503), ("/slow", 200)):
            reply = await client.get(zg.url("api.localhost", path), headers=headers)
            assert reply.status == want
        reply = await client.get(zg.url("dead.localhost", "/"), headers=headers)
        assert reply.status == 502
        # a scan: 40 navigations without a session from one address
        nav = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
        for i in range(40):
            reply = await client.get(zg.url("wiki.localhost", f"/p{i}"), headers=nav)
            assert reply.status == 302

    async def recorded() -> list[AccessEvent] | None:
        rows = await _rows(zg, app="api")
        paths = {e.path for e in rows}
        return rows if {"/status/503", "/slow"} <= paths else None

    rows = {e.path: e for e in await wait_for(recorded, timeout=15)}
    assert (rows["/status/503"].decision, rows["/status/503"].status) == ("allow", 503)
    slow = rows["/slow"]
    assert slow.status == 200 and slow.duration_ms is not None and slow.duration_ms >= 250
    dead = await wait_for(lambda: _rows(zg, app="dead"), timeout=15)
    assert [(e.decision, e.status) for e in dead] == [("allow", 502)]

    logins = await wait_for(lambda: _rows(zg, app="wiki", decision="authenticate"), timeout=15)
    # one row now; the other 39 are one more row when the minute is over
    assert [(e.path, e.status, e.count) for e in logins] == [("/p0", 302, 1)]
    assert logins[0].detail == "sent to login"

    # the same rows reached the syslog listener as RFC 5424 messages
    messages: list[dict[str, Any]] = []

    def got_502() -> bool:
        try:
            data, _ = syslog.recvfrom(65535)
        except TimeoutError:
            return False
        messages.append(json.loads(data.decode().partition(" access - ")[2]))
        return any(m["status"] == 502 for m in messages)

    wait_until(got_502, timeout=15, what="the 502 row on the syslog listener")
    # and ``logs --follow`` printed them as they were written
    wait_until(
        lambda: {"/status/503", "/slow", "/"} <= {row["path"] for row in followed},
        timeout=15,
        what="logs --follow printing the new rows",
    )
    assert all(row["kind"] == "request" for row in followed)
    follow.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(follow.wait, 15) == 0
