"""``X-Forwarded-Port`` (issue #15, public URL): a trusted proxy names the public port when
``portal`` is a bare host; nobody else, and never against a ``portal`` that pins a port.

Unit tests over the real ``Runtime`` and ``describe_request`` (the functions every redirect,
the OIDC ``redirect_uri`` and the PIN link are built with); the HTTP round trip is in
``test_public_url_attacks.py``.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any, cast

import pytest

from zerogate.model.objects import Settings
from zerogate.net import http
from zerogate.runtime.request import describe_request, portal_origin, public_origin_of
from zerogate.runtime.state import Runtime


def runtime(portal: str) -> Runtime:
    settings = Settings.model_validate({"portal": portal, "trusted_proxies": ["10.0.0.1/32"]})
    none = cast(Any, None)
    return Runtime(
        store=none,
        settings=settings,
        base_dir=none,
        snapshot=none,
        keyset=none,
        secret=b"",
        version=none,
        trusted=[ip_network("10.0.0.1/32")],
    )


class _Svc:
    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt


def scope(peer: str, **headers: str) -> dict[str, Any]:
    raw = [(b"host", b"wiki.example.com")] + [
        (name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return {"type": "http", "client": (peer, 50000), "headers": raw, "path": "/", "raw_path": b"/"}


def test_a_trusted_proxy_names_the_public_port_of_a_bare_portal() -> None:
    rt = runtime("auth.example.com")
    s = scope("10.0.0.1", X_Forwarded_Proto="https", X_Forwarded_Port="8443")
    req = describe_request(s, _Svc(rt))
    assert req.port == "8443"
    assert portal_origin(s, rt) == "https://auth.example.com:8443"
    assert rt.portal_origin(req.scheme, req.port) == "https://auth.example.com:8443"
    assert public_origin_of(req.scheme, req.host, rt.settings.portal_address, req.port) == (
        "https://wiki.example.com:8443"
    )


def test_the_default_port_of_the_scheme_is_left_out() -> None:
    rt = runtime("auth.example.com")
    s = scope("10.0.0.1", X_Forwarded_Proto="https", X_Forwarded_Port="443")
    req = describe_request(s, _Svc(rt))
    assert portal_origin(s, rt) == "https://auth.example.com"
    assert public_origin_of(req.scheme, req.host, "auth.example.com", req.port) == (
        "https://wiki.example.com"
    )


def test_an_untrusted_peer_cannot_choose_the_port() -> None:
    rt = runtime("auth.example.com")
    s = scope("10.0.0.2", X_Forwarded_Proto="https", X_Forwarded_Port="8443")
    req = describe_request(s, _Svc(rt))
    assert req.port is None
    assert portal_origin(s, rt) == "http://auth.example.com"
    assert public_origin_of(req.scheme, req.host, "auth.example.com", req.port) == (
        "http://wiki.example.com"
    )
    # not even a malformed value from an untrusted peer is looked at
    assert describe_request(scope("10.0.0.2", X_Forwarded_Port="x"), _Svc(rt)).port is None


@pytest.mark.parametrize("portal", ["auth.example.com:9443", "https://auth.example.com"])
def test_a_portal_that_pins_the_port_ignores_even_a_trusted_proxy(portal: str) -> None:
    rt = runtime(portal)
    s = scope("10.0.0.1", X_Forwarded_Proto="https", X_Forwarded_Port="8443")
    req = describe_request(s, _Svc(rt))
    assert req.port is None
    assert "8443" not in portal_origin(s, rt)
    assert portal_origin(s, rt) == f"https://{portal.removeprefix('https://')}"


@pytest.mark.parametrize("value", ["0", "65536", "80a", "-1", "", "٣"])
def test_a_trusted_proxys_malformed_port_fails_closed(value: str) -> None:
    rt = runtime("auth.example.com")
    with pytest.raises(http.BadRequest):
        describe_request(scope("10.0.0.1", X_Forwarded_Port=value), _Svc(rt))


def test_the_nearest_proxys_entry_counts() -> None:
    rt = runtime("auth.example.com")
    s = scope("10.0.0.1", X_Forwarded_Proto="https", X_Forwarded_Port="1234, 8443")
    assert describe_request(s, _Svc(rt)).port == "8443"
