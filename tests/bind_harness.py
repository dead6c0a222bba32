"""A real BIND 9 ``named`` for DNS tests: its own config, zone and TSIG key in a temporary
folder, listening on a free loopback port (UDP and TCP), never the system service."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from harness import free_port, wait_until

NAMED = shutil.which("named") or "/usr/sbin/named"

ZONE_FILE = """\
$TTL 300
@       IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 300
@       IN NS  ns1.{zone}.
ns1     IN A   127.0.0.1
{extra}
"""

CONF = """\
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
    notify no;
}};
controls {{ }};
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{zone}" {{
    type primary;
    file "{dir}/zone.db";
    allow-update {{ key "{key_name}"; }};
}};
"""


@dataclass
class Bind:
    """A running ``named`` serving ``zone``, updatable with the TSIG key ``key_name``."""

    folder: Path
    zone: str = "example.test"
    key_name: str = "zerogate-key"
    port: int = 0
    secret: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, extra_records: str = "") -> Bind:
        self.port = free_port()
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "zone.db").write_text(ZONE_FILE.format(zone=self.zone, extra=extra_records))
        conf = self.folder / "named.conf"
        conf.write_text(
            CONF.format(
                dir=self.folder,
                port=self.port,
                key_name=self.key_name,
                secret=self.secret,
                zone=self.zone,
            )
        )
        log = open(self.folder / "named.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [NAMED, "-g", "-4", "-c", str(conf), "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=20, what=f"named answering on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"named exited: {self.log()[-2000:]}")
        try:
            reply = dns.query.udp(
                dns.message.make_query(self.zone, dns.rdatatype.SOA),
                "127.0.0.1",
                port=self.port,
                timeout=0.5,
            )
        except (OSError, dns.exception.Timeout):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.folder / "named.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
