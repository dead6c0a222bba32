"""Tunnel benchmark: the same origin reached directly, through OpenSSH ``ssh -R``, and through
zerogate's tunnel (edge + connector with four HA connections, a bypass application so no policy
or login cost), once per tunnel wire (``--wire mux`` = protocol 2, ``--wire h2`` = protocol 1).

Targets (issue 13), all as ratios to ``ssh -R`` measured in the same run: small requests
≥ 0.5×, a 1 GiB body down and up ≥ 1.0×, p99 at half of zerogate's rate ≤ 5 ms above ssh's
at the same rate, memory bounded on edge and connector (peak RSS printed). Printed per path:
MB/s down and up (one curl transfer each), requests/s, p50 and p99 (wrk, keep-alive), the
p99 of a fixed-rate run, peak RSS of the edge and the connector, and the load average.

Run from the repository root (needs nginx, wrk, curl, OpenSSH server and client)::

    .venv/bin/python bench/tunnel/run.py                  # 1 GiB bodies, 10 s of wrk per path
    .venv/bin/python bench/tunnel/run.py --repeat 3       # medians of three rounds
    .venv/bin/python bench/tunnel/run.py --quick          # 128 MiB, 3 s: a smoke run
    .venv/bin/python bench/tunnel/run.py --wires mux --json

Everything it starts runs in its own process group and is stopped on exit and on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
for entry in (_ROOT / "src", _ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
# the zerogate processes it starts run this checkout's code too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.proxy.run import (  # noqa: E402
    CLK_TCK,
    Processes,
    WrkResult,
    free_port,
    group_pids,
    machine_info,
    run_fixed_rate,
    run_wrk,
    start_nginx,
    wait_for_port,
)

TARGET_SMALL_RATIO = 0.5  # zerogate small req/s ÷ ssh -R
TARGET_THROUGHPUT_RATIO = 1.0  # zerogate MB/s ÷ ssh -R MB/s, each way
TARGET_ADDED_P99_MS = 5.0  # zerogate p99 − ssh -R p99 at half of zerogate's rate
HA_CONNECTIONS = 4
APP_HOST = "bench.localhost"
PLAIN_HOST = "plain.localhost"  # the same edge, the origin reached without a tunnel
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
CURL = shutil.which("curl") or "/usr/bin/curl"

err = Console(stderr=True)

ORIGIN_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        sendfile on;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location = / {{
            default_type text/plain;
            return 200 "ok";
        }}
        location = /small {{
            default_type text/plain;
            return 200 "ok";
        }}
        location = /big {{
            default_type application/octet-stream;
            alias {dir}/big.bin;
        }}
        location = /upload {{
            # read the whole body before answering (request buffering), so every path carries
            # every byte; the body goes nowhere (the answer comes from /small)
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_pass http://127.0.0.1:{port}/small;
        }}
    }}"""

ZEROGATE_CONFIG = """\
portal: auth.localhost:{port}
listen: {{http: "127.0.0.1:{port}", tunnel: "127.0.0.1:{tunnel_port}"}}
storage: sqlite:///zerogate.db
# the PIN login needs a way to send mail (the server refuses to start otherwise)
email: {{outbox: true}}
identity_providers:
  - {{name: otp, type: onetimepin}}
tunnels:
  - {{name: bench, routes: [{host}]}}
applications:
  - name: bench
    domain: {host}
    tunnel: bench
    policies:
      - name: everyone, no login
        decision: bypass
        include: [{{everyone: true}}]
  - name: plain
    domain: {plain_host}
    origin: http://127.0.0.1:{origin_port}
    policies:
      - name: everyone, no login
        decision: bypass
        include: [{{everyone: true}}]
"""


def zg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "zerogate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def curl_mb_s(url: str, *, host: str | None, upload: Path | None) -> float:
    """MB/s (10^6 bytes) of one transfer of the big body, down or (with ``upload``) up."""
    argv = [CURL, "-sS", "-o", "/dev/null", "--fail", "-w", "%{json}"]
    if host:
        argv += ["-H", f"Host: {host}"]
    if upload is not None:
        argv += ["-X", "POST", "-T", str(upload), "-H", "Expect:"]
    started = time.monotonic()
    res = subprocess.run([*argv, url], capture_output=True, text=True, timeout=900, check=False)
    seconds = time.monotonic() - started
    if res.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({res.returncode}): {res.stderr.strip()}")
    info = json.loads(res.stdout)
    size = info["size_upload"] if upload is not None else info["size_download"]
    expected = upload.stat().st_size if upload is not None else None
    if expected is not None and size != expected:
        raise RuntimeError(f"curl sent {size} of {expected} bytes to {url}")
    return float(size) / seconds / 1e6


