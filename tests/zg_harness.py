"""A real zerogate for end-to-end tests: config file, store, ``zerogate server`` subprocess,
an origin that verifies the identity JWT against ``/.zerogate/certs`` with PyJWT, and a real SMTP
server (the Outbox) that receives the PIN emails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from aiohttp import ClientSession, web

ZEROGATE = [sys.executable, "-m", "zerogate"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout} s") from None
            time.sleep(0.05)


def wait_until(check: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


class VerifyingOrigin:
    """An origin that checks ``Zerogate-Jwt-Assertion`` against the edge's JWKS (as a real
    origin would) and echoes what it saw as JSON; runs on its own thread and loop."""

    def __init__(self, certs_url: str, issuer: str) -> None:
        self.certs_url = certs_url
        self.issuer = issuer
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        assertion = request.headers.get("Zerogate-Jwt-Assertion")
        claims: dict[str, Any] | None = None
        error = None
        if assertion:
            try:
                header = jwt.get_unverified_header(assertion)
                # certs_url names the portal host; connect to loopback with that Host header
                parts = urlsplit(self.certs_url)
                async with (
                    ClientSession() as session,
                    session.get(
                        f"http://127.0.0.1:{parts.port}{parts.path}",
                        headers={"Host": parts.netloc},
                    ) as resp,
                ):
                    keys = (await resp.json())["keys"]
                key = next(k for k in keys if k["kid"] == header["kid"])
                claims = jwt.decode(
                    assertion,
                    jwt.PyJWK(key).key,
                    algorithms=[key["alg"]],
                    issuer=self.issuer,
                    options={"verify_aud": False},
                )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        record = {
            "path": request.path_qs,
            "email": request.headers.get("Zerogate-Authenticated-User-Email"),
            "claims": claims,
            "jwt_error": error,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        self.seen.append(record)
        return web.json_response(record)

    def start(self) -> VerifyingOrigin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Zerogate:
    """A running ``zerogate server`` with its config file; ``apply`` edits the store."""

    workdir: Path
    port: int
    smtp_port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.workdir / "zerogate.yaml"

    @property
    def portal(self) -> str:
        return f"auth.localhost:{self.port}"

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    def write(self, body: str) -> None:
        self.config.write_text(
            f"portal: auth.localhost:{self.port}\n"
            f"listen: {{http: 127.0.0.1:{self.port}}}\n"
            "storage: sqlite:///zerogate.db\n"
            f"email: {{smtp: {{host: 127.0.0.1, port: {self.smtp_port}, timeout: 5s}}, "
            'from: "Access <noreply@example.test>"}\n' + body
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ZEROGATE, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.workdir,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        )

    def apply(self, body: str) -> None:
        self.write(body)
        result = self.cli("apply", "-c", str(self.config))
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*ZEROGATE, "server", "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "ZEROGATE_LOG_LEVEL": "WARNING"},
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_zerogate(workdir: Path, smtp_port: int, body: str) -> Iterator[Zerogate]:
    zg = Zerogate(workdir, free_port(), smtp_port)
    zg.apply(body)
    zg.start()
    try:
        yield zg
    finally:
        zg.stop()
