"""The connector's ingress rules: which local service answers a request from the tunnel.

An ingress file (close to cloudflared's)::

    origin: {connect_timeout: 10s}          # optional defaults for every rule's ``origin``
    ingress:
      - hostname: wiki.example.com          # optional; "*.example.com" matches one label
        path: /api                          # optional; a path prefix on a segment boundary
        service: http://127.0.0.1:8080      # http://, https://, unix:/path.sock, http_status:NNN
        origin: {host_header: wiki.internal, no_tls_verify: false}
      - service: http_status:404            # the last rule is the catch-all

Rules are tried in order and the first that matches wins. A rule without ``hostname`` and
``path`` matches everything: it must be the last one, and the last one must be such a rule, so
every request has an answer. ``--url URL`` is the single catch-all rule ``service: URL``.

Matching (the same normalisation the edge routes with, so the two never disagree):

- the host is the ``:authority`` without port, lower-cased, without a trailing dot; an exact
  ``hostname`` matches it, ``*.example.com`` matches ``a.example.com`` (exactly one more label,
  as at the edge) but neither ``example.com`` nor ``a.b.example.com``;
- the path has its query dropped and is normalised with :func:`zerogate.model.paths.normalise_path`
  (dot segments, ``//``, unreserved escapes) and compared case-insensitively; ``path: /api``
  matches ``/api``, ``/api/`` and ``/api/x`` but not ``/apix``. A path that cannot be normalised
  safely (``%2F``, a backslash, NUL) raises :class:`~zerogate.model.paths.PathError`; the
  connector answers 400.

Pure: parsing, validation and matching. ``load_file`` is the only function that reads a file.
Problems are reported like the configuration loader's: ``file:line: ingress rule #2 › service:
why`` (rules are numbered from 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)

from zerogate.model.loader import ConfigError, Problem, line_of
from zerogate.model.paths import fold, normalise_path, under
from zerogate.model.safe_yaml import YamlProblem, parse, read_text, shorten
from zerogate.model.values import check_hostname, parse_duration

__all__ = [
    "ConfigError",
    "IngressConfig",
    "OriginOptions",
    "Problem",
    "Rule",
    "Service",
    "from_url",
    "load_file",
    "load_text",
    "match",
    "normalise_host",
    "parse_service",
]


def _seconds(value: Any) -> Any:
    """``"10s"``, ``"1m30s"`` or a number of seconds → seconds as a float."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (examples: 10s, 1m30s)")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{value!r}: a duration must be longer than zero")
        return float(value)
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    raise ValueError(f"{value!r} is not a duration (examples: 10s, 1m30s)")


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OriginOptions(_Strict):
    """How the connector talks to a rule's service (cloudflared's ``originRequest``).

    ``connect_timeout``: for connecting (and waiting for a pooled connection);
    ``host_header``: the ``Host`` sent to the origin (default: the request's own host);
    ``no_tls_verify``: accept any certificate from an ``https://`` origin; ``ca_file``: trust
    this PEM bundle instead of the system's; ``keep_alive_connections``: idle connections
    kept per origin; ``keep_alive_timeout``: how long an idle one is kept.
    """

    connect_timeout: Seconds = 30.0
    host_header: str | None = Field(default=None, min_length=1, max_length=255)
    no_tls_verify: bool = False
    ca_file: str | None = Field(default=None, min_length=1)
    keep_alive_connections: int = Field(default=100, ge=0, le=10_000)
    keep_alive_timeout: Seconds = 90.0


