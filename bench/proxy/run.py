"""Proxy benchmark: the same origin reached directly, through nginx, and through zerogate.

Target (from the issue): wrk (keep-alive, small responses) against (a) the origin directly,
(b) nginx ``proxy_pass`` to it, (c) zerogate with a valid session; requests/s, p50 and p99 for
each and the ratio zerogate/nginx. **Ratio >= 0.35 with one worker each, and p99 added latency
<= 2 ms at half the maximum rate.** Two workers are reported too, not targeted.

Run from the repository root::

    .venv/bin/python bench/proxy/run.py                  # workers 1 and 2, 10 s per measurement
    .venv/bin/python bench/proxy/run.py --quick          # smoke run, 3 s per measurement
    .venv/bin/python bench/proxy/run.py --workers 1 --json
    .venv/bin/python bench/proxy/run.py --py-spy /tmp/pyspy/bin/py-spy  # + a profile

Everything it starts (two nginx instances, ``zerogate server``, wrk, py-spy) runs in its own
process group and is stopped on exit, on errors and on Ctrl-C. See ``bench/proxy/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import linecache
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT / "src") not in sys.path:  # runs without an installed package too
    sys.path.insert(0, str(_ROOT / "src"))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from zerogate.identity import issue_app_token  # noqa: E402
from zerogate.model import load_file  # noqa: E402
from zerogate.runtime import audience_tag, ensure_keyset  # noqa: E402
from zerogate.store import Store, storage_url  # noqa: E402

TARGET_RATIO = 0.5  # zerogate req/s ÷ nginx req/s, one worker each (issue #12)
TARGET_ADDED_P99_MS = 1.0  # zerogate p99 − direct-origin p99 at half zerogate's maximum rate
TARGET_WORKERS = 1  # the targets apply to this worker count; others are reported only

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
APP_NAME = "bench"
APP_HOST = "bench.localhost"
BYPASS_APP = "bench-open"
BYPASS_HOST = "open.localhost"
SERVICE_TOKEN = "bench-robot"
#: the reference probe (a minimal uvloop + httptools proxy, not product code), relative to the
#: repository root; ``--probe`` names another path
PROBE = Path("../shared/probes/lean_proxy.py")
EMAIL = "bench@example.com"
ORIGIN_BODY = b"ok"

err = Console(stderr=True)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {proc.returncode} before listening"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what}: nothing listens on port {port} after {timeout} s"
                ) from None
            time.sleep(0.05)


class Processes:
    """Every long-running process the benchmark starts, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: Sequence[str], *, log: Path, cwd: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self.procs.append((name, proc))
        return proc

    def pgids(self) -> set[int]:
        return {proc.pid for _, proc in self.procs if proc.poll() is None}

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        stop_group(proc, sig)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        while self.procs:
            _, proc = self.procs.pop()
            stop_group(proc, signal.SIGTERM)


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Signal the process group ``proc`` leads, wait, then SIGKILL whatever is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their master
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _proc_stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _proc_stat_fields(pid: int) -> list[str]:
    return _stat_fields(Path(f"/proc/{pid}/stat"))


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc ``stat`` file from "state" on (the name may hold spaces)."""
    text = path.read_text()
    return text[text.rindex(")") + 2 :].split()


# ---------------------------------------------------------------- CPU accounting


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU time all processes of the machine used so far (from /proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _our_seconds(pgids: set[int]) -> float:
    """CPU time of this process, its reaped children (wrk) and our live process groups."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fields = _proc_stat_fields(int(entry))
        except OSError:
            continue
        if int(fields[2]) in pgids:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


class CpuWatch:
    """How much CPU processes we did not start used while a measurement ran (in cores)."""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs

    def __enter__(self) -> CpuWatch:
        self.pgids = self.procs.pgids()
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.ours0 = _our_seconds(self.pgids)
        self.other_cores = 0.0
        self.ours_cores = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.t0, 1e-9)
        busy = _busy_seconds() - self.busy0
        ours = _our_seconds(self.pgids) - self.ours0
        self.ours_cores = ours / wall
        self.other_cores = max(busy - ours, 0.0) / wall


def process_seconds(pgid: int) -> dict[int, float]:
    """CPU seconds so far of each process in a process group."""
    out: dict[int, float] = {}
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            fields = _proc_stat_fields(pid)
            out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


class ProcCpu:
    """Cores each process of one process group used while the block ran (largest first)."""

    def __init__(self, pgid: int | None) -> None:
        self.pgid = pgid
        self.cores: list[float] = []

    def __enter__(self) -> ProcCpu:
        self.t0 = time.monotonic()
        self.before = process_seconds(self.pgid) if self.pgid else {}
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.pgid:
            return
        wall = max(time.monotonic() - self.t0, 1e-9)
        after = process_seconds(self.pgid)
        used = [(sec - self.before.get(pid, 0.0)) / wall for pid, sec in after.items()]
        self.cores = sorted((c for c in used if c >= 0.005), reverse=True)


