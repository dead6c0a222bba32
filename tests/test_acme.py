"""Automatic HTTPS against real servers: Pebble (the ACME CA) validating for real, through the
test's own BIND for names (and DNS-01), the certificate manager, its HTTP-01 listener and a TLS
listener serving its SNI context, all in this process (the ``zerogate server`` run is in
test_acme_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509

from bind_harness import Bind
from harness import wait_for
from pebble_harness import Pebble
from zerogate.admin.service import Actor, AdminService
from zerogate.autotls.http01 import ChallengeListener
from zerogate.autotls.manager import LEASE, CertManager, renew_at
from zerogate.dns.rfc2136 import Rfc2136Client
from zerogate.model.loader import validate_objects
from zerogate.model.objects import Acme
from zerogate.store import Store, storage_url
from zerogate.store.certificates import StoredCertificate
from zg_harness import run_cli

pytestmark = pytest.mark.e2e

ZONE = "example.test"


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    # every name of the zone is 127.0.0.1: Pebble validates against this process
    server = Bind(tmp_path_factory.mktemp("bind")).start(extra_records="* IN A 127.0.0.1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Pebble]:
    server = Pebble(tmp_path_factory.mktemp("pebble"), dns_server=bind.server).start()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=tmp_path))
    yield opened
    await opened.close()


def settings(pebble: Pebble, challenge: str = "http-01") -> Acme:
    return Acme(
        email="ops@example.test",
        directory=pebble.directory,
        challenge=challenge,
        ca_bundle=str(pebble.ca_file),
    )


def manager(store: Store, pebble: Pebble, hosts: set[str], **kw: object) -> CertManager:
    return CertManager(
        store,
        settings(pebble, str(kw.pop("challenge", "http-01"))),
        hostnames=lambda: hosts,
        portal_host=str(kw.pop("portal_host", "")),
        tick=0.05,
        **kw,  # type: ignore[arg-type]
    )


def listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


async def tls_server(context: ssl.SSLContext, port: int) -> asyncio.AbstractServer:
    """A TLS listener on ``port`` serving the manager's context: answers one line."""

    async def answer(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, sock=listening(port), ssl=context)


async def served_cert(port: int, host: str, trust: ssl.SSLContext) -> x509.Certificate:
    """The certificate a client that trusts only Pebble's root verifies for ``host``."""
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trust, server_hostname=host
    )
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der)


def names(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


async def test_http01_orders_once_across_two_nodes_serves_by_sni_and_renews(
    store: Store, pebble: Pebble, tmp_path: Path
) -> None:
    hosts = {"app.example.test"}
    now = [datetime.now(UTC)]
    # two "nodes" on one store, each with its own manager; node a runs the HTTP-01 port
    a = manager(store, pebble, hosts, portal_host="auth.example.test:8443", clock=lambda: now[0])
    other = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=tmp_path))
    b = manager(other, pebble, hosts, portal_host="auth.example.test", clock=lambda: now[0])
    http = ChallengeListener(a, https_port=8443)
    await http.start(listening(pebble.http_port))
    tls_port = pebble.tls_port
    server = await tls_server(a.context, tls_port)
    try:
        assert a.due(now[0]) == ["app.example.test", "auth.example.test"]
        got = await asyncio.gather(a.renew(), b.renew())
        # one of them held the lease and ordered both hostnames; the other ordered nothing
        assert sorted(map(len, got)) == [0, 2], got
        assert await store.lease_holder(LEASE) is None  # released after the orders
        await a.refresh()
        await b.refresh()
        assert a.due(now[0]) == [] and b.due(now[0]) == []
        trust = pebble.client_context()
        first = await served_cert(tls_port, "app.example.test", trust)
        assert names(first) == ["app.example.test"]
        portal = await served_cert(tls_port, "auth.example.test", trust)
        assert names(portal) == ["auth.example.test"]
        # a client that names no host gets the portal's certificate
        no_sni = ssl.create_default_context(cadata=pebble.issuing_roots())
        no_sni.check_hostname = False
        _r, writer = await asyncio.open_connection("127.0.0.1", tls_port, ssl=no_sni)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        assert names(x509.load_der_x509_certificate(der)) == ["auth.example.test"]
        # a name it has no certificate for gets no certificate at all
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # the handshake is refused
            await served_cert(tls_port, "unknown.example.test", trust)
        # a new hostname is ordered on the next check, without restarting anything
        hosts.add("new.example.test")
        assert await a.renew() == ["new.example.test"]
        assert names(await served_cert(tls_port, "new.example.test", trust)) == ["new.example.test"]
        # two thirds into its lifetime the certificate is renewed and the new one served
        now[0] = renew_at(a.certs["app.example.test"]) + timedelta(seconds=1)
        assert "app.example.test" in a.due(now[0])
        renewed = await b.renew()  # either node may renew; the other serves it after a poll
        assert "app.example.test" in renewed
        await a.refresh()
        second = await served_cert(tls_port, "app.example.test", trust)
        assert second.serial_number != first.serial_number
        assert names(second) == ["app.example.test"]
        # challenges are gone once the orders finished
        assert await store.challenges() == []
    finally:
        server.close()
        await http.stop()
        await other.close()


