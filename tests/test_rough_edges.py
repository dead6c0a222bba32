"""Small things a new admin or user meets (issue #16, "rough edges"): words that blame the
right thing, and names people understand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from zerogate.edge.pipeline import network_only
from zerogate.model.objects import ADMIN_APPLICATION, Objects, default_audience
from zerogate.policy import Context, Identity, compile_snapshot
from zerogate.portal.handlers import shown_name


def test_the_block_page_blames_the_network_only_when_the_network_decided() -> None:
    snap = compile_snapshot(
        Objects.model_validate(
            {
                "applications": [
                    {
                        "name": "wiki",
                        "domain": "wiki.example.test",
                        "origin": "http://127.0.0.1:9",
                        "policies": [
                            {
                                "name": "embargo",
                                "decision": "block",
                                "include": [{"ip": ["198.51.100.0/24"]}],
                            },
                            {
                                "name": "contractors",
                                "decision": "block",
                                "include": [{"email_domain": ["contractor.test"]}],
                            },
                            {
                                "name": "staff",
                                "decision": "allow",
                                "include": [{"email_domain": ["example.test"]}],
                            },
                        ],
                    }
                ]
            }
        )
    )
    app = snap.apps["wiki"]

    def blocked_by(email: str, ip: str) -> str | None:
        verdict = snap.decide(app, Identity.of(email, "otp", (), ()), Context(ip=ip))
        assert verdict.decision == "block"
        return verdict.policy

    assert network_only(app, blocked_by("ann@example.test", "198.51.100.7"))
    assert not network_only(app, blocked_by("bob@contractor.test", "192.0.2.1"))
    assert not network_only(app, blocked_by("eve@elsewhere.test", "192.0.2.1"))  # default deny


def test_the_admin_application_is_named_for_people() -> None:
    assert shown_name(ADMIN_APPLICATION) == "the zerogate admin panel"
    assert shown_name("wiki") == "wiki"


def test_server_help_describes_what_runs() -> None:
    from typer.testing import CliRunner

    from zerogate.cli.main import app

    text = CliRunner().invoke(app, ["server", "--help"], env={"COLUMNS": "200"}).output
    assert "(later)" not in text
    for part in ("admin panel", "tunnel listener", "--config", "required", "--workers"):
        assert part in text, part


LONG = "a-very-long-application-name-that-would-fold-at-eighty-columns"


def _cli(tmp_path: Path, *args: str, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    result = subprocess.run(
        [sys.executable, "-m", "zerogate", *args, "-c", str(tmp_path / "z.yaml")],
        capture_output=True,
        text=True,
        env={**env, "NO_COLOR": "1"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_tables_keep_rows_whole_in_pipes_and_fit_80_columns(tmp_path: Path) -> None:
    (tmp_path / "z.yaml").write_text(
        "storage: sqlite:///s.db\napplications:\n"
        f"  - {{name: {LONG}, domain: wiki.example.com/a/long/path/prefix, "
        'origin: "http://10.0.0.5:8080", policies: '
        "[{name: p, decision: allow, include: [{email_domain: [example.com]}]}]}\n"
    )
    _cli(tmp_path, "apply", columns=None)
    piped = _cli(tmp_path, "app", "list", columns=None)
    (row,) = [line for line in piped.splitlines() if LONG in line]
    assert "wiki.example.com/a/long/path/prefix" in row, "one whole row per line in a pipe"
    narrow = _cli(tmp_path, "app", "list", columns="80")
    assert all(len(line) <= 80 for line in narrow.splitlines())
    assert default_audience(LONG) in narrow, "the audience is never folded"


def test_certs_list_fits_80_columns_and_keeps_rows_whole_in_pipes(tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    from zerogate.store import AccessEvent, Store, storage_url
    from zerogate.store.certificates import StoredCertificate

    host = "a-rather-long-application-hostname.internal.example.com"
    error = "urn:ietf:params:acme:error:connection: " + "the CA could not reach the host " * 3

    async def seed() -> None:
        store = await Store.open(storage_url("sqlite:///s.db", base_dir=tmp_path))
        now = datetime.now(UTC)
        try:
            await store.put_certificate(
                StoredCertificate(host, "-", "-", now, now + timedelta(days=90), "Pebble CA", now)
            )
            failure = AccessEvent(
                at=now + timedelta(seconds=1),
                kind="tls",
                app=None,
                email=None,
                idp=None,
                ip=None,
                country=None,
                decision="failed",
                policy=None,
                host=host,
                detail=error,
            )
            await store.write_access([failure])
        finally:
            await store.close()

    (tmp_path / "z.yaml").write_text("storage: sqlite:///s.db\n")
    asyncio.run(seed())
    piped = _cli(tmp_path, "certs", "list", columns=None)
    (row,) = [line for line in piped.splitlines() if host in line]
    assert "valid" in row and "Pebble CA" in row and error.strip() in row
    narrow = _cli(tmp_path, "certs", "list", columns="80")
    assert all(len(line) <= 80 for line in narrow.splitlines()), narrow
    assert "valid" in narrow
