"""OIDC failures no real provider produces, against a tiny fake provider whose keys we control.

A certified provider never signs with ``alg: none``, with a key outside its JWKS, for another
audience or issuer, or an id_token that has already expired, so ``test_oidc_e2e.py`` (the real
``oidc-provider``) cannot show that zerogate refuses them. This module's fake provider exists
ONLY for those cases: it answers discovery, JWKS, authorize (straight back to the callback) and
token (checking the PKCE verifier and the client's Basic credentials like a real one), and mints
the id_token the test asks for. Everything else about OIDC is tested against the real provider.

Each failure must be a page (no traceback), an access-log record, and no portal session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urljoin

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from harness import free_port, wait_for
from zerogate.store import AccessEvent
from zg_harness import (
    HttpBrowser,
    Reply,
    ThreadedOutbox,
    VerifyingOrigin,
    Zerogate,
    app_cookie_name,
    open_store,
)

pytestmark = pytest.mark.e2e

CLIENT_ID = "zerogate-fake"
CLIENT_SECRET = "fake-secret-0123456789abcdef"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FakeProvider:
    """Discovery, JWKS, authorize, token; the id_token shape is ``self.mode``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.mode = "ok"
        self.jwks_hits = 0
        self.codes: dict[str, dict[str, str]] = {}
        self.token_requests: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    # -- server plumbing (own thread and loop, like zg_harness.VerifyingOrigin)
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> FakeProvider:
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

    # -- endpoints
    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": True,
            }
        )

    def jwk(self, key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        return {**data, "kid": kid, "alg": "RS256", "use": "sig"}

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": [self.jwk(self.key, "k1")]})

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "nonce": q["nonce"],
            "challenge": q["code_challenge"],
            "method": q["code_challenge_method"],
            "redirect_uri": q["redirect_uri"],
            "client_id": q["client_id"],
        }
        iss = "http://evil.test" if self.mode == "callback_iss" else self.issuer
        query = urlencode({"code": code, "state": q["state"], "iss": iss})
        raise web.HTTPFound(f"{q['redirect_uri']}?{query}")

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        grant = self.codes.pop(str(form.get("code", "")), None)
        verifier = str(form.get("code_verifier", ""))
        pkce_ok = grant is not None and b64url(
            hashlib.sha256(verifier.encode()).digest()
        ) == grant.get("challenge")
        self.token_requests.append(
            {
                "basic_ok": request.headers.get("Authorization") == expected,
                "pkce_ok": pkce_ok,
                "method": grant and grant["method"],
                "redirect_ok": grant is not None
                and form.get("redirect_uri") == grant["redirect_uri"],
            }
        )
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        if grant is None or not pkce_ok:
            return web.json_response({"error": "invalid_grant"}, status=400)
        return web.json_response(
            {
                "access_token": "at-" + secrets.token_urlsafe(8),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self.id_token(grant["nonce"]),
            }
        )

    # -- the id_token of each mode
    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "fake-user-1",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "email": "root@fake.test",
            "email_verified": True,
            "groups": ["admins"],
            "amr": ["hwk", "mfa"],
        }
        header: dict[str, Any] = {"kid": "k1"}
        key: Any = self.key
        alg = "RS256"
        mode = self.mode
        if mode == "wrong_aud":
            claims["aud"] = "another-client"
        elif mode == "wrong_iss":
            claims["iss"] = "http://127.0.0.1:1"
        elif mode == "azp_missing":
            claims["aud"] = [CLIENT_ID, "another-client"]
        elif mode == "expired":
            claims["iat"], claims["exp"] = now - 400, now - 200
        elif mode == "future_iat":
            claims["iat"] = now + 3600
        elif mode == "nonce":
            claims["nonce"] = "not-the-nonce"
        elif mode == "foreign_key":
            key = self.foreign
        elif mode == "unknown_kid":
            key, header = self.foreign, {"kid": "k-unknown"}
        elif mode == "jwk_header":
            key, header = self.foreign, {"kid": "k1", "jwk": self.jwk(self.foreign, "k1")}
        elif mode == "alg_none":
            head = b64url(json.dumps({"alg": "none", "kid": "k1", "typ": "JWT"}).encode())
            return f"{head}.{b64url(json.dumps(claims).encode())}."
        elif mode == "hs256":
            # the classic confusion: HMAC keyed with the provider's public key
            public = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head = b64url(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
            body = b64url(json.dumps(claims).encode())
            mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
            return f"{head}.{body}.{b64url(mac)}"
        return jwt.encode(claims, key, algorithm=alg, headers=header)


def config(origin: int, fake: FakeProvider) -> str:
    return f"""
identity_providers:
  - {{name: fake, type: oidc, issuer: "{fake.issuer}", client_id: {CLIENT_ID},
      client_secret_env: ZG_TEST_FAKE_SECRET, groups_claim: groups}}
applications:
  - name: vault
    domain: vault.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [fake]
    policies:
      - {{name: admins with a hardware key, decision: allow, include: [{{idp_group: [admins]}}],
          require: [{{auth_method: [hwk]}}]}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Zerogate, FakeProvider]]:
    workdir = tmp_path_factory.mktemp("oidc-fake")
    port = free_port()
    outbox = ThreadedOutbox().start()
    fake = FakeProvider().start()
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    saved = os.environ.get("ZG_TEST_FAKE_SECRET")
    os.environ["ZG_TEST_FAKE_SECRET"] = CLIENT_SECRET
    zg = Zerogate(workdir, port, outbox.port)
    try:
        zg.apply(config(origin.port, fake))
        zg.start()
        yield zg, fake
    finally:
        zg.stop()
        origin.stop()
        fake.stop()
        outbox.stop()
        if saved is None:
            os.environ.pop("ZG_TEST_FAKE_SECRET", None)
        else:
            os.environ["ZG_TEST_FAKE_SECRET"] = saved


async def login(zg: Zerogate, fake: FakeProvider, mode: str) -> tuple[HttpBrowser, Reply]:
    """The app, the auto-redirect to the (only) provider, its answer, zerogate's callback."""
    fake.mode = mode
    browser = HttpBrowser()
    async with browser:
        chain = await browser.follow(zg.url("vault.localhost", "/secret"))
    assert any("/.zerogate/oidc/fake/callback" in r.url for r in chain), [r.url for r in chain]
    return browser, chain[-1]


async def login_events(zg: Zerogate) -> list[AccessEvent]:
    async with open_store(zg) as store:
        return await store.access_log(kind="login", limit=500)


async def wait_for_event(zg: Zerogate, detail: str) -> AccessEvent:
    async def found() -> AccessEvent | None:
        events = await login_events(zg)
        return next((e for e in events if e.detail and detail in e.detail), None)

    return await wait_for(
        found, timeout=10, what=f"an access-log record with {detail!r}", interval=0.2
    )


async def test_control_a_well_formed_token_logs_in_with_groups_and_amr(
    stack: tuple[Zerogate, FakeProvider],
) -> None:
    """The control for every refusal below: the same provider, a well-formed token."""
    zg, fake = stack
    browser, reply = await login(zg, fake, "ok")
    assert reply.status == 200, reply.text[:500]
    seen = reply.json()
    assert seen["email"] == "root@fake.test"
    assert seen["claims"]["groups"] == ["admins"]
    assert seen["claims"]["amr"] == ["hwk", "mfa"]
    assert "__zg_portal" in browser.cookies("auth.localhost")
    last = fake.token_requests[-1]
    assert last == {"basic_ok": True, "pkce_ok": True, "method": "S256", "redirect_ok": True}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("alg_none", "alg_not_allowed"),
        ("hs256", "alg_not_allowed"),
        ("foreign_key", "bad_signature"),
        ("unknown_kid", "unknown_kid"),
        ("jwk_header", "id_token_malformed"),
        ("wrong_aud", "wrong_audience"),
        ("wrong_iss", "wrong_issuer"),
        ("azp_missing", "wrong_azp"),
        ("expired", "expired"),
        ("future_iat", "bad_time"),
        ("nonce", "nonce_mismatch"),
        ("callback_iss", "wrong_issuer"),
    ],
)
async def test_a_token_the_real_provider_would_never_send_is_refused(
    stack: tuple[Zerogate, FakeProvider], mode: str, reason: str
) -> None:
    zg, fake = stack
    browser, reply = await login(zg, fake, mode)
    assert reply.status == 400, (reply.status, reply.text[:500])
    assert "Sign-in failed" in reply.text
    assert f"Reason: {reason}" in reply.text
    assert "Traceback" not in reply.text
    assert "__zg_portal" not in browser.cookies("auth.localhost")
    assert app_cookie_name("vault") not in browser.cookies("vault.localhost")
    event = await wait_for_event(zg, f"oidc {reason}")
    assert event.decision == "block" and event.idp == "fake"


