"""Read a configuration document and report every problem as "object › field (line N): why".

``load_text`` / ``load_file`` parse YAML (ruamel.yaml keeps line numbers), validate each object
(pydantic) and then the references between objects. Nothing is returned unless everything is
valid, so a caller can never apply half a file. ``load_file`` is the only function here that
touches the file system.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from zerogate.model.objects import SELECTORS, ConfigFile, Objects, all_field_names
from zerogate.model.references import Issue, Loc, check_objects
from zerogate.model.safe_yaml import QUOTE_CHARS, YamlProblem, parse, plain, read_text, shorten

#: longest object path and message of one problem (a quoted value is cut much shorter)
PROBLEM_CHARS = 500
#: problems listed in an error message (a hostile file can make thousands)
MAX_PROBLEMS_SHOWN = 50

_KINDS = {
    "identity_providers": "identity provider",
    "groups": "group",
    "applications": "application",
    "tunnels": "tunnel",
    "service_tokens": "service token",
    "policies": "policy",
}


@dataclass(frozen=True)
class Problem:
    """One formatted problem: ``where`` names the object and field, ``line`` is 1-based."""

    where: str
    message: str
    line: int | None = None
    source: str | None = None
    warning: bool = False

    def __str__(self) -> str:
        prefix = ""
        if self.source and self.line:
            prefix = f"{self.source}:{self.line}: "
        elif self.source:
            prefix = f"{self.source}: "
        elif self.line:
            prefix = f"line {self.line}: "
        where = f"{shorten(self.where, PROBLEM_CHARS)}: " if self.where else ""
        return f"{prefix}{where}{shorten(self.message, PROBLEM_CHARS)}"


class ConfigError(Exception):
    """The document is invalid; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self, limit: int = MAX_PROBLEMS_SHOWN) -> list[str]:
        """One line per problem, at most ``limit`` of them and then how many more there are."""
        lines = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"... and {len(self.problems) - limit} more problems")
        return lines


@dataclass(frozen=True)
class Loaded:
    config: ConfigFile
    warnings: list[Problem] = field(default_factory=list)
    source: str | None = None


def line_of(doc: Any, loc: Loc) -> int | None:
    """The 1-based line of the deepest node of ``loc`` found in the ruamel document."""
    line: int | None = None
    node = doc
    for part in loc:
        if isinstance(node, CommentedMap) and isinstance(part, str) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        elif isinstance(node, (dict, list)):
            continue  # a tag or validator name pydantic put in the location
        else:
            break
    return line


def describe(loc: Loc, data: Any) -> str:
    """``("applications", 0, "policies", 1, "include", 0, "ip", 2)`` →
    ``application 'wiki' › policy 'office' › include[0].ip[2]``."""
    names: list[str] = []
    rest: list[str] = []
    node = data
    i = 0
    parts = list(loc)
    while i < len(parts):
        part = parts[i]
        if (
            isinstance(part, str)
            and part in _KINDS
            and i + 1 < len(parts)
            and isinstance(parts[i + 1], int)
            and not rest
            and isinstance(node, dict)
            and isinstance(node.get(part), list)
            and int(parts[i + 1]) < len(node[part])
            and isinstance(node[part][int(parts[i + 1])], dict)
        ):
            index = int(parts[i + 1])
            item = node.get(part, []) if isinstance(node, dict) else []
            obj = item[index] if isinstance(item, list) and index < len(item) else None
            name = obj.get("name") if isinstance(obj, dict) else None
            kind = _KINDS[part]
            names.append(f"{kind} {name!r}" if isinstance(name, str) else f"{kind} #{index + 1}")
            node = obj
            i += 2
            continue
        if isinstance(part, int):
            if rest:
                rest[-1] += f"[{part}]"
            else:
                rest.append(f"[{part}]")
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            rest.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
        i += 1
    text = " › ".join(names)
    if rest:
        field_path = ".".join(rest).replace(".[", "[")
        text = f"{text} › {field_path}" if text else field_path
    return text


_KNOWN = all_field_names()


def _message(err: dict[str, Any]) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        in_rule = any(part in ("include", "require", "exclude") for part in loc[:-1])
        candidates = SELECTORS if in_rule else sorted(_KNOWN - {key})
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown key {key!r}{hint}"
    if kind == "missing":
        return "this key is required"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        return f"type {ctx.get('tag')!r} is not supported (expected: {ctx.get('expected_tags')})"
    if kind == "union_tag_not_found":
        return "missing key 'type' (onetimepin or oidc)"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    value = err.get("input")
    if isinstance(value, str) and len(value) > QUOTE_CHARS:  # a checker quoted it whole
        msg = msg.replace(repr(value), repr(shorten(value)))
    if kind not in ("value_error", "assertion_error"):
        value = err.get("input")
        if isinstance(value, str):
            msg = f"{shorten(value)!r}: {msg[0].lower()}{msg[1:]}"
        elif isinstance(value, (int, float, bool)):
            msg = f"{shorten(repr(value))}: {msg[0].lower()}{msg[1:]}"
    return msg


