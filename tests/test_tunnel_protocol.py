"""The tunnel protocol core, tested the h11/h2 way: two sides wired together in memory.

No sockets and no event loop: ``Pair.pump`` moves ``data_to_send()`` of each side into the
other's ``receive_data`` until both are quiet, optionally splitting the bytes at arbitrary
points, and collects the events each side reported.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import random
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from zerogate.tunnel.protocol import (
    CONTROL_MAGIC,
    MAX_CONTROL_FRAME,
    PROTOCOL_H2,
    PROTOCOL_MUX,
    PROTOCOL_VERSION,
    Accepted,
    BodyChunk,
    ConnectionReady,
    ConnectionTerminated,
    ConnectorSide,
    ControlFrameReader,
    EdgeSide,
    ErrorCodes,
    Event,
    GoAwayReceived,
    Header,
    InvalidHeaders,
    PingAcked,
    RefusalReason,
    Refused,
    Registration,
    RegistrationAccepted,
    RegistrationError,
    RegistrationReceived,
    RegistrationRefused,
    RequestReceived,
    ResponseStarted,
    State,
    StreamEnded,
    StreamReset,
    TunnelSettings,
    UsageError,
    WindowOpened,
    _encode_control,
    clean_headers,
    encode_registration,
    encode_result,
    parse_result,
)

REG = Registration(
    token="zgt_secret-token-value",
    connector_id="conn-a1",
    version="0.1.0",
    connection_index=2,
    features=frozenset({"websocket"}),
)


@pytest.fixture(autouse=True, params=[PROTOCOL_H2, PROTOCOL_MUX], ids=["h2", "mux"])
def wire_protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every test runs over both wires: the connector's registration picks one."""
    protocol: int = request.param
    monkeypatch.setitem(globals(), "REG", dataclasses.replace(REG, protocol=protocol))
    return protocol


KIB = 1024
MIB = 1024 * KIB

Splitter = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> Iterable[bytes]:
    return [data] if data else []


def sized(sizes: list[int]) -> Splitter:
    """Split every transfer into pieces of the given sizes, cycling through them."""
    cycle = itertools.cycle(sizes)

    def split(data: bytes) -> Iterable[bytes]:
        i = 0
        while i < len(data):
            n = next(cycle)
            yield data[i : i + n]
            i += n

    return split


class Pair:
    def __init__(
        self,
        *,
        edge_settings: TunnelSettings | None = None,
        connector_settings: TunnelSettings | None = None,
        registration: Registration | None = None,
        split: Splitter = whole,
    ) -> None:
        self.edge = EdgeSide(edge_settings)
        self.conn = ConnectorSide(registration or REG, connector_settings)
        self.split = split
        self.edge_events: list[Event] = []
        self.conn_events: list[Event] = []

    def pump(self, rounds: int = 10_000) -> tuple[list[Event], list[Event]]:
        """Move bytes both ways until neither side has anything to send."""
        new_edge: list[Event] = []
        new_conn: list[Event] = []
        for _ in range(rounds):
            to_conn = self.edge.data_to_send()
            to_edge = self.conn.data_to_send()
            if not to_conn and not to_edge:
                break
            for piece in self.split(to_edge):
                new_edge += self.edge.receive_data(piece)
            for piece in self.split(to_conn):
                new_conn += self.conn.receive_data(piece)
        else:  # pragma: no cover - a livelock is a bug
            raise AssertionError("the sides never went quiet")
        self.edge_events += new_edge
        self.conn_events += new_conn
        return new_edge, new_conn


def connected(
    *,
    edge_settings: TunnelSettings | None = None,
    connector_settings: TunnelSettings | None = None,
) -> Pair:
    pair = Pair(edge_settings=edge_settings, connector_settings=connector_settings)
    edge_events, _ = pair.pump()
    assert edge_events == [RegistrationReceived(REG)]
    pair.edge.accept("tun-1", "conn-1", features={"websocket"})
    pair.pump()
    assert pair.edge.ready and pair.conn.ready and pair.edge.can_open_stream
    return pair


E = TypeVar("E", bound=Event)


def of(kind: type[E], events: Iterable[Event]) -> list[E]:
    return [ev for ev in events if isinstance(ev, kind)]


def body(events: Iterable[Event], stream_id: int) -> bytes:
    return b"".join(
        ev.data for ev in events if isinstance(ev, BodyChunk) and ev.stream_id == stream_id
    )


# --------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------


def test_registration_accepted_starts_http2_both_ways() -> None:
    pair = Pair()
    edge_events, conn_events = pair.pump()
    assert edge_events == [RegistrationReceived(REG)] and conn_events == []
    assert pair.edge.state is State.REGISTERING and pair.edge.registration == REG
    pair.edge.accept("tun-1", "conn-1", features=["websocket"])
    edge_events, conn_events = pair.pump()
    assert conn_events[0] == RegistrationAccepted("tun-1", "conn-1", frozenset({"websocket"}))
    assert pair.conn.accepted == Accepted("tun-1", "conn-1", frozenset({"websocket"}))
    assert of(ConnectionReady, conn_events)
    assert edge_events == [ConnectionReady(max_concurrent_streams=1000, extended_connect=True)]
    assert {pair.edge.state, pair.conn.state} == {State.OPEN}
    assert pair.edge.extended_connect


def test_registration_frame_is_length_prefixed_json_without_leaking_the_token() -> None:
    frame = encode_registration(REG)
    assert frame[:4] == CONTROL_MAGIC
    length = int.from_bytes(frame[4:8], "big")
    assert len(frame) == 8 + length
    obj = json.loads(frame[8:])
    assert (
        obj["type"] == "register" and obj["token"] == REG.token and obj["protocol"] == REG.protocol
    )
    assert obj["connection_index"] == 2 and obj["features"] == ["websocket"]
    assert REG.token not in repr(REG)
    assert REG.token not in repr(RegistrationReceived(REG))