async def test_unknown_kids_refetch_the_jwks_at_a_bounded_rate(
    stack: tuple[Zerogate, FakeProvider],
) -> None:
    zg, fake = stack
    before = fake.jwks_hits
    for _ in range(5):
        _, reply = await login(zg, fake, "unknown_kid")
        assert reply.status == 400
    assert fake.jwks_hits - before <= 1  # at most one refetch per minute, whatever the traffic


async def test_a_browser_cookie_zerogate_did_not_sign_cannot_fix_the_login_state(
    stack: tuple[Zerogate, FakeProvider],
) -> None:
    """OIDC state fixation (issue 17): an attacker plants a ``__zg_oidc`` value they know in
    the victim's browser (a sibling host's ``Domain=`` cookie), starts a login with the same
    value, and sends the victim the provider's answer. zerogate replaces a value it did not
    sign at the start, so the answer is bound to another value and the victim gets no
    session (before, the victim was signed in as the attacker)."""
    zg, fake = stack
    fake.mode = "ok"
    fixed = "A" * 43
    async with HttpBrowser() as attacker:
        attacker.set_cookie("auth.localhost", "__zg_oidc", fixed, "/")
        url = zg.url("vault.localhost", "/secret")
        for _ in range(10):
            reply = await attacker.get(url)
            assert reply.location, (reply.status, reply.text[:300])
            url = urljoin(url, reply.location)
            if "/.zerogate/oidc/fake/callback" in url:
                break
        assert "/.zerogate/oidc/fake/callback" in url
        assert attacker.cookies("auth.localhost")["__zg_oidc"] != fixed
    async with HttpBrowser() as victim:
        victim.set_cookie("auth.localhost", "__zg_oidc", fixed, "/")
        chain = await victim.follow(url)
        assert chain[0].status == 400, (chain[0].status, chain[0].text[:300])
        assert "did not start in this browser" in chain[0].text
        assert "__zg_portal" not in victim.cookies("auth.localhost")
