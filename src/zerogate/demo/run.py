"""Write the demo configuration, apply it, start the demo origin, then serve."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from zerogate.model import load_file

DEMO_YAML = """\
# zerogate demo: written by `zerogate demo`; edit it and run `zerogate apply -c {path}`.
portal: auth.localhost:{port}
listen: {{http: 127.0.0.1:{port}}}
storage: sqlite:///zerogate.db
admins: [ops@example.com]

identity_providers:
  - {{name: otp, type: onetimepin}}

groups:
  - name: Third-Party Partners
    include: [{{email: [alice@partner.test, bob@vendor.test]}}]
  - name: Office Networks
    include: [{{ip: [127.0.0.0/8, "::1/128"]}}]

applications:
  - name: hello
    domain: hello.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - name: staff and partners
        decision: allow
        include: [{{email_domain: [example.com]}}, {{group: [Third-Party Partners]}}]
  - name: public
    domain: hello.localhost/public
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: anyone, decision: bypass, include: [{{everyone: true}}]}}
  - name: finance
    domain: hello.localhost/finance
    origin: http://127.0.0.1:{origin_port}
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


def run_demo(data_dir: Path, port: int, console: Console) -> None:
    from zerogate.demo.origin import DemoOrigin
    from zerogate.server.run import serve
    from zerogate.store import Store, storage_url

    if not _free(port):
        raise SystemExit(f"error: port {port} is in use; run `zerogate demo --port N`")
    data_dir.mkdir(parents=True, exist_ok=True)
    origin_port = _pick_port()
    path = data_dir / "demo.yaml"
    text = DEMO_YAML.format(path=path, port=port, origin_port=origin_port)
    path.write_text(text)
    loaded = load_file(path)

    async def apply() -> None:
        store = await Store.open(storage_url(loaded.config.storage, base_dir=data_dir))
        try:
            await store.apply(loaded.config.objects(), actor="demo", source="cli")
        finally:
            await store.close()

    asyncio.run(apply())
    origin = DemoOrigin(
        origin_port,
        certs_url=f"http://127.0.0.1:{port}/.zerogate/certs",
        certs_host=f"auth.localhost:{port}",
        issuer=f"https://auth.localhost:{port}",
        name="hello",
    )
    origin.start()
    console.print(
        Panel.fit(
            f"[bold]Open[/bold]      http://hello.localhost:{port}/\n"
            f"[bold]PINs[/bold]      http://auth.localhost:{port}/.zerogate/outbox\n"
            f"[bold]Log in as[/bold] you@example.com (staff) or alice@partner.test (partner);\n"
            f"          anyone else is refused. http://hello.localhost:{port}/finance\n"
            f"          also requires the office network (loopback counts).\n"
            f"[bold]Config[/bold]    {path}  (edit, then: zerogate apply -c {path})\n"
            "[dim]Ctrl-C stops the demo.[/dim]",
            title="zerogate demo",
        )
    )
    serve(path, loaded.config.settings(), workers=1, demo=True)