async def test_tls_alpn01_answers_the_validation_handshake(store: Store, pebble: Pebble) -> None:
    hosts = {"alpn.example.test"}
    m = manager(store, pebble, hosts, challenge="tls-alpn-01")
    server = await tls_server(m.context, pebble.tls_port)
    try:
        assert await m.renew() == ["alpn.example.test"], m.problems()
        await m.refresh()
        cert = await served_cert(pebble.tls_port, "alpn.example.test", pebble.client_context())
        assert names(cert) == ["alpn.example.test"]
    finally:
        server.close()


def txt_records(bind: Bind, name: str) -> list[str]:
    reply = dns.query.udp(
        dns.message.make_query(name, dns.rdatatype.TXT), "127.0.0.1", port=bind.port, timeout=2
    )
    return [r.to_text() for rrset in reply.answer for r in rrset]


async def test_a_wildcard_is_validated_by_dns01_through_rfc2136(
    store: Store, pebble: Pebble, bind: Bind
) -> None:
    client = Rfc2136Client(
        server=bind.server, zone=ZONE, key_name=bind.key_name, secret=bind.secret
    )
    m = manager(store, pebble, {"*.dev.example.test"}, dns=client)
    server = await tls_server(m.context, pebble.tls_port)
    try:
        assert await m.renew() == ["*.dev.example.test"], m.problems()
        await m.refresh()
        cert = await served_cert(pebble.tls_port, "x.dev.example.test", pebble.client_context())
        assert names(cert) == ["*.dev.example.test"]
        # the challenge's TXT record was removed again
        assert txt_records(bind, "_acme-challenge.dev.example.test") == []
    finally:
        server.close()


async def test_a_wildcard_without_dns_settings_fails_and_is_retried_later(
    store: Store, pebble: Pebble
) -> None:
    m = manager(store, pebble, {"*.nodns.example.test"})
    assert await m.renew() == []
    assert "dns.rfc2136" in m.problems()["*.nodns.example.test"]
    # retried only after the (jittered) wait, not on every check
    assert m.due(datetime.now(UTC)) == []
    assert m.due(datetime.now(UTC) + timedelta(minutes=2)) == ["*.nodns.example.test"]