@dataclass(frozen=True, slots=True)
class Service:
    """A parsed ``service``: ``kind`` says which of the other fields matter.

    ``http``/``https``: ``host`` (IDNA / bracket-free IPv6) and ``port``; ``unix``: ``path``
    (the socket; requests are plain HTTP over it); ``status``: ``status`` answered directly.
    """

    kind: Literal["http", "https", "unix", "status"]
    text: str
    host: str = ""
    port: int = 0
    path: str = ""
    status: int = 0

    @property
    def origin(self) -> str:
        """``http://host:port``, ``https://host:port`` or ``unix:/path`` (not for ``status``)."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind}://{host}:{self.port}"


def parse_service(text: str) -> Service:
    """Parse a ``service`` value; ``ValueError`` says what is wrong and what is expected."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a service is required (http://…, https://…, unix:/path, http_status:N)")
    value = text.strip()
    if value.startswith("http_status:"):
        code = value[len("http_status:") :]
        if not (code.isdigit() and len(code) == 3 and 200 <= int(code) <= 599):
            raise ValueError(f"{text!r}: http_status takes a status from 200 to 599")
        return Service("status", value, status=int(code))
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError(f"{text!r}: a Unix socket service is unix:/absolute/path.sock")
        return Service("unix", value, path=path)
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"{text!r}: expected http://host[:port], https://host[:port], unix:/path or"
            " http_status:NNN"
        )
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r}: the service needs a host (and no user:password@)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a service is a scheme, host and port only (no path)")
    kind: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
    return Service(
        kind,
        value,
        host=parts.hostname,
        port=port if port is not None else (443 if kind == "https" else 80),
    )


def _host_pattern(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a hostname")
    return check_hostname(value, allow_wildcard=True)


def _path_prefix(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{value!r}: a path prefix starts with '/', as in /api")
    if "?" in value or "#" in value:
        raise ValueError(f"{value!r}: a path prefix holds no query or fragment")
    norm = fold(normalise_path(value, strict=False))
    return norm.rstrip("/") or "/"


def _check_service(value: str) -> str:
    parse_service(value)
    return value.strip()


class Rule(_Strict):
    """One ingress rule; ``service`` is kept as written and parsed once (``target``)."""

    hostname: Annotated[str | None, BeforeValidator(_host_pattern)] = None
    path: Annotated[str | None, BeforeValidator(_path_prefix)] = None
    service: Annotated[str, AfterValidator(_check_service)]
    origin: OriginOptions = OriginOptions()
    _target: Service | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._target = parse_service(self.service)

    @property
    def catch_all(self) -> bool:
        return self.hostname is None and self.path in (None, "/")

    @property
    def target(self) -> Service:
        """The parsed ``service``."""
        assert self._target is not None
        return self._target

    def matches(self, host: str, folded_path: str) -> bool:
        """``host`` as :func:`normalise_host` gives it, ``folded_path`` normalised and folded."""
        pattern = self.hostname
        if pattern is not None:
            if pattern.startswith("*."):
                first, dot, parent = host.partition(".")
                if not (first and dot and parent == pattern[2:]):
                    return False
            elif host != pattern:
                return False
        return self.path is None or under(folded_path, "" if self.path == "/" else self.path)


class IngressConfig(_Strict):
    """An ingress file: optional ``origin`` defaults and the ordered ``ingress`` rules."""

    origin: dict[str, Any] | None = None
    ingress: list[dict[str, Any]] = Field(min_length=1)


def normalise_host(authority: str) -> str:
    """The host of an ``:authority`` for matching: no port, lower case, no trailing dot."""
    h = authority.strip().lower()
    if h.startswith("["):
        return h[1:].partition("]")[0]
    if h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".")


def match(rules: Sequence[Rule], host: str, path: str) -> Rule:
    """The first rule matching ``host`` (an ``:authority``) and ``path`` (a request target).

    Raises :class:`~zerogate.model.paths.PathError` when the path cannot be normalised safely.
    Validated rules end with a catch-all, so there is always an answer.
    """
    h = normalise_host(host)
    folded = fold(normalise_path(path))
    for rule in rules:
        if rule.matches(h, folded):
            return rule
    raise LookupError("no ingress rule matched; the rules lack their final catch-all")


def from_url(url: str) -> list[Rule]:
    """``--url URL``: one catch-all rule; raises ``ConfigError`` naming the problem."""
    try:
        parse_service(url)
    except ValueError as exc:
        raise ConfigError([Problem("--url", str(exc))]) from None
    return [Rule(service=url)]


# -------------------------------------------------------------------- loading and errors


def _where(loc: Sequence[str | int]) -> str:
    if len(loc) >= 2 and loc[0] == "ingress" and isinstance(loc[1], int):
        rest = ".".join(str(p) for p in loc[2:])
        return f"ingress rule #{loc[1] + 1}" + (f" › {rest}" if rest else "")
    return ".".join(str(p) for p in loc)


_KEYS = sorted({"ingress", "hostname", "path", "service", "origin", *OriginOptions.model_fields})


def _message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, _KEYS, n=1, cutoff=0.6)
        return f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
    if err["type"] == "missing":
        return "this key is required"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] != "value_error" and isinstance(err.get("input"), (str, int, float)):
        value = err["input"]
        shown = repr(shorten(value)) if isinstance(value, str) else repr(value)
        msg = f"{shown}: {msg[0].lower()}{msg[1:]}"
    return msg


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, (bool, type(None))):
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return str(node)


