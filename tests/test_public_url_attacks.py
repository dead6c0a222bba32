"""Who decides the scheme, host and cookie names of a request (issue #15, public URL).

Only a peer in ``trusted_proxies`` may change them with ``X-Forwarded-Proto`` / ``-Host``; a
client that sends them directly changes neither the scheme of the redirects, nor the cookie
names (``__Host-``, ``Secure``), nor the host the request routes to; a ``portal`` given as an
``https://`` URL pins the scheme against everyone. The end-to-end tests behind real proxies are
``test_e2e_public_url.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import free_port
from zg_harness import HttpBrowser, ThreadedOutbox, Zerogate

pytestmark = pytest.mark.e2e

CONFIG = """
trusted_proxies: [127.0.0.1/32]
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - {{name: wiki, domain: wiki.localhost, origin: "http://127.0.0.1:{port}",
      policies: [{{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}]}}
  - {{name: vault, domain: vault.localhost, origin: "http://127.0.0.1:{port}",
      policies: [{{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


# ---------------------------------------------------------------- forwarded headers: who decides


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    """A zerogate on plain HTTP with a bare ``portal: auth.localhost:<port>`` and
    ``trusted_proxies: [127.0.0.1/32]``: the scheme is each request's own."""
    zg = Zerogate(tmp_path_factory.mktemp("public-url-bare"), free_port(), outbox.port)
    zg.extra["body"] = CONFIG.format(port=free_port())
    zg.apply(zg.extra["body"])
    zg.start()
    yield zg
    zg.stop()


SPOOF = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "vault.localhost"}


def set_cookie_names(reply_headers: list[str]) -> list[str]:
    return [h.split("=", 1)[0] for h in reply_headers]


async def test_an_untrusted_peer_cannot_choose_scheme_host_or_cookie_names(
    bare: Zerogate,
) -> None:
    # 127.0.0.2 is not in trusted_proxies: its X-Forwarded-* are the client's own words
    async with HttpBrowser(source="127.0.0.2", headers=SPOOF) as client:
        reply = await client.get(bare.url("wiki.localhost", "/page"))
    assert reply.status == 302, reply.text[:300]
    assert reply.location is not None
    assert reply.location.startswith(f"http://auth.localhost:{bare.port}/.zerogate/login?")
    cookies = reply.headers.getall("set-cookie")
    assert cookies and all("secure" not in c.lower() for c in cookies), cookies
    assert not any(n.startswith("__Host-") for n in set_cookie_names(cookies)), cookies
    # the login is wiki's (the Host header), not that of the host the client named
    async with HttpBrowser(source="127.0.0.2", headers=SPOOF) as client:
        login = await client.get(reply.location)
    assert login.status == 200, login.text[:300]
    assert "wiki" in login.text and "vault" not in login.text


async def test_an_untrusted_peer_cannot_route_by_x_forwarded_host(bare: Zerogate) -> None:
    async with HttpBrowser(source="127.0.0.2") as client:
        unknown = await client.get(
            bare.url("nothing.localhost", "/"), headers={"X-Forwarded-Host": "wiki.localhost"}
        )
        malformed = await client.get(
            bare.url("wiki.localhost", "/"), headers={"X-Forwarded-Host": "a b/c"}
        )
    assert unknown.status == 404, unknown.text[:300]
    # ignored, so not even malformed: the Host header routes
    assert malformed.status == 302, malformed.text[:300]


async def test_control_the_trusted_proxy_decides_scheme_host_and_cookie_names(
    bare: Zerogate,
) -> None:
    async with HttpBrowser(source="127.0.0.1", headers=SPOOF) as proxy:
        reply = await proxy.get(bare.url("nothing.localhost", "/page"))
        malformed = await proxy.get(
            bare.url("wiki.localhost", "/"), headers={"X-Forwarded-Host": "a b/c"}
        )
    assert reply.status == 302, reply.text[:300]
    assert reply.location is not None
    assert reply.location.startswith(f"https://auth.localhost:{bare.port}/.zerogate/login?")
    cookies = reply.headers.getall("set-cookie")
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    assert all(n.startswith("__Host-") for n in set_cookie_names(cookies)), cookies
    # a trusted proxy's malformed X-Forwarded-Host fails closed
    assert malformed.status == 400, malformed.text[:300]


async def test_a_pinned_public_url_ignores_a_proxy_that_says_http(bare: Zerogate) -> None:
    """With ``portal: https://…`` the scheme is pinned: not even a trusted peer's
    ``X-Forwarded-Proto: http`` turns the redirects or the cookies back to plain."""
    bare.stop()
    bare.portal_setting = f"https://auth.localhost:{bare.port}"
    try:
        bare.write(bare.extra["body"])
        bare.start()
        for source in ("127.0.0.1", "127.0.0.2"):
            async with HttpBrowser(source=source, headers={"X-Forwarded-Proto": "http"}) as c:
                reply = await c.get(bare.url("wiki.localhost", "/page"))
            assert reply.status == 302, reply.text[:300]
            assert reply.location is not None
            assert reply.location.startswith(
                f"https://auth.localhost:{bare.port}/.zerogate/login?"
            ), reply.location
            cookies = reply.headers.getall("set-cookie")
            assert all(n.startswith("__Host-") for n in set_cookie_names(cookies)), cookies
    finally:
        bare.stop()
        bare.portal_setting = None
        bare.write(bare.extra["body"])
        bare.start()


async def test_x_forwarded_port_only_from_a_trusted_proxy_and_only_for_a_bare_portal(
    bare: Zerogate,
) -> None:
    """``portal: auth.localhost`` names no port: a trusted proxy's ``X-Forwarded-Port`` gives
    the public one to every redirect; an untrusted peer's changes nothing."""
    bare.stop()
    bare.portal_setting = "auth.localhost"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Port": "8443"}
    try:
        bare.write(bare.extra["body"])
        bare.start()
        async with HttpBrowser(source="127.0.0.1", headers=headers) as proxy:
            trusted = await proxy.get(bare.url("wiki.localhost", "/page"))
            odd = await proxy.get(
                bare.url("wiki.localhost", "/page"), headers={"X-Forwarded-Port": "99999"}
            )
        async with HttpBrowser(source="127.0.0.2", headers=headers) as client:
            spoofed = await client.get(bare.url("wiki.localhost", "/page"))
        assert trusted.status == 302, trusted.text[:300]
        assert trusted.location is not None
        assert trusted.location.startswith("https://auth.localhost:8443/.zerogate/login?")
        assert odd.status == 400, odd.text[:300]
        assert spoofed.status == 302, spoofed.text[:300]
        assert spoofed.location is not None
        assert spoofed.location.startswith("http://auth.localhost/.zerogate/login?")
    finally:
        bare.stop()
        bare.portal_setting = None
        bare.write(bare.extra["body"])
        bare.start()