@pytest.mark.parametrize(
    "reason", [RefusalReason.BAD_TOKEN, RefusalReason.REVOKED, RefusalReason.VERSION_UNSUPPORTED]
)
def test_registration_refused(reason: RefusalReason) -> None:
    pair = Pair()
    pair.pump()
    pair.edge.refuse(reason, "ask an administrator")
    assert pair.edge.closed
    _, conn_events = pair.pump()
    assert conn_events == [RegistrationRefused(reason, "ask an administrator")]
    assert pair.conn.closed and reason.permanent
    with pytest.raises(UsageError):
        pair.edge.accept("tun-1", "conn-1")


def test_refusal_is_possible_before_a_registration_arrived() -> None:
    edge = EdgeSide()
    edge.refuse(RefusalReason.UNAVAILABLE, "registration timed out")
    assert edge.closed and not RefusalReason.UNAVAILABLE.permanent
    conn = ConnectorSide(REG)
    assert conn.receive_data(edge.data_to_send()) == [
        RegistrationRefused(RefusalReason.UNAVAILABLE, "registration timed out")
    ]


def _control(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return CONTROL_MAGIC + len(body).to_bytes(4, "big") + body


def _edge_answer(edge: EdgeSide) -> Accepted | Refused:
    reader = ControlFrameReader()
    frame = reader.feed(edge.data_to_send())
    assert frame is not None
    return parse_result(frame)


@pytest.mark.parametrize(
    ("wire", "fragment"),
    [
        (b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", "not a zerogate tunnel control frame"),
        (b"\x16\x03\x01\x02\x00", "not a zerogate tunnel control frame"),
        (CONTROL_MAGIC + (4).to_bytes(4, "big") + b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (_control([1, 2, 3]), "JSON object"),
        (_control({"type": "hello"}), "'register'"),
        (_control({**json.loads(encode_registration(REG)[8:]), "token": ""}), "'token'"),
        (_control({**json.loads(encode_registration(REG)[8:]), "token": 7}), "'token'"),
        (_control({**json.loads(encode_registration(REG)[8:]), "connector_id": "a b"}), "id"),
        (_control({**json.loads(encode_registration(REG)[8:]), "protocol": True}), "protocol"),
        (_control({**json.loads(encode_registration(REG)[8:]), "features": ["A!"]}), "feature"),
        (_control({**json.loads(encode_registration(REG)[8:]), "connection_index": 256}), "index"),
    ],
)
def test_malformed_registration_is_refused_with_a_clear_reason(wire: bytes, fragment: str) -> None:
    edge = EdgeSide()
    events = edge.receive_data(wire)
    assert len(events) == 1 and isinstance(events[0], ConnectionTerminated)
    assert events[0].error_code == ErrorCodes.PROTOCOL_ERROR and fragment in events[0].reason
    assert edge.closed
    answer = _edge_answer(edge)
    assert isinstance(answer, Refused) and answer.reason is RefusalReason.MALFORMED
    assert edge.receive_data(encode_registration(REG)) == []


def test_nested_json_is_refused_not_crashing() -> None:
    bomb = b"[" * 8000 + b"]" * 8000  # fits the size limit, exceeds the parser's recursion limit
    edge = EdgeSide()
    (event,) = edge.receive_data(CONTROL_MAGIC + len(bomb).to_bytes(4, "big") + bomb)
    assert isinstance(event, ConnectionTerminated) and "JSON" in event.reason


def test_oversized_registration_is_refused_before_its_body_arrives() -> None:
    edge = EdgeSide()
    head = CONTROL_MAGIC + (MAX_CONTROL_FRAME + 1).to_bytes(4, "big")
    assert edge.receive_data(head[:5]) == []
    (event,) = edge.receive_data(head[5:])
    assert isinstance(event, ConnectionTerminated) and "exceeds the limit" in event.reason
    assert edge.closed
    with pytest.raises(RegistrationError, match="too large"):
        _encode_control({"pad": "x" * (MAX_CONTROL_FRAME + 1)})


def test_registration_split_into_single_bytes() -> None:
    edge = EdgeSide()
    events: list[Event] = []
    for byte in encode_registration(REG):
        events += edge.receive_data(bytes([byte]))
    assert events == [RegistrationReceived(REG)]


def test_unsupported_protocol_version_is_refused_by_the_core() -> None:
    edge = EdgeSide()
    obj = {**json.loads(encode_registration(REG)[8:]), "protocol": PROTOCOL_VERSION + 1}
    (event,) = edge.receive_data(_control(obj))
    assert isinstance(event, ConnectionTerminated)
    assert f"protocol {PROTOCOL_VERSION + 1}" in event.reason and "upgrade" in event.reason
    answer = _edge_answer(edge)
    assert isinstance(answer, Refused) and answer.reason is RefusalReason.VERSION_UNSUPPORTED
    assert "this edge speaks 1, 2" in answer.message


def test_the_default_registration_asks_for_the_multiplexer() -> None:
    assert Registration(token="t", connector_id="c", version="1").protocol == PROTOCOL_MUX


def test_connector_must_wait_for_the_answer() -> None:
    edge = EdgeSide()
    (event,) = edge.receive_data(encode_registration(REG) + b"PRI * HTTP/2.0")
    assert isinstance(event, ConnectionTerminated) and "before its registration" in event.reason
    edge = EdgeSide()
    assert edge.receive_data(encode_registration(REG)) == [RegistrationReceived(REG)]
    (event,) = edge.receive_data(b"x")
    assert isinstance(event, ConnectionTerminated) and edge.closed


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a zerogate tunnel control frame"),
        (CONTROL_MAGIC + (1 << 20).to_bytes(4, "big"), "exceeds the limit"),
        (_control({"type": "accepted", "tunnel_id": ""}), "tunnel_id"),
        (_control({"type": "maybe"}), "'accepted' or 'refused'"),
        (_control({"type": "refused", "reason": 3}), "reason"),
    ],
)
def test_malformed_answer_closes_the_connector(answer: bytes, fragment: str) -> None:
    conn = ConnectorSide(REG)
    (event,) = conn.receive_data(answer)
    assert isinstance(event, ConnectionTerminated) and fragment in event.reason
    assert conn.closed and event.error_code == ErrorCodes.PROTOCOL_ERROR


def test_unknown_refusal_reason_reads_as_temporary() -> None:
    conn = ConnectorSide(REG)
    (event,) = conn.receive_data(_control({"type": "refused", "reason": "maintenance", "x": 1}))
    assert event == RegistrationRefused(RefusalReason.UNAVAILABLE, "maintenance: ")


def test_result_codec_round_trips() -> None:
    for result in (
        Accepted("tun-1", "conn-9", frozenset({"websocket"})),
        Refused(RefusalReason.REVOKED, "token rotated at 12:00"),
    ):
        frame = ControlFrameReader().feed(encode_result(result))
        assert frame is not None and parse_result(frame) == result
    with pytest.raises(RegistrationError):
        encode_result(Accepted("bad id", "c"))


# --------------------------------------------------------------------------------------------
# Requests and responses
# --------------------------------------------------------------------------------------------


def test_get_round_trip() -> None:
    pair = connected()
    sid = pair.edge.send_request(
        "GET", "app.example.com", "/a/b?c=d", [(b"accept", b"text/html")], end_stream=True
    )
    assert sid == 1 and pair.edge.open_streams == 1
    _, conn_events = pair.pump()
    assert conn_events == [
        RequestReceived(
            1, "GET", "https", "app.example.com", "/a/b?c=d", [(b"accept", b"text/html")]
        ),
        StreamEnded(1),
    ]
    pair.conn.send_response(sid, 200, [(b"content-type", b"text/plain")])
    pair.conn.send_body(sid, b"hello, ", end_stream=False)
    pair.conn.send_body(sid, b"world", end_stream=True)
    edge_events, _ = pair.pump()
    assert edge_events[0] == ResponseStarted(1, 200, [(b"content-type", b"text/plain")])
    assert body(edge_events, 1) == b"hello, world" and edge_events[-1] == StreamEnded(1)
    assert pair.edge.open_streams == 0 and pair.conn.open_streams == 0
    assert pair.edge.buffered_bytes == 12
    pair.edge.ack(1, 12)
    assert pair.edge.buffered_bytes == 0
    pair.edge.ack(1, 0)


def test_streamed_post_round_trip() -> None:
    pair = connected()
    sid = pair.edge.send_request("POST", "app.example.com", "/upload", [(b"content-type", b"x/y")])
    chunks = [bytes([i]) * (1000 * i + 1) for i in range(20)]
    received: list[bytes] = []
    for chunk in chunks:
        pair.edge.send_body(sid, chunk)
        _, conn_events = pair.pump()
        received += [ev.data for ev in of(BodyChunk, conn_events)]
        pair.conn.ack(sid, sum(len(ev.data) for ev in of(BodyChunk, conn_events)))
    pair.edge.send_body(sid, b"", end_stream=True)
    _, conn_events = pair.pump()
    assert conn_events == [StreamEnded(sid)]
    assert b"".join(received) == b"".join(chunks)
    # The connector answers as it goes: a streamed (SSE-like) response, each chunk at once.
    pair.conn.send_response(sid, 201, [(b"content-type", b"text/event-stream")])
    for n in range(3):
        pair.conn.send_body(sid, f"data: {n}\n\n".encode())
        edge_events, _ = pair.pump()
        assert body(edge_events, sid) == f"data: {n}\n\n".encode()
    pair.conn.send_body(sid, b"", end_stream=True)
    edge_events, _ = pair.pump()
    assert edge_events == [StreamEnded(sid)] and pair.conn.open_streams == 0


def test_hundred_concurrent_streams_interleaved() -> None:
    rng = random.Random(5)
    pair = connected()
    sent: dict[int, bytes] = {}
    for i in range(100):
        payload = f"request {i};".encode() * rng.randint(1, 9000)
        sid = pair.edge.send_request("POST", f"app{i % 7}.example", f"/items/{i}")
        sent[sid] = payload
    # Bodies go out in interleaved slices.
    offsets = dict.fromkeys(sent, 0)
    while offsets:
        for sid in list(offsets):
            start = offsets[sid]
            piece = sent[sid][start : start + rng.randint(1, 40_000)]
            offsets[sid] = start + len(piece)
            done = offsets[sid] == len(sent[sid])
            pair.edge.send_body(sid, piece, end_stream=done)
            if done:
                del offsets[sid]
        pair.pump()
    requests = of(RequestReceived, pair.conn_events)
    assert len(requests) == 100 and len({ev.stream_id for ev in requests}) == 100
    assert pair.conn.open_streams == 100
    for sid, payload in sent.items():
        assert body(pair.conn_events, sid) == payload
        pair.conn.ack(sid, len(payload))
    # Answer in a shuffled order, the bodies again interleaved.
    order = list(sent)
    rng.shuffle(order)
    answers = {sid: hashlib.sha256(sent[sid]).hexdigest().encode() * 50 for sid in order}
    for sid in order:
        pair.conn.send_response(sid, 200, [(b"x-stream", str(sid).encode())])
    for half in (0, 1):
        for sid in order:
            data = answers[sid]
            part = data[: len(data) // 2] if half == 0 else data[len(data) // 2 :]
            pair.conn.send_body(sid, part, end_stream=half == 1)
        pair.pump()
    started = of(ResponseStarted, pair.edge_events)
    assert [ev.stream_id for ev in started] == order
    for sid in sent:
        assert body(pair.edge_events, sid) == answers[sid]
    assert len(of(StreamEnded, pair.edge_events)) == 100
    assert pair.edge.open_streams == 0 and pair.conn.open_streams == 0


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_64_mib_body_with_bounded_memory(direction: str) -> None:
    """The consumer acks 64 KiB per step; nothing ever holds more than the windows allow."""
    s = TunnelSettings()
    pair = connected()
    sid = pair.edge.send_request("POST", "app.example", "/big", end_stream=direction == "download")
    pair.pump()
    sender: EdgeSide | ConnectorSide
    receiver: EdgeSide | ConnectorSide
    if direction == "download":
        sender, receiver = pair.conn, pair.edge
        pair.conn.send_response(sid, 200)
    else:
        sender, receiver = pair.edge, pair.conn
    total = 64 * MIB
    block = bytes(range(256)) * 256  # 64 KiB
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    sent = acked = held_by_consumer = 0
    max_held = 0
    opened = 0
    ended = False
    bound = s.stream_window + s.send_buffer + s.max_frame_size

    def account(in_transit: int) -> None:
        nonlocal max_held
        held = pair.edge.buffered_bytes + pair.conn.buffered_bytes + in_transit
        max_held = max(max_held, held)
        assert held <= bound, f"{held} bytes held, more than {bound}"

    while not ended:
        while sent < total and (room := sender.send_capacity(sid)):
            n = min(room, len(block), total - sent)
            sender.send_body(sid, block[:n], end_stream=sent + n == total)
            sent_hash.update(block[:n])
            sent += n
        # Move bytes, measuring what is in flight on the way.
        for _ in range(100):
            to_receiver = sender.data_to_send()
            to_sender = receiver.data_to_send()
            if not to_receiver and not to_sender:
                break
            account(len(to_receiver))
            for ev in receiver.receive_data(to_receiver):
                if isinstance(ev, BodyChunk):
                    got_hash.update(ev.data)
                    held_by_consumer += len(ev.data)
                elif isinstance(ev, StreamEnded):
                    ended = True
            for ev in sender.receive_data(to_sender):
                opened += isinstance(ev, WindowOpened)
            account(0)
        # The consumer is slower than the producer: 64 KiB per step.
        n = min(64 * KIB, held_by_consumer)
        receiver.ack(sid, n)
        held_by_consumer -= n
        acked += n
    receiver.ack(sid, held_by_consumer)
    assert got_hash.digest() == sent_hash.digest() and sent == total
    assert max_held >= s.stream_window, "the test never filled the window"
    assert opened > 0
    assert receiver.buffered_bytes == 0 and sender.buffered_bytes == 0


def test_send_body_queue_is_bounded_and_window_opened_reports_progress() -> None:
    small = TunnelSettings(stream_window=65_535, send_buffer=100_000)
    pair = connected(edge_settings=small, connector_settings=small)
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    pair.conn.send_response(sid, 200)
    assert pair.conn.send_capacity(sid) == 100_000
    pair.conn.send_body(sid, b"a" * 100_000)  # 65,535 go out, the rest waits
    assert pair.conn.buffered_bytes == 100_000 - 65_535
    assert pair.conn.send_capacity(sid) == 65_535 and pair.conn.can_send(sid)
    pair.conn.send_body(sid, b"b" * 65_535)
    assert not pair.conn.can_send(sid)
    with pytest.raises(UsageError, match="send_capacity"):
        pair.conn.send_body(sid, b"c")
    edge_events, conn_events = pair.pump()
    assert conn_events == []  # the edge has not consumed anything: no window update
    assert len(body(edge_events, sid)) == 65_535
    pair.edge.ack(sid, 65_535)
    edge_events, conn_events = pair.pump()
    assert WindowOpened(sid) in conn_events and pair.conn.can_send(sid)
    assert len(body(edge_events, sid)) == 65_535


# --------------------------------------------------------------------------------------------
# Resets, PING, GOAWAY
# --------------------------------------------------------------------------------------------


def test_edge_resets_a_stream() -> None:
    pair = connected(connector_settings=TunnelSettings(send_buffer=4 * MIB))
    sid = pair.edge.send_request("GET", "a.example", "/slow", end_stream=True)
    pair.pump()
    pair.conn.send_response(sid, 200)
    pair.conn.send_body(sid, b"x" * (3 * MIB))
    pair.pump()
    assert pair.edge.buffered_bytes == 3 * MIB
    pair.edge.reset(sid)
    assert pair.edge.buffered_bytes == 0 and pair.edge.open_streams == 0
    pair.edge.ack(sid, 1000)  # released with the reset: a no-op now
    _, conn_events = pair.pump()
    assert conn_events == [StreamReset(sid, ErrorCodes.CANCEL, remote=True)]
    assert pair.conn.open_streams == 0 and pair.conn.buffered_bytes == 0
    pair.conn.send_body(sid, b"late")  # the shell's writer races the reset: ignored
    pair.conn.reset(sid)
    # The connection window was handed back: a new 3 MiB response flows.
    sid2 = pair.edge.send_request("GET", "a.example", "/again", end_stream=True)
    pair.pump()
    pair.conn.send_response(sid2, 200)
    pair.conn.send_body(sid2, b"y" * (3 * MIB), end_stream=True)
    edge_events, _ = pair.pump()
    assert len(body(edge_events, sid2)) == 3 * MIB


def test_connector_resets_a_stream() -> None:
    pair = connected()
    sid = pair.edge.send_request("PUT", "a.example", "/file")
    pair.edge.send_body(sid, b"part one")
    pair.pump()
    pair.conn.reset(sid, ErrorCodes.REFUSED_STREAM)
    edge_events, _ = pair.pump()
    (reset,) = edge_events
    assert reset == StreamReset(sid, ErrorCodes.REFUSED_STREAM, remote=True)
    assert isinstance(reset, StreamReset) and reset.retryable
    pair.edge.send_body(sid, b"part two", end_stream=True)  # ignored
    assert pair.edge.send_capacity(sid) == 0 and pair.edge.open_streams == 0
    with pytest.raises(UsageError, match="no stream 99"):
        pair.edge.send_body(99, b"?")


def test_ping_round_trip() -> None:
    pair = connected()
    assert pair.edge.ping_outstanding_since is None
    pair.edge.ping(now=100.0)
    pair.edge.ping(now=101.5)
    assert pair.edge.ping_outstanding_since == 100.0
    edge_events, conn_events = pair.pump()
    assert edge_events == [PingAcked(100.0), PingAcked(101.5)] and conn_events == []
    assert pair.edge.ping_outstanding_since is None
    pair.conn.ping(now=7.0)
    _, conn_events = pair.pump()
    assert conn_events == [PingAcked(7.0)]
    # Before HTTP/2 runs a ping is a no-op, so a shell's timer needs no special case.
    EdgeSide().ping(1.0)


def test_goaway_drains_in_flight_streams_and_refuses_new_ones() -> None:
    pair = connected()
    first = [pair.edge.send_request("GET", "a.example", f"/{i}", end_stream=True) for i in range(3)]
    pair.pump()
    late = pair.edge.send_request("GET", "a.example", "/late", end_stream=True)  # still in flight
    pair.conn.go_away("shutting down")
    assert pair.conn.state is State.DRAINING
    edge_events, conn_events = pair.pump()
    assert edge_events == [
        GoAwayReceived(first[-1], ErrorCodes.NO_ERROR, "shutting down"),
        StreamReset(late, ErrorCodes.REFUSED_STREAM, remote=True),
    ]
    assert isinstance(edge_events[1], StreamReset) and edge_events[1].retryable
    assert conn_events == []  # the late request never reached the connector's shell
    assert pair.edge.state is State.DRAINING and not pair.edge.can_open_stream
    with pytest.raises(UsageError, match="no new stream"):
        pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    for sid in first[:2]:
        pair.conn.send_response(sid, 200, end_stream=True)
    pair.pump()
    assert not pair.conn.closed and not pair.edge.closed
    pair.conn.send_response(first[2], 204)
    pair.conn.send_body(first[2], b"", end_stream=True)
    assert pair.conn.closed  # the last stream finished: the connector's shell closes now
    edge_events, _ = pair.pump()
    assert edge_events[-1] == ConnectionTerminated(ErrorCodes.NO_ERROR, "drained", remote=True)
    assert pair.edge.closed
    assert [ev.stream_id for ev in of(ResponseStarted, pair.edge_events)] == first


def test_edge_goaway_lets_the_connector_finish() -> None:
    pair = connected()
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    pair.edge.go_away()
    _, conn_events = pair.pump()
    assert conn_events == [GoAwayReceived(0, ErrorCodes.NO_ERROR, "")]
    pair.conn.send_response(sid, 200)
    pair.conn.send_body(sid, b"bye", end_stream=True)
    edge_events, conn_events = pair.pump()
    assert body(edge_events, sid) == b"bye" and pair.edge.closed
    assert conn_events == [] and pair.conn.closed


def test_goaway_without_streams_closes_at_once() -> None:
    pair = connected()
    pair.conn.go_away()
    assert pair.conn.closed
    edge_events, _ = pair.pump()
    assert [type(ev) for ev in edge_events] == [GoAwayReceived, ConnectionTerminated]


def test_goaway_with_an_error_terminates_everything() -> None:
    pair = connected()
    a = pair.edge.send_request("GET", "a.example", "/a", end_stream=True)
    pair.pump()
    pair.conn.close(ErrorCodes.INTERNAL_ERROR, "grace period over")
    assert pair.conn.closed
    edge_events, _ = pair.pump()
    assert edge_events[0] == StreamReset(a, ErrorCodes.INTERNAL_ERROR, remote=True)
    assert isinstance(edge_events[1], ConnectionTerminated)
    assert edge_events[1].remote and "grace period over" in edge_events[1].reason
    assert pair.edge.closed and pair.edge.open_streams == 0


def test_connection_lost_resets_every_stream() -> None:
    pair = connected()
    sids = [pair.edge.send_request("GET", "a.example", "/", end_stream=True) for _ in range(2)]
    events = pair.edge.connection_lost("read timeout")
    assert events == [
        StreamReset(sids[0], ErrorCodes.CANCEL, remote=False),
        StreamReset(sids[1], ErrorCodes.CANCEL, remote=False),
        ConnectionTerminated(ErrorCodes.CANCEL, "read timeout", remote=False),
    ]
    assert pair.edge.closed and pair.edge.connection_lost() == []
    assert pair.edge.receive_data(b"anything") == []


# --------------------------------------------------------------------------------------------
# WebSocket (extended CONNECT) and headers
# --------------------------------------------------------------------------------------------


def test_extended_connect_carries_bytes_both_ways() -> None:
    pair = connected()
    sid = pair.edge.send_request(
        "CONNECT",
        "chat.example",
        "/socket?room=1",
        [(b"sec-websocket-protocol", b"chat"), (b"sec-websocket-version", b"13")],
        protocol="websocket",
    )
    _, conn_events = pair.pump()
    assert conn_events == [
        RequestReceived(
            sid,
            "CONNECT",
            "https",
            "chat.example",
            "/socket?room=1",
            [(b"sec-websocket-protocol", b"chat"), (b"sec-websocket-version", b"13")],
            protocol="websocket",
        )
    ]
    pair.conn.send_response(sid, 200, [(b"sec-websocket-protocol", b"chat")])
    edge_events, _ = pair.pump()
    assert edge_events == [ResponseStarted(sid, 200, [(b"sec-websocket-protocol", b"chat")])]
    for n in range(5):
        to_origin = b"\x81\x85mask" + bytes([n]) * 5
        to_client = b"\x81\x05" + bytes([n]) * 5
        pair.edge.send_body(sid, to_origin)
        pair.conn.send_body(sid, to_client)
        edge_events, conn_events = pair.pump()
        assert body(conn_events, sid) == to_origin and body(edge_events, sid) == to_client
    pair.edge.send_body(sid, b"", end_stream=True)
    pair.conn.send_body(sid, b"", end_stream=True)
    pair.pump()
    assert pair.edge.open_streams == 0 and pair.conn.open_streams == 0


def test_extended_connect_misuse() -> None:
    pair = connected()
    with pytest.raises(UsageError, match="CONNECT"):
        pair.edge.send_request("GET", "a.example", "/", protocol="websocket")
    with pytest.raises(UsageError, match="plain CONNECT"):
        pair.edge.send_request("CONNECT", "a.example:443", "/")


def test_hop_by_hop_headers_never_cross() -> None:
    pair = connected()
    sid = pair.edge.send_request(
        "POST",
        "app.example",
        "/",
        [
            (b"Host", b"app.example"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"TE", b"gzip, trailers;q=0.5"),
            (b"X-Private", b"hop"),
            (b"X-Kept", b"  padded value\t"),
            (b"Cookie", b"a=1"),
        ],
    )
    _, conn_events = pair.pump()
    (request,) = conn_events
    assert isinstance(request, RequestReceived)
    assert request.headers == [
        (b"te", b"trailers"),
        (b"x-kept", b"padded value"),
        (b"cookie", b"a=1"),
    ]
    pair.conn.send_response(
        sid,
        200,
        [
            (b"Connection", b"close"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Upgrade", b"websocket"),
            (b"TE", b"trailers"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Type", b"text/plain"),
        ],
    )
    edge_events, _ = pair.pump()
    assert edge_events == [
        ResponseStarted(sid, 200, [(b"set-cookie", b"b=2"), (b"content-type", b"text/plain")])
    ]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-bad", b"a\r\nInjected: 1")],
        [(b"x-nul", b"a\x00b")],
        [(b":path", b"/other")],
        [(b"bad name", b"v")],
        [(b"", b"v")],
        [(b"caf\xc3\xa9", b"v")],
    ],
)
def test_invalid_headers_raise_before_anything_is_sent(headers: list[tuple[bytes, bytes]]) -> None:
    pair = connected()
    with pytest.raises(InvalidHeaders):
        pair.edge.send_request("GET", "a.example", "/", headers, end_stream=True)
    assert pair.edge.open_streams == 0 and pair.edge.data_to_send() == b""
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    with pytest.raises(InvalidHeaders):
        pair.conn.send_response(sid, 200, headers)
    pair.conn.send_response(sid, 502, end_stream=True)  # what a connector shell does instead
    edge_events, _ = pair.pump()
    assert edge_events[0] == ResponseStarted(sid, 502, [])


@pytest.mark.parametrize(
    ("method", "authority", "path"),
    [
        ("GE T", "a.example", "/"),
        ("GET", "a.example/evil", "/"),
        ("GET", "", "/"),
        ("GET", "user@a.example", "/"),
        ("GET", "a.example", "relative"),
        ("GET", "a.example", "/with space"),
        ("GET", "a.example", "/caf\u00e9"),
    ],
)
def test_invalid_pseudo_headers(method: str, authority: str, path: str) -> None:
    pair = connected()
    with pytest.raises(InvalidHeaders):
        pair.edge.send_request(method, authority, path, end_stream=True)


def test_invalid_status_and_oversized_header_block() -> None:
    pair = connected(connector_settings=TunnelSettings(max_header_list_size=4096))
    with pytest.raises(InvalidHeaders, match="exceeds the peer's limit"):
        pair.edge.send_request("GET", "a.example", "/", [(b"cookie", b"x" * 5000)])
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    for status in (101, 100, 600, True):
        with pytest.raises(InvalidHeaders):
            pair.conn.send_response(sid, status)


def test_clean_headers_rules() -> None:
    assert clean_headers([(b"X-A", b"1"), (b"HOST", b"h")], request=False) == [
        (b"x-a", b"1"),
        (b"host", b"h"),
    ]
    assert clean_headers([(b"te", b"gzip")], request=True) == []
    assert clean_headers([(b"te", b"trailers")], request=False) == []
    assert clean_headers([(b"connection", b"te"), (b"te", b"trailers")], request=True) == [
        (b"te", b"trailers")
    ]


def test_usage_errors_name_the_mistake() -> None:
    edge = EdgeSide()
    with pytest.raises(UsageError, match="no new stream"):
        edge.send_request("GET", "a.example", "/")
    with pytest.raises(UsageError, match="RegistrationReceived"):
        edge.accept("tun-1", "conn-1")
    pair = connected()
    sid = pair.edge.send_request("POST", "a.example", "/")  # request body still open
    pair.pump()
    with pytest.raises(UsageError, match="response head before its body"):
        pair.conn.send_body(sid, b"x")
    pair.conn.send_response(sid, 200)
    with pytest.raises(UsageError, match="already sent"):
        pair.conn.send_response(sid, 200)
    pair.conn.send_body(sid, b"abc", end_stream=True)
    with pytest.raises(UsageError, match="already ended"):
        pair.conn.send_body(sid, b"x")
    pair.pump()
    with pytest.raises(UsageError, match="exceeds the 3 received"):
        pair.edge.ack(sid, 4)
    with pytest.raises(UsageError, match="negative"):
        pair.edge.ack(sid, -1)
    with pytest.raises(UsageError, match="no stream 7"):
        pair.edge.ack(7, 1)
    with pytest.raises(ValueError, match="stream_window"):
        TunnelSettings(stream_window=1000)


# --------------------------------------------------------------------------------------------
# Malformed peers
# --------------------------------------------------------------------------------------------


def _goaway(last: int, code: int, stream: int = 0, length: int | None = None) -> bytes:
    payload = last.to_bytes(4, "big") + code.to_bytes(4, "big")
    size = len(payload) if length is None else length
    return size.to_bytes(3, "big") + b"\x07\x00" + stream.to_bytes(4, "big") + payload[:size]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", ErrorCodes.FRAME_SIZE_ERROR),
        (b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00", ErrorCodes.PROTOCOL_ERROR),
        (_goaway(0, 0, stream=3), ErrorCodes.PROTOCOL_ERROR),
        (_goaway(0, 0, length=4), ErrorCodes.FRAME_SIZE_ERROR),
        ((1 << 20).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01", ErrorCodes.FRAME_SIZE_ERROR),
    ],
)
@pytest.mark.only_wire(PROTOCOL_H2)
def test_garbage_after_registration_is_a_protocol_error_event(wire: bytes, code: int) -> None:
    pair = connected()
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    events = pair.edge.receive_data(wire)
    assert events[0] == StreamReset(sid, code, remote=False)
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == code
    assert "protocol error" in events[-1].reason and pair.edge.closed
    goaway = pair.edge.data_to_send()
    assert b"\x07\x00\x00\x00\x00\x00" in goaway  # a GOAWAY frame tells the peer why
    assert pair.edge.receive_data(b"more") == []
    pair.edge.send_body(sid, b"x")  # a shell finishing its writes after the error: ignored
    pair.edge.reset(sid)


def test_garbage_instead_of_the_preface_to_the_connector() -> None:
    conn = ConnectorSide(REG)
    (accepted, terminated) = conn.receive_data(
        encode_result(Accepted("t", "c")) + b"GET / HTTP/1.1\r\n\r\n" * 2
    )
    assert isinstance(accepted, RegistrationAccepted)
    assert isinstance(terminated, ConnectionTerminated) and conn.closed


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_registration_bytes_never_raise(data: bytes) -> None:
    edge = EdgeSide()
    events = edge.receive_data(data)
    if edge.closed:
        assert isinstance(events[-1], ConnectionTerminated)
    conn = ConnectorSide(REG)
    events = conn.receive_data(data)
    if conn.closed:
        assert isinstance(events[-1], ConnectionTerminated | RegistrationRefused)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=600), st.booleans())
