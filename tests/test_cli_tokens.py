"""`zerogate service-token`, `zerogate keys` and `zerogate logs` as a user runs them: the real
command in a subprocess against a SQLite store in tmp_path; the store is also read directly to
check what the commands wrote."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import wait_until
from zerogate.identity import KeySet
from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.store import AccessEvent, Store, storage_url
from zg_harness import run_cli as zerogate

T = TypeVar("T")

REFERENCED = """
applications:
  - name: ci
    domain: ci.example.com
    origin: http://10.0.0.6:8080
    policies:
      - {name: bots, decision: service_auth, include: [{service_token: [ci-bot]}]}
service_tokens:
  - {name: ci-bot, duration: 720h}
"""


def ok(*args: str) -> str:
    result = zerogate(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


def user_error(*args: str) -> str:
    """Exit 2, one line on stderr per problem, never a traceback; returns stderr."""
    result = zerogate(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip(), "a user error says why"
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def parallel(calls: list[Callable[[], T]]) -> list[T]:
    """Run independent read-only commands side by side (each one is a process start)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: call(), calls))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text("storage: sqlite:///store.db\n")
    return path


def in_store(config: Path, work: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        store = await Store.open(storage_url("sqlite:///store.db", base_dir=config.parent))
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(go())


def store_bytes(config: Path) -> bytes:
    return b"".join(p.read_bytes() for p in config.parent.glob("store.db*"))


# ---------------------------------------------------------------- service-token


def pair(text: str) -> tuple[str, str]:
    """The client id and secret from a human ``create``/``rotate`` output."""
    client_id = re.search(r"client id:\s+(\S+)", text)
    secret = re.search(r"client secret:\s+(\S+)", text)
    assert client_id and secret, text
    return client_id.group(1), secret.group(1)


def test_create_shows_secret_once_and_stores_only_its_hash(config: Path) -> None:
    text = ok("service-token", "create", "ci-bot", "-c", str(config))
    client_id, secret = pair(text)
    assert re.fullmatch(r"[0-9a-f]{16}\.access", client_id)
    assert len(secret) >= 43
    assert f"Zerogate-Client-Id: {client_id}" in text
    assert f"Zerogate-Client-Secret: {secret}" in text

    async def read(store: Store) -> Any:
        objects, _ = await store.load()
        return objects, await store.service_credentials(), await store.admin_log()

    objects, creds, admin = in_store(config, read)
    assert [(t.name, t.duration) for t in objects.service_tokens] == [("ci-bot", "8760h")]
    assert [c.client_id for c in creds] == [client_id]
    assert creds[0].secret_hash == hash_secret(SecretKind.SERVICE_TOKEN, secret)
    assert creds[0].secret_hash != secret
    lifetime = creds[0].expires_at - creds[0].created_at
    assert lifetime == timedelta(hours=8760)
    assert secret.encode() not in store_bytes(config)
    assert (admin[0].action, admin[0].kind, admin[0].name) == ("add", "service_token", "ci-bot")
    assert admin[0].actor.startswith("cli:")

    table, listed = parallel(
        [
            lambda: ok("service-token", "list", "-c", str(config)),
            lambda: ok_json("service-token", "list", "-c", str(config)),
        ]
    )
    for shown in (table, json.dumps(listed)):
        assert client_id in shown
        assert secret not in shown
        assert creds[0].secret_hash not in shown
    assert "ci-bot" in table and "valid" in table
    (row,) = listed["service_tokens"]
    assert row["name"] == "ci-bot" and row["client_id"] == client_id
    assert row["expired"] is False
    assert "client_secret" not in row and "secret_hash" not in row


def test_json_create_twice_rotate_delete(config: Path) -> None:
    before = datetime.now(UTC)
    data = ok_json("service-token", "create", "bot", "--duration", "48h", "-c", str(config))
    assert {"name", "client_id", "client_secret", "expires_at"} <= data.keys()
    assert data["name"] == "bot"
    assert data["headers"] == {
        "Zerogate-Client-Id": data["client_id"],
        "Zerogate-Client-Secret": data["client_secret"],
    }
    expires = datetime.fromisoformat(data["expires_at"])
    assert before + timedelta(hours=48) - timedelta(seconds=2) <= expires
    assert expires <= datetime.now(UTC) + timedelta(hours=48)

    stderr = user_error("service-token", "create", "bot", "-c", str(config))
    assert "rotate" in stderr

    async def read(store: Store) -> Any:
        objects, _ = await store.load()
        return objects, await store.service_credentials()

    objects, creds = in_store(config, read)
    assert [c.client_id for c in creds] == [data["client_id"]], "the first pair still stands"
    assert creds[0].secret_hash == hash_secret(SecretKind.SERVICE_TOKEN, data["client_secret"])
    assert [(t.name, t.duration) for t in objects.service_tokens] == [("bot", "48h")]

    rotated = ok_json("service-token", "rotate", "bot", "-c", str(config))
    assert rotated["previous_client_id"] == data["client_id"]
    assert {"name", "client_id", "client_secret", "expires_at"} <= rotated.keys()
    assert rotated["client_id"] != data["client_id"]
    expires = datetime.fromisoformat(rotated["expires_at"])
    assert expires - datetime.fromisoformat(rotated["created_at"]) == timedelta(hours=48)

    deleted = ok_json("service-token", "delete", "bot", "-c", str(config))
    assert deleted == {"name": "bot", "deleted_object": True, "deleted_credential": True}

    async def read_all(store: Store) -> Any:
        objects, _ = await store.load()
        return objects, await store.service_credentials(), await store.admin_log()

    objects, creds, admin = in_store(config, read_all)
    assert objects.service_tokens == [] and creds == [], "delete removes both"
    assert [(e.action, e.name) for e in admin] == [("remove", "bot"), ("add", "bot")]


def test_configured_token_gets_its_duration_and_cannot_be_deleted_while_named(
    config: Path,
) -> None:
    config.write_text(config.read_text() + REFERENCED)
    ok("apply", "-c", str(config))
    data = ok_json("service-token", "create", "ci-bot", "-c", str(config))

    async def read(store: Store) -> Any:
        return await store.service_credentials(), await store.admin_log(), await store.version()

    creds, admin, version = in_store(config, read)
    assert creds[0].expires_at - creds[0].created_at == timedelta(hours=720)
    assert creds[0].secret_hash == hash_secret(SecretKind.SERVICE_TOKEN, data["client_secret"])
    assert version == 1, "the object was there: the configuration did not change"
    assert {e.name for e in admin} == {"ci", "ci-bot"}

    stderr = user_error("service-token", "delete", "ci-bot", "-c", str(config))
    assert "policy 'bots'" in stderr and "unknown service token 'ci-bot'" in stderr
    assert in_store(config, lambda store: store.service_credentials()) == creds, "kept"


def test_rotate_replaces_client_id_and_secret(config: Path) -> None:
    first = ok_json("service-token", "create", "bot", "-c", str(config))
    text = ok("service-token", "rotate", "bot", "-c", str(config))
    client_id, secret = pair(text)
    assert client_id != first["client_id"] and secret != first["client_secret"]
    assert re.fullmatch(r"[0-9a-f]{16}\.access", client_id) and len(secret) >= 43
    assert f"old client id {first['client_id']}" in text and "no longer work" in text

    creds = in_store(config, lambda store: store.service_credentials())
    by_id = {c.client_id: c for c in creds}
    assert first["client_id"] not in by_id, "the old client id no longer exists"
    (cred,) = creds
    assert cred.client_id == client_id
    assert cred.secret_hash == hash_secret(SecretKind.SERVICE_TOKEN, secret)
    assert cred.secret_hash != hash_secret(SecretKind.SERVICE_TOKEN, first["client_secret"])
    assert (cred.expires_at - cred.created_at) == timedelta(hours=8760)


# ---------------------------------------------------------------- keys


def read_keyset(config: Path) -> KeySet:
    doc, _ = in_store(config, lambda store: store.keyset())
    assert doc is not None
    return KeySet.from_dict(doc)


def test_keys_rotate_keeps_the_previous_key_for_the_overlap(config: Path) -> None:
    first = ok_json("keys", "rotate", "--overlap", "1h", "-c", str(config))
    keyset = read_keyset(config)
    assert keyset.active.kid == first["active"]
    assert len(keyset.jwks(time.time())["keys"]) == 2
    (previous,) = keyset.previous
    assert previous.not_after is not None
    assert abs(previous.not_after - (time.time() + 3600)) < 60

    text = ok("keys", "rotate", "-c", str(config))  # default overlap: 24h
    keyset = read_keyset(config)
    assert f"New signing key {keyset.active.kid}" in text
    assert f"previous key {first['active']} still verifies until" in text
    assert len(keyset.jwks(time.time())["keys"]) == 3
    retired = next(k for k in keyset.previous if k.kid == first["active"])
    assert retired.not_after is not None
    assert abs(retired.not_after - (time.time() + 86400)) < 60
    listed = ok("keys", "list", "-c", str(config))
    assert keyset.active.kid in listed and "active" in listed and "previous" in listed


def test_keys_rotate_tiny_overlap_leaves_one_key(config: Path) -> None:
    data = ok_json("keys", "rotate", "--overlap", "1s", "-c", str(config))
    keyset = read_keyset(config)
    assert [k.kid for k in keyset] == [k["kid"] for k in data["keys"]]
    (previous,) = keyset.previous
    assert previous.not_after is not None
    assert len(keyset.jwks(previous.not_after - 0.5)["keys"]) == 2
    assert keyset.jwks(previous.not_after)["keys"] == [keyset.active.to_jwk()]

    wait_until(
        lambda: len(read_keyset(config).jwks(time.time())["keys"]) == 1,
        timeout=10,
        what="the previous key no longer verifying",
        interval=0.1,
    )
    listed = ok_json("keys", "list", "-c", str(config))["keys"]
    assert [(k["kid"], k["active"], k["valid"]) for k in listed] == [
        (keyset.active.kid, True, True),
        (previous.kid, False, False),
    ]


# ---------------------------------------------------------------- logs


def write_events(config: Path, now: datetime) -> None:
    def event(minutes: int, kind: str, app: str, email: str, decision: str) -> AccessEvent:
        return AccessEvent(
            at=now - timedelta(minutes=minutes),
            kind=kind,
            app=app,
            email=email,
            idp="otp",
            ip="198.51.100.7",
            country="DE",
            decision=decision,
            policy="staff" if decision == "allow" else None,
            method="GET" if kind == "request" else None,
            host=f"{app}.example.com",
            path="/page",
        )

    events = [
        event(180, "request", "wiki", "ann@example.com", "allow"),
        event(30, "login", "wiki", "bob@example.com", "pin sent"),
        event(10, "request", "ci", "ann@example.com", "block"),
        event(1, "request", "wiki", "Eve@Evil.test", "block"),
    ]
    in_store(config, lambda store: store.write_access(events))


def test_logs_filters(config: Path) -> None:
    now = datetime.now(UTC)
    write_events(config, now)
    c = ["-c", str(config)]
    # each query combines filters so that every one of them removes a row the others keep
    queries: dict[str, list[str]] = {
        "app_since": ["--app", "wiki", "--since", "1h"],
        "email_decision": ["--email", "ANN@example.com", "--decision", "block"],
        "iso_kind": ["--since", (now - timedelta(minutes=45)).isoformat(), "--kind", "request"],
        "limit": ["--limit", "2"],
    }
    calls: list[Callable[[], Any]] = [partial(ok_json, "logs", *c, *a) for a in queries.values()]
    calls.append(partial(ok, "logs", *c))
    *results, table = parallel(calls)
    found = {
        name: [(row["email"], row["app"]) for row in rows["access_log"]]
        for name, rows in zip(queries, results, strict=True)
    }
    ann, bob, eve = "ann@example.com", "bob@example.com", "eve@evil.test"
    assert found["app_since"] == [(eve, "wiki"), (bob, "wiki")]
    assert found["email_decision"] == [(ann, "ci")], "email compared lower-cased"
    assert found["iso_kind"] == [(eve, "wiki"), (ann, "ci")]
    assert found["limit"] == [(eve, "wiki"), (ann, "ci")], "newest first"

    newest = results[3]["access_log"][0]
    assert newest["decision"] == "block" and newest["path"] == "/page"
    at = datetime.fromisoformat(newest["at"])
    assert abs(at - (now - timedelta(minutes=1))) < timedelta(seconds=1)

    rows = [line for line in table.splitlines() if "example.com" in line or "evil" in line]
    assert [r.split()[3] for r in rows] == ["block", "block", "pin", "allow"], "newest first"
    assert eve in rows[0] and "GET wiki.example.com/page" in rows[0]
    assert "198.51.100.7 (DE)" in rows[0]


def test_logs_admin_shows_the_applied_changes(config: Path) -> None:
    config.write_text(config.read_text() + REFERENCED)
    ok("apply", "-c", str(config))
    ok("service-token", "create", "ci-bot", "--duration", "24h", "-c", str(config))
    c = ["-c", str(config), "--admin"]
    data, future, table = parallel(
        [
            lambda: ok_json("logs", *c)["admin_log"],
            lambda: ok_json("logs", *c, "--since", "2999-01-01")["admin_log"],
            lambda: ok("logs", *c, "--since", "1h"),
        ]
    )
    assert (data[0]["action"], data[0]["kind"], data[0]["name"]) == (
        "change",
        "service_token",
        "ci-bot",
    )
    assert {(e["action"], e["kind"], e["name"]) for e in data[1:]} == {
        ("add", "application", "ci"),
        ("add", "service_token", "ci-bot"),
    }
    assert data[0]["before"]["duration"] == "720h" and data[0]["after"]["duration"] == "24h"
    assert data[0]["version"] == 2 and data[0]["actor"].startswith("cli:")
    assert future == []
    assert "duration: 720h → 24h" in table
    assert "service token ci-bot" in table and "cli:" in table


USER_ERRORS: list[tuple[list[str], str]] = [
    (["service-token", "create", "bot", "--duration", "5q"], "--duration"),
    (["service-token", "create", "x" * 201], "NAME"),
    (["service-token", "rotate", "nope"], "unknown service token 'nope'"),
    (["keys", "rotate", "--overlap", "soon"], "--overlap"),
    (["logs", "--since", "yesterday"], "--since"),
    (["logs", "--kind", "visit"], "--kind"),
    (["logs", "--decision", "allowed"], "--decision: 'allowed' is not one of allow, block"),
    (["logs", "--status", "9xx"], "--status"),
    (["logs", "--admin", "--app", "wiki"], "--app"),
]


def test_user_errors_exit_2_with_one_line(config: Path) -> None:
    stderrs = parallel([partial(user_error, *args, "-c", str(config)) for args, _ in USER_ERRORS])
    for (args, message), stderr in zip(USER_ERRORS, stderrs, strict=True):
        assert message in stderr, (args, stderr)
    # bad arguments are caught before the store is touched; unknown names find nothing
    assert in_store(config, lambda store: store.service_credentials()) == []
