"""The tunnel's I/O-free parts, shared by the edge and the connector.

``protocol`` is the sans-I/O core both ends share (registration, HTTP/2 with the roles reversed,
flow control, PING, GOAWAY); ``token`` the connector token format; ``certs`` the listener's
generated certificate; ``routes`` which tunnel serves an application and the listener's
addresses. The asyncio shells are ``zerogate.edge.tunnel`` (the edge's listener, an
``Upstream``) and ``zerogate.connector``. Import the module you need: the package re-exports
nothing. See ``docs/tunnel-protocol.md``.
"""