def test_arbitrary_http2_bytes_never_raise(data: bytes, to_edge: bool) -> None:
    pair = connected()
    pair.edge.send_request("POST", "a.example", "/", [(b"a", b"b")])
    pair.pump()
    side = pair.edge if to_edge else pair.conn
    # A valid frame header in front makes hypothesis explore frame payloads, not just headers.
    for wire in (data, b"\x00\x00" + bytes([min(len(data), 255)]) + data):
        events = side.receive_data(wire)
        if side.closed:
            assert isinstance(events[-1], ConnectionTerminated)
            break


# --------------------------------------------------------------------------------------------
# Chunking does not matter
# --------------------------------------------------------------------------------------------


def _scenario(split: Splitter) -> tuple[list[Event], list[Event]]:
    pair = Pair(split=split)
    pair.pump()
    pair.edge.accept("tun-1", "conn-1")
    pair.pump()
    one = pair.edge.send_request("GET", "a.example", "/one", [(b"accept", b"*/*")], end_stream=True)
    two = pair.edge.send_request("POST", "a.example", "/two", [(b"content-type", b"text/plain")])
    pair.edge.send_body(two, bytes(range(256)) * 300)
    pair.edge.ping(1.0)
    pair.pump()
    pair.conn.send_response(one, 200, [(b"x-a", b"1")])
    pair.conn.send_body(one, b"y" * 100_000, end_stream=True)
    pair.edge.send_body(two, b"tail", end_stream=True)
    ws = pair.edge.send_request("CONNECT", "a.example", "/ws", protocol="websocket")
    pair.pump()
    pair.conn.send_response(two, 201)
    pair.conn.reset(two)
    pair.conn.send_response(ws, 200)
    pair.conn.send_body(ws, b"\x81\x02hi")
    pair.edge.send_body(ws, b"\x81\x82abcd\x00\x00")
    pair.conn.ping(2.0)
    pair.pump()
    last = pair.edge.send_request("GET", "a.example", "/last", end_stream=True)
    pair.pump()
    pair.conn.go_away("bye")
    pair.conn.send_response(last, 204, end_stream=True)
    pair.pump()
    pair.edge.send_body(ws, b"", end_stream=True)
    pair.conn.send_body(ws, b"", end_stream=True)
    pair.pump()
    assert pair.edge.closed and pair.conn.closed
    return pair.edge_events, pair.conn_events


