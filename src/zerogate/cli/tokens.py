"""``zerogate service-token ...`` and ``zerogate keys ...``: credentials kept in the store.

A service token is two things: the configured object (name and duration, part of the objects
``apply`` manages, so policies can name it) and its credential (client id and the SHA-256 of the
secret, runtime state). ``create`` adds the object when it is missing, then makes a credential
and prints the secret once; ``rotate`` replaces client id and secret; ``delete`` removes both.
Running servers notice a change within about a second (they poll the store).

Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    JsonOption,
    OptionalConfig,
    UserError,
    actor,
    check_name,
    err,
    fail,
    iso,
    load_config,
    out,
    print_json,
    show_deleted,
    user_errors,
    when,
    with_objects,
    with_store,
)

if TYPE_CHECKING:
    from zerogate.model.objects import ConfigFile, Objects
    from zerogate.store import ServiceCredential, Store


CLIENT_ID_HEADER = "Zerogate-Client-Id"
CLIENT_SECRET_HEADER = "Zerogate-Client-Secret"  # noqa: S105 - a header name

service_token_app = typer.Typer(
    help="Service tokens: a client id and secret for machines (CI jobs, scripts).",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="The keys that sign session tokens.", no_args_is_help=True)

NameArgument = Annotated[str, typer.Argument(help="The service token's name.", show_default=False)]


def _check_name(name: str) -> str:
    from zerogate.model.objects import ServiceToken

    return check_name(ServiceToken, name)


def _duration(text: str, option: str) -> timedelta:
    from zerogate.model.values import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


def _token_doc(objects: Objects) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True) for t in objects.service_tokens]


def _new_credential(name: str, lifetime: timedelta) -> tuple[ServiceCredential, str]:
    """The same credential the admin API makes (``admin.service.new_service_credential``)."""
    from zerogate.admin.service import new_service_credential

    return new_service_credential(name, lifetime)


def _show_secret(cred: ServiceCredential, secret: str, as_json: bool, **extra: Any) -> None:
    if as_json:
        print_json(
            {
                "name": cred.name,
                "client_id": cred.client_id,
                "client_secret": secret,
                "created_at": iso(cred.created_at),
                "expires_at": iso(cred.expires_at),
                "headers": {CLIENT_ID_HEADER: cred.client_id, CLIENT_SECRET_HEADER: secret},
                **extra,
            }
        )
        return
    out.print(f"  client id:      {cred.client_id}")
    out.print(f"  client secret:  {secret}")
    out.print(f"  expires:        {when(cred.expires_at)}")
    out.print("\nSend both headers with every request:")
    out.print(f"  {CLIENT_ID_HEADER}: {cred.client_id}")
    out.print(f"  {CLIENT_SECRET_HEADER}: {secret}")
    out.print(
        "\n[yellow]The secret is shown only this once[/yellow]: the store keeps only its hash. "
        "Lost it? `zerogate service-token rotate` makes a new pair."
    )


# ---------------------------------------------------------------- service-token


@service_token_app.command("create")
def token_create(
    name: NameArgument,
    config: OptionalConfig = None,
    duration: Annotated[
        str | None,
        typer.Option(
            "--duration",
            help="How long the credential is valid; also becomes the token's configured "
            "duration [default: the configured duration, else 8760h].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a service token and print its client id and secret (the secret only this once)."""
    with user_errors():
        name = _check_name(name)
        if duration is not None:
            _duration(duration, "--duration")

    async def work(store: Store) -> tuple[ServiceCredential, str, bool]:
        if any(c.name == name for c in await store.service_credentials()):
            raise UserError(
                f"service token {name!r} already has a credential; use "
                f"`zerogate service-token rotate {name}` for a new client id and secret"
            )
        objects, _ = await store.load()
        tokens = _token_doc(objects)
        existing = next((t for t in tokens if t["name"] == name), None)
        if existing is None:
            tokens.append({"name": name, "duration": duration or "8760h"})
        elif duration is not None:
            existing["duration"] = duration
        wanted = with_objects(objects, "service_tokens", tokens)
        plan = await store.apply(wanted, actor=actor(), source="cli", origin="cli")
        token = next(t for t in wanted.service_tokens if t.name == name)
        cred, secret = _new_credential(name, _duration(token.duration, "duration"))
        await store.put_service_credential(cred)
        return cred, secret, existing is None and not plan.empty

    cred, secret, added = with_store(config, work)
    if not as_json:
        what = "created" if added else "now has a credential"
        out.print(f"[green]Service token {escape(name)} {what}.[/green]")
    _show_secret(cred, secret, as_json)


