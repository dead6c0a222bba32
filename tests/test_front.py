"""The HTTP/1.1 front (``listen.fast_path: true``, ``edge/front.py``) of a real server: framing
attacks, pipelining, the relayed client address, a spoofed relay header. The rest of the
end-to-end set runs through the front with ``ZEROGATE_TEST_FAST_PATH=1``."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from zg_harness import VerifyingOrigin, Zerogate, free_port

pytestmark = pytest.mark.e2e

BODY = """
applications:
  - name: open
    domain: open.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: everyone, decision: bypass, include: [{{everyone: true}}]}}
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[VerifyingOrigin]:
    o = VerifyingOrigin("http://127.0.0.1:1/unused", "unused").start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, origin: VerifyingOrigin) -> Iterator[Zerogate]:
    server = Zerogate(tmp_path_factory.mktemp("front"), free_port(), free_port())
    server.listen_extra = "fast_path: true, header_timeout: 3s"
    server.apply(BODY.format(port=origin.port))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def exchange(port: int, data: bytes, within: float = 10) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def echoed(response: bytes) -> dict[str, object]:
    """The JSON body the verifying origin answers with (the request it saw)."""
    body = response.split(b"\r\n\r\n", 1)[1]
    return dict(json.loads(body))


SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: open.localhost\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    b"GET /admin HTTP/1.1\r\nHost: open.localhost\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: open.localhost\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n"
    b"abcGET /x HTTP/1.1\r\nHost: open.localhost\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: open.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: open.localhost\r\nBad Header: x\r\n\r\n",
]


@pytest.mark.parametrize("attack", SMUGGLING)
def test_smuggling_and_bad_framing_get_one_400(
    zg: Zerogate, origin: VerifyingOrigin, attack: bytes
) -> None:
    """Attack: CL+TE, two lengths, a bad chunk size, a bad header name; each gets a single
    400 and the connection ends: no second request reaches the origin."""
    before = len(origin.seen)
    out = exchange(zg.port, attack)
    assert out.startswith(b"HTTP/1.1 400"), out[:200]
    assert out.count(b"HTTP/1.1 ") == 1, out[:400]
    assert not any(r["path"] in ("/admin", "/x") for r in origin.seen[before:])


def test_pipelined_requests_are_answered_in_order(zg: Zerogate) -> None:
    requests = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: open.localhost\r\n%b\r\n"
        % (n, b"Connection: close\r\n" if n == 4 else b"")
        for n in range(5)
    )
    out = exchange(zg.port, requests)
    assert out.count(b"HTTP/1.1 200") == 5, out[:500]
    positions = [out.find(b'"path": "/p%d"' % n) for n in range(5)]
    assert all(p > 0 for p in positions) and positions == sorted(positions), positions


def test_a_client_cannot_claim_another_address_through_the_relay_header(zg: Zerogate) -> None:
    """Attack: a client sends the front's own relay header (fast path and relayed path): the
    origin sees the socket's address, and never the header."""
    spoof = b"Zerogate-Front-Client: 00 6.6.6.6 1\r\n"
    fast = exchange(
        zg.port,
        b"GET /f HTTP/1.1\r\nHost: open.localhost\r\n" + spoof + b"Connection: close\r\n\r\n",
    )
    relayed = exchange(
        zg.port,
        b"POST /r HTTP/1.1\r\nHost: open.localhost\r\n"
        + spoof
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    for out in (fast, relayed):
        assert out.startswith(b"HTTP/1.1 200"), out[:300]
        seen = echoed(out)
        headers = {k.lower(): v for k, v in dict(seen["headers"]).items()}  # type: ignore[call-overload]
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert "zerogate-front-client" not in headers
        assert b"6.6.6.6" not in out


def test_keep_alive_serves_many_requests_on_one_connection(zg: Zerogate) -> None:
    with socket.create_connection(("127.0.0.1", zg.port), timeout=10) as sock:
        for n in range(20):
            sock.sendall(b"GET /k%d HTTP/1.1\r\nHost: open.localhost\r\n\r\n" % n)
            data = b""
            while b'"path": "/k%d"' % n not in data:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {n} requests"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")


def test_a_large_relayed_upload_and_a_fast_one_arrive_whole(zg: Zerogate) -> None:
    big = b"x" * (3 * 1024 * 1024)
    chunked = b"".join(
        b"%x\r\n%b\r\n" % (len(part), part)
        for part in (big[i : i + 65536] for i in range(0, len(big), 65536))
    )
    out = exchange(
        zg.port,
        b"POST /up HTTP/1.1\r\nHost: open.localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked + b"0\r\n\r\n",
        within=30,
    )
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    assert echoed(out)["path"] == "/up"
    small = b"y" * 1000
    out = exchange(
        zg.port,
        b"POST /s HTTP/1.1\r\nHost: open.localhost\r\nContent-Length: 1000\r\n"
        b"Connection: close\r\n\r\n" + small,
    )
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