@functools.cache
def _baseline(protocol: int) -> tuple[list[Event], list[Event]]:
    return _scenario(whole)


def baseline() -> tuple[list[Event], list[Event]]:
    return _baseline(REG.protocol)


def test_scenario_baseline_is_complete() -> None:
    edge_events, conn_events = baseline()
    kinds = {type(ev) for ev in edge_events + conn_events}
    assert {ResponseStarted, BodyChunk, StreamReset, PingAcked, GoAwayReceived} <= kinds
    assert isinstance(edge_events[-1], ConnectionTerminated)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40))
def test_arbitrary_chunking_gives_the_same_events(sizes: list[int]) -> None:
    assert _scenario(sized(sizes)) == baseline()


def test_single_byte_chunking_gives_the_same_events() -> None:
    assert _scenario(sized([1])) == baseline()


def test_content_length_crosses_once_as_plain_digits() -> None:
    assert clean_headers([(b"Content-Length", b" 007 ")], request=True) == [
        (b"content-length", b"7")
    ]
    assert clean_headers(
        [(b"content-length", b"5"), (b"content-length", b"5, 5")], request=False
    ) == [(b"content-length", b"5")]
    for bad in ([(b"content-length", b"5, 6")], [(b"content-length", b"-1")],
                [(b"content-length", b"5"), (b"content-length", b"6")],
                [(b"content-length", b"0x10")]):  # fmt: skip
        with pytest.raises(InvalidHeaders):
            clean_headers(bad, request=True)