def start_sshd(procs: Processes, work: Path, origin_port: int) -> tuple[int, int, int]:
    """sshd on loopback and ``ssh -N -R`` to it; the forwarded port reaches the origin."""
    folder = work / "ssh"
    folder.mkdir()
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    for key in ("host", "client"):
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True
        )
    (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
    sshd_port, forwarded = free_port(), free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{sshd_port}\nHostKey {folder / 'host'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
    )
    sshd = procs.start(
        "sshd",
        [SSHD, "-D", "-e", "-f", str(config)],
        log=folder / "sshd.log",
        cwd=folder,
        env=dict(os.environ),
    )
    wait_for_port(sshd_port, sshd, "sshd", timeout=15)
    ssh = procs.start(
        "ssh -R",
        [
            SSH,
            "-N",
            "-p",
            str(sshd_port),
            "-i",
            str(folder / "client"),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "BatchMode=yes",
            "-R",
            f"127.0.0.1:{forwarded}:127.0.0.1:{origin_port}",
            f"{os.environ.get('USER', 'root')}@127.0.0.1",
        ],
        log=folder / "ssh.log",
        cwd=folder,
        env=dict(os.environ),
    )
    wait_for_port(forwarded, ssh, "ssh -R", timeout=15)
    return forwarded, sshd.pid, ssh.pid


def start_tunnel(
    procs: Processes, work: Path, origin_port: int, wire: str
) -> tuple[int, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """zerogate server + ``zerogate connector run --wire WIRE`` with four connections: the
    edge's port, the server and the connector processes."""
    folder = work / f"zerogate-{wire}"
    folder.mkdir()
    port, tunnel_port = free_port(), free_port()
    config = folder / "zerogate.yaml"
    config.write_text(
        ZEROGATE_CONFIG.format(
            port=port,
            tunnel_port=tunnel_port,
            host=APP_HOST,
            plain_host=PLAIN_HOST,
            origin_port=origin_port,
        )
    )
    for args in (("apply", "-c", str(config)),):
        res = zg(*args, cwd=folder)
        if res.returncode != 0:
            raise RuntimeError(f"zerogate {args[0]} failed:\n{res.stdout}{res.stderr}")
    res = zg("tunnel", "token", "bench", "--rotate", "--json", "-c", str(config), cwd=folder)
    if res.returncode != 0:
        raise RuntimeError(f"zerogate tunnel token failed:\n{res.stdout}{res.stderr}")
    token = json.loads(res.stdout)["token"]
    env = {**os.environ, "NO_COLOR": "1", "ZEROGATE_LOG_LEVEL": "WARNING"}
    wire, _, loop = wire.partition("-")  # "mux-asyncio": the connector on asyncio's own loop
    if loop:
        env["ZEROGATE_CONNECTOR_LOOP"] = loop
    server = procs.start(
        "zerogate server",
        [sys.executable, "-m", "zerogate", "server", "-c", str(config)],
        log=folder / "server.log",
        cwd=folder,
        env=env,
    )
    wait_for_port(port, server, "zerogate server", timeout=60)
    connector = procs.start(
        "zerogate connector",
        [
            sys.executable,
            "-m",
            "zerogate",
            "connector",
            "run",
            "--token",
            token,
            "--url",
            f"http://127.0.0.1:{origin_port}",
            "--ha-connections",
            str(HA_CONNECTIONS),
            "--wire",
            wire,
            "--metrics",
            f"127.0.0.1:{free_port()}",
        ],
        log=folder / "connector.log",
        cwd=folder,
        env={**env, "ZEROGATE_TUNNEL_TOKEN": token},
    )
    deadline = time.monotonic() + 60
    while True:  # ready when the edge answers from the origin, not with its 502 page
        probe = subprocess.run(
            [
                CURL,
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                f"Host: {APP_HOST}",
                f"http://127.0.0.1:{port}/small",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if probe.stdout == "200":
            return port, server, connector
        if connector.poll() is not None or time.monotonic() > deadline:
            log = (folder / "connector.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the tunnel never served /small ({probe.stdout}):\n{log}")
        time.sleep(0.2)


def _tree_seconds() -> tuple[dict[int, int], dict[int, float]]:
    """Every live process's parent and CPU seconds so far (user + system)."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return parents, seconds


def group_seconds(roots: tuple[int, ...]) -> tuple[float, ...]:
    """CPU seconds used so far by each process and its live descendants (sshd's per-connection
    children start sessions of their own, so a process group would miss them)."""
    parents, seconds = _tree_seconds()
    totals = []
    for root in roots:
        total = 0.0
        for pid, cpu in seconds.items():
            walk = pid
            while walk > 1 and walk != root:
                walk = parents.get(walk, 0)
            if walk == root:
                total += cpu
        totals.append(total)
    return tuple(totals)


@dataclass
class Cpu:
    """CPU seconds the tunnel's two ends used in one measurement (edge side = sshd or the
    zerogate server; connector side = ssh or the connector)."""

    edge: float = 0.0
    connector: float = 0.0

    @property
    def total(self) -> float:
        return self.edge + self.connector


class CpuOf:
    """CPU seconds of the path's processes while the block runs."""

    def __init__(self, pgids: tuple[int, ...]) -> None:
        self.pgids = pgids
        self.cpu = Cpu()

    def __enter__(self) -> CpuOf:
        self.before = group_seconds(self.pgids)
        return self

    def __exit__(self, *exc: object) -> None:
        used = [a - b for a, b in zip(group_seconds(self.pgids), self.before, strict=True)]
        used += [0.0, 0.0]
        self.cpu = Cpu(used[0], used[1])


@dataclass
class Round:
    down_mb_s: float
    up_mb_s: float
    small: WrkResult
    load: float  # 1-minute load average when the round started
    size_mb: float = 0.0  # the big body, 10^6 bytes
    cpu_down: Cpu = field(default_factory=Cpu)
    cpu_up: Cpu = field(default_factory=Cpu)
    cpu_small: Cpu = field(default_factory=Cpu)


@dataclass
class PathResult:
    name: str
    host: str | None
    port: int
    rounds: list[Round] = field(default_factory=list)
    #: process groups whose CPU is counted: (edge side, connector side), none for direct
    pgids: tuple[int, ...] = ()
    rate: float = 0.0  # the fixed rate of the latency run
    rate_p50_ms: float = float("nan")
    rate_p99_ms: float = float("nan")
    edge_rss_mib: tuple[float, float] = (0.0, 0.0)  # at rest, peak; zerogate only
    connector_rss_mib: tuple[float, float] = (0.0, 0.0)

    def median(self, what: str) -> float:
        values = {
            "down": [r.down_mb_s for r in self.rounds],
            "up": [r.up_mb_s for r in self.rounds],
            "rps": [r.small.rps for r in self.rounds],
            "p50": [r.small.p50_ms for r in self.rounds],
            "p99": [r.small.p99_ms for r in self.rounds],
            # CPU: µs per small request, ms per MB of body; edge + connector
            "us_req": [r.cpu_small.total / max(r.small.requests, 1) * 1e6 for r in self.rounds],
            "us_req_edge": [r.cpu_small.edge / max(r.small.requests, 1) * 1e6 for r in self.rounds],
            "ms_mb_down": [r.cpu_down.total / r.size_mb * 1e3 for r in self.rounds],
            "ms_mb_up": [r.cpu_up.total / r.size_mb * 1e3 for r in self.rounds],
        }[what]
        return statistics.median(values)


class PeakRss:
    """Samples the resident memory of a process group (all its processes) every 0.1 s."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.pgid = proc.pid
        self.peak_kib = 0
        self.first_kib = 0  # the first sample: the process at rest, before any measurement
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            total = 0
            for pid in group_pids(self.pgid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    continue
            self.peak_kib = max(self.peak_kib, total)
            self.first_kib = self.first_kib or total

    def stop(self) -> tuple[float, float]:
        """MiB at rest and at peak."""
        self._stop.set()
        self._thread.join()
        return self.first_kib / 1024, self.peak_kib / 1024


PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


class Profile:
    """py-spy (200 Hz, collapsed stacks) on the path's processes while the block runs, when
    ``folder`` is given: ``folder/<path>-<phase>-<edge|connector>.txt``."""

    def __init__(self, folder: Path | None, path: PathResult, phase: str) -> None:
        self.folder = folder if path.host is not None else None
        self.path = path
        self.phase = phase
        self.spies: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Profile:
        if self.folder is None:
            return self
        name = self.path.name.replace(" ", "-").replace(",", "")
        for role, pid in zip(("edge", "connector"), self.path.pgids, strict=False):
            out = self.folder / f"{name}-{self.phase}-{role}.txt"
            argv = [PY_SPY, "record", "-r", "200", "-f", "raw", "-o", str(out), "-p", str(pid)]
            self.spies.append(
                subprocess.Popen(
                    [*argv, "--subprocesses"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(0.5)  # attached before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)
        for spy in self.spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()


def one_round(path: PathResult, big: Path, duration: float, profile: Path | None = None) -> None:
    base = f"http://127.0.0.1:{path.port}"
    load = os.getloadavg()[0]
    err.print(f"[bold]{path.name}[/bold] (load {load:.1f}): body down, body up, {duration:g} s wrk")
    with Profile(profile, path, "down"), CpuOf(path.pgids) as cpu_down:
        down = curl_mb_s(f"{base}/big", host=path.host, upload=None)
    with Profile(profile, path, "up"), CpuOf(path.pgids) as cpu_up:
        up = curl_mb_s(f"{base}/upload", host=path.host, upload=big)
    with Profile(profile, path, "small"), CpuOf(path.pgids) as cpu_small:
        small = run_wrk(
            path.port,
            host=path.host,
            cookie=None,
            duration=duration,
            connections=64,
            threads=2,
            path="/small",
        )
    size_mb = big.stat().st_size / 1e6
    path.rounds.append(
        Round(down, up, small, load, size_mb, cpu_down.cpu, cpu_up.cpu, cpu_small.cpu)
    )


def fixed_rate(path: PathResult, rate: float, duration: float) -> None:
    err.print(f"[bold]{path.name}[/bold]: {rate:,.0f} requests/s for {duration:g} s")
    res = run_fixed_rate(
        path.port,
        host=path.host or "127.0.0.1",
        cookie=None,
        rate=rate,
        duration=duration,
        warmup=1.0,
        connections=64,
    )
    path.rate, path.rate_p50_ms, path.rate_p99_ms = rate, res.p50_ms, res.p99_ms


def print_results(
    console: Console, machine: dict[str, Any], results: list[PathResult], wires: list[str]
) -> bool:
    table = Table(title="same nginx origin; medians of the rounds; ratios to ssh -R")
    columns = (
        "path", "down MB/s", "up MB/s", "small req/s", "p50 ms", "p99 ms",
        "p99 ms at rate", "CPU µs/req", "CPU ms/MB down, up", "edge MiB", "connector MiB",
        "load",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right" if column != "path" else "left")
    by = {r.name: r for r in results}
    ssh = by["ssh -R"]
    for r in results:
        zerogate = r.host == APP_HOST
        table.add_row(
            r.name,
            f"{r.median('down'):,.0f}",
            f"{r.median('up'):,.0f}",
            f"{r.median('rps'):,.0f} ({r.median('rps') / ssh.median('rps'):.2f}×)",
            f"{r.median('p50'):.2f}",
            f"{r.median('p99'):.2f}",
            f"{r.rate_p99_ms:.2f} @ {r.rate:,.0f}/s",
            f"{r.median('us_req'):,.0f} ({r.median('us_req_edge'):,.0f} edge)" if r.pgids else "",
            f"{r.median('ms_mb_down'):.2f}, {r.median('ms_mb_up'):.2f}" if r.pgids else "",
            "{:.0f} → {:.0f}".format(*r.edge_rss_mib) if zerogate else "",
            "{:.0f} → {:.0f}".format(*r.connector_rss_mib) if zerogate else "",
            " ".join(f"{x.load:.1f}" for x in r.rounds),
        )
    Console(width=200).print(table)
    ok = True
    for wire in wires:
        z = by[f"zerogate {wire}"]
        small = z.median("rps") / ssh.median("rps")
        down, up = z.median("down") / ssh.median("down"), z.median("up") / ssh.median("up")
        added = z.rate_p99_ms - ssh.rate_p99_ms
        met = (
            small >= TARGET_SMALL_RATIO,
            min(down, up) >= TARGET_THROUGHPUT_RATIO,
            added <= TARGET_ADDED_P99_MS,
        )
        console.print(
            f"zerogate {wire} ÷ ssh -R: small {small:.2f} (≥ {TARGET_SMALL_RATIO}:"
            f" {'met' if met[0] else 'NOT met'}), down {down:.2f} up {up:.2f}"
            f" (≥ {TARGET_THROUGHPUT_RATIO}: {'met' if met[1] else 'NOT met'}), p99 added at"
            f" {z.rate:,.0f}/s {added:+.2f} ms (≤ {TARGET_ADDED_P99_MS}:"
            f" {'met' if met[2] else 'NOT met'})"
        )
        console.print(
            f"  CPU of the two ends ÷ ssh -R's: per small request"
            f" {z.median('us_req') / ssh.median('us_req'):.2f}×, per MB down"
            f" {z.median('ms_mb_down') / ssh.median('ms_mb_down'):.2f}× up"
            f" {z.median('ms_mb_up') / ssh.median('ms_mb_up'):.2f}×"
        )
        ok = ok and all(met)
    console.print(
        f"machine: {machine['nproc']} cores ({machine['cpu_model']}), Python "
        f"{machine['python']}, nginx {machine['nginx']}, zerogate {machine['zerogate_tree']}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big body size (MiB)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per path")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every path")
    parser.add_argument("--wires", default="mux,h2", help="tunnel wires to measure: mux,h2")
    parser.add_argument("--rate-duration", type=float, default=10.0, help="fixed-rate seconds")
    parser.add_argument("--quick", action="store_true", help="128 MiB and 3 s: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-rate", action="store_true", help="skip the fixed-rate run")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="the fixed rate (default: half zerogate's)"
    )
    parser.add_argument(
        "--paths", default="", help="only these paths (comma-separated names, e.g. 'ssh -R')"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy every zerogate path's processes into this folder (collapsed stacks)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.duration, args.rate_duration = 128, 3.0, 3.0
    wires = [w for w in args.wires.split(",") if w]
    machine = machine_info()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="zg-bench-tunnel-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (user nobody) read the big body from here
        try:
            big = work / "big.bin"
            with big.open("wb") as out:  # real bytes (not a sparse file) so reads cost I/O
                chunk = os.urandom(1 << 20)
                for _ in range(args.size_mib):
                    out.write(chunk)
            big.chmod(0o644)
            origin_port = free_port()
            start_nginx(
                procs,
                "origin",
                work,
                workers=1,
                body=ORIGIN_SERVER.format(port=origin_port, dir=work),
                port=origin_port,
            )
            ssh_port, sshd_pgid, ssh_pgid = start_sshd(procs, work, origin_port)
            results = [
                PathResult("direct", None, origin_port),
                PathResult("ssh -R", None, ssh_port, pgids=(sshd_pgid, ssh_pgid)),
            ]
            watched: dict[str, tuple[PeakRss, PeakRss]] = {}
            for wire in wires:
                port, server, connector = start_tunnel(procs, work, origin_port, wire)
                if not any(r.host == PLAIN_HOST for r in results):
                    # the edge's own ceiling: what the tunnel's numbers are bounded by
                    results.append(
                        PathResult("zerogate, no tunnel", PLAIN_HOST, port, pgids=(server.pid,))
                    )
                results.append(
                    PathResult(
                        f"zerogate {wire}", APP_HOST, port, pgids=(server.pid, connector.pid)
                    )
                )
                watched[f"zerogate {wire}"] = (PeakRss(server), PeakRss(connector))
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            only = {p.strip() for p in args.paths.split(",") if p.strip()}
            measured = [r for r in results if not only or r.name in only or r.name == "ssh -R"]
            for _ in range(args.repeat):  # rounds interleave the paths: load drifts evenly
                for path in measured:
                    one_round(path, big, args.duration, args.profile)
            results = measured
            rate = args.rate or min(r.median("rps") for r in results if r.host == APP_HOST) / 2
            for path in results if not args.no_rate else []:
                fixed_rate(path, rate, args.rate_duration)
            for name, (edge, conn) in watched.items():
                path = next(r for r in results if r.name == name)
                path.edge_rss_mib, path.connector_rss_mib = edge.stop(), conn.stop()
        finally:
            procs.stop_all()
    if args.json:
        doc = {"machine": machine, "size_mib": args.size_mib, "duration": args.duration}
        print(json.dumps({**doc, "results": [asdict(r) for r in results]}, indent=2))
        return 0
    return 0 if print_results(Console(), machine, results, wires) else 1


if __name__ == "__main__":
    sys.exit(main())
