"""The one exception the store raises for anything the user must fix (connection, migration,
stored data), always with a one-line message that says what went wrong and where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StoreError(Exception):
    """The store cannot do what was asked; ``str(error)`` is a one-line message for the user."""


class StaleWrite(StoreError):
    """A write that named the version it was based on found the object at another version:
    somebody else changed (or added, or removed) it in between. Nothing was written."""

    def __init__(self, kind: str, name: str, expected: int | None, actual: int | None) -> None:
        self.kind, self.name, self.expected, self.actual = kind, name, expected, actual
        if not name:  # the whole configuration's version
            super().__init__(
                f"the {kind} was changed by someone else (now version {actual}, not "
                f"{expected}); reload and retry"
            )
            return
        if actual is None:
            now = "it no longer exists"
        elif expected is None:
            now = f"it was created meanwhile (version {actual})"
        else:
            now = f"it is now at version {actual}, not {expected}"
        super().__init__(f"{kind} {name!r} was changed by someone else: {now}; reload and retry")


class KeptInvalid(StoreError):
    """An apply from a file would keep objects it does not list (made through the API, panel
    or a command) that no longer fit the file's objects: an application naming a group the
    file removed, say. ``problems`` (``zerogate.model.loader.Problem``) name object and field;
    nothing was written. Listing the kept objects in the file, changing them, or ``--prune``
    resolves it."""

    def __init__(self, kept: Sequence[Any], problems: Sequence[Any]) -> None:
        self.kept = tuple(kept)
        self.problems = list(problems)
        names = ", ".join(f"{k.kind.replace('_', ' ')} {k.name}" for k in kept)
        super().__init__(
            f"the file's objects do not fit the objects it keeps ({names}): list or change "
            "those in the file, or remove them with --prune"
        )
