"""The cluster's parts without processes (issue #14): the relay settings, the CA and node
certificates (a node certificate verifies under its cluster's CA only, for its own name),
the relayed timeouts header (hostile values refused), and how a node picks a holder."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from zerogate.edge.relay import Peers, PeerTLS, _timeouts, advertised, relay_bind
from zerogate.model.objects import Listen
from zerogate.net.upstream import Timeouts
from zerogate.store import ClusterNode, ClusterView, Presence
from zerogate.tunnel import peers


def test_relay_settings() -> None:
    assert Listen().relay is None
    assert relay_bind(None) == ("127.0.0.1", 0)
    assert relay_bind("10.0.0.5:7845") == ("10.0.0.5", 7845)
    assert Listen(relay="0.0.0.0:7845", relay_advertise="10.0.0.5").relay_advertise == "10.0.0.5"
    with pytest.raises(ValidationError, match="relay_advertise"):
        Listen(relay="0.0.0.0:7845")
    with pytest.raises(ValidationError):
        Listen(relay="edge-a:7845")  # an address to bind, not a name
    assert advertised(("0.0.0.0", 7846), "edge-a.internal") == "edge-a.internal:7846"
    assert advertised(("127.0.0.1", 40000), None) == "127.0.0.1:40000"
    assert advertised(("::1", 40000), None) == "[::1]:40000"


def test_relayed_timeouts_are_bounded() -> None:
    assert _timeouts("60,30") == Timeouts(response=60.0, idle=30.0)
    assert _timeouts("-,5") == Timeouts(response=None, idle=5.0)
    for hostile in ("", "1", "1,2,3", "nan,1", "inf,1", "-1,1", "0,1", "1e9,1", "x,y"):
        assert _timeouts(hostile) is None, hostile


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> bool:
    """Whether a TLS handshake between the two contexts succeeds (in memory)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for side, obj in (("c", c), ("s", s)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # the server's verdict on the client certificate comes after the client finished
            try:
                c.read(1)
            except ssl.SSLWantReadError:
                return True
            except ssl.SSLError:
                return False
    return False


def test_node_certificates_work_between_nodes_of_one_cluster_only() -> None:
    ca, other = peers.make_ca(), peers.make_ca()
    a, b = PeerTLS(ca, "node-a"), PeerTLS(ca, "node-b")
    stranger = PeerTLS(other, "node-b")
    assert _handshake(b.server, a.client, peers.node_name("node-b"))
    # the client checks the name: reaching node-b while meaning node-c fails
    assert not _handshake(b.server, a.client, peers.node_name("node-c"))
    # a node of another CA is refused by the server, and refuses it as a server
    assert not _handshake(b.server, stranger.client, peers.node_name("node-b"))
    assert not _handshake(stranger.server, a.client, peers.node_name("node-b"))
    # no client certificate at all: refused
    bare = ssl.create_default_context(cadata=ca.cert_pem)
    assert not _handshake(b.server, bare, peers.node_name("node-b"))
    # renewing in place keeps serving
    b.renew()
    assert _handshake(b.server, a.client, peers.node_name("node-b"))


async def test_a_holder_that_refused_is_skipped_and_tried_ones_are_not_picked_again() -> None:
    now = datetime.now(UTC)

    def node(node_id: str) -> ClusterNode:
        return ClusterNode(node_id, "h", 1, f"127.0.0.1:{len(node_id)}", now, now)

    def held(node_id: str, index: int) -> Presence:
        return Presence(node_id, f"{node_id}-{index}", "lab", f"zgc-{node_id}", index, now, now)

    me = Peers("me")
    me.update(
        ClusterView(
            (node("me"), node("a"), node("b")),
            (held("me", 0), held("a", 0), held("b", 0), held("b", 1)),
            now,
        )
    )
    assert [n.node_id for n in me.holders("lab")] == ["b", "a"]  # most connections first
    assert me.holders("other") == []
    picked = {me.pick("lab", set()).node_id for _ in range(4)}  # type: ignore[union-attr]
    assert picked == {"a", "b"}  # turns between holders, never itself
    me.mark_down("a")
    assert {me.pick("lab", set()).node_id for _ in range(4)} == {"b"}  # type: ignore[union-attr]
    assert me.pick("lab", {"b"}).node_id == "a"  # type: ignore[union-attr]  # down, but last
    assert me.pick("lab", {"a", "b"}) is None
