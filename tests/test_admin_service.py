"""``AdminService`` and the front door's pure checks, in-process against a SQLite store in
tmp_path: versioned writes (409 on stale, 422 naming the field, 404), policies inside their
application, credentials (service tokens, API tokens: hashing, expiry, at most one
``last_used_at`` write a minute), the admins list as a policy (groups with network
requirements, nobody when empty), the sign-in's return-URL rule and the policy tester's input
checks."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zerogate.admin.auth import admin_return, csrf_token, is_admin
from zerogate.admin.principal import Principal
from zerogate.admin.service import (
    Actor,
    AdminService,
    Conflict,
    Guard,
    Invalid,
    LockOut,
    NotFound,
    split_api_token,
)
from zerogate.identity.secret_hash import SecretKind, hash_secret, secret_matches
from zerogate.model.loader import validate_objects
from zerogate.policy import Context, Identity, compile_snapshot
from zerogate.store import Store, storage_url

ME = Actor("ops@example.test", "192.0.2.1")


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[AdminService]:
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        yield AdminService(store)
    finally:
        await store.close()


GROUP = {"name": "Office", "include": [{"ip": ["203.0.113.0/24"]}]}
APP = {
    "name": "wiki",
    "domain": "wiki.example.test",
    "origin": "http://10.0.0.5:8080",
    "policies": [{"name": "staff", "decision": "allow", "include": [{"everyone": True}]}],
}


async def test_versioned_writes(service: AdminService) -> None:
    made = await service.create("groups", GROUP, ME)
    assert made.version >= 1 and made.spec["include"] == GROUP["include"]
    with pytest.raises(Conflict, match="already exists"):
        await service.create("groups", GROUP, ME)
    changed = await service.update(
        "groups",
        "Office",
        {**GROUP, "exclude": [{"ip": ["203.0.113.9"]}]},
        version=made.version,
        actor=ME,
    )
    assert changed.version > made.version
    with pytest.raises(Conflict, match="reload and retry"):
        await service.update("groups", "Office", GROUP, version=made.version, actor=ME)
    with pytest.raises(Conflict):
        await service.delete("groups", "Office", version=made.version, actor=ME)
    renamed = await service.update(
        "groups", "Office", {**GROUP, "name": "HQ"}, version=changed.version, actor=ME
    )
    assert renamed.name == "HQ"
    with pytest.raises(NotFound):
        await service.get("groups", "Office")
    await service.delete("groups", "HQ", version=renamed.version, actor=ME)
    assert await service.items("groups") == []
    with pytest.raises(NotFound, match="no collection"):
        await service.items("gadgets")


async def test_invalid_changes_name_object_and_field(service: AdminService) -> None:
    with pytest.raises(Invalid) as bad:
        await service.create("groups", {"name": "Bad", "include": [{"ip": ["1.2.3.4/99"]}]}, ME)
    assert any("Bad" in p.where and "ip" in p.where for p in bad.value.problems)
    await service.create("groups", GROUP, ME)
    await service.create(
        "applications",
        {
            **APP,
            "policies": [{"name": "o", "decision": "allow", "include": [{"group": ["Office"]}]}],
        },
        ME,
    )
    group = await service.get("groups", "Office")
    with pytest.raises(Invalid) as used:
        await service.delete("groups", "Office", version=group.version, actor=ME)
    assert any("Office" in p.message for p in used.value.problems)
    assert used.value.message == (
        "group 'Office' is in use: remove it from application 'wiki' › policy 'o' first"
    )
    assert "unknown group" not in str([p.message for p in used.value.problems])
    with pytest.raises(Invalid, match="needs a name"):
        await service.create("groups", {"include": []}, ME)


async def test_policies_live_in_their_application(service: AdminService) -> None:
    app = await service.create("applications", APP, ME)
    policy = {"name": "lab", "decision": "block", "include": [{"ip": ["10.9.0.0/16"]}]}
    first = await service.put_policy("wiki", policy, app_version=app.version, actor=ME, position=0)
    assert [p["name"] for p in first.spec["policies"]] == ["lab", "staff"]
    with pytest.raises(Conflict):  # based on the application before the first change
        other = {**policy, "name": "other"}
        await service.put_policy("wiki", other, app_version=app.version, actor=ME)
    with pytest.raises(Invalid):  # two policies of one name
        await service.put_policy("wiki", policy, app_version=first.version, actor=ME)
    with pytest.raises(NotFound, match="no policy named 'nope'"):
        await service.put_policy(
            "wiki", policy, app_version=first.version, actor=ME, replace="nope"
        )
    gone = await service.delete_policy("wiki", "lab", app_version=first.version, actor=ME)
    assert [p["name"] for p in gone.spec["policies"]] == ["staff"]
    entries = await service.admin_log(10)
    assert entries[0].actor == ME.who and entries[0].source == ME.source
    assert entries[0].before is not None and entries[0].after is not None


async def test_admins_list_versions(service: AdminService) -> None:
    assert await service.admins() == ([], 0)
    version = await service.set_admins(["ops@example.test"], version=0, actor=ME)
    assert version >= 1
    with pytest.raises(Conflict):
        await service.set_admins(["x@example.test"], version=0, actor=ME)
    with pytest.raises(Invalid):
        await service.set_admins(["group:Missing"], version=version, actor=ME)
    assert await service.admins() == (["ops@example.test"], version)


async def test_api_tokens(service: AdminService) -> None:
    token, text = await service.create_api_token("deploy", read_only=True, expires="1h", actor=ME)
    assert token.secret_hash == hash_secret(SecretKind.API_TOKEN, text.split("_", 2)[2])
    assert text not in token.secret_hash
    found = await service.verify_api_token(text)
    assert found is not None and found.read_only
    # the use is recorded once, then not again within the minute
    first = (await service.api_tokens())[0].last_used_at
    assert first is not None
    await service.verify_api_token(text, now=datetime.now(UTC) + timedelta(seconds=30))
    assert (await service.api_tokens())[0].last_used_at == first
    later = datetime.now(UTC) + timedelta(seconds=90)
    await service.verify_api_token(text, now=later)
    assert (await service.api_tokens())[0].last_used_at != first
    # expired, wrong secret, malformed
    assert await service.verify_api_token(text, now=datetime.now(UTC) + timedelta(hours=2)) is None
    assert await service.verify_api_token(text[:-1] + ("a" if text[-1] != "a" else "b")) is None
    for bad in ("", "zga_", "zga_xyz_abc", "zga_0123456789abcdeg_x", "Bearer x", "zga_" + "0" * 16):
        assert split_api_token(bad) is None, bad
        assert await service.verify_api_token(bad) is None
    with pytest.raises(Conflict):
        await service.create_api_token("deploy", read_only=False, expires=None, actor=ME)
    with pytest.raises(Invalid, match="expires"):
        await service.create_api_token("x", read_only=False, expires="soon", actor=ME)
    await service.revoke_api_token("deploy", ME)
    assert await service.verify_api_token(text) is None
    with pytest.raises(NotFound):
        await service.revoke_api_token("deploy", ME)
    actions = [(e.action, e.kind, e.name) for e in await service.admin_log(5)]
    assert ("remove", "api_token", "deploy") in actions and (
        "add",
        "api_token",
        "deploy",
    ) in actions


async def test_service_token_credentials(service: AdminService) -> None:
    item, cred, secret = await service.create_service_token({"name": "ci", "duration": "2h"}, ME)
    assert item.name == "ci" and secret and cred.client_id.endswith(".access")
    assert cred.expires_at - cred.created_at == timedelta(hours=2)
    again, secret2 = await service.rotate_service_token("ci", ME)
    assert again.client_id != cred.client_id and secret2 != secret
    assert (await service.service_credentials())["ci"].client_id == again.client_id
    log = await service.admin_log(3)
    assert log[0].action == "credential" and log[0].before == {"client_id": cred.client_id}
    with pytest.raises(NotFound):
        await service.rotate_service_token("nope", ME)


async def test_admins_lock_out_guard(service: AdminService) -> None:
    """``keep``: a list that would no longer admit the acting session is refused, decided
    with its login and network (a group that requires a network counts only from there)."""
    net = {"name": "Net", "include": [{"email": ["ops@example.test"]}]}
    await service.create("groups", {**net, "require": [{"ip": ["192.0.2.0/24"]}]}, ME)
    version = await service.set_admins(["ops@example.test"], version=0, actor=ME)
    me = Identity.of("ops@example.test", "otp")
    here, away = Context(ip="192.0.2.1"), Context(ip="198.51.100.1")
    with pytest.raises(Invalid, match="lock you out") as refused:
        await service.set_admins(["x@example.test"], version=version, actor=ME, keep=(me, here))
    assert refused.value.problems[0].where == "admins"
    assert "your own admin access" in refused.value.problems[0].message
    assert await service.admins() == (["ops@example.test"], version)  # nothing written
    with pytest.raises(Invalid, match="lock you out"):  # the group admits me only from 192.0.2/24
        await service.set_admins(["group:Net"], version=version, actor=ME, keep=(me, away))
    kept = await service.set_admins(
        ["group:Net", "x@example.test"], version=version, actor=ME, keep=(me, here)
    )
    # without ``keep`` (an API token, or ?force=true) it is saved
    forced = await service.set_admins(["x@example.test"], version=kept, actor=ME)
    assert await service.admins() == (["x@example.test"], forced)


OPS_SESSION = Principal(
    "ops@example.test",
    "192.0.2.1",
    False,
    "session",
    "jti-1",
    identity=Identity.of("ops@example.test", "otp"),
    country="NL",
)
OPS_TOKEN = Principal("api-token:deploy", "192.0.2.1", False, "token", "token:0123")


def test_actor_of_a_principal_guards_sessions_only() -> None:
    guarded = Actor.of(OPS_SESSION)
    assert (guarded.who, guarded.source) == ("ops@example.test", "192.0.2.1")
    assert guarded.guard == Guard(
        Identity.of("ops@example.test", "otp"), Context(ip="192.0.2.1", country="NL")
    )
    assert Actor.of(OPS_SESSION, force=True).guard is None
    assert Actor.of(OPS_TOKEN).guard is None  # API tokens are not on the admins list
    # a session principal without its login (tests, old wiring): decided by its email
    bare = Actor.of(Principal("ops@example.test", None, False, "session", "s"))
    assert bare.guard is not None and bare.guard.identity == Identity.of("ops@example.test")


async def _ops_group_admins(service: AdminService) -> None:
    """Ops is the admins list's only entry: ``group:Ops`` (ops@ from anywhere)."""
    await service.create("groups", {"name": "Ops", "include": [{"email": [OPS_SESSION.who]}]}, ME)
    await service.set_admins(["group:Ops"], version=0, actor=ME)


