"""Connection limits and process supervision of a real ``zerogate server`` (SPEC "HTTP
contract": header timeout, idle timeout, a connection cap, 400 for bad framing; issue #18:
workers die with their main process, are restarted when killed, and a server that cannot bind
its listeners does not start).

The server here runs with short limits (``listen.header_timeout: 4s``, ``idle_timeout: 6s``,
``max_connections: 16``) so the tests need not wait 10 s / 60 s; the defaults are checked on
the model. Each test opens raw sockets and waits for the server to close them, with a bound.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerogate.model.objects import Listen
from zerogate.server.run import METRICS_PREFIX, can_bind, metrics_folder
from zg_harness import ZEROGATE, VerifyingOrigin, Zerogate, free_port, wait_until

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 4.0
IDLE_TIMEOUT = 6.0
CAP = 16
LIMITS = (
    f"header_timeout: {HEADER_TIMEOUT:g}s, idle_timeout: {IDLE_TIMEOUT:g}s, max_connections: {CAP}"
)


def body(origin_port: int) -> str:
    return f"""
applications:
  - name: open
    domain: open.localhost
    origin: http://127.0.0.1:{origin_port}
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
    server = Zerogate(tmp_path_factory.mktemp("conn"), free_port(), free_port())
    server.listen_extra = LIMITS
    server.apply(body(origin.port))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def seconds_until_closed(sock: socket.socket, within: float) -> float:
    """Read until the server closes ``sock``; how long that took (fails after ``within``)."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


GET = b"GET / HTTP/1.1\r\nHost: open.localhost\r\n\r\n"


def answered(port: int, within: float = 10) -> bytes:
    with connect(port) as sock:
        sock.settimeout(within)
        sock.sendall(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_the_limits_default_to_the_spec() -> None:
    listen = Listen()
    assert (listen.header_timeout, listen.idle_timeout) == ("10s", "60s")
    assert listen.max_connections >= 256


def test_a_connection_that_never_speaks_is_closed_after_the_header_timeout(zg: Zerogate) -> None:
    """Attack (#10.10): 400 silent connections used to be held for ever."""
    start = time.monotonic()
    socks = [connect(zg.port) for _ in range(5)]
    took = []
    for s in socks:
        seconds_until_closed(s, HEADER_TIMEOUT + 6)
        took.append(time.monotonic() - start)
    for s in socks:
        s.close()
    assert all(HEADER_TIMEOUT - 1.5 < t < HEADER_TIMEOUT + 5 for t in took), took


def test_a_half_sent_or_trickled_head_is_closed_after_the_header_timeout(zg: Zerogate) -> None:
    """Attack (#10.10): slowloris: a head that never ends, or arrives a byte at a time."""
    with connect(zg.port) as half:
        half.sendall(b"GET / HTTP/1.1\r\nHost: open.localhost\r\nX-A: 1\r\n")
        assert seconds_until_closed(half, HEADER_TIMEOUT + 6) < HEADER_TIMEOUT + 5
    with connect(zg.port) as trickle:
        start = time.monotonic()
        closed = False
        for byte in b"GET / HTTP/1.1\r\nHost: open.localhost\r\n" + b"X" * 200:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)  # the attacker's pace, not a wait for the server
            if time.monotonic() - start > HEADER_TIMEOUT + 5:
                break
        if not closed:
            seconds_until_closed(trickle, 2)
        assert time.monotonic() - start < HEADER_TIMEOUT + 5


def test_an_idle_keep_alive_connection_is_closed(zg: Zerogate) -> None:
    with connect(zg.port) as sock:
        sock.sendall(GET)
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        # at most the idle timeout (granian's header timer, which also runs between
        # requests, may close it sooner)
        assert seconds_until_closed(sock, IDLE_TIMEOUT + 6) < IDLE_TIMEOUT + 5


def test_a_flood_of_silent_connections_does_not_stop_the_edge(zg: Zerogate) -> None:
    """Attack (#10.10): more silent connections than the cap; a real client is still answered,
    well before the header timeout would have freed a place."""
    flood = [connect(zg.port) for _ in range(CAP * 3)]
    try:
        time.sleep(0.2)  # the attacker's pace: the flood is in place before the client comes
        start = time.monotonic()
        reply = answered(zg.port, within=HEADER_TIMEOUT + 6)
        took = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
        assert took < HEADER_TIMEOUT, took

        def some_flood_closed() -> bool:
            for s in flood:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        return True
                except BlockingIOError:
                    continue
                except OSError:
                    return True
            return False

        # near the cap, quiet connections make room before their header timeout is up
        wait_until(some_flood_closed, timeout=max(0.1, HEADER_TIMEOUT - (time.monotonic() - start)))
    finally:
        for s in flood:
            s.close()