# --------------------------------------------------------------------------------------------
# The multiplexer's own frames (protocol 2)
# --------------------------------------------------------------------------------------------


def _mux_frame(
    kind: int, flags: int, stream: int, payload: bytes, length: int | None = None
) -> bytes:
    size = len(payload) if length is None else length
    return bytes([kind, flags]) + stream.to_bytes(4, "big") + size.to_bytes(4, "big") + payload


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", ErrorCodes.FRAME_SIZE_ERROR),
        (_mux_frame(0x42, 0, 0, b""), ErrorCodes.PROTOCOL_ERROR),  # unknown type
        (_mux_frame(7, 0, 0, b"\0" * 4), ErrorCodes.PROTOCOL_ERROR),  # short GOAWAY
        (_mux_frame(7, 0, 3, b"\0" * 8), ErrorCodes.PROTOCOL_ERROR),  # GOAWAY on a stream
        (_mux_frame(0, 0, 1, b"", length=1 << 20), ErrorCodes.FRAME_SIZE_ERROR),  # from the header
        (_mux_frame(8, 0, 0, b"\0" * 24), ErrorCodes.PROTOCOL_ERROR),  # a second SETTINGS
        (_mux_frame(4, 0, 0, b"\x7f\xff\xff\xff"), ErrorCodes.FLOW_CONTROL_ERROR),
        (_mux_frame(0, 0, 99, b"x"), ErrorCodes.PROTOCOL_ERROR),  # DATA on a stream never opened
        (_mux_frame(1, 0, 1, b"200\0x-a\0b\r\nc"), ErrorCodes.PROTOCOL_ERROR),  # CR LF in a value
    ],
)
@pytest.mark.only_wire(PROTOCOL_MUX)
def test_mux_garbage_after_registration_is_a_protocol_error_event(frame: bytes, code: int) -> None:
    pair = connected()
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    assert pair.edge.data_to_send()
    events = pair.edge.receive_data(frame)
    assert events[0] == StreamReset(sid, code, remote=False)
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].error_code == code
    assert "protocol error" in events[-1].reason and pair.edge.closed
    goaway = pair.edge.data_to_send()
    assert goaway[:2] == b"\x07\x00" and int.from_bytes(goaway[14:18], "big") == code
    assert pair.edge.receive_data(b"more") == []