def _strip_loc(loc: tuple[Any, ...], data: Any) -> Loc:
    """Drop the parts of a pydantic location that are not keys of the document."""
    out: list[str | int] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict):
            if part in node:
                out.append(part)
                node = node[part]
            elif (
                index == len(loc) - 1
                and isinstance(part, str)
                and not part.startswith(("function-", "tagged-union"))
            ):
                out.append(part)  # an unknown or missing key: name it
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            out.append(part)
            node = node[part]
    return tuple(out)


def _problems(
    issues: list[Issue],
    data: Any,
    doc: Any,
    source: str | None,
    kept: frozenset[Loc] = frozenset(),
) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for issue in issues:
        in_store = tuple(issue.loc[:2]) in kept
        where = describe(issue.loc, data)
        problem = Problem(
            where=f"{where} (kept in the store, not in the file)" if in_store else where,
            message=issue.message,
            line=line_of(doc, issue.loc) if doc is not None and not in_store else None,
            source=source,
            warning=issue.warning,
        )
        (warnings if issue.warning else errors).append(problem)
    return errors, warnings


#: the object lists of a configuration document
_OBJECT_KEYS = ("identity_providers", "groups", "applications", "tunnels", "service_tokens")


def with_kept(data: dict[str, Any], kept: dict[str, Any]) -> tuple[dict[str, Any], frozenset[Loc]]:
    """``data`` with the objects of ``kept`` (a document of objects the store keeps next to the
    file's) appended to their lists, and the locations of the appended ones."""
    merged = dict(data)
    extra: set[Loc] = set()
    for key in _OBJECT_KEYS:
        items = kept.get(key) or []
        if not items:
            continue
        own = merged.get(key)
        own = list(own) if isinstance(own, list) else []
        names = {o.get("name") for o in own if isinstance(o, dict)}
        for item in items:
            if item.get("name") not in names:
                extra.add((key, len(own)))
                own.append(item)
        merged[key] = own
    if kept.get("admins") and not data.get("admins"):
        merged["admins"] = list(kept["admins"])
    return merged, frozenset(extra)


def validate_data(
    data: Any, *, doc: Any = None, source: str | None = None, kept: dict[str, Any] | None = None
) -> Loaded:
    """Validate a plain document (already parsed); raises ``ConfigError`` with every problem.

    ``kept``: a document of objects the store keeps next to the file's (``zerogate apply``
    without ``--prune``), which the file's objects may name (an application on a tunnel made
    with ``zerogate tunnel create``); a problem in one of them says so instead of naming a
    line. The result holds the file's objects only."""
    if data is None:
        data = {}
    if kept and isinstance(data, dict):
        merged, extra = with_kept(data, kept)
        whole = _validate(merged, doc, source, extra)
        try:
            config = ConfigFile.model_validate(data)
        except ValidationError as exc:  # pragma: no cover - the merged document passed
            raise ConfigError([Problem("", str(exc), None, source)]) from None
        return Loaded(config, whole.warnings, source)
    return _validate(data, doc, source, frozenset())


def _validate(data: Any, doc: Any, source: str | None, kept: frozenset[Loc]) -> Loaded:
    if not isinstance(data, dict):
        raise ConfigError(
            [
                Problem(
                    "",
                    "the configuration must be a mapping of keys (portal, groups, ...)",
                    1 if doc is not None else None,
                    source,
                )
            ]
        )
    try:
        config = ConfigFile.model_validate(data)
    except ValidationError as exc:
        issues = [
            Issue(_strip_loc(tuple(err["loc"]), data), _message(dict(err))) for err in exc.errors()
        ]
        errors, _ = _problems(issues, data, doc, source, kept)
        raise ConfigError(errors) from None
    errors, warnings = _problems(check_objects(config), data, doc, source, kept)
    if errors:
        raise ConfigError(errors)
    return Loaded(config, warnings, source)


def load_unchecked(path: str | Path) -> ConfigFile | None:
    """The file's configuration when it parses and each object is well-formed, without the
    checks across objects (references); ``None`` otherwise. Only to find the store whose kept
    objects a file's references may name (``zerogate apply``); never to apply."""
    try:
        data = plain(parse(read_text(Path(path))))
        return ConfigFile.model_validate(data or {})
    except (YamlProblem, ValidationError, ValueError, TypeError):
        return None


def validate_objects(data: Any, *, source: str | None = None) -> Objects:
    """Validate a document holding only objects (from the store or the API)."""
    loaded = validate_data(data, source=source)
    return loaded.config.objects()


def load_text(
    text: str, source: str | None = None, *, kept: dict[str, Any] | None = None
) -> Loaded:
    """Parse and validate YAML text (bounded: see ``safe_yaml``); ``kept``: see
    ``validate_data``."""
    try:
        doc = parse(text)
    except YamlProblem as exc:
        raise ConfigError([Problem("", exc.message, exc.line, source)]) from None
    return validate_data(plain(doc), doc=doc, source=source, kept=kept)


def load_file(path: str | Path, *, kept: dict[str, Any] | None = None) -> Loaded:
    """Read, parse and validate a configuration file (at most ``safe_yaml.MAX_FILE_BYTES``);
    ``kept``: see ``validate_data``."""
    p = Path(path)
    try:
        text = read_text(p)
    except YamlProblem as exc:
        raise ConfigError([Problem("", exc.message, None, str(p))]) from None
    return load_text(text, source=str(p), kept=kept)
