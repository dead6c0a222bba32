"""How zerogate's processes log: one line per record, with whatever came from outside
escaped.

A log line is read by people and parsed by tools, and much of what zerogate logs came from
a client, an admin or an identity provider: a typed address, a Host header, an IdP's claim,
a file's value. Raw, a newline forges a second log line, ESC sequences rewrite the operator's
terminal, and U+2028/U+2029 or bidirectional controls make a line read as something else.
Every record's message is therefore escaped (``\\n``, ``\\x1b``, ``\\u2028`` …) before it is
written; zerogate's own tracebacks (``exc_info``) keep their line breaks.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

#: C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional controls
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape(text: str) -> str:
    """``text`` with every unsafe character as a visible escape (``\\n``, ``\\x1b``)."""

    def one(match: re.Match[str]) -> str:
        char = match.group()
        if char in "\n\r\t":
            return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(one, text)


class EscapingFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose message part is always one escaped line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str | int) -> None:
    """The root logger writes escaped lines to stderr at ``level`` (replacing what a
    previous call installed)."""
    handler = _Stderr()
    handler.setFormatter(EscapingFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, EscapingFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def escape_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: every string value of the event, escaped."""
    for key, value in event.items():
        if isinstance(value, str) and key != "exception":
            event[key] = escape(value)
    return event
