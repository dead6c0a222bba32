"""Objects as stored rows, and the plan between two sets of rows. Pure functions, no I/O.

Each configured object becomes one ``Row``: its kind, name, position among the objects of its
kind, and its spec (the model dumped as JSON with the YAML key names). The ``admins`` list is
one row of kind ``admins`` (absent when the list is empty). Specs are compared in a canonical
JSON form (sorted keys), so applying the same objects twice gives an empty plan.
"""

from __future__ import annotations

import bisect
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


@dataclass(frozen=True)
class Change:
    """One object added, changed or removed. For ``change``, ``fields`` names the top-level
    keys whose value changed, sorted (``"position"`` when the object moved in its list)."""

    kind: str
    name: str
    action: Literal["add", "change", "remove"]
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What ``apply`` does (or did): the changes and the configuration version around them."""

    changes: tuple[Change, ...]
    version_before: int
    version_after: int

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

    @property
    def text(self) -> str:
        return canonical(self.spec)


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
        changes.extend(Change(kind, r.name, "remove") for r in old if r.name not in new_names)
    return tuple(changes)
