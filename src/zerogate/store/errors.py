"""The one exception the store raises for anything the user must fix (connection, migration,
stored data), always with a one-line message that says what went wrong and where."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked; ``str(error)`` is a one-line message for the user."""