@pytest.mark.only_wire(PROTOCOL_MUX)
def test_mux_data_beyond_the_window_is_a_flow_control_error() -> None:
    small = TunnelSettings(stream_window=65_535, max_frame_size=65_535)
    pair = connected(edge_settings=small)
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    pair.conn.send_response(sid, 200)
    pair.edge.receive_data(pair.conn.data_to_send())
    too_much = _mux_frame(0, 0, sid, b"x" * 65_535) + _mux_frame(0, 0, sid, b"y")
    events = pair.edge.receive_data(too_much)
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCodes.FLOW_CONTROL_ERROR


@pytest.mark.parametrize("extra", [b"overflow", b""])
def test_a_body_that_disagrees_with_its_content_length_never_reaches_the_shell(
    extra: bytes,
) -> None:
    """More body than announced (or fewer bytes then the end) resets the stream, both wires."""
    pair = connected()
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    pair.conn.send_response(sid, 200, [(b"content-length", b"5")])
    pair.conn.send_body(sid, b"hello" + extra if extra else b"hel", end_stream=True)
    edge_events, _ = pair.pump()
    assert of(StreamReset, edge_events) == [StreamReset(sid, ErrorCodes.PROTOCOL_ERROR, False)]
    assert of(StreamEnded, edge_events) == []
    assert len(body(edge_events, sid)) <= 5


