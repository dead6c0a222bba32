"""The lean tunnel wire (protocol 2): a yamux-style multiplexer, sans-IO, no HPACK.

After the registration (the same ``ZGTN`` control frames as protocol 1, see ``protocol.py``),
both sides exchange binary frames with a fixed 10-byte header::

    type (1) | flags (1) | stream id (4, big-endian) | payload length (4, big-endian)

- ``DATA`` 0: body bytes; flag ``END`` (0x1) ends this side of the stream.
- ``HEADERS`` 1: a head, its fields joined by NUL. A request: method, scheme, authority, path,
  protocol (empty but for extended CONNECT), then name, value, ...; a response: status, then
  name, value, .... Flag ``END``: no body.
- ``RST`` 3: error code (4 bytes): the stream is gone.
- ``WINDOW`` 4: increment (4 bytes); stream 0 is the connection window.
- ``PING`` 6: 8 opaque bytes; flag ``ACK`` (0x1) on the answer.
- ``GOAWAY`` 7: last stream id (4), error code (4), UTF-8 message.
- ``SETTINGS`` 8: sent once, first: the sender's stream window, connection window, max frame
  size, max concurrent streams, max header block and flags (bit 0: extended CONNECT), 4 bytes
  each.

A NUL cannot occur in a header name (a token) nor in a value (``clean_headers`` refuses it), so
one ``bytes.split`` decodes a head: this replaces HPACK, which was half of the connector's time.
The semantics are those of the HTTP/2 wire (protocol 1) one for one: the same events, the same
stream ids (the edge opens odd ones), the same error codes, ack-driven windows, GOAWAY drain
with REFUSED_STREAM for streams that crossed it. :class:`MuxWire` is driven by
``EdgeSide``/``ConnectorSide`` once the registration named protocol 2; shells see no
difference. ``docs/tunnel-protocol.md`` has the description and the measurements behind it.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

# clean_headers is looked up on the module at each call, like protocol.py does, so that the
# attack tests' stand-in for a malicious connector reaches both wires
from zerogate.tunnel import protocol as _protocol
from zerogate.tunnel.protocol import (
    _AUTHORITY,
    _CONNECTION_SPECIFIC,
    _FIELD_NAME,
    _MAX_MESSAGE,
    _MAX_PINGS,
    _METHOD,
    _PATH,
    _SCHEME,
    BodyChunk,
    ConnectionReady,
    ConnectionTerminated,
    ErrorCodes,
    Event,
    GoAwayReceived,
    Header,
    InvalidHeaders,
    PingAcked,
    RequestReceived,
    ResponseStarted,
    State,
    StreamEnded,
    StreamReset,
    TunnelSettings,
    UsageError,
    WindowOpened,
    _error_name,
    _pseudo,
)

if TYPE_CHECKING:
    from zerogate.tunnel.protocol import _Side

__all__ = ["MuxWire"]

_HEAD = struct.Struct(">BBII")
_HEAD_LEN = _HEAD.size
_SETTINGS = struct.Struct(">IIIIII")
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")

DATA, HEADERS, RST, WINDOW, PING, GOAWAY, SETTINGS = 0, 1, 3, 4, 6, 7, 8
END = 0x1
ACK = 0x1
_MAX_WINDOW = 2**31 - 1
_MAX_STREAM_ID = 2**31 - 1
_EXTENDED_CONNECT = 0x1
_NO_LENGTH = -1
_STATUS = {code: str(code).encode("ascii") for code in range(200, 600)}
_BAD_VALUE_BYTES = re.compile(rb"[\r\n]")


class _Fatal(Exception):
    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


class _Peer:
    """What the peer announced in its SETTINGS frame."""

    __slots__ = (
        "connection_window",
        "extended_connect",
        "max_concurrent_streams",
        "max_frame_size",
        "max_header_list_size",
        "stream_window",
    )

    def __init__(self, payload: bytes) -> None:
        (
            self.stream_window,
            self.connection_window,
            self.max_frame_size,
            self.max_concurrent_streams,
            self.max_header_list_size,
            flags,
        ) = _SETTINGS.unpack(payload)
        self.extended_connect = bool(flags & _EXTENDED_CONNECT)
        if not (
            1 <= self.stream_window <= _MAX_WINDOW
            and 1 <= self.connection_window <= _MAX_WINDOW
            and 1024 <= self.max_frame_size <= 2**24
            and self.max_concurrent_streams >= 1
            and self.max_header_list_size >= 1024
        ):
            raise _Fatal("SETTINGS out of range", ErrorCodes.PROTOCOL_ERROR)


class _MStream:
    __slots__ = (
        "credit",
        "end_queued",
        "expect",
        "head_received",
        "head_request",
        "headers_sent",
        "local_ended",
        "pending",
        "pending_bytes",
        "recv_left",
        "remote_ended",
        "stream_id",
        "window",
    )

    def __init__(self, stream_id: int, window: int, recv_left: int) -> None:
        self.stream_id = stream_id
        self.headers_sent = False
        self.head_received = False
        self.head_request = False  # edge: the request was HEAD (its response has no body)
        self.end_queued = False
        self.local_ended = False
        self.remote_ended = False
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.window = window  # what the peer still lets us send
        self.recv_left = recv_left  # what we still let the peer send
        self.credit = 0  # acknowledged bytes not yet handed back with a WINDOW frame
        self.expect = _NO_LENGTH  # the peer's content-length still to come, or -1


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(kind, flags, stream_id, len(payload)) + payload


_GOOD_NAMES: set[bytes] = set()
_GOOD_NAMES_MAX = 2048


def _check_fields(names: Iterable[bytes]) -> None:
    """Lower-case tokens, none connection-specific: what HTTP/2 would accept (RFC 9113 8.2).

    Names that passed are remembered (a bounded set), so a head of known names costs one set
    lookup per name instead of a regular expression."""
    good = _GOOD_NAMES
    for name in names:
        if name in good:
            continue
        if _FIELD_NAME.fullmatch(name) is None or name in _CONNECTION_SPECIFIC:
            raise ValueError(f"invalid header name {name[:64]!r}")
        if len(name) <= 64 and len(good) < _GOOD_NAMES_MAX:
            good.add(name)


#: (method, scheme, authority, protocol) as received → decoded, for lines that passed (bounded)
_GOOD_LINES: dict[tuple[bytes, bytes, bytes, bytes], tuple[str, str, str, str | None]] = {}
_GOOD_LINES_MAX = 1024


def _request_line(line: tuple[bytes, bytes, bytes, bytes]) -> tuple[str, str, str, str | None]:
    """A received request's method, scheme, authority and protocol, checked as HTTP/2 would
    check its pseudo-headers; ValueError if one is not acceptable."""
    method, scheme, authority, protocol_text = (part.decode("latin-1") for part in line)
    protocol = protocol_text or None
    if (
        _METHOD.fullmatch(method) is None
        or _SCHEME.fullmatch(scheme) is None
        or _AUTHORITY.fullmatch(authority) is None
        or (protocol is not None and _METHOD.fullmatch(protocol) is None)
        or (method == "CONNECT") != (protocol is not None)
    ):
        raise ValueError("bad request line")
    return method, scheme, authority, protocol


def _content_length(headers: list[Header]) -> int:
    """The one content-length of a received head (``-1``: none); ValueError if unreadable."""
    found = _NO_LENGTH
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit() or (found != _NO_LENGTH and int(value) != found):
                raise ValueError("unreadable or conflicting content-length")
            found = int(value)
    return found


class MuxWire:
    """Protocol 2 for one connection, on behalf of its ``EdgeSide`` or ``ConnectorSide``.

    It writes into the side's output buffer and sets the side's ``state``, so ``closed``,
    ``data_to_send`` and ``state`` read the same for both wires.
    """

    def __init__(self, side: _Side, *, client: bool) -> None:
        self.side = side
        self.client = client
        self.settings: TunnelSettings = side.settings
        self.out = side._out
        self.peer: _Peer | None = None
        self.streams: dict[int, _MStream] = {}
        self.blocked: dict[int, _MStream] = {}
        self.unacked: dict[int, int] = {}
        self.pending_total = 0
        self.unacked_total = 0
        self.send_window = 0
        self.recv_left = self.settings.connection_window
        self.conn_credit = 0
        self.next_stream_id = 1
        self.highest_inbound = 0
        self.pings: dict[bytes, float] = {}
        self.ping_seq = 0
        self.goaway_sent: int | None = None
        self.goaway_received: int | None = None
        self.buf = bytearray()
        s = self.settings
        flags = 0 if client else _EXTENDED_CONNECT
        self.out += _frame(
            SETTINGS,
            0,
            0,
            _SETTINGS.pack(
                s.stream_window,
                s.connection_window,
                s.max_frame_size,
                s.max_concurrent_streams,
                s.max_header_list_size,
                flags,
            ),
        )
        side.state = State.OPEN

    # -- what the side reads --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.peer is not None

    @property
    def buffered_bytes(self) -> int:
        return self.pending_total + self.unacked_total

    @property
    def ping_outstanding_since(self) -> float | None:
        return next(iter(self.pings.values()), None)

    @property
    def can_open_stream(self) -> bool:
        peer = self.peer
        return (
            peer is not None
            and self.side.state is State.OPEN
            and len(self.streams) < peer.max_concurrent_streams
            and self.next_stream_id < _MAX_STREAM_ID - 2
        )

    @property
    def extended_connect(self) -> bool:
        return self.peer is not None and self.peer.extended_connect

    def send_capacity(self, stream_id: int) -> int:
        st = self.streams.get(stream_id)
        if st is None or st.end_queued or not st.headers_sent:
            return 0
        return max(0, self.settings.send_buffer - st.pending_bytes)

    # -- input -------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos = 0
        end = len(data)
        try:
            if self.buf:
                # a frame begun in an earlier read: complete it with only the bytes it needs,
                # then cut the rest straight from ``data`` (a socket's reads rarely end on a
                # frame boundary, so copying every read into ``buf`` would copy every byte)
                pos = self._complete_pending(data, events)
                if pos < 0 or self.side.state is State.CLOSED:
                    return events
            while end - pos >= _HEAD_LEN:
                kind, flags, sid, length = _HEAD.unpack_from(data, pos)
                self._check_length(kind, length)
                if end - pos - _HEAD_LEN < length:
                    break
                start = pos + _HEAD_LEN
                pos = start + length
                self._on_frame(kind, flags, sid, data[start:pos], events)
                if self.side.state is State.CLOSED:
                    return events
            if pos < end:
                self.buf += memoryview(data)[pos:]
            if self.blocked:
                self._flush_blocked(events)
        except _Fatal as exc:
            self.buf.clear()
            self._fail(events, exc.error_code, f"protocol error: {exc}")
            return events
        if self._drained():
            remote = self.goaway_received is not None and self.goaway_sent is None
            events.append(ConnectionTerminated(int(ErrorCodes.NO_ERROR), "drained", remote))
        return events

    def _complete_pending(self, data: bytes, events: list[Event]) -> int:
        """Feed ``buf`` (a partial frame) from ``data``; the position in ``data`` after the
        frame once it is complete and handled, or -1 when ``data`` did not complete it."""
        buf = self.buf
        view = memoryview(data)
        pos: int = 0
        if len(buf) < _HEAD_LEN:
            take = min(_HEAD_LEN - len(buf), len(data))
            buf += view[:take]
            pos = take
            if len(buf) < _HEAD_LEN:
                return -1
        kind, flags, sid, length = _HEAD.unpack_from(buf)
        self._check_length(kind, length)
        take = min(_HEAD_LEN + length - len(buf), len(data) - pos)
        buf += view[pos : pos + take]
        pos += take
        if len(buf) < _HEAD_LEN + length:
            return -1
        payload = bytes(memoryview(buf)[_HEAD_LEN:])
        buf.clear()
        self._on_frame(kind, flags, sid, payload, events)
        return pos

    def _check_length(self, kind: int, length: int) -> None:
        limit = (
            self.settings.max_frame_size
            if kind == DATA
            else max(self.settings.max_header_list_size, 64)
        )
        if length > limit:
            raise _Fatal(
                f"frame of {length} bytes exceeds the limit of {limit}",
                ErrorCodes.FRAME_SIZE_ERROR,
            )

    def _on_frame(
        self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]
    ) -> None:
        if kind == DATA:
            self._on_data(sid, flags, payload, events)
        elif kind == HEADERS:
            self._on_headers(sid, flags, payload, events)
        else:
            self._on_control(kind, flags, sid, payload, events)
        if self.side.state is State.CLOSED:
            self.buf.clear()

    def _on_data(self, sid: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if self.peer is None:
            raise _Fatal("DATA before SETTINGS", ErrorCodes.PROTOCOL_ERROR)
        n = len(payload)
        if n > self.recv_left:
            raise _Fatal("the peer overran the connection window", ErrorCodes.FLOW_CONTROL_ERROR)
        self.recv_left -= n
        st = self.streams.get(sid)
        if st is None:
            if sid == 0 or not self._seen(sid):
                raise _Fatal(f"DATA on stream {sid}, never opened", ErrorCodes.PROTOCOL_ERROR)
            self._give_back(n)  # a race with a reset: only the connection window matters
            return
        if st.remote_ended or not st.head_received:
            self._stream_error(st, ErrorCodes.STREAM_CLOSED, events)
            self._give_back(n)
            return
        if n > st.recv_left:
            raise _Fatal(f"the peer overran stream {sid}'s window", ErrorCodes.FLOW_CONTROL_ERROR)
        st.recv_left -= n
        if st.expect != _NO_LENGTH:
            st.expect -= n
            if st.expect < 0 or (flags & END and st.expect):
                # more or less body than its content-length: never pass it on (desync)
                self._stream_error(st, ErrorCodes.PROTOCOL_ERROR, events)
                self._give_back(n)
                return
        if n:
            self.unacked[sid] = self.unacked.get(sid, 0) + n
            self.unacked_total += n
            events.append(BodyChunk(sid, payload, n))
        if flags & END:
            st.remote_ended = True
            events.append(StreamEnded(sid))
            self._maybe_finish(st)

    def _on_headers(self, sid: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if self.peer is None:
            raise _Fatal("HEADERS before SETTINGS", ErrorCodes.PROTOCOL_ERROR)
        if b"\r" in payload or b"\n" in payload:
            raise _Fatal("a header value holds CR or LF", ErrorCodes.PROTOCOL_ERROR)
        parts = payload.split(b"\0")
        if self.client:
            self._on_response(sid, flags, parts, events)
        else:
            self._on_request(sid, flags, parts, events)

    def _on_request(self, sid: int, flags: int, parts: list[bytes], events: list[Event]) -> None:
        if sid % 2 != 1 or sid <= self.highest_inbound:
            raise _Fatal(f"HEADERS opening stream {sid}", ErrorCodes.PROTOCOL_ERROR)
        self.highest_inbound = sid
        if self.goaway_sent is not None and sid > self.goaway_sent:
            self.out += _frame(RST, 0, sid, _U32.pack(ErrorCodes.REFUSED_STREAM))
            return
        if len(self.streams) >= self.settings.max_concurrent_streams:
            self.out += _frame(RST, 0, sid, _U32.pack(ErrorCodes.REFUSED_STREAM))
            return
        try:
            if len(parts) < 5 or len(parts) % 2 != 1:
                raise ValueError("not a request head")
            line = (parts[0], parts[1], parts[2], parts[4])
            known = _GOOD_LINES.get(line)
            if known is None:
                known = _request_line(line)
                if sum(map(len, line)) <= 256:
                    if len(_GOOD_LINES) >= _GOOD_LINES_MAX:
                        _GOOD_LINES.clear()
                    _GOOD_LINES[line] = known
            method, scheme, authority, protocol = known
            path = parts[3].decode("latin-1")
            if _PATH.fullmatch(path) is None:
                raise ValueError("bad request target")
            names = parts[5::2]
            _check_fields(names)
            headers = list(zip(names, parts[6::2], strict=True))
            if any(n == b"te" and v != b"trailers" for n, v in headers):
                raise ValueError("te other than trailers")
            expect = _content_length(headers)
        except ValueError:
            self.out += _frame(RST, 0, sid, _U32.pack(ErrorCodes.PROTOCOL_ERROR))
            return
        if flags & END and expect > 0:  # a promised body that cannot come
            self.out += _frame(RST, 0, sid, _U32.pack(ErrorCodes.PROTOCOL_ERROR))
            return
        peer = self.peer
        assert peer is not None
        st = _MStream(sid, peer.stream_window, self.settings.stream_window)
        st.head_received = True
        st.expect = expect
        self.streams[sid] = st
        events.append(RequestReceived(sid, method, scheme, authority, path, headers, protocol))
        if flags & END:
            st.remote_ended = True
            events.append(StreamEnded(sid))

    def _on_response(self, sid: int, flags: int, parts: list[bytes], events: list[Event]) -> None:
        st = self.streams.get(sid)
        if st is None:
            if sid % 2 != 1 or not self._seen(sid):
                raise _Fatal(f"a response on stream {sid}, never opened", ErrorCodes.PROTOCOL_ERROR)
            return
        if st.head_received:
            self._stream_error(st, ErrorCodes.PROTOCOL_ERROR, events)
            return
        try:
            if len(parts) % 2 != 1:
                raise ValueError("not a response head")
            status = parts[0]
            if not (len(status) == 3 and status.isdigit() and status[:1] in b"2345"):
                raise ValueError("bad status")
            names = parts[1::2]
            _check_fields(names)
            headers = list(zip(names, parts[2::2], strict=True))
            expect = _content_length(headers)
        except ValueError:
            self._stream_error(st, ErrorCodes.PROTOCOL_ERROR, events)
            return
        code = int(status)
        if st.head_request or code in (204, 304):
            expect = 0
        st.head_received = True
        st.expect = expect
        events.append(ResponseStarted(sid, code, headers))
        if flags & END:
            if expect > 0:
                self._stream_error(st, ErrorCodes.PROTOCOL_ERROR, events)
                return
            st.remote_ended = True
            events.append(StreamEnded(sid))
            self._maybe_finish(st)

    def _on_control(
        self, kind: int, flags: int, sid: int, payload: bytes, events: list[Event]
    ) -> None:
        if kind == SETTINGS:
            if self.peer is not None or sid or len(payload) != _SETTINGS.size:
                raise _Fatal("a second or malformed SETTINGS", ErrorCodes.PROTOCOL_ERROR)
            peer = self.peer = _Peer(payload)
            self.send_window = peer.connection_window
            events.append(ConnectionReady(peer.max_concurrent_streams, peer.extended_connect))
            return
        if self.peer is None:
            raise _Fatal("a frame before SETTINGS", ErrorCodes.PROTOCOL_ERROR)
        if kind == WINDOW:
            if len(payload) != 4:
                raise _Fatal("WINDOW of a wrong size", ErrorCodes.FRAME_SIZE_ERROR)
            (increment,) = _U32.unpack(payload)
            if not increment:
                raise _Fatal("WINDOW of 0", ErrorCodes.PROTOCOL_ERROR)
            if sid == 0:
                self.send_window += increment
                if self.send_window > _MAX_WINDOW:
                    raise _Fatal("connection window overflow", ErrorCodes.FLOW_CONTROL_ERROR)
            else:
                st = self.streams.get(sid)
                if st is not None:
                    st.window += increment
                    if st.window > _MAX_WINDOW:
                        raise _Fatal("stream window overflow", ErrorCodes.FLOW_CONTROL_ERROR)
                    if st.pending:
                        self.blocked[sid] = st
        elif kind == RST:
            if len(payload) != 4 or sid == 0:
                raise _Fatal("malformed RST", ErrorCodes.PROTOCOL_ERROR)
            if sid in self.streams:
                self._drop_stream(sid)
                events.append(StreamReset(sid, _U32.unpack(payload)[0], remote=True))
        elif kind == PING:
            if len(payload) != 8 or sid:
                raise _Fatal("malformed PING", ErrorCodes.PROTOCOL_ERROR)
            if flags & ACK:
                self._on_ping_ack(payload, events)
            else:
                self.out += _frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            if len(payload) < 8 or sid:
                raise _Fatal("malformed GOAWAY", ErrorCodes.PROTOCOL_ERROR)
            last, code = _U32X2.unpack_from(payload)
            self._on_goaway(last & _MAX_STREAM_ID, code, payload[8:], events)
        else:
            raise _Fatal(f"unknown frame type {kind}", ErrorCodes.PROTOCOL_ERROR)

    def _on_ping_ack(self, data: bytes, events: list[Event]) -> None:
        sent_at = self.pings.pop(data, None)
        if sent_at is None:
            return
        for key in [key for key in self.pings if key < data]:
            del self.pings[key]
        events.append(PingAcked(sent_at))

    def _on_goaway(self, last: int, code: int, debug: bytes, events: list[Event]) -> None:
        side = self.side
        self.goaway_received = last
        message = debug[:_MAX_MESSAGE].decode("utf-8", "replace")
        local = [sid for sid in sorted(self.streams) if self._is_local(sid) and sid > last]
        if code != ErrorCodes.NO_ERROR:
            for sid in sorted(self.streams):
                events.append(
                    StreamReset(sid, int(ErrorCodes.REFUSED_STREAM if sid in local else code), True)
                )
            self._drop_all()
            side.state = State.CLOSED
            name = _error_name(code)
            events.append(
                ConnectionTerminated(
                    code, f"the peer closed the connection ({name}) {message}", True
                )
            )
            return
        events.append(GoAwayReceived(last, code, message))
        if side.state is State.OPEN:
            side.state = State.DRAINING
        for sid in local:
            self._drop_stream(sid)
            events.append(StreamReset(sid, int(ErrorCodes.REFUSED_STREAM), remote=True))

    # -- output ------------------------------------------------------------------------------

    def send_request(
        self,
        method: str,
        authority: str,
        path: str,
        headers: Iterable[Header],
        scheme: str,
        protocol: str | None,
        end_stream: bool,
    ) -> int:
        fields = [
            _pseudo(method, _METHOD, "method"),
            _pseudo(scheme, _SCHEME, "scheme"),
            _pseudo(authority, _AUTHORITY, "authority"),
            _pseudo(path, _PATH, "path"),
        ]
        if protocol is not None:
            fields.append(_pseudo(protocol, _METHOD, "protocol"))
            if method != "CONNECT" or end_stream:
                raise UsageError("an extended CONNECT needs method CONNECT and an open stream")
        elif method == "CONNECT":
            raise UsageError("plain CONNECT is not carried; give protocol= for extended CONNECT")
        else:
            fields.append(b"")
        block = _protocol.clean_headers(headers, request=True)
        if not self.can_open_stream:
            raise UsageError(f"this connection takes no new stream (state {self.side.state.value})")
        if protocol is not None and not self.extended_connect:
            raise UsageError("the connector did not enable extended CONNECT")
        peer = self.peer
        assert peer is not None
        for name, value in block:
            fields.append(name)
            fields.append(value)
        payload = b"\0".join(fields)
        # the RFC 9113 size: the fields without the NULs between them, 32 per header and per
        # pseudo-header (method, scheme, authority, path)
        self._check_size(len(payload) - (len(fields) - 1) + 32 * len(block) + 4 * 32)
        sid = self.next_stream_id
        self.next_stream_id += 2
        self.out += _frame(HEADERS, END if end_stream else 0, sid, payload)
        st = _MStream(sid, peer.stream_window, self.settings.stream_window)
        st.headers_sent = True
        st.head_request = method == "HEAD"
        st.end_queued = st.local_ended = end_stream
        self.streams[sid] = st
        return sid

    def send_response(
        self, stream_id: int, status: int, headers: Iterable[Header], end_stream: bool
    ) -> None:
        if isinstance(status, bool) or not 200 <= status <= 599:
            raise InvalidHeaders(f"status {status!r} cannot be sent (200..599 only)")
        block = _protocol.clean_headers(headers, request=False)
        st = self._live(stream_id)
        if st is None:
            return
        if st.headers_sent:
            raise UsageError(f"stream {stream_id}: the response head was already sent")
        fields = [_STATUS.get(status) or str(status).encode("ascii")]
        for name, value in block:
            fields.append(name)
            fields.append(value)
        payload = b"\0".join(fields)
        # the RFC 9113 size: the headers without the NULs, 32 each, and :status (3 + 32)
        self._check_size(len(payload) - (len(fields) - 1) - len(fields[0]) + 32 * len(block) + 35)
        self.out += _frame(HEADERS, END if end_stream else 0, stream_id, payload)
        st.headers_sent = True
        if end_stream:
            st.end_queued = st.local_ended = True
            self._maybe_finish(st)
            self._drained()

    def send_body(self, stream_id: int, data: bytes | bytearray | memoryview, end: bool) -> None:
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
        peer = self.peer
        assert peer is not None
        if not (type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes)):
            data = bytes(data)  # kept until sent, not copied: it must not change meanwhile
        if (
            not st.pending
            and size <= st.window
            and size <= self.send_window
            and size <= peer.max_frame_size
        ):
            # the common case: it all fits, one frame, no queue
            self.out += _HEAD.pack(DATA, END if end else 0, stream_id, size)
            self.out += data
            st.window -= size
            self.send_window -= size
            if end:
                st.end_queued = st.local_ended = True
                self._maybe_finish(st)
                self._drained()
            return
        if size:
            st.pending.append(memoryview(data))
            st.pending_bytes += size
            self.pending_total += size
        if end:
            st.end_queued = True
        self._flush(st, frames=0)
        self._drained()

    def ack(self, stream_id: int, size: int) -> None:
        if size < 0:
            raise UsageError("cannot acknowledge a negative size")
        held = self.unacked.get(stream_id)
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
            del self.unacked[stream_id]
        else:
            self.unacked[stream_id] = held - size
        self.unacked_total -= size
        if self.side.state is State.CLOSED:
            return
        st = self.streams.get(stream_id)
        if st is not None and not st.remote_ended:
            st.credit += size
            if st.credit >= self.settings.stream_window // 2:
                self.out += _frame(WINDOW, 0, stream_id, _U32.pack(st.credit))
                st.recv_left += st.credit
                st.credit = 0
        self._give_back(size)

    def reset(self, stream_id: int, error_code: int) -> None:
        st = self._live(stream_id)
        if st is None:
            return
        self.out += _frame(RST, 0, stream_id, _U32.pack(error_code))
        self._drop_stream(stream_id)
        self._drained()

    def ping(self, now: float) -> None:
        if self.side.state not in (State.OPEN, State.DRAINING):
            return
        self.ping_seq += 1
        payload = self.ping_seq.to_bytes(8, "big")
        self.out += _frame(PING, 0, 0, payload)
        self.pings[payload] = now
        if len(self.pings) > _MAX_PINGS:
            del self.pings[next(iter(self.pings))]

    def go_away(self, message: str) -> None:
        side = self.side
        if side.state is State.CLOSED or self.goaway_sent is not None:
            return
        last = self.highest_inbound
        debug = message.encode()[:_MAX_MESSAGE]
        self.out += _frame(GOAWAY, 0, 0, _U32X2.pack(last, ErrorCodes.NO_ERROR) + debug)
        self.goaway_sent = last
        side.state = State.DRAINING
        self._drained()

    def close(self, error_code: int, message: str) -> None:
        if self.side.state is State.CLOSED:
            return
        debug = message.encode()[:_MAX_MESSAGE]
        self.out += _frame(GOAWAY, 0, 0, _U32X2.pack(self.highest_inbound, error_code) + debug)
        self._drop_all()
        self.side.state = State.CLOSED

    def connection_lost(self, reason: str) -> list[Event]:
        events: list[Event] = []
        self._terminate(events, ErrorCodes.CANCEL, reason, remote=False)
        return events

    # -- internals ---------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        peer = self.peer
        assert peer is not None
        if size > peer.max_header_list_size:
            raise InvalidHeaders(
                f"the header block ({size} bytes) exceeds the peer's"
                f" limit of {peer.max_header_list_size} bytes"
            )

    def _is_local(self, stream_id: int) -> bool:
        return stream_id % 2 == (1 if self.client else 0)

    def _seen(self, stream_id: int) -> bool:
        if self._is_local(stream_id):
            return 0 < stream_id < self.next_stream_id
        return 0 < stream_id <= self.highest_inbound

    def _live(self, stream_id: int) -> _MStream | None:
        st = self.streams.get(stream_id)
        if st is None:
            self._check_known(stream_id)
        return st

    def _check_known(self, stream_id: int) -> None:
        if self.side.state is State.CLOSED:
            return
        if not self._seen(stream_id):
            raise UsageError(f"there is no stream {stream_id} on this connection")

    def _give_back(self, size: int) -> None:
        """Hand ``size`` bytes back to the connection window (a WINDOW frame at half)."""
        self.conn_credit += size
        if self.conn_credit >= self.settings.connection_window // 2:
            self.out += _frame(WINDOW, 0, 0, _U32.pack(self.conn_credit))
            self.recv_left += self.conn_credit
            self.conn_credit = 0

    def _stream_error(self, st: _MStream, code: int, events: list[Event]) -> None:
        self.out += _frame(RST, 0, st.stream_id, _U32.pack(code))
        self._drop_stream(st.stream_id)
        events.append(StreamReset(st.stream_id, int(code), remote=False))

    def _flush(self, st: _MStream, frames: int) -> int:
        peer = self.peer
        assert peer is not None
        out = self.out
        sent = count = 0
        sid = st.stream_id
        while st.pending:
            size = min(st.window, self.send_window, peer.max_frame_size)
            if size <= 0:
                break
            head = st.pending[0]
            if size >= len(head):
                size = len(head)
                st.pending.popleft()
                chunk = head
            else:
                chunk = head[:size]
                st.pending[0] = head[size:]
            last = not st.pending and st.end_queued
            out += _HEAD.pack(DATA, END if last else 0, sid, size)
            out += chunk
            st.window -= size
            self.send_window -= size
            st.pending_bytes -= size
            self.pending_total -= size
            sent += size
            if last:
                st.local_ended = True
            count += 1
            if count == frames:
                break
        if st.pending:
            self.blocked[sid] = st
        else:
            self.blocked.pop(sid, None)
            if st.end_queued and not st.local_ended:
                out += _HEAD.pack(DATA, END, sid, 0)
                st.local_ended = True
        self._maybe_finish(st)
        return sent

    def _flush_blocked(self, events: list[Event]) -> None:
        moved: dict[int, None] = {}
        progress = True
        while progress and self.blocked:
            progress = False
            for st in list(self.blocked.values()):
                if self._flush(st, frames=1):
                    progress = True
                    moved[st.stream_id] = None
        events.extend(WindowOpened(sid) for sid in moved)

    def _maybe_finish(self, st: _MStream) -> None:
        if st.local_ended and st.remote_ended and not st.pending:
            self.streams.pop(st.stream_id, None)
            self.blocked.pop(st.stream_id, None)

    def _drop_stream(self, stream_id: int) -> None:
        st = self.streams.pop(stream_id, None)
        self.blocked.pop(stream_id, None)
        if st is not None:
            self.pending_total -= st.pending_bytes
        held = self.unacked.pop(stream_id, 0)
        if held:
            self.unacked_total -= held
            self._give_back(held)

    def _drop_all(self) -> None:
        self.streams.clear()
        self.blocked.clear()
        self.unacked.clear()
        self.pending_total = 0
        self.unacked_total = 0
        self.pings.clear()

    def _drained(self) -> bool:
        if self.side.state is State.DRAINING and not self.streams:
            self.side.state = State.CLOSED
            self._drop_all()
            return True
        return False

    def _terminate(self, events: list[Event], code: int, reason: str, *, remote: bool) -> None:
        for sid in sorted(self.streams):
            events.append(StreamReset(sid, int(code), remote=remote))
        self._drop_all()
        self.side.state = State.CLOSED
        events.append(ConnectionTerminated(int(code), reason, remote))

    def _fail(self, events: list[Event], code: int, reason: str) -> None:
        debug = reason.encode()[:_MAX_MESSAGE]
        self.out += _frame(GOAWAY, 0, 0, _U32X2.pack(self.highest_inbound, code) + debug)
        self._terminate(events, code, reason, remote=False)
