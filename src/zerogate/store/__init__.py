"""The store: SQLAlchemy tables, alembic migrations, loading and applying the configured
objects, the configuration version and the admin log, and the runtime state servers share
(polled counters, server secret, signing keys, PINs, authorization codes, revocations,
service-token credentials, access log: ``runtime``; tunnel credentials, connector-connection
reports and API tokens: ``tunnels``; cluster nodes and tunnel presence: ``cluster``).
SQLite by default, PostgreSQL by URL.
Imports only ``zerogate.model`` of zerogate's own code."""

from zerogate.store.cluster import ClusterNode, ClusterView, Presence
from zerogate.store.diff import Change, Kept, Plan
from zerogate.store.errors import KeptInvalid, StaleWrite, StoreError
from zerogate.store.runtime import (
    ACCESS_DECISIONS,
    ACCESS_FIELDS,
    ACCESS_KINDS,
    AccessEvent,
    AccessFilter,
    ServiceCredential,
    StateVersion,
    access_event_dict,
    access_filter,
    cursor_of,
    parse_cursor,
    parse_status,
)
from zerogate.store.sessions import Session
from zerogate.store.store import CLUSTER_CHANNEL, AdminLogEntry, Store
from zerogate.store.tunnels import ApiToken, TunnelConnection, TunnelCredential
from zerogate.store.urls import storage_url

__all__ = [
    "ACCESS_DECISIONS",
    "ACCESS_FIELDS",
    "ACCESS_KINDS",
    "CLUSTER_CHANNEL",
    "AccessEvent",
    "AccessFilter",
    "AdminLogEntry",
    "ApiToken",
    "Change",
    "ClusterNode",
    "ClusterView",
    "Kept",
    "KeptInvalid",
    "Plan",
    "Presence",
    "ServiceCredential",
    "Session",
    "StaleWrite",
    "StateVersion",
    "Store",
    "StoreError",
    "TunnelConnection",
    "TunnelCredential",
    "access_event_dict",
    "access_filter",
    "cursor_of",
    "parse_cursor",
    "parse_status",
    "storage_url",
]