def test_mux_request_split_into_single_bytes_gives_the_same_request() -> None:
    pair = connected()
    headers = [(b"accept", b"*/*"), (b"x-empty", b""), (b"content-length", b"3")]
    sid = pair.edge.send_request("POST", "a.example:8443", "/p?q=1", headers)
    pair.edge.send_body(sid, b"abc", end_stream=True)
    events: list[Event] = []
    for byte in pair.edge.data_to_send():
        events += pair.conn.receive_data(bytes([byte]))
    (request,) = of(RequestReceived, events)
    assert (request.method, request.authority, request.path) == ("POST", "a.example:8443", "/p?q=1")
    assert request.headers == headers and body(events, sid) == b"abc"
    assert of(StreamEnded, events) == [StreamEnded(sid)]


@pytest.mark.parametrize(
    "head",
    [
        b"200\0connection\0close",
        b"200\0transfer-encoding\0chunked",
        b"200\0Set-Cookie\0a=1",
        b"200\0x\0a\0odd",
        b"101",
        b"200\0content-length\0x5",
    ],
)
@pytest.mark.only_wire(PROTOCOL_MUX)
def test_mux_a_response_head_http2_would_refuse_resets_the_stream(head: bytes) -> None:
    pair = connected()
    sid = pair.edge.send_request("GET", "a.example", "/", end_stream=True)
    pair.pump()
    events = pair.edge.receive_data(_mux_frame(1, 0, sid, head))
    assert events == [StreamReset(sid, ErrorCodes.PROTOCOL_ERROR, remote=False)]
    assert not pair.edge.closed and pair.edge.can_open_stream


