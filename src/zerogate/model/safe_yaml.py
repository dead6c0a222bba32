"""The one way zerogate reads YAML a user wrote: bounded in size, nesting depth and alias
expansion, so that a small hostile file (a "billion laughs" of nested aliases, a huge anchor
quoted many times, thousands of nested brackets) ends in one clear problem within a second
instead of minutes of work, gigabytes of memory or a ``RecursionError``.

``read_text`` reads a file of at most ``MAX_FILE_BYTES``; ``parse`` first walks the parser's
event stream (which needs no recursion) to measure depth and the size of the document with every
alias expanded, and only then builds the round-trip document (ruamel keeps line numbers);
``plain`` turns it into plain Python values. ``shorten`` keeps a quoted value short in a message.
Problems are ``YamlProblem(message, line)``; callers turn them into their own problem type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    ScalarEvent,
)

#: a configuration file larger than this is refused unread
MAX_FILE_BYTES = 1024 * 1024
#: mappings and lists nested deeper than this are refused
MAX_DEPTH = 64
#: nodes (scalars, mappings, lists) of the document with every alias expanded
MAX_NODES = 200_000
#: characters of scalar text of the document with every alias expanded
MAX_TEXT = 8 * MAX_FILE_BYTES
#: longest value quoted in a problem
QUOTE_CHARS = 80


class YamlProblem(Exception):
    """The text is not YAML zerogate will read; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message, self.line = message, line
        super().__init__(message)


def shorten(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` cut to ``limit`` characters with how much was left out."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} characters)"


def read_text(path: Path) -> str:
    """The file's text; ``YamlProblem`` when it cannot be read, is too large or not UTF-8."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise YamlProblem(f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlProblem(f"the file is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise YamlProblem("the file is not UTF-8 text") from None


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def _line(event: Any) -> int | None:
    mark = getattr(event, "start_mark", None)
    return mark.line + 1 if mark is not None else None


_FLOW = re.compile(r"[\[\]{}'\"#\n]")


def _flow_depth(text: str) -> None:
    """A quick look at ``[``/``{`` nesting before the parser sees it (ruamel's scanner takes
    seconds over thousands of open brackets); quoted text and comments are skipped. Only a
    document nesting more than ``MAX_DEPTH`` brackets (or with that many unbalanced brackets in
    plain text) is refused here."""
    depth = 0
    line = 1
    quote = ""
    comment = False
    for match in _FLOW.finditer(text):
        char = match.group()
        if char == "\n":
            line += 1
            comment = False
            continue
        if comment:
            continue
        if quote:
            if char == quote:
                quote = ""
            continue
        if char in "'\"":
            quote = char
        elif char == "#":
            start = match.start()
            comment = start == 0 or text[start - 1] in " \t\n"
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlProblem(
                    f"the document nests lists and mappings deeper than {MAX_DEPTH} levels", line
                )
        else:
            depth = max(0, depth - 1)


def _measure(text: str) -> None:
    """Walk the events; ``YamlProblem`` when the document is too deep or expands too far."""
    # one frame per open collection: [anchor, nodes, characters]
    stack: list[list[Any]] = []
    sizes: dict[str, tuple[int, int]] = {}
    nodes = chars = 0

    def add(count: int, text_chars: int, event: Any) -> None:
        nonlocal nodes, chars
        if stack:
            stack[-1][1] += count
            stack[-1][2] += text_chars
        nodes += count
        chars += text_chars
        if nodes > MAX_NODES or chars > MAX_TEXT:
            raise YamlProblem(
                "the document is too large once its aliases (*name) are expanded "
                f"(more than {MAX_NODES} values or {MAX_TEXT // MAX_FILE_BYTES} MiB of text)",
                _line(event),
            )

    for event in _yaml().parse(text):
        if isinstance(event, AliasEvent):
            count, text_chars = sizes.get(str(event.anchor), (1, 0))
            add(count, text_chars, event)
        elif isinstance(event, ScalarEvent):
            size = len(event.value or "")
            if event.anchor is not None:
                sizes[str(event.anchor)] = (1, size)
            add(1, size, event)
        elif isinstance(event, CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                raise YamlProblem(
                    f"the document nests lists and mappings deeper than {MAX_DEPTH} levels",
                    _line(event),
                )
            stack.append([event.anchor, 0, 0])
        elif isinstance(event, CollectionEndEvent) and stack:
            anchor, count, text_chars = stack.pop()
            if anchor is not None:
                sizes[str(anchor)] = (count + 1, text_chars)
            if stack:  # the content is already in the totals; the parent holds it too
                stack[-1][1] += count
                stack[-1][2] += text_chars
            add(1, 0, event)  # the collection itself


def parse(text: str) -> Any:
    """The round-trip document of ``text`` after ``_measure`` allowed it; ``YamlProblem`` for
    invalid or oversized YAML."""
    try:
        _flow_depth(text)
        _measure(text)
        return _yaml().load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = exc.problem or exc.context or "unreadable"
        raise YamlProblem(f"invalid YAML: {shorten(str(what))}", line) from None
    except YAMLError as exc:
        raise YamlProblem(f"invalid YAML: {shorten(str(exc).splitlines()[0])}") from None
    except RecursionError:  # not reached within MAX_DEPTH; kept so nothing ends in a traceback
        raise YamlProblem(f"the document nests deeper than {MAX_DEPTH} levels") from None


def plain(node: Any) -> Any:
    """ruamel's commented containers and scalars as plain Python values."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node
