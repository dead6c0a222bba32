"""The runtime layer: what one server process holds while it runs, shared by the surfaces.

``state`` is the in-memory state (snapshot, keys, revocations, credentials) and its watcher;
``services`` the per-process bundle the surfaces get (typed against small protocols, built
only by ``zerogate.server``); ``cookies`` zerogate's cookie rules; ``sessions`` reading the
portal's global session; ``request`` what a request says about itself (host, path, client).
The surfaces (edge, portal, admin) import these instead of each other.
"""

from zerogate.runtime.state import (
    PORTAL_AUDIENCE,
    Runtime,
    audience_tag,
    ensure_keyset,
    rotate_keys,
)

__all__ = [
    "PORTAL_AUDIENCE",
    "Runtime",
    "audience_tag",
    "ensure_keyset",
    "rotate_keys",
]
