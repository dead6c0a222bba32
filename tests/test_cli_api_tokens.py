"""`zerogate api-token create/list/revoke` as a user runs them: the real command in a
subprocess against a SQLite store in tmp_path; the store is read directly to check what the
commands wrote (a hash, never the token) and that the token works with the admin service."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zerogate.admin.service import AdminService
from zerogate.store import Store, storage_url
from zg_harness import run_cli as zerogate


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text("storage: sqlite:///zg.db\n")
    return path


def ok_json(*args: str) -> Any:
    result = zerogate(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def user_error(*args: str) -> str:
    result = zerogate(*args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def _in_store(config: Path, text: str) -> tuple[Any, Any, list[Any]]:
    store = await Store.open(storage_url("sqlite:///zg.db", base_dir=config.parent))
    try:
        service = AdminService(store)
        return (
            await service.verify_api_token(text),
            await store.api_tokens(),
            (await store.admin_log(10)),
        )
    finally:
        await store.close()


def test_create_list_revoke(config: Path) -> None:
    made = ok_json("api-token", "create", "deploy", "-c", str(config), "--expires", "30d")
    text = made["token"]
    assert text.startswith("zga_") and made["read_only"] is False
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)

    verified, stored, log = asyncio.run(_in_store(config, text))
    assert verified is not None and verified.name == "deploy"
    assert text not in stored[0].secret_hash and text.split("_", 2)[2] not in stored[0].secret_hash
    assert log[0].action == "add" and log[0].kind == "api_token"
    assert log[0].actor.startswith("cli:") and log[0].source == "cli"

    listed = ok_json("api-token", "list", "-c", str(config))
    assert [t["name"] for t in listed["api_tokens"]] == ["deploy"]
    assert "token" not in listed["api_tokens"][0]
    assert listed["api_tokens"][0]["created_by"].startswith("cli:")

    assert "already exists" in user_error("api-token", "create", "deploy", "-c", str(config))
    assert ok_json("api-token", "revoke", "deploy", "-c", str(config)) == {
        "name": "deploy",
        "revoked": True,
    }
    verified, stored, _ = asyncio.run(_in_store(config, text))
    assert verified is None and stored == []
    assert "no API token named 'deploy'" in user_error(
        "api-token", "revoke", "deploy", "-c", str(config)
    )


def test_read_only_text_output_and_user_errors(config: Path) -> None:
    result = zerogate("api-token", "create", "reader", "--read-only", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "read-only" in result.stdout and "Authorization: Bearer zga_" in result.stdout
    assert "expires:  never" in result.stdout
    table = zerogate("api-token", "list", "-c", str(config))
    assert "reader" in table.stdout and "read-only" in table.stdout and "zga_" not in table.stdout
    assert user_error(
        "api-token", "create", "x", "--expires", "soon", "-c", str(config)
    ).startswith("error: expires:")
    assert "name" in user_error("api-token", "create", " ", "-c", str(config))
