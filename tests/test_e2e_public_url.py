"""The public URL behind a real TLS terminator (issue #15).

A real HAProxy, a real Caddy and a real nginx (Debian packages) terminate TLS with trustme
certificates and talk plain HTTP to a zerogate with
``portal: https://auth.localhost:<proxy port>`` and ``trusted_proxies: [127.0.0.1/32]``;
their configuration is the snippet in docs/deploy.md
("Behind a load balancer or TLS terminator"), with only the certificate, ports and addresses
put in. Through each: a PIN login in a real browser ends on the application with ``__Host-``
Secure cookies, every redirect on ``https://`` with the proxy's port, and the origin receiving
an identity whose ``iss`` is the portal URL; an OIDC login sends (and is redeemed with) the
``https://`` ``redirect_uri``. The attack tests (untrusted peers' ``X-Forwarded-*``) are in
``test_public_url_attacks.py``.

Under CI (``CI`` set) a missing ``haproxy``, ``caddy`` or ``nginx`` fails the run instead of
skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trustme
from multidict import CIMultiDict
from playwright.sync_api import Browser, Cookie, Response, sync_playwright

from harness import free_port, wait_for_port, wait_until
from test_oidc_e2e import ACCOUNTS, PROVIDER_DIR, SECRET_BASIC, require_node
from test_oidc_fake_provider import CLIENT_SECRET, FakeProvider
from zg_harness import Reply, ThreadedOutbox, VerifyingOrigin, Zerogate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
DEPLOY_DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
HOSTS = ("auth.localhost", "wiki.localhost", "vault.localhost", "lab.localhost", "corp.localhost")

CONFIG = """
trusted_proxies: [127.0.0.1/32]
identity_providers:
  - {{name: otp, type: onetimepin}}
  - {{name: fake, type: oidc, issuer: "{issuer}", client_id: zerogate-fake,
      client_secret_env: ZG_TEST_FAKE_SECRET}}
  - {{name: corp, type: oidc, issuer: "{corp}", client_id: zerogate-basic,
      client_secret_env: ZG_TEST_OIDC_BASIC}}
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{port}
    identity_providers: [otp]
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: vault
    domain: vault.localhost
    origin: http://127.0.0.1:{port}
    identity_providers: [fake]
    policies:
      - {{name: fake users, decision: allow, include: [{{email_domain: [fake.test]}}]}}
  - name: corp
    domain: corp.localhost
    origin: http://127.0.0.1:{port}
    identity_providers: [corp]
    policies:
      - {{name: corp staff, decision: allow, include: [{{email_domain: [corp.test]}}]}}
  - name: lab
    domain: lab.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: one machine, decision: bypass, include: [{{ip: [127.0.0.9/32]}}]}}
      - {{name: not that one, decision: block, include: [{{ip: [127.0.0.10/32]}}]}}
"""


def doc_snippet(language: str) -> str:
    """The one fenced ``language`` block of docs/deploy.md's proxy section."""
    text = DEPLOY_DOC.read_text()
    start = text.index("## Behind a load balancer or TLS terminator")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else None]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"docs/deploy.md: expected one {language} block, found {blocks}"
    return str(blocks[0])


