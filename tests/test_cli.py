"""The `zerogate` command as a user runs it: a real subprocess, real files, a real store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "zerogate.yaml"

BASE = """
identity_providers:
  - {name: otp, type: onetimepin}
  - name: okta
    type: oidc
    issuer: https://example.okta.com
    client_id: abc
    client_secret_env: OKTA_SECRET
    groups_claim: groups
groups:
  - name: Third-Party Partners
    include: [{email: [alice@partner.test, bob@vendor.test]}]
  - name: Office Networks
    include: [{ip: [203.0.113.0/24, "2001:db8::/48"]}]
  - name: Finance
    include: [{idp_group: [finance]}]
applications:
  - name: wiki
    domain: wiki.example.com
    origin: http://10.0.0.5:8080
    policies:
      - name: staff and partners
        decision: allow
        include: [{email_domain: [example.com]}, {group: [Third-Party Partners]}]
      - {name: health check, decision: bypass, include: [{ip: [10.0.0.0/8]}]}
  - name: wiki admin
    domain: wiki.example.com/admin
    origin: http://10.0.0.5:8080
    policies:
      - name: office only for finance
        decision: allow
        include: [{group: [Finance]}]
        require: [{group: [Office Networks]}]
  - name: ci
    domain: ci.example.com
    origin: http://10.0.0.6:8080
    policies:
      - {name: bots, decision: service_auth, include: [{service_token: [ci-bot]}]}
      - {name: staff, decision: allow, include: [{email_domain: [example.com]}]}
service_tokens:
  - {name: ci-bot, duration: 8760h}