async def test_lock_out_guard_covers_a_group_the_admins_list_names(
    service: AdminService,
) -> None:
    """Not only the admins list: editing a group it names so that the acting session is no
    longer an administrator from where it is (removing yourself, adding an IP or country
    requirement) is refused with ``LockOut`` (422, ``admins``) and nothing is written."""
    await _ops_group_admins(service)
    me = Actor.of(OPS_SESSION)
    group = await service.get("groups", "Ops")
    for changed in (
        {"name": "Ops", "include": [{"email": ["someone@example.test"]}]},
        {**group.spec, "require": [{"ip": ["10.0.0.0/8"]}]},
        {**group.spec, "require": [{"country": ["DE"]}]},
        {**group.spec, "exclude": [{"email_domain": ["example.test"]}]},
    ):
        with pytest.raises(LockOut, match="lock you out") as refused:
            await service.update("groups", "Ops", changed, version=group.version, actor=me)
        (problem,) = refused.value.problems
        assert problem.where == "admins"
        assert "your own admin access" in problem.message
        assert "ops@example.test in from 192.0.2.1 (NL)" in problem.message
        assert "force=true" in problem.message and "save anyway" in problem.message
        assert refused.value.status == 422
    assert await service.get("groups", "Ops") == group  # nothing written
    # a requirement this session meets is fine: it is decided with the session's context
    here = {**group.spec, "require": [{"ip": ["192.0.2.0/24"]}, {"country": ["NL"]}]}
    kept = await service.update("groups", "Ops", here, version=group.version, actor=me)
    assert kept.spec["require"] == here["require"]
    # other writes by a guarded session are checked too, and pass
    await service.create("applications", APP, me)
    # the same edit from a network the group does not admit is refused
    away = Actor.of(replace(OPS_SESSION, source="198.51.100.1"))
    grown = {**kept.spec, "include": [{"email": [OPS_SESSION.who, "b@example.test"]}]}
    with pytest.raises(LockOut):
        await service.update("groups", "Ops", grown, version=kept.version, actor=away)