@service_token_app.command("list")
def token_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """The service tokens with their client ids and expiry (never a secret or its hash)."""

    async def work(store: Store) -> tuple[Objects, list[ServiceCredential]]:
        objects, _ = await store.load()
        return objects, await store.service_credentials()

    objects, creds = with_store(config, work)
    by_name = {c.name: c for c in creds}
    durations = {t.name: t.duration for t in objects.service_tokens}
    names = [t.name for t in objects.service_tokens]
    names += sorted(n for n in by_name if n not in durations)
    now = datetime.now(UTC)
    rows = []
    for name in names:
        cred = by_name.get(name)
        rows.append(
            {
                "name": name,
                "duration": durations.get(name),
                "client_id": cred.client_id if cred else None,
                "created_at": iso(cred.created_at) if cred else None,
                "expires_at": iso(cred.expires_at) if cred else None,
                "expired": cred.expires_at <= now if cred else None,
            }
        )
    if as_json:
        print_json({"service_tokens": rows})
        return
    if not rows:
        out.print("No service tokens. Create one with `zerogate service-token create NAME`.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("client id", no_wrap=True, min_width=23)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("expires (UTC)", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for row, name in zip(rows, names, strict=True):
        cred = by_name.get(name)
        if cred is None:
            status = "[yellow]no credential[/yellow]"
        elif row["expired"]:
            status = "[red]expired[/red]"
        else:
            status = "[green]valid[/green]"
        table.add_row(
            escape(name),
            cred.client_id if cred else "—",
            when(cred.created_at, seconds=False, zone=False) if cred else "—",
            when(cred.expires_at, seconds=False, zone=False) if cred else "—",
            status,
        )
    out.print(table)


@service_token_app.command("rotate")
def token_rotate(
    name: NameArgument, config: OptionalConfig = None, as_json: JsonOption = False
) -> None:
    """A new client id and secret; the old pair stops working at once."""

    async def work(store: Store) -> tuple[ServiceCredential, str, ServiceCredential]:
        old = next((c for c in await store.service_credentials() if c.name == name), None)
        objects, _ = await store.load()
        token = next((t for t in objects.service_tokens if t.name == name), None)
        if old is None:
            if token is None:
                raise UserError(f"unknown service token {name!r}")
            raise UserError(
                f"service token {name!r} has no credential yet; use "
                f"`zerogate service-token create {name}`"
            )
        lifetime = (
            _duration(token.duration, "duration")
            if token is not None
            else old.expires_at - old.created_at
        )
        cred, secret = _new_credential(name, lifetime)
        await store.put_service_credential(cred)
        return cred, secret, old

    cred, secret, old = with_store(config, work)
    if as_json:
        _show_secret(cred, secret, True, previous_client_id=old.client_id)
        return
    out.print(
        f"[green]Service token {escape(name)} rotated.[/green] The old client id "
        f"{old.client_id} and its secret no longer work (running servers notice within "
        "about a second)."
    )
    _show_secret(cred, secret, False)


@service_token_app.command("delete")
def token_delete(
    name: NameArgument, config: OptionalConfig = None, as_json: JsonOption = False
) -> None:
    """Delete a service token: its credential and the configured object."""

    async def work(store: Store) -> tuple[bool, bool]:
        had_credential = any(c.name == name for c in await store.service_credentials())
        objects, _ = await store.load()
        tokens = _token_doc(objects)
        had_object = any(t["name"] == name for t in tokens)
        if not had_object and not had_credential:
            raise UserError(f"unknown service token {name!r}")
        if had_object:
            try:
                wanted = with_objects(
                    objects, "service_tokens", [t for t in tokens if t["name"] != name]
                )
            except UserError as exc:
                raise UserError(
                    *(f"cannot delete service token {name!r}: {m}" for m in exc.messages)
                ) from None
            # removing the object also removes its credential, in the same transaction
            await store.apply(wanted, actor=actor(), source="cli", origin="cli")
        await store.delete_service_credential(name)
        return had_object, had_credential

    show_deleted(
        "Service token",
        name,
        with_store(config, work),
        as_json,
        revoked="Its client id and secret no longer work.",
        missing="a credential",
    )


# ---------------------------------------------------------------- keys


def _overlap_seconds(text: str) -> int:
    if text.strip() in ("0", "0s"):
        return 0
    return int(_duration(text, "--overlap").total_seconds())


def _longest_session(settings: ConfigFile | None, objects: Objects) -> tuple[int, str]:
    """The longest session a token can carry: (seconds, where it is configured)."""
    from zerogate.model.values import parse_duration

    found: list[tuple[int, str]] = []
    if settings is not None:
        found.append((int(parse_duration(settings.session_duration).total_seconds()), "settings"))
    for application in objects.applications:
        if application.session_duration:
            seconds = int(parse_duration(application.session_duration).total_seconds())
            found.append((seconds, f"application {application.name!r}"))
        for policy in application.policies:
            if policy.session_duration:
                seconds = int(parse_duration(policy.session_duration).total_seconds())
                found.append((seconds, f"policy {policy.name!r} of {application.name!r}"))
    return max(found, default=(0, ""))


def _key_rows(doc: dict[str, Any] | None, now: float) -> list[dict[str, Any]]:
    """One row per stored key, active first; times as unix seconds (``iso``/``when`` them)."""
    from zerogate.identity import KeySet

    if doc is None:
        return []
    keyset = KeySet.from_dict(doc)
    return [
        {
            "kid": key.kid,
            "algorithm": key.algorithm,
            "active": key is keyset.active,
            "created_at": key.created_at,
            "not_after": key.not_after,
            "valid": key.valid_at(now),
        }
        for key in keyset
    ]


def _keys_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**row, "created_at": iso(row["created_at"]), "not_after": iso(row["not_after"])}
        for row in rows
    ]


