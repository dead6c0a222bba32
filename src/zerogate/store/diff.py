"""Objects as stored rows, and the plan between two sets of rows. Pure functions, no I/O.

Each configured object becomes one ``Row``: its kind, name, position among the objects of its
kind, and its spec (the model dumped as JSON with the YAML key names). The ``admins`` list is
one row of kind ``admins`` (absent when the list is empty). Specs are compared in a canonical
JSON form (sorted keys), so applying the same objects twice gives an empty plan.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from zerogate.model.objects import Objects

ADMINS = "admins"

#: (kind, the ``Objects`` field holding that kind), in the order plans list them
KINDS: tuple[tuple[str, str], ...] = (
    (ADMINS, "admins"),
    ("identity_provider", "identity_providers"),
    ("group", "groups"),
    ("application", "applications"),
    ("tunnel", "tunnels"),
    ("service_token", "service_tokens"),
)
_FIELD_OF = dict(KINDS)

#: the pseudo-field a change lists when an object moved relative to the others of its kind
POSITION = "position"

#: where an object was last added or changed (``objects.origin``)
Origin = Literal["file", "api", "panel", "cli"]
ORIGINS: tuple[str, ...] = ("file", "api", "panel", "cli")


@dataclass(frozen=True)
class Change:
    """One object added, changed or removed. For ``change``, ``fields`` names the top-level
    keys whose value changed, sorted (``"position"`` when the object moved in its list)."""

    kind: str
    name: str
    action: Literal["add", "change", "remove"]
    fields: tuple[str, ...] = ()
    #: for a removal: where the removed object was last changed (not part of equality)
    origin: str | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class Kept:
    """An object an apply from a file left alone although the file does not list it: it was
    made (or last changed) elsewhere and the file never managed it (``--prune`` removes it)."""

    kind: str
    name: str
    origin: str


@dataclass(frozen=True)
class Plan:
    """What ``apply`` does (or did): the changes and the configuration version around them;
    ``kept``: for an apply from a file, the stored objects it does not list and kept."""

    changes: tuple[Change, ...]
    version_before: int
    version_after: int
    kept: tuple[Kept, ...] = ()

    @property
    def removals(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action == "remove")

    @property
    def empty(self) -> bool:
        return not self.changes


def canonical(spec: dict[str, Any]) -> str:
    """The one JSON text for a spec: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Row:
    """One object as the store keeps it."""

    kind: str
    name: str
    position: int
    spec: dict[str, Any]
    #: where it was last changed, and whether the last apply from a file listed it
    origin: str = "file"
    in_file: bool = True

    @property
    def text(self) -> str:
        return canonical(self.spec)


def merge_file(
    stored: Sequence[Row], listed: Sequence[Row], *, prune: bool
) -> tuple[list[Row], tuple[Kept, ...]]:
    """What an apply from a file makes the store hold: the objects the file lists, plus the
    stored objects it does not list that the file never managed (``in_file`` false: made or
    last changed through the API, panel or a command), each kind's kept objects after the
    file's in their stored order; with ``prune``, only the file's. Returns the rows and what
    was kept. A stored object the last file listed and this one does not is removed."""
    names = {(r.kind, r.name) for r in listed}
    kept_rows = [
        r
        for r in sorted(stored, key=lambda r: (r.kind, r.position))
        if (r.kind, r.name) not in names and not r.in_file and not prune
    ]
    if not kept_rows:
        return list(listed), ()
    rows = list(listed)
    kept: list[Kept] = []
    for kind, _ in KINDS:
        start = 1 + max((r.position for r in listed if r.kind == kind), default=-1)
        ours = [r for r in kept_rows if r.kind == kind]
        for offset, row in enumerate(ours):
            rows.append(Row(kind, row.name, start + offset, row.spec, row.origin, False))
            kept.append(Kept(kind, row.name, row.origin))
    return rows, tuple(kept)


def rows_of(objects: Objects) -> list[Row]:
    """The rows for ``objects``; raises ``ValueError`` when two objects of a kind share a name."""
    rows: list[Row] = []
    if objects.admins:
        rows.append(Row(ADMINS, ADMINS, 0, {"admins": list(objects.admins)}))
    for kind, field in KINDS[1:]:
        seen: set[str] = set()
        for position, item in enumerate(getattr(objects, field)):
            if item.name in seen:
                raise ValueError(f"two {field.replace('_', ' ')} are named {item.name!r}")
            seen.add(item.name)
            spec = item.model_dump(mode="json", by_alias=True, exclude_none=True)
            rows.append(Row(kind, item.name, position, spec))
    return rows


def objects_of(rows: Iterable[Row]) -> Objects:
    """Rebuild ``Objects`` from rows (in position order within each kind); raises pydantic's
    ``ValidationError`` when a stored spec is no longer valid."""
    data: dict[str, list[Any]] = {field: [] for _, field in KINDS}
    for row in sorted(rows, key=lambda r: r.position):
        if row.kind == ADMINS:
            data["admins"] = list(row.spec.get("admins", []))
        elif row.kind in _FIELD_OF:
            data[_FIELD_OF[row.kind]].append(row.spec)
        else:
            raise ValueError(f"unknown object kind {row.kind!r} in the store")
    return Objects.model_validate(data)


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
    """The top-level keys whose value differs (present on one side only counts), sorted."""
    keys = set(before) | set(after)
    return tuple(
        sorted(
            key
            for key in keys
            if key not in before
            or key not in after
            or canonical({"v": before[key]}) != canonical({"v": after[key]})
        )
    )


def moved(before: Sequence[str], after: Sequence[str]) -> set[str]:
    """The names (present in both orders) that must move to turn ``before`` into ``after``:
    everything outside a longest run of names that kept their relative order."""
    old_index = {name: index for index, name in enumerate(before)}
    common = [name for name in after if name in old_index]
    indices = [old_index[name] for name in common]
    # longest increasing subsequence of old indices, O(n log n), remembering predecessors
    tails: list[int] = []  # tails[k]: smallest old index ending an increasing run of length k+1
    tail_at: list[int] = []  # position in ``indices`` of that tail
    previous: list[int] = [-1] * len(indices)
    for i, value in enumerate(indices):
        k = bisect.bisect_left(tails, value)
        if k == len(tails):
            tails.append(value)
            tail_at.append(i)
        else:
            tails[k] = value
            tail_at[k] = i
        previous[i] = tail_at[k - 1] if k > 0 else -1
    keep: set[str] = set()
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        keep.add(common[i])
        i = previous[i]
    return set(common) - keep


def diff(stored: Sequence[Row], wanted: Sequence[Row]) -> tuple[Change, ...]:
    """The changes that turn ``stored`` into ``wanted``: per kind, adds and changes in the
    wanted order, then removals in the stored order."""
    changes: list[Change] = []
    for kind, _ in KINDS:
        old = sorted((r for r in stored if r.kind == kind), key=lambda r: r.position)
        new = sorted((r for r in wanted if r.kind == kind), key=lambda r: r.position)
        old_by_name = {r.name: r for r in old}
        new_names = {r.name for r in new}
        moves = moved([r.name for r in old], [r.name for r in new])
        for row in new:
            before = old_by_name.get(row.name)
            if before is None:
                changes.append(Change(kind, row.name, "add"))
                continue
            fields = changed_fields(before.spec, row.spec)
            if row.name in moves:
                fields = tuple(sorted((*fields, POSITION)))
            if fields:
                changes.append(Change(kind, row.name, "change", fields))
        changes.extend(
            Change(kind, r.name, "remove", origin=r.origin) for r in old if r.name not in new_names
        )
    return tuple(changes)
