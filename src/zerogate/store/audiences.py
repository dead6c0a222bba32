"""Applications keep their audience (``aud`` of their tokens, the name of their cookie) when
an apply does not name one: the stored object's ``audience`` carries over to the object of the
same name, so an application renamed in the panel or API (which stores the audience it had)
keeps it through the next ``zerogate apply`` of a file that does not list it.

Two applications must never share an audience (a token of one would open the other): the
result is checked after the carry-over, which the file's own validation could not see."""

from __future__ import annotations

from dataclasses import replace

from zerogate.model.objects import default_audience
from zerogate.store.diff import Row
from zerogate.store.errors import StoreError

APPLICATION = "application"


def keep_audiences(stored: list[Row], wanted: list[Row]) -> list[Row]:
    """``wanted`` with each application's stored ``audience`` where it sets none; raises
    ``StoreError`` when two applications would then share one."""
    kept = {
        row.name: row.spec["audience"]
        for row in stored
        if row.kind == APPLICATION and isinstance(row.spec.get("audience"), str)
    }
    result: list[Row] = []
    owners: dict[str, str] = {}
    for row in wanted:
        if row.kind == APPLICATION:
            if "audience" not in row.spec and row.name in kept:
                row = replace(row, spec={**row.spec, "audience": kept[row.name]})
            audience = row.spec.get("audience") or default_audience(row.name)
            other = owners.setdefault(audience[:16], row.name)
            if other != row.name:
                raise StoreError(
                    f"applications {other!r} and {row.name!r} would share the audience "
                    f"{audience!r} (one was renamed and kept it): set another audience on "
                    "one of them"
                )
        result.append(row)
    return result
