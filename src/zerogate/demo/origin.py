"""The demo's origin: a tiny internal web app that shows who zerogate says you are.

It listens on loopback only and trusts nothing but the ``Zerogate-Jwt-Assertion`` header,
which it verifies against the portal's ``/.zerogate/certs`` with PyJWT, as a real origin would.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
from typing import Any

import jwt
from aiohttp import ClientSession, web

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:3rem auto;padding:0 1rem}}
code,pre{{background:#f0f1f4;border-radius:6px;padding:.15rem .35rem}}
pre{{padding:1rem;overflow:auto}}
.ok{{color:#0a7a33}}.bad{{color:#a11}}</style></head><body>
<h1>{title}</h1><p>{line}</p><p class="{cls}">{verdict}</p>
<h3>Claims in <code>Zerogate-Jwt-Assertion</code></h3><pre>{claims}</pre>
<p><a href="/.zerogate/identity">/.zerogate/identity</a> ·
<a href="/.zerogate/logout">log out everywhere</a></p></body></html>"""


class DemoOrigin:
    def __init__(self, port: int, certs_url: str, certs_host: str, issuer: str, name: str) -> None:
        self.port = port
        self.certs_url = certs_url
        self.certs_host = certs_host
        self.issuer = issuer
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="demo-origin")

    async def _verify(self, token: str) -> dict[str, Any]:
        async with (
            ClientSession() as session,
            session.get(self.certs_url, headers={"Host": self.certs_host}) as resp,
        ):
            keys = (await resp.json())["keys"]
        kid = jwt.get_unverified_header(token).get("kid")
        key = next(k for k in keys if k.get("kid") == kid)
        claims: dict[str, Any] = jwt.decode(
            token,
            jwt.PyJWK(key).key,
            algorithms=[key["alg"]],
            issuer=self.issuer,
            options={"verify_aud": False},
        )
        return claims

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Zerogate-Jwt-Assertion", "")
        email = request.headers.get("Zerogate-Authenticated-User-Email", "")
        client = request.headers.get("X-Forwarded-For", "?")
        try:
            claims = await self._verify(token) if token else {}
            verdict, cls = ("The signature verified against /.zerogate/certs.", "ok")
        except Exception as exc:
            claims, verdict, cls = {}, f"The JWT did not verify: {exc}", "bad"
        body = PAGE.format(
            title=html.escape(f"{self.name}: hello, {email or 'anonymous'}"),
            line=html.escape(f"You asked for {request.path_qs} from {client}."),
            verdict=html.escape(verdict) if token else "No identity (a bypass policy let this in).",
            cls=cls,
            claims=html.escape(json.dumps(claims, indent=2)),
        )
        return web.Response(text=body, content_type="text/html")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