async def test_lock_out_guard_can_be_forced_and_api_tokens_are_exempt(
    service: AdminService,
) -> None:
    await _ops_group_admins(service)
    group = await service.get("groups", "Ops")
    elsewhere = {**group.spec, "require": [{"ip": ["10.0.0.0/8"]}]}
    with pytest.raises(LockOut):
        await service.update(
            "groups", "Ops", elsewhere, version=group.version, actor=Actor.of(OPS_SESSION)
        )
    forced = await service.update(
        "groups", "Ops", elsewhere, version=group.version, actor=Actor.of(OPS_SESSION, force=True)
    )
    assert forced.spec["require"] == [{"ip": ["10.0.0.0/8"]}]
    entry = (await service.admin_log(1))[0]
    assert (entry.actor, entry.name) == ("ops@example.test", "Ops")  # recorded as usual
    # an API token is not on the list: its writes are never refused for it
    token = Actor.of(OPS_TOKEN)
    dropped = {"name": "Ops", "include": [{"email": ["someone@example.test"]}]}
    done = await service.update("groups", "Ops", dropped, version=forced.version, actor=token)
    await service.set_admins([], version=(await service.admins())[1], actor=token)
    assert done.spec["include"] == dropped["include"] and (await service.admins())[0] == []


async def test_deleting_or_renaming_a_group_the_admins_list_names_is_refused_anyway(
    service: AdminService,
) -> None:
    """References already refuse these (the admins list would name a missing group), for a
    guarded session, a forced one and an API token alike: 422 naming ``admins``."""
    await _ops_group_admins(service)
    group = await service.get("groups", "Ops")
    for actor in (Actor.of(OPS_SESSION), Actor.of(OPS_SESSION, force=True), Actor.of(OPS_TOKEN)):
        with pytest.raises(Invalid) as deleted:
            await service.delete("groups", "Ops", version=group.version, actor=actor)
        assert not isinstance(deleted.value, LockOut)
        assert any(
            p.where.startswith("admins") and "Ops" in p.message for p in deleted.value.problems
        )
        with pytest.raises(Invalid) as renamed:
            await service.update(
                "groups", "Ops", {**group.spec, "name": "Ops2"}, version=group.version, actor=actor
            )
        assert any(p.where.startswith("admins") for p in renamed.value.problems)
    assert await service.get("groups", "Ops") == group