# ---------------------------------------------------------------------------- clean_headers


def _reference_clean(headers: list[tuple[bytes, bytes]], *, request: bool) -> list[Header]:
    """The rules of ``clean_headers`` written plainly, in two passes (the one-pass version
    with its name cache must give the same answer, or refuse the same inputs)."""
    import re

    token = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
    kept, listed = [], set()
    for name, value in headers:
        lname = name.lower()
        if token.fullmatch(lname) is None:
            raise InvalidHeaders("name")
        value = value.strip(b" \t")
        if any(c in value for c in (b"\r", b"\n", b"\0")):
            raise InvalidHeaders("value")
        if lname == b"connection":
            listed |= {t.strip().lower() for t in value.split(b",")}
        else:
            kept.append((lname, value))
    out: list[Header] = []
    length = None
    specific = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding"}
    for lname, value in kept:
        if lname == b"content-length":
            parts = {p.strip() for p in value.split(b",")}
            if len(parts) != 1 or not next(iter(parts)).isdigit():
                raise InvalidHeaders("length")
            digits = str(int(next(iter(parts)))).encode()
            if length is not None and digits != length:
                raise InvalidHeaders("two lengths")
            if length is None:
                length = digits
                out.append((lname, digits))
        elif lname == b"te":
            if request and b"trailers" in [
                p.split(b";")[0].strip().lower() for p in value.split(b",")
            ]:
                out.append((b"te", b"trailers"))
        elif lname in specific | {b"upgrade"} or lname in listed or (request and lname == b"host"):
            continue
        else:
            out.append((lname, value))
    return out


_NAMES = st.sampled_from(
    [b"Host", b"host", b"Connection", b"connection", b"Keep-Alive", b"TE", b"te",
     b"Content-Length", b"content-length", b"X-A", b"x-a", b"Upgrade", b"Transfer-Encoding",
     b"Accept", b"bad name", b":path", b"Set-Cookie"]
)  # fmt: skip
_VALUES = st.sampled_from(
    [b"", b"x-a", b"close, X-A", b"keep-alive", b"trailers", b"gzip, trailers;q=1", b"5",
     b" 5 ", b"5, 5", b"5, 6", b"-1", b"a\r\nb", b"ok", b"host", b"te", b"content-length"]
)  # fmt: skip


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.booleans())
@example([(b"Host", b"h"), (b"Connection", b"host")], False)
@example([(b"TE", b"trailers"), (b"Connection", b"te, x-a"), (b"X-A", b"1")], True)
def test_clean_headers_agrees_with_the_plain_two_pass_rules(
    headers: list[tuple[bytes, bytes]], request: bool
) -> None:
    try:
        expected: list[Header] | type[InvalidHeaders] = _reference_clean(headers, request=request)
    except InvalidHeaders:
        expected = InvalidHeaders
    for _ in range(2):  # the second time the names come from the cache
        try:
            got: list[Header] | type[InvalidHeaders] = clean_headers(headers, request=request)
        except InvalidHeaders:
            got = InvalidHeaders
        assert got == expected
