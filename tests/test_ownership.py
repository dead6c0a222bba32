"""Who owns an object (issue #16): `zerogate apply` keeps what the panel, the API or a command
made and the file does not list (reported), removes it only with --prune, shows every removal
in its plan, and an application may name a tunnel made with `zerogate tunnel create` — the
README's tunnel steps in either order. Real commands in subprocesses, a real SQLite store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from zerogate.admin.service import Actor, AdminService
from zerogate.store import Store, storage_url
from zerogate.store.diff import Origin
from zg_harness import run_cli as zerogate

SETTINGS = (
    "portal: auth.example.com\nlisten: {http: 127.0.0.1:8080, tunnel: 0.0.0.0:7999}\n"
    "storage: sqlite:///zg.db\n"
)
FILE = """
groups:
  - name: Staff
    include: [{email_domain: [example.com]}]
applications:
  - name: wiki
    domain: wiki.example.com
    origin: http://10.0.0.5:8080
    policies:
      - {name: staff, decision: allow, include: [{group: [Staff]}]}
"""
ON_TUNNEL = """
applications:
  - name: intranet
    domain: intranet.example.com
    tunnel: office
    policies:
      - {name: staff, decision: allow, include: [{email_domain: [example.com]}]}
"""


def ok(*args: str) -> str:
    result = zerogate(*args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def ok_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json"))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text(SETTINGS + FILE)
    return path


def in_store(config: Path, work: Any) -> Any:
    async def run() -> Any:
        store = await Store.open(storage_url("sqlite:///zg.db", base_dir=config.parent))
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def panel_group(config: Path, name: str, origin: Origin = "panel") -> None:
    """A group made as the panel (or API) makes it: through ``AdminService``."""

    async def work(store: Store) -> None:
        spec = {"name": name, "include": [{"email": ["ann@partner.test"]}]}
        await AdminService(store).create(
            "groups", spec, Actor("admin@example.com", "203.0.113.9", origin=origin)
        )

    in_store(config, work)


def names(store_objects: Any, field: str) -> list[str]:
    return [o.name for o in getattr(store_objects, field)]


def test_apply_keeps_and_reports_what_the_panel_made(config: Path) -> None:
    ok("apply", "-c", str(config))
    panel_group(config, "Partners")
    panel_group(config, "Vendors", origin="api")

    plan = ok_json("apply", "-c", str(config), "--dry-run")
    assert plan["changes"] == []
    assert {(k["kind"], k["name"], k["changed_via"]) for k in plan["kept"]} == {
        ("group", "Partners", "panel"),
        ("group", "Vendors", "api"),
    }
    text = ok("apply", "-c", str(config))
    assert "Kept, not in the file: group Partners (panel), group Vendors (api)" in " ".join(
        text.split()
    )
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "groups") == ["Staff", "Partners", "Vendors"]

    # the plan names every removal with where it came from; a dry run writes nothing
    dry = ok("apply", "-c", str(config), "--prune", "--dry-run")
    flat = " ".join(dry.split())
    assert "Removes 2: group Partners (panel), group Vendors (api)" in flat
    assert "nothing was written" in flat
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "groups") == ["Staff", "Partners", "Vendors"]

    pruned = ok_json("apply", "-c", str(config), "--prune")
    assert {(c["action"], c["name"], c["changed_via"]) for c in pruned["changes"]} == {
        ("remove", "Partners", "panel"),
        ("remove", "Vendors", "api"),
    }
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "groups") == ["Staff"]


def test_an_object_the_file_dropped_is_removed_and_shown(config: Path) -> None:
    ok("apply", "-c", str(config))
    config.write_text(
        SETTINGS
        + FILE.replace("[{group: [Staff]}]", "[{email_domain: [example.com]}]").replace(
            "groups:\n  - name: Staff\n    include: [{email_domain: [example.com]}]\n", ""
        )
    )
    text = " ".join(ok("apply", "-c", str(config)).split())
    assert "Removes 1: group Staff (file)" in text
    assert "Kept" not in text
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "groups") == []


def test_a_panel_edit_of_a_file_object_is_overwritten_by_the_next_apply(config: Path) -> None:
    ok("apply", "-c", str(config))

    async def edit(store: Store) -> Any:
        service = AdminService(store)
        item = await service.get("groups", "Staff")
        assert (item.origin, item.managed) == ("file", True)
        spec = {**item.spec, "include": [{"email": ["bob@example.com"]}]}
        actor = Actor("admin@example.com", "203.0.113.9", origin="panel")
        edited = await service.update("groups", "Staff", spec, version=item.version, actor=actor)
        return edited

    edited = in_store(config, edit)
    # still the file's: the panel warns that the next apply overwrites the edit
    assert (edited.origin, edited.managed) == ("panel", True)
    plan = ok_json("apply", "-c", str(config))
    assert [(c["action"], c["name"]) for c in plan["changes"]] == [("change", "Staff")]
    item = in_store(config, lambda s: AdminService(s).get("groups", "Staff"))
    assert (item.origin, item.managed) == ("file", True)
    assert item.spec["include"] == [{"email_domain": ["example.com"]}]


def test_kept_objects_that_no_longer_fit_refuse_the_apply(config: Path) -> None:
    ok("apply", "-c", str(config))

    async def panel_app(store: Store) -> None:
        spec = {
            "name": "crm",
            "domain": "crm.example.com",
            "origin": "http://10.0.0.7:8080",
            "policies": [{"name": "s", "decision": "allow", "include": [{"group": ["Staff"]}]}],
        }
        actor = Actor("a@example.com", None, origin="panel")
        await AdminService(store).create("applications", spec, actor)

    in_store(config, panel_app)
    config.write_text(SETTINGS)  # the file drops the group the panel's application names
    result = zerogate("apply", "-c", str(config))
    assert result.returncode == 2, (result.stdout, result.stderr)
    flat = " ".join(result.stderr.split())
    assert "application 'crm' › policy 's' › include[0].group[0]: unknown group 'Staff'" in flat
    assert "--prune" in flat
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "groups") == ["Staff"]  # nothing written
    # --prune removes the panel's application too, so the file applies
    ok("apply", "-c", str(config), "--prune")
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "applications") == [] and names(objects, "groups") == []


def test_tunnel_made_by_the_cli_first_then_the_file(config: Path) -> None:
    """README order 1: an application with `tunnel: office` in the file, `zerogate tunnel
    create office` (the file's objects are not complete yet: only its settings are used),
    then `zerogate apply`."""
    config.write_text(SETTINGS + ON_TUNNEL)
    early = zerogate("apply", "-c", str(config))
    assert early.returncode == 2 and "unknown tunnel 'office'" in early.stderr
    result = zerogate(
        "tunnel", "create", "office", "--route", "intranet.example.com", "-c", str(config), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["token"].startswith("zgt1_")
    assert result.stderr.count("only its settings are used here") == 1
    text = " ".join(ok("apply", "-c", str(config)).split())
    assert "Kept, not in the file: tunnel office (cli)" in text
    objects, _ = in_store(config, lambda s: s.load())
    assert names(objects, "tunnels") == ["office"]
    assert names(objects, "applications") == ["intranet"]
    creds = in_store(config, lambda s: s.tunnel_credentials())
    assert [c.name for c in creds] == ["office"]  # the connector's token still works
    # and again: nothing to do, still kept
    again = ok_json("apply", "-c", str(config))
    assert again["changes"] == [] and [k["name"] for k in again["kept"]] == ["office"]
    # --prune would remove it, and the file's application with it cannot stand alone
    pruned = zerogate("apply", "-c", str(config), "--prune")
    assert pruned.returncode == 2
    assert "unknown tunnel 'office'" in pruned.stderr


def test_tunnel_in_the_file_first_then_its_token(config: Path) -> None:
    """README order 2: the tunnel in the file's `tunnels:`, then its connector token."""
    config.write_text(
        SETTINGS + ON_TUNNEL + "tunnels:\n  - {name: office, routes: [intranet.example.com]}\n"
    )
    ok("apply", "-c", str(config))
    created = ok_json("tunnel", "create", "office", "-c", str(config))
    assert created["token"].startswith("zgt1_")
    plan = ok_json("apply", "-c", str(config))
    assert plan["changes"] == [] and plan["kept"] == []
    item = in_store(config, lambda s: AdminService(s).get("tunnels", "office"))
    assert item.managed is True


def test_check_agrees_with_apply_on_a_cli_made_tunnel(config: Path) -> None:
    """`zerogate check` accepts the file `apply` accepts: an application on a tunnel made with
    `zerogate tunnel create` is checked together with the stored tunnel; before the store
    exists, the problem is reported with the reason the store was not consulted."""
    config.write_text(SETTINGS + ON_TUNNEL)
    early = zerogate("check", "-c", str(config))
    assert early.returncode == 2 and "unknown tunnel 'office'" in early.stderr
    assert "could not be looked up in the store" in " ".join(early.stderr.split())
    assert "does not exist yet" in early.stderr
    ok("tunnel", "create", "office", "--route", "intranet.example.com", "-c", str(config))
    text = " ".join(ok("check", "-c", str(config)).split())
    assert "is valid" in text and "together with what its store keeps: tunnel office" in text
    assert ok_json("check", "-c", str(config))["with_stored"] == ["tunnel office"]
    ok("apply", "-c", str(config))
    # a file that misspells the tunnel is still refused, with a hint
    config.write_text(SETTINGS + ON_TUNNEL.replace("tunnel: office", "tunnel: ofice"))
    wrong = zerogate("check", "-c", str(config))
    assert wrong.returncode == 2 and "unknown tunnel 'ofice'" in wrong.stderr
    # other problems get no note about the store
    config.write_text(SETTINGS + FILE.replace("origin: http", "origin: gopher"))
    other = zerogate("check", "-c", str(config))
    assert other.returncode == 2 and "could not be looked up" not in other.stderr