async def test_lock_out_guard_on_the_admins_list_through_the_actor(service: AdminService) -> None:
    """``set_admins`` is guarded by the actor like every write (``keep`` still works)."""
    version = await service.set_admins([OPS_SESSION.who], version=0, actor=ME)
    with pytest.raises(LockOut):
        await service.set_admins(["x@example.test"], version=version, actor=Actor.of(OPS_SESSION))
    grown = await service.set_admins(
        [OPS_SESSION.who, "x@example.test"], version=version, actor=Actor.of(OPS_SESSION)
    )
    forced = await service.set_admins(
        ["x@example.test"], version=grown, actor=Actor.of(OPS_SESSION, force=True)
    )
    assert await service.admins() == (["x@example.test"], forced)


async def test_tunnel_tokens_are_made_in_one_place(service: AdminService) -> None:
    from zerogate.model.objects import Settings
    from zerogate.tunnel import token as tunnel_token

    with pytest.raises(NotFound):
        await service.create_tunnel_token("office", actor=ME, settings=None)
    await service.create("tunnels", {"name": "office", "routes": []}, ME)
    settings = Settings.model_validate({"portal": "auth.example.test"})
    first = await service.create_tunnel_token("office", actor=ME, settings=settings)
    decoded = tunnel_token.decode(first.token)
    (cred,) = await service.store.tunnel_credentials()
    assert decoded.tunnel_id == cred.tunnel_id == first.tunnel_id and not first.rotated
    assert secret_matches(SecretKind.TUNNEL, decoded.secret, cred.secret_hash)
    assert decoded.edges == first.edges and first.edges  # the settings' tunnel address
    assert decoded.fingerprint is not None and decoded.fingerprint == first.fingerprint
    assert (
        first.token not in first.command()
        and "--token-file" in first.command()
        and "--edge" not in first.command()
    )
    second = await service.create_tunnel_token(
        "office", actor=ME, settings=settings, edges=["edge.example.test:7844"]
    )
    assert second.rotated and second.tunnel_id == first.tunnel_id
    assert second.edges == ("edge.example.test:7844",) and second.token != first.token
    assert second.fingerprint == first.fingerprint  # the one stored certificate
    with pytest.raises(Invalid, match="edges"):
        await service.create_tunnel_token("office", actor=ME, settings=None, edges=["no port"])
    assert (await service.store.tunnel_credentials())[0].secret_hash != cred.secret_hash
    entries = [e for e in await service.admin_log(10) if e.kind == "tunnel"]
    assert [e.action for e in entries[:2]] == ["credential", "credential"]
    assert entries[0].actor == ME.who and entries[0].source == ME.source
    assert entries[0].before == {"tunnel_id": first.tunnel_id}
    assert entries[0].after is not None and entries[0].after["edges"] == ["edge.example.test:7844"]
    assert entries[1].before is None and entries[0].version is None
    assert first.token not in str([e.after for e in entries])  # never the secret


