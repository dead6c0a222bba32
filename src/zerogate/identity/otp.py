"""One-time PIN logic as pure functions over a record the caller stores.

This module owns: making a PIN, hashing it, checking a candidate (single use, 10 minutes,
5 wrong tries), and the send rate limits (per address and per client IP: the sliding-window
rule ``slide`` / ``hit_all``, which the server runs in the store so that every process counts
together, ``zerogate.runtime.limits``; ``RateLimiter`` / ``PinSendLimiter`` keep the same rule
in memory). It stores nothing durable and sends no mail.

How a caller uses it (the portal):

1. Count the send against the limits (``hit_all`` over the address's and the client's
   windows; the portal: ``svc.limits.pin_send``); if refused, say "too many codes" whatever the
   address (the limit never depends on whether an address may log in) and send nothing.
2. ``pin, record = issue_pin(email, app, secret=..., now=now)``; store ``record`` under
   ``record.key`` — **one record per (email, app)**, so storing the new record replaces, and
   thereby voids, any earlier PIN for that pair. Mail ``pin``; never store it.
3. On submit: load the record by ``pin_key(email, app)``, ``outcome, new = check_pin(record,
   candidate, secret, now)``, and store ``new`` *atomically against the record you read*
   (compare-and-set on ``tries_left``/``used``, or a per-key lock). Otherwise parallel guesses
   each see 5 tries left, and two parallel right answers could both succeed.
   Log in only when ``outcome is PinOutcome.OK``.

PINs are stored as HMAC-SHA256 under a server secret, bound to the email and app, so a hash
for alice@ cannot be replayed for bob@ or another application, and a stolen store does not
give up PINs without the secret. Candidates are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import json
import math
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from zerogate.model.values import mailbox_of

PIN_DIGITS = 6
PIN_TTL_SECONDS = 10 * 60
PIN_MAX_TRIES = 5
#: at most this many PINs per email address per window
PIN_SENDS_PER_ADDRESS = 5
#: at most this many PINs per client IP (an IPv6 client counts per /64) per window
PIN_SENDS_PER_IP = 20
PIN_SEND_WINDOW_SECONDS = 15 * 60
#: OIDC logins started per client address (IPv6 per /64): each start writes a state record
OIDC_STARTS_PER_IP = 60
OIDC_START_WINDOW_SECONDS = 5 * 60

_HASH_DOMAIN = "zerogate-otp-v1"

#: ``rng(n)`` returns a uniform integer in ``[0, n)``, like ``secrets.randbelow``
RandBelow = Callable[[int], int]


class PinOutcome(enum.StrEnum):
    OK = "ok"
    #: wrong PIN, tries remain
    WRONG = "wrong"
    EXPIRED = "expired"
    #: no tries left (including the wrong try that used up the last one)
    EXHAUSTED = "exhausted"
    USED = "used"
    #: the PIN was requested in another browser (see ``browser_binding``); nothing changes
    ELSEWHERE = "elsewhere"


def normalise_email(email: str) -> str:
    return email.strip().lower()


def pin_key(email: str, app: str) -> tuple[str, str]:
    """The storage key of the (single) PIN record for this address and application."""
    return normalise_email(email), app


def new_pin(rng: RandBelow = secrets.randbelow) -> str:
    """A uniformly random PIN of ``PIN_DIGITS`` digits, e.g. ``"042917"``."""
    value = rng(10**PIN_DIGITS)
    if not 0 <= value < 10**PIN_DIGITS:
        raise ValueError("rng returned a value out of range")
    return f"{value:0{PIN_DIGITS}d}"


def hash_pin(pin: str, *, secret: bytes, email: str, app: str) -> str:
    """HMAC-SHA256(secret, [domain, email, app, pin]) as hex; JSON keeps the fields unambiguous."""
    if len(secret) < 16:
        raise ValueError("the PIN secret must be at least 16 bytes")
    message = json.dumps([_HASH_DOMAIN, normalise_email(email), app, pin]).encode("utf-8")
    return hmac.new(secret, message, "sha256").hexdigest()


@dataclass(frozen=True, slots=True)
class PinRecord:
    """What the caller stores for one outstanding PIN (never the PIN itself)."""

    email: str
    app: str
    pin_hash: str
    created_at: float
    expires_at: float
    tries_left: int = PIN_MAX_TRIES
    used: bool = False
    #: ``browser_binding`` of the browser that asked for the PIN ("" = none)
    browser: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return pin_key(self.email, self.app)

    def to_dict(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "app": self.app,
            "pin_hash": self.pin_hash,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "tries_left": self.tries_left,
            "used": self.used,
            "browser": self.browser,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PinRecord:
        return cls(
            email=str(data["email"]),
            app=str(data["app"]),
            pin_hash=str(data["pin_hash"]),
            created_at=float(data["created_at"]),
            expires_at=float(data["expires_at"]),
            tries_left=int(data["tries_left"]),
            used=bool(data["used"]),
            browser=str(data.get("browser", "")),
        )


def issue_pin(
    email: str,
    app: str,
    *,
    secret: bytes,
    now: float,
    rng: RandBelow = secrets.randbelow,
    ttl_seconds: float = PIN_TTL_SECONDS,
    browser: str = "",
) -> tuple[str, PinRecord]:
    """A new PIN (to send) and its record (to store under ``record.key``, replacing any old one).
    ``browser``: the ``browser_binding`` of the browser asking, checked by ``check_pin``."""
    pin = new_pin(rng)
    email = normalise_email(email)
    record = PinRecord(
        email=email,
        app=app,
        pin_hash=hash_pin(pin, secret=secret, email=email, app=app),
        created_at=now,
        expires_at=now + ttl_seconds,
        browser=browser,
    )
    return pin, record


def decoy(record: PinRecord) -> PinRecord:
    """The same record with a hash no PIN has: stored for an address that may not log in, so
    that it answers every later step (wrong, too many wrong codes, expired, another browser)
    exactly as a real one would, while no candidate can ever match."""
    return replace(record, pin_hash=secrets.token_hex(32))


_BROWSER_DOMAIN = b"zerogate-pin-browser-v1\x00"


def browser_binding(secret: bytes, token: str) -> str:
    """What a PIN record keeps of the random cookie of the browser that asked for it (an HMAC,
    so the store never holds the cookie); "" for no or a malformed cookie."""
    if not 20 <= len(token) <= 100 or not token.isascii():
        return ""
    return hmac.new(secret, _BROWSER_DOMAIN + token.encode("ascii"), "sha256").hexdigest()


def check_pin(
    record: PinRecord, candidate: str, secret: bytes, now: float, *, browser: str | None = None
) -> tuple[PinOutcome, PinRecord]:
    """The outcome of trying ``candidate`` at ``now``, and the record to store afterwards.

    ``browser`` (the portal always passes it): the ``browser_binding`` of the browser trying;
    unless it is the one the record was issued to, the outcome is ``ELSEWHERE`` and nothing
    changes (no try is used, nothing about the record is told). Then: used, exhausted,
    expired, then the comparison. A wrong (or malformed) candidate
    costs a try; the try that uses up the last one returns ``EXHAUSTED``. Spaces in the
    candidate are ignored ("123 456").
    """
    if browser is not None and not (
        browser
        and record.browser
        and hmac.compare_digest(browser.encode("ascii"), record.browser.encode("ascii"))
    ):
        return PinOutcome.ELSEWHERE, record
    if record.used:
        return PinOutcome.USED, record
    if record.tries_left <= 0:
        return PinOutcome.EXHAUSTED, record
    if now >= record.expires_at:
        return PinOutcome.EXPIRED, record
    cleaned = "".join(candidate.split())
    if not (len(cleaned) == PIN_DIGITS and cleaned.isascii() and cleaned.isdigit()):
        cleaned = ""  # still hashed and compared: same work for every candidate
    expected = record.pin_hash
    actual = hash_pin(cleaned, secret=secret, email=record.email, app=record.app)
    if cleaned and hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii")):
        return PinOutcome.OK, replace(record, used=True)
    left = record.tries_left - 1
    updated = replace(record, tries_left=left)
    return (PinOutcome.WRONG if left > 0 else PinOutcome.EXHAUSTED), updated


# --------------------------------------------------------------------------- rate limits


@dataclass(frozen=True, slots=True)
class Limit:
    events: int
    window_seconds: float


ADDRESS_LIMIT = Limit(PIN_SENDS_PER_ADDRESS, PIN_SEND_WINDOW_SECONDS)
IP_LIMIT = Limit(PIN_SENDS_PER_IP, PIN_SEND_WINDOW_SECONDS)
OIDC_START_LIMIT = Limit(OIDC_STARTS_PER_IP, OIDC_START_WINDOW_SECONDS)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    #: seconds until a new attempt can succeed; 0.0 when allowed
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """The value for an HTTP ``Retry-After`` header (whole seconds, rounded up)."""
        return str(max(1, math.ceil(self.retry_after)))


def slide(hits: Sequence[float], limit: Limit, now: float) -> tuple[RateDecision, list[float]]:
    """The sliding-window rule over one key's recorded hits (oldest first): whether a hit at
    ``now`` is allowed, and the hits still inside the window (at most ``limit.events``, the
    only ones a later decision can need). Records nothing."""
    start = now - limit.window_seconds
    kept = sorted(t for t in hits if start < t <= now + limit.window_seconds)[-limit.events :]
    if len(kept) < limit.events:
        return RateDecision(True), kept
    return RateDecision(False, kept[0] + limit.window_seconds - now), kept


def hit_all(
    windows: Sequence[Sequence[float]], limits: Sequence[Limit], now: float
) -> tuple[RateDecision, list[list[float]]]:
    """One hit against several limits at once (each with its key's recorded hits): allowed
    only when every limit allows, and then recorded in every window; a refused hit is
    recorded in none (so a flood refused by one limit does not use up another's quota).
    Returns the decision and the windows to store back."""
    if len(windows) != len(limits):
        raise ValueError("one window per limit")
    decisions: list[RateDecision] = []
    kept: list[list[float]] = []
    for hits, limit in zip(windows, limits, strict=True):
        decision, window = slide(hits, limit, now)
        decisions.append(decision)
        kept.append(window)
    if all(d.allowed for d in decisions):
        return RateDecision(True), [
            [*window, now][-limit.events :] for window, limit in zip(kept, limits, strict=True)
        ]
    return RateDecision(False, max(d.retry_after for d in decisions)), kept


class RateLimiter:
    """Sliding-window log: at most ``limit.events`` hits per key in any ``window_seconds``.

    In memory, per process; at most ``max_keys`` keys are tracked (least recently hit first out).
    Every call takes ``now``. The server keeps its limits in the store instead
    (``zerogate.runtime.limits``: the same rule, ``slide``, shared by every process).
    """

    def __init__(self, limit: Limit, *, max_keys: int = 100_000) -> None:
        if limit.events < 1 or limit.window_seconds <= 0:
            raise ValueError("a limit needs events >= 1 and a positive window")
        self.limit = limit
        self.max_keys = max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _window(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        start = now - self.limit.window_seconds
        while hits and hits[0] <= start:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def check(self, key: str, now: float) -> RateDecision:
        """Would a hit be allowed now? Records nothing."""
        hits = self._window(key, now)
        if hits is None or len(hits) < self.limit.events:
            return RateDecision(True)
        oldest = hits[len(hits) - self.limit.events]
        return RateDecision(False, oldest + self.limit.window_seconds - now)

    def record(self, key: str, now: float) -> None:
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        hits.append(now)
        self._hits.move_to_end(key)
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)

    def hit(self, key: str, now: float) -> RateDecision:
        """Record a hit if allowed; a refused hit is not recorded."""
        decision = self.check(key, now)
        if decision.allowed:
            self.record(key, now)
        return decision

    def __len__(self) -> int:
        return len(self._hits)


def ip_key(client_ip: str) -> str:
    """IPv4 address as is; IPv6 by /64 (one host usually holds a whole /64)."""
    try:
        address = ipaddress.ip_address(client_ip.strip())
    except ValueError:
        return client_ip.strip()
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class PinSendLimiter:
    """The PIN-sending limits: per address and per client IP, both must allow.

    A send refused by one limit is recorded by neither, so a flood from one IP does not use up
    the address's quota beyond what that IP was allowed.
    """

    def __init__(self, address_limit: Limit = ADDRESS_LIMIT, ip_limit: Limit = IP_LIMIT) -> None:
        self.by_address = RateLimiter(address_limit)
        self.by_ip = RateLimiter(ip_limit)

    def hit(self, email: str, client_ip: str, now: float) -> RateDecision:
        address, ip = mailbox_of(normalise_email(email)), ip_key(client_ip)
        first = self.by_address.check(address, now)
        second = self.by_ip.check(ip, now)
        if first.allowed and second.allowed:
            self.by_address.record(address, now)
            self.by_ip.record(ip, now)
            return RateDecision(True)
        return RateDecision(False, max(first.retry_after, second.retry_after))
