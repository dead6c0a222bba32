"""#15 DNS for routes: ``zerogate tunnel route`` and ``apply`` create and remove the route's
records with RFC 2136 updates signed with TSIG, against a real BIND ``named`` started by the
test, checked with real DNS queries (dnspython's resolver against that server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dns.name
import dns.query
import dns.rcode
import dns.resolver
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from bind_harness import Bind
from zg_harness import run_cli

pytestmark = pytest.mark.e2e

SECRET_ENV = "ZG_TEST_DNS_TSIG"


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Bind]:
    server = Bind(tmp_path / "bind").start(extra_records="taken IN A 198.51.100.9")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def secret(bind: Bind, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(SECRET_ENV, bind.secret)
    return bind.secret


def write_config(
    tmp_path: Path, bind: Bind, routes: list[str] | None = None, target: str = ""
) -> Path:
    target = target or 'edge_addresses: [192.0.2.10, "2001:db8::10"]'
    tunnels = (
        "" if routes is None else f"tunnels:\n  - {{name: office, routes: {json.dumps(routes)}}}\n"
    )
    path = tmp_path / "zerogate.yaml"
    path.write_text(
        "storage: sqlite:///zerogate.db\n"
        "dns:\n"
        f"  rfc2136: {{server: '{bind.server}', zone: {bind.zone}, key_name: {bind.key_name},"
        f" key_secret_env: {SECRET_ENV}, algorithm: hmac-sha256, timeout: 5s}}\n"
        f"  {target}\n"
        "  ttl: 120\n" + tunnels
    )
    return path


def lookup(bind: Bind, name: str, kind: str) -> list[str]:
    """The records ``named`` answers for ``name`` (empty: none)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = bind.port
    try:
        answer = resolver.resolve(name, kind, raise_on_no_answer=False, lifetime=5)
    except dns.resolver.NXDOMAIN:
        return []
    if answer.rrset is None or answer.rrset.name.to_text().rstrip(".") != name:
        return []
    return sorted(r.to_text() for r in answer.rrset)


