"""The REST API under ``/api/v1`` (FastAPI), served behind the admin front door.

Objects have the fields of the YAML file (a group posted to ``/api/v1/groups`` is the YAML group
as JSON) plus ``version``, also sent as ``ETag: "N"``. Writes go through ``AdminService``: the
same validation as ``zerogate apply`` (422 with ``problems: [{where, message}]``) and
compare-and-set on the object's version: ``PUT`` and ``DELETE`` need it, as ``If-Match: "N"``
(or a ``version`` field in a ``PUT`` body, or ``?version=N`` on a ``DELETE``); a stale one gets
409 and changes nothing. Policies live in their application: their version is the
application's. With a browser session, a configuration write that would lock the caller out of
the admin surface is refused (422, problem ``admins``; ``AdminService``'s lock-out guard) unless
``?force=true``. The caller (a ``Principal``) was established by the front door; the API never
authenticates by itself and refuses to run without one.

One router per resource: ``objects`` (generic CRUD of groups, applications, identity
providers, tunnels, service tokens), ``policies``, ``admins``, ``tokens`` (service-token
secrets, connector tokens, API tokens), ``logs``, ``tester``; ``common`` holds what they share
and ``app`` puts them together.
"""

from zerogate.admin.api.app import create_api

__all__ = ["create_api"]
