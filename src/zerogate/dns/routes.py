"""Which DNS records the tunnel routes call for, and the order of the DNS and store changes.

Every hostname routed to a tunnel (``tunnels[].routes``) inside ``dns.rfc2136.zone`` gets the
records of ``dns.edge_addresses`` (A/AAAA) or ``dns.edge_cname`` (CNAME), plus the marker TXT
``_zerogate.HOST`` = ``heritage=zerogate,owner=OWNER``. Only names with this marker are ever
changed or deleted; a name that holds other records is reported, never overwritten.

``RouteDns.sync(before, after, write)`` runs one configuration change:

1. read every name the change touches (added and removed routes, and the routes that stay,
   so a re-run repairs a missing record); an added route whose name holds records zerogate did
   not make stops everything here, with nothing changed (``DnsConflict``);
2. **DNS first**: create / replace the records of added routes, delete those of removed ones
   (each name one atomic update). A failure undoes the updates already made and raises
   ``DnsError``: the store is not touched;
3. **then the store** (``write()``). If it fails, the DNS updates are undone and its error is
   raised: so either both changed or neither did. When an undo itself fails, ``DnsError`` says
   which names are left as they are, so nothing is half-applied silently.

A record for a name the store does not route yet only makes its requests reach the edge, which
answers 404 for an unknown host; a route without its record is what step 2 prevents.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from zerogate.dns.rfc2136 import DnsError, Records, Rfc2136Client, Target
from zerogate.model.objects import DnsSettings, Objects, Settings
from zerogate.model.values import parse_duration

__all__ = ["DnsConflict", "DnsError", "DnsReport", "RouteDns", "route_hosts"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class DnsConflict(DnsError):
    """A routed name holds records zerogate did not make: nothing was changed."""


def route_hosts(objects: Objects) -> set[str]:
    """Every hostname routed to a tunnel."""
    return {host for tunnel in objects.tunnels for host in tunnel.routes}


@dataclass
class DnsReport:
    """What one ``sync`` did to the zone (names), for the caller to show."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: (name, why) names left alone: outside the zone, or holding records not zerogate's
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, target: str) -> list[str]:
        out = [f"DNS: created {h} ({target})" for h in self.created]
        out += [f"DNS: updated {h} ({target})" for h in self.updated]
        out += [f"DNS: deleted the records of {h}" for h in self.deleted]
        out += [f"DNS: left {h} alone: {why}" for h, why in self.skipped]
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "created": self.created,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "skipped": [{"name": h, "why": why} for h, why in self.skipped],
        }


@dataclass(frozen=True)
class _Step:
    host: str
    action: str  # create | replace | delete
    before: Records


class RouteDns:
    """The ``dns`` settings at work: see the module docstring."""

    def __init__(self, settings: DnsSettings, client: Rfc2136Client) -> None:
        self.settings = settings
        self.client = client
        self.marker = f"heritage=zerogate,owner={settings.owner}"
        self.target = Target(tuple(settings.edge_addresses), settings.edge_cname, settings.ttl)

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> RouteDns | None:
        """None without ``dns``; ``DnsError`` naming the setting when the secret is missing."""
        dns = settings.dns
        if dns is None:
            return None
        env = os.environ if environ is None else environ
        rfc = dns.rfc2136
        secret = env.get(rfc.key_secret_env, "")
        if not secret:
            raise DnsError(
                f"dns.rfc2136.key_secret_env: the environment variable {rfc.key_secret_env} "
                "(the TSIG secret) is not set or empty"
            )
        try:
            client = Rfc2136Client(
                server=rfc.server,
                zone=rfc.zone,
                key_name=rfc.key_name,
                secret=secret.strip(),
                algorithm=rfc.algorithm,
                timeout=parse_duration(rfc.timeout).total_seconds(),
            )
        except DnsError as exc:
            raise DnsError(f"dns.rfc2136.key_secret_env ({rfc.key_secret_env}): {exc}") from None
        return cls(dns, client)

    async def sync(
        self, before: Objects, after: Objects, write: Callable[[], Awaitable[T]]
    ) -> tuple[T, DnsReport]:
        """Make the zone match ``after``'s routes, then ``write()`` (see the module doc)."""
        old, new = route_hosts(before), route_hosts(after)
        report = DnsReport()
        steps: list[_Step] = []
        conflicts: list[str] = []
        for host in sorted(old | new):
            if not self.client.in_zone(host):
                report.skipped.append((host, f"not in the zone {self.settings.rfc2136.zone}"))
                continue
            current = await self.client.read(host)
            ours = current.marker == self.marker
            if host in new:
                if ours and current.matches(self.target):
                    report.unchanged.append(host)
                elif ours:
                    steps.append(_Step(host, "replace", current))
                elif current.empty and current.marker is None:
                    steps.append(_Step(host, "create", current))
                else:
                    why = f"it holds {current.describe() or 'a marker'} not made by this zerogate"
                    if current.marker is not None and not ours:
                        why += f" (marker {current.marker!r})"
                    if host in old:  # routed before: report, do not block this change
                        report.skipped.append((host, why))
                    else:
                        conflicts.append(f"{host}: {why}")
            elif ours:
                steps.append(_Step(host, "delete", current))
            elif not current.empty:
                report.skipped.append((host, "its records were not made by this zerogate"))
        if conflicts:
            raise DnsConflict(
                "DNS: nothing was changed: "
                + "; ".join(conflicts)
                + " (delete those records, or route another name)"
            )
        done: list[_Step] = []
        try:
            for step in steps:
                await self._do(step)
                done.append(step)
        except DnsError as exc:
            raise DnsError(f"{exc}; {await self._undo(done, 'nothing was changed')}") from None
        try:
            result = await write()
        except BaseException:
            note = await self._undo(done, "the DNS changes were undone")
            log.warning("the store write failed after the DNS update: %s", note)
            raise
        for step in done:
            {"create": report.created, "replace": report.updated, "delete": report.deleted}[
                step.action
            ].append(step.host)
        return result, report

    async def _do(self, step: _Step) -> None:
        if step.action == "create":
            await self.client.create(step.host, self.target, self.marker)
        elif step.action == "replace":
            await self.client.replace(step.host, self.target, self.marker)
        else:
            await self.client.delete(step.host, self.marker)

    async def _undo(self, done: list[_Step], success: str) -> str:
        """Put back the names of ``done`` (newest first); says what happened."""
        failed: list[str] = []
        for step in reversed(done):
            try:
                if step.action == "create":
                    await self.client.delete(step.host, self.marker)
                elif step.action == "replace":
                    await self.client.replace(
                        step.host, step.before.as_target(self.target.ttl), self.marker
                    )
                else:
                    await self.client.create(
                        step.host, step.before.as_target(self.target.ttl), self.marker
                    )
            except DnsError as exc:
                failed.append(f"{step.host} ({exc})")
        if failed:
            return "undoing the DNS changes failed, these names are left as changed: " + "; ".join(
                failed
            )
        return success
