"""An OIDC client secret set through the panel or API: stored encrypted with the server secret
and bound to the provider's issuer (a changed issuer never gets it), never shown back (API,
export, admin log), following a rename, gone with its provider; "test connection" checks the
client id and secret against the real OpenID provider (``tests/oidc_provider``)."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from sqlalchemy import text

from harness import free_port, wait_for
from test_oidc_e2e import SECRET_BASIC, SECRET_POST, RealProvider, start_provider
from zerogate.admin.idp_check import aiohttp_fetch, check_oidc
from zerogate.admin.service import Actor, AdminService, Invalid
from zerogate.model.objects import Objects
from zerogate.store import Store, idp_secrets, storage_url
from zerogate.store.secretbox import SecretBox, generate_key
from zg_harness import HttpBrowser, ThreadedOutbox, VerifyingOrigin, Zerogate, open_store

ME = Actor("ops@example.test", "192.0.2.1")
SECRET = "s3cret-value-that-must-never-show-up-0123456789"


def oidc(
    name: str = "corp", issuer: str = "https://id.example.test", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "type": "oidc", "issuer": issuer, "client_id": "zg", **extra}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        yield opened
    finally:
        await opened.close()


async def raw_rows(store: Store) -> str:
    """Everything the database holds, as text (what a dump would show)."""
    engine = store._engine
    lines = []
    async with engine.connect() as connection:
        for table in ("server_secrets", "objects", "admin_log"):
            rows = (await connection.execute(text(f"SELECT * FROM {table}"))).all()
            lines += [repr(tuple(row)) for row in rows]
    return "\n".join(lines)


async def test_stored_encrypted_bound_to_the_issuer_and_never_shown(store: Store) -> None:
    service = AdminService(store)
    await service.create("identity_providers", oidc(), ME)
    await service.set_oidc_secret("corp", SECRET, ME)
    assert await store.oidc_secret("corp", "https://id.example.test") == SECRET
    assert SECRET not in await raw_rows(store), "nowhere in the database in clear"
    # another issuer never gets it (an admin pointing the provider elsewhere)
    assert await store.oidc_secret("corp", "https://evil.example.test") is None
    item = await service.get("identity_providers", "corp")
    await service.update(
        "identity_providers",
        "corp",
        {**item.spec, "issuer": "https://evil.example.test"},
        version=item.version,
        actor=ME,
    )
    assert await store.oidc_secret("corp", "https://evil.example.test") is None
    # the admin log says that it was set, never what
    log = await service.admin_log(10)
    entry = next(e for e in log if e.kind == "client_secret")
    assert (entry.action, entry.name) == ("add", "corp")
    assert SECRET not in json.dumps([e.after for e in log] + [e.before for e in log])


async def test_a_rename_keeps_it_and_a_removal_deletes_it(store: Store) -> None:
    service = AdminService(store)
    await service.create("identity_providers", oidc(), ME)
    await service.set_oidc_secret("corp", SECRET, ME)
    item = await service.get("identity_providers", "corp")
    await service.update(
        "identity_providers", "corp", {**item.spec, "name": "okta"}, version=item.version, actor=ME
    )
    assert await store.oidc_secret("okta", "https://id.example.test") == SECRET
    assert await store.oidc_secret("corp", "https://id.example.test") is None
    # an apply that removes the provider (made by the API: kept unless pruned) removes its
    # secret with it
    await store.apply(Objects(), actor="t", prune=True)
    assert await store.oidc_secret_names() == set()
    # a new provider of that name starts without one
    await service.create("identity_providers", oidc("okta"), ME)
    assert await store.oidc_secret("okta", "https://id.example.test") is None


async def test_refused_values_and_providers(store: Store) -> None:
    service = AdminService(store)
    await service.create("identity_providers", oidc(), ME)
    await service.create("identity_providers", {"name": "pin", "type": "onetimepin"}, ME)
    for bad, why in (("", "empty"), ("a\nb", "control character"), ("x" * 5000, "longer")):
        with pytest.raises(Invalid, match=why):
            await service.set_oidc_secret("corp", bad, ME)
    with pytest.raises(Invalid, match="not an OpenID Connect provider"):
        await service.set_oidc_secret("pin", SECRET, ME)
    assert await store.oidc_secret_names() == set()


async def test_with_a_secrets_key_the_row_is_sealed_twice(tmp_path: Path) -> None:
    box = SecretBox.from_environment({"ZEROGATE_SECRETS_KEY": generate_key()})
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'k.db'}"), box=box)
    try:
        service = AdminService(store)
        await service.create("identity_providers", oidc(), ME)
        await service.set_oidc_secret("corp", SECRET, ME)
        dump = await raw_rows(store)
        assert "zgenc1:" in dump and idp_secrets.SEALED not in dump
        assert await store.oidc_secret("corp", "https://id.example.test") == SECRET
    finally:
        await store.close()


# ---------------------------------------------------------------- the real provider


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealProvider]:
    started = start_provider(tmp_path_factory.mktemp("op"), free_port())
    yield started
    started.stop()


@pytest.mark.e2e
async def test_connection_test_checks_the_client_credentials(
    store: Store, provider: RealProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = AdminService(store)
    basic = oidc("corp", provider.issuer("corp"), client_id="zerogate-basic")
    post = oidc(
        "corp2",
        provider.issuer("corp2"),
        client_id="zerogate-post",
        token_endpoint_auth_method="client_secret_post",
        client_secret_env="ZEROGATE_SECRET_CORP2",
    )
    await service.create("identity_providers", basic, ME)
    await service.create("identity_providers", post, ME)

    async def run(spec: dict[str, Any]) -> dict[str, Any]:
        return await check_oidc(service, aiohttp_fetch, spec, callback="http://x.test/cb")

    missing = await run(basic)
    assert not missing["ok"] and any("no client secret" in m for _, m in missing["checks"])

    await service.set_oidc_secret("corp", "wrong-" + SECRET_BASIC, ME)
    refused = await run(basic)
    assert not refused["ok"]
    assert any(not ok and "refused the client id or secret" in m for ok, m in refused["checks"]), (
        refused
    )

    await service.set_oidc_secret("corp", SECRET_BASIC, ME)
    accepted = await run(basic)
    assert accepted["ok"], accepted
    assert any("the stored secret" in m and "accepted" in m for _, m in accepted["checks"])

    # an environment variable, when set, comes first (client_secret_post here)
    monkeypatch.setenv("ZEROGATE_SECRET_CORP2", "wrong")
    assert not (await run(post))["ok"]
    monkeypatch.setenv("ZEROGATE_SECRET_CORP2", SECRET_POST)
    from_env = await run(post)
    assert from_env["ok"], from_env
    assert any("from ZEROGATE_SECRET_CORP2" in m for _, m in from_env["checks"])
    # unset there: the stored one is used
    monkeypatch.delenv("ZEROGATE_SECRET_CORP2")
    await service.set_oidc_secret("corp2", SECRET_POST, ME)
    stored = await run(post)
    assert stored["ok"], stored
    assert any("the stored client secret is used" in m for _, m in stored["checks"])


@pytest.mark.e2e
async def test_a_login_uses_the_stored_secret(tmp_path: Path) -> None:
    """A real OIDC login (HTTP level, through the provider's own form) whose token exchange
    uses the secret stored through the admin service: no environment variable anywhere; a
    wrong stored secret fails the login with a page, and the access log says why."""
    box = ThreadedOutbox().start()
    origin = VerifyingOrigin("http://unused.invalid/", "https://unused.invalid").start()
    zg = Zerogate(tmp_path / "zg", free_port(), box.port)
    zg.workdir.mkdir()
    provider = start_provider(tmp_path, zg.port)
    try:
        zg.apply(
            f"""
identity_providers:
  - {{name: corp, type: oidc, issuer: "{provider.issuer("corp")}", client_id: zerogate-basic,
      scopes: [openid, email, profile, groups]}}
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin.port}
    identity_providers: [corp]
    policies: [{{name: corp, decision: allow, include: [{{email_domain: [corp.test]}}]}}]
