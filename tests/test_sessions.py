"""Sessions (issue #16): every portal sign-in is a session a person sees on the portal (device,
address, since, last seen; this browser's marked) and can end, and administrators list and end
anyone's through the API and `zerogate sessions`. An ended session is refused on the very next
request to every application; nobody can end someone else's session through the portal;
"log out everywhere" still ends them all. A real server, real PIN logins over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from harness import free_port, wait_for
from zerogate.admin.service import Actor, AdminService
from zerogate.runtime.devices import device_of
from zg_harness import (
    ZEROGATE,
    HttpBrowser,
    ThreadedOutbox,
    VerifyingOrigin,
    Zerogate,
    hidden_inputs,
    login,
    open_store,
)

pytestmark = pytest.mark.e2e

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


def config(port: int) -> str:
    return f"""
identity_providers: [{{name: otp, type: onetimepin}}]
admins: [ops@example.com]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


async def _token(zg: Zerogate, name: str, read_only: bool) -> str:
    async with open_store(zg) as store:
        _, text = await AdminService(store).create_api_token(
            name, read_only=read_only, expires="1d", actor=Actor("test")
        )
    return text


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    port = free_port()
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg-sessions"), port, outbox.port)
    try:
        zerogate.apply(config(origin.port))
        zerogate.start()
        zerogate.extra["rw"] = asyncio.run(_token(zerogate, "rw", False))
        zerogate.extra["ro"] = asyncio.run(_token(zerogate, "ro", True))
        yield zerogate
    finally:
        zerogate.stop()
        origin.stop()


def portal(zg: Zerogate, path: str) -> str:
    return f"http://{zg.portal}{path}"


def session_ids(page: str) -> list[str]:
    return re.findall(r'data-session="([^"]+)"', page)


async def signed_in(browser: HttpBrowser, zg: Zerogate, outbox: ThreadedOutbox, email: str) -> None:
    reply = await login(browser, zg, outbox, "wiki.localhost", email)
    assert reply.status == 200, reply.text[:300]


async def still_in(browser: HttpBrowser, zg: Zerogate) -> bool:
    """Whether the browser's application session still lets it in."""
    reply = await browser.get(zg.url("wiki.localhost", "/"))
    return reply.status == 200


async def end_form(browser: HttpBrowser, zg: Zerogate, session: str) -> Any:
    page = await browser.get(portal(zg, "/.zerogate/sessions"))
    csrf = hidden_inputs(page.text)["csrf"]
    return await browser.post_form(
        portal(zg, "/.zerogate/sessions/end"), {"csrf": csrf, "session": session}
    )