def lose_a_record(bind: Bind, name: str) -> None:
    """Delete ``name``'s A record with a signed update, as another tool might."""
    keyring = dns.tsigkeyring.from_text({bind.key_name: bind.secret})
    update = dns.update.UpdateMessage(bind.zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
    update.delete(dns.name.from_text(name), "A")
    reply = dns.query.tcp(update, "127.0.0.1", port=bind.port, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR


def cli(*args: str) -> tuple[int, str, str]:
    result = run_cli(*args)
    return result.returncode, result.stdout, result.stderr


def stored_routes(config: Path) -> list[str]:
    code, out, err = cli("tunnel", "list", "-c", str(config), "--json")
    assert code == 0, err
    tunnels = json.loads(out)["tunnels"]
    return [r for t in tunnels for r in t["routes"]]


def test_tunnel_route_creates_the_records_idempotently_and_apply_removes_them(
    tmp_path: Path, bind: Bind
) -> None:
    host = "app.example.test"
    config = write_config(tmp_path, bind, routes=[])
    code, _, err = cli("apply", "-c", str(config))
    assert code == 0, err
    assert lookup(bind, host, "A") == []

    code, _, err = cli("tunnel", "route", "office", host, "-c", str(config))
    assert code == 0, err
    assert f"DNS: created {host}" in err
    assert lookup(bind, host, "A") == ["192.0.2.10"]
    assert lookup(bind, host, "AAAA") == ["2001:db8::10"]
    assert lookup(bind, f"_zerogate.{host}", "TXT") == ['"heritage=zerogate,owner=zerogate"']
    assert stored_routes(config) == [host]

    # again: no duplicate, nothing rewritten
    code, out, err = cli("tunnel", "route", "office", host, "-c", str(config), "--json")
    assert code == 0, err
    assert json.loads(out)["dns"]["unchanged"] == [host]
    assert lookup(bind, host, "A") == ["192.0.2.10"]

    # a record deleted behind zerogate's back is made again by a re-run (its marker stays)
    lose_a_record(bind, host)
    assert lookup(bind, host, "A") == []
    config_routes = write_config(tmp_path, bind, routes=[host])
    code, _, err = cli("apply", "-c", str(config_routes))
    assert code == 0, err
    assert f"DNS: updated {host}" in err
    assert lookup(bind, host, "A") == ["192.0.2.10"]

    # the route goes with apply: so do its records and the marker
    write_config(tmp_path, bind, routes=[])
    code, _, err = cli("apply", "-c", str(config))
    assert code == 0, err
    assert f"DNS: deleted the records of {host}" in err
    assert lookup(bind, host, "A") == []
    assert lookup(bind, host, "AAAA") == []
    assert lookup(bind, f"_zerogate.{host}", "TXT") == []
    assert stored_routes(config) == []


def test_apply_adds_a_cname_and_tunnel_delete_removes_it(tmp_path: Path, bind: Bind) -> None:
    host = "wiki.example.test"
    config = write_config(tmp_path, bind, routes=[host], target="edge_cname: edge.example.net")
    code, _, err = cli("apply", "-c", str(config))
    assert code == 0, err
    assert lookup(bind, host, "CNAME") == ["edge.example.net."]
    code, _, err = cli("tunnel", "delete", "office", "-c", str(config))
    assert code == 0, err
    assert lookup(bind, host, "CNAME") == []


def test_a_record_zerogate_did_not_make_is_reported_not_overwritten(
    tmp_path: Path, bind: Bind
) -> None:
    config = write_config(tmp_path, bind, routes=[])
    assert cli("apply", "-c", str(config))[0] == 0
    code, _, err = cli("tunnel", "route", "office", "taken.example.test", "-c", str(config))
    assert code == 2
    assert "taken.example.test: it holds A 198.51.100.9 not made by this zerogate" in err
    assert "nothing was changed" in err
    assert lookup(bind, "taken.example.test", "A") == ["198.51.100.9"]
    assert stored_routes(config) == []  # the route was not stored either


def test_a_wrong_tsig_key_fails_clearly_and_changes_nothing(
    tmp_path: Path, bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, bind, routes=[])
    assert cli("apply", "-c", str(config))[0] == 0
    monkeypatch.setenv(SECRET_ENV, "d3JvbmcgdHNpZyBzZWNyZXQgZm9yIHRoZSB0ZXN0IGtleQ==")
    code, _, err = cli("tunnel", "route", "office", "app.example.test", "-c", str(config))
    assert code == 1, err
    assert f"DNS server {bind.server}: refused the TSIG key {bind.key_name}." in err
    assert "the configuration was not changed" in err
    monkeypatch.setenv(SECRET_ENV, bind.secret)
    assert stored_routes(config) == []
    assert lookup(bind, "app.example.test", "A") == []
    # the same through apply
    monkeypatch.setenv(SECRET_ENV, "d3JvbmcgdHNpZyBzZWNyZXQgZm9yIHRoZSB0ZXN0IGtleQ==")
    write_config(tmp_path, bind, routes=["app.example.test"])
    code, _, err = cli("apply", "-c", str(config))
    assert code == 1 and "refused the TSIG key" in err
    monkeypatch.setenv(SECRET_ENV, bind.secret)
    assert stored_routes(config) == []


def test_a_missing_secret_and_a_bad_target_name_the_setting(
    tmp_path: Path, bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, bind, routes=[])
    monkeypatch.delenv(SECRET_ENV)
    code, _, err = cli("apply", "-c", str(config))
    assert code == 2
    assert f"dns.rfc2136.key_secret_env: the environment variable {SECRET_ENV}" in err
    both = write_config(
        tmp_path, bind, routes=[], target="edge_cname: e.example.net\n  edge_addresses: [192.0.2.1]"
    )
    code, _, err = cli("check", "-c", str(both))
    assert code == 2 and "dns: set exactly one of edge_addresses" in err


async def test_the_admin_service_writes_route_records_and_fails_closed(
    tmp_path: Path, bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin API and panel change routes through ``AdminService``: the same DNS rule."""
    from zerogate.admin.service import Actor, AdminService, DnsFailed
    from zerogate.dns.routes import RouteDns
    from zerogate.model import load_file
    from zerogate.store import Store, storage_url

    settings = load_file(write_config(tmp_path, bind)).config.settings()
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'admin.db'}"))
    try:
        service = AdminService(store, dns=RouteDns.from_settings(settings))
        actor = Actor("ops@example.test", "192.0.2.1")
        await service.create("tunnels", {"name": "office", "routes": ["api.example.test"]}, actor)
        assert lookup(bind, "api.example.test", "A") == ["192.0.2.10"]
        item = await service.get("tunnels", "office")

        monkeypatch.setenv(SECRET_ENV, "d3JvbmcgdHNpZyBzZWNyZXQgZm9yIHRoZSB0ZXN0IGtleQ==")
        wrong = AdminService(store, dns=RouteDns.from_settings(settings))
        with pytest.raises(DnsFailed, match="refused the TSIG key") as failed:
            await wrong.delete("tunnels", "office", version=item.version, actor=actor)
        assert failed.value.status == 502
        assert (await service.get("tunnels", "office")).spec["routes"] == ["api.example.test"]
        assert lookup(bind, "api.example.test", "A") == ["192.0.2.10"]

        await service.delete("tunnels", "office", version=item.version, actor=actor)
        assert lookup(bind, "api.example.test", "A") == []
    finally:
        await store.close()
