"""Tunnel benchmark: the same origin reached directly, through OpenSSH ``ssh -R``, and through
zerogate's tunnel (edge + connector, a bypass application so no policy or login cost).

Targets (issue 5): the tunnel's throughput for a 1 GB body is at least **0.5×** that of
``ssh -R``, and it carries at least **5,000 small requests/s** over four connections on this
2-core machine. Printed per path: MB/s down and up for the big body; requests/s, p50 and p99
for small requests (wrk, keep-alive).

Run from the repository root (needs nginx, wrk, curl, OpenSSH server and client)::

    .venv/bin/python bench/tunnel/run.py                 # 1 GiB bodies, 10 s of wrk per path
    .venv/bin/python bench/tunnel/run.py --quick         # 128 MiB, 3 s: a smoke run
    .venv/bin/python bench/tunnel/run.py --json

Everything it starts runs in its own process group and is stopped on exit and on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
for entry in (_ROOT / "src", _ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.proxy.run import (  # noqa: E402
    Processes,
    WrkResult,
    free_port,
    machine_info,
    run_wrk,
    start_nginx,
    wait_for_port,
)

TARGET_THROUGHPUT_RATIO = 0.5  # tunnel MB/s ÷ ssh -R MB/s
TARGET_SMALL_RPS = 5000.0
HA_CONNECTIONS = 4
APP_HOST = "bench.localhost"
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
"""


@dataclass
class PathResult:
    name: str
    small: WrkResult
    down_mb_s: float
    up_mb_s: float


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


def measure(name: str, port: int, *, host: str | None, big: Path, duration: float) -> PathResult:
    base = f"http://127.0.0.1:{port}"
    err.print(f"[bold]{name}[/bold]: 1 body down, 1 body up, then {duration:g} s of wrk")
    down = curl_mb_s(f"{base}/big", host=host, upload=None)
    up = curl_mb_s(f"{base}/upload", host=host, upload=big)
    small = run_wrk_path(port, host=host, duration=duration)
    return PathResult(name, small, down, up)


def run_wrk_path(port: int, *, host: str | None, duration: float) -> WrkResult:
    # run_wrk fetches "/"; the origin answers "ok" on /small only, so point wrk there
    return run_wrk(
        port, host=host, cookie=None, duration=duration, connections=64, threads=2, path="/small"
    )


def start_sshd(procs: Processes, work: Path, origin_port: int) -> int:
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
    return forwarded


def start_tunnel(procs: Processes, work: Path, origin_port: int) -> int:
    """zerogate server + ``zerogate connector run`` with four connections; the edge's port."""
    folder = work / "zerogate"
    folder.mkdir()
    port, tunnel_port = free_port(), free_port()
    config = folder / "zerogate.yaml"
    config.write_text(ZEROGATE_CONFIG.format(port=port, tunnel_port=tunnel_port, host=APP_HOST))
    for args in (("apply", "-c", str(config)),):
        res = zg(*args, cwd=folder)
        if res.returncode != 0:
            raise RuntimeError(f"zerogate {args[0]} failed:\n{res.stdout}{res.stderr}")
    res = zg("tunnel", "token", "bench", "--rotate", "--json", "-c", str(config), cwd=folder)
    if res.returncode != 0:
        raise RuntimeError(f"zerogate tunnel token failed:\n{res.stdout}{res.stderr}")
    token = json.loads(res.stdout)["token"]
    env = {**os.environ, "NO_COLOR": "1", "ZEROGATE_LOG_LEVEL": "WARNING"}
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
            return port
        if connector.poll() is not None or time.monotonic() > deadline:
            log = (folder / "connector.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the tunnel never served /small ({probe.stdout}):\n{log}")
        time.sleep(0.2)


def print_results(console: Console, machine: dict[str, Any], results: list[PathResult]) -> bool:
    by = {r.name: r for r in results}
    table = Table(title="same nginx origin, three ways")
    for column in ("path", "down MB/s", "up MB/s", "small req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for r in results:
        errors = r.small.non_2xx_3xx + r.small.socket_errors
        table.add_row(
            r.name,
            f"{r.down_mb_s:,.0f}",
            f"{r.up_mb_s:,.0f}",
            f"{r.small.rps:,.0f}",
            f"{r.small.p50_ms:.2f}",
            f"{r.small.p99_ms:.2f}",
            str(errors),
        )
    console.print(table)
    tunnel, ssh = by["zerogate tunnel"], by["ssh -R"]
    down_ratio = tunnel.down_mb_s / ssh.down_mb_s
    up_ratio = tunnel.up_mb_s / ssh.up_mb_s
    ok_tp = min(down_ratio, up_ratio) >= TARGET_THROUGHPUT_RATIO
    ok_rps = tunnel.small.rps >= TARGET_SMALL_RPS
    console.print(
        f"throughput tunnel ÷ ssh -R: down {down_ratio:.2f}, up {up_ratio:.2f} "
        f"(target ≥ {TARGET_THROUGHPUT_RATIO}) → {'met' if ok_tp else 'NOT met'}"
    )
    console.print(
        f"small requests through the tunnel: {tunnel.small.rps:,.0f}/s over "
        f"{HA_CONNECTIONS} connections (target ≥ {TARGET_SMALL_RPS:,.0f}) → "
        f"{'met' if ok_rps else 'NOT met'}"
    )
    console.print(
        f"machine: {machine['nproc']} cores ({machine['cpu_model']}), Python "
        f"{machine['python']}, nginx {machine['nginx']}, zerogate {machine['zerogate_tree']}"
    )
    return ok_tp and ok_rps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big body size (MiB)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per path")
    parser.add_argument("--quick", action="store_true", help="128 MiB and 3 s: a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--no-tunnel", action="store_true", help="only direct and ssh -R (to check the setup)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.duration = 128, 3.0
    machine = machine_info()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="zg-bench-tunnel-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers (user nobody) read the big body from here
        try:
            origin_dir = work / "origin"
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
            assert origin_dir.is_dir()
            results = [measure("direct", origin_port, host=None, big=big, duration=args.duration)]
            ssh_port = start_sshd(procs, work, origin_port)
            results.append(measure("ssh -R", ssh_port, host=None, big=big, duration=args.duration))
            if args.no_tunnel:
                for r in results:
                    print(r)
                return 0
            edge_port = start_tunnel(procs, work, origin_port)
            results.append(
                measure(
                    "zerogate tunnel", edge_port, host=APP_HOST, big=big, duration=args.duration
                )
            )
        finally:
            procs.stop_all()
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "size_mib": args.size_mib,
                    "duration": args.duration,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )
        return 0
    return 0 if print_results(Console(), machine, results) else 1


if __name__ == "__main__":
    sys.exit(main())