BAD_CHUNKED = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a size that is not hex
    b"3\r\nabcdef\r\n0\r\n\r\n",  # more data than the size
    b"-1\r\nabc\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("chunks", BAD_CHUNKED)
def test_bad_chunked_framing_is_a_400(zg: Zerogate, origin: VerifyingOrigin, chunks: bytes) -> None:
    """Attack (#10.10): a malformed chunked body got 500."""
    with connect(zg.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: open.localhost\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/plain\r\nConnection: close\r\n\r\n" + chunks
        )
        sock.settimeout(10)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert not data.startswith(b"HTTP/1.1 5")


# ---------------------------------------------------------------------------- supervision


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found |= {int(p) for p in text.split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def own(tmp_path: Path, origin: VerifyingOrigin) -> Iterator[Zerogate]:
    server = Zerogate(tmp_path, free_port(), free_port())
    server.apply(body(origin.port))
    try:
        yield server
    finally:
        server.stop()
        if server.proc is not None:
            for pid in server.extra.get("workers", ()):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


def test_workers_die_with_a_killed_main_process_and_a_restart_gets_the_port(
    own: Zerogate,
) -> None:
    """#18.1: after ``kill -9`` of the main process its worker used to keep serving."""
    own.start()
    assert own.proc is not None
    workers = wait_until(lambda: children(own.proc.pid) if own.proc else None, timeout=10)
    own.extra["workers"] = workers
    assert answered(own.port).startswith(b"HTTP/1.1 200")
    own.proc.kill()
    own.proc.wait(10)
    wait_until(lambda: not any(alive(w) for w in workers), timeout=10)
    wait_until(lambda: can_bind(f"127.0.0.1:{own.port}") is None, timeout=10)
    own.start()  # a new server binds and serves alone
    assert answered(own.port).startswith(b"HTTP/1.1 200")


def test_a_server_that_cannot_bind_its_port_exits_with_an_error(own: Zerogate) -> None:
    """#18.1: fail closed at start instead of sharing the port with whoever holds it."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as granian's
        holder.bind(("127.0.0.1", own.port))
        holder.listen(1)
        result = subprocess.run(
            [*ZEROGATE, "server", "-c", str(own.config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=own.workdir,
            env={**os.environ},
            check=False,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{own.port}" in result.stderr


def test_a_killed_worker_is_replaced_and_the_server_keeps_serving(own: Zerogate) -> None:
    """#18.2: a worker killed as by the OOM killer took the whole server down."""
    own.start()
    assert own.proc is not None
    first = wait_until(lambda: children(own.proc.pid) if own.proc else None, timeout=10)
    own.extra["workers"] = set(first)
    assert answered(own.port).startswith(b"HTTP/1.1 200")
    for pid in first:
        os.kill(pid, signal.SIGKILL)

    def replaced() -> set[int] | None:
        assert own.proc is not None and own.proc.poll() is None, own.log_text()[-2000:]
        now = {p for p in children(own.proc.pid) if alive(p)} - first
        return now or None

    second = wait_until(replaced, timeout=20)
    own.extra["workers"] |= second

    def serves() -> bool:
        try:
            return answered(own.port, within=5).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_until(serves, timeout=20, interval=0.2)
    assert own.proc.poll() is None


def test_the_workers_metrics_folder_is_new_and_old_ones_of_dead_servers_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workers N``: a fresh private folder per server start; a folder left by a server
    that was killed (its pid gone) is removed, one of a running server is not; with one
    worker the variable is unset (values stay in the process)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "an operator's"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"{METRICS_PREFIX}{dead.pid}-abc"
    running = tmp_path / f"{METRICS_PREFIX}{os.getppid()}-def"
    for folder in (left, running):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"x")
    made = metrics_folder(2)
    assert made is not None and os.environ["PROMETHEUS_MULTIPROC_DIR"] == made
    assert Path(made).parent == tmp_path and not list(Path(made).iterdir())
    assert Path(made).stat().st_mode & 0o077 == 0
    assert not left.exists() and running.exists()
    assert metrics_folder(1) is None
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
