"""Every rate limit of a server process, counted in the store so that all the processes on one
store (the workers of one server, the edges of a cluster) count together: six PIN requests for
one address spread over three edges meet the same limit of five as six sent to one.

The rule is ``zerogate.identity.otp``'s sliding window (``hit_all``: at most N hits in any
window, a refused hit recorded nowhere); the store runs it under the rows' locks
(``Store.hit_rate_windows``), so the check and the record are one step however many processes
ask at once. A store that cannot be reached refuses (the caller's error page): no limit is
skipped because its count is out of reach.

The keys are hashes of (limit name, subject): one fixed length whatever a client typed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from zerogate.identity.otp import (
    ADDRESS_LIMIT,
    IP_LIMIT,
    OIDC_START_LIMIT,
    Limit,
    RateDecision,
    hit_all,
    ip_key,
    normalise_email,
)
from zerogate.model.values import mailbox_of
from zerogate.store import Store

_KEY_DOMAIN = b"zerogate-rate-v1\x00"


def rate_key(name: str, subject: str) -> str:
    """The stored key of ``subject`` under the limit ``name`` (64 hex digits)."""
    return hashlib.sha256(_KEY_DOMAIN + f"{name}\x00{subject}".encode()).hexdigest()


class SharedLimits:
    """The server's rate limits, kept in ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        pin_address: Limit = ADDRESS_LIMIT,
        pin_ip: Limit = IP_LIMIT,
        oidc_start: Limit = OIDC_START_LIMIT,
    ) -> None:
        self.store = store
        self.pin_address = pin_address
        self.pin_ip = pin_ip
        self.oidc_start_limit = oidc_start

    async def hit(self, checks: Sequence[tuple[str, str, Limit]], now: float) -> RateDecision:
        """One hit against every ``(limit name, subject, limit)``: allowed and recorded in each
        only when all allow."""
        keys = [(rate_key(name, subject), limit.window_seconds) for name, subject, limit in checks]
        limits = [limit for _, _, limit in checks]

        def decide(windows: list[list[float]]) -> tuple[RateDecision, list[list[float]]]:
            return hit_all(windows, limits, now)

        return await self.store.hit_rate_windows(keys, decide, now=now)

    async def pin_send(self, email: str, client_ip: str, now: float) -> RateDecision:
        """A PIN for ``email`` asked from ``client_ip``: per mailbox and per client network
        (IPv6 per /64); a send refused by one is counted by neither. The mailbox is the
        address with its ``+`` subaddress dropped (``mailbox_of``): ``ann+1@…``, ``ann+2@…``
        … all land in ann's mailbox, so they share its limit instead of five PINs each."""
        return await self.hit(
            [
                ("pin-address", mailbox_of(normalise_email(email)), self.pin_address),
                ("pin-ip", ip_key(client_ip), self.pin_ip),
            ],
            now,
        )

    async def oidc_start(self, client_ip: str, now: float) -> RateDecision:
        """An OIDC login started from ``client_ip`` (each start writes a state record)."""
        return await self.hit([("oidc-start", ip_key(client_ip), self.oidc_start_limit)], now)
