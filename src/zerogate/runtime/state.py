"""The in-memory state a server process decides with, and the watcher that keeps it current.

Nothing on the request path reads the database: the process holds the compiled snapshot, the
signing keys, the revocation list, the service-token and tunnel credentials in memory, and a
background task polls the store's one-row ``state()`` (twice a second) and reloads only what
changed. So a
``zerogate apply`` or a logout elsewhere takes effect here within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from zerogate.geoip import GeoIp
from zerogate.identity import Claims, KeySet, TokenVerifier, VerifiedTokenCache
from zerogate.identity.keys import Algorithm
from zerogate.identity.secret_hash import SecretKind, secret_matches
from zerogate.identity.tokens import TYPE_APP, TokenType
from zerogate.model.objects import OneTimePinProvider, Settings, default_audience
from zerogate.model.values import ip_network, mailbox_of, parse_duration
from zerogate.policy import Snapshot, compile_snapshot
from zerogate.policy.engine import CompiledApp
from zerogate.store import ServiceCredential, Session, StateVersion, Store, TunnelCredential

log = logging.getLogger("zerogate.server")

POLL_SECONDS = 0.5
#: a session's last seen is written at most this often (per process)
SEEN_SECONDS = 60.0
#: an expired portal session's row is kept at least this long (``Runtime.session_keep``)
SESSION_KEEP_FLOOR = timedelta(days=30)
#: how often the watcher forgets ended sessions no token can name any more (seconds)
FORGET_EVERY = 600.0
KEY_OVERLAP_SECONDS = 7 * 86400


def settle_heap() -> None:
    """Move what is alive now (the snapshot just loaded, the objects it came from) out of
    the cyclic garbage collector's reach. A configuration of 2,000 applications is
    ~10^6 long-lived objects, and every full collection walked them all while holding the
    interpreter lock: 0.8 s in which no request was served, again at each swap. Replaced
    snapshots are still freed by reference counting (they hold no cycles we rely on the
    collector for)."""
    gc.freeze()


@functools.lru_cache(maxsize=4096)
def audience_tag(app_name: str) -> str:
    """The audience an application named ``app_name`` has unless one is stored for it
    (``Application.audience``); the edge uses ``CompiledApp.audience``."""
    return default_audience(app_name)


PORTAL_AUDIENCE = "zerogate-portal"


#: the port a URL leaves out for each scheme
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass
class Runtime:
    """One process's view of the configuration and identity state."""

    store: Store
    settings: Settings
    base_dir: Path
    snapshot: Snapshot
    keyset: KeySet
    secret: bytes
    version: StateVersion
    revoked: dict[str, float] = field(default_factory=dict)  # email -> not_before (epoch)
    #: the ids of portal sessions that were ended (their tokens' ``sid`` claim) -> when this
    #: process learned it (epoch); forgotten ``session_keep`` later (``forget_ended``)
    ended: dict[str, float] = field(default_factory=dict)
    #: last-seen marks waiting for the watcher to write: session id -> (when, address)
    _seen_pending: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    #: session id -> when this process last queued its last-seen mark
    _seen_marked: dict[str, float] = field(default_factory=dict)
    _seen_flushed: float = 0.0
    credentials: dict[str, ServiceCredential] = field(default_factory=dict)  # by client id
    tunnel_credentials: dict[str, TunnelCredential] = field(default_factory=dict)  # by tunnel id
    #: called (no arguments) after the tunnel credentials were reloaded, so the tunnel
    #: listener can close connections whose token was rotated or deleted
    on_tunnel_credentials: list[Callable[[], None]] = field(default_factory=list)
    cache: VerifiedTokenCache = field(default_factory=VerifiedTokenCache)
    geoip: GeoIp | None = None
    trusted: list[IPv4Network | IPv6Network] = field(default_factory=list)
    metrics_allow: list[IPv4Network | IPv6Network] = field(default_factory=list)
    swaps: int = 0
    _task: asyncio.Task[None] | None = None
    #: when (``time.monotonic``) the watcher next forgets old ended sessions
    _next_forget: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: one refresh at a time: the watcher (woken by the store's announcement) and a write
    #: made through this process (``AdminService.on_change``) would otherwise both see the
    #: new version and compile and swap it twice
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    # ------------------------------------------------------------------ derived

    @property
    def portal_host(self) -> str:
        address = self.settings.portal_address
        return address.rpartition(":")[0] if ":" in address else address

    @property
    def scheme(self) -> str:
        """The transport: ``https`` when this server itself serves TLS (``listen.tls``)."""
        return "https" if self.settings.listen.tls is not None else "http"

    @property
    def public_scheme(self) -> str | None:
        """The scheme a URL ``portal`` pins for every host; None: each request's own
        (``runtime.request.request_scheme``)."""
        return self.settings.portal_scheme

    @property
    def public_port_pinned(self) -> bool:
        """Whether ``portal`` fixes the public port: a URL (its port, or the scheme's default)
        or a ``host:port``. Only a bare host leaves it to a trusted proxy's
        ``X-Forwarded-Port`` (``runtime.request``)."""
        if self.public_scheme is not None:
            return True
        address = self.settings.portal_address
        _, colon, port = address.rpartition(":")
        return bool(colon) and port.isdigit()

    def portal_origin(self, scheme: str, port: str | None = None) -> str:
        """``scheme://portal[:port]`` for a request whose public scheme is ``scheme``
        (``Request.scheme``; the pinned one when ``portal`` is a URL) and whose trusted proxy
        named the public ``port`` (``Request.port``: only when ``portal`` pins none)."""
        scheme = self.public_scheme or scheme
        address = self.settings.portal_address
        if port is None or self.public_port_pinned or port == _DEFAULT_PORTS.get(scheme):
            return f"{scheme}://{address}"
        return f"{scheme}://{address}:{port}"

    @property
    def issuer(self) -> str:
        """``iss`` of every token: ``https://<portal>``, or the scheme a URL ``portal`` names."""
        return self.settings.issuer

    def verifier(self, token_type: TokenType = TYPE_APP) -> TokenVerifier:
        return TokenVerifier(self.keyset, self.issuer, token_type=token_type, cache=self.cache)

    def otp_provider(self, app: CompiledApp) -> OneTimePinProvider | None:
        allowed = app.model.identity_providers
        for idp in self.snapshot.objects.identity_providers:
            if isinstance(idp, OneTimePinProvider) and (allowed is None or idp.name in allowed):
                return idp
        return None

    def session_seconds(self, app: CompiledApp, policy_name: str | None) -> int:
        """The session length: the policy's overrides the application's, which overrides the
        global default."""
        for policy in app.model.policies:
            if policy.name == policy_name and policy.session_duration:
                return int(parse_duration(policy.session_duration).total_seconds())
        if app.model.session_duration:
            return int(parse_duration(app.model.session_duration).total_seconds())
        return int(parse_duration(self.settings.session_duration).total_seconds())

    def session_keep(self) -> timedelta:
        """How long an expired portal session's row (and the revocation that ended it) must
        be kept: an application token handed out just before the session expired lives as
        long as the longest ``session_duration`` configured anywhere (settings, applications,
        policies), and at least ``SESSION_KEEP_FLOOR`` (tokens issued under a longer
        duration that was shortened since)."""
        longest = parse_duration(self.settings.session_duration)
        for app in self.snapshot.objects.applications:
            for text in (app.session_duration, *(p.session_duration for p in app.policies)):
                if text:
                    longest = max(longest, parse_duration(text))
        return max(longest, SESSION_KEEP_FLOOR)

    def forget_ended(self, now: float) -> int:
        """Forget the ended sessions learned more than ``session_keep`` ago: a token naming
        one was issued before it ended, so it has expired by then (the store trims their
        rows on the same rule). How many were forgotten."""
        cut = now - self.session_keep().total_seconds()
        old = [sid for sid, learned in self.ended.items() if learned < cut]
        for sid in old:
            del self.ended[sid]
        return len(old)

    def is_revoked(self, email: str, issued_at: float) -> bool:
        """A session of ``email`` issued before its revocation, or before its mailbox's
        (logging ``ann@`` out everywhere ends ``ann+x@``'s sessions too: ``mailbox_of``)."""
        email = email.lower()
        not_before = self.revoked.get(email)
        if not_before is not None and issued_at < not_before:
            return True
        if "+" in email:
            not_before = self.revoked.get(mailbox_of(email))
            return not_before is not None and issued_at < not_before
        return False

    def rejects(self, claims: Claims) -> bool:
        """Whether a verified token no longer counts: its address was logged out everywhere
        after it was issued, or its session (the ``sid`` claim) was ended."""
        if self.is_revoked(claims.email, claims.iat):
            return True
        sid = claims.extra.get("sid")
        return isinstance(sid, str) and sid in self.ended

    def seen(self, claims: Claims, ip: str | None, now: float) -> None:
        """Note that the session of ``claims`` was used (from ``ip``): at most once a
        minute per session, a mark the watcher writes in a batch later (no I/O here)."""
        sid = claims.extra.get("sid")
        if not isinstance(sid, str):
            return
        last = self._seen_marked.get(sid)
        if last is not None and now - last < SEEN_SECONDS:
            return
        self._seen_marked[sid] = now
        self._seen_pending[sid] = (now, ip)

    async def flush_seen(self, now: float | None = None) -> int:
        """Write the waiting last-seen marks (the watcher does, every ``POLL_SECONDS`` or
        so); how many. Forgets marks older than a minute, so the memory stays bounded by
        the sessions used in the last minute."""
        now = time.time() if now is None else now
        pending, self._seen_pending = self._seen_pending, {}
        if now - self._seen_flushed >= SEEN_SECONDS:
            self._seen_flushed = now
            self._seen_marked = {
                k: v for k, v in self._seen_marked.items() if now - v < SEEN_SECONDS
            }
        if not pending:
            return 0
        rows = [(sid, datetime.fromtimestamp(at, UTC), ip) for sid, (at, ip) in pending.items()]
        await self.store.touch_sessions(rows)
        return len(rows)

    def service_token(self, client_id: str, secret: str, now: float) -> str | None:
        """The service token's name when the pair is valid and unexpired, else None."""
        cred = self.credentials.get(client_id)
        stored = cred.secret_hash if cred is not None else None
        if not secret_matches(SecretKind.SERVICE_TOKEN, secret, stored) or cred is None:
            return None
        if cred.expires_at.timestamp() <= now:
            return None
        return cred.name

    def country(self, ip: str) -> str | None:
        return self.geoip.country(ip) if self.geoip is not None else None

    # ------------------------------------------------------------------ loading

    @classmethod
    async def load(cls, store: Store, settings: Settings, base_dir: Path) -> Runtime:
        objects, _ = await store.load()
        version = await store.state()
        keyset = await ensure_keyset(store, settings.jwt_algorithm)
        secret = await store.server_secret()
        geoip = None
        if settings.geoip is not None:
            db = Path(settings.geoip.database)
            geoip = GeoIp(db if db.is_absolute() else base_dir / db)
        runtime = cls(
            store=store,
            settings=settings,
            base_dir=base_dir,
            snapshot=compile_snapshot(objects, version.config_version),
            keyset=keyset,
            secret=secret,
            version=version,
            geoip=geoip,
            trusted=[ip_network(text) for text in settings.trusted_proxies],
            metrics_allow=[ip_network(text) for text in settings.metrics_allow],
        )
        await runtime._load_revocations(0)
        await runtime._load_credentials()
        await runtime._load_tunnel_credentials()
        settle_heap()
        return runtime

    async def _load_revocations(self, since: int) -> None:
        for _, email, not_before in await self.store.revocations(since=since):
            stamp = not_before.timestamp()
            if stamp > self.revoked.get(email, 0.0):
                self.revoked[email] = stamp
        for _, session_id in await self.store.ended_sessions(since=since):
            self.ended.setdefault(session_id, time.time())

    async def _load_credentials(self) -> None:
        self.credentials = {c.client_id: c for c in await self.store.service_credentials()}

    async def _load_tunnel_credentials(self) -> None:
        self.tunnel_credentials = {c.tunnel_id: c for c in await self.store.tunnel_credentials()}
        for callback in self.on_tunnel_credentials:
            callback()

    def tunnel_for_token(self, tunnel_id: str, secret: str) -> str | None:
        """The name of the tunnel whose id and secret these are, or None (constant time in
        the secret; the same work whether or not the id is known)."""
        cred = self.tunnel_credentials.get(tunnel_id)
        stored = cred.secret_hash if cred is not None else None
        if not secret_matches(SecretKind.TUNNEL, secret, stored) or cred is None:
            return None
        return cred.name

    async def refresh(self) -> bool:
        """Reload what changed since the last look; True when anything did."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> bool:
        new = await self.store.state()
        old = self.version
        if new == old:
            return False
        if new.config_version != old.config_version:
            objects, version = await self.store.load()
            # compiled off the event loop (2,000 applications took 0.8 s): requests keep
            # being served with the old snapshot until the new one is swapped in whole
            self.snapshot = await asyncio.to_thread(compile_snapshot, objects, version)
            settle_heap()
            self.swaps += 1
            log.info("configuration version %d loaded", version)
        if new.keys_generation != old.keys_generation:
            doc, _ = await self.store.keyset()
            if doc is not None:
                self.keyset = KeySet.from_dict(doc)
                self.cache.clear()
        if new.revocation_seq != old.revocation_seq:
            await self._load_revocations(old.revocation_seq)
        if new.service_tokens_generation != old.service_tokens_generation:
            await self._load_credentials()
        if new.tunnels_generation != old.tunnels_generation:
            await self._load_tunnel_credentials()
        self.version = new
        return True

    async def end_session(self, session_id: str) -> Session | None:
        """End one portal session everywhere (this process at once, the others within a
        second); the ended session, or ``None`` when none such was active."""
        ended = await self.store.end_session(session_id)
        if ended is not None:
            self.ended.setdefault(session_id, time.time())
        return ended

    async def revoke(self, email: str) -> None:
        """Log ``email`` out everywhere: every session issued before now is void."""
        now = datetime.now(UTC)
        await self.store.revoke(email, not_before=now)
        self.revoked[email.lower()] = max(self.revoked.get(email.lower(), 0.0), now.timestamp())

    # ------------------------------------------------------------------ watcher

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        """Reload on every change the store announces (PostgreSQL ``LISTEN``: at once), and
        at least every ``POLL_SECONDS`` (SQLite; and a fallback should a notification be
        lost or the listening connection break, which is then made again)."""
        changed = self._changed
        close = None
        try:
            while True:
                if close is None:
                    try:
                        close = await self.store.listen_for_changes(changed.set)
                    except Exception as exc:
                        log.warning("not listening for changes (polling only): %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_SECONDS)
                changed.clear()
                if time.monotonic() >= self._next_forget:
                    self._next_forget = time.monotonic() + FORGET_EVERY
                    self.forget_ended(time.time())
                if self._seen_pending:
                    try:
                        await self.flush_seen()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # last seen is a courtesy: never stop watching
                        log.warning("could not record when sessions were last seen: %s", exc)
                try:
                    await self.refresh()
                except asyncio.CancelledError:
                    raise
                except Exception:  # keep serving the last good state; say why
                    log.exception("could not refresh the configuration from the store")
                    if close is not None:
                        await close()
                        close = None
        finally:
            if close is not None:
                await close()


async def ensure_keyset(store: Store, algorithm: Algorithm = "ES256") -> KeySet:
    """The stored signing keys, created on first use (race-safe across processes)."""
    for _ in range(5):
        doc, generation = await store.keyset()
        if doc is not None:
            return KeySet.from_dict(doc)
        fresh = KeySet.generate(algorithm, now=time.time())
        if await store.put_keyset(fresh.to_dict(), expected_generation=generation):
            return fresh
    raise RuntimeError("could not create the signing keys")


async def rotate_keys(
    store: Store, overlap_seconds: int = KEY_OVERLAP_SECONDS, algorithm: Algorithm | None = None
) -> KeySet:
    """A new active signing key; the previous one stays valid for the overlap window."""
    for _ in range(5):
        doc, generation = await store.keyset()
        keyset = (
            KeySet.from_dict(doc) if doc else KeySet.generate(algorithm or "ES256", now=time.time())
        )
        keyset.rotate(time.time(), overlap_seconds, algorithm)
        if await store.put_keyset(keyset.to_dict(), expected_generation=generation):
            return keyset
    raise RuntimeError("the signing keys changed concurrently five times; try again")