async def test_certificate_status_in_the_service_and_the_cli(
    store: Store, pebble: Pebble, tmp_path: Path
) -> None:
    """What `zerogate certs list`, `GET /api/v1/certificates` and the dashboard show: each
    hostname's certificate (issuer, validity), a failed order's error for a hostname without
    one, and an expired certificate of a hostname no longer served is deleted."""
    gone = StoredCertificate(
        host="gone.example.test",
        cert_pem="-",
        key_pem="-",
        not_before=datetime.now(UTC) - timedelta(days=100),
        not_after=datetime.now(UTC) - timedelta(days=10),
        issuer="Old CA",
        updated_at=datetime.now(UTC) - timedelta(days=100),
    )
    await store.put_certificate(gone)
    hosts = {"status.example.test", "*.nodns2.example.test"}
    m = manager(store, pebble, hosts, challenge="tls-alpn-01")
    # an earlier failed order: the certificate stored since makes it history
    await m._record("status.example.test", "failed", "an earlier failure")
    server = await tls_server(m.context, pebble.tls_port)
    try:
        assert await m.renew() == ["status.example.test"], m.problems()
    finally:
        server.close()
    found = {c.host: c for c in await AdminService(store).certificates()}
    assert sorted(found) == ["*.nodns2.example.test", "status.example.test"]  # gone: deleted
    ok = found["status.example.test"]
    assert ok.state == "valid" and ok.issuer and "Pebble" in ok.issuer, ok
    assert ok.not_after is not None and ok.renew_at is not None and ok.last_error is None
    assert ok.not_before is not None and ok.not_before < ok.renew_at < ok.not_after
    missing = found["*.nodns2.example.test"]
    assert missing.state == "missing" and missing.issuer is None
    assert missing.last_error is not None and "dns.rfc2136" in missing.last_error
    # the same through the command line, on the same store
    config = tmp_path / "zerogate.yaml"
    config.write_text("portal: auth.example.test\nstorage: sqlite:///zerogate.db\n")
    listed = run_cli("certs", "list", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["host"]: r for r in json.loads(listed.stdout)["certificates"]}
    assert rows["status.example.test"]["state"] == "valid"
    assert rows["status.example.test"]["not_after"].endswith("Z")
    assert "dns.rfc2136" in rows["*.nodns2.example.test"]["last_error"]
    table = run_cli("certs", "list", "-c", str(config))
    assert table.returncode == 0, table.stderr
    assert "status.example.test" in table.stdout and "missing" in table.stdout
    # with the file's ACME settings the command knows what to certify: the portal and an
    # application not ordered yet are pending; a certificate no hostname needs is unused
    await store.apply(
        validate_objects(
            {
                "applications": [
                    {
                        "name": "new",
                        "domain": "new.example.test/docs",
                        "origin": "http://127.0.0.1:9",
                        "policies": [
                            {"name": "p", "decision": "allow", "include": [{"everyone": True}]}
                        ],
                    }
                ]
            }
        ),
        actor="test",
    )
    config.write_text(
        "portal: auth.example.test:8443\nstorage: sqlite:///zerogate.db\n"
        "listen: {http: 127.0.0.1:8443, tls: {acme: {email: ops@example.test}}}\n"
    )
    listed = run_cli("certs", "list", "-c", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    states = {r["host"]: r["state"] for r in json.loads(listed.stdout)["certificates"]}
    assert states == {
        "auth.example.test": "pending",
        "new.example.test": "pending",
        "status.example.test": "unused",  # the manager's hostnames, not the file's
    }, states


# -- the HTTP-01 port cannot be abused ----------------------------------------------------------


async def test_the_challenge_port_answers_only_waiting_tokens_for_their_host(
    store: Store, pebble: Pebble
) -> None:
    from zerogate.autotls.order import Pending

    m = manager(store, pebble, {"app.example.test"})
    listener = ChallengeListener(m, https_port=443)
    token = "A" * 43
    await m.publish(Pending("http-01", "app.example.test", token, token + ".thumb"))

    async def ask(target: str, host: str, method: str = "GET") -> bytes:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        return await listener.answer(head)

    ok = await ask(f"/.well-known/acme-challenge/{token}", "app.example.test")
    assert ok.startswith(b"HTTP/1.1 200") and ok.endswith(token.encode() + b".thumb")
    # the same token asked for under another name, an unknown token, a bad token, a POST
    assert (await ask(f"/.well-known/acme-challenge/{token}", "evil.example.test")).startswith(
        b"HTTP/1.1 404"
    )
    assert (await ask("/.well-known/acme-challenge/" + "B" * 43, "app.example.test")).startswith(
        b"HTTP/1.1 404"
    )
    assert (await ask("/.well-known/acme-challenge/../../admin", "app.example.test")).startswith(
        b"HTTP/1.1 404"
    )
    assert (
        await ask(f"/.well-known/acme-challenge/{token}", "app.example.test", "POST")
    ).startswith(b"HTTP/1.1 404")
    # everything else on a served host is a redirect to https, never proxied; others 404
    moved = await ask("/admin?x=1", "app.example.test:80")
    assert moved.startswith(b"HTTP/1.1 308")
    assert b"location: https://app.example.test/admin?x=1\r\n" in moved
    assert (await ask("/", "evil.example.test")).startswith(b"HTTP/1.1 404")
    # malformed heads: two Host headers, a header injection attempt, no HTTP version
    two = b"GET / HTTP/1.1\r\nHost: app.example.test\r\nHost: evil.example.test\r\n\r\n"
    assert (await listener.answer(two)).startswith(b"HTTP/1.1 400")
    assert (await listener.answer(b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n")).startswith(
        b"HTTP/1.1 400"
    )
    assert (await listener.answer(b"GET /\r\n\r\n")).startswith(b"HTTP/1.1 400")
    # withdrawn: the token is no longer answered, by this node or from the store
    await m.withdraw(Pending("http-01", "app.example.test", token, token + ".thumb"))
    assert (await ask(f"/.well-known/acme-challenge/{token}", "app.example.test")).startswith(
        b"HTTP/1.1 404"
    )


async def test_another_nodes_token_is_answered_from_the_store(
    store: Store, pebble: Pebble, tmp_path: Path
) -> None:
    from zerogate.autotls.order import Pending

    ordering = manager(store, pebble, {"app.example.test"})
    other_store = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=tmp_path))
    try:
        answering = ChallengeListener(manager(other_store, pebble, set()), https_port=443)
        token = "C" * 43
        await ordering.publish(Pending("http-01", "app.example.test", token, token + ".k"))
        head = f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: app.example.test\r\n\r\n"
        assert (await answering.answer(head.encode())).startswith(b"HTTP/1.1 200")
    finally:
        await other_store.close()


