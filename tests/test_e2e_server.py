"""``zerogate server`` features over plain HTTP: TLS, several workers, metrics, CORS, RS256,
unknown hosts — each against a real server process."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import trustme
from aiohttp import ClientSession, TCPConnector

from harness import free_port, wait_until
from zerogate.identity import issue_app_token
from zerogate.runtime import audience_tag, ensure_keyset
from zerogate.store import Store, storage_url
from zg_harness import FAST_PATH, VerifyingOrigin, Zerogate, hidden_inputs

pytestmark = pytest.mark.e2e


def body(origin_port: int, extra: str = "") -> str:
    return f"""{extra}
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: api
    domain: api.localhost
    origin: http://127.0.0.1:{origin_port}
    cors:
      mode: edge
      allowed_origins: [https://app.example.test]
      allowed_headers: [content-type]
      allow_credentials: true
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: api2
    domain: api2.localhost
    origin: http://127.0.0.1:{origin_port}
    cors: {{mode: origin}}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
"""


async def mint(zg: Zerogate, app: str, email: str) -> str:
    store = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=zg.workdir))
    try:
        keyset = await ensure_keyset(store)
    finally:
        await store.close()
    return issue_app_token(
        keyset,
        issuer=f"https://{zg.portal}",
        audience=audience_tag(app),
        email=email,
        sub=email,
        idp="otp",
        ttl_seconds=600,
        now=time.time(),
    )


def cookie_name(app: str) -> str:
    return f"__zg_{audience_tag(app)[:16]}"


async def get(
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    scheme: str = "http",
    ssl_context: ssl.SSLContext | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connector = TCPConnector(ssl=ssl_context) if ssl_context else None
    async with (
        ClientSession(connector=connector) as session,
        session.request(
            method,
            f"{scheme}://127.0.0.1:{port}{path}",
            headers={"Host": host, **(headers or {})},
            allow_redirects=False,
            data=data,
            server_hostname=host.split(":")[0] if ssl_context else None,
        ) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture(scope="module")
def origin() -> Iterator[VerifyingOrigin]:
    o = VerifyingOrigin("http://127.0.0.1:1/unused", "unused").start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, origin: VerifyingOrigin
) -> Iterator[Zerogate]:
    zg = Zerogate(tmp_path_factory.mktemp("w2"), free_port(), free_port())
    zg.apply(body(origin.port, "jwt_algorithm: RS256"))
    zg.start(workers=2)
    yield zg
    zg.stop()


def test_rs256_keys_are_served_and_verify(two_workers: Zerogate) -> None:
    status, _, raw = asyncio.run(get(two_workers.port, two_workers.portal, "/.zerogate/certs"))
    assert status == 200
    keys = json.loads(raw)["keys"]
    assert [k["alg"] for k in keys] == ["RS256"]
    assert keys[0]["kty"] == "RSA" and keys[0]["kid"]


def test_logout_on_one_worker_ends_the_session_on_every_worker(two_workers: Zerogate) -> None:
    zg = two_workers
    token = asyncio.run(mint(zg, "wiki", "ann@example.com"))
    cookie = {"Cookie": f"{cookie_name('wiki')}={token}"}

    async def statuses(n: int) -> list[int]:
        return [(await get(zg.port, "wiki.localhost", "/", headers=cookie))[0] for _ in range(n)]

    assert set(asyncio.run(statuses(10))) == {200}
    status, _, page = asyncio.run(
        get(zg.port, "wiki.localhost", "/.zerogate/logout", headers=cookie)
    )
    assert status == 200  # the page with the button; the POST logs out
    form = {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    data = urlencode(hidden_inputs(page.decode())).encode()
    status, headers, _ = asyncio.run(
        get(zg.port, "wiki.localhost", "/.zerogate/logout", method="POST", headers=form, data=data)
    )
    assert status == 303 and headers["Location"].endswith("/.zerogate/logout")
    # both workers learn the revocation from the store within a second or so
    wait_until(lambda: set(asyncio.run(statuses(10))) == {302}, timeout=5)


def test_metrics_for_this_machine_only(two_workers: Zerogate, tmp_path: Path) -> None:
    zg = two_workers
    asyncio.run(get(zg.port, "wiki.localhost", "/"))  # an unauthenticated request, counted

    for _ in range(4):  # two workers: whichever answers the scrape counts the other's too
        status, _, text = asyncio.run(get(zg.port, zg.portal, "/.zerogate/metrics"))
        assert status == 200
        assert b'zerogate_requests_total{app="wiki",decision="authenticate"} ' in text
        assert b"zerogate_config_version" in text
    # the same path on an application host is not the metrics endpoint
    status, _, raw = asyncio.run(get(zg.port, "wiki.localhost", "/.zerogate/metrics"))
    assert status != 200 or b"zerogate_requests_total" not in raw


def test_metrics_refused_outside_metrics_allow(tmp_path: Path, origin: VerifyingOrigin) -> None:
    zg = Zerogate(tmp_path, free_port(), free_port())
    zg.apply(body(origin.port, "metrics_allow: [10.0.0.0/8]"))
    zg.start()
    try:
        status, _, raw = asyncio.run(get(zg.port, zg.portal, "/.zerogate/metrics"))
        assert status == 404 and b"zerogate_requests" not in raw
    finally:
        zg.stop()


def test_cors_preflight_answered_at_the_edge(two_workers: Zerogate) -> None:
    zg = two_workers
    pre = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "POST"}
    status, headers, _ = asyncio.run(
        get(zg.port, "api.localhost", "/v1", method="OPTIONS", headers=pre)
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://app.example.test"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    evil = {**pre, "Origin": "https://evil.test"}
    status, headers, _ = asyncio.run(
        get(zg.port, "api.localhost", "/v1", method="OPTIONS", headers=evil)
    )
    assert status == 204 and "Access-Control-Allow-Origin" not in headers
    # a non-preflight request still needs a session
    status, _, _ = asyncio.run(get(zg.port, "api.localhost", "/v1", method="OPTIONS"))
    assert status == 401


def test_cors_preflight_passed_to_the_origin(
    two_workers: Zerogate, origin: VerifyingOrigin
) -> None:
    pre = {"Origin": "https://app.example.test", "Access-Control-Request-Method": "PUT"}
    before = len(origin.seen)
    status, _, raw = asyncio.run(
        get(two_workers.port, "api2.localhost", "/v2/x", method="OPTIONS", headers=pre)
    )
    assert status == 200
    seen: dict[str, Any] = json.loads(raw)
    assert seen["path"] == "/v2/x" and seen["email"] is None
    assert len(origin.seen) == before + 1


def test_unknown_host_is_a_plain_404(two_workers: Zerogate) -> None:
    status, _, raw = asyncio.run(get(two_workers.port, "nope.localhost", "/"))
    assert status == 404
    assert b"wiki" not in raw and b"api" not in raw


@pytest.mark.skipif(FAST_PATH, reason="listen.fast_path does not serve TLS yet")
def test_https_with_a_configured_certificate(tmp_path: Path, origin: VerifyingOrigin) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("auth.localhost", "wiki.localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "edge.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "edge.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "edge.crt"))
    zg = Zerogate(tmp_path, free_port(), free_port())
    zg.apply(body(origin.port))
    text = zg.config.read_text().replace(
        f"listen: {{http: 127.0.0.1:{zg.port}}}",
        f"listen: {{http: 127.0.0.1:{zg.port}, tls: {{cert: edge.crt, key: edge.key}}}}",
    )
    zg.config.write_text(text)
    zg.start()
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        status, headers, _ = asyncio.run(
            get(zg.port, f"wiki.localhost:{zg.port}", "/", scheme="https", ssl_context=context)
        )
        assert status == 302
        assert headers["Location"].startswith(f"https://auth.localhost:{zg.port}/")
        assert "Secure" in headers["Set-Cookie"]
    finally:
        zg.stop()