def need(program: str) -> str:
    path = shutil.which(program) or (
        f"/usr/sbin/{program}" if program in ("haproxy", "nginx") else None
    )
    if path is None or not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (apt-get install {program})")
        pytest.skip(f"{program} is not installed")
    return path


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the docs snippet no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def start_haproxy(
    workdir: Path, cert: trustme.LeafCert, port: int, upstream: int
) -> subprocess.Popen[bytes]:
    pem = workdir / "haproxy.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    snippet = substitute(
        doc_snippet("haproxy"),
        {
            "bind :443 ssl crt /etc/haproxy/certs/zerogate.pem": (
                f"bind 127.0.0.1:{port} ssl crt {pem}"
            ),
            "server zerogate1 127.0.0.1:8080": f"server zerogate1 127.0.0.1:{upstream}",
        },
    )
    config = workdir / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 200\n\n"
        "defaults\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n"
        + snippet
    )
    checked = subprocess.run(
        [need("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return subprocess.Popen(
        [need("haproxy"), "-db", "-f", str(config)],
        stdout=open(workdir / "haproxy.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def start_caddy(
    workdir: Path, cert: trustme.LeafCert, port: int, upstream: int
) -> subprocess.Popen[bytes]:
    crt, key = workdir / "caddy.crt", workdir / "caddy.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    sites = ", ".join(f"https://{host}:{port}" for host in HOSTS)
    snippet = substitute(
        doc_snippet("caddyfile"),
        {
            "auth.example.com, wiki.example.com": sites,
            "reverse_proxy 127.0.0.1:8080": (
                f"bind 127.0.0.1\n    tls {crt} {key}\n    reverse_proxy 127.0.0.1:{upstream}"
            ),
        },
    )
    config = workdir / "Caddyfile"
    config.write_text(
        "{\n    admin off\n    auto_https disable_redirects\n"
        f"    storage file_system {{\n        root {workdir / 'caddy-data'}\n    }}\n}}\n\n"
        + snippet
    )
    home = workdir / "caddy-home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    return subprocess.Popen(
        [need("caddy"), "run", "--config", str(config), "--adapter", "caddyfile"],
        stdout=open(workdir / "caddy.log", "wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def start_nginx(
    workdir: Path, cert: trustme.LeafCert, port: int, upstream: int
) -> subprocess.Popen[bytes]:
    crt, key = workdir / "nginx.crt", workdir / "nginx.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    snippet = substitute(
        doc_snippet("nginx"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "server_name auth.example.com wiki.example.com;": f"server_name {' '.join(HOSTS)};",
            "ssl_certificate     /etc/nginx/certs/zerogate.crt;": f"ssl_certificate {crt};",
            "ssl_certificate_key /etc/nginx/certs/zerogate.key;": f"ssl_certificate_key {key};",
            "proxy_pass http://127.0.0.1:8080;": f"proxy_pass http://127.0.0.1:{upstream};",
        },
    )
    temp = "".join(
        f"    {kind}_temp_path {workdir / ('nginx-' + kind)};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = workdir / "nginx.conf"
    config.write_text(
        f"daemon off;\nworker_processes 1;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'nginx-error.log'} warn;\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp}{snippet}}}\n"
    )
    nginx = need("nginx")
    log = ["-e", str(workdir / "nginx-error.log")]
    checked = subprocess.run(
        [nginx, *log, "-t", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return subprocess.Popen(
        [nginx, *log, "-c", str(config)],
        stdout=open(workdir / "nginx.log", "wb"),
        stderr=subprocess.STDOUT,
    )


@dataclass
class Stack:
    proxy: str
    port: int  # the proxy's (public) port
    zg: Zerogate
    origin: VerifyingOrigin
    fake: FakeProvider
    ca: trustme.CA
    #: the port of the real OIDC provider (``corp``), started by the test that uses it
    corp_port: int

    def url(self, host: str, path: str = "/") -> str:
        return f"https://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module", params=["haproxy", "caddy", "nginx"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    outbox: ThreadedOutbox,
    ca: trustme.CA,
) -> Iterator[Stack]:
    proxy: str = request.param
    need(proxy)
    workdir = tmp_path_factory.mktemp(f"public-url-{proxy}")
    public, port = free_port(), free_port()
    issuer = f"https://auth.localhost:{public}"
    origin = VerifyingOrigin(f"http://auth.localhost:{port}/.zerogate/certs", issuer).start()
    fake = FakeProvider().start()
    corp_port = free_port()
    trust = workdir / "test-ca.pem"
    ca.cert_pem.write_to_path(str(trust))
    zg = Zerogate(workdir, port, outbox.port, portal_setting=issuer)
    start = {"haproxy": start_haproxy, "caddy": start_caddy, "nginx": start_nginx}[proxy]
    proc = None
    try:
        body = CONFIG.format(
            port=origin.port, issuer=fake.issuer, corp=f"https://127.0.0.1:{corp_port}"
        )
        zg.apply(body)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ZG_TEST_FAKE_SECRET", CLIENT_SECRET)
            env.setenv("ZG_TEST_OIDC_BASIC", SECRET_BASIC)
            # the real provider serves https with the test CA's certificate
            env.setenv("SSL_CERT_FILE", str(trust))
            zg.start()
        proc = start(workdir, ca.issue_cert(*HOSTS), public, port)
        wait_for_port(public, proc)
        yield Stack(proxy, public, zg, origin, fake, ca, corp_port)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        zg.stop()
        fake.stop()
        origin.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        yield b
        b.close()


def redirects_of(responses: list[Response]) -> list[str]:
    return [r.headers["location"] for r in responses if 300 <= r.status < 400]


def assert_public(stack: Stack, urls: list[str]) -> None:
    """Every URL zerogate sent the browser to is on https and the proxy's port."""
    assert urls, "no redirect was seen"
    for url in urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.port) == ("https", stack.port), (url, urls)


def assert_host_cookies(cookies: list[Cookie]) -> None:
    """Every zerogate cookie the browser kept is a ``__Host-`` one: Secure, HttpOnly, ``/``."""
    ours = [c for c in cookies if "__zg_" in c.get("name", "")]
    assert ours, cookies
    for c in ours:
        assert c.get("name", "").startswith("__Host-__zg_"), c
        assert c.get("secure") and c.get("httpOnly") and c.get("path") == "/", c


def test_pin_login_through_the_proxy_ends_on_the_app_with_host_cookies(
    stack: Stack, outbox: ThreadedOutbox, browser: Browser
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        responses: list[Response] = []
        page.on("response", lambda r: responses.append(r))
        page.goto(stack.url("wiki.localhost", "/hello?x=1"))
        page.wait_for_url(re.compile(rf"https://auth\.localhost:{stack.port}/\.zerogate/login\?"))
        mark = outbox.mark()
        page.fill('input[name="email"]', "ann@example.com")
        page.click("button[type=submit]")
        page.wait_for_selector('input[autocomplete="one-time-code"]')
        message = outbox.wait("ann@example.com", after=mark)
        assert message.pin is not None
        link = re.search(r'href="([^"]+/\.zerogate/login/otp/confirm[^"]+)"', message.html)
        assert link is not None
        assert link.group(1).startswith(f"https://auth.localhost:{stack.port}/"), link.group(1)
        page.fill('input[autocomplete="one-time-code"]', message.pin)
        page.click("button[type=submit]")
        page.wait_for_url(stack.url("wiki.localhost", "/hello?x=1"))
        seen = json.loads(page.inner_text("body"))
        # the origin got the session: the assertion verified against the JWKS, with the
        # portal URL as iss, and was told the request came over https
        assert seen["email"] == "ann@example.com", seen
        assert seen["jwt_error"] is None and seen["claims"] is not None, seen
        assert seen["claims"]["iss"] == f"https://auth.localhost:{stack.port}"
        assert seen["headers"]["x-forwarded-proto"] == "https", seen["headers"]
        assert_public(stack, redirects_of(responses))
        assert_host_cookies(context.cookies())
    finally:
        context.close()


def test_oidc_login_through_the_proxy_uses_the_https_redirect_uri(
    stack: Stack, browser: Browser
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        responses: list[Response] = []
        page.on("response", lambda r: responses.append(r))
        asked = len(stack.fake.token_requests)
        page.goto(stack.url("vault.localhost", "/"))
        page.wait_for_url(stack.url("vault.localhost", "/"))
        body = page.inner_text("body")
        assert body.startswith("{"), (page.url, body[:500], redirects_of(responses))
        seen = json.loads(body)
        assert seen["email"] == "root@fake.test", seen
        urls = redirects_of(responses)
        authorize = [u for u in urls if u.startswith(f"{stack.fake.issuer}/authorize")]
        assert len(authorize) == 1, urls
        sent = parse_qs(urlsplit(authorize[0]).query)["redirect_uri"]
        callback = f"https://auth.localhost:{stack.port}/.zerogate/oidc/fake/callback"
        assert sent == [callback]
        # the code was redeemed with that same redirect_uri
        assert stack.fake.token_requests[asked:] == [
            {"basic_ok": True, "pkce_ok": True, "method": "S256", "redirect_ok": True}
        ]
        assert_public(stack, [u for u in urls if u not in authorize])
        assert_host_cookies(context.cookies())
    finally:
        context.close()


def fetch(stack: Stack, host: str, path: str, source: str, headers: dict[str, str]) -> Reply:
    """One HTTPS request to the proxy from the loopback address ``source`` (SNI ``host``, the
    test CA trusted): a client machine other than the proxy's own address."""
    context = ssl.create_default_context()
    stack.ca.configure_trust(context)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{stack.port}\r\nConnection: close\r\n"
        f"Accept: application/json\r\n{head}\r\n"
    )
    raw = socket.create_connection(("127.0.0.1", stack.port), 10, source_address=(source, 0))
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(request.encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return Reply(status, CIMultiDict(), body, f"https://{host}:{stack.port}{path}")


def test_the_client_the_proxy_vouches_for_reaches_policy_origin_and_access_log(
    stack: Stack,
) -> None:
    """``X-Forwarded-For`` from the proxy names the client: an ``ip`` policy lets 127.0.0.9
    through and blocks 127.0.0.10, which the access log records by its own address, not the
    proxy's; 127.0.0.10 forging an entry for 127.0.0.9 changes nothing (the proxy appends or
    replaces, and the walk stops at the first untrusted hop)."""
    forged = {"X-Forwarded-For": "127.0.0.9", "X-Forwarded-Proto": "http"}
    mine = fetch(stack, "lab.localhost", "/by-ip", "127.0.0.9", {"X-Forwarded-Proto": "http"})
    assert mine.status == 200, mine.body[:300]
    seen = json.loads(mine.body)
    assert seen["path"] == "/by-ip"
    assert seen["headers"]["x-forwarded-proto"] == "https", seen["headers"]
    other = fetch(stack, "lab.localhost", "/forged", "127.0.0.10", forged)
    assert other.status == 403, other.body[:300]
    assert all(r["path"] != "/forged" for r in stack.origin.seen)

    def logged() -> list[dict[str, object]]:
        out = stack.zg.cli("logs", "-c", str(stack.zg.config), "--app", "lab", "--json")
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, object]] = json.loads(out.stdout)["access_log"]
        return rows

    wait_until(lambda: any(r.get("ip") == "127.0.0.10" for r in logged()), timeout=15)
    rows = logged()
    assert {r.get("ip") for r in rows} == {"127.0.0.10"}, rows
    assert {r.get("host") for r in rows} == {"lab.localhost"}, rows


def start_https_provider(stack: Stack, workdir: Path) -> subprocess.Popen[bytes]:
    """The real OIDC provider (``tests/oidc_provider``) over HTTPS (test CA) at
    ``https://127.0.0.1:<corp_port>``, whose one client may only come back to the portal's
    public ``https://`` callback."""
    node = require_node()
    cert = stack.ca.issue_cert("127.0.0.1")
    crt, key = workdir / "idp.crt", workdir / "idp.key"
    cert.cert_chain_pems[0].write_to_path(str(crt))
    cert.private_key_pem.write_to_path(str(key))
    callback = f"https://auth.localhost:{stack.port}/.zerogate/oidc/corp/callback"
    config = {
        "providers": [{"port": stack.corp_port, "tls": {"cert": str(crt), "key": str(key)}}],
        "clients": [
            {
                "client_id": "zerogate-basic",
                "client_secret": SECRET_BASIC,
                "redirect_uris": [callback],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            }
        ],
        "accounts": ACCOUNTS,
    }
    path = workdir / "provider.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [node, str(PROVIDER_DIR / "server.js"), str(path)],
        stdout=open(workdir / "provider.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        cwd=PROVIDER_DIR,
    )
    wait_for_port(stack.corp_port, proc)
    return proc


def test_oidc_login_against_the_real_provider_over_https(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    """The OpenID-certified provider, itself on https, accepts only the registered https
    callback on the proxy's port: an ``http://`` or port-less ``redirect_uri`` would be refused
    on its own page, and the login would never come back."""
    idp = start_https_provider(stack, tmp_path)
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(20_000)
    try:
        page = context.new_page()
        responses: list[Response] = []
        page.on("response", lambda r: responses.append(r))
        page.goto(stack.url("corp.localhost", "/reports"))
        page.wait_for_selector("input[name=login]")
        assert page.url.startswith(f"https://127.0.0.1:{stack.corp_port}/"), page.url
        page.fill("input[name=login]", "ann")
        page.fill("input[name=password]", str(ACCOUNTS["ann"]["password"]))
        page.click("button.login-submit")
        page.wait_for_url(stack.url("corp.localhost", "/reports"))
        seen = json.loads(page.inner_text("body"))
        assert seen["email"] == "ann@corp.test", seen
        assert seen["claims"]["iss"] == f"https://auth.localhost:{stack.port}", seen
        provider = f"https://127.0.0.1:{stack.corp_port}/"
        urls = redirects_of(responses)
        sent = [u for u in urls if u.startswith(provider) and "redirect_uri=" in u]
        assert len(sent) == 1, urls
        redirect_uri = parse_qs(urlsplit(sent[0]).query)["redirect_uri"]
        assert redirect_uri == [f"https://auth.localhost:{stack.port}/.zerogate/oidc/corp/callback"]
        # the provider's own redirects are relative (its login form) or go to its host
        ours = [u for u in urls if urlsplit(u).netloc and not u.startswith(provider)]
        assert_public(stack, ours)
        assert_host_cookies(context.cookies())
    finally:
        context.close()
        idp.terminate()
        idp.wait(10)
