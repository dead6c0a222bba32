"""The admin front door and REST API against a real ``zerogate server`` (subprocess, SQLite
store, real SMTP outbox, an origin that verifies the JWT): the seed workflow through the API
enforced by the edge, tokens and their scopes, admin sessions, CSRF, versions and 409s, 422s
naming the field, the admin log, and the sign-in's return URL (no open redirect).

Clients play different addresses by binding to 127.0.0.N (``HttpBrowser(source=...)``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from harness import free_port, wait_for
from zerogate.admin.service import Actor, AdminService, Invalid, new_api_token
from zerogate.store import Store, storage_url
from zerogate.tunnel import token as tunnel_token
from zg_harness import (
    HttpBrowser,
    ThreadedOutbox,
    VerifyingOrigin,
    Zerogate,
    hidden_inputs,
    login,
    login_page,
    open_store,
    request_pin,
    submit_pin,
)

ADMIN = "ops@example.test"
NET_ADMIN = "net@example.test"  # an admin through a group that requires 127.0.0.2


def config(origin_port: int) -> str:
    return f"""
admins: [{ADMIN}, "group:Net Admins"]
identity_providers: [{{name: otp, type: onetimepin}}]
groups:
  - name: Net Admins
    include: [{{email: [{NET_ADMIN}]}}]
    require: [{{ip: [127.0.0.2/32]}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.test]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


async def _token(zg: Zerogate, name: str, *, read_only: bool = False) -> str:
    async with open_store(zg) as store:
        _, text = await AdminService(store).create_api_token(
            name, read_only=read_only, expires="1d", actor=Actor("test")
        )
    return text


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    workdir = tmp_path_factory.mktemp("zg")
    port = free_port()
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    zerogate = Zerogate(workdir, port, outbox.port)
    zerogate.apply(config(origin.port))
    zerogate.start()
    zerogate.extra["rw"] = asyncio.run(_token(zerogate, "rw"))
    zerogate.extra["ro"] = asyncio.run(_token(zerogate, "ro", read_only=True))
    yield zerogate
    zerogate.stop()
    origin.stop()


def api(zg: Zerogate, path: str) -> str:
    return f"http://{zg.portal}/api/v1{path}"


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json", **extra}


async def send_json(
    browser: HttpBrowser,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    sent = {"Content-Type": "application/json", **(headers or {})}
    data = json.dumps(body).encode() if body is not None else None
    return await browser.request(method, url, headers=sent, data=data)


async def live(zg: Zerogate, version: int) -> None:
    """Wait until the server decides with configuration ``version`` (its metric says so)."""

    async def reached() -> bool:
        async with HttpBrowser() as client:
            metrics = await client.get(f"http://{zg.portal}/.zerogate/metrics")
        found = re.search(r"^zerogate_config_version (\S+)$", metrics.text, re.M)
        return found is not None and float(found.group(1)) >= version

    await wait_for(reached)


# ---------------------------------------------------------------- the seed workflow


async def test_seed_workflow_through_the_api(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    """Create a group, add a policy with include + require to an application: the edge lets
    the partner in from the required network only, and the access log shows it."""
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser(source="127.0.0.3") as client:
        made = await send_json(
            client,
            "POST",
            api(zg, "/groups"),
            {"name": "Partners", "include": [{"email": ["alice@partner.test"]}]},
            rw,
        )
        assert made.status == 201, made.text
        assert made.json() == {
            "name": "Partners",
            "include": [{"email": ["alice@partner.test"]}],
            "require": [],
            "exclude": [],
            "version": made.json()["version"],
            # made through the API: zerogate apply keeps it unless --prune
            "changed_via": "api",
            "managed_by_file": False,
        }
        assert made.headers["ETag"] == f'"{made.json()["version"]}"'
        policy = {
            "name": "partners from the lab",
            "decision": "allow",
            "include": [{"group": ["Partners"]}],
            "require": [{"ip": ["127.0.0.3/32"]}],
        }
        added = await send_json(client, "POST", api(zg, "/applications/wiki/policies"), policy, rw)
        assert added.status == 201, added.text
        assert added.json()["require"] == [{"ip": ["127.0.0.3/32"]}]
        listed = await client.get(api(zg, "/applications/wiki/policies"), headers=rw)
        assert [p["name"] for p in listed.json()] == ["staff", "partners from the lab"]

    await live(zg, added.json()["version"])
    async with HttpBrowser(source="127.0.0.3") as browser:
        reply = await login(browser, zg, outbox, "wiki.localhost", "alice@partner.test")
        assert reply.status == 200 and reply.json()["email"] == "alice@partner.test"

    # from another address the same partner gets no PIN and no access
    async with HttpBrowser(source="127.0.0.4") as browser:
        chain = await browser.follow(zg.url("wiki.localhost", "/"))
        fields = hidden_inputs(chain[-1].text)
        mark = outbox.mark()
        await browser.post_form(
            f"http://{zg.portal}/.zerogate/login/otp",
            {"flow": fields["flow"], "csrf": fields["csrf"], "email": "alice@partner.test"},
        )

    async def logged() -> bool:  # the access log is written in batches
        async with HttpBrowser() as client:
            log = await client.get(
                api(zg, "/access-log?email=alice@partner.test&decision=allow"), headers=rw
            )
            assert log.status == 200
            events = log.json()["events"]
            return any(e["app"] == "wiki" and e["ip"] == "127.0.0.3" for e in events)

    assert await wait_for(logged)
    assert not [m for m in outbox.messages(mark) if "alice@partner.test" in m.to]


# ---------------------------------------------------------------- tokens


async def test_read_only_token_reads_but_cannot_write(zg: Zerogate) -> None:
    ro = bearer(zg.extra["ro"])
    async with HttpBrowser() as client:
        assert (await client.get(api(zg, "/groups"), headers=ro)).status == 200
        session = (await client.get(api(zg, "/session"), headers=ro)).json()
        assert session["who"] == "api-token:ro" and session["read_only"] is True
        for method, path, body in (
            ("POST", "/groups", {"name": "X", "include": [{"everyone": True}]}),
            ("PUT", "/applications/wiki", {"name": "wiki", "domain": "wiki.localhost"}),
            ("DELETE", "/applications/wiki", None),
            ("POST", "/api-tokens", {"name": "escalate"}),
            ("PUT", "/admins", {"admins": ["evil@example.test"], "version": 1}),
        ):
            reply = await send_json(client, method, api(zg, path), body, ro)
            assert reply.status == 403, (method, path, reply.text)
            assert "read-only" in reply.json()["detail"]


async def test_certificates_show_status_never_a_key(zg: Zerogate) -> None:
    """`GET /api/v1/certificates`: a stored certificate's hostname, issuer and validity for a
    read-only token; never its private key; nothing without a token."""
    from zerogate.store.certificates import StoredCertificate

    now = datetime.now(UTC).replace(microsecond=0)
    async with open_store(zg) as store:
        await store.put_certificate(
            StoredCertificate(
                host="wiki.localhost",
                cert_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                key_pem="-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n",
                not_before=now - timedelta(days=61),
                not_after=now + timedelta(days=29),
                issuer="Test CA",
                updated_at=now - timedelta(days=61),
            )
        )
    async with HttpBrowser() as client:
        reply = await client.get(api(zg, "/certificates"), headers=bearer(zg.extra["ro"]))
        assert reply.status == 200, reply.text
        (found,) = [c for c in reply.json()["certificates"] if c["host"] == "wiki.localhost"]
        assert found["issuer"] == "Test CA" and found["state"] == "renewing"  # past 2/3
        assert datetime.fromisoformat(found["not_after"]) == now + timedelta(days=29)
        assert "PRIVATE KEY" not in reply.text and "SECRETKEYMATERIAL" not in reply.text
        anonymous = await client.get(
            api(zg, "/certificates"), headers={"Accept": "application/json"}
        )
        assert anonymous.status == 401 and "Test CA" not in anonymous.text


async def test_wrong_expired_and_revoked_tokens_get_401(zg: Zerogate) -> None:
    rw = zg.extra["rw"]
    token_id = rw.split("_")[1]
    async with open_store(zg) as store:
        old, expired = new_api_token(
            "old", read_only=False, expires=timedelta(days=1), created_by="test"
        )
        gone = datetime.now(UTC) - timedelta(minutes=1)
        await store.add_api_token(
            type(old)(**{**vars(old), "expires_at": gone, "created_at": gone - timedelta(days=1)})
        )
    revoked = await _token(zg, "short-lived")
    async with HttpBrowser() as client:
        made = await client.get(api(zg, "/groups"), headers=bearer(revoked))
        assert made.status == 200
        gone_reply = await send_json(
            client, "DELETE", api(zg, "/api-tokens/short-lived"), None, bearer(rw)
        )
        assert gone_reply.status == 204
        for text in (
            revoked,
            expired,
            f"zga_{token_id}_wrong-secret",
            "zga_0000000000000000_x",
            "not-a-token",
            rw + "x",
        ):
            reply = await client.get(api(zg, "/groups"), headers=bearer(text))
            assert reply.status == 401, text
            assert reply.json()["error"] == "invalid token"
        odd = await client.get(api(zg, "/groups"), headers={"Authorization": "Basic eDp5"})
        assert odd.status == 401
        listed = await client.get(api(zg, "/api-tokens"), headers=bearer(rw))
        rows = {t["name"]: t for t in listed.json()}
        assert "short-lived" not in rows
        assert rows["old"]["expired"] is True
        assert rows["rw"]["last_used_at"] is not None
        assert all("token" not in row and "secret_hash" not in row for row in rows.values())


async def test_api_token_created_through_the_api_works_once_shown(zg: Zerogate) -> None:
    async with HttpBrowser() as client:
        made = await send_json(
            client,
            "POST",
            api(zg, "/api-tokens"),
            {"name": "script", "read_only": True, "expires": "12h"},
            bearer(zg.extra["rw"]),
        )
        assert made.status == 201, made.text
        token = made.json()["token"]
        assert token.startswith("zga_") and made.json()["read_only"] is True
        who = await client.get(api(zg, "/session"), headers=bearer(token))
        assert who.json()["who"] == "api-token:script"
        again = await send_json(
            client,
            "POST",
            api(zg, "/api-tokens"),
            {"name": "script", "expires": "1h"},
            bearer(zg.extra["rw"]),
        )
        assert again.status == 409
        bad = await send_json(
            client,
            "POST",
            api(zg, "/api-tokens"),
            {"name": "x", "expires": "soon"},
            bearer(zg.extra["rw"]),
        )
        assert bad.status == 422 and bad.json()["problems"][0]["where"] == "expires"


async def test_a_token_cannot_create_one_that_outlives_it(zg: Zerogate) -> None:
    """Issue 17 item 6: the read-write token (expires in 1 day) asks for a token that never
    expires, or one that lasts a year: both refused; one within its own lifetime works."""
    async with HttpBrowser() as client:
        for body in ({"name": "forever"}, {"name": "year", "expires": "365d"}):
            made = await send_json(
                client, "POST", api(zg, "/api-tokens"), body, bearer(zg.extra["rw"])
            )
            assert made.status == 422, made.text
            assert made.json()["problems"][0]["where"] == "expires"
            assert "outlive" in made.json()["problems"][0]["message"]
        listed = await client.get(api(zg, "/api-tokens"), headers=bearer(zg.extra["rw"]))
        names = {t["name"] for t in listed.json()}
        assert not names & {"forever", "year"}
        ok = await send_json(
            client,
            "POST",
            api(zg, "/api-tokens"),
            {"name": "shorter", "expires": "2h"},
            bearer(zg.extra["rw"]),
        )
        assert ok.status == 201, ok.text


async def test_a_read_only_actor_cannot_create_a_read_write_token(tmp_path: Path) -> None:
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'z.db'}"))
    try:
        service = AdminService(store)
        with pytest.raises(Invalid, match="read-only token cannot create a read-write"):
            await service.create_api_token(
                "up", read_only=False, expires=None, actor=Actor("api-token:ro", read_only=True)
            )
    finally:
        await store.close()


# ---------------------------------------------------------------- sessions


async def test_anonymous_gets_401_json_or_a_redirect_to_sign_in(zg: Zerogate) -> None:
    async with HttpBrowser() as client:
        reply = await client.get(api(zg, "/groups"), headers={"Accept": "application/json"})
        assert reply.status == 401
        assert (
            reply.json()["login_url"] == f"http://{zg.portal}/admin/login?rd=%2Fapi%2Fv1%2Fgroups"
        )
        page = await client.get(f"http://{zg.portal}/admin/groups?x=1")
        assert page.status == 302 and page.location is not None
        # straight to the portal's login page, for the built-in admin application
        assert page.location.startswith(f"http://{zg.portal}/.zerogate/login?flow=")
        assert flow_return(page.location) == "/admin/groups?x=1"
        write = await send_json(client, "POST", api(zg, "/groups"), {"name": "x"})
        assert write.status == 401
        spec = await client.get(api(zg, "/openapi.json"))
        assert spec.status == 401  # the document too is for administrators


async def test_non_admin_gets_403_on_every_path(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    async with HttpBrowser() as client:
        spec = (await client.get(api(zg, "/openapi.json"), headers=bearer(zg.extra["ro"]))).json()
    async with HttpBrowser(source="127.0.0.5") as browser:
        reply = await login(browser, zg, outbox, "wiki.localhost", "bob@example.test")
        assert reply.status == 200  # bob may use the wiki, not the admin API
        checked = 0
        for path, operations in spec["paths"].items():
            url = "http://" + zg.portal + re.sub(r"\{[^}]+\}", "wiki", path)
            for method in operations:
                got = await send_json(browser, method.upper(), url, {}, {"Accept": "*/*"})
                assert got.status == 403, (method, path, got.status)
                assert "not an administrator" in got.json()["detail"]
                checked += 1
        assert checked >= 30
        page = await browser.get(f"http://{zg.portal}/admin/")
        assert page.status == 403 and "text/html" in page.headers["Content-Type"]
        assert "bob@example.test is not an administrator" in page.text


async def test_group_admin_only_from_the_groups_network(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    """``group:Net Admins`` requires 127.0.0.2: the same session is admin from there only."""
    async with HttpBrowser(source="127.0.0.2") as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", NET_ADMIN)).status == 200
        here = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert here.status == 200 and here.json()["who"] == NET_ADMIN
        cookies = browser.cookies("auth.localhost")
    async with HttpBrowser(source="127.0.0.6") as elsewhere:
        for name, value in cookies.items():
            elsewhere.set_cookie("auth.localhost", name, value)
        there = await elsewhere.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert there.status == 403


async def test_cookie_writes_need_the_csrf_header(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    async with HttpBrowser(source="127.0.0.7") as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", ADMIN)).status == 200
        session = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert session.status == 200
        csrf = session.json()["csrf_token"]
        assert session.json()["via"] == "session" and csrf
        group = {"name": "Via Cookie", "include": [{"email_domain": ["example.test"]}]}
        for headers in ({}, {"X-Zerogate-CSRF": "0" * len(csrf)}, {"X-Zerogate-CSRF": ""}):
            refused = await send_json(browser, "POST", api(zg, "/groups"), group, headers)
            assert refused.status == 403, headers
            assert refused.json()["error"] == "csrf"
        made = await send_json(
            browser, "POST", api(zg, "/groups"), group, {"X-Zerogate-CSRF": csrf}
        )
        assert made.status == 201, made.text
        # reads need no header; the admin log names the person
        log = await browser.get(api(zg, "/admin-log?limit=5"))
        entry = next(e for e in log.json()["entries"] if e["name"] == "Via Cookie")
        assert entry["actor"] == ADMIN and entry["source"] == "127.0.0.7"


# ---------------------------------------------------------------- versions and validation


async def test_concurrent_edits_one_wins_the_other_gets_409(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as a, HttpBrowser() as b:
        made = await send_json(
            a, "POST", api(zg, "/groups"), {"name": "Race", "include": [{"everyone": True}]}, rw
        )
        version = made.json()["version"]
        edits = [{"name": "Race", "include": [{"email": [f"{who}@example.test"]}]} for who in "ab"]
        replies = await asyncio.gather(
            send_json(
                a, "PUT", api(zg, "/groups/Race"), edits[0], {**rw, "If-Match": f'"{version}"'}
            ),
            send_json(b, "PUT", api(zg, "/groups/Race"), {**edits[1], "version": version}, rw),
        )
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 409], [r.text for r in replies]
        loser = next(r for r in replies if r.status == 409)
        assert "Race" in loser.json()["error"]
        winner = next(r for r in replies if r.status == 200)
        now = await a.get(api(zg, "/groups/Race"), headers=rw)
        assert now.json()["include"] == winner.json()["include"]
        assert now.headers["ETag"] == f'"{winner.json()["version"]}"'
        # no version at all: 428; a stale delete: 409; the current one deletes
        bare = await send_json(a, "PUT", api(zg, "/groups/Race"), edits[0], rw)
        assert bare.status == 428
        stale = await send_json(
            a, "DELETE", api(zg, "/groups/Race"), None, {**rw, "If-Match": f'"{version}"'}
        )
        assert stale.status == 409
        done = await send_json(
            a, "DELETE", api(zg, f"/groups/Race?version={winner.json()['version']}"), None, rw
        )
        assert done.status == 204
        assert (await a.get(api(zg, "/groups/Race"), headers=rw)).status == 404


async def test_invalid_objects_get_422_naming_the_field(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as client:
        bad_ip = await send_json(
            client,
            "POST",
            api(zg, "/groups"),
            {"name": "Bad", "include": [{"ip": ["300.1.2.3"]}]},
            rw,
        )
        assert bad_ip.status == 422
        where = [p["where"] for p in bad_ip.json()["problems"]]
        assert any("include" in w and "ip" in w for w in where), where
        unknown = await send_json(
            client,
            "POST",
            api(zg, "/applications/wiki/policies"),
            {"name": "p", "decision": "allow", "include": [{"group": ["Nope"]}]},
            rw,
        )
        assert unknown.status == 422
        problem = unknown.json()["problems"][0]
        assert "wiki" in problem["where"] and "group" in problem["where"]
        assert "Nope" in problem["message"]
        in_use = await send_json(
            client,
            "POST",
            api(zg, "/groups"),
            {"name": "Used", "include": [{"everyone": True}]},
            rw,
        )
        await send_json(
            client,
            "POST",
            api(zg, "/applications/wiki/policies"),
            {"name": "uses it", "decision": "allow", "include": [{"group": ["Used"]}]},
            rw,
        )
        refused = await send_json(
            client,
            "DELETE",
            api(zg, "/groups/Used"),
            None,
            {**rw, "If-Match": f'"{in_use.json()["version"]}"'},
        )
        assert refused.status == 422
        assert "Used" in json.dumps(refused.json()["problems"])
        missing = await client.get(api(zg, "/groups/Nobody"), headers=rw)
        assert missing.status == 404 and "Nobody" in missing.json()["error"]


async def test_admin_log_records_who_from_where_and_before_after(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"], **{"X-Forwarded-For": "203.0.113.9"})
    async with HttpBrowser(source="127.0.0.8") as client:
        made = await send_json(
            client, "POST", api(zg, "/tunnels"), {"name": "lab", "routes": []}, rw
        )
        assert made.status == 201, made.text
        assert made.json()["status"] == "down" and made.json()["connections"] == []
        changed = await send_json(
            client,
            "PUT",
            api(zg, "/tunnels/lab"),
            {"name": "lab", "routes": ["lab.localhost"]},
            {**rw, "If-Match": made.headers["ETag"]},
        )
        assert changed.status == 200, changed.text
        log = await client.get(api(zg, "/admin-log?limit=10"), headers=rw)
        entry = next(e for e in log.json()["entries"] if e["name"] == "lab")
        # the untrusted peer's X-Forwarded-For is not believed
        assert entry["actor"] == "api-token:rw" and entry["source"] == "127.0.0.8"
        assert entry["action"] == "change" and entry["kind"] == "tunnel"
        assert entry["before"]["routes"] == [] and entry["after"]["routes"] == ["lab.localhost"]


async def test_service_token_secret_is_shown_once_and_the_edge_accepts_it(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as client:
        made = await send_json(
            client, "POST", api(zg, "/service-tokens"), {"name": "robot", "duration": "1h"}, rw
        )
        assert made.status == 201, made.text
        body = made.json()
        assert body["client_id"].endswith(".access") and body["client_secret"]
        listed = await client.get(api(zg, "/service-tokens/robot"), headers=rw)
        assert listed.json()["client_id"] == body["client_id"]
        assert "client_secret" not in listed.json()
        app = await client.get(api(zg, "/applications/wiki"), headers=rw)
        policy = {
            "name": "robot",
            "decision": "service_auth",
            "include": [{"service_token": ["robot"]}],
        }
        await send_json(
            client,
            "POST",
            api(zg, "/applications/wiki/policies?position=0"),
            policy,
            {**rw, "If-Match": app.headers["ETag"]},
        )

        async def robot_gets_in() -> bool:
            reply = await client.get(zg.url("wiki.localhost", "/ci"), headers=body["headers"])
            return reply.status == 200

        assert await wait_for(robot_gets_in)
        rotated = await send_json(client, "POST", api(zg, "/service-tokens/robot/rotate"), None, rw)
        assert rotated.status == 200 and rotated.json()["client_id"] != body["client_id"]

        async def old_pair_refused() -> bool:
            reply = await client.get(
                zg.url("wiki.localhost", "/ci"),
                headers={**body["headers"], "Accept": "application/json"},
            )
            return reply.status == 401  # an unknown pair is no identity: login required

        assert await wait_for(old_pair_refused)


async def test_oidc_client_secret_is_stored_never_shown_and_tested(zg: Zerogate) -> None:
    """The secret goes in once (write tokens only), is never returned, and "test connection"
    reports what it found (the provider here is down: a clear failure, not a 500)."""
    rw, ro = bearer(zg.extra["rw"]), bearer(zg.extra["ro"])
    secret = "oidc-secret-never-shown-0123456789"
    closed = free_port()
    idp = {
        "name": "corpsso",
        "type": "oidc",
        "issuer": f"http://127.0.0.1:{closed}",
        "client_id": "zerogate",
    }
    async with HttpBrowser() as client:
        made = await send_json(client, "POST", api(zg, "/identity-providers"), idp, rw)
        assert made.status == 201, made.text
        assert made.json()["client_secret_stored"] is False
        path = api(zg, "/identity-providers/corpsso/client-secret")
        refused = await send_json(client, "PUT", path, {"client_secret": secret}, ro)
        assert refused.status == 403
        empty = await send_json(client, "PUT", path, {"client_secret": ""}, rw)
        assert empty.status == 422
        stored = await send_json(client, "PUT", path, {"client_secret": secret}, rw)
        assert stored.status == 204, stored.text
        shown = await client.get(api(zg, "/identity-providers/corpsso"), headers=rw)
        assert shown.json()["client_secret_stored"] is True
        # a GET's body can be PUT back as it is
        back = await send_json(
            client,
            "PUT",
            api(zg, "/identity-providers/corpsso"),
            shown.json(),
            {**rw, "If-Match": shown.headers["ETag"]},
        )
        assert back.status == 200, back.text
        everything = [
            (await client.get(api(zg, p), headers=rw)).text
            for p in ("/identity-providers", "/identity-providers/corpsso", "/admin-log")
        ]
        assert not any(secret in page for page in everything)
        tested = await send_json(
            client, "POST", api(zg, "/identity-providers/corpsso/test"), None, rw
        )
        assert tested.status == 200, tested.text
        result = tested.json()
        assert result["ok"] is False
        assert "could not reach the provider" in result["checks"][0]["message"]
        removed = await send_json(client, "DELETE", path, None, rw)
        assert removed.status == 204
        again = await client.get(api(zg, "/identity-providers/corpsso"), headers=rw)
        assert again.json()["client_secret_stored"] is False
        gone = await send_json(
            client,
            "DELETE",
            api(zg, "/identity-providers/corpsso"),
            None,
            {**rw, "If-Match": again.headers["ETag"]},
        )
        assert gone.status == 204, gone.text


async def test_access_log_pages_filters_and_export(zg: Zerogate) -> None:
    from datetime import UTC, datetime

    from zerogate.store import AccessEvent

    now = datetime.now(UTC)
    rows = [
        AccessEvent(
            at=now,  # one instant: the cursor must still tell them apart
            kind="request",
            app="pagetest",
            email=None,
            idp=None,
            ip="192.0.2.50",
            country=None,
            decision="allow",
            policy=None,
            path=f"/{i}",
            status=200 if i % 2 else 503,
        )
        for i in range(5)
    ]
    async with open_store(zg) as store:
        await store.write_access(rows)
    ro = bearer(zg.extra["ro"])
    seen: list[str] = []
    async with HttpBrowser() as client:
        url = api(zg, "/access-log?app=pagetest&limit=2")
        for _ in range(5):
            page = (await client.get(url, headers=ro)).json()
            seen += [e["path"] for e in page["events"]]
            if page["next_cursor"] is None:
                break
            url = api(zg, f"/access-log?app=pagetest&limit=2&cursor={page['next_cursor']}")
        assert sorted(seen) == [f"/{i}" for i in range(5)]
        failed = await client.get(api(zg, "/access-log?app=pagetest&status=5xx"), headers=ro)
        assert sorted(e["path"] for e in failed.json()["events"]) == ["/0", "/2", "/4"]
        bad = await client.get(api(zg, "/access-log?decision=allowed"), headers=ro)
        assert bad.status == 422
        assert "decision: 'allowed' is not one of allow, block" in bad.json()["error"]
        export = await client.get(
            api(zg, "/access-log/export?app=pagetest&format=jsonl"), headers=ro
        )
        assert export.status == 200
        assert export.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert sorted(line["path"] for line in lines) == [f"/{i}" for i in range(5)]


async def test_policy_test_explains_like_the_cli(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as client:
        reply = await send_json(
            client,
            "POST",
            api(zg, "/policy-test"),
            {
                "url": "https://wiki.localhost/x",
                "email": "carol@example.test",
                "ip": "198.51.100.7",
            },
            rw,
        )
        assert reply.status == 200, reply.text
        result = reply.json()
        assert result["application"] == "wiki" and result["decision"] == "allow"
        assert result["policy"] == "staff" and result["steps"]
        bad = await send_json(
            client, "POST", api(zg, "/policy-test"), {"app": "wiki", "ip": "nope"}, rw
        )
        assert bad.status == 422 and bad.json()["problems"][0]["where"] == "ip"


# ---------------------------------------------------------------- the admin sign-in

# The admin panel and API sign in through the portal's own login page, as the built-in
# application ``zerogate-admin`` (its policy: the admins list); the page asked for comes back
# inside the signed flow, so these read it from there.


def flow_return(url: str) -> str:
    """The return path inside a login URL's flow (its payload is signed, not secret)."""
    blob = parse_qs(urlsplit(url).query)["flow"][0]
    payload = blob.partition(".")[0]
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert data["a"] == "zerogate-admin" and data["s"] == ""
    return str(data["r"])


def tampered(blob: str, rd: str) -> str:
    """The flow with another return URL and the old signature (must be refused)."""
    payload, _, mac = blob.partition(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["r"] = rd
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + mac


EVIL_RETURNS = [
    "https://evil.test/",
    "//evil.test/admin",
    "/\\evil.test",
    "/admin/../../evil",
    "http://auth.localhost/admin",
    "javascript:alert(1)",
    "/.zerogate/logout",
    " /admin",
    "/%2F%2Fevil.test",
    "/admin/login?rd=https://evil.test",
]


@pytest.mark.parametrize("target", EVIL_RETURNS)
async def test_sign_in_never_carries_a_foreign_return(zg: Zerogate, target: str) -> None:
    async with HttpBrowser() as browser:
        start = await browser.get(f"http://{zg.portal}/admin/login?" + f"rd={_q(target)}")
        assert start.status == 302 and start.location is not None
        assert start.location.startswith(f"http://{zg.portal}/.zerogate/login?flow=")
        assert flow_return(start.location) == "/admin/"


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


async def test_admin_sign_in_is_the_portal_login_and_returns_to_the_page(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser(source="127.0.0.9") as browser:
        start = await browser.get(f"http://{zg.portal}/admin/groups?tab=1")
        assert start.status == 302 and start.location is not None
        assert flow_return(start.location) == "/admin/groups?tab=1"
        page = await login_page(browser, zg, zg.portal.partition(":")[0], "/admin/groups?tab=1")
        # the portal's own page, for the admin app, named for people (not "zerogate-admin")
        assert "the zerogate admin panel" in page.reply.text
        assert "zerogate-admin" not in page.reply.text
        fields = page.fields
        # a non-admin gets the same page and no PIN (the PIN rule of every application)
        mark = outbox.mark()
        same = await request_pin(browser, zg, fields, "mallory@example.test")
        assert same.status == 200 and "a 6-digit code is on its way" in same.text
        sent = await request_pin(browser, zg, fields, ADMIN)
        assert sent.status == 200
        message = await outbox.wait_async(ADMIN, after=mark)
        assert message.pin is not None
        assert message.subject == "Your sign-in code for the zerogate admin panel"
        assert not [m for m in outbox.messages(mark) if "mallory" in m.to[0]]
        pin_fields = hidden_inputs(sent.text)
        # the attacker swaps the return URL inside the flow: the signature no longer holds
        forged_flow = tampered(pin_fields["flow"], "https://evil.test/steal")
        forged = await submit_pin(browser, zg, {**pin_fields, "flow": forged_flow}, ADMIN, "1")
        assert forged.status == 400 and forged.location is None
        wrong = await submit_pin(browser, zg, pin_fields, ADMIN, "000000")
        assert wrong.status == 401  # a wrong PIN costs a try and goes nowhere
        done = await submit_pin(browser, zg, pin_fields, ADMIN, message.pin)
        assert done.status == 302 and done.location == "/admin/groups?tab=1"
        assert "__zg_portal" in browser.cookies("auth.localhost")
        who = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert who.status == 200 and who.json()["who"] == ADMIN
        panel = await browser.get(f"http://{zg.portal}/admin/")
        assert panel.status == 200, panel.text[:300]  # the front door hands over to the panel
        # signed in: the sign-in address goes straight back (single sign-on), to a local path
        back = await browser.follow(f"http://{zg.portal}/admin/login?rd=%2Fadmin%2Fgroups")
        assert [r.status for r in back] == [302, 302, 200]
        assert back[1].location == "/admin/groups"
        away = await browser.follow(f"http://{zg.portal}/admin/login?rd=https%3A%2F%2Fevil.test")
        assert away[1].location == "/admin/" and urlsplit(away[1].location).netloc == ""

    async def recorded() -> bool:
        async with HttpBrowser() as client:
            log = await client.get(
                api(zg, "/access-log?app=zerogate-admin&decision=allow"),
                headers=bearer(zg.extra["rw"]),
            )
        return any(e["email"] == ADMIN for e in log.json()["events"])

    assert await wait_for(recorded)  # logins to the admin app are in the access log


async def test_admin_sign_in_form_needs_its_csrf_cookie(zg: Zerogate) -> None:
    async with HttpBrowser() as browser:
        page = await login_page(browser, zg, zg.portal.partition(":")[0], "/admin/")
    async with HttpBrowser() as other:  # no cookie: a cross-site form post
        reply = await request_pin(other, zg, page.fields, ADMIN)
        assert reply.status == 403


async def test_a_session_cannot_lock_itself_out(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    """``PUT /admins`` with the session cookie refuses a list that drops the caller (422
    naming ``admins``) unless ``?force=true``; an API token is never refused."""
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser(source="127.0.0.10") as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", ADMIN)).status == 200
        session = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        csrf = {"X-Zerogate-CSRF": session.json()["csrf_token"]}
        current = await browser.get(api(zg, "/admins"), headers={"Accept": "application/json"})
        admins, etag = current.json()["admins"], current.headers["ETag"]
        without_me = [a for a in admins if a != ADMIN]
        refused = await send_json(
            browser, "PUT", api(zg, "/admins"), {"admins": without_me}, {**csrf, "If-Match": etag}
        )
        assert refused.status == 422, refused.text
        (problem,) = refused.json()["problems"]
        assert problem["where"] == "admins" and "your own admin access" in problem["message"]
        assert "force=true" in problem["message"]
        unchanged = await browser.get(api(zg, "/admins"), headers={"Accept": "application/json"})
        assert unchanged.json()["admins"] == admins
        # keeping myself (or adding someone) is fine
        grown = await send_json(
            browser,
            "PUT",
            api(zg, "/admins"),
            {"admins": [*admins, "extra@example.test"]},
            {**csrf, "If-Match": etag},
        )
        assert grown.status == 200, grown.text
        forced = await send_json(
            browser,
            "PUT",
            api(zg, "/admins?force=true"),
            {"admins": without_me},
            {**csrf, "If-Match": grown.headers["ETag"]},
        )
        assert forced.status == 200 and forced.json()["admins"] == without_me
        await live(zg, forced.json()["version"])
        gone = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert gone.status == 403  # locked out, as asked
    async with HttpBrowser() as client:  # API tokens are exempt: put the list back
        restored = await send_json(
            client,
            "PUT",
            api(zg, "/admins"),
            {"admins": admins},
            {**rw, "If-Match": forced.headers["ETag"]},
        )
        assert restored.status == 200, restored.text
        await live(zg, restored.json()["version"])


async def test_a_session_cannot_lock_itself_out_through_a_group(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    """The guard covers every write, not only ``PUT /admins``: NET_ADMIN is an admin through
    ``group:Net Admins`` (which requires 127.0.0.2); a group edit that would no longer admit
    this session (an IP requirement elsewhere, removing the email) gets 422 naming ``admins``
    unless ``?force=true``; deleting or renaming the group is refused by references anyway;
    an API token is never refused."""
    rw = bearer(zg.extra["rw"])
    url = api(zg, "/groups/Net%20Admins")
    async with HttpBrowser(source="127.0.0.2") as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", NET_ADMIN)).status == 200
        session = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        csrf = {"X-Zerogate-CSRF": session.json()["csrf_token"]}
        current = await browser.get(url, headers={"Accept": "application/json"})
        assert current.status == 200, current.text
        etag = current.headers["ETag"]
        original = {k: v for k, v in current.json().items() if k != "version"}
        elsewhere = {**original, "require": [{"ip": ["127.0.0.3/32"]}]}
        without_me = {**original, "include": [{"email": ["peer@example.test"]}]}
        for body in (elsewhere, without_me):
            refused = await send_json(browser, "PUT", url, body, {**csrf, "If-Match": etag})
            assert refused.status == 422, refused.text
            (problem,) = refused.json()["problems"]
            assert problem["where"] == "admins"
            assert "your own admin access" in problem["message"]
            assert NET_ADMIN in problem["message"] and "force=true" in problem["message"]
        unchanged = await browser.get(url, headers={"Accept": "application/json"})
        assert unchanged.headers["ETag"] == etag
        # an edit that keeps me in is saved
        grown = {**original, "include": [{"email": [NET_ADMIN, "peer@example.test"]}]}
        kept = await send_json(browser, "PUT", url, grown, {**csrf, "If-Match": etag})
        assert kept.status == 200, kept.text
        etag = kept.headers["ETag"]
        # deleting / renaming it: the admins list refers to it, forced or not
        for query in ("", "?force=true"):
            gone = await send_json(browser, "DELETE", url + query, None, {**csrf, "If-Match": etag})
            assert gone.status == 422, gone.text
            assert any(p["where"].startswith("admins") for p in gone.json()["problems"])
        renamed = await send_json(
            browser, "PUT", url, {**grown, "name": "Net Ops"}, {**csrf, "If-Match": etag}
        )
        assert renamed.status == 422
        assert any(p["where"].startswith("admins") for p in renamed.json()["problems"])
        # forced: saved, and this session is an admin no more
        forced = await send_json(
            browser, "PUT", url + "?force=true", elsewhere, {**csrf, "If-Match": etag}
        )
        assert forced.status == 200, forced.text
        assert forced.json()["require"] == [{"ip": ["127.0.0.3/32"]}]
        await live(zg, forced.json()["version"])
        out = await browser.get(api(zg, "/session"), headers={"Accept": "application/json"})
        assert out.status == 403
    async with HttpBrowser() as client:  # an API token is exempt (it is not on the list)
        dropped = await send_json(
            client, "PUT", url, without_me, {**rw, "If-Match": forced.headers["ETag"]}
        )
        assert dropped.status == 200, dropped.text
        restored = await send_json(
            client, "PUT", url, original, {**rw, "If-Match": dropped.headers["ETag"]}
        )
        assert restored.status == 200, restored.text
        await live(zg, restored.json()["version"])


async def test_openapi_offers_force_on_configuration_writes(zg: Zerogate) -> None:
    async with HttpBrowser() as client:
        doc = (await client.get(api(zg, "/openapi.json"), headers=bearer(zg.extra["rw"]))).json()
    for path, method in (
        ("/api/v1/admins", "put"),
        ("/api/v1/groups/{name}", "put"),
        ("/api/v1/groups/{name}", "delete"),
        ("/api/v1/groups", "post"),
        ("/api/v1/applications/{app_name}/policies/{name}", "put"),
    ):
        params = {p["name"]: p for p in doc["paths"][path][method].get("parameters", [])}
        assert params["force"]["in"] == "query", (path, method)
        assert params["force"]["schema"]["type"] == "boolean"


async def test_connector_token_through_the_api(zg: Zerogate) -> None:
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as client:
        missing = await send_json(client, "POST", api(zg, "/tunnels/nope/token"), None, rw)
        assert missing.status == 404
        made = await send_json(
            client, "POST", api(zg, "/tunnels"), {"name": "branch", "routes": []}, rw
        )
        assert made.status == 201, made.text
        first = await send_json(client, "POST", api(zg, "/tunnels/branch/token"), None, rw)
        assert first.status == 201, first.text
        body = first.json()
        decoded = tunnel_token.decode(body["token"])
        assert decoded.tunnel_id == body["id"] and list(decoded.edges) == body["edges"]
        assert decoded.fingerprint == body["fingerprint"] and not body["rotated"]
        assert body["token"] not in body["command"] and "--token-file" in body["command"]
        again = await send_json(client, "POST", api(zg, "/tunnels/branch/token"), None, rw)
        assert again.json()["rotated"] and again.json()["id"] == body["id"]
        log = await client.get(api(zg, "/admin-log?limit=5"), headers=rw)
        entry = log.json()["entries"][0]
        assert (entry["action"], entry["kind"], entry["name"]) == ("credential", "tunnel", "branch")
        assert entry["actor"] == "api-token:rw" and entry["before"] == {"tunnel_id": body["id"]}
        assert body["token"] not in log.text and again.json()["token"] not in log.text
        listed = await client.get(api(zg, "/tunnels/branch"), headers=rw)
        assert "token" not in listed.json()
        ro = await send_json(
            client, "POST", api(zg, "/tunnels/branch/token"), None, bearer(zg.extra["ro"])
        )
        assert ro.status == 403


async def test_an_object_made_through_the_api_survives_apply_from_the_file(zg: Zerogate) -> None:
    """Issue #16: `zerogate apply` keeps (and reports) what the API made and the file does not
    list; `--prune` would remove it, and its plan says so."""
    rw = bearer(zg.extra["rw"])
    async with HttpBrowser() as client:
        made = await send_json(
            client,
            "POST",
            api(zg, "/groups"),
            {"name": "Made By Api", "include": [{"email": ["m@example.test"]}]},
            rw,
        )
        assert made.status == 201, made.text
        applied = await asyncio.to_thread(zg.cli, "apply", "-c", str(zg.config))
        assert applied.returncode == 0, applied.stderr
        flat = " ".join(applied.stdout.split())
        assert "group Made By Api (api)" in flat and "Kept, not in the file" in flat
        got = await client.get(api(zg, "/groups/Made%20By%20Api"), headers=rw)
        assert got.status == 200
        assert (got.json()["changed_via"], got.json()["managed_by_file"]) == ("api", False)
        plan = await asyncio.to_thread(
            zg.cli, "apply", "-c", str(zg.config), "--prune", "--dry-run", "--json"
        )
        assert plan.returncode == 0, plan.stderr
        removals = [c for c in json.loads(plan.stdout)["changes"] if c["action"] == "remove"]
        assert {"kind": "group", "name": "Made By Api", "changed_via": "api"}.items() <= next(
            c for c in removals if c["name"] == "Made By Api"
        ).items()
        assert (await client.get(api(zg, "/groups/Made%20By%20Api"), headers=rw)).status == 200