async def test_policy_tester_knows_the_admin_application(service: AdminService) -> None:
    await service.set_admins(["ops@example.test"], version=0, actor=ME)
    verdict = await service.policy_test(app="zerogate-admin", email="ops@example.test")
    assert verdict.decision == "allow" and verdict.policy == "admins"
    other = await service.policy_test(app="zerogate-admin", email="eve@example.test")
    assert other.decision == "block"


async def test_policy_tester_checks_its_inputs(service: AdminService) -> None:
    await service.create("applications", APP, ME)
    verdict = await service.policy_test(url="https://wiki.example.test/x", email="a@b.test")
    assert verdict.decision == "allow" and verdict.policy == "staff"
    # the verdict refers to its application weakly: it must still name it after the call
    assert verdict.as_dict()["application"] == "wiki"
    with pytest.raises(Invalid) as bad:
        await service.policy_test(app="wiki", ip="nope", country="ZZZ", idp="nobody")
    # idp without email is a problem too: it describes a login
    assert {p.where for p in bad.value.problems} == {"ip", "country", "idp", "email"}
    with pytest.raises(Invalid):
        await service.policy_test()
    with pytest.raises(Invalid):
        await service.policy_test(url="http://[::1")
    with pytest.raises(NotFound):
        await service.policy_test(app="nope")


