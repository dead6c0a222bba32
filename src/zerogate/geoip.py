"""Country of a client address from a MaxMind-format (mmdb) database.

Used by the edge and ``zerogate policy test`` to fill ``Context.country`` before the policy
engine, which does no I/O, decides. Reads GeoLite2/GeoIP2 Country or City databases and any
mmdb whose records carry ``country.iso_code`` (or ``registered_country.iso_code``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb

from zerogate.model.values import normalise_ip


class GeoIpError(Exception):
    """The database cannot be opened."""


class GeoIp:
    def __init__(self, path: str | Path) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GeoIpError(f"cannot open the GeoIP database {str(path)!r}: {exc}") from None

    def country(self, ip: str) -> str | None:
        """The ISO 3166-1 alpha-2 code for ``ip``, or None when unknown or not an address."""
        addr = normalise_ip(ip)  # an IPv4-mapped IPv6 address is looked up as IPv4
        if addr is None:
            return None
        try:
            record: Any = self._reader.get(addr)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            entry = record.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("iso_code"), str):
                return str(entry["iso_code"]).upper()
        return None

    def close(self) -> None:
        self._reader.close()