async def test_a_person_sees_their_sessions_and_ends_one(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with (
        HttpBrowser(headers={"User-Agent": FIREFOX}) as laptop,
        HttpBrowser(source="127.0.0.7", headers={"User-Agent": IPHONE}) as phone,
    ):
        await signed_in(laptop, zg, outbox, "ann@example.com")
        await signed_in(phone, zg, outbox, "ann@example.com")
        page = await laptop.get(portal(zg, "/.zerogate/sessions"))
        assert page.status == 200, page.text[:300]
        ids = session_ids(page.text)
        assert len(ids) == 2, page.text
        assert "Firefox on Windows" in page.text and "Safari on iPhone" in page.text
        assert "127.0.0.7" in page.text  # the phone's address
        current = re.search(r'class="session current" data-session="([^"]+)"', page.text)
        assert current is not None, page.text
        other = next(i for i in ids if i != current.group(1))
        # the link from the launcher
        assert "/.zerogate/sessions" in (await laptop.get(portal(zg, "/"))).text

        # without the page's CSRF token: refused, nothing ended
        forged = await laptop.post_form(
            portal(zg, "/.zerogate/sessions/end"), {"csrf": "x" * 32, "session": other}
        )
        assert forged.status == 403
        # nor with a CSRF cookie of its choosing (tossed from a sibling host) and the same value
        laptop.set_cookie(zg.portal.partition(":")[0], "__zg_csrf", "y" * 32, "/.zerogate/")
        tossed = await laptop.post_form(
            portal(zg, "/.zerogate/sessions/end"), {"csrf": "y" * 32, "session": other}
        )
        assert tossed.status == 403
        # nor with the logout form's token (a MAC of its own)
        logout = await laptop.get(portal(zg, "/.zerogate/logout"))
        crossed = await laptop.post_form(
            portal(zg, "/.zerogate/sessions/end"),
            {"csrf": hidden_inputs(logout.text)["csrf"], "session": other},
        )
        assert crossed.status == 403
        assert await still_in(phone, zg)

        ended = await end_form(laptop, zg, other)
        assert ended.status in (302, 303), ended.text[:300]
        # the very next request of the phone is refused (this server learnt it at once)
        reply = await phone.get(zg.url("wiki.localhost", "/"))
        assert reply.status == 302 and "/.zerogate/login" in reply.headers["Location"]
        gone = await phone.get(portal(zg, "/.zerogate/sessions"))
        assert gone.status == 401
        assert await still_in(laptop, zg)
        assert ended.headers["Location"] == "/.zerogate/sessions?ended=1"
        page = await laptop.get(portal(zg, ended.headers["Location"]))
        assert session_ids(page.text) == [current.group(1)]
        assert "The session is ended." in page.text

        # ending this browser's own session signs it out here
        own = await end_form(laptop, zg, current.group(1))
        assert own.status == 200 and "signed out on this device" in own.text
        assert not await still_in(laptop, zg)


async def test_nobody_ends_someone_elses_session_through_the_portal(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    hostile = '<script>alert("ua")</script>'
    async with (
        HttpBrowser(headers={"User-Agent": hostile}) as mallory,
        HttpBrowser(source="127.0.0.8") as bob,
    ):
        await signed_in(mallory, zg, outbox, "mallory@example.com")
        # her own User-Agent is shown to her (and to admins) as text, never as markup
        own = await mallory.get(portal(zg, "/.zerogate/sessions"))
        assert hostile not in own.text
        assert "&lt;script&gt;alert(&#34;ua&#34;)&lt;/script&gt;" in own.text
        await signed_in(bob, zg, outbox, "bob@example.com")
        async with open_store(zg) as store:
            bobs = [s.id for s in await store.sessions(email="bob@example.com")]
        assert len(bobs) == 1
        refused = await end_form(mallory, zg, bobs[0])
        assert refused.status == 404
        assert "no such active session" in refused.text
        assert bobs[0] not in (await mallory.get(portal(zg, "/.zerogate/sessions"))).text
        assert await still_in(bob, zg)
        async with open_store(zg) as store:
            assert (await store.session(bobs[0])).ended_at is None  # type: ignore[union-attr]


async def test_administrators_list_and_end_sessions_through_the_api(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    rw = {"Authorization": f"Bearer {zg.extra['rw']}", "Accept": "application/json"}
    ro = {"Authorization": f"Bearer {zg.extra['ro']}", "Accept": "application/json"}
    async with HttpBrowser(headers={"User-Agent": FIREFOX}) as carol, HttpBrowser() as client:
        await signed_in(carol, zg, outbox, "carol@example.com")
        listed = await client.get(
            portal(zg, "/api/v1/sessions?email=carol@example.com"), headers=ro
        )
        assert listed.status == 200, listed.text
        (found,) = listed.json()
        assert found["email"] == "carol@example.com" and found["device"] == "Firefox on Windows"
        assert found["ip"] == "127.0.0.1" and found["idp"] == "otp"
        url = portal(zg, f"/api/v1/sessions/{found['id']}")
        assert (await client.request("DELETE", url, headers=ro)).status == 403
        assert await still_in(carol, zg)
        assert (await client.request("DELETE", url, headers=rw)).status == 204
        assert not await still_in(carol, zg)
        again = await client.request("DELETE", url, headers=rw)
        assert again.status == 404
        log = await client.get(portal(zg, "/api/v1/admin-log?limit=5"), headers=rw)
        assert any(
            e["kind"] == "session" and e["name"] == found["id"] and e["actor"] == "api-token:rw"
            for e in log.json()["entries"]
        ), log.text


async def test_sessions_command_at_80_columns_and_logout_everywhere(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with (
        HttpBrowser(headers={"User-Agent": IPHONE}) as one,
        HttpBrowser(source="127.0.0.9") as two,
    ):
        long_address = "dora.with-a-long-name@example.com"
        await signed_in(one, zg, outbox, long_address)
        await signed_in(two, zg, outbox, long_address)
        listed = await asyncio.to_thread(
            subprocess.run,
            [*ZEROGATE, "sessions", "list", "-c", str(zg.config), "--email", long_address],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "80"},
        )
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert all(len(line) <= 80 for line in lines), listed.stdout
        async with open_store(zg) as store:
            ids = {s.id for s in await store.sessions(email=long_address)}
        assert len(ids) == 2
        for sid in ids:  # whole on one line: copied into `sessions end`
            assert any(line.startswith(sid) for line in lines), listed.stdout
        assert "Safari on" in listed.stdout and "iPhone" in listed.stdout

        # one ended from the command line
        first = sorted(ids)[0]
        ended = await asyncio.to_thread(zg.cli, "sessions", "end", first, "-c", str(zg.config))
        assert ended.returncode == 0, ended.stderr
        assert f"Session {first} of {long_address}" in ended.stdout

        async def refused_somewhere() -> bool:  # another process: the server's next poll
            return not (await still_in(one, zg) and await still_in(two, zg))

        await wait_for(refused_somewhere, timeout=5)
        unknown = await asyncio.to_thread(
            zg.cli, "sessions", "end", "no-such-session", "-c", str(zg.config)
        )
        assert unknown.returncode == 2 and "no active session" in unknown.stderr

        # "log out everywhere" stays, and ends what is left in the list too
        survivor = one if await still_in(one, zg) else two
        page = await survivor.get(portal(zg, "/.zerogate/logout"))
        token = hidden_inputs(page.text)["csrf"]
        out = await survivor.post_form(portal(zg, "/.zerogate/logout"), {"csrf": token})
        assert out.status == 200 and "every application" in out.text
        assert not await still_in(survivor, zg)
        async with open_store(zg) as store:
            assert await store.sessions(email=long_address) == []


def test_device_names() -> None:
    assert device_of(FIREFOX) == "Firefox on Windows"
    assert device_of(IPHONE) == "Safari on iPhone"
    assert (
        device_of(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"
        )
        == "Edge on Linux"
    )
    assert device_of("curl/8.5.0") == "curl"
    assert device_of(None) == "unknown device"
    assert device_of("x" * 100).endswith("…") and len(device_of("x" * 100)) == 60
