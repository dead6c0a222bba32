"""Signed, short-lived login-flow blobs: what the edge hands the portal in the login URL.

A flow says which application the user is logging in to, where to send them afterwards (``rd``,
an absolute URL the edge itself built from the request), and the hash of the state cookie the
edge set on the application's host. It is an HMAC-signed blob, not a database row, so an
unauthenticated request never writes to the store. The portal trusts ``rd`` only because the
signature proves the edge built it, and the edge checks again on the way back that ``rd`` routes
to the same application on the same host (no open redirect).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

FLOW_SECONDS = 15 * 60


class FlowError(Exception):
    """The flow is forged, damaged or expired."""


@dataclass(frozen=True)
class Flow:
    app: str
    rd: str
    state_hash: str
    expires: int


def new_state() -> str:
    return secrets.token_urlsafe(24)


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()[:32]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, b"zerogate-flow\x00" + payload.encode(), hashlib.sha256).digest())


def sign_flow(secret: bytes, flow: Flow) -> str:
    payload = _b64(
        json.dumps(
            {"a": flow.app, "r": flow.rd, "s": flow.state_hash, "e": flow.expires},
            separators=(",", ":"),
        ).encode()
    )
    return f"{payload}.{_mac(secret, payload)}"


def open_flow(secret: bytes, blob: str, now: float) -> Flow:
    payload, dot, mac = blob.partition(".")
    if not dot or len(blob) > 4096:
        raise FlowError("malformed login flow")
    if not hmac.compare_digest(_mac(secret, payload), mac):
        raise FlowError("the login link is not valid")
    try:
        data = json.loads(_unb64(payload))
        flow = Flow(str(data["a"]), str(data["r"]), str(data["s"]), int(data["e"]))
    except (ValueError, KeyError, TypeError):
        raise FlowError("malformed login flow") from None
    if flow.expires < now:
        raise FlowError("the login link has expired")
    return flow


#: how long the one-time code of a login hand-over may be redeemed
CODE_SECONDS = 60


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


LOGOUT_FIELD = "csrf"


def logout_token(secret: bytes, host: str, sessions: list[str]) -> str:
    """The CSRF token of a logout form: a MAC over this host and the session cookies the
    browser holds there. A page on another site can neither read it (same-origin policy) nor
    compute it (it has neither the server secret nor the cookies), and no extra cookie is
    needed, so a cookie tossed from a sibling host cannot supply one either."""
    mac = hmac.new(secret, b"zerogate logout\x00" + host.encode("utf-8", "replace"), "sha256")
    for value in sessions:
        mac.update(b"\x00" + value.encode("latin-1", "replace"))
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def logout_token_ok(secret: bytes, host: str, sessions: list[str], sent: str) -> bool:
    expected = logout_token(secret, host, sessions)
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace"))


def sessions_token(secret: bytes, host: str, session: str) -> str:
    """The CSRF token of the portal's sessions page (ending a session): like
    ``logout_token``, a MAC over the host and the browser's portal session cookie, under a
    tag of its own (a logout form's token does not end a session, nor the reverse)."""
    mac = hmac.new(secret, b"zerogate end session\x00" + host.encode("utf-8", "replace"), "sha256")
    mac.update(b"\x00" + session.encode("latin-1", "replace"))
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def sessions_token_ok(secret: bytes, host: str, session: str, sent: str) -> bool:
    expected = sessions_token(secret, host, session)
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace"))
