"""Attack tests for the store's secrets at rest (issue 17, item 1): a local account must not read
the signing keys from the store's files, and with a secrets key a copy of the database (SQLite
file or PostgreSQL dump) holds no usable secret."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import select

import test_store as base
from zerogate.runtime import rotate_keys
from zerogate.store import AdminLogEntry, Store, StoreError, storage_url
from zerogate.store.secretbox import (
    KEY_ENV,
    KEY_FILE_ENV,
    SEALED_PREFIX,
    SecretBox,
    generate_key,
)
from zerogate.store.tables import server_secrets
from zg_harness import run_cli

pg_database = base.pg_database
url = base.url


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The usual umask (files 0644, folders 0755 unless the code asks for less)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _raw_secrets(store: Store) -> dict[str, str]:
    async with store.engine.connect() as connection:
        rows = (
            await connection.execute(select(server_secrets.c.name, server_secrets.c.value))
        ).all()
    return {str(name): str(value) for name, value in rows}


# -- file permissions ----------------------------------------------------------------------------


@pytest.mark.usefixtures("lax_umask")
async def test_new_store_folder_and_files_are_private(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "data" / "deeper" / "zerogate.db"
    store = await Store.open(storage_url(f"sqlite:///{db}"))
    try:
        await store.server_secret()
        await rotate_keys(store)
        await store.named_secret("tunnel_listener", "-----BEGIN PRIVATE KEY-----")
        files = sorted(p.name for p in db.parent.iterdir())
        assert files == ["zerogate.db", "zerogate.db-shm", "zerogate.db-wal"]
        for name in files:
            assert _mode(db.parent / name) == 0o600, name
        assert _mode(db.parent) == 0o700
        assert _mode(db.parent.parent) == 0o700
    finally:
        await store.close()


@pytest.mark.usefixtures("lax_umask")
def test_default_data_directory_is_created_private(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(tmp_path / "zg-data"))
    storage_url(None)
    assert _mode(tmp_path / "zg-data") == 0o700


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
async def test_store_file_readable_by_others_is_refused(
    tmp_path: pathlib.Path, suffix: str
) -> None:
    db = tmp_path / "zerogate.db"
    store = await Store.open(storage_url(f"sqlite:///{db}"))
    await store.server_secret()
    await store.close()
    victim = db.with_name(db.name + suffix)
    victim.touch()
    victim.chmod(0o644)
    with pytest.raises(StoreError, match="readable by other users") as caught:
        await Store.open(storage_url(f"sqlite:///{db}"))
    assert f"chmod 600 {victim}" in str(caught.value)


def test_cli_refuses_a_store_others_can_read(tmp_path: pathlib.Path) -> None:
    """Through the real command: one clear line, exit 1, no traceback."""
    config = tmp_path / "zerogate.yaml"
    config.write_text("storage: sqlite:///zg.db\n")
    (tmp_path / "zg.db").touch()
    (tmp_path / "zg.db").chmod(0o644)
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV)}
    done = subprocess.run(
        [sys.executable, "-m", "zerogate", "keys", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    assert "readable by other users" in done.stderr
    assert "Traceback" not in done.stderr


# -- encryption at rest ----------------------------------------------------------------------------


async def test_secrets_are_sealed_at_rest(url: str) -> None:
    """SQLite and PostgreSQL: the raw rows hold no private key, server secret or listener key."""
    box = SecretBox.from_environment({KEY_ENV: generate_key()})
    store = await Store.open(url, box=box)
    try:
        secret = await store.server_secret()
        keyset = await rotate_keys(store)
        listener_key = "-----BEGIN PRIVATE KEY-----\nlistener\n-----END PRIVATE KEY-----"
        assert await store.named_secret("tunnel_listener", listener_key) == listener_key
        raw = await _raw_secrets(store)
    finally:
        await store.close()
    assert set(raw) == {"server_secret", "keyset", "tunnel_listener"}
    everything = "\n".join(raw.values())
    assert all(value.startswith(SEALED_PREFIX) for value in raw.values())
    assert secret.hex() not in everything
    assert "PRIVATE KEY" not in everything
    for key in keyset:
        assert key.private_key_pem.splitlines()[1] not in everything

    again = await Store.open(url, box=box)
    try:
        assert await again.server_secret() == secret
        doc, _ = await again.keyset()
        assert doc == keyset.to_dict()
        assert await again.named_secret("tunnel_listener", "other") == listener_key
    finally:
        await again.close()


async def test_a_missing_or_wrong_key_is_refused(url: str) -> None:
    box = SecretBox.from_environment({KEY_ENV: generate_key()})
    store = await Store.open(url, box=box)
    await store.server_secret()
    await store.close()
    with pytest.raises(StoreError, match="encrypted, and no key is given"):
        await Store.open(url, box=SecretBox(None))
    with pytest.raises(StoreError, match="not the one the store's secrets were encrypted with"):
        await Store.open(url, box=SecretBox.from_environment({KEY_ENV: generate_key()}))


async def test_a_sealed_row_cannot_be_moved_to_another_name(tmp_path: pathlib.Path) -> None:
    url = storage_url(f"sqlite:///{tmp_path / 'z.db'}")
    box = SecretBox.from_environment({KEY_ENV: generate_key()})
    store = await Store.open(url, box=box)
    try:
        await store.named_secret("a", "alpha")
        sealed = (await _raw_secrets(store))["a"]
        assert box.open("a", sealed) == "alpha"
        with pytest.raises(StoreError, match="does not open the stored secret 'b'"):
            box.open("b", sealed)
    finally:
        await store.close()


async def test_plain_secrets_are_sealed_once_a_key_is_given(tmp_path: pathlib.Path) -> None:
    url = storage_url(f"sqlite:///{tmp_path / 'z.db'}")
    store = await Store.open(url, box=SecretBox(None))
    secret = await store.server_secret()
    assert (await _raw_secrets(store))["server_secret"] == secret.hex()
    await store.close()
    box = SecretBox.from_environment({KEY_ENV: generate_key()})
    store = await Store.open(url, box=box)
    try:
        raw = await _raw_secrets(store)
        assert raw["server_secret"].startswith(SEALED_PREFIX)
        assert await store.server_secret() == secret
    finally:
        await store.close()


async def test_store_open_reads_the_key_from_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "secrets.key"
    key_file.write_text(generate_key() + "\n")
    key_file.chmod(0o600)
    monkeypatch.setenv(KEY_FILE_ENV, str(key_file))
    url = storage_url(f"sqlite:///{tmp_path / 'z.db'}")
    store = await Store.open(url)
    try:
        await store.server_secret()
        assert (await _raw_secrets(store))["server_secret"].startswith(SEALED_PREFIX)
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({KEY_ENV: "too-short"}, "is not a secrets key"),
        ({KEY_ENV: "x", KEY_FILE_ENV: "y"}, "not both"),
        ({KEY_FILE_ENV: "/nonexistent/zerogate.key"}, "cannot read the secrets key file"),
    ],
)
def test_unusable_keys_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        SecretBox.from_environment(environ)


def test_a_key_file_others_can_read_is_refused(tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "secrets.key"
    key_file.write_text(generate_key())
    key_file.chmod(0o644)
    with pytest.raises(StoreError, match="readable by other users"):
        SecretBox.from_environment({KEY_FILE_ENV: str(key_file)})


# -- the command line ------------------------------------------------------------------------------


def test_keys_rotate_writes_an_admin_log_entry(tmp_path: pathlib.Path) -> None:
    """Issue 17 item 6: a signing-key rotation is an admin change like any other."""
    config = tmp_path / "zerogate.yaml"
    config.write_text("storage: sqlite:///store.db\n")
    first = run_cli("keys", "rotate", "--json", "-c", str(config))
    assert first.returncode == 0, first.stderr
    second = run_cli("keys", "rotate", "--json", "-c", str(config))
    assert second.returncode == 0, second.stderr
    kids = [json.loads(done.stdout)["active"] for done in (first, second)]

    async def entries() -> list[AdminLogEntry]:
        store = await Store.open(storage_url("sqlite:///store.db", base_dir=tmp_path))
        try:
            return await store.admin_log()
        finally:
            await store.close()

    logged = [e for e in asyncio.run(entries()) if e.kind == "signing_key"]
    assert [(e.action, e.name) for e in logged] == [("rotate", kids[1]), ("rotate", kids[0])]
    assert logged[0].actor.startswith("cli:") and logged[0].source == "cli"
    assert logged[0].before == {"active": kids[0]}
    assert logged[0].after == {"active": kids[1], "overlap_seconds": 86400}
    assert "PRIVATE" not in json.dumps([e.after for e in logged])


def test_secrets_key_command_writes_a_private_key_file(tmp_path: pathlib.Path) -> None:
    key_file = tmp_path / "secrets.key"
    done = run_cli("keys", "secrets-key", "--out", str(key_file))
    assert done.returncode == 0, done.stderr
    assert _mode(key_file) == 0o600
    assert SecretBox.from_environment({KEY_FILE_ENV: str(key_file)}).encrypting
    again = run_cli("keys", "secrets-key", "--out", str(key_file))
    assert again.returncode == 2 and "exists" in again.stderr
    printed = run_cli("keys", "secrets-key")
    assert SecretBox.from_environment({KEY_ENV: printed.stdout.strip()}).encrypting
