"""The tunnel: connectors dial out to the edge, and the edge sends requests back through them.

``protocol`` is the sans-I/O core both ends share (registration, HTTP/2 with the roles reversed,
flow control, PING, GOAWAY); ``token``, ``certs`` and ``ingress`` are the other I/O-free parts;
``edge`` is the edge's asyncio shell (the connector's is ``zerogate.connector``). Import the
module you need: the package re-exports nothing. See ``docs/tunnel-protocol.md``.
"""
