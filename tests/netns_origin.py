"""A stand-alone origin for the network-namespace test: run with ``ip netns exec NS python
netns_origin.py PORT CERTS_URL CERTS_HOST ISSUER``. It listens on the namespace's loopback only,
checks ``Zerogate-Jwt-Assertion`` against the edge's JWKS (fetched over the namespace's veth
link, as a real origin on another network would) and answers an HTML page that says whom it
saw, so a browser test can read it."""

from __future__ import annotations

import html
import sys
from typing import Any

import jwt
from aiohttp import ClientSession, web


def main() -> None:
    port, certs_url, certs_host, issuer = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

    async def handle(request: web.Request) -> web.Response:
        assertion = request.headers.get("Zerogate-Jwt-Assertion", "")
        verdict = "no assertion"
        claims: dict[str, Any] = {}
        if assertion:
            try:
                kid = jwt.get_unverified_header(assertion)["kid"]
                async with (
                    ClientSession() as session,
                    session.get(certs_url, headers={"Host": certs_host}) as resp,
                ):
                    keys = (await resp.json())["keys"]
                key = next(k for k in keys if k["kid"] == kid)
                claims = jwt.decode(
                    assertion,
                    jwt.PyJWK(key).key,
                    algorithms=[key["alg"]],
                    issuer=issuer,
                    options={"verify_aud": False},
                )
                verdict = "verified"
            except Exception as exc:
                verdict = f"invalid: {type(exc).__name__}"
        email = request.headers.get("Zerogate-Authenticated-User-Email", "")
        body = (
            "<!doctype html><title>netns origin</title>"
            f"<p id=who>{html.escape(email)}</p><p id=jwt>{verdict}</p>"
            f"<p id=sub>{html.escape(str(claims.get('email', '')))}</p>"
            f"<p id=path>{html.escape(request.path_qs)}</p>"
        )
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(port), print=None, handle_signals=True)


if __name__ == "__main__":
    main()