"""


def zerogate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerogate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text(f"storage: sqlite:///store.db\n{BASE}")
    return path


def test_check_valid_file(config: Path) -> None:
    result = zerogate("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout
    assert "3 applications" in result.stdout


def test_check_json(config: Path) -> None:
    result = zerogate("check", "-c", str(config), "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["valid"] is True
    assert data["counts"]["applications"] == 3


def test_example_file_is_valid() -> None:
    result = zerogate("check", "-c", str(EXAMPLE))
    assert result.returncode == 0, result.stderr


def test_check_invalid_file_exit_2_names_object_field_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "groups:\n"
        "  - name: Office\n"
        "    include: [{ip: [10.0.0.300]}]\n"
        "applications:\n"
        "  - name: wiki\n"
        "    domain: wiki.example.com\n"
        "    origin: http://x\n"
        "    policies: [{name: p, decision: allow, include: [{group: [Ofice]}]}]\n"
    )
    result = zerogate("check", "-c", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:3: group 'Office' › include[0].ip[0]: '10.0.0.300'" in result.stderr
    assert "nothing was applied" in result.stderr


def test_check_reference_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "applications:\n"
        "  - name: wiki\n"
        "    domain: wiki.example.com\n"
        "    origin: http://x\n"
        "    policies: [{name: p, decision: allow, include: [{group: [Ofice]}]}]\n"
    )
    result = zerogate("check", "-c", str(bad))
    assert result.returncode == 2
    assert "application 'wiki' › policy 'p' › include[0].group[0]" in result.stderr
    assert "unknown group 'Ofice'" in result.stderr


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    result = zerogate("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the file" in result.stderr
    assert "Traceback" not in result.stderr


def policy_json(config: Path, *args: str) -> dict[str, object]:
    result = zerogate("policy", "test", "-c", str(config), *args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def test_policy_test_allow_by_domain(config: Path) -> None:
    data = policy_json(
        config, "--url", "https://wiki.example.com/page", "--email", "Ann@Example.com"
    )
    assert data["application"] == "wiki"
    assert data["decision"] == "allow"
    assert data["policy"] == "staff and partners"


def test_policy_test_partner_group(config: Path) -> None:
    data = policy_json(config, "--app", "wiki", "--email", "bob@vendor.test")
    assert (data["decision"], data["policy"]) == ("allow", "staff and partners")


def test_policy_test_block_by_default(config: Path) -> None:
    data = policy_json(config, "--app", "wiki", "--email", "eve@evil-example.com")
    assert (data["decision"], data["policy"]) == ("block", None)


def test_policy_test_authenticate_without_identity(config: Path) -> None:
    data = policy_json(config, "--url", "wiki.example.com/", "--ip", "198.51.100.7")
    assert (data["decision"], data["policy"]) == ("authenticate", None)


def test_policy_test_bypass(config: Path) -> None:
    data = policy_json(config, "--url", "https://wiki.example.com/health", "--ip", "10.1.2.3")
    assert (data["decision"], data["policy"]) == ("bypass", "health check")


def test_policy_test_longest_path_and_require(config: Path) -> None:
    common = ["--email", "fin@example.com", "--idp", "okta", "--idp-group", "finance"]
    inside = policy_json(
        config, "--url", "https://wiki.example.com/%61dmin/", "--ip", "203.0.113.9", *common
    )
    assert (inside["application"], inside["decision"]) == ("wiki admin", "allow")
    outside = policy_json(
        config, "--url", "https://wiki.example.com/admin", "--ip", "198.51.100.7", *common
    )
    assert (outside["application"], outside["decision"], outside["policy"]) == (
        "wiki admin",
        "block",
        None,
    )
    # the admin app inherits nothing from the shorter one: staff by domain are not let in there
    staff = policy_json(
        config, "--url", "https://wiki.example.com/admin", "--email", "x@example.com"
    )
    assert staff["decision"] == "block"


def test_policy_test_service_token(config: Path) -> None:
    data = policy_json(config, "--app", "ci", "--service-token", "ci-bot")
    assert (data["decision"], data["policy"]) == ("allow", "bots")


def test_policy_test_unknown_host(config: Path) -> None:
    data = policy_json(config, "--url", "https://nope.example.com/", "--email", "a@example.com")
    assert data["application"] is None
    assert data["decision"] == "block"


def test_policy_test_human_output_explains(config: Path) -> None:
    result = zerogate(
        "policy",
        "test",
        "-c",
        str(config),
        "--url",
        "https://wiki.example.com/admin",
        "--email",
        "fin@example.com",
        "--idp-group",
        "finance",
        "--ip",
        "198.51.100.7",
    )
    assert result.returncode == 0, result.stderr
    assert "BLOCK" in result.stdout
    assert "office only for finance" in result.stdout
    assert "require: group 'Office Networks'" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--app", "wiki", "--url", "https://x/"], "exactly one of --app"),
        (["--app", "nope"], "unknown application 'nope'"),
        (["--app", "wiki", "--ip", "300.0.0.1"], "--ip"),
        (["--app", "wiki", "--email", "not-an-email"], "--email"),
        (["--app", "wiki", "--email", "a@b.cd", "--idp", "nope"], "unknown identity provider"),
        (["--app", "wiki", "--country", "XX"], "--country"),
        (["--app", "wiki", "--service-token", "nope"], "unknown service token"),
        # urlsplit refuses this one: a usage error, not a traceback
        (["--url", "http://[::1", "--email", "a@b.cd"], "--url: 'http://[::1'"),
        (["--url", "https:///nohost"], "has no host"),
    ],
)
def test_policy_test_bad_arguments(config: Path, args: list[str], message: str) -> None:
    result = zerogate("policy", "test", "-c", str(config), *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_policy_test_knows_the_admin_application(tmp_path: Path) -> None:
    """``--app zerogate-admin`` tests the built-in admin application (the ``admins`` list),
    as the admin panel's tester does."""
    path = tmp_path / "admins.yaml"
    path.write_text(f"admins: [ops@example.com]\n{BASE}")
    ops = policy_json(path, "--app", "zerogate-admin", "--email", "ops@example.com")
    assert (ops["application"], ops["decision"], ops["policy"]) == (
        "zerogate-admin",
        "allow",
        "admins",
    )
    eve = policy_json(path, "--app", "zerogate-admin", "--email", "eve@example.com")
    assert (eve["decision"], eve["policy"]) == ("block", None)


