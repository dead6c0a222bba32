"""What every ``zerogate`` command shares: the two consoles (data on stdout, messages on
stderr), the ``--config`` / ``--json`` options, user errors (exit 2) and store failures (exit
1), loading a configuration file, opening the store, the admin-log actor, times for people and
for JSON, and the checks and messages the credential commands (service tokens, tunnels) share.

The command modules import this one; ``cli/main.py`` imports them and registers their commands.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from zerogate.model import ConfigError, Loaded, Problem, load_file

if TYPE_CHECKING:
    from zerogate.model.objects import ConfigFile, Objects, ServiceToken, Tunnel
    from zerogate.store import Store


def _pipe_width() -> int | None:
    """Into a pipe or file (and no ``COLUMNS``): tables as wide as their content, one line per
    row, so ``grep`` and ``cut`` see whole rows; a terminal gets its own width."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return 1000


out = Console(highlight=False, soft_wrap=True, width=_pipe_width())
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")

ConfigOption = Annotated[
    Path, typer.Option("-c", "--config", help="The configuration file (YAML).", show_default=False)
]
OptionalConfig = Annotated[
    Path | None,
    typer.Option("-c", "--config", help="The configuration file; its `storage` is used."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class UserError(Exception):
    """A problem the user can fix; printed as one line per message, exit code 2."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages)
        super().__init__("; ".join(messages))


def fail(*messages: str, code: int = 2) -> NoReturn:
    for message in messages:
        err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def _problem_text(problem: Problem | str) -> str:
    return str(problem).replace("[", "\\[")


def load_config(path: Path, *, kept: dict[str, Any] | None = None) -> Loaded:
    """Load and validate a file (whose objects may name those of ``kept``, see
    ``model.loader.validate_data``); exits 2 with every problem on stderr when invalid."""
    try:
        loaded = load_file(path, kept=kept)
    except ConfigError as exc:
        report_config_error(path, exc)
    for warning in loaded.warnings:
        err.print(f"[yellow]warning:[/yellow] {_problem_text(warning)}")
    return loaded


_NOTED: set[Path] = set()


def load_settings(path: Path) -> ConfigFile:
    """The file, for a command that uses only its settings (which store, which addresses) and
    applies none of its objects: a file whose objects name ones it does not list — an
    application on a tunnel `zerogate tunnel create` is about to make — still gives them,
    with a note on stderr. Any other problem exits 2 as ``load_config``."""
    from zerogate.model.loader import load_unchecked

    try:
        loaded = load_file(path)
    except ConfigError as exc:
        config = load_unchecked(path)
        if config is None:
            report_config_error(path, exc)
        if path not in _NOTED:  # once, though a command may read the file twice
            _NOTED.add(path)
            n = len(exc.problems)
            err.print(
                f"[yellow]note:[/yellow] {escape(str(path))}'s objects have {n} "
                f"problem{'s' if n != 1 else ''} (`zerogate check`); only its settings are "
                "used here"
            )
        return config
    for warning in loaded.warnings:
        err.print(f"[yellow]warning:[/yellow] {_problem_text(warning)}")
    return loaded.config


def report_config_error(path: Path, exc: ConfigError) -> NoReturn:
    """Every problem of an invalid file on stderr, then exit 2."""
    for line in exc.lines():
        err.print(f"[red]error:[/red] {_problem_text(line)}")
    n = len(exc.problems)
    err.print(f"[red]{path}: {n} problem{'s' if n != 1 else ''}; nothing was applied[/red]")
    raise typer.Exit(2) from None


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run an async part, turning store failures into a clear message (exit 1)."""
    from zerogate.store import StoreError

    async def main() -> T:
        return await coro()

    try:
        return asyncio.run(main())
    except StoreError as exc:
        fail(str(exc), code=1)
    except UserError as exc:
        fail(*exc.messages)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def store_url(config: ConfigFile | None, path: Path | None) -> str:
    from zerogate.store import storage_url

    setting = config.storage if config is not None else None
    try:
        return storage_url(setting, base_dir=path.parent if path is not None else None)
    except ValueError as exc:
        raise UserError(f"storage: {exc}") from None


def actor() -> str:
    """``cli:<login name>`` for the admin log."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}"


def iso(value: datetime | float | None) -> str | None:
    """A UTC time as ISO 8601 (``2025-01-02T03:04:05Z``) for JSON."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(value: datetime | float | None, *, seconds: bool = True, zone: bool = True) -> str:
    """A UTC time for people: ``2025-01-02 03:04:05 UTC`` (``zone=False`` for a table whose
    header says UTC)."""
    if value is None:
        return "—"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return text + (" UTC" if zone else "")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a ``UserError`` raised outside ``run`` into the message and exit 2."""
    try:
        yield
    except UserError as exc:
        fail(*(escape(message) for message in exc.messages))


def with_store(
    config: Path | None,
    work: Callable[[Store], Awaitable[T]],
    *,
    settings: ConfigFile | None = None,
) -> T:
    """Open the store named by ``config`` (or the default one), run ``work``, close it.
    Store failures exit 1, ``UserError`` exits 2 (both via ``run``). ``settings``: the file,
    when the caller has loaded it already."""
    if settings is None and config is not None:
        settings = load_settings(config)

    async def go() -> T:
        from zerogate.store import Store

        store = await Store.open(store_url(settings, config))
        try:
            return await work(store)
        except UserError as exc:  # messages hold names the user typed: no rich markup
            raise UserError(*(escape(message) for message in exc.messages)) from None
        finally:
            await store.close()

    return run(go)


def check_name(kind: type[ServiceToken] | type[Tunnel], name: str) -> str:
    """``name`` as an object of ``kind`` takes it; a ``UserError`` about NAME when it can't."""
    from pydantic import ValidationError

    try:
        return kind(name=name).name
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise UserError(f"NAME {name!r}: {message}") from None


def with_objects(objects: Objects, key: str, items: list[dict[str, Any]]) -> Objects:
    """``objects`` with its list ``key`` (``service_tokens``, ``tunnels``) replaced by
    ``items``, validated like a file (references too)."""
    from zerogate.model import ConfigError
    from zerogate.model.dump import objects_document
    from zerogate.model.loader import validate_objects

    document = objects_document(objects)
    document[key] = items
    try:
        return validate_objects(document)
    except ConfigError as exc:
        raise UserError(*(str(problem) for problem in exc.problems)) from None


def show_deleted(
    what: str,
    name: str,
    deleted: tuple[bool, bool],
    as_json: bool,
    *,
    revoked: str,
    missing: str,
) -> None:
    """What ``delete`` removed: ``deleted`` is (the object, the credential). ``revoked`` says
    what stopped working with the credential, ``missing`` what an object added back by
    ``apply`` lacks."""
    had_object, had_credential = deleted
    if as_json:
        print_json(
            {"name": name, "deleted_object": had_object, "deleted_credential": had_credential}
        )
        return
    out.print(f"[green]{what} {escape(name)} deleted.[/green]")
    if had_credential:
        out.print(revoked)
    if had_object:
        out.print(
            "If a configuration file lists it, remove it there too, or the next "
            f"`zerogate apply` adds it back (without {missing})."
        )
