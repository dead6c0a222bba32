"""The container's health check (``HEALTHCHECK`` in the Dockerfile), for both roles.

- ``zerogate server``: healthy when its HTTP listener answers at all (any status below 500:
  a request for an unknown host is a 404 from a live server) on 127.0.0.1, port
  ``$ZEROGATE_HEALTH_PORT`` (8080).
- ``zerogate connector run``: healthy when its ``/ready`` answers 200 (at least one
  connection to an edge is registered) on 127.0.0.1:20241-20245, the ports the connector's
  metrics listener takes by default.

Either one healthy is enough; exit 0 healthy, 1 not. Only the standard library: it runs in
the image with no other dependency, every 30 seconds.
"""

from __future__ import annotations

import http.client
import os
import sys

TIMEOUT = 4.0


def _status(port: int, path: str, host: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def healthy() -> bool:
    server = int(os.environ.get("ZEROGATE_HEALTH_PORT", "8080"))
    status = _status(server, "/", "healthcheck.invalid")
    if status is not None and status < 500:
        return True
    return any(_status(port, "/ready", "127.0.0.1") == 200 for port in range(20241, 20246))


if __name__ == "__main__":
    sys.exit(0 if healthy() else 1)