"""
        )
        await asyncio.to_thread(zg.start)

        async def sign_in() -> list[Any]:
            nav = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
            async with HttpBrowser() as browser:
                to_provider = await browser.follow(zg.url("wiki.localhost", "/page"), headers=nav)
                form = to_provider[-1]
                assert form.status == 200 and 'name="password"' in form.text, form.text
                action = re.search(r'action="([^"]+)"', form.text)
                assert action is not None
                posted = await browser.post_form(
                    urljoin(form.url, html.unescape(action.group(1))),
                    {"login": "ann", "password": "ann-pw"},
                )
                assert posted.location is not None
                return [
                    posted,
                    *await browser.follow(urljoin(form.url, posted.location), headers=nav),
                ]

        async with open_store(zg) as store:
            await AdminService(store).set_oidc_secret("corp", "wrong-" + SECRET_BASIC, ME)
        failed = (await sign_in())[-1]
        assert failed.status >= 400 and "wiki" not in failed.url.split("/")[2]

        async def refused() -> list[Any]:  # the access log is written in batches
            async with open_store(zg) as store:
                rows = await store.access_log(kind="login", decision="block", limit=5)
            return [e.detail for e in rows if "oidc" in (e.detail or "")]

        (why,) = await wait_for(refused, timeout=10, what="the failed login in the access log")
        assert "invalid_client" in why or "token" in why, why

        async with open_store(zg) as store:
            await AdminService(store).set_oidc_secret("corp", SECRET_BASIC, ME)
        landed = (await sign_in())[-1]
        assert landed.status == 200, landed.text
        assert landed.url.startswith(zg.url("wiki.localhost", "/page"))
        assert origin.seen[-1]["email"] == "ann@corp.test"
    finally:
        zg.stop()
        provider.stop()
        origin.stop()
        box.stop()
