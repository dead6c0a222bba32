"""The tunnel's wire protocol as two state machines: bytes in, events out, bytes to send; no I/O.

One TLS connection between a connector and the edge carries, in order:

1. **Registration.** The connector writes one *control frame* (``ZGTN`` magic, 4-byte big-endian
   length, UTF-8 JSON object) naming its tunnel token, connector id, software version, connection
   index and features. The edge answers with one control frame: accepted (tunnel id, connection
   id, features) or refused (reason, message). Nothing else is sent before the answer, so no
   request ever reaches a connector whose token was not checked.
2. **HTTP/2, roles reversed.** After an acceptance the edge, as the HTTP/2 *client*, sends the
   connection preface; the connector is the HTTP/2 *server*. The edge opens one stream per proxied
   request; WebSockets ride RFC 8441 extended CONNECT streams (``:protocol websocket``).

:class:`EdgeSide` and :class:`ConnectorSide` wrap an :class:`h2.connection.H2Connection` each. A
shell feeds received bytes to ``receive_data`` (which returns :class:`Event` objects and never
raises), calls methods to act (``send_request``, ``send_response``, ``send_body``, ``ack``,
``reset``, ``ping``, ``go_away``, ``close``) and writes whatever ``data_to_send`` returns. After
every call it writes ``data_to_send()`` and, when ``closed`` is true, closes the transport.

Flow control is end to end: received body bytes stay charged to the HTTP/2 windows until the
shell calls ``ack`` for them, so a slow consumer stops the producer instead of growing a buffer;
outgoing bytes beyond the peer's window wait in a per-stream queue bounded by
``TunnelSettings.send_buffer`` (``send_capacity`` says how much more ``send_body`` accepts, and
:class:`WindowOpened` says when to look again).

GOAWAY is handled here, not by h2 (whose state machine refuses every frame after one): GOAWAY
frames are cut out of the incoming byte stream and written by this module, so in-flight streams
finish while no new ones start (``State.DRAINING``). The full description, with sequence
diagrams, is ``docs/tunnel-protocol.md``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, TypeAlias

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hpack.exceptions import HPACKError
from hyperframe.exceptions import HyperframeError

if TYPE_CHECKING:
    from zerogate.tunnel.mux import MuxWire

__all__ = [
    "CONTROL_MAGIC",
    "EAGER_WRITE",
    "MAX_CONTROL_FRAME",
    "PROTOCOL_H2",
    "PROTOCOL_MUX",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "Accepted",
    "BodyChunk",
    "ConnectionReady",
    "ConnectionTerminated",
    "ConnectorSide",
    "ControlFrameReader",
    "EdgeSide",
    "ErrorCodes",
    "Event",
    "GoAwayReceived",
    "Header",
    "InvalidHeaders",
    "PingAcked",
    "RefusalReason",
    "Refused",
    "Registration",
    "RegistrationAccepted",
    "RegistrationError",
    "RegistrationReceived",
    "RegistrationRefused",
    "RequestReceived",
    "ResponseStarted",
    "State",
    "StreamEnded",
    "StreamReset",
    "TunnelError",
    "TunnelSettings",
    "UsageError",
    "WindowOpened",
    "clean_headers",
    "encode_registration",
    "encode_result",
    "parse_registration",
    "parse_result",
]

PROTOCOL_H2 = 1
"""Protocol 1: HTTP/2 (h2) with the roles reversed, after the registration."""

PROTOCOL_MUX = 2
"""Protocol 2: the lean multiplexer of ``mux.py`` (fixed frame header, no HPACK)."""

PROTOCOL_VERSION = PROTOCOL_MUX
"""The newest wire protocol (the ``protocol`` field of a registration) and the default."""

SUPPORTED_PROTOCOLS = frozenset({PROTOCOL_H2, PROTOCOL_MUX})
"""What an edge accepts; anything else is refused with ``version_unsupported``."""

CONTROL_MAGIC = b"ZGTN"
"""The four bytes every registration-phase control frame starts with."""

MAX_CONTROL_FRAME = 16 * 1024
"""Largest JSON body of a control frame, in bytes; a longer one is refused before it is read."""

EAGER_WRITE = 64 * 1024
"""Shells write once per event-loop turn, but at once when ``unsent_bytes`` reaches this."""

_CONTROL_HEAD = len(CONTROL_MAGIC) + 4
_H2_PREFACE_LEN = 24
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535

Header: TypeAlias = tuple[bytes, bytes]
"""A header as (lower-case name, value) bytes, the way ASGI and h2 carry it."""


# --------------------------------------------------------------------------------------------
# Settings and errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunnelSettings:
    """What one side advertises and enforces; both sides of a connection may differ.

    ``stream_window`` (SETTINGS_INITIAL_WINDOW_SIZE) and ``connection_window`` (raised with a
    WINDOW_UPDATE on stream 0 at start) bound what the peer may send before the shell
    acknowledges it; ``max_frame_size`` is the largest frame this side accepts;
    ``max_concurrent_streams`` is advertised by the connector and caps the edge's open requests
    per connection; ``send_buffer`` caps the bytes one stream may queue here beyond the peer's
    window; ``max_header_list_size`` caps a header block (RFC 9113 size: name + value + 32 each).
    """

    stream_window: int = 16 * 1024 * 1024
    connection_window: int = 64 * 1024 * 1024
    max_frame_size: int = 256 * 1024
    max_concurrent_streams: int = 1000
    send_buffer: int = 256 * 1024
    max_header_list_size: int = 64 * 1024

    def __post_init__(self) -> None:
        if not _DEFAULT_WINDOW <= self.stream_window <= _MAX_WINDOW:
            raise ValueError(
                f"stream_window must be 65535..{_MAX_WINDOW}, not {self.stream_window}"
            )
        if not _DEFAULT_WINDOW <= self.connection_window <= _MAX_WINDOW:
            raise ValueError(
                f"connection_window must be 65535..{_MAX_WINDOW}, not {self.connection_window}"
            )
        if not 16_384 <= self.max_frame_size <= 2**24 - 1:
            raise ValueError(f"max_frame_size must be 16384..16777215, not {self.max_frame_size}")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if self.send_buffer < 1:
            raise ValueError("send_buffer must be at least 1 byte")
        if self.max_header_list_size < 1024:
            raise ValueError("max_header_list_size must be at least 1024 bytes")


class _Out:
    """What a side will send, as the pieces were produced, joined once by ``data_to_send``.

    A DATA frame's payload is kept as given (immutable bytes, or a view of them) instead of
    being copied into a growing buffer and copied out again: one copy per byte sent, the join.
    ``out += piece`` appends a piece; ``len(out)`` is the bytes held.
    """

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0

    def __iadd__(self, piece: bytes | memoryview) -> _Out:
        if piece:
            self.parts.append(piece)
            self.size += len(piece)
        return self

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def take(self) -> bytes:
        """Everything held, as one ``bytes``; the buffer is empty afterwards."""
        parts = self.parts
        if not parts:
            return b""
        first = parts[0]
        data = first if len(parts) == 1 and type(first) is bytes else b"".join(parts)
        self.parts = []
        self.size = 0
        return data

    def clear(self) -> None:
        self.parts = []
        self.size = 0


class TunnelError(Exception):
    """Base class of every exception this module raises."""


class RegistrationError(TunnelError, ValueError):
    """A control frame or registration field that is malformed, oversized or out of range.

    The sides never let it escape ``receive_data``: they turn it into a refusal and a
    :class:`ConnectionTerminated` event. The codec functions raise it directly.
    """


class InvalidHeaders(TunnelError, ValueError):
    """A header or pseudo-header that HTTP/2 cannot carry; nothing was sent.

    The one exception a shell must expect from ``send_request`` / ``send_response``, because the
    headers come from outside (a client, an origin): the edge answers 400 (or 431 when the block
    is too large for the connector), the connector answers 502.
    """


class UsageError(TunnelError, RuntimeError):
    """The shell called a method in a state where it is not allowed: a bug in the shell."""


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]{1,4096}")
_VERSION = re.compile(r"[\x20-\x7e]{1,64}")
_FEATURE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_MAX_FEATURES = 32
_MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Registration:
    """What a connector presents on each new connection. ``token`` never appears in ``repr``."""

    token: str = field(repr=False)
    connector_id: str
    version: str
    connection_index: int = 0
    features: frozenset[str] = frozenset()
    protocol: int = PROTOCOL_VERSION


class RefusalReason(StrEnum):
    """Why the edge refused a registration.

    ``unavailable`` is the only temporary one (the edge could not check the token right now);
    a connector redials after the others only with a long backoff and a loud log line.
    """

    BAD_TOKEN = "bad_token"  # noqa: S105 - a reason name, not a secret
    REVOKED = "revoked"
    VERSION_UNSUPPORTED = "version_unsupported"
    MALFORMED = "malformed"
    UNAVAILABLE = "unavailable"

    @property
    def permanent(self) -> bool:
        """Whether redialling with the same token and version will be refused again."""
        return self is not RefusalReason.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Accepted:
    """The edge's acceptance: which tunnel the token names and this connection's id."""

    tunnel_id: str
    connection_id: str
    features: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Refused:
    """The edge's refusal; the connection is closed after it."""

    reason: RefusalReason
    message: str = ""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RegistrationError(what)


