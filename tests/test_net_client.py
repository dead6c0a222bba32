"""The one bounded outbound client: redirects stay on the request's origin (SSRF through an
identity provider's discovery redirect, issue 17), answers are size-limited."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from harness import free_port
from zerogate.identity.oidc import FetchError, HttpRequest
from zerogate.net.client import FetchFailed, fetch
from zerogate.runtime.fetch import oidc_fetch


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int]]:
    """``(provider, internal)``: the provider redirects; the internal one must never be hit."""
    hits: list[str] = []

    async def internal(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"secret": "internal"})

    inner_port, outer_port = free_port(), free_port()

    async def provider(request: web.Request) -> web.Response:
        if request.path == "/away/.well-known/openid-configuration":
            raise web.HTTPFound(f"http://127.0.0.1:{inner_port}/metadata")
        if request.path == "/moved/.well-known/openid-configuration":
            raise web.HTTPFound("/real/.well-known/openid-configuration")
        if request.path == "/big":
            return web.Response(body=b"x" * 5000)
        return web.json_response({"ok": request.path})

    runners = []
    for handler, port in ((internal, inner_port), (provider, outer_port)):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    try:
        yield outer_port, inner_port
    finally:
        for runner in runners:
            await runner.cleanup()
    assert hits == [], hits


async def test_a_redirect_to_another_host_or_port_is_not_followed(
    servers: tuple[int, int],
) -> None:
    outer, _ = servers
    with pytest.raises(FetchFailed, match="another host or port"):
        await fetch(
            "GET",
            f"http://127.0.0.1:{outer}/away/.well-known/openid-configuration",
            timeout=5,
            max_bytes=10_000,
        )
    # the same through the identity layer's Fetch (what "test connection" and logins use)
    with pytest.raises(FetchError, match="not followed"):
        await oidc_fetch(5, 10_000)(
            HttpRequest("GET", f"http://127.0.0.1:{outer}/away/.well-known/openid-configuration")
        )


async def test_a_redirect_on_the_same_origin_is_followed(servers: tuple[int, int]) -> None:
    outer, _ = servers
    got = await fetch(
        "GET",
        f"http://127.0.0.1:{outer}/moved/.well-known/openid-configuration",
        timeout=5,
        max_bytes=10_000,
    )
    assert got.status == 200 and b"/real/.well-known" in got.body


async def test_an_answer_over_the_limit_is_refused(servers: tuple[int, int]) -> None:
    outer, _ = servers
    with pytest.raises(FetchFailed, match="larger than 1000"):
        await fetch("GET", f"http://127.0.0.1:{outer}/big", timeout=5, max_bytes=1000)
    got = await fetch("GET", f"http://127.0.0.1:{outer}/big", timeout=5, max_bytes=5000)
    assert len(got.body) == 5000
