"""`zerogate tunnel create/list/route/delete/token` as a user runs them: the real command in a
subprocess against a SQLite store in tmp_path; the store is also read directly."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zerogate.cli.helpers import UserError
from zerogate.cli.tunnels import _apply, _object, _tunnel_doc, _with_tunnels
from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.store import Store, TunnelConnection, storage_url
from zerogate.tunnel import certs
from zerogate.tunnel.token import decode
from zg_harness import run_cli as zerogate

APPS = """
applications:
  - name: wiki
    domain: wiki.example.com
    tunnel: office
    policies:
      - {name: staff, decision: allow, include: [{email_domain: [example.com]}]}
"""


def ok(*args: str) -> str:
    result = zerogate(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


def user_error(*args: str) -> str:
    result = zerogate(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: "), result.stderr
    return " ".join(result.stderr.split())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text(
        "portal: auth.example.com\nlisten: {http: 127.0.0.1:8080, tunnel: 0.0.0.0:7999}\n"
        "storage: sqlite:///zg.db\n"
    )
    return path


def store_of(config: Path) -> Any:
    async def run(work: Any) -> Any:
        store = await Store.open(storage_url("sqlite:///zg.db", base_dir=config.parent))
        try:
            return await work(store)
        finally:
            await store.close()

    return lambda work: asyncio.run(run(work))


def test_create_prints_a_token_once_and_stores_only_its_hash(config: Path) -> None:
    c = str(config)
    made = ok_json("tunnel", "create", "office", "--route", "Wiki.Example.com", "-c", c)
    assert made["name"] == "office" and made["routes"] == ["wiki.example.com"]
    token = decode(made["token"])
    assert token.tunnel_id == made["id"]
    # listen.tunnel binds every address: the token names the portal's host, tunnel port
    assert list(token.edges) == made["edges"] == ["auth.example.com:7999"]
    # the token stays off the command line (ps, shell history): the command reads a file
    assert made["command"].startswith("zerogate connector run --token-file ")
    assert made["token"] not in made["command"]
    with_store = store_of(config)
    creds = with_store(lambda s: s.tunnel_credentials())
    assert [(c.name, c.tunnel_id, c.secret_hash) for c in creds] == [
        ("office", token.tunnel_id, hash_secret(SecretKind.TUNNEL, token.secret))
    ]
    stored_cert = with_store(lambda s: s.named_secret(certs.SECRET_NAME, "unused"))
    assert token.fingerprint == certs.GeneratedCert.from_json(stored_cert).fingerprint
    objects, _ = with_store(lambda s: s.load())
    assert [(t.name, t.routes) for t in objects.tunnels] == [("office", ["wiki.example.com"])]
    # once only: a second create is refused, pointing at --rotate
    assert "tunnel token office --rotate" in user_error("tunnel", "create", "office", "-c", c)
    # text mode: the token, the connector command, the warning; --edge overrides the address
    text = ok("tunnel", "create", "lab", "--edge", "edge1.example.com:443", "-c", c)
    assert "Tunnel lab created (no routes yet)" in text
    assert "zgt1_" in text and "zerogate connector run --token-file " in text
    assert "shown only this once" in text
    lab_token = next(line.strip() for line in text.splitlines() if line.strip().startswith("zgt1_"))
    assert decode(lab_token).edges == ("edge1.example.com:443",)
    assert "NAME ''" in user_error("tunnel", "create", "", "-c", c)
    assert "--edge" in user_error("tunnel", "create", "x", "--edge", "nope", "-c", c)


def test_routes_and_applications(config: Path, tmp_path: Path) -> None:
    c = str(config)
    ok_json("tunnel", "create", "office", "-c", c)
    ok_json("tunnel", "create", "lab", "--route", "lab.example.com", "-c", c)
    # an application on a host its tunnel does not route is refused (check and apply)
    apps = tmp_path / "apps.yaml"
    apps.write_text(
        config.read_text() + APPS + "tunnels:\n  - {name: office}\n  - {name: lab, "
        "routes: [lab.example.com]}\n"
    )
    result = zerogate("check", "-c", str(apps))
    assert result.returncode == 2
    assert "'wiki.example.com' is not among the routes of tunnel 'office'" in result.stderr
    assert "zerogate tunnel route office wiki.example.com" in result.stderr
    routed = ok_json("tunnel", "route", "office", "wiki.example.com", "-c", c)
    assert routed == {"name": "office", "routes": ["wiki.example.com"], "changed": True}
    again = ok_json("tunnel", "route", "office", "WIKI.example.com", "-c", c)
    assert again["changed"] is False
    # one host, one tunnel: lab cannot take office's host
    message = user_error("tunnel", "route", "lab", "wiki.example.com", "-c", c)
    assert "already routed to tunnel 'office'" in message
    assert "unknown tunnel 'nope'" in user_error(
        "tunnel", "route", "nope", "x.example.com", "-c", c
    )
    assert "HOST" in user_error("tunnel", "route", "office", "bad host!", "-c", c)
    # now the file is consistent with the store's routes and applies
    apps.write_text(
        config.read_text() + APPS + "tunnels:\n  - {name: office, routes: [wiki.example.com]}\n"
        "  - {name: lab, routes: [lab.example.com]}\n"
    )
    ok("apply", "-c", str(apps))
    # delete is refused while an application uses the tunnel, naming it
    message = user_error("tunnel", "delete", "office", "-c", c)
    assert "used by application 'wiki'" in message
    deleted = ok_json("tunnel", "delete", "lab", "-c", c)
    assert deleted == {"name": "lab", "deleted_object": True, "deleted_credential": True}
    creds = store_of(config)(lambda s: s.tunnel_credentials())
    assert [c.name for c in creds] == ["office"]
    assert "unknown tunnel 'lab'" in user_error("tunnel", "delete", "lab", "-c", c)


def test_token_rotation(config: Path) -> None:
    c = str(config)
    made = ok_json("tunnel", "create", "office", "-c", c)
    message = user_error("tunnel", "token", "office", "-c", c)
    assert "cannot be shown again" in message and "--rotate" in message
    rotated = ok_json("tunnel", "token", "office", "--rotate", "-c", c)
    assert rotated["id"] == made["id"] and rotated["rotated"] is True
    assert decode(rotated["token"]).secret != decode(made["token"]).secret
    [cred] = store_of(config)(lambda s: s.tunnel_credentials())
    assert cred.secret_hash == hash_secret(SecretKind.TUNNEL, decode(rotated["token"]).secret)
    # each token is in the admin log (the same code as the panel and the API), never its secret
    log = [e for e in store_of(config)(lambda s: s.admin_log(10)) if e.kind == "tunnel"]
    assert [(e.action, e.name) for e in log[:2]] == [("credential", "office")] * 2
    assert log[0].actor.startswith("cli:") and log[0].source == "cli"
    assert log[0].before == {"tunnel_id": made["id"]} and rotated["token"] not in repr(log)
    assert "unknown tunnel 'nope'" in user_error("tunnel", "token", "nope", "--rotate", "-c", c)
    # listen.tls: no fingerprint to pin (the connector verifies the chain)
    config.write_text(
        config.read_text().replace(
            "listen: {http: 127.0.0.1:8080, tunnel: 0.0.0.0:7999}",
            "listen: {http: 127.0.0.1:8080, tunnel: 10.1.2.3:7999, tls: {cert: a.pem, key: b.pem}}",
        )
    )
    again = ok_json("tunnel", "token", "office", "--rotate", "-c", c)
    assert again["fingerprint"] is None and again["edges"] == ["10.1.2.3:7999"]
    text = ok("tunnel", "token", "office", "--rotate", "-c", c)
    assert "new connector token" in text and "zgt1_" in text


def test_list_shows_connectors_seen_recently(config: Path) -> None:
    c = str(config)
    assert "No tunnels" in ok("tunnel", "list", "-c", c)
    made = ok_json("tunnel", "create", "office", "--route", "wiki.example.com", "-c", c)
    ok_json("tunnel", "create", "lab", "-c", c)
    now = datetime.now(UTC)

    def row(edge: str, cid: str, connector: str, index: int, seen: datetime) -> TunnelConnection:
        return TunnelConnection(
            edge_id=edge,
            connection_id=cid,
            tunnel="office",
            connector_id=connector,
            version="1.2.3",
            address=f"10.0.0.5:{4000 + index}",
            connection_index=index,
            since=now - timedelta(minutes=5 - index),
            seen_at=seen,
        )

    async def report(store: Store) -> None:
        await store.report_tunnel_connections(
            "edge-a", [row("edge-a", "c1", "conn-1", 0, now), row("edge-a", "c2", "conn-1", 1, now)]
        )
        await store.report_tunnel_connections("edge-b", [row("edge-b", "c3", "conn-1", 2, now)])
        stale = now - timedelta(minutes=2)
        await store.report_tunnel_connections("edge-c", [row("edge-c", "c9", "old", 0, stale)])

    store_of(config)(report)
    listed = ok_json("tunnel", "list", "-c", c)["tunnels"]
    office = next(t for t in listed if t["name"] == "office")
    assert office["id"] == made["id"] and office["routes"] == ["wiki.example.com"]
    assert office["connections"] == 3
    [connector] = office["connectors"]
    assert connector["connector_id"] == "conn-1" and connector["version"] == "1.2.3"
    assert connector["connections"] == 3 and connector["edges"] == 2
    assert connector["addresses"] == ["10.0.0.5"]
    lab = next(t for t in listed if t["name"] == "lab")
    assert lab["connectors"] == [] and lab["connections"] == 0
    table = ok("tunnel", "list", "-c", c)
    assert "conn-1" in table and "no connector" in table and "old" not in table


def test_a_concurrent_change_is_refused(config: Path) -> None:
    ok_json("tunnel", "create", "office", "-c", str(config))

    async def race(store: Store) -> str:
        objects, version = await _object(store, "office")
        tunnels = _tunnel_doc(objects)
        tunnels[0]["routes"] = ["a.example.com"]
        mine = _with_tunnels(objects, tunnels)
        # someone else changes the tunnel in between
        tunnels[0]["routes"] = ["b.example.com"]
        await store.apply(_with_tunnels(objects, tunnels), actor="other", source="test")
        with pytest.raises(UserError) as refused:
            await _apply(store, mine, "office", version)
        return str(refused.value)

    message = store_of(config)(race)
    assert "tunnel 'office' was changed by someone else" in message
