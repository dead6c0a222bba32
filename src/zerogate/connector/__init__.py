"""The connector: the process next to the origins that keeps outbound connections to the edge.

``zerogate connector run`` builds a :class:`~zerogate.connector.supervisor.ConnectorConfig` and
runs a :class:`~zerogate.connector.supervisor.Connector`. The parts:

- ``supervisor``: HA connection slots, redial backoff, graceful drain on SIGTERM;
- ``connection``: one TLS connection to an edge around the sans-I/O
  :class:`~zerogate.tunnel.protocol.ConnectorSide` (registration, streams, PING liveness);
- ``stream``: one request stream with flow-controlled reads and writes;
- ``origin``: ingress match and forwarding to HTTP, HTTPS and Unix-socket origins, WebSockets;
- ``tls``: edge addresses and how the edge's certificate is trusted (CA, pin, system);
- ``backoff``: jittered exponential redial delays;
- ``metrics``: Prometheus metrics, ``/ready`` and ``/metrics``.

The ingress rules themselves are pure and live in :mod:`zerogate.connector.ingress`.
"""

from zerogate.connector.supervisor import Connector, ConnectorConfig

__all__ = ["Connector", "ConnectorConfig"]