def test_admins_list_is_a_policy_with_context() -> None:
    objects = validate_objects(
        {
            "admins": ["ops@example.test", "group:Net"],
            "groups": [
                {
                    "name": "Net",
                    "include": [{"email_domain": ["net.test"]}],
                    "require": [{"ip": ["192.0.2.0/24"]}],
                }
            ],
        }
    )
    snapshot = compile_snapshot(objects)
    inside, outside = Context(ip="192.0.2.7"), Context(ip="198.51.100.1")
    assert is_admin(snapshot, Identity.of("OPS@example.test"), outside)
    assert is_admin(snapshot, Identity.of("eve@net.test"), inside)
    assert not is_admin(snapshot, Identity.of("eve@net.test"), outside)
    assert not is_admin(snapshot, Identity.of("ops@example.test.evil"), inside)
    # the built-in application: found by its reserved name, never routed
    assert snapshot.application("zerogate-admin") is snapshot.admin
    assert "zerogate-admin" not in snapshot.apps
    assert snapshot.route("zerogate-admin.invalid", "/") is None
    # nobody at all without an admins list
    empty = compile_snapshot(validate_objects({}))
    assert empty.admin.model.policies == []
    assert not is_admin(empty, Identity.of("ops@example.test"), inside)


def test_the_admin_application_name_is_reserved() -> None:
    from zerogate.model import ConfigError

    app = {
        "name": "Zerogate-Admin",
        "domain": "x.example.test",
        "origin": "http://127.0.0.1:1",
        "policies": [{"name": "p", "decision": "allow", "include": [{"everyone": True}]}],
    }
    with pytest.raises(ConfigError, match="reserved"):
        validate_objects({"applications": [app]})


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/admin/groups?x=1", "/admin/groups?x=1"),
        ("/api/v1/groups", "/api/v1/groups"),
        ("/admin", "/admin"),
        ("/admin/./groups", "/admin/"),  # dot segments are refused, never resolved
        ("", "/admin/"),
        ("https://evil.test/admin", "/admin/"),
        ("//evil.test/admin", "/admin/"),
        ("/\\evil.test", "/admin/"),
        ("/admin/../evil", "/admin/"),
        ("/administrator", "/admin/"),
        ("/admin/login?rd=//evil.test", "/admin/"),
        ("/admin%2F..%2F..%2Fevil", "/admin/"),
        ("/admin/\x00", "/admin/"),
        ("/admin/" + "a" * 3000, "/admin/"),
        ("javascript:alert(1)", "/admin/"),
    ],
)
def test_admin_return(target: str, expected: str) -> None:
    assert admin_return(target) == expected


def test_csrf_token_is_bound_to_session_and_secret() -> None:
    a = csrf_token(b"s" * 32, "session-1")
    assert a == csrf_token(b"s" * 32, "session-1")
    assert a != csrf_token(b"s" * 32, "session-2")
    assert a != csrf_token(b"t" * 32, "session-1")


def test_replace_keeps_api_token_dataclass() -> None:
    # ApiToken is a frozen dataclass: tests build expired copies with ``replace``
    from zerogate.admin.service import new_api_token

    token, _ = new_api_token("t", read_only=False, expires=None, created_by="x")
    assert replace(token, read_only=True).read_only and token.expires_at is None


# ---------------------------------------------------------------- concurrency, both stores