def _known_loc(loc: Sequence[Any]) -> list[str | int]:
    return [p for p in loc if isinstance(p, int) or not str(p).startswith("function-")]


def validate(data: Any, *, doc: Any = None, source: str | None = None) -> list[Rule]:
    """Validate a plain document; the rules, or ``ConfigError`` with every problem."""

    def problem(loc: Sequence[str | int], message: str) -> Problem:
        return Problem(
            _where(loc), message, line_of(doc, tuple(loc)) if doc is not None else None, source
        )

    if not isinstance(data, dict):
        raise ConfigError([problem((), "an ingress file is a mapping with an 'ingress' list")])
    try:
        config = IngressConfig.model_validate(data)
    except ValidationError as exc:
        errors = [problem(_known_loc(e["loc"]), _message(dict(e))) for e in exc.errors()]
        raise ConfigError(errors) from None
    problems: list[Problem] = []
    defaults = config.origin or {}
    try:
        OriginOptions.model_validate(defaults)
    except ValidationError as exc:
        defaults = {}
        problems += [
            problem(["origin", *_known_loc(e["loc"])], _message(dict(e))) for e in exc.errors()
        ]
    rules: list[Rule] = []
    last = len(config.ingress) - 1
    for index, raw in enumerate(config.ingress):
        if not isinstance(raw, dict):
            problems.append(problem(["ingress", index], "a rule is a mapping with a 'service'"))
            continue
        merged = dict(raw)
        if defaults and isinstance(raw.get("origin", {}), dict):
            merged["origin"] = {**defaults, **raw.get("origin", {})}
        try:
            rule = Rule.model_validate(merged)
        except ValidationError as exc:
            problems += [
                problem(["ingress", index, *_known_loc(e["loc"])], _message(dict(e)))
                for e in exc.errors()
            ]
            continue
        if rule.catch_all and index != last:
            problems.append(
                problem(
                    ["ingress", index],
                    "this rule has no hostname and no path, so it matches every request and"
                    " the rules after it would never apply; move it to the end",
                )
            )
        if index == last and not rule.catch_all:
            problems.append(
                problem(
                    ["ingress", index],
                    "the last rule must match everything (no hostname, no path),"
                    " e.g. '- service: http_status:404'",
                )
            )
        rules.append(rule)
    if problems:
        raise ConfigError(problems)
    return rules


def load_text(text: str, source: str | None = None) -> list[Rule]:
    """Parse and validate ingress YAML; ``ConfigError`` lists every problem with its line.
    Parsing is bounded in depth and alias expansion (``model.safe_yaml``)."""
    try:
        doc = parse(text)
    except YamlProblem as exc:
        raise ConfigError([Problem("", exc.message, exc.line, source)]) from None
    return validate(_plain(doc), doc=doc, source=source)


def load_file(path: str | Path) -> list[Rule]:
    """Read, parse and validate an ingress file (at most ``safe_yaml.MAX_FILE_BYTES``)."""
    p = Path(path)
    try:
        text = read_text(p)
    except YamlProblem as exc:
        raise ConfigError([Problem("", exc.message, None, str(p))]) from None
    return load_text(text, source=str(p))
