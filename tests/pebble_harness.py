"""A real Pebble (Let's Encrypt's ACME test server, Debian package ``pebble``) for the automatic
HTTPS tests: its own TLS certificate (trustme), config and free ports, resolving every name
through the test's own BIND ``named`` (``-dnsserver``), so HTTP-01, TLS-ALPN-01 and DNS-01 are
validated for real against the server under test on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import trustme

from harness import free_port, wait_until

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"


@dataclass
class Pebble:
    """A running ``pebble``: ``directory`` (https), validating HTTP-01 on ``http_port`` and
    TLS-ALPN-01 on ``tls_port`` of 127.0.0.1, names resolved by ``dns_server``."""

    folder: Path
    dns_server: str
    #: seconds each issued certificate is valid (0: Pebble's default, years)
    validity: int = 0
    port: int = 0
    management_port: int = 0
    http_port: int = 0
    tls_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Pebble:
        self.folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.folder / "key.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(self.folder / "cert.pem"))
        ca.cert_pem.write_to_path(str(self.folder / "ca.pem"))
        self.port, self.management_port = free_port(), free_port()
        self.http_port, self.tls_port = free_port(), free_port()
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.folder / "cert.pem"),
            "privateKey": str(self.folder / "key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity:
            config["certificateValidityPeriod"] = self.validity
        (self.folder / "pebble.json").write_text(json.dumps({"pebble": config}))
        log = open(self.folder / "pebble.log", "wb")  # noqa: SIM115 - closed with the process
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # validate at once, not after up to 15 s
            "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce answers
            "PEBBLE_AUTHZREUSE": "0",  # every order validates again
        }
        self.proc = subprocess.Popen(
            [
                PEBBLE,
                "-config",
                str(self.folder / "pebble.json"),
                "-dnsserver",
                self.dns_server,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        wait_until(self._answers, timeout=20, what="pebble serving its directory")
        return self

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def ca_file(self) -> Path:
        """The CA of Pebble's own HTTPS (what ``acme.ca_bundle`` names)."""
        return self.folder / "ca.pem"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pebble exited: {self.log()[-2000:]}")
        try:
            with urllib.request.urlopen(self.directory, context=self._context(), timeout=2):
                return True
        except OSError:
            return False

    def issuing_roots(self) -> str:
        """The PEM of the root Pebble issues under (random per start): what clients trust."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as reply:
            return str(reply.read().decode("ascii"))

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only what this Pebble issues."""
        context = ssl.create_default_context(cadata=self.issuing_roots())
        return context

    def log(self) -> str:
        path = self.folder / "pebble.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