# -- `zerogate server` with listen.tls.acme -----------------------------------------------------


async def https_get(port: int, host: str, path: str, trust: ssl.SSLContext) -> bytes:
    """One HTTPS request to the server on 127.0.0.1 for ``host`` (SNI and Host); the head."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trust, server_hostname=host
    )
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return head


async def test_a_server_obtains_serves_and_extends_its_certificates_without_restart(
    tmp_path: Path, pebble: Pebble, bind: Bind, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zg_harness import Zerogate, free_port

    monkeypatch.setenv("ZG_TEST_ACME_TSIG", bind.secret)
    zg = Zerogate(tmp_path, free_port(), free_port())
    zg.portal_setting = f"https://auth.example.test:{zg.port}"
    zg.tls = (
        f"{{acme: {{email: ops@example.test, directory: '{pebble.directory}', "
        f"ca_bundle: '{pebble.ca_file}', http: '127.0.0.1:{pebble.http_port}'}}}}"
    )
    dns_settings = (
        f"dns: {{rfc2136: {{server: '{bind.server}', zone: {ZONE}, key_name: {bind.key_name}, "
        "key_secret_env: ZG_TEST_ACME_TSIG}, edge_addresses: [127.0.0.1]}\n"
    )
    apps = (
        "applications:\n"
        "  - {name: app, domain: app.example.test, origin: 'http://127.0.0.1:9', policies: "
        "[{name: all, decision: allow, include: [{everyone: true}]}]}\n"
        "  - {name: dev, domain: '*.dev.example.test', origin: 'http://127.0.0.1:9', policies: "
        "[{name: all, decision: allow, include: [{everyone: true}]}]}\n"
    )
    zg.apply(dns_settings + apps)
    zg.start(workers=2)  # two workers: one orders (lease), both serve, either answers the CA
    try:
        trust = pebble.client_context()

        async def serving(host: str, sni: str | None = None) -> x509.Certificate | None:
            # every worker serves it (each reloads within its 1 s poll; the kernel spreads
            # the connections over both): several handshakes in a row succeed
            cert = None
            for _ in range(8):
                try:
                    cert = await served_cert(zg.port, sni or host, trust)
                except (ssl.SSLError, ConnectionError):
                    return None
            return cert

        expected: list[tuple[str, str | None]] = [
            ("auth.example.test", None),
            ("app.example.test", None),
            ("*.dev.example.test", "one.dev.example.test"),
        ]
        for host, sni in expected:

            async def check(h: str = host, s: str | None = sni) -> x509.Certificate | None:
                return await serving(h, s)

            cert = await wait_for(check, timeout=60, what=f"a certificate for {host}")
            assert names(cert) == [host], zg.log_text()
        # the portal and an application answer over HTTPS (relayed to the ASGI application)
        portal = await https_get(zg.port, "auth.example.test", "/.zerogate/certs", trust)
        assert portal.startswith(b"HTTP/1.1 200"), portal
        app = await https_get(zg.port, "app.example.test", "/.zerogate/identity", trust)
        assert app.split(b" ")[1] in (b"401", b"200"), app
        # a hostname applied while it runs gets its certificate without a restart
        pid = zg.proc.pid if zg.proc else 0
        zg.apply(
            dns_settings
            + apps
            + "  - {name: new, domain: new.example.test, origin: 'http://127.0.0.1:9', "
            "policies: [{name: all, decision: allow, include: [{everyone: true}]}]}\n"
        )
        cert = await wait_for(
            lambda: serving("new.example.test"), timeout=60, what="the new hostname's certificate"
        )
        assert names(cert) == ["new.example.test"]
        assert zg.proc is not None and zg.proc.pid == pid and zg.proc.poll() is None
        # the plain-HTTP port redirects served hostnames to https and proxies nothing
        reader, writer = await asyncio.open_connection("127.0.0.1", pebble.http_port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        head = await reader.read()
        writer.close()
        assert head.startswith(b"HTTP/1.1 308")
        assert f"location: https://app.example.test:{zg.port}/x".encode() in head
        # the admin API's certificate status: every hostname the server certifies, valid
        from zg_harness import open_store

        async with open_store(zg) as store:
            _, token = await AdminService(store).create_api_token(
                "certs", read_only=True, expires="1h", actor=Actor("test")
            )
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", zg.port, ssl=trust, server_hostname="auth.example.test"
        )
        writer.write(
            f"GET /api/v1/certificates HTTP/1.1\r\nHost: auth.example.test:{zg.port}\r\n"
            f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
        )
        reply = await reader.read()
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply[:300]
        if b"transfer-encoding: chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
        states = {c["host"]: (c["state"], c["issuer"]) for c in json.loads(body)["certificates"]}
        assert set(states) == {
            "auth.example.test",
            "app.example.test",
            "*.dev.example.test",
            "new.example.test",
        }, states
        assert all(state == "valid" and "Pebble" in issuer for state, issuer in states.values())
    finally:
        zg.stop()


async def test_the_fast_path_front_serves_over_acme_tls(
    tmp_path: Path, pebble: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web

    from zg_harness import Zerogate, free_port

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.headers.get('X-Forwarded-Proto')}")

    origin = web.AppRunner(web.Application())
    origin.app.router.add_get("/", hello)
    await origin.setup()
    origin_port = free_port()
    await web.TCPSite(origin, "127.0.0.1", origin_port).start()
    zg = Zerogate(tmp_path, free_port(), free_port())
    zg.tls = (
        f"{{acme: {{email: ops@example.test, directory: '{pebble.directory}', "
        f"ca_bundle: '{pebble.ca_file}', http: '127.0.0.1:{pebble.http_port}'}}}}"
    )
    zg.listen_extra = "fast_path: true"
    zg.apply(
        "applications:\n"
        f"  - {{name: open, domain: open.example.test, origin: 'http://127.0.0.1:{origin_port}',"
        " policies: [{name: all, decision: bypass, include: [{everyone: true}]}]}\n"
    )
    zg.start()
    try:
        trust = pebble.client_context()

        async def answered() -> bytes | None:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", zg.port, ssl=trust, server_hostname="open.example.test"
                )
            except (ssl.SSLError, ConnectionError):
                return None
            writer.write(b"GET / HTTP/1.1\r\nHost: open.example.test\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            writer.close()
            return reply

        reply = await wait_for(answered, timeout=60, what="the application over HTTPS")
        assert reply.startswith(b"HTTP/1.1 200"), reply
        assert reply.endswith(b"hello https")  # the origin learns the request came over TLS
    finally:
        zg.stop()
        await origin.cleanup()


async def test_the_challenge_port_caps_its_connections(
    store: Store, pebble: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zerogate.autotls import http01
    from zg_harness import free_port

    monkeypatch.setattr(http01, "MAX_CONNECTIONS", 2)
    listener = ChallengeListener(manager(store, pebble, {"app.example.test"}), https_port=443)
    port = free_port()
    await listener.start(listening(port))
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await wait_for(lambda: listener.open == 2, what="two connections held")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(5):  # closed at once (FIN or RST), nothing answered
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read() == b""
        writer.close()
        # the held ones are still served
        held_reader, held_writer = held[0]
        held_writer.write(b"GET / HTTP/1.1\r\nHost: app.example.test\r\n\r\n")
        assert (await held_reader.read()).startswith(b"HTTP/1.1 308")
        for _, w in held:
            w.close()
    finally:
        await listener.stop()