@keys_app.command("rotate")
def keys_rotate(
    config: OptionalConfig = None,
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap",
            help="How long the replaced key keeps verifying the tokens it signed; 0 ends "
            "it at once (after a leak; every session signed by it must log in again).",
        ),
    ] = "24h",
    as_json: JsonOption = False,
) -> None:
    """Make a new signing key; the previous one stays valid for the overlap window."""
    from zerogate.runtime import rotate_keys

    with user_errors():
        seconds = _overlap_seconds(overlap)
    settings = load_config(config).config if config is not None else None

    async def work(store: Store) -> tuple[dict[str, Any], Objects]:
        before, _ = await store.keyset()
        keyset = await rotate_keys(store, seconds)
        previous = [row["kid"] for row in _key_rows(before, time.time()) if row["active"]]
        await store.log_admin(
            actor=actor(),
            source="cli",
            action="rotate",
            kind="signing_key",
            name=keyset.active.kid,
            before={"active": previous[0]} if previous else None,
            after={"active": keyset.active.kid, "overlap_seconds": seconds},
        )
        objects, _ = await store.load()
        return keyset.to_dict(), objects

    doc, objects = with_store(config, work, settings=settings)
    now = time.time()
    rows = _key_rows(doc, now)
    active = next(row for row in rows if row["active"])
    others = [row for row in rows if not row["active"] and row["valid"]]
    if as_json:
        print_json({"active": active["kid"], "overlap_seconds": seconds, "keys": _keys_json(rows)})
    else:
        out.print(f"[green]New signing key {active['kid']}[/green] signs from now on.")
        for row in others:
            out.print(f"  previous key {row['kid']} still verifies until {when(row['not_after'])}")
        if not others:
            out.print("  no previous key verifies any more: every session must log in again.")
        out.print("Running servers pick up the new key within about a second.")
    longest, where = _longest_session(settings, objects)
    if 0 < seconds < longest:
        err.print(
            f"[yellow]warning:[/yellow] sessions last up to {longest // 3600}h ({where}); "
            f"those signed by the previous key end when the {overlap} overlap does"
        )


@keys_app.command("list")
def keys_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """The signing keys (JWKS kids) with when they were made and until when they verify."""

    async def work(store: Store) -> dict[str, Any] | None:
        doc, _ = await store.keyset()
        return doc

    doc = with_store(config, work)
    rows = _key_rows(doc, time.time())
    if as_json:
        print_json({"keys": _keys_json(rows)})
        return
    if not rows:
        out.print("No signing keys yet: the server makes one when it first starts.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("kid", no_wrap=True, min_width=43)
    table.add_column("role", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("verifies until (UTC)", no_wrap=True)
    for row in rows:
        if row["active"]:
            role = "[green]active[/green]"
        elif row["valid"]:
            role = "previous"
        else:
            role = "[dim]expired[/dim]"
        table.add_row(
            row["kid"],
            role,
            when(row["created_at"], seconds=False, zone=False),
            when(row["not_after"], seconds=False, zone=False),
        )
    out.print(table)


@keys_app.command("secrets-key")
def keys_secrets_key(
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the key to this new file (mode 0600) instead of printing it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make a key that encrypts the store's secrets at rest: give it to every server process
    as $ZEROGATE_SECRETS_KEY, or name the file in $ZEROGATE_SECRETS_KEY_FILE."""
    from zerogate.store.secretbox import KEY_FILE_ENV, generate_key, write_private_file

    key = generate_key()
    if out_file is None:
        out.print(key)
        return
    try:
        write_private_file(out_file, key + "\n")
    except FileExistsError:
        fail(f"{out_file} exists; the key in it may be the one your store needs. Choose a new name")
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc.strerror}")
    err.print(
        f"Wrote a new secrets key to {escape(str(out_file))} (mode 0600). Set "
        f"{KEY_FILE_ENV}={escape(str(out_file))} for every zerogate process; keep a copy "
        "apart from the database backups: without it the stored secrets cannot be read."
    )
