"""The store's tables as SQLAlchemy Core metadata: the source of truth that the migrations in
``migrations/versions`` must match (a test compares them).

- ``config_state``: exactly one row (``id = 1``) holding the configuration version.
- ``objects``: one row per configured object; ``spec`` is the object's canonical JSON.
- ``admin_log``: one row per admin change (who, when, from where, before and after).

Runtime state (migration 0002), written at login and logout, never on a request's hot path:

- ``runtime_state``: exactly one row (``id = 1``) holding the counters that running servers
  poll next to the configuration version: the signing-keys generation, the newest revocation id
  (revocation ids are handed out from this counter, so they become visible in id order) and the
  service-token credentials generation.
- ``server_secrets``: named secret values (the server secret, the signing key set as JSON).
- ``pins``: one outstanding one-time PIN record per key, with an opaque revision for
  compare-and-set.
- ``auth_codes``: one-time authorization codes (portal → application), by hash, until used.
- ``revocations``: "log out everywhere": sessions of ``email`` issued before ``not_before``.
- ``service_credentials``: the hashed secret of each service token, by token name.
- ``access_log``: one row per login step and per allowed or blocked request.

Tunnels and the admin API (migration 0003):

- ``runtime_state.tunnels_generation``: bumped whenever a tunnel credential changes, so edges
  reload the credentials and close the connections of a rotated or deleted token.
- ``tunnel_credentials``: per tunnel (by name) its random id and the hash of its secret.
- ``tunnel_connections``: what each edge process reports of the connector connections it
  holds (replaced by that edge every few seconds; stale rows are ignored by readers).
- ``api_tokens``: Bearer tokens of the admin API: hashed secret, scope, expiry, last use.

Logs (migration 0004): indexes for the filters on decision and kind, and

- ``log_writers``: one row per process's access-log writer: when it started, when it last
  flushed (or said it was idle), how many rows it wrote and dropped, and whether it ended
  cleanly (``stopped``), is ``running``, or was found gone without flushing (``lost``).

Shared limits (migration 0007), so that every process of a cluster counts together:

- ``rate_windows``: one row per rate-limited key (a hash of the limit's name and its subject,
  an address or a client network): the times of its latest hits in the window (JSON, at most
  the limit's count) and when the row may be forgotten. Read and written under the row's lock.

Ownership and sessions (migration 0009):

- ``objects.origin`` (where an object was last changed: ``file``, ``api``, ``panel``, ``cli``)
  and ``objects.in_file`` (listed by the last apply from a file);
- ``sessions``: one row per portal login (id = the tokens' ``sid`` claim), last seen written at
  most once a minute; ``revocations.session_id`` ends one session instead of an address's all.

Cluster (migration 0006, ``zerogate.store.cluster``):

- ``cluster_nodes``: one row per running edge process (node id, host, pid, relay address,
  started, heartbeat); expired rows are deleted.
- ``tunnel_presence``: which node holds which connector connection (tunnel, connector id,
  connection index, since, heartbeat), replaced by its node on every change.
Log fields (migration 0010): ``access_log.status`` (what the client got for a forwarded
request), ``duration_ms`` and ``count`` (requests an aggregated row stands for).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

#: constraint names are spelled out so that later migrations can refer to them
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always written and read back as a timezone-aware UTC datetime
    (SQLite keeps no zone, so naive values read from it are UTC by construction)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps written to the store must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: a 64-bit auto-incrementing key (SQLite only auto-increments a plain INTEGER primary key)
BigId = BigInteger().with_variant(Integer(), "sqlite")

config_state = Table(
    "config_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

objects = Table(
    "objects",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    # the configuration version that last added or changed this object
    Column("version", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # where it was last added or changed: file, api, panel, cli (migration 0009)
    Column("origin", String(16), nullable=False, server_default="file"),
    # listed by the last apply from a file: the file manages it (migration 0009)
    Column("in_file", Boolean, nullable=False, server_default=text("true")),
    UniqueConstraint("kind", "name"),
)

admin_log = Table(
    "admin_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("source", Text, nullable=True),
    Column("action", String(32), nullable=False),
    Column("kind", String(32), nullable=True),
    Column("name", String(200), nullable=True),
    Column("before_json", Text, nullable=True),
    Column("after_json", Text, nullable=True),
    # the configuration version this change produced (None for changes outside the objects)
    Column("config_version", BigInteger, nullable=True),
    Index(None, "at"),
    Index("ix_admin_log_kind_at", "kind", "at"),
)

runtime_state = Table(
    "runtime_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("keys_generation", BigInteger, nullable=False, server_default=text("0")),
    # the newest revocation id; the next revocation takes revocation_seq + 1
    Column("revocation_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("service_tokens_generation", BigInteger, nullable=False, server_default=text("0")),
    Column("tunnels_generation", BigInteger, nullable=False, server_default=text("0")),
    CheckConstraint("id = 1", name="single_row"),
)

server_secrets = Table(
    "server_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

pins = Table(
    "pins",
    metadata,
    Column("pin_key", Text, primary_key=True),
    Column("record", Text, nullable=False),
    # opaque: a fresh random number on every write, so a compare-and-set never matches a
    # record that was replaced (or deleted and put again) in between
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

auth_codes = Table(
    "auth_codes",
    metadata,
    Column("code_hash", String(128), primary_key=True),
    Column("data", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_auth_codes_expires_at", "expires_at"),
)

revocations = Table(
    "revocations",
    metadata,
    # assigned from runtime_state.revocation_seq, not auto-incremented
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("email", String(320), nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # set: ends this one session only (migration 0009)
    Column("session_id", String(64), nullable=True),
    Index("ix_revocations_email", "email"),
)

service_credentials = Table(
    "service_credentials",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("client_id", String(200), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_service_credentials_client_id", "client_id", unique=True),
)

access_log = Table(
    "access_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("app", Text, nullable=True),
    Column("email", Text, nullable=True),
    Column("idp", Text, nullable=True),
    Column("ip", Text, nullable=True),
    Column("country", Text, nullable=True),
    Column("decision", String(32), nullable=False),
    Column("policy", Text, nullable=True),
    Column("method", Text, nullable=True),
    Column("host", Text, nullable=True),
    Column("path", Text, nullable=True),
    Column("detail", Text, nullable=True),
    Column("status", Integer, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("count", Integer, nullable=False, server_default=text("1")),
    Index("ix_access_log_at", "at"),
    Index("ix_access_log_app_at", "app", "at"),
    Index("ix_access_log_email_at", "email", "at"),
    Index("ix_access_log_decision_at", "decision", "at"),
    Index("ix_access_log_kind_at", "kind", "at"),
)

tunnel_credentials = Table(
    "tunnel_credentials",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("tunnel_id", String(64), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("rotated_at", UTCDateTime, nullable=False),
    Index("ix_tunnel_credentials_tunnel_id", "tunnel_id", unique=True),
)

tunnel_connections = Table(
    "tunnel_connections",
    metadata,
    Column("edge_id", String(64), primary_key=True),
    Column("connection_id", String(64), primary_key=True),
    Column("tunnel", String(200), nullable=False),
    Column("connector_id", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("address", String(128), nullable=False),
    Column("connection_index", Integer, nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Index("ix_tunnel_connections_tunnel", "tunnel"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("token_id", String(64), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("read_only", Boolean, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Index("ix_api_tokens_token_id", "token_id", unique=True),
)

log_writers = Table(
    "log_writers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("written", BigInteger, nullable=False),
    Column("dropped", BigInteger, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Column("state", String(16), nullable=False),
    Index("ix_log_writers_state", "state"),
)

# -- automatic HTTPS (migration 0008) ----------------------------------------------------------

#: one row per certificate ``listen.tls.acme`` obtained (one hostname each, ``*.`` included):
#: the chain as PEM and its private key sealed with a key derived from the server secret
#: (``store/certificates.py``), so every node serves it
certificates = Table(
    "certificates",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("cert_pem", Text, nullable=False),
    Column("key_sealed", Text, nullable=False),
    Column("not_before", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

#: the challenges an order is waiting for: ``http-01`` (``token`` → key authorization) and
#: ``tls-alpn-01`` (``host`` → key authorization); every node answers them, nothing else
acme_challenges = Table(
    "acme_challenges",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("host", String(255), nullable=False),
    Column("value", Text, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

#: named leases: at most one holder at a time, until ``expires_at`` (``Store.try_lease``)
leases = Table(
    "leases",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

#: the rate-limit windows every process shares (migration 0007, ``store/limits.py``)
rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key", String(64), primary_key=True),
    # a JSON list of epoch seconds, oldest first
    Column("hits", Text, nullable=False),
    # epoch seconds after which no limit needs the row any more
    Column("expires_at", Float, nullable=False),
    Index("ix_rate_windows_expires_at", "expires_at"),
)

#: one row per portal login (migration 0009, ``store/sessions.py``)
sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("idp", Text, nullable=False),
    Column("user_agent", Text, nullable=True),
    Column("ip", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime, nullable=True),
    Index("ix_sessions_email", "email"),
    Index("ix_sessions_expires_at", "expires_at"),
)

cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("relay_address", String(300), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

tunnel_presence = Table(
    "tunnel_presence",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("connection_id", String(64), primary_key=True),
    Column("tunnel", String(200), nullable=False),
    Column("connector_id", String(128), nullable=False),
    Column("connection_index", Integer, nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Index("ix_tunnel_presence_tunnel", "tunnel"),
)