def test_policy_test_country_from_geoip(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-Country")
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "DE"}})
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "US"}})
    writer.to_db_file(str(tmp_path / "geo.mmdb"))
    path = tmp_path / "geo.yaml"
    path.write_text(
        "geoip: {database: geo.mmdb}\n"
        "applications:\n"
        "  - name: eu\n"
        "    domain: eu.example.com\n"
        "    origin: http://x\n"
        "    policies:\n"
        "      - {name: germany, decision: allow, include: [{everyone: true}], "
        "require: [{country: [DE]}]}\n"
    )
    de = policy_json(path, "--app", "eu", "--email", "a@b.cd", "--ip", "198.51.100.7")
    assert (de["decision"], de["policy"]) == ("allow", "germany")
    # the API's key names (POST /api/v1/policy-test), for scripts that use both
    assert list(de)[:5] == ["application", "decision", "policy", "reason", "steps"]
    request = de["request"]
    assert isinstance(request, dict) and request["app"] == "eu" and "explanation" not in de
    us = policy_json(path, "--app", "eu", "--email", "a@b.cd", "--ip", "203.0.113.7")
    assert (us["decision"], us["policy"]) == ("block", None)
    mapped = policy_json(path, "--app", "eu", "--email", "a@b.cd", "--ip", "::ffff:198.51.100.7")
    assert mapped["decision"] == "allow"


# ---------------------------------------------------------------- store-backed commands


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apply_dry_run_apply_export_roundtrip(config: Path, tmp_path: Path) -> None:
    dry = zerogate("apply", "-c", str(config), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True
    assert {(c["action"], c["kind"], c["name"]) for c in plan["changes"]} >= {
        ("add", "application", "wiki"),
        ("add", "group", "Office Networks"),
    }
    before = sorted(p.name for p in config.parent.iterdir())
    assert not any(name.startswith("store.db") for name in before), "a dry run creates nothing"

    applied = zerogate("apply", "-c", str(config))
    assert applied.returncode == 0, applied.stderr
    assert "version 0 → 1" in applied.stdout

    again = zerogate("apply", "-c", str(config), "--json")
    assert json.loads(again.stdout)["changes"] == []

    exported = zerogate("export", "-c", str(config))
    assert exported.returncode == 0, exported.stderr
    assert "OKTA_SECRET" in exported.stdout  # the variable's name, never a secret value
    copy = tmp_path / "exported.yaml"
    copy.write_text("storage: sqlite:///store.db\n" + exported.stdout)
    replay = zerogate("apply", "-c", str(copy), "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["changes"] == [], "export → apply must be a no-op"


def test_apply_shows_change_and_removal(config: Path) -> None:
    assert zerogate("apply", "-c", str(config)).returncode == 0
    text = config.read_text().replace("bob@vendor.test", "carol@vendor.test")
    text = text.replace("  - {name: ci-bot, duration: 8760h}\n", "")
    text = text.replace("[{service_token: [ci-bot]}]", "[{any_service_token: true}]")
    config.write_text(text)
    result = zerogate("apply", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    changes = {(c["action"], c["kind"], c["name"]) for c in json.loads(result.stdout)["changes"]}
    assert ("change", "group", "Third-Party Partners") in changes
    assert ("remove", "service_token", "ci-bot") in changes
    assert ("change", "application", "ci") in changes
    data = policy_json(config, "--app", "wiki", "--email", "bob@vendor.test")
    assert data["decision"] == "block"


def test_invalid_file_leaves_store_byte_for_byte_unchanged(config: Path) -> None:
    assert zerogate("apply", "-c", str(config)).returncode == 0
    db = config.parent / "store.db"
    before = sha256(db)
    listing_before = sorted(p.name for p in config.parent.iterdir())
    config.write_text(config.read_text().replace("10.0.0.0/8", "10.0.0.0/33"))
    result = zerogate("apply", "-c", str(config))
    assert result.returncode == 2
    assert "10.0.0.0/33" in result.stderr
    assert sha256(db) == before
    assert sorted(p.name for p in config.parent.iterdir()) == listing_before


def test_export_without_config_uses_data_dir(tmp_path: Path) -> None:
    result = zerogate("export", "--json", env={"ZEROGATE_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == 0


def test_unreachable_postgres_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "pg.yaml"
    path.write_text("storage: postgresql://postgres@127.0.0.1:1/none\n")
    result = zerogate("export", "-c", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
