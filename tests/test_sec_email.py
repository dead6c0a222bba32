"""A PIN proves exactly one mailbox (issue #10 items 1-5, #17 item 5), below the HTTP layer.

The address grammar (``check_email``) with property tests: nothing it accepts can be read by a
mail parser as another mailbox, or as two, and accepting is stable. The Mailer against a real
SMTP server (``zerogate.outbox``): the envelope recipients the server received are exactly the
one canonical address, and a per-recipient failure is not "mail is down". PIN records: decoys
never match, a PIN works only in the browser it was issued to. IdP addresses are never repaired.
The same attacks over HTTP against a running server are in ``test_sec_email_e2e.py``.
"""

from __future__ import annotations

import asyncio
import email.utils
import string
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.headerregistry import Address
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zerogate.identity import (
    PinOutcome,
    PinRecord,
    browser_binding,
    check_pin,
    decoy,
    issue_pin,
    oidc,
)
from zerogate.mail import Mailer, MailError, PinEmail, render_pin_email
from zerogate.model.objects import Smtp
from zerogate.model.values import EmailRefused, check_email
from zerogate.outbox import Outbox

SENDER = "zerogate <noreply@zerogate.example>"
SECRET = b"s" * 32

#: every address of the issues' reports, each to be refused
ATTACKS = [
    # item 1: re-parsed into other recipients
    "=?utf-8?q?attacker=40evil.com=2C?=b@example.com",
    "a,b@example.com",
    "a<b>@example.com",
    "attacker@evil.com, b@example.com",
    "b@example.com;attacker@evil.com",
    "Bob <b@example.com>",
    # item 2: another identity string for mallory's mailbox
    '"mallory"@example.com',
    "(x)mallory@example.com",
    "mallory(x)@example.com",
    "=?utf-8?q?mallory?=@example.com",
    "mallory@[127.0.0.1]",
    "mallory@example.com.",
    # item 3: an encoded word of invalid UTF-8
    "=?utf-8?b?/w==?=@example.com",
    "=?utf-8?q?=FF?=x@example.com",
    # #17 item 5: what .strip().lower() used to repair into ops@example.com
    "ops@example.com\u3000",
    "ops@example.com\u00a0",
    "ops@example.com\u2028",
    "ops@example.com\x1f",
    "ops@example.com\x85",
    "\u3000ops@example.com",
    "ops@example.\u212aom",  # the Kelvin sign lower-cases to k
    "ops@example.com\x00",
    "ops@example.com\x1b[31m",
    " ops@example.com",
    "ops@example.com\n",
    "ops@example.com\r\nBcc: attacker@evil.com",
    # plain nonsense
    "",
    "ops",
    "ops@",
    "@example.com",
    "ops@example",
    "a..b@example.com",
    ".a@example.com",
    "a.@example.com",
    "a@b@example.com",
    "a@-example.com",
    "a@example-.com",
    "a@example..com",
    "a@1.2.3.4",
    "a@xn--.com",
    "a\\b@example.com",
    "a b@example.com",
    "\u00fcser@example.com",
    "user@b\u00fccher.example",
    "x" * 65 + "@example.com",
    "a@" + "b" * 64 + ".com",
    "a@" + ".".join(["b" * 60] * 5) + ".com",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_the_reported_addresses_are_refused(text: str) -> None:
    with pytest.raises(EmailRefused) as info:
        check_email(text)
    assert "is not an email address" in str(info.value)
    assert info.value.reason and "\n" not in info.value.reason


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Ann@Example.COM", "ann@example.com"),
        ("o'neil@example.com", "o'neil@example.com"),
        ("a.b+tag_x_y-z@mail.example.co.uk", "a.b+tag_x_y-z@mail.example.co.uk"),
        ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ("x" * 64 + "@example.com", "x" * 64 + "@example.com"),
    ],
)
def test_addresses_in_the_grammar_are_lower_cased_once(text: str, canonical: str) -> None:
    assert check_email(text) == canonical
    assert check_email(canonical) == canonical


