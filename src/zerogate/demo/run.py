"""Write the demo configuration, apply it, start the demo origin behind a tunnel, then serve.

The demo shows all three jobs: the login portal (PIN, with the mail outbox page), the policies,
and the tunnel — the demo origin is reached only through a ``zerogate connector run`` process
that the demo starts with a fresh connector token and stops on exit.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from zerogate.model import load_file

DEMO_YAML = """\
# zerogate demo: written by `zerogate demo`; edit it and run `zerogate apply -c {path}`.
portal: auth.localhost:{port}
listen: {{http: 127.0.0.1:{port}, tunnel: 127.0.0.1:{tunnel_port}}}
storage: sqlite:///zerogate.db
# no mail server: PIN codes stay in the server's outbox (the login page says so)
email: {{outbox: true}}
admins: [ops@example.com]

identity_providers:
  - {{name: otp, type: onetimepin}}

tunnels:
  # the demo origin is reached only through this tunnel's connector
  - {{name: demo-office, routes: [hello.localhost]}}

groups:
  - name: Third-Party Partners
    include: [{{email: [alice@partner.test, bob@vendor.test]}}]
  - name: Office Networks
    include: [{{ip: [127.0.0.0/8, "::1/128"]}}]

applications:
  - name: hello
    domain: hello.localhost
    tunnel: demo-office
    policies:
      - name: staff and partners
        decision: allow
        include: [{{email_domain: [example.com]}}, {{group: [Third-Party Partners]}}]
  - name: public
    domain: hello.localhost/public
    tunnel: demo-office
    policies:
      - {{name: anyone, decision: bypass, include: [{{everyone: true}}]}}
  - name: finance
    domain: hello.localhost/finance
    tunnel: demo-office
    policies:
      - name: staff from the office
        decision: allow
        include: [{{email_domain: [example.com]}}]
        require: [{{group: [Office Networks]}}]
"""


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_connector(token: str, origin_port: int, log: Path) -> subprocess.Popen[bytes]:
    """``zerogate connector run`` for the demo origin (it dials until the edge is up)."""
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "zerogate",
                "connector",
                "run",
                "--url",
                f"http://127.0.0.1:{origin_port}",
                "--ha-connections",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ZEROGATE_TUNNEL_TOKEN": token},
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_demo(data_dir: Path, port: int, console: Console) -> None:
    from zerogate.admin.service import Actor, AdminService
    from zerogate.demo.origin import DemoOrigin
    from zerogate.server.run import serve
    from zerogate.store import Store, storage_url

    if not _free(port):
        raise SystemExit(f"error: port {port} is in use; run `zerogate demo --port N`")
    data_dir.mkdir(parents=True, exist_ok=True)
    origin_port, tunnel_port = _pick_port(), _pick_port()
    path = data_dir / "demo.yaml"
    text = DEMO_YAML.format(path=path, port=port, tunnel_port=tunnel_port)
    path.write_text(text)
    loaded = load_file(path)

    async def apply() -> str:
        store = await Store.open(storage_url(loaded.config.storage, base_dir=data_dir))
        try:
            await store.apply(loaded.config.objects(), actor="demo", source="cli")
            made = await AdminService(store).create_tunnel_token(
                "demo-office", actor=Actor("demo", "cli"), settings=loaded.config.settings()
            )
            return made.token
        finally:
            await store.close()

    token = asyncio.run(apply())
    origin = DemoOrigin(
        origin_port,
        certs_url=f"http://127.0.0.1:{port}/.zerogate/certs",
        certs_host=f"auth.localhost:{port}",
        issuer=f"https://auth.localhost:{port}",
        name="hello",
    )
    origin.start()
    connector = _start_connector(token, origin_port, data_dir / "connector.log")
    console.print(
        Panel.fit(
            f"[bold]Open[/bold]      http://hello.localhost:{port}/\n"
            f"[bold]PINs[/bold]      http://auth.localhost:{port}/.zerogate/outbox\n"
            f"[bold]Log in as[/bold] you@example.com (staff) or alice@partner.test (partner);\n"
            f"          anyone else is refused. http://hello.localhost:{port}/finance\n"
            f"          also requires the office network (loopback counts).\n"
            f"[bold]Admin[/bold]     http://auth.localhost:{port}/admin  (as ops@example.com)\n"
            f"[bold]Tunnel[/bold]    the demo origin listens on 127.0.0.1:{origin_port} and is\n"
            f"          served through a connector (log: {data_dir / 'connector.log'})\n"
            f"[bold]Config[/bold]    {path}  (edit, then: zerogate apply -c {path})\n"
            "[dim]Ctrl-C stops the demo.[/dim]",
            title="zerogate demo",
        )
    )
    try:
        serve(path, loaded.config.settings(), workers=1, demo=True)
    finally:
        _stop(connector)