def _text(obj: dict[str, object], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = obj.get(key)
    _check(isinstance(value, str), f"{key!r} must be a string ({what})")
    assert isinstance(value, str)
    _check(pattern.fullmatch(value) is not None, f"{key!r} is not a valid {what}")
    return value


def _int(obj: dict[str, object], key: str, low: int, high: int, default: int | None) -> int:
    value = obj.get(key, default)
    _check(
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
        f"{key!r} must be an integer from {low} to {high}",
    )
    assert isinstance(value, int)
    return value


def _features(obj: dict[str, object], key: str) -> frozenset[str]:
    value = obj.get(key, [])
    _check(
        isinstance(value, list) and len(value) <= _MAX_FEATURES,
        f"{key!r} must be a list of at most {_MAX_FEATURES} feature names",
    )
    assert isinstance(value, list)
    for item in value:
        _check(
            isinstance(item, str) and _FEATURE.fullmatch(item) is not None,
            f"{key!r} holds an invalid feature name {str(item)[:40]!r}",
        )
    return frozenset(value)


def _check_registration(reg: Registration) -> None:
    _check(_TOKEN_TEXT.fullmatch(reg.token) is not None, "'token' is not a valid tunnel token")
    _check(_ID.fullmatch(reg.connector_id) is not None, "'connector_id' is not a valid id")
    _check(_VERSION.fullmatch(reg.version) is not None, "'version' is not a valid version")
    _check(0 <= reg.connection_index <= 255, "'connection_index' must be from 0 to 255")
    _check(reg.protocol >= 1, "'protocol' must be at least 1")
    _check(len(reg.features) <= _MAX_FEATURES, "too many features")
    for item in reg.features:
        _check(_FEATURE.fullmatch(item) is not None, f"invalid feature name {item!r}")


def _encode_control(payload: dict[str, object]) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    _check(len(body) <= MAX_CONTROL_FRAME, f"control frame of {len(body)} bytes is too large")
    return CONTROL_MAGIC + len(body).to_bytes(4, "big") + body


def encode_registration(reg: Registration) -> bytes:
    """The control frame a connector sends first. Raises :class:`RegistrationError`."""
    _check_registration(reg)
    return _encode_control(
        {
            "type": "register",
            "protocol": reg.protocol,
            "token": reg.token,
            "connector_id": reg.connector_id,
            "version": reg.version,
            "connection_index": reg.connection_index,
            "features": sorted(reg.features),
        }
    )


def encode_result(result: Accepted | Refused) -> bytes:
    """The control frame the edge answers with. Raises :class:`RegistrationError`."""
    if isinstance(result, Refused):
        return _encode_control(
            {
                "type": "refused",
                "reason": result.reason.value,
                "message": result.message[:_MAX_MESSAGE],
            }
        )
    _check(_ID.fullmatch(result.tunnel_id) is not None, "'tunnel_id' is not a valid id")
    _check(_ID.fullmatch(result.connection_id) is not None, "'connection_id' is not a valid id")
    for item in result.features:
        _check(_FEATURE.fullmatch(item) is not None, f"invalid feature name {item!r}")
    return _encode_control(
        {
            "type": "accepted",
            "tunnel_id": result.tunnel_id,
            "connection_id": result.connection_id,
            "features": sorted(result.features),
        }
    )


def parse_registration(obj: dict[str, object]) -> Registration:
    """A :class:`Registration` from a decoded control frame. Unknown keys are ignored."""
    _check(obj.get("type") == "register", "expected a control frame of type 'register'")
    return Registration(
        protocol=_int(obj, "protocol", 1, 2**31, None),
        token=_text(obj, "token", _TOKEN_TEXT, "tunnel token"),
        connector_id=_text(obj, "connector_id", _ID, "connector id"),
        version=_text(obj, "version", _VERSION, "version"),
        connection_index=_int(obj, "connection_index", 0, 255, 0),
        features=_features(obj, "features"),
    )


def parse_result(obj: dict[str, object]) -> Accepted | Refused:
    """The edge's answer from a decoded control frame. Unknown keys are ignored.

    An unknown refusal reason (from a newer edge) reads as ``unavailable`` so that the connector
    retries with backoff; the original reason stays in the message.
    """
    kind = obj.get("type")
    if kind == "accepted":
        return Accepted(
            tunnel_id=_text(obj, "tunnel_id", _ID, "tunnel id"),
            connection_id=_text(obj, "connection_id", _ID, "connection id"),
            features=_features(obj, "features"),
        )
    _check(kind == "refused", "expected a control frame of type 'accepted' or 'refused'")
    reason = obj.get("reason")
    message = obj.get("message", "")
    _check(isinstance(reason, str), "'reason' must be a string")
    _check(isinstance(message, str), "'message' must be a string")
    assert isinstance(reason, str) and isinstance(message, str)
    message = message[:_MAX_MESSAGE]
    try:
        return Refused(RefusalReason(reason), message)
    except ValueError:
        return Refused(RefusalReason.UNAVAILABLE, f"{reason[:64]}: {message}")


class ControlFrameReader:
    """Reassembles one control frame from arbitrarily split bytes.

    ``feed`` returns the decoded JSON object once complete (``None`` before) and raises
    :class:`RegistrationError` as soon as the input cannot be a control frame: wrong magic (for
    instance an HTTP request or a TLS alert), a length over the limit (checked before the body
    is buffered), invalid UTF-8 or JSON, or JSON that is not an object. Bytes after the frame
    are kept in ``rest``.
    """

    __slots__ = ("_buf", "_limit", "rest")

    def __init__(self, limit: int = MAX_CONTROL_FRAME) -> None:
        self._buf = bytearray()
        self._limit = limit
        self.rest = b""

    def feed(self, data: bytes) -> dict[str, object] | None:
        self._buf += data
        buf = self._buf
        seen = min(len(buf), len(CONTROL_MAGIC))
        if buf[:seen] != CONTROL_MAGIC[:seen]:
            raise RegistrationError(
                f"not a zerogate tunnel control frame (it starts with {bytes(buf[:16])!r})"
            )
        if len(buf) < _CONTROL_HEAD:
            return None
        length = int.from_bytes(buf[len(CONTROL_MAGIC) : _CONTROL_HEAD], "big")
        if length > self._limit:
            raise RegistrationError(
                f"control frame of {length} bytes exceeds the limit of {self._limit} bytes"
            )
        end = _CONTROL_HEAD + length
        if len(buf) < end:
            return None
        body = bytes(buf[_CONTROL_HEAD:end])
        self.rest = bytes(buf[end:])
        buf.clear()
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RegistrationError(f"control frame is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise RegistrationError("control frame must hold a JSON object")
        return obj


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------

_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
#: header names seen before, as given → lower-cased, each checked once: a pure function's cache
#: (bounded), so a busy connection does not run the name's regular expression per header
_KNOWN_NAMES: dict[bytes, bytes] = {}
_KNOWN_NAMES_MAX = 2048
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*")
_AUTHORITY = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]+")
_PATH = re.compile(r"/[\x21-\x7e]*|\*")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def clean_headers(headers: Iterable[Header], *, request: bool) -> list[Header]:
    """Headers made fit for HTTP/2 (RFC 9113 §8.2), or :class:`InvalidHeaders`.

    Names are lower-cased and must be field-name tokens (so no pseudo-header slips in); values
    lose surrounding spaces and tabs and must not hold CR, LF or NUL. Connection-specific headers
    never cross: ``Connection`` and every name it lists, ``Keep-Alive``, ``Proxy-Connection``,
    ``Transfer-Encoding``, ``Upgrade``, and ``TE`` unless it asks for ``trailers`` (then it is
    sent as exactly ``te: trailers``). In a request ``Host`` is dropped: ``:authority`` carries
    it. ``Content-Length`` crosses once, as plain decimal digits; an unreadable or conflicting
    one is :class:`InvalidHeaders` (HTTP/2 would make it a connection error at the peer).
    """
    kept: list[Header] = []
    listed: set[bytes] = set()
    known = _KNOWN_NAMES
    for name, value in headers:
        lname = known.get(name) if type(name) is bytes else None
        if lname is None:
            lname = bytes(name).lower()
            if _FIELD_NAME.fullmatch(lname) is None:
                raise InvalidHeaders(f"{bytes(name)[:64]!r} is not a valid HTTP header name")
            if type(name) is bytes and len(name) <= 64 and len(known) < _KNOWN_NAMES_MAX:
                known[name] = lname
        stripped = bytes(value).strip(b" \t")
        if _BAD_VALUE.search(stripped) is not None:
            raise InvalidHeaders(f"header {lname[:64]!r} has a value with CR, LF or NUL")
        if lname == b"connection":
            listed.update(token.strip().lower() for token in stripped.split(b","))
        else:
            kept.append((lname, stripped))
    result: list[Header] = []
    length: bytes | None = None
    for lname, value in kept:
        if lname == b"content-length":
            # HTTP/2 holds DATA to this value, and a value it cannot read or that conflicts is
            # a connection error at the peer: only one plain decimal length ever crosses
            parts = {part.strip() for part in value.split(b",")}
            if len(parts) != 1 or not next(iter(parts)).isdigit():
                raise InvalidHeaders(f"content-length {value[:64]!r} is not one decimal length")
            digits = str(int(next(iter(parts)))).encode()
            if length is not None and digits != length:
                raise InvalidHeaders("two different content-length values")
            if length is None:
                length = digits
                result.append((b"content-length", digits))
        elif lname == b"te":
            tokens = (part.split(b";")[0].strip().lower() for part in value.split(b","))
            if request and b"trailers" in tokens:
                result.append((b"te", b"trailers"))
        elif lname in _CONNECTION_SPECIFIC or lname in listed or (request and lname == b"host"):
            continue
        else:
            result.append((lname, value))
    return result


#: (what, value) → its bytes, for pseudo-header values that passed (a bounded cache: a
#: connection sends the same method, scheme and authority, and often the same path, again)
_PSEUDO_SEEN: dict[tuple[str, str], bytes] = {}
_PSEUDO_SEEN_MAX = 4096


def _pseudo(value: str, pattern: re.Pattern[str], what: str) -> bytes:
    key = (what, value)
    known = _PSEUDO_SEEN.get(key)
    if known is not None:
        return known
    if pattern.fullmatch(value) is None:
        raise InvalidHeaders(f"{what} {value[:64]!r} cannot be sent")
    encoded = value.encode("ascii")
    if len(value) <= 256:
        if len(_PSEUDO_SEEN) >= _PSEUDO_SEEN_MAX:
            _PSEUDO_SEEN.clear()
        _PSEUDO_SEEN[key] = encoded
    return encoded


def _header_list_size(block: Sequence[Header]) -> int:
    return sum(len(name) + len(value) + 32 for name, value in block)


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


class Event:
    """Base class of everything ``receive_data`` returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RegistrationReceived(Event):
    """Edge: a connector presented this registration; answer with ``accept`` or ``refuse``."""

    registration: Registration


@dataclass(frozen=True, slots=True)
class RegistrationAccepted(Event):
    """Connector: the edge accepted the registration; HTTP/2 has started."""

    tunnel_id: str
    connection_id: str
    features: frozenset[str]


@dataclass(frozen=True, slots=True)
class RegistrationRefused(Event):
    """Connector: the edge refused; the side is closed."""

    reason: RefusalReason
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionReady(Event):
    """The peer's first SETTINGS arrived; the edge may open streams from now on."""

    max_concurrent_streams: int
    extended_connect: bool


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Connector: the edge opened a stream. ``protocol`` is set for extended CONNECT."""

    stream_id: int
    method: str
    scheme: str
    authority: str
    path: str
    headers: list[Header]
    protocol: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseStarted(Event):
    """Edge: the connector answered a stream with this status and headers."""

    stream_id: int
    status: int
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class BodyChunk(Event):
    """Body bytes on a stream. Call ``ack(stream_id, len(data))`` once they are consumed.

    ``flow_controlled_length`` is what the frame cost the window (data plus padding); padding is
    handed back at once, so only ``len(data)`` is the shell's to acknowledge.
    """

    stream_id: int
    data: bytes = field(repr=False)
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer finished its half of the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """The stream is gone. ``remote``: the peer reset or refused it.

    ``retryable`` (error code REFUSED_STREAM) promises the peer never processed the stream, so
    the edge may send the request again on another connection.
    """

    stream_id: int
    error_code: int
    remote: bool

    @property
    def retryable(self) -> bool:
        return self.error_code == ErrorCodes.REFUSED_STREAM


@dataclass(frozen=True, slots=True)
class WindowOpened(Event):
    """Queued bytes of this stream went out; ``send_capacity`` grew."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PingAcked(Event):
    """The peer answered the ``ping`` sent at ``sent_at``; the round trip is now - sent_at."""

    sent_at: float


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer is draining: streams up to ``last_stream_id`` finish, no new ones start.

    Streams this side opened above ``last_stream_id`` are reported as retryable
    :class:`StreamReset` events right after this one.
    """

    last_stream_id: int
    error_code: int
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """The connection ended while handling the peer's input (or its loss); ``closed`` is true.

    ``error_code`` is an HTTP/2 error code (NO_ERROR after a completed drain, PROTOCOL_ERROR for
    malformed input); ``remote``: the peer ended it. Every open stream was reported as a
    :class:`StreamReset` just before this event.
    """

    error_code: int
    reason: str
    remote: bool


# --------------------------------------------------------------------------------------------
# GOAWAY, kept away from h2
# --------------------------------------------------------------------------------------------

_FRAME_HEAD = 9
_HEADERS, _PUSH_PROMISE, _GOAWAY_TYPE, _CONTINUATION = 0x1, 0x5, 0x7, 0x9
_END_HEADERS = 0x4


@dataclass(frozen=True, slots=True)
class _GoAway:
    last_stream_id: int
    error_code: int
    debug: bytes


class _FramingError(Exception):
    def __init__(self, message: str, error_code: ErrorCodes) -> None:
        super().__init__(message)
        self.error_code = error_code


def _goaway_frame(last_stream_id: int, error_code: int, debug: bytes) -> bytes:
    payload = last_stream_id.to_bytes(4, "big") + error_code.to_bytes(4, "big") + debug
    return len(payload).to_bytes(3, "big") + bytes([_GOAWAY_TYPE, 0]) + bytes(4) + payload


class _FrameSplitter:
    """Passes the incoming HTTP/2 byte stream through, minus GOAWAY frames, which it parses.

    h2 moves to a closed state on any GOAWAY and then rejects every later frame, which would
    make a graceful drain impossible. Only frame headers are inspected; everything else goes to
    h2 in as few pieces as possible. An oversized frame is refused from its header, before its
    payload is buffered.
    """

    __slots__ = ("_goaway", "_goaway_left", "_head", "_in_header_block", "_max_frame", "_skip")

    def __init__(self, preface: int, max_frame_size: int) -> None:
        self._skip = preface
        self._head = b""
        self._goaway: bytearray | None = None
        self._goaway_left = 0
        self._in_header_block = False
        self._max_frame = max_frame_size

    def feed(self, data: bytes) -> list[bytes | _GoAway]:
        out: list[bytes | _GoAway] = []
        pieces: list[bytes | memoryview] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                pieces.append(view[i : i + take])
                self._skip -= take
                i += take
                continue
            if self._goaway is not None:
                take = min(self._goaway_left, n - i)
                self._goaway += view[i : i + take]
                self._goaway_left -= take
                i += take
                if not self._goaway_left:
                    raw = bytes(self._goaway)
                    self._goaway = None
                    out.append(
                        _GoAway(
                            int.from_bytes(raw[:4], "big") & 0x7FFFFFFF,
                            int.from_bytes(raw[4:8], "big"),
                            raw[8:],
                        )
                    )
                continue
            if not self._head and n - i >= _FRAME_HEAD:
                head = data[i : i + _FRAME_HEAD]
                i += _FRAME_HEAD
            else:
                need = _FRAME_HEAD - len(self._head)
                self._head += data[i : i + need]
                i += min(need, n - i)
                if len(self._head) < _FRAME_HEAD:
                    break
                head, self._head = self._head, b""
            length = int.from_bytes(head[:3], "big")
            kind = head[3]
            if length > self._max_frame:
                # h2 checks this only once the whole frame is buffered (up to 16 MiB).
                raise _FramingError(
                    f"frame of {length} bytes exceeds the limit of {self._max_frame}",
                    ErrorCodes.FRAME_SIZE_ERROR,
                )
            if kind == _GOAWAY_TYPE:
                if self._in_header_block:
                    raise _FramingError("GOAWAY inside a header block", ErrorCodes.PROTOCOL_ERROR)
                if int.from_bytes(head[5:9], "big") & 0x7FFFFFFF:
                    raise _FramingError("GOAWAY on a stream", ErrorCodes.PROTOCOL_ERROR)
                if length < 8:
                    raise _FramingError(f"GOAWAY of {length} bytes", ErrorCodes.FRAME_SIZE_ERROR)
                if pieces:
                    out.append(_join(pieces, data))
                    pieces = []
                self._goaway = bytearray()
                self._goaway_left = length
            else:
                if kind in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
                    self._in_header_block = not head[4] & _END_HEADERS
                pieces.append(head)
                self._skip = length
        if pieces:
            out.append(_join(pieces, data))
        return out


def _join(pieces: list[bytes | memoryview], whole: bytes) -> bytes:
    if len(pieces) == 1 and len(pieces[0]) == len(whole):
        return whole
    return b"".join(pieces)


# --------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------


class State(Enum):
    """Where a side is. ``DRAINING``: a GOAWAY went one way or the other; no new streams."""

    REGISTERING = "registering"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class _Stream:
    __slots__ = (
        "end_queued",
        "headers_sent",
        "local_ended",
        "pending",
        "pending_bytes",
        "remote_ended",
        "stream_id",
    )

    def __init__(self, stream_id: int, *, headers_sent: bool) -> None:
        self.stream_id = stream_id
        self.headers_sent = headers_sent
        self.end_queued = False
        self.local_ended = False
        self.remote_ended = False
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0


_H2_FAILURES = (h2.exceptions.H2Error, HyperframeError, HPACKError)
_MAX_PINGS = 16


class _Side:
    """What both sides share: h2 set-up, streams, flow control, PING, GOAWAY and errors."""

    _client_side: bool

    def __init__(self, settings: TunnelSettings | None) -> None:
        self.settings = settings or TunnelSettings()
        self.state = State.REGISTERING
        self._out = _Out()
        self._h2: h2.connection.H2Connection | None = None
        self._splitter: _FrameSplitter | None = None
        self._control = ControlFrameReader()
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, _Stream] = {}
        self._unacked: dict[int, int] = {}
        self._pending_total = 0
        self._unacked_total = 0
        self._pings: dict[bytes, float] = {}
        self._ping_seq = 0
        self._ready = False
        self._goaway_sent: int | None = None
        self._goaway_received: int | None = None
        self._mux: MuxWire | None = None

    # -- what the shell reads -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the connection is over: write ``data_to_send()`` one last time, then close."""
        return self.state is State.CLOSED

    @property
    def ready(self) -> bool:
        """True once the peer's SETTINGS arrived (see :class:`ConnectionReady`)."""
        if self._mux is not None:
            return self._mux.ready and self.state is not State.CLOSED
        return self._ready and self.state is not State.CLOSED

    @property
    def open_streams(self) -> int:
        """Streams not yet finished both ways nor reset."""
        if self._mux is not None:
            return len(self._mux.streams)
        return len(self._streams)

    @property
    def buffered_bytes(self) -> int:
        """Body bytes held on this side's account: queued to send + received and not acked."""
        if self._mux is not None:
            return self._mux.buffered_bytes
        return self._pending_total + self._unacked_total

    @property
    def ping_outstanding_since(self) -> float | None:
        """``now`` of the oldest unanswered ``ping``, or ``None``; the shell's liveness check."""
        if self._mux is not None:
            return self._mux.ping_outstanding_since
        return next(iter(self._pings.values()), None)

    def send_capacity(self, stream_id: int) -> int:
        """How many bytes ``send_body`` accepts on this stream right now (0 when it must wait)."""
        if self._mux is not None:
            return self._mux.send_capacity(stream_id)
        st = self._streams.get(stream_id)
        if st is None or st.end_queued or not st.headers_sent:
            return 0
        return max(0, self.settings.send_buffer - st.pending_bytes)

    def can_send(self, stream_id: int) -> bool:
        return self.send_capacity(stream_id) > 0

    @property
    def unsent_bytes(self) -> int:
        """How much ``data_to_send`` holds now, for a shell that writes once per event-loop
        turn and wants to write at once past a threshold. Protocol 1 cannot tell (h2 keeps its
        own buffer) and answers ``2**31``, so its shells always write at once."""
        if self._h2 is not None:
            return 2**31
        return len(self._out)

    def data_to_send(self) -> bytes:
        """Everything to write to the transport, in order; empty when there is nothing."""
        if self._h2 is not None:
            produced = self._h2.data_to_send()
            if not self._out:
                return produced
            self._out += produced
        return self._out.take()

    # -- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Handle bytes from the peer. Never raises: malformed input becomes events."""
        if self.state is State.CLOSED or not data:
            return []
        if self.state is State.REGISTERING:
            return self._receive_control(bytes(data))
        return self._receive_frames(bytes(data))

    def connection_lost(self, reason: str = "connection lost") -> list[Event]:
        """The transport closed or failed: every open stream is reset, then the side closes."""
        if self.state is State.CLOSED:
            return []
        if self._mux is not None:
            return self._mux.connection_lost(reason)
        events: list[Event] = []
        self._terminate(events, ErrorCodes.CANCEL, reason, remote=False)
        return events

    def _receive_control(self, data: bytes) -> list[Event]:
        raise NotImplementedError

    def _receive_frames(self, data: bytes) -> list[Event]:
        if self._mux is not None:
            return self._mux.receive(data)
        conn, splitter = self._conn(), self._splitter
        assert splitter is not None
        events: list[Event] = []
        try:
            for piece in splitter.feed(data):
                if isinstance(piece, _GoAway):
                    self._on_goaway(piece, events)
                else:
                    self._translate(conn.receive_data(piece), events)
                if self.state is State.CLOSED:
                    return events
            if self._blocked:
                self._flush_blocked(events)
        except _FramingError as exc:
            self._fail(events, exc.error_code, f"protocol error: {exc}")
            return events
        except _H2_FAILURES as exc:
            code = getattr(exc, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            self._fail(events, code, f"protocol error: {exc}")
            return events
        if self._drained():
            remote = self._goaway_received is not None and self._goaway_sent is None
            events.append(ConnectionTerminated(int(ErrorCodes.NO_ERROR), "drained", remote))
        return events

    def _translate(self, received: list[h2.events.Event], events: list[Event]) -> None:
        conn = self._conn()
        for ev in received:
            if isinstance(ev, h2.events.DataReceived):
                sid, data, cost = ev.stream_id, ev.data, ev.flow_controlled_length
                if sid not in self._streams:
                    if cost:
                        conn.acknowledge_received_data(cost, sid)
                    continue
                if cost > len(data):
                    conn.acknowledge_received_data(cost - len(data), sid)
                if data:
                    self._unacked[sid] = self._unacked.get(sid, 0) + len(data)
                    self._unacked_total += len(data)
                    events.append(BodyChunk(sid, data, cost))
            elif isinstance(ev, h2.events.StreamEnded):
                st = self._streams.get(ev.stream_id)
                if st is not None:
                    st.remote_ended = True
                    events.append(StreamEnded(ev.stream_id))
                    self._maybe_finish(st)
            elif isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev, events)
            elif isinstance(ev, h2.events.ResponseReceived):
                self._on_response(ev, events)
            elif isinstance(ev, h2.events.StreamReset):
                if ev.stream_id in self._streams:
                    self._drop_stream(ev.stream_id)
                    events.append(StreamReset(ev.stream_id, int(ev.error_code), ev.remote_reset))
            elif isinstance(ev, h2.events.PingAckReceived):
                self._on_ping_ack(ev.ping_data, events)
            elif isinstance(ev, h2.events.RemoteSettingsChanged) and not self._ready:
                self._ready = True
                events.append(
                    ConnectionReady(
                        conn.remote_settings.max_concurrent_streams,
                        conn.remote_settings.enable_connect_protocol == 1,
                    )
                )
            # Anything else (WINDOW_UPDATE, SETTINGS ACK, PING, PRIORITY, 1xx responses,
            # trailers, unknown frames) needs no shell action: h2 has already answered it.

    def _on_request(self, ev: h2.events.RequestReceived, events: list[Event]) -> None:
        # Only a client receives requests it did not ask for; h2 refuses that already.
        self._conn().reset_stream(ev.stream_id, ErrorCodes.REFUSED_STREAM)

    def _on_response(self, ev: h2.events.ResponseReceived, events: list[Event]) -> None:
        self._conn().reset_stream(ev.stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _on_ping_ack(self, data: bytes, events: list[Event]) -> None:
        sent_at = self._pings.pop(data, None)
        if sent_at is None:
            return
        # PINGs are answered in order: an older one still listed was lost or answered oddly.
        for key in [key for key in self._pings if key < data]:
            del self._pings[key]
        events.append(PingAcked(sent_at))

    def _on_goaway(self, frame: _GoAway, events: list[Event]) -> None:
        last = frame.last_stream_id
        self._goaway_received = last
        message = frame.debug[:_MAX_MESSAGE].decode("utf-8", "replace")
        local = [sid for sid in sorted(self._streams) if self._is_local(sid) and sid > last]
        if frame.error_code != ErrorCodes.NO_ERROR:
            for sid in sorted(self._streams):
                code = ErrorCodes.REFUSED_STREAM if sid in local else frame.error_code
                events.append(StreamReset(sid, int(code), remote=True))
            self._drop_all()
            self.state = State.CLOSED
            name = _error_name(frame.error_code)
            events.append(
                ConnectionTerminated(
                    frame.error_code, f"the peer closed the connection ({name}) {message}", True
                )
            )
            return
        events.append(GoAwayReceived(last, frame.error_code, message))
        if self.state is State.OPEN:
            self.state = State.DRAINING
        for sid in local:
            self._conn().reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self._drop_stream(sid)
            events.append(StreamReset(sid, int(ErrorCodes.REFUSED_STREAM), remote=True))

    # -- output ------------------------------------------------------------------------------

    def send_body(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> None:
        """Send body bytes; what the peer's window cannot take now waits in the stream's queue.

        ``len(data)`` must not exceed ``send_capacity(stream_id)``. On a stream that has since
        been reset or finished, or on a closed connection, this does nothing.
        """
        if self._mux is not None:
            self._mux.send_body(stream_id, data, end_stream)
            return
        st = self._live(stream_id)
        if st is None:
            return
        if not st.headers_sent:
            raise UsageError(f"stream {stream_id}: send the response head before its body")
        if st.end_queued:
            raise UsageError(f"stream {stream_id}: the body was already ended")
        size = len(data)
        room = self.settings.send_buffer - st.pending_bytes
        if size > room:
            raise UsageError(
                f"stream {stream_id}: {size} bytes exceed send_capacity ({max(room, 0)});"
                " wait for WindowOpened"
            )
        if size:
            st.pending.append(memoryview(bytes(data)))
            st.pending_bytes += size
            self._pending_total += size
        if end_stream:
            st.end_queued = True
        self._flush(st, frames=0)
        self._after_local_change()

    def ack(self, stream_id: int, size: int) -> None:
        """The shell consumed ``size`` received body bytes of this stream; reopen the windows."""
        if self._mux is not None:
            self._mux.ack(stream_id, size)
            return
        if size < 0:
            raise UsageError("cannot acknowledge a negative size")
        held = self._unacked.get(stream_id)
        if held is None:
            if size:
                self._check_known(stream_id)
            return
        if size > held:
            raise UsageError(
                f"stream {stream_id}: ack of {size} bytes exceeds the {held} received and unacked"
            )
        if not size:
            return
        if size == held:
            del self._unacked[stream_id]
        else:
            self._unacked[stream_id] = held - size
        self._unacked_total -= size
        self._conn().acknowledge_received_data(size, stream_id)

    def reset(self, stream_id: int, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort a stream both ways (RST_STREAM); its queued and unacked bytes are released."""
        if self._mux is not None:
            self._mux.reset(stream_id, error_code)
            return
        st = self._live(stream_id)
        if st is None:
            return
        self._conn().reset_stream(stream_id, error_code)
        self._drop_stream(stream_id)
        self._after_local_change()

    def ping(self, now: float) -> None:
        """Send a PING; :class:`PingAcked` brings ``now`` back. Ignored unless OPEN/DRAINING."""
        if self._mux is not None:
            self._mux.ping(now)
            return
        if self.state not in (State.OPEN, State.DRAINING):
            return
        self._ping_seq += 1
        payload = self._ping_seq.to_bytes(8, "big")
        self._conn().ping(payload)
        self._pings[payload] = now
        if len(self._pings) > _MAX_PINGS:
            del self._pings[next(iter(self._pings))]

    def go_away(self, message: str = "") -> None:
        """Start a graceful drain: GOAWAY(NO_ERROR) naming the last stream this side will serve.

        Streams up to it finish; the peer opens no new ones, and any it opened meanwhile are
        refused (REFUSED_STREAM: retryable). The side closes by itself when the last stream
        finishes. Use ``close`` to end at once (for instance when the grace period is over).
        """
        if self.state is State.REGISTERING:
            self.close()
            return
        if self._mux is not None:
            self._mux.go_away(message)
            return
        if self.state is State.CLOSED or self._goaway_sent is not None:
            return
        conn = self._conn()
        last = conn.highest_inbound_stream_id
        self._out += conn.data_to_send()
        self._out += _goaway_frame(last, ErrorCodes.NO_ERROR, message.encode()[:_MAX_MESSAGE])
        self._goaway_sent = last
        self.state = State.DRAINING
        self._after_local_change()

    def close(self, error_code: int = ErrorCodes.NO_ERROR, message: str = "") -> None:
        """End the connection now with a final GOAWAY; open streams are abandoned."""
        if self.state is State.CLOSED:
            return
        if self._mux is not None:
            self._mux.close(error_code, message)
            return
        conn = self._h2
        if conn is not None and not _h2_closed(conn):
            conn.close_connection(error_code, message.encode()[:_MAX_MESSAGE] or None)
        self._drop_all()
        self.state = State.CLOSED

    # -- internals ---------------------------------------------------------------------------

    def _conn(self) -> h2.connection.H2Connection:
        if self._h2 is None:
            raise UsageError("HTTP/2 has not started: the registration was not accepted yet")
        return self._h2

    def _is_local(self, stream_id: int) -> bool:
        return stream_id % 2 == (1 if self._client_side else 0)

    def _start_wire(self, protocol: int) -> None:
        """Start the framing the registration named: HTTP/2 (1) or the multiplexer (2)."""
        if protocol == PROTOCOL_MUX:
            from zerogate.tunnel.mux import MuxWire  # mux imports this module

            self._mux = MuxWire(self, client=self._client_side)
        else:
            self._start_h2()

    def _start_h2(self) -> None:
        s = self.settings
        # outbound blocks are built only from _pseudo() and clean_headers(), which are stricter
        # than h2's own outbound checks; skipping those is worth ~8% of a small request's cost
        config = h2.config.H2Configuration(
            client_side=self._client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config=config)
        codes = h2.settings.SettingCodes
        values: dict[h2.settings.SettingCodes, int] = {
            codes.INITIAL_WINDOW_SIZE: s.stream_window,
            codes.MAX_FRAME_SIZE: s.max_frame_size,
            codes.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
            codes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
        }
        if self._client_side:
            values[codes.ENABLE_PUSH] = 0
        else:
            values[codes.ENABLE_CONNECT_PROTOCOL] = 1
        # Settings given as initial values are in force at once (they precede every stream on
        # the wire), so the values h2 derived from its defaults in __init__ are set again.
        conn.local_settings = h2.settings.Settings(client=self._client_side, initial_values=values)
        conn.max_inbound_frame_size = s.max_frame_size
        conn.decoder.max_header_list_size = s.max_header_list_size
        conn.initiate_connection()
        if s.connection_window > _DEFAULT_WINDOW:
            conn.increment_flow_control_window(s.connection_window - _DEFAULT_WINDOW)
        self._h2 = conn
        preface = 0 if self._client_side else _H2_PREFACE_LEN
        self._splitter = _FrameSplitter(preface, s.max_frame_size)
        self.state = State.OPEN

    def _live(self, stream_id: int) -> _Stream | None:
        st = self._streams.get(stream_id)
        if st is None:
            self._check_known(stream_id)
        return st

    def _check_known(self, stream_id: int) -> None:
        """A stream that is gone is fine to mention (races are normal); one never seen is not."""
        if self.state is State.CLOSED:
            return
        conn = self._h2
        highest = 0
        if conn is not None:
            highest = (
                conn.highest_outbound_stream_id
                if self._is_local(stream_id)
                else conn.highest_inbound_stream_id
            )
        if stream_id <= 0 or stream_id > highest:
            raise UsageError(f"there is no stream {stream_id} on this connection")

    def _flush(self, st: _Stream, frames: int) -> int:
        """Send queued bytes of one stream as the windows allow (``frames``: at most, 0 = all)."""
        conn = self._conn()
        sent = 0
        count = 0
        sid = st.stream_id
        while st.pending:
            window = conn.local_flow_control_window(sid)
            if window <= 0:
                break
            head = st.pending[0]
            size = min(window, conn.max_outbound_frame_size, len(head))
            last = size == len(head) and len(st.pending) == 1 and st.end_queued
            conn.send_data(sid, head[:size], end_stream=last)
            if size == len(head):
                st.pending.popleft()
            else:
                st.pending[0] = head[size:]
            st.pending_bytes -= size
            self._pending_total -= size
            sent += size
            if last:
                st.local_ended = True
            count += 1
            if count == frames:
                break
        if st.pending:
            self._blocked[sid] = st
        else:
            self._blocked.pop(sid, None)
            if st.end_queued and not st.local_ended:
                conn.end_stream(sid)
                st.local_ended = True
        self._maybe_finish(st)
        return sent

    def _flush_blocked(self, events: list[Event]) -> None:
        """After window updates: send queued bytes one frame per stream per round (fairness)."""
        moved: dict[int, None] = {}
        progress = True
        while progress and self._blocked:
            progress = False
            for st in list(self._blocked.values()):
                if self._flush(st, frames=1):
                    progress = True
                    moved[st.stream_id] = None
        events.extend(WindowOpened(sid) for sid in moved)

    def _maybe_finish(self, st: _Stream) -> None:
        if st.local_ended and st.remote_ended and not st.pending:
            self._streams.pop(st.stream_id, None)
            self._blocked.pop(st.stream_id, None)

    def _drop_stream(self, stream_id: int) -> None:
        st = self._streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        if st is not None:
            self._pending_total -= st.pending_bytes
        held = self._unacked.pop(stream_id, 0)
        if held:
            self._unacked_total -= held
            # The stream is closed, so this only reopens the connection window.
            self._conn().acknowledge_received_data(held, stream_id)

    def _drop_all(self) -> None:
        self._streams.clear()
        self._blocked.clear()
        self._unacked.clear()
        self._pending_total = 0
        self._unacked_total = 0
        self._pings.clear()

    def _drained(self) -> bool:
        if self.state is State.DRAINING and not self._streams:
            self.state = State.CLOSED
            self._drop_all()
            return True
        return False

    def _after_local_change(self) -> None:
        self._drained()

    def _terminate(self, events: list[Event], code: int, reason: str, *, remote: bool) -> None:
        for sid in sorted(self._streams):
            events.append(StreamReset(sid, int(code), remote=remote))
        self._drop_all()
        self.state = State.CLOSED
        events.append(ConnectionTerminated(int(code), reason, remote))

    def _fail(self, events: list[Event], code: int, reason: str) -> None:
        conn = self._h2
        if conn is not None and not _h2_closed(conn):
            conn.close_connection(code, reason.encode()[:_MAX_MESSAGE])
        self._terminate(events, code, reason, remote=False)

    def _send_headers(self, stream_id: int, block: list[Header], end_stream: bool) -> None:
        try:
            self._conn().send_headers(stream_id, block, end_stream=end_stream)
        except _H2_FAILURES as exc:  # pragma: no cover - clean_headers is stricter than h2
            # h2 validates while it encodes, so its HPACK state may now differ from the peer's:
            # the connection cannot be trusted with another header block.
            self.close(ErrorCodes.INTERNAL_ERROR, "header block refused by h2")
            raise InvalidHeaders(f"the header block was refused: {exc}") from None

    def _check_header_block(self, block: list[Header]) -> None:
        limit = self._conn().remote_settings.max_header_list_size
        if limit is not None and _header_list_size(block) > limit:
            raise InvalidHeaders(
                f"the header block ({_header_list_size(block)} bytes) exceeds the peer's"
                f" limit of {limit} bytes"
            )


_EARLY_DATA = "the connector sent data before its registration was answered"


def _h2_closed(conn: h2.connection.H2Connection) -> bool:
    return conn.state_machine.state is h2.connection.ConnectionState.CLOSED


def _error_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code:#x}"


def _pseudo_and_regular(
    raw: Iterable[tuple[bytes | str, bytes | str]],
) -> tuple[dict[bytes, str], list[Header]]:
    pseudo: dict[bytes, str] = {}
    regular: list[Header] = []
    for name, value in raw:
        bname, bvalue = _b(name), _b(value)
        if bname.startswith(b":"):
            pseudo[bname] = bvalue.decode("latin-1")
        else:
            regular.append((bname, bvalue))
    return pseudo, regular


class EdgeSide(_Side):
    """The edge's end of one connector connection: registration answerer, HTTP/2 client.

    ``receive_data`` yields :class:`RegistrationReceived` first; the shell checks the token and
    calls ``accept`` or ``refuse``. After :class:`ConnectionReady`, ``send_request`` opens one
    stream per proxied request.
    """

    _client_side = True

    def __init__(self, settings: TunnelSettings | None = None) -> None:
        super().__init__(settings)
        self.registration: Registration | None = None

    @property
    def can_open_stream(self) -> bool:
        """Whether ``send_request`` may be called: ready, not draining, under the stream limit."""
        if self._mux is not None:
            return self._mux.can_open_stream
        if self.state is not State.OPEN or not self._ready:
            return False
        conn = self._conn()
        return len(self._streams) < conn.remote_settings.max_concurrent_streams and (
            conn.highest_outbound_stream_id < 2**31 - 3
        )

    @property
    def extended_connect(self) -> bool:
        """Whether the connector enabled RFC 8441 extended CONNECT (WebSockets)."""
        if self._mux is not None:
            return self._mux.extended_connect
        return self.ready and self._conn().remote_settings.enable_connect_protocol == 1

    def accept(self, tunnel_id: str, connection_id: str, features: Iterable[str] = ()) -> None:
        """Answer the registration with an acceptance and start HTTP/2 as the client."""
        if self.state is not State.REGISTERING or self.registration is None:
            raise UsageError("accept() needs a RegistrationReceived that was not answered yet")
        self._out += encode_result(Accepted(tunnel_id, connection_id, frozenset(features)))
        self._start_wire(self.registration.protocol)

    def refuse(self, reason: RefusalReason, message: str = "") -> None:
        """Answer with a refusal (also allowed before a registration arrived, e.g. on timeout)."""
        if self.state is not State.REGISTERING:
            raise UsageError("refuse() is only possible before the registration was accepted")
        self._out += encode_result(Refused(reason, message))
        self.state = State.CLOSED

    def send_request(
        self,
        method: str,
        authority: str,
        path: str,
        headers: Iterable[Header] = (),
        *,
        scheme: str = "https",
        protocol: str | None = None,
        end_stream: bool = False,
    ) -> int:
        """Open a stream carrying one request; returns its stream id.

        ``authority`` is the request's Host; ``path`` its origin-form target (percent-encoded,
        with the query). ``protocol`` makes an RFC 8441 extended CONNECT (method must be
        ``CONNECT``; the stream becomes a byte pipe once answered 2xx). ``end_stream``: no body.
        Raises :class:`InvalidHeaders`, or :class:`UsageError` when ``can_open_stream`` is false.
        """
        if self._mux is not None:
            return self._mux.send_request(
                method, authority, path, headers, scheme, protocol, end_stream
            )
        block = [
            (b":method", _pseudo(method, _METHOD, "method")),
            (b":scheme", _pseudo(scheme, _SCHEME, "scheme")),
            (b":authority", _pseudo(authority, _AUTHORITY, "authority")),
            (b":path", _pseudo(path, _PATH, "path")),
        ]
        if protocol is not None:
            block.append((b":protocol", _pseudo(protocol, _METHOD, "protocol")))
            if method != "CONNECT" or end_stream:
                raise UsageError("an extended CONNECT needs method CONNECT and an open stream")
        elif method == "CONNECT":
            raise UsageError("plain CONNECT is not carried; give protocol= for extended CONNECT")
        block += clean_headers(headers, request=True)
        if not self.can_open_stream:
            raise UsageError(f"this connection takes no new stream (state {self.state.value})")
        if protocol is not None and not self.extended_connect:
            raise UsageError("the connector did not enable extended CONNECT")
        self._check_header_block(block)
        sid = self._conn().get_next_available_stream_id()
        self._send_headers(sid, block, end_stream)
        st = _Stream(sid, headers_sent=True)
        st.end_queued = st.local_ended = end_stream
        self._streams[sid] = st
        return sid

    def _receive_control(self, data: bytes) -> list[Event]:
        if self.registration is not None:
            return self._refuse_malformed(
                "the connector sent data before its registration was answered"
            )
        try:
            frame = self._control.feed(data)
            if frame is None:
                return []
            registration = parse_registration(frame)
        except RegistrationError as exc:
            return self._refuse_malformed(f"malformed registration: {exc}")
        if self._control.rest:
            return self._refuse_malformed(
                "the connector sent data before its registration was answered"
            )
        if registration.protocol not in SUPPORTED_PROTOCOLS:
            speaks = ", ".join(str(p) for p in sorted(SUPPORTED_PROTOCOLS))
            text = (
                f"tunnel protocol {registration.protocol} is not supported"
                f" (this edge speaks {speaks}): upgrade the connector or the edge"
            )
            self._out += encode_result(Refused(RefusalReason.VERSION_UNSUPPORTED, text))
            self.state = State.CLOSED
            return [ConnectionTerminated(int(ErrorCodes.NO_ERROR), text, remote=False)]
        self.registration = registration
        return [RegistrationReceived(registration)]

    def _refuse_malformed(self, text: str) -> list[Event]:
        self._out += encode_result(Refused(RefusalReason.MALFORMED, text))
        self.state = State.CLOSED
        return [ConnectionTerminated(int(ErrorCodes.PROTOCOL_ERROR), text, remote=False)]

    def _on_response(self, ev: h2.events.ResponseReceived, events: list[Event]) -> None:
        sid = ev.stream_id
        if sid not in self._streams:
            return
        pseudo, headers = _pseudo_and_regular(ev.headers)
        status = pseudo.get(b":status", "")
        if not (len(status) == 3 and status.isdigit() and status[0] in "2345"):
            self._conn().reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            self._drop_stream(sid)
            events.append(StreamReset(sid, int(ErrorCodes.PROTOCOL_ERROR), remote=False))
            return
        events.append(ResponseStarted(sid, int(status), headers))


class ConnectorSide(_Side):
    """The connector's end of one edge connection: registers, then serves as the HTTP/2 server.

    The registration is queued at construction: write ``data_to_send()`` right after the TLS
    handshake. ``receive_data`` yields :class:`RegistrationAccepted` (or
    :class:`RegistrationRefused`, and the side is closed), then :class:`RequestReceived` per
    stream; answer with ``send_response`` and ``send_body``.
    """

    _client_side = False

    def __init__(self, registration: Registration, settings: TunnelSettings | None = None) -> None:
        super().__init__(settings)
        self.registration = registration
        self.accepted: Accepted | None = None
        self._out += encode_registration(registration)

    def send_response(
        self,
        stream_id: int,
        status: int,
        headers: Iterable[Header] = (),
        *,
        end_stream: bool = False,
    ) -> None:
        """Send the response head (status 200..599; 2xx on a CONNECT stream opens the pipe).

        Raises :class:`InvalidHeaders`; does nothing on a stream that is already gone.
        """
        if self._mux is not None:
            self._mux.send_response(stream_id, status, headers, end_stream)
            return
        if isinstance(status, bool) or not 200 <= status <= 599:
            raise InvalidHeaders(f"status {status!r} cannot be sent (200..599 only)")
        block = [(b":status", str(status).encode("ascii")), *clean_headers(headers, request=False)]
        st = self._live(stream_id)
        if st is None:
            return
        if st.headers_sent:
            raise UsageError(f"stream {stream_id}: the response head was already sent")
        self._check_header_block(block)
        self._send_headers(stream_id, block, end_stream)
        st.headers_sent = True
        if end_stream:
            st.end_queued = st.local_ended = True
            self._maybe_finish(st)
            self._after_local_change()

    def _receive_control(self, data: bytes) -> list[Event]:
        try:
            frame = self._control.feed(data)
            if frame is None:
                return []
            result = parse_result(frame)
        except RegistrationError as exc:
            self.state = State.CLOSED
            text = f"the edge's answer to the registration is malformed: {exc}"
            return [ConnectionTerminated(int(ErrorCodes.PROTOCOL_ERROR), text, remote=False)]
        if isinstance(result, Refused):
            self.state = State.CLOSED
            return [RegistrationRefused(result.reason, result.message)]
        self.accepted = result
        self._start_wire(self.registration.protocol)
        events: list[Event] = [
            RegistrationAccepted(result.tunnel_id, result.connection_id, result.features)
        ]
        if self._control.rest:
            events += self._receive_frames(self._control.rest)
        return events

    def _on_request(self, ev: h2.events.RequestReceived, events: list[Event]) -> None:
        sid = ev.stream_id
        conn = self._conn()
        if self._goaway_sent is not None and sid > self._goaway_sent:
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        pseudo, headers = _pseudo_and_regular(ev.headers)
        method = pseudo.get(b":method", "")
        protocol = pseudo.get(b":protocol")
        authority = pseudo.get(b":authority")
        if authority is None:
            authority = next((v.decode("latin-1") for k, v in headers if k == b"host"), "")
        if (method == "CONNECT" and protocol is None) or not authority:
            conn.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        self._streams[sid] = _Stream(sid, headers_sent=False)
        events.append(
            RequestReceived(
                sid,
                method,
                pseudo.get(b":scheme", ""),
                authority,
                pseudo.get(b":path", ""),
                headers,
                protocol,
            )
        )