PG_SERVER = os.environ.get("ZEROGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield storage_url(f"sqlite:///{tmp_path / 'race.db'}")
        return
    import asyncpg  # type: ignore[import-untyped]

    name = f"zg_admin_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_SERVER)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield storage_url(PG_SERVER.rsplit("/", 1)[0] + "/" + name)
    finally:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_concurrent_edits_from_two_processes_one_wins(store_url: str) -> None:
    """Two servers (two stores, two connection pools) change the same group from the same
    version at once: exactly one write lands, the other is a ``Conflict``."""
    first, second = await Store.open(store_url), await Store.open(store_url)
    try:
        a, b = AdminService(first), AdminService(second)
        made = await a.create("groups", GROUP, ME)
        edits = [{**GROUP, "include": [{"email": [f"{who}@example.test"]}]} for who in ("a", "b")]
        results = await asyncio.gather(
            a.update("groups", "Office", edits[0], version=made.version, actor=ME),
            b.update("groups", "Office", edits[1], version=made.version, actor=ME),
            return_exceptions=True,
        )
        conflicts = [r for r in results if isinstance(r, Conflict)]
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert len(conflicts) == 1 and len(winners) == 1, results
        now = await a.get("groups", "Office")
        assert now.spec["include"] == winners[0].spec["include"]
    finally:
        await first.close()
        await second.close()


async def test_a_write_never_undoes_a_concurrent_change_to_another_object(
    service: AdminService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admin A loads the configuration, admin B changes group Two, then A saves group One:
    A's first attempt is refused by the store (its document still holds B's old group Two),
    so A's change is made again on top of B's: both changes are kept, neither is undone."""
    one = await service.create("groups", {"name": "One", "include": [{"email": ["a@x.test"]}]}, ME)
    two = await service.create("groups", {"name": "Two", "include": [{"email": ["b@x.test"]}]}, ME)
    other = AdminService(service.store)
    real_write = service._write
    attempts: list[int] = []

    async def b_writes_first(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[3])  # the configuration version the attempt is based on
        if len(attempts) == 1:
            changed = {"name": "Two", "include": [{"email": ["c@x.test"]}]}
            await other.update("groups", "Two", changed, version=two.version, actor=ME)
        return await real_write(*args, **kwargs)

    monkeypatch.setattr(service, "_write", b_writes_first)
    await service.update(
        "groups",
        "One",
        {"name": "One", "include": [{"email": ["z@x.test"]}]},
        version=one.version,
        actor=ME,
    )
    monkeypatch.undo()
    assert len(attempts) == 2 and attempts[1] == attempts[0] + 1
    assert (await service.get("groups", "Two")).spec["include"] == [{"email": ["c@x.test"]}]
    assert (await service.get("groups", "One")).spec["include"] == [{"email": ["z@x.test"]}]


async def test_a_stale_version_of_the_edited_object_is_still_refused(
    service: AdminService,
) -> None:
    """The retry on top of other admins' changes never overrides a change to the object
    itself: an update based on an old version of it is a 409."""
    made = await service.create("groups", {"name": "One", "include": [{"email": ["a@x.test"]}]}, ME)
    changed = {"name": "One", "include": [{"email": ["b@x.test"]}]}
    await service.update("groups", "One", changed, version=made.version, actor=ME)
    stale = {"name": "One", "include": [{"email": ["c@x.test"]}]}
    with pytest.raises(Conflict, match="reload"):
        await service.update("groups", "One", stale, version=made.version, actor=ME)
    assert (await service.get("groups", "One")).spec["include"] == [{"email": ["b@x.test"]}]


async def test_parallel_creates_of_different_objects_all_land(store_url: str) -> None:
    """Four writers (two processes' stores) each create objects at once: a POST needs no
    version, so none may be refused because another object was written meanwhile."""
    stores = [await Store.open(store_url), await Store.open(store_url)]
    try:
        services = [AdminService(stores[i % 2]) for i in range(4)]

        async def writer(i: int) -> None:
            for j in range(5):
                spec = {"name": f"G{i}x{j}", "include": [{"email": [f"u{i}{j}@x.test"]}]}
                await services[i].create("groups", spec, ME)

        results = await asyncio.gather(*(writer(i) for i in range(4)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        names = {item.name for item in await services[0].items("groups")}
        assert names == {f"G{i}x{j}" for i in range(4) for j in range(5)}
    finally:
        for store in stores:
            await store.close()


async def test_a_write_loads_itself_before_it_returns(tmp_path: Path) -> None:
    """The process that makes a change serves it before it answers: ``on_change`` (the
    server's runtime refresh) runs after every configuration write that changed something,
    and not for refused or empty writes."""
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        seen: list[int] = []

        async def loaded() -> None:
            seen.append((await store.state()).config_version)

        service = AdminService(store, on_change=loaded)
        made = await service.create("groups", GROUP, ME)
        assert seen == [made.version]
        with pytest.raises(Conflict):
            await service.create("groups", GROUP, ME)
        await service.update("groups", "Office", GROUP, version=made.version, actor=ME)
        assert seen == [made.version]  # nothing changed: nothing to load
        await service.delete("groups", "Office", version=made.version, actor=ME)
        assert len(seen) == 2 and seen[1] > made.version
    finally:
        await store.close()
