"""Encryption at rest of the ``server_secrets`` rows (signing keys, server secret, the tunnel
listener's TLS key), and the file permissions of a SQLite store.

The key is 32 random bytes in base64, from ``$ZEROGATE_SECRETS_KEY`` or from the file named by
``$ZEROGATE_SECRETS_KEY_FILE`` (which must not be readable by other users). With a key, every
secret row is AES-256-GCM with a fresh 96-bit nonce and the row's name as associated data (a
sealed value cannot be moved to another row), stored as ``zgenc1:<base64url(nonce ‖ sealed)>``;
the same applies on PostgreSQL, so a database dump holds no usable secret. Without a key the
rows are plain text, as before. ``Store.open`` seals plain rows once a key is given and refuses
to open with a missing or wrong key.
"""

from __future__ import annotations

import base64
import binascii
import os
import pathlib
import secrets
import stat
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from zerogate.store.errors import StoreError

KEY_ENV = "ZEROGATE_SECRETS_KEY"
KEY_FILE_ENV = "ZEROGATE_SECRETS_KEY_FILE"
SEALED_PREFIX = "zgenc1:"
KEY_BYTES = 32
NONCE_BYTES = 12
#: permission bits that let someone other than the owner read or change a private file
OTHERS = stat.S_IRWXG | stat.S_IRWXO

_MAKE_ONE = "make one with `zerogate keys secrets-key --out FILE`"


def generate_key() -> str:
    """A new secrets key as text (base64 of 32 random bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode_key(text: str, where: str) -> bytes:
    value = "".join(text.split())
    padded = value + "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise StoreError(
            f"{where} is not a secrets key: expected {KEY_BYTES} random bytes in base64; "
            + _MAKE_ONE
        )
    return raw


def private_file_problem(path: pathlib.Path, what: str) -> str | None:
    """A message when ``path`` exists and other users may read or change it, else ``None``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read the permissions of {what} {str(path)!r}: {exc.strerror}"
    if mode & OTHERS:
        return (
            f"{what} {str(path)!r} is readable by other users (mode {stat.S_IMODE(mode):04o}) and "
            f"holds secrets; run `chmod 600 {path}` and start again"
        )
    return None


def check_private_file(path: pathlib.Path, what: str) -> None:
    """``StoreError`` when ``path`` exists and other users may read or change it."""
    problem = private_file_problem(path, what)
    if problem is not None:
        raise StoreError(problem)


def make_private_dir(folder: pathlib.Path) -> None:
    """Create ``folder`` and any missing parents with mode 0700 (an existing one is kept)."""
    missing: list[pathlib.Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # whatever the umask


def create_private_file(path: pathlib.Path) -> None:
    """Create an empty file with mode 0600 unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)  # whatever the umask
    os.close(fd)


def write_private_file(path: pathlib.Path, text: str) -> None:
    """Write ``text`` to a new file with mode 0600 (an existing file is refused)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def sqlite_files(database: pathlib.Path) -> list[pathlib.Path]:
    """The database file and the write-ahead-log files SQLite keeps beside it."""
    return [
        database,
        database.with_name(database.name + "-wal"),
        database.with_name(database.name + "-shm"),
    ]


def prepare_sqlite_file(database: pathlib.Path) -> None:
    """Before SQLite opens ``database``: its folder exists (created 0700), no existing store file
    is readable by others (``StoreError``), and a new database file is created 0600 — SQLite
    gives its ``-wal`` and ``-shm`` files the database file's mode."""
    try:
        make_private_dir(database.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {str(database.parent)!r} for the store: {exc.strerror}"
        ) from None
    for path in sqlite_files(database):
        check_private_file(path, "the store file")
    try:
        create_private_file(database)
    except OSError as exc:
        raise StoreError(
            f"cannot create the store file {str(database)!r}: {exc.strerror}"
        ) from None


class SecretBox:
    """Seals and opens the values of ``server_secrets`` rows; without a key it passes values
    through (and refuses sealed ones)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"a secrets key has {KEY_BYTES} bytes")
        self._aead = AESGCM(key) if key is not None else None

    @property
    def encrypting(self) -> bool:
        return self._aead is not None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SecretBox:
        """The box for ``$ZEROGATE_SECRETS_KEY`` or ``$ZEROGATE_SECRETS_KEY_FILE`` (not both);
        a box without a key when neither is set. ``StoreError`` for an unusable key."""
        env = os.environ if environ is None else environ
        text = env.get(KEY_ENV, "")
        file = env.get(KEY_FILE_ENV, "")
        if text and file:
            raise StoreError(f"set either {KEY_ENV} or {KEY_FILE_ENV}, not both")
        if text:
            return cls(_decode_key(text, f"${KEY_ENV}"))
        if not file:
            return cls(None)
        path = pathlib.Path(file).expanduser()
        check_private_file(path, "the secrets key file")
        try:
            content = path.read_text(encoding="ascii")
        except OSError as exc:
            raise StoreError(
                f"cannot read the secrets key file {str(path)!r} (${KEY_FILE_ENV}): {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            content = ""
        return cls(_decode_key(content, f"the secrets key file {str(path)!r}"))

    @staticmethod
    def is_sealed(stored: str) -> bool:
        return stored.startswith(SEALED_PREFIX)

    def seal(self, name: str, value: str) -> str:
        """The text to store for secret ``name`` (``value`` itself without a key)."""
        if self._aead is None:
            return value
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), name.encode("utf-8"))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def open(self, name: str, stored: str) -> str:
        """The value of secret ``name`` from its stored text; ``StoreError`` when it is sealed
        and there is no key or the key is not the one that sealed it."""
        if not self.is_sealed(stored):
            return stored
        if self._aead is None:
            raise StoreError(
                f"the store's secrets are encrypted, and no key is given: set ${KEY_ENV} or "
                f"${KEY_FILE_ENV} to the key they were encrypted with"
            )
        try:
            raw = base64.urlsafe_b64decode(stored[len(SEALED_PREFIX) :].encode("ascii"))
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode("utf-8"))
        except (InvalidTag, binascii.Error, ValueError):
            raise StoreError(
                f"the secrets key does not open the stored secret {name!r}: the key in "
                f"${KEY_ENV} / ${KEY_FILE_ENV} is not the one the store's secrets were "
                "encrypted with (or the row is damaged)"
            ) from None
        return plain.decode("utf-8")
