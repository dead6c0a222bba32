"""Turn the user-facing ``storage`` setting into the SQLAlchemy async URL the store opens.

Owns the rules for where a store lives: SQLite in the data directory by default, a relative
``sqlite:///`` path relative to the configuration file's folder, PostgreSQL by URL (asyncpg).
"""

from __future__ import annotations

import os
import pathlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import platformdirs

from zerogate.store.secretbox import make_private_dir

DATA_DIR_ENV = "ZEROGATE_DATA_DIR"
DB_FILE = "zerogate.db"

_SQLITE = "sqlite+aiosqlite"
_POSTGRES = "postgresql+asyncpg"
_EXAMPLES = "use sqlite:///path/to/zerogate.db or postgresql://user@host:5432/dbname"


def data_dir() -> pathlib.Path:
    """``$ZEROGATE_DATA_DIR``, else the platform's per-user data directory for zerogate."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return pathlib.Path(configured).expanduser()
    return pathlib.Path(platformdirs.user_data_dir("zerogate"))


def _redact(setting: str) -> str:
    """The setting with any password replaced, safe for an error message."""
    try:
        parts = urlsplit(setting)
    except ValueError:
        return setting
    if parts.password is None:
        return setting
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _sqlite_url(setting: str, rest: str, base_dir: pathlib.Path | None) -> str:
    """``rest`` is what follows ``sqlite:``; returns the aiosqlite URL with an absolute path."""
    if not rest.startswith("//"):
        raise ValueError(
            f"storage: {setting!r} is not a SQLite URL; write sqlite:///relative/path.db "
            "or sqlite:////absolute/path.db"
        )
    authority_and_path = rest[2:]
    authority, slash, path = authority_and_path.partition("/")
    if authority:
        raise ValueError(
            f"storage: {setting!r} has a host part; a SQLite URL has three slashes "
            "(sqlite:///relative.db) or four (sqlite:////absolute.db)"
        )
    path, question, query = path.partition("?")
    if not slash or path in ("", ":memory:"):
        return f"{_SQLITE}:///:memory:" + (question + query)
    if path.startswith("file:"):
        return f"{_SQLITE}:///{path}" + (question + query)  # an SQLite URI filename, as given
    file = pathlib.Path(path).expanduser()
    if not file.is_absolute():
        file = (base_dir if base_dir is not None else pathlib.Path.cwd()) / file
    return f"{_SQLITE}:///{file.absolute()}" + (question + query)


def _postgres_url(setting: str, rest: str) -> str:
    """``rest`` is what follows the scheme's colon; returns the asyncpg URL."""
    parts = urlsplit("postgresql:" + rest)
    if not parts.netloc and not parts.path.strip("/"):
        raise ValueError(
            f"storage: {_redact(setting)!r} names no server or database; "
            "write postgresql://user@host:5432/dbname"
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    # libpq spells it sslmode, asyncpg ssl (same values: disable, require, verify-full, ...)
    query = [("ssl" if key == "sslmode" else key, value) for key, value in query]
    return urlunsplit(parts._replace(scheme=_POSTGRES, query=urlencode(query)))


def storage_url(setting: str | None, *, base_dir: pathlib.Path | None = None) -> str:
    """The SQLAlchemy async URL for a ``storage`` setting.

    ``None`` means ``zerogate.db`` in the data directory (created here, mode 0700).
    ``sqlite:///rel.db`` is relative to ``base_dir`` (the configuration file's folder) when
    given, else to the current directory; ``sqlite:////abs.db`` is absolute;
    ``sqlite:///:memory:`` is a private in-memory store. ``postgresql://`` and ``postgres://``
    URLs use asyncpg. Anything else: ``ValueError``.
    """
    if setting is None:
        folder = data_dir()
        make_private_dir(folder)
        return f"{_SQLITE}:///{(folder / DB_FILE).absolute()}"
    text = setting.strip()
    if not text:
        raise ValueError(f"storage: the setting is empty; {_EXAMPLES}")
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or "/" in scheme:
        raise ValueError(f"storage: {_redact(text)!r} is not a URL; {_EXAMPLES}")
    if scheme in ("sqlite", _SQLITE):
        return _sqlite_url(text, rest, base_dir)
    if scheme in ("postgresql", "postgres", _POSTGRES):
        return _postgres_url(text, rest)
    if scheme.startswith(("postgresql+", "postgres+", "sqlite+")):
        raise ValueError(
            f"storage: {_redact(text)!r}: the database driver is chosen by zerogate; "
            f"drop the '+{scheme.partition('+')[2]}' part"
        )
    raise ValueError(
        f"storage: {_redact(text)!r}: {scheme!r} databases are not supported; {_EXAMPLES}"
    )
