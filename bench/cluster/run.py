"""Cluster benchmark: what the edge-to-edge relay costs (issue #14).

Two ``zerogate server`` processes (1 worker each) on one PostgreSQL database; a connector with
four HA connections dials edge A only. The same nginx origin is then reached

- through edge A, which holds the tunnel (the request goes straight into it), and
- through edge B, which holds nothing: every request is relayed to A over mutual TLS,

plus edge A's ``origin:`` application (no tunnel) as the edge's own ceiling. Printed per path:
a big body down and up (one curl transfer each, MB/s), small requests (wrk, keep-alive: req/s,
p50, p99) and the 1-minute load average, medians of ``--repeat`` rounds that interleave the
paths. Relay overhead = edge B ÷ edge A.

Run from the repository root (needs nginx, wrk, curl and PostgreSQL at
``$ZEROGATE_TEST_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/test``)::

    .venv/bin/python bench/cluster/run.py                 # 1 GiB bodies, 10 s of wrk per path
    .venv/bin/python bench/cluster/run.py --quick         # 128 MiB, 3 s: a smoke run

A fresh database is made for the run and dropped after it; everything started runs in its own
process group and is stopped on exit and on errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
for entry in (_ROOT / "src", _ROOT):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
)

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.proxy.run import Processes, free_port, machine_info, start_nginx, wait_for_port  # noqa: E402
from bench.tunnel.run import (  # noqa: E402
    APP_HOST,
    CURL,
    HA_CONNECTIONS,
    ORIGIN_SERVER,
    PLAIN_HOST,
    ZEROGATE_CONFIG,
    PathResult,
    one_round,
    zg,
)

PG_SERVER = os.environ.get("ZEROGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
err = Console(stderr=True)


def _admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        connection = await asyncpg.connect(PG_SERVER)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def _serves(port: int) -> bool:
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
    return probe.stdout == "200"


def start_edges(procs: Processes, work: Path, origin_port: int, storage: str) -> tuple[int, int]:
    """Edges A and B on ``storage`` and a connector dialling A; their HTTP ports."""
    ports: dict[str, tuple[int, int]] = {}
    configs: dict[str, Path] = {}
    for name in ("a", "b"):
        folder = work / f"edge-{name}"
        folder.mkdir()
        port, tunnel_port = free_port(), free_port()
        text = ZEROGATE_CONFIG.format(
            port=port,
            tunnel_port=tunnel_port,
            host=APP_HOST,
            plain_host=PLAIN_HOST,
            origin_port=origin_port,
        ).replace("storage: sqlite:///zerogate.db", f"storage: {storage}")
        configs[name] = folder / "zerogate.yaml"
        configs[name].write_text(text)
        ports[name] = (port, tunnel_port)
    res = zg("apply", "-c", str(configs["a"]), cwd=configs["a"].parent)
    if res.returncode != 0:
        raise RuntimeError(f"zerogate apply failed:\n{res.stdout}{res.stderr}")
    res = zg("tunnel", "token", "bench", "--rotate", "--json", "-c", str(configs["a"]), cwd=work)
    if res.returncode != 0:
        raise RuntimeError(f"zerogate tunnel token failed:\n{res.stdout}{res.stderr}")
    token = json.loads(res.stdout)["token"]
    env = {**os.environ, "NO_COLOR": "1", "ZEROGATE_LOG_LEVEL": "WARNING"}
    for name, config in configs.items():
        server = procs.start(
            f"zerogate server {name}",
            [sys.executable, "-m", "zerogate", "server", "-c", str(config)],
            log=config.parent / "server.log",
            cwd=config.parent,
            env=env,
        )
        wait_for_port(ports[name][0], server, f"zerogate server {name}", timeout=60)
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
            "--edge",
            f"127.0.0.1:{ports['a'][1]}",
            "--url",
            f"http://127.0.0.1:{origin_port}",
            "--ha-connections",
            str(HA_CONNECTIONS),
            "--metrics",
            f"127.0.0.1:{free_port()}",
        ],
        log=work / "connector.log",
        cwd=work,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (_serves(ports["a"][0]) and _serves(ports["b"][0])):
        if connector.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the tunnel never served /small through both edges")
        time.sleep(0.2)
    return ports["a"][0], ports["b"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="big body size (MiB)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per path")
    parser.add_argument("--repeat", type=int, default=1, help="rounds over every path")
    parser.add_argument("--quick", action="store_true", help="128 MiB and 3 s: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.duration = 128, 3.0
    machine = machine_info()
    database = f"zg_bench_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{database}"')
    procs = Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="zg-bench-cluster-") as tmp:
            work = Path(tmp)
            work.chmod(0o755)  # nginx's workers read the big body from here
            big = work / "big.bin"
            with big.open("wb") as out:
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
            storage = PG_SERVER.rsplit("/", 1)[0] + "/" + database
            port_a, port_b = start_edges(procs, work, origin_port, storage)
            results = [
                PathResult("edge A, origin: (no tunnel)", PLAIN_HOST, port_a),
                PathResult("edge A, holds the tunnel", APP_HOST, port_a),
                PathResult("edge B, relayed to A", APP_HOST, port_b),
            ]
            for _ in range(args.repeat):
                for path in results:
                    one_round(path, big, args.duration)
    finally:
        procs.stop_all()
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    console = Console()
    console.print(
        f"{machine['cpu_model']}, {machine['cpus_usable']} CPUs, Python {machine['python']}; "
        f"{args.size_mib} MiB bodies, {args.duration:g} s wrk -t2 -c64, {args.repeat} round(s)"
    )
    table = Table(show_edge=False, box=None)
    for column in ("path", "down MB/s", "up MB/s", "small req/s", "p50 ms", "p99 ms", "load"):
        table.add_column(column, justify="left" if column == "path" else "right", no_wrap=True)
    for path in results:
        table.add_row(
            path.name,
            f"{path.median('down'):,.0f}",
            f"{path.median('up'):,.0f}",
            f"{path.median('rps'):,.0f}",
            f"{path.median('p50'):.2f}",
            f"{path.median('p99'):.2f}",
            " ".join(f"{r.load:.1f}" for r in path.rounds),
        )
    console.print(table)
    held, relayed = results[1], results[2]
    console.print(
        "relay overhead (B ÷ A): "
        f"small req/s {relayed.median('rps') / held.median('rps'):.2f}×, "
        f"p50 +{relayed.median('p50') - held.median('p50'):.2f} ms, "
        f"down {relayed.median('down') / held.median('down'):.2f}×, "
        f"up {relayed.median('up') / held.median('up'):.2f}×"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