@pytest.mark.parametrize(
    "text", ["attacker%evil.test@example.com", "a%b@example.com", "%@example.com"]
)
def test_the_percent_hack_is_refused(text: str) -> None:
    """Second security review: relays that still do the "percent hack" (Postfix's
    allow_percent_hack, on by default) would deliver the PIN to attacker@evil.test."""
    with pytest.raises(EmailRefused, match="'%'"):
        check_email(text)


@pytest.mark.parametrize(
    ("address", "mailbox"),
    [
        ("mallory+x@example.com", "mallory@example.com"),
        ("a.b+c+d@example.com", "a.b@example.com"),
        ("plain@example.com", "plain@example.com"),
        ("+x@example.com", "+x@example.com"),  # no mailbox before the tag: itself
    ],
)
def test_the_mailbox_of_a_subaddress(address: str, mailbox: str) -> None:
    from zerogate.model.values import mailbox_of

    assert mailbox_of(address) == mailbox


def test_non_text_is_refused() -> None:
    with pytest.raises(ValueError, match="not an email address"):
        check_email(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- properties

_ATOM = st.text(alphabet=string.ascii_letters + string.digits + "_+-'", min_size=1, max_size=8)
_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
_TLD = st.from_regex(r"[A-Za-z][A-Za-z0-9]{1,5}", fullmatch=True)
grammar_addresses = st.builds(
    lambda atoms, labels, tld: ".".join(atoms) + "@" + ".".join([*labels, tld]),
    st.lists(_ATOM, min_size=1, max_size=4),
    st.lists(_LABEL, min_size=1, max_size=3),
    _TLD,
)
#: anything typed: the grammar's characters mixed with every special one a mail parser reads
_NASTY = string.ascii_letters[:6] + "@.'+%-_ ,;:<>()[]\"\\=?!#$&*/^`{|}~\t\r\n\x00\x1f\x7f\x85"
typed = st.one_of(
    st.text(alphabet=_NASTY, max_size=40),
    st.text(max_size=30),
    st.builds(
        lambda a, b, c: a + b + c,
        st.text(_NASTY, max_size=8),
        grammar_addresses,
        st.text(_NASTY, max_size=8),
    ),
)


def _recipients_of(message_bytes: bytes) -> list[str]:
    """What mail software reads as the recipients of the built message's To header."""
    parsed = message_from_bytes(message_bytes, policy=default_policy)
    header = parsed["To"]
    by_registry = [a.addr_spec for a in header.addresses]
    by_utils = [addr for _, addr in email.utils.getaddresses([str(header)])]
    assert by_registry == by_utils
    return by_registry


def _built(address: str) -> bytes:
    message = render_pin_email(
        PinEmail(to=address, pin="123456", app_name="Wiki", confirm_url="https://a.example/x"),
        sender=SENDER,
    )
    return message.as_bytes(policy=SMTP_POLICY)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(grammar_addresses)
def test_every_address_of_the_grammar_is_accepted_and_stable(address: str) -> None:
    canonical = check_email(address)
    assert canonical == address.lower()
    assert check_email(canonical) == canonical


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(typed)
def test_nothing_accepted_is_another_recipient_or_identity(text: str) -> None:
    try:
        canonical = check_email(text)
    except EmailRefused:
        return
    # stable, ASCII, lower-case, and the text itself (nothing stripped, decoded or repaired)
    assert canonical == text.lower() and canonical.isascii()
    assert check_email(canonical) == canonical
    # every mail parser reads it as exactly this one mailbox
    assert email.utils.parseaddr(canonical) == ("", canonical)
    assert email.utils.getaddresses([canonical]) == [("", canonical)]
    local, _, domain = canonical.partition("@")
    assert Address(addr_spec=canonical).username == local
    assert Address(addr_spec=canonical).domain == domain
    # and the built message names exactly it as its recipient
    assert _recipients_of(_built(canonical)) == [canonical]


def test_the_message_refuses_a_recipient_that_is_not_canonical() -> None:
    for text in ("Ann@example.com", "a,b@example.com", ATTACKS[0]):
        with pytest.raises(ValueError, match=r"(canonical|not an email address)"):
            _built(text)


# ---------------------------------------------------------------------------- the Mailer


@pytest.fixture
async def outbox() -> AsyncIterator[Outbox]:
    async with Outbox() as box:
        yield box


class RecordingOutbox(Outbox):
    """An outbox that also keeps every envelope exactly as the server received it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.envelopes: list[tuple[str, list[str]]] = []

    async def _deliver(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        self.envelopes.append((sender, list(recipients)))
        await super()._deliver(raw, sender, recipients)


def mailer(box: Outbox) -> Mailer:
    return Mailer(Smtp(host="127.0.0.1", port=box.port, timeout="5s"), SENDER)


async def test_the_server_receives_exactly_the_one_canonical_recipient() -> None:
    box = RecordingOutbox()
    async with box:
        for address in (
            "ann@example.com",
            "o'neil+x_y@mail.example.org",
            "a-b_c@xn--bcher-kva.example",
        ):
            message = render_pin_email(
                PinEmail(to=address, pin="123456", app_name="W", confirm_url="https://a.example/"),
                sender=SENDER,
            )
            await mailer(box).send(message, address)
        assert box.envelopes == [
            ("noreply@zerogate.example", ["ann@example.com"]),
            ("noreply@zerogate.example", ["o'neil+x_y@mail.example.org"]),
            ("noreply@zerogate.example", ["a-b_c@xn--bcher-kva.example"]),
        ]


async def test_the_recipient_is_never_read_from_the_header() -> None:
    """Even a message whose To header names other mailboxes goes only to ``to``."""
    box = RecordingOutbox()
    async with box:
        message = render_pin_email(
            PinEmail(to="b@example.com", pin="123456", app_name="W", confirm_url="https://a.x/"),
            sender=SENDER,
        )
        del message["To"]
        message["To"] = "=?utf-8?q?attacker=40evil.com=2C?= b@example.com, c@evil.com"
        await mailer(box).send(message, "b@example.com")
        assert box.envelopes == [("noreply@zerogate.example", ["b@example.com"])]


@pytest.mark.parametrize("to", ["Ann@example.com", ATTACKS[0], "a,b@example.com", " a@example.com"])
async def test_send_refuses_a_recipient_that_is_not_canonical(outbox: Outbox, to: str) -> None:
    message = render_pin_email(
        PinEmail(to="a@example.com", pin="123456", app_name="W", confirm_url="https://a.x/"),
        sender=SENDER,
    )
    with pytest.raises(MailError) as info:
        await mailer(outbox).send(message, to)
    assert info.value.server_down is False
    assert outbox.messages() == []


async def test_a_refused_recipient_is_not_mail_down_and_others_still_get_mail(
    outbox: Outbox,
) -> None:
    outbox.refuse.add("bounce@example.com")
    send = mailer(outbox)

    def pin_mail(to: str) -> Any:
        return render_pin_email(
            PinEmail(to=to, pin="654321", app_name="W", confirm_url="https://a.x/"), sender=SENDER
        )

    with pytest.raises(MailError, match="recipient refused") as info:
        await send.send(pin_mail("bounce@example.com"), "bounce@example.com")
    assert info.value.server_down is False
    await send.send(pin_mail("ok@example.com"), "ok@example.com")
    assert [m.to for m in outbox.messages()] == ["ok@example.com"]


async def test_an_unreachable_server_is_mail_down() -> None:
    box = Outbox()
    await box.start()
    port = box.port
    await box.stop()
    with pytest.raises(MailError, match="connection refused") as info:
        await Mailer(Smtp(host="127.0.0.1", port=port, timeout="2s"), SENDER).send(
            render_pin_email(
                PinEmail(to="a@example.com", pin="123456", app_name="W", confirm_url="https://a/"),
                sender=SENDER,
            ),
            "a@example.com",
        )
    assert info.value.server_down is True


async def test_a_server_that_never_greets_is_mail_down() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(MailError, match="timed out") as info:
            await Mailer(Smtp(host="127.0.0.1", port=port, timeout="0.5s"), SENDER).send(
                render_pin_email(
                    PinEmail(
                        to="a@example.com", pin="1" * 6, app_name="W", confirm_url="https://a/"
                    ),
                    sender=SENDER,
                ),
                "a@example.com",
            )
        assert info.value.server_down is True
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------- PIN records


def test_a_decoy_record_never_matches_and_counts_tries_like_a_real_one() -> None:
    binding = browser_binding(SECRET, "b" * 43)
    pin, real = issue_pin("a@example.com", "wiki", secret=SECRET, now=0.0, browser=binding)
    fake = decoy(real)
    assert fake.tries_left == real.tries_left and fake.expires_at == real.expires_at
    assert len(fake.pin_hash) == len(real.pin_hash) and fake.pin_hash != real.pin_hash
    outcomes = []
    record = fake
    for _ in range(5):
        outcome, record = check_pin(record, pin, SECRET, 1.0, browser=binding)
        outcomes.append(outcome)
    assert outcomes == [PinOutcome.WRONG] * 4 + [PinOutcome.EXHAUSTED]
    # the same sequence as five wrong codes on the real record
    real_outcomes = []
    record = real
    for guess in ("000000", "000001", "000002", "000003", "000004"):
        outcome, record = check_pin(
            record, guess if guess != pin else "999999", SECRET, 1.0, browser=binding
        )
        real_outcomes.append(outcome)
    assert real_outcomes == outcomes


def test_a_pin_works_only_in_the_browser_it_was_issued_to() -> None:
    mine, theirs = browser_binding(SECRET, "m" * 43), browser_binding(SECRET, "t" * 43)
    assert mine and theirs and mine != theirs
    pin, record = issue_pin("a@example.com", "wiki", secret=SECRET, now=0.0, browser=mine)
    for other in (theirs, ""):
        outcome, after = check_pin(record, pin, SECRET, 1.0, browser=other)
        assert outcome == PinOutcome.ELSEWHERE and after == record  # no try used, nothing told
    assert check_pin(record, pin, SECRET, 1.0, browser=mine)[0] == PinOutcome.OK
    # a record without a binding (older than this rule) is usable by no browser
    _, unbound = issue_pin("a@example.com", "wiki", secret=SECRET, now=0.0)
    assert check_pin(unbound, pin, SECRET, 1.0, browser="")[0] == PinOutcome.ELSEWHERE
    # survives the store's round trip
    assert PinRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize("token", ["", "short", "é" * 30, "x" * 101])
def test_a_malformed_browser_cookie_binds_nothing(token: str) -> None:
    assert browser_binding(SECRET, token) == ""


# ---------------------------------------------------------------------------- IdP addresses


def idp_claims(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"sub": "u-1", "email": "ops@example.com", "email_verified": True}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    "address",
    [
        "ops@example.com\u3000",
        "ops@example.com\u00a0",
        "ops@example.com\u2028",
        "ops@example.com\x1f",
        "ops@example.com\x85",
        "\u3000ops@example.com",
        "ops@example.\u212aom",
        "ops@example.com\x00",
        "ops@example.com\x1b",
        " ops@example.com",
    ],
)
def test_an_idp_address_is_refused_never_repaired(address: str) -> None:
    identity = oidc.identity_from_claims(idp_claims(email=address), None)
    assert identity.email != "ops@example.com"
    with pytest.raises(EmailRefused):
        check_email(identity.email)


def test_an_idp_address_is_lower_cased_as_ascii() -> None:
    identity = oidc.identity_from_claims(idp_claims(email="Ops@Example.COM"), None)
    assert check_email(identity.email) == "ops@example.com"


@pytest.mark.parametrize(
    "flag", [False, "false", " false", "FALSE", 0, "0", "no", 1, "yes", "True", [], {}]
)
def test_only_true_counts_as_verified(flag: object) -> None:
    with pytest.raises(oidc.EmailUnverified) as info:
        oidc.identity_from_claims(idp_claims(email_verified=flag), None)
    assert "email_verified is not true" in str(info.value)


@pytest.mark.parametrize("flag", [True, "true"])
def test_true_is_verified(flag: object) -> None:
    assert (
        oidc.identity_from_claims(idp_claims(email_verified=flag), None).email == "ops@example.com"
    )