def wait_quiet(procs: Processes, below: float, max_wait: float) -> None:
    """Wait, at most ``max_wait`` s, for a second in which processes we did not start use
    less than ``below`` cores (a shared machine: other people's test runs come and go)."""
    if max_wait <= 0:
        return
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        with CpuWatch(procs) as cpu:
            time.sleep(1.0)
        if cpu.other_cores < below:
            if waited:
                err.print(f"    quiet now ({cpu.other_cores:.2f} cores used by others)")
            return
        if time.monotonic() >= deadline:
            err.print(
                f"    [yellow]still busy ({cpu.other_cores:.2f} cores used by others): "
                "measuring anyway[/]"
            )
            return
        if not waited:
            err.print(
                f"    waiting for a quieter machine ({cpu.other_cores:.2f} cores used by others)"
            )
            waited = True


# ---------------------------------------------------------------- servers


NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
{body}
}}
"""

ORIGIN_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "ok";
        }}
    }}"""

PROXY_SERVER = """\
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}"""


def start_nginx(
    procs: Processes, name: str, workdir: Path, *, workers: int, body: str, port: int
) -> subprocess.Popen[bytes]:
    folder = workdir / name
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_COMMON.format(workers=workers, dir=folder, body=body))
    argv = [NGINX, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(conf)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejects the {name} configuration:\n{check.stderr}")
    proc = procs.start(name, argv, log=folder / "stdout.log", cwd=folder, env=dict(os.environ))
    wait_for_port(port, proc, f"nginx ({name})", timeout=15)
    return proc


ZEROGATE_CONFIG = """\
portal: auth.localhost:{port}
listen: {{http: "127.0.0.1:{port}"{listen_extra}}}
storage: sqlite:///zerogate.db
# the PIN login needs a way to send mail (the server refuses to start otherwise)
email: {{outbox: true}}
identity_providers:
  - {{name: otp, type: onetimepin}}
service_tokens:
  - {{name: {token}, duration: 8760h}}
applications:
  - name: {app}
    domain: {host}
    origin: http://127.0.0.1:{origin}
    policies:
      - name: robots
        decision: service_auth
        include: [{{service_token: [{token}]}}]
      - name: staff
        decision: allow
        include: [{{email_domain: [example.com]}}]
  - name: {bypass_app}
    domain: {bypass_host}
    origin: http://127.0.0.1:{origin}
    policies:
      - name: open
        decision: bypass
        include: [{{everyone: true}}]
"""


@dataclass
class Zerogate:
    proc: subprocess.Popen[bytes]
    port: int
    cookie: str  # "name=token"
    folder: Path
    token_headers: list[str] = field(default_factory=list)  # "Name: value" of the service token


async def mint_session(config: Path) -> tuple[str, str]:
    """A valid session cookie for the benchmark application, signed with the store's keys."""
    settings = load_file(config).config.settings()
    store = await Store.open(storage_url(settings.storage, base_dir=config.parent))
    try:
        keyset = await ensure_keyset(store)
    finally:
        await store.close()
    token = issue_app_token(
        keyset,
        issuer=f"https://{settings.portal}",
        audience=audience_tag(APP_NAME),
        email=EMAIL,
        sub=EMAIL,
        idp="otp",
        ttl_seconds=3600,
        now=time.time(),
    )
    # the name pipeline.app_cookie() gives the application (not imported: it needs a CompiledApp)
    return f"__zg_{audience_tag(APP_NAME)[:16]}", token


def start_zerogate(
    procs: Processes,
    workdir: Path,
    *,
    workers: int,
    origin_port: int,
    port: int,
    fast_path: bool = False,
) -> Zerogate:
    folder = workdir / f"zerogate-{workers}"
    folder.mkdir()
    config = folder / "zerogate.yaml"
    config.write_text(
        ZEROGATE_CONFIG.format(
            port=port,
            origin=origin_port,
            app=APP_NAME,
            host=APP_HOST,
            token=SERVICE_TOKEN,
            bypass_app=BYPASS_APP,
            bypass_host=BYPASS_HOST,
            listen_extra=", fast_path: true" if fast_path else "",
        )
    )
    env = {**os.environ, "NO_COLOR": "1", "ZEROGATE_LOG_LEVEL": "WARNING"}
    zg = [sys.executable, "-m", "zerogate"]
    applied = subprocess.run(
        [*zg, "apply", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=120,
        check=False,
    )
    if applied.returncode != 0:
        raise RuntimeError(f"zerogate apply failed:\n{applied.stdout}{applied.stderr}")
    created = subprocess.run(
        [*zg, "service-token", "create", SERVICE_TOKEN, "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise RuntimeError(f"zerogate service-token create failed:\n{created.stderr}")
    token_headers = [f"{k}: {v}" for k, v in json.loads(created.stdout)["headers"].items()]
    # the keys are created (or read) before the server starts, so every worker loads them
    name, token = asyncio.run(mint_session(config))
    proc = procs.start(
        f"zerogate-{workers}",
        [*zg, "server", "-c", str(config), "--workers", str(workers)],
        log=folder / "server.log",
        cwd=folder,
        env=env,
    )
    try:
        wait_for_port(port, proc, "zerogate server", timeout=60)
    except (RuntimeError, TimeoutError) as exc:
        log = (folder / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}\n--- server.log ---\n{log}") from None
    return Zerogate(proc, port, f"{name}={token}", folder, token_headers)


def fetch(
    port: int, host: str | None, cookie: str | None, extra: Sequence[str] = ()
) -> tuple[int, bytes, dict[str, str]]:
    """One GET / (no redirects followed): status, body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = dict(line.split(": ", 1) for line in extra)
    if host:
        headers["Host"] = host
    if cookie:
        headers["Cookie"] = cookie
    try:
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def verify_origin_answer(
    port: int, host: str | None, cookie: str | None, what: str, extra: Sequence[str] = ()
) -> None:
    status, body, headers = fetch(port, host, cookie, extra)
    if status != 200 or body != ORIGIN_BODY:
        where = headers.get("location", "")
        raise RuntimeError(
            f"{what} did not answer with the origin's 200 {ORIGIN_BODY!r}: "
            f"got {status} {body[:200]!r} {where}"
        )


# ---------------------------------------------------------------- wrk (closed loop, max rate)


@dataclass
class WrkResult:
    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    avg_ms: float
    max_ms: float
    non_2xx_3xx: int
    socket_errors: int
    other_cpu_cores: float = 0.0
    #: cores each process of the measured proxy used while measured (largest first)
    proc_cpu: list[float] = field(default_factory=list)
    #: cores the origin's processes used meanwhile
    origin_cpu: float = 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """CPU time the measured proxy's processes spent per request, in µs: robust to other
        people's load on a shared machine (a busy machine slows the rate, not this figure)."""
        return sum(self.proc_cpu) * 1e6 / self.rps if self.rps else 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text)
    lat = re.search(
        r"Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)", text
    )
    dist = {
        int(m.group(1)): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    }
    if rps is None or total is None or lat is None or len(dist) != 4:
        raise RuntimeError(f"cannot read wrk's output:\n{text}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1e3,
        p50_ms=dist[50],
        p75_ms=dist[75],
        p90_ms=dist[90],
        p99_ms=dist[99],
        avg_ms=_ms(lat.group(1), lat.group(2)),
        max_ms=_ms(lat.group(5), lat.group(6)),
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def run_wrk(
    port: int,
    *,
    host: str | None,
    cookie: str | None,
    duration: float,
    connections: int,
    threads: int,
    path: str = "/",
    extra: Sequence[str] = (),
) -> WrkResult:
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    for line in extra:
        argv += ["-H", line]
    argv.append(f"http://127.0.0.1:{port}{path}")
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=duration + 60)
    finally:
        stop_group(proc, signal.SIGTERM, grace=2)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{out.decode(errors='replace')}")
    return parse_wrk(out.decode(errors="replace"))


# ---------------------------------------------------------------- open loop (fixed rate)


@dataclass
class RateResult:
    rate: float  # requests per second asked for
    achieved: float  # responses per second in the measured window
    sent: int
    completed: int
    unfinished: int
    statuses: dict[int, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    send_lag_p99_ms: float  # how late the generator itself wrote requests (its own noise)
    other_cpu_cores: float = 0.0


def _response_length(buf: bytearray) -> int:
    """Length of the first complete HTTP/1.1 response in ``buf``, or -1 if not all there."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return -1
    head = bytes(buf[:end]).lower()
    start = end + 4
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if m is not None:
        total = start + int(m.group(1))
        return total if len(buf) >= total else -1
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        pos = start
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return -1
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            if size == 0:
                fin = buf.find(b"\r\n\r\n", eol)  # no trailers expected: "0\r\n\r\n"
                return fin + 4 if fin >= 0 else -1
            pos = eol + 2 + size + 2
            if len(buf) < pos:
                return -1
    if head.startswith((b"http/1.1 204", b"http/1.1 304")):
        return start
    raise RuntimeError(f"response without a length: {head[:200]!r}")


class _Conn(asyncio.Protocol):
    def __init__(self, gen: OpenLoop) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.gen.idle.append(self)

    def send(self, due: float, now: float) -> None:
        assert self.transport is not None
        self.due = due
        self.busy = True
        self.gen.lags.append(now - due)
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.busy:
            n = _response_length(self.buf)
            if n < 0:
                return
            status = int(self.buf[9:12])
            del self.buf[:n]
            self.busy = False
            self.gen.completed(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class OpenLoop:
    """A fixed request rate over a pool of keep-alive connections, latency measured from the
    time each request was *due* (wrk2's method): a slow response delays the requests queued
    behind it and that wait counts, so a stall is not hidden by the generator slowing down."""

    def __init__(self, port: int, host: str, cookie: str | None, connections: int) -> None:
        lines = [f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: zerogate-bench\r\n"]
        if cookie:
            lines.append(f"Cookie: {cookie}\r\n")
        self.request = ("".join(lines) + "\r\n").encode("latin-1")
        self.port = port
        self.connections = connections
        self.idle: deque[_Conn] = deque()
        self.queue: deque[float] = deque()
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.window = (0.0, 0.0)
        self.sent = 0
        self.lost_count = 0

    def completed(self, conn: _Conn, status: int) -> None:
        now = time.monotonic()
        if self.window[0] <= conn.due < self.window[1]:
            self.latencies.append(now - conn.due)
            self.statuses[status] += 1
        if self.queue:
            conn.send(self.queue.popleft(), now)
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        self.lost_count += 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    async def run(self, rate: float, warmup: float, duration: float) -> RateResult:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(self.connections):
            _, proto = await loop.create_connection(lambda: _Conn(self), "127.0.0.1", self.port)
            conns.append(proto)
        interval = 1.0 / rate
        start = time.monotonic() + 0.05
        self.window = (start + warmup, start + warmup + duration)
        total = int((warmup + duration) * rate)
        i = 0
        while i < total:
            now = time.monotonic()
            due = start + i * interval
            while due <= now and i < total:
                self.queue.append(due)
                i += 1
                due = start + i * interval
            while self.queue and self.idle:
                self.idle.popleft().send(self.queue.popleft(), now)
            self.sent = i
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
        deadline = time.monotonic() + 5
        while (self.queue or any(c.busy for c in conns)) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls two conditions, briefly
            await asyncio.sleep(0.01)
        unfinished = len(self.queue) + sum(c.busy for c in conns)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        lat = sorted(self.latencies)
        lags = sorted(self.lags)
        in_window = int(duration * rate)
        return RateResult(
            rate=rate,
            achieved=len(lat) / duration,
            sent=in_window,
            completed=len(lat),
            unfinished=unfinished + self.lost_count,
            statuses=dict(self.statuses),
            p50_ms=_pct(lat, 50) * 1e3,
            p90_ms=_pct(lat, 90) * 1e3,
            p99_ms=_pct(lat, 99) * 1e3,
            p999_ms=_pct(lat, 99.9) * 1e3,
            max_ms=(lat[-1] if lat else float("nan")) * 1e3,
            send_lag_p99_ms=_pct(lags, 99) * 1e3,
        )


def _pct(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def run_fixed_rate(
    port: int,
    *,
    host: str,
    cookie: str | None,
    rate: float,
    duration: float,
    warmup: float,
    connections: int,
) -> RateResult:
    gen = OpenLoop(port, host, cookie, connections)
    return asyncio.run(gen.run(rate, warmup, duration))


# ---------------------------------------------------------------- profiling (optional)


def thread_cpu(pgid: int) -> dict[tuple[int, int, str], float]:
    """CPU seconds so far of every thread of every process in a process group."""
    out: dict[tuple[int, int, str], float] = {}
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    base = Path(f"/proc/{pid}/task/{tid}")
                    fields = _stat_fields(base / "stat")
                    name = (base / "comm").read_text().strip()
                    out[(pid, int(tid), name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def profile_zerogate(
    pyspy: str, zg: Zerogate, *, duration: float, connections: int, threads: int, top: int
) -> dict[str, Any]:
    """Sample zerogate's workers with py-spy (only the thread holding the GIL, so: where the
    Python CPU time goes) while wrk drives them at full load; also each thread's CPU use."""
    out = zg.folder / "profile.txt"
    seconds = max(int(duration), 1)
    argv = [pyspy, "record", "--pid", str(zg.proc.pid), "--subprocesses", "--gil"]
    argv += ["--nonblocking", "--format", "raw", "--rate", "400", "--duration", str(seconds)]
    argv += ["--output", str(out)]
    spy = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        time.sleep(1.0)  # py-spy attaches to every process first
        before = thread_cpu(zg.proc.pid)
        t0 = time.monotonic()
        res = run_wrk(
            zg.port,
            host=APP_HOST,
            cookie=zg.cookie,
            duration=seconds + 1,
            connections=connections,
            threads=threads,
        )
        wall = time.monotonic() - t0
        after = thread_cpu(zg.proc.pid)
        spy_out, _ = spy.communicate(timeout=duration + 60)
    finally:
        stop_group(spy, signal.SIGINT, grace=5)
    if not out.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy_out.decode(errors='replace')}")
    summary = summarise_stacks(out.read_text(), top)
    busy = [
        (f"{name} (pid {pid}, tid {tid})", (cpu - before.get((pid, tid, name), 0.0)) / wall)
        for (pid, tid, name), cpu in after.items()
    ]
    summary["threads_cpu"] = sorted(
        ((name, cores) for name, cores in busy if cores >= 0.005), key=lambda kv: -kv[1]
    )
    summary["rps_while_sampled"] = res.rps
    return summary


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

ACCESS_LOG = "access log (record, batch writer, aiosqlite, SQLAlchemy)"
WATCHER = "client-disconnect watcher task (_Exchange.watch/_watch)"
GRANIAN = "granian ⇄ asyncio (ASGI receive/send in Rust, call_soon_threadsafe wake-ups)"
AIOHTTP = "aiohttp client (request, connection pool, response parsing)"
FORWARDING = "zerogate forwarding (header lists, relay), own code"
PIPELINE = "zerogate pipeline (request, route, session, decide, app)"
LOOP = "asyncio event loop (select, tasks, callbacks)"

#: what a sample is charged to: the first category (in this order) with a frame in its stack;
#: a sample whose innermost frame is a zerogate line awaiting ASGI ``receive``/``send`` is
#: time spent in granian's native code and goes to GRANIAN (checked after WATCHER)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (ACCESS_LOG, ("accesslog.py", "Services.log", "write_access", "aiosqlite/", "sqlalchemy/")),
    (WATCHER, ("_Exchange.watch", "_Exchange._watch")),
    (AIOHTTP, ("aiohttp/",)),
    (GRANIAN, ("call_soon_threadsafe", "_write_to_self", "_read_from_self", "_cbsched")),
    (
        FORWARDING,
        ("zerogate/edge/proxy.py", "zerogate/net/pool.py", "zerogate/net/headers.py"),
    ),
    (PIPELINE, ("zerogate/",)),
    (LOOP, ("asyncio/", "selectors.py")),
)
_ASGI_AWAIT = re.compile(r"\bawait\s+(?:\w+\.)*(?:send|receive)\(")


@dataclass(frozen=True)
class _Frame:
    name: str  # "function (short/file.py)"
    file: str
    line: int

    def awaits_asgi(self) -> bool:
        """Is this a zerogate line awaiting the server's ``receive()`` / ``send()``?"""
        if "zerogate/" not in self.name or not self.line:
            return False
        return bool(_ASGI_AWAIT.search(linecache.getline(self.file, self.line)))


def _frame(frame: str) -> _Frame:
    m = _FRAME.match(frame.strip())
    if not m:
        return _Frame(frame.strip(), "", 0)
    file = short = m.group("file")
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3"):
        if marker in short:
            short = short.split(marker, 1)[1]
            break
    return _Frame(f"{m.group('func')} ({short})", file, int(m.group("line") or 0))


def summarise_stacks(raw: str, top: int) -> dict[str, Any]:
    """Own-time shares per function and per category from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            _frame(f)
            for f in stack.split(";")
            if not f.startswith(("process ", "thread "))  # --subprocesses / --threads labels
        ]
        # a worker is forked from ``zerogate server``: drop the frames above its event loop
        loop_at = max((i for i, f in enumerate(frames) if "._run_once " in f.name), default=0)
        frames = frames[loop_at:]
        total += n
        own[frames[-1].name if frames else "(no Python frame)"] += n
        names = [f.name for f in frames]
        category = "other"
        for cat, patterns in CATEGORIES:
            if cat == AIOHTTP and frames and frames[-1].awaits_asgi():
                category = GRANIAN
                break
            if any(p in name for name in names for p in patterns):
                category = cat
                break
        cats[category] += n
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "categories": [(name, share(n)) for name, n in cats.most_common()],
        "own": [(name, share(n)) for name, n in own.most_common(top)],
    }


# ---------------------------------------------------------------- the run


@dataclass
class Round:
    workers: int
    direct: WrkResult
    nginx: WrkResult
    zerogate: WrkResult
    ratio: float
    half_rate: float = 0.0
    fixed: dict[str, RateResult] = field(default_factory=dict)
    added_p99_ms: float = float("nan")
    nginx_added_p99_ms: float = float("nan")
    profile: dict[str, Any] | None = None
    #: the other rows of the wrk table: "probe", "zerogate token", "zerogate bypass"
    rows: dict[str, WrkResult] = field(default_factory=dict)
    probe_ratio: float = float("nan")  # zerogate (session) req/s ÷ the lean probe's
    rps_runs: dict[str, list[float]] = field(default_factory=dict)  # every wrk run
    fixed_p99_runs: dict[str, list[float]] = field(default_factory=dict)  # every fixed-rate run


def machine_info() -> dict[str, Any]:
    def version(cmd: list[str], pattern: str) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "?"
        m = re.search(pattern, res.stdout + res.stderr)
        return m.group(1) if m else "?"

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def pkg(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version([NGINX, "-v"], r"nginx/(\S+)"),
        "wrk": version([WRK, "-v"], r"wrk (\S+)"),
        "granian": pkg("granian"),
        "aiohttp": pkg("aiohttp"),
        "zerogate": pkg("zerogate"),
        "zerogate_tree": source_state(),
        "loadavg_start": os.getloadavg()[0],
    }


def source_state() -> str:
    """The commit measured, and whether ``src`` had uncommitted changes (read-only git)."""
    git = ["git", "--no-optional-locks", "-C", str(_ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if head.returncode != 0:
        return "?"
    changed = [line for line in dirty.stdout.splitlines() if line.strip()]
    return head.stdout.strip() + (
        f" + uncommitted changes in src ({len(changed)} files)" if changed else ""
    )


def start_probe(
    procs: Processes, workdir: Path, probe: Path, origin_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """The lean reference proxy (one process: it has no worker option)."""
    port = free_port()
    folder = workdir / f"probe-{port}"
    folder.mkdir()
    proc = procs.start(
        "probe",
        [sys.executable, str(probe), str(port), str(origin_port)],
        log=folder / "probe.log",
        cwd=folder,
        env=dict(os.environ),
    )
    wait_for_port(port, proc, "the lean probe", timeout=15)
    return proc, port


@dataclass
class Target:
    port: int
    host: str | None
    cookie: str | None
    pgid: int | None  # the proxy's process group (None: the origin itself)
    extra: list[str] = field(default_factory=list)


def measure_workers(
    procs: Processes,
    workdir: Path,
    workers: int,
    origin_port: int,
    args: argparse.Namespace,
    origin_pgid: int,
) -> Round:
    proxy_port, zg_port = free_port(), free_port()
    err.print(f"[bold]workers = {workers}[/]: starting nginx proxy, the probe and zerogate")
    proxy = start_nginx(
        procs,
        f"proxy-{workers}",
        workdir,
        workers=workers,
        body=PROXY_SERVER.format(origin=origin_port, port=proxy_port),
        port=proxy_port,
    )
    probe: subprocess.Popen[bytes] | None = None
    probe_port = 0
    if args.probe_path is not None:
        probe, probe_port = start_probe(procs, workdir, args.probe_path, origin_port)
    zg = start_zerogate(
        procs,
        workdir,
        workers=workers,
        origin_port=origin_port,
        port=zg_port,
        fast_path=args.fast_path,
    )
    try:
        verify_origin_answer(origin_port, None, None, "the origin")
        verify_origin_answer(proxy_port, APP_HOST, None, "nginx proxy_pass")
        if probe is not None:
            verify_origin_answer(probe_port, APP_HOST, None, "the lean probe")
        verify_origin_answer(zg_port, APP_HOST, zg.cookie, "zerogate with a session")
        verify_origin_answer(
            zg_port, APP_HOST, None, "zerogate with a service token", zg.token_headers
        )
        verify_origin_answer(zg_port, BYPASS_HOST, None, "zerogate, bypass application")
        status, _, _ = fetch(zg_port, APP_HOST, None)
        if status not in (302, 401):
            raise RuntimeError(f"zerogate let a request without a session through ({status})")

        targets = {
            "direct": Target(origin_port, None, None, None),
            "nginx": Target(proxy_port, APP_HOST, None, proxy.pid),
        }
        if probe is not None:
            targets["probe"] = Target(probe_port, APP_HOST, None, probe.pid)
        targets["zerogate"] = Target(zg_port, APP_HOST, zg.cookie, zg.proc.pid)
        targets["zerogate token"] = Target(zg_port, APP_HOST, None, zg.proc.pid, zg.token_headers)
        targets["zerogate bypass"] = Target(zg_port, BYPASS_HOST, None, zg.proc.pid)
        wrk_opts = {"connections": args.connections, "threads": args.threads}
        results: dict[str, list[WrkResult]] = {k: [] for k in targets}
        for name, t in targets.items():
            err.print(f"  warm-up {name} ({args.warmup:g} s)")
            run_wrk(
                t.port,
                host=t.host,
                cookie=t.cookie,
                extra=t.extra,
                duration=args.warmup,
                **wrk_opts,
            )
        for rnd in range(args.repeat):
            for name, t in targets.items():
                err.print(
                    f"  wrk {name}: -c{args.connections} -t{args.threads} {args.duration:g} s"
                    + (f" (round {rnd + 1}/{args.repeat})" if args.repeat > 1 else "")
                )
                wait_quiet(procs, args.quiet_below, args.quiet_wait)
                with CpuWatch(procs) as cpu, ProcCpu(t.pgid) as mine, ProcCpu(origin_pgid) as o:
                    res = run_wrk(
                        t.port,
                        host=t.host,
                        cookie=t.cookie,
                        extra=t.extra,
                        duration=args.duration,
                        **wrk_opts,
                    )
                res.other_cpu_cores = cpu.other_cores
                res.proc_cpu = mine.cores if t.pgid else o.cores
                res.origin_cpu = sum(o.cores)
                if res.non_2xx_3xx or res.socket_errors:
                    err.print(
                        f"  [yellow]{name}: {res.non_2xx_3xx} non-2xx/3xx responses, "
                        f"{res.socket_errors} socket errors[/]"
                    )
                results[name].append(res)
        # best of N: on a shared machine, interference only ever lowers a rate
        best = {k: max(v, key=lambda r: r.rps) for k, v in results.items()}
        verify_origin_answer(zg_port, APP_HOST, zg.cookie, "zerogate after the load")
        rnd_result = Round(
            rps_runs={k: [r.rps for r in v] for k, v in results.items()},
            workers=workers,
            direct=best["direct"],
            nginx=best["nginx"],
            zerogate=best["zerogate"],
            ratio=best["zerogate"].rps / best["nginx"].rps,
            rows={k: v for k, v in best.items() if k not in ("direct", "nginx", "zerogate")},
        )
        if "probe" in best:
            rnd_result.probe_ratio = best["zerogate"].rps / best["probe"].rps
        fixed_targets = {
            k: (t.port, t.host, t.cookie)
            for k, t in targets.items()
            if k in ("direct", "nginx", "zerogate")
        }

        if not args.no_fixed_rate:
            rate = round(best["zerogate"].rps * 0.5)
            rnd_result.half_rate = rate
            runs: dict[str, list[RateResult]] = {k: [] for k in fixed_targets}
            for rnd in range(args.repeat):
                for name, (port, host, cookie) in fixed_targets.items():
                    err.print(
                        f"  fixed rate {name}: {rate} req/s, {args.duration:g} s (open loop)"
                        + (f" (round {rnd + 1}/{args.repeat})" if args.repeat > 1 else "")
                    )
                    wait_quiet(procs, args.quiet_below, args.quiet_wait)
                    with CpuWatch(procs) as cpu:
                        fixed = run_fixed_rate(
                            port,
                            host=host or APP_HOST,
                            cookie=cookie,
                            rate=rate,
                            duration=args.duration,
                            warmup=1.0,
                            connections=args.connections,
                        )
                    fixed.other_cpu_cores = cpu.other_cores
                    runs[name].append(fixed)
            # best of N again: interference only ever adds latency
            rnd_result.fixed = {k: min(v, key=lambda r: r.p99_ms) for k, v in runs.items()}
            rnd_result.fixed_p99_runs = {k: [r.p99_ms for r in v] for k, v in runs.items()}
            rnd_result.added_p99_ms = (
                rnd_result.fixed["zerogate"].p99_ms - rnd_result.fixed["direct"].p99_ms
            )
            rnd_result.nginx_added_p99_ms = (
                rnd_result.fixed["nginx"].p99_ms - rnd_result.fixed["direct"].p99_ms
            )

        if args.py_spy:
            err.print(f"  profiling zerogate with py-spy at full load ({args.duration:g} s)")
            wait_quiet(procs, args.quiet_below, args.quiet_wait)
            rnd_result.profile = profile_zerogate(
                args.py_spy, zg, duration=args.duration, top=args.profile_top, **wrk_opts
            )
        return rnd_result
    finally:
        procs.stop(zg.proc, signal.SIGINT)
        procs.stop(proxy, signal.SIGTERM)
        if probe is not None:
            procs.stop(probe, signal.SIGTERM)


# ---------------------------------------------------------------- output


def _verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]MISS[/]"


def print_tables(console: Console, machine: dict[str, Any], rounds: list[Round], args: Any) -> None:
    info = Table(title="machine", show_header=False, box=None)
    info.add_column(style="bold")
    info.add_column()
    for key, value in machine.items():
        info.add_row(key, str(value))
    info.add_row(
        "wrk",
        f"{machine['wrk']}: -t{args.threads} -c{args.connections} -d{args.duration:g}s "
        f"--latency, keep-alive; best of {args.repeat} run(s)",
    )
    console.print(info)

    table = Table(title="maximum rate (wrk, closed loop)")
    for col in ("target", "workers", "req/s", "p50 ms", "p99 ms", "÷ nginx", "÷ probe"):
        table.add_column(col, justify="right" if col != "target" else "left")
    table.add_column("CPU per process (cores)", justify="right")
    table.add_column("CPU µs/req", justify="right")
    table.add_column("origin CPU", justify="right")
    table.add_column("other CPU", justify="right")
    table.add_column("target check")
    table.add_column("req/s of every run")
    labels = {"direct": "origin direct", "nginx": "nginx proxy_pass", "probe": "lean probe"}
    for r in rounds:
        rows: list[tuple[str, WrkResult]] = [
            ("direct", r.direct),
            ("nginx", r.nginx),
            *(("probe", v) for k, v in r.rows.items() if k == "probe"),
            ("zerogate", r.zerogate),
            *((k, v) for k, v in r.rows.items() if k != "probe"),
        ]
        probe = r.rows.get("probe")
        for key, res in rows:
            check = ""
            if key == "zerogate":
                if r.workers == TARGET_WORKERS:
                    check = f"{_verdict(r.ratio >= TARGET_RATIO)} (≥ {TARGET_RATIO})"
                else:
                    check = "reported, not targeted"
            flags = " !" if res.non_2xx_3xx or res.socket_errors else ""
            table.add_row(
                labels.get(key, key + (" session" if key == "zerogate" else "")),
                str(r.workers),
                f"{res.rps:,.0f}{flags}",
                f"{res.p50_ms:.2f}",
                f"{res.p99_ms:.2f}",
                f"{res.rps / r.nginx.rps:.2f}",
                f"{res.rps / probe.rps:.2f}" if probe is not None else "-",
                " + ".join(f"{c:.2f}" for c in res.proc_cpu) or "-",
                f"{res.cpu_us_per_request:.0f}" if res.proc_cpu and res.rps else "-",
                f"{res.origin_cpu:.2f}",
                f"{res.other_cpu_cores:.2f}",
                check,
                " ".join(f"{v:,.0f}" for v in r.rps_runs.get(key, [])),
            )
        table.add_section()
    console.print(table)
    if any(r.zerogate.non_2xx_3xx or r.zerogate.socket_errors for r in rounds):
        console.print("[yellow]! = wrk counted non-2xx/3xx responses or socket errors[/]")

    if any(r.fixed for r in rounds):
        fixed = Table(title="half of zerogate's maximum rate (open loop, fixed rate)")
        for col in ("target", "workers", "rate", "achieved", "p50 ms", "p90 ms", "p99 ms"):
            fixed.add_column(col, justify="right" if col != "target" else "left")
        fixed.add_column("p99.9 ms", justify="right")
        fixed.add_column("added p99 ms", justify="right")
        fixed.add_column("gen lag p99", justify="right")
        fixed.add_column("other CPU", justify="right")
        fixed.add_column("target check")
        fixed.add_column("p99 of every run")
        for r in rounds:
            for name in ("direct", "nginx", "zerogate"):
                fres = r.fixed.get(name)
                if fres is None:
                    continue
                added = {
                    "direct": "",
                    "nginx": f"{r.nginx_added_p99_ms:+.2f}",
                    "zerogate": f"{r.added_p99_ms:+.2f}",
                }[name]
                check = ""
                if name == "zerogate":
                    if r.workers == TARGET_WORKERS:
                        ok = r.added_p99_ms <= TARGET_ADDED_P99_MS
                        check = f"{_verdict(ok)} (≤ {TARGET_ADDED_P99_MS:g} ms)"
                    else:
                        check = "reported, not targeted"
                bad = sum(n for s, n in fres.statuses.items() if s != 200) + fres.unfinished
                fixed.add_row(
                    {"direct": "origin direct"}.get(name, name),
                    str(r.workers),
                    f"{fres.rate:,.0f}",
                    f"{fres.achieved:,.0f}" + (f" ({bad} bad)" if bad else ""),
                    f"{fres.p50_ms:.2f}",
                    f"{fres.p90_ms:.2f}",
                    f"{fres.p99_ms:.2f}",
                    f"{fres.p999_ms:.2f}",
                    added,
                    f"{fres.send_lag_p99_ms:.2f}",
                    f"{fres.other_cpu_cores:.2f}",
                    check,
                    " ".join(f"{v:.2f}" for v in r.fixed_p99_runs.get(name, [])),
                )
            fixed.add_section()
        console.print(fixed)
        console.print(
            "[dim]added p99 = p99 through the proxy − p99 of the origin direct, both at the same "
            "fixed rate (half of zerogate's wrk maximum for that worker count). Latency is timed "
            "from when each request was due, so generator lag (gen lag p99) is inside every row; "
            "the subtraction removes most of it. other CPU = cores used by processes this "
            "benchmark did not start, while measuring.[/]"
        )

    for r in rounds:
        if not r.profile:
            continue
        prof = r.profile
        title = (
            f"where zerogate's Python time goes, {r.workers} worker(s), full load "
            f"({prof['rps_while_sampled']:,.0f} req/s while sampled; py-spy --gil, "
            f"{prof['samples']} samples)"
        )
        cats = Table(title=title)
        cats.add_column("share", justify="right")
        cats.add_column("charged to (first match, in this order)")
        for name, share in prof["categories"]:
            cats.add_row(f"{share:.1%}", name)
        console.print(cats)
        own = Table(title="… own time by function")
        own.add_column("share", justify="right")
        own.add_column("function (file)")
        for name, share in prof["own"]:
            own.add_row(f"{share:.1%}", name)
        console.print(own)
        threads = Table(title="… CPU per thread of zerogate's processes (cores)")
        threads.add_column("cores", justify="right")
        threads.add_column("thread")
        for name, cores in prof["threads_cpu"]:
            threads.add_row(f"{cores:.2f}", name)
        console.print(threads)


def to_json(machine: dict[str, Any], rounds: list[Round], args: argparse.Namespace) -> str:
    data: dict[str, Any] = {
        "machine": machine,
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "repeat": args.repeat,
        },
        "targets": {
            "ratio_min": TARGET_RATIO,
            "added_p99_ms_max": TARGET_ADDED_P99_MS,
            "workers": TARGET_WORKERS,
        },
    }
    items: list[dict[str, Any]] = []
    for r in rounds:
        item = asdict(r)
        if r.workers == TARGET_WORKERS:
            item["ratio_pass"] = r.ratio >= TARGET_RATIO
            if r.fixed:
                item["added_p99_pass"] = r.added_p99_ms <= TARGET_ADDED_P99_MS
        items.append(item)
    data["rounds"] = items
    return json.dumps(data, indent=2)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise KeyboardInterrupt, so the ``finally`` blocks stop every
    process (SIGINT too: a shell starting us in the background would have it ignored)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s per measurement, 1 s warm-up")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before timing")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (and open-loop pool)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--repeat", type=int, default=1, help="runs per target (best kept)")
    parser.add_argument("--no-fixed-rate", action="store_true", help="skip the half-rate runs")
    parser.add_argument("--py-spy", metavar="PATH", help="profile zerogate with this py-spy")
    parser.add_argument("--profile-top", type=int, default=20)
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0.3,
        help="before each measurement, wait for others' CPU use to drop below this (cores)",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60, help="…but at most this many seconds (0: never)"
    )
    parser.add_argument(
        "--probe",
        default=str(PROBE),
        help="the lean reference proxy (relative paths: to the repository root); 'none' to skip",
    )
    parser.add_argument(
        "--fast-path", action="store_true", help="zerogate with listen.fast_path: true"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.warmup = min(args.warmup, 1.0)
        args.quiet_wait = min(args.quiet_wait, 5.0)
    if args.py_spy and not Path(args.py_spy).exists():
        parser.error(f"--py-spy: {args.py_spy} does not exist")
    workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.probe_path = None
    if args.probe != "none":
        probe = Path(args.probe)
        probe = probe if probe.is_absolute() else _ROOT / probe
        if probe.exists():
            args.probe_path = probe.resolve()
        else:
            err.print(f"[yellow]no lean probe at {probe}: its row is left out (--probe PATH)[/]")
    for tool in (NGINX, WRK):
        if not Path(tool).exists():
            parser.error(f"{tool} is not installed")

    machine = machine_info()
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="zg-bench-proxy-"))
    rounds: list[Round] = []
    try:
        with terminate_as_interrupt():
            origin_port = free_port()
            err.print(f"origin: nginx, 1 worker, 127.0.0.1:{origin_port}; work folder {workdir}")
            origin = start_nginx(
                procs,
                "origin",
                workdir,
                workers=1,
                body=ORIGIN_SERVER.format(port=origin_port),
                port=origin_port,
            )
            for n in workers:
                rounds.append(measure_workers(procs, workdir, n, origin_port, args, origin.pid))
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]: stopping everything")
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            err.print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()[0]

    if args.json:
        print(to_json(machine, rounds, args))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=200)
        print_tables(console, machine, rounds, args)
    missed = any(
        r.workers == TARGET_WORKERS
        and (r.ratio < TARGET_RATIO or (r.fixed and r.added_p99_ms > TARGET_ADDED_P99_MS))
        for r in rounds
    )
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
