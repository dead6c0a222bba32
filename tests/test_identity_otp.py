"""One-time PIN state machine and the PIN-sending rate limits."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.identity import (
    ADDRESS_LIMIT,
    IP_LIMIT,
    PIN_TTL_SECONDS,
    Limit,
    PinOutcome,
    PinRecord,
    PinSendLimiter,
    RateLimiter,
    check_pin,
    hash_pin,
    ip_key,
    issue_pin,
    new_pin,
    pin_key,
)

SECRET = b"s" * 32
T0 = 1_700_000_000.0


def rng_of(*values: int) -> Callable[[int], int]:
    """A stand-in for ``secrets.randbelow`` returning the given values in turn."""
    it: Iterator[int] = iter(values)
    return lambda n: next(it)


def test_spec_constants() -> None:
    assert PIN_TTL_SECONDS == 600
    assert (ADDRESS_LIMIT.events, ADDRESS_LIMIT.window_seconds) == (5, 900)
    assert (IP_LIMIT.events, IP_LIMIT.window_seconds) == (20, 900)


# --------------------------------------------------------------------------- PINs


def test_pins_are_six_digits_zero_padded() -> None:
    assert new_pin(rng_of(42)) == "000042"
    assert new_pin(rng_of(999_999)) == "999999"
    with pytest.raises(ValueError):
        new_pin(rng_of(1_000_000))
    for _ in range(200):
        pin = new_pin()
        assert len(pin) == 6 and pin.isdigit()


def test_pins_are_uniformly_spread() -> None:
    """Loose chi-square checks on 10k draws, digit by digit (the first one is the decile)."""
    draws = [new_pin() for _ in range(10_000)]
    assert len(set(draws)) > 9_800  # ~50 collisions expected among 1e6 values
    # 9 degrees of freedom: P(chi2 > 45) is about 1e-6 for a uniform source
    for position in range(6):
        counts = Counter(pin[position] for pin in draws)
        chi2 = sum((counts[str(d)] - 1000) ** 2 / 1000 for d in range(10))
        assert chi2 < 45, (position, counts)


def test_right_pin_works_once_then_is_used() -> None:
    pin, record = issue_pin("Alice@Example.com", "wiki", secret=SECRET, now=T0)
    assert record.email == "alice@example.com"
    assert pin not in record.pin_hash and len(record.pin_hash) == 64
    assert (record.created_at, record.expires_at, record.tries_left) == (T0, T0 + 600, 5)
    outcome, record = check_pin(record, pin, SECRET, T0 + 30)
    assert outcome is PinOutcome.OK and record.used
    outcome, again = check_pin(record, pin, SECRET, T0 + 31)
    assert outcome is PinOutcome.USED and again == record


def test_spaces_in_the_candidate_are_ignored() -> None:
    _, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0, rng=rng_of(123456))
    assert check_pin(record, " 123 456 ", SECRET, T0)[0] is PinOutcome.OK


def test_five_wrong_tries_void_the_pin() -> None:
    pin, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0, rng=rng_of(111111))
    for left in (4, 3, 2, 1):
        outcome, record = check_pin(record, "222222", SECRET, T0)
        assert outcome is PinOutcome.WRONG and record.tries_left == left
    outcome, record = check_pin(record, "222222", SECRET, T0)
    assert outcome is PinOutcome.EXHAUSTED and record.tries_left == 0
    outcome, after = check_pin(record, pin, SECRET, T0)
    assert outcome is PinOutcome.EXHAUSTED and not after.used


def test_malformed_candidates_cost_a_try() -> None:
    _, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0)
    for candidate in ("", "12345", "1234567", "abcdef", "١٢٣٤٥٦"):
        outcome, record = check_pin(record, candidate, SECRET, T0)
    assert outcome is PinOutcome.EXHAUSTED


def test_pin_expires_after_ten_minutes() -> None:
    pin, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0)
    assert check_pin(record, pin, SECRET, T0 + 600 - 0.001)[0] is PinOutcome.OK
    outcome, after = check_pin(record, pin, SECRET, T0 + 600)
    assert outcome is PinOutcome.EXPIRED and after == record


def test_a_hash_for_alice_is_useless_for_bob() -> None:
    pin, alice = issue_pin("alice@example.com", "wiki", secret=SECRET, now=T0)
    bob = PinRecord("bob@example.com", "wiki", alice.pin_hash, T0, T0 + 600)
    assert check_pin(bob, pin, SECRET, T0)[0] is PinOutcome.WRONG
    other_app = PinRecord("alice@example.com", "payroll", alice.pin_hash, T0, T0 + 600)
    assert check_pin(other_app, pin, SECRET, T0)[0] is PinOutcome.WRONG
    assert check_pin(alice, pin, b"another-secret-of-32-bytes......", T0)[0] is PinOutcome.WRONG
    assert check_pin(alice, pin, SECRET, T0)[0] is PinOutcome.OK
    assert hash_pin(pin, secret=SECRET, email="ALICE@example.com ", app="wiki") == alice.pin_hash


def test_a_new_pin_voids_the_previous_one() -> None:
    store: dict[tuple[str, str], PinRecord] = {}
    first, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0, rng=rng_of(111111))
    store[record.key] = record
    second, record = issue_pin("A@x.io", "wiki", secret=SECRET, now=T0 + 5, rng=rng_of(222222))
    store[record.key] = record  # same key: replaces the first
    assert len(store) == 1
    current = store[pin_key("a@x.io", "wiki")]
    assert check_pin(current, first, SECRET, T0 + 10)[0] is PinOutcome.WRONG
    assert check_pin(current, second, SECRET, T0 + 10)[0] is PinOutcome.OK


def test_record_storage_round_trip() -> None:
    _, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0)
    _, record = check_pin(record, "not a pin", SECRET, T0)
    assert record.tries_left == 4
    assert PinRecord.from_dict(record.to_dict()) == record


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        issue_pin("a@x.io", "wiki", secret=b"short", now=T0)


_PIN = st.integers(min_value=0, max_value=999_999).map(lambda n: f"{n:06d}")


@settings(max_examples=400, deadline=None)
@given(
    pin=_PIN,
    candidate=st.one_of(_PIN, st.text(max_size=12), st.text(alphabet="0123456789 ", max_size=9)),
    tries=st.integers(min_value=1, max_value=5),
    elapsed=st.floats(min_value=0, max_value=599),
)
def test_check_pin_never_accepts_another_candidate(
    pin: str, candidate: str, tries: int, elapsed: float
) -> None:
    if "".join(candidate.split()) == pin:
        return
    _, record = issue_pin("a@x.io", "wiki", secret=SECRET, now=T0, rng=rng_of(int(pin)))
    record = replace(record, tries_left=tries)
    outcome, after = check_pin(record, candidate, SECRET, T0 + elapsed)
    assert outcome is not PinOutcome.OK
    assert not after.used and after.tries_left == tries - 1


# --------------------------------------------------------------------------- rate limits


def test_rate_limiter_allows_n_then_refuses_until_the_window_slides() -> None:
    limiter = RateLimiter(Limit(5, 900))
    for i in range(5):
        assert limiter.hit("a@x.io", T0 + 60 * i).allowed
    refused = limiter.hit("a@x.io", T0 + 300)
    assert not refused.allowed and refused.retry_after == pytest.approx(600)
    assert refused.retry_after_header == "600"
    # refusals are not recorded: hammering does not extend the wait
    for _ in range(50):
        assert not limiter.hit("a@x.io", T0 + 400).allowed
    assert limiter.hit("a@x.io", T0 + 900 - 0.5).retry_after == pytest.approx(0.5)
    assert limiter.hit("a@x.io", T0 + 900).allowed  # the first hit left the window
    again = limiter.hit("a@x.io", T0 + 901)  # the one from T0+60 leaves at T0+960
    assert not again.allowed and again.retry_after == pytest.approx(59)
    assert limiter.hit("b@x.io", T0 + 901).allowed  # other keys are independent
    assert limiter.hit("a@x.io", T0 + 10_000).allowed


def test_rate_limiter_forgets_idle_keys_and_stays_bounded() -> None:
    limiter = RateLimiter(Limit(1, 10), max_keys=100)
    for i in range(1000):
        limiter.hit(f"k{i}", T0)
    assert len(limiter) == 100
    limiter.check("k999", T0 + 11)
    assert len(limiter) == 99


def test_pin_sends_per_address() -> None:
    limiter = PinSendLimiter()
    for i in range(5):
        assert limiter.hit("Alice@Example.com", f"192.0.2.{i}", T0).allowed
    decision = limiter.hit("alice@example.com", "198.51.100.7", T0 + 1)
    assert not decision.allowed and decision.retry_after == pytest.approx(899)
    assert limiter.hit("alice@example.com", "198.51.100.7", T0 + 900).allowed


def test_pin_sends_per_mailbox_whatever_the_subaddress() -> None:
    limiter = PinSendLimiter()
    for i in range(5):
        assert limiter.hit(f"alice+{i}@example.com", f"192.0.2.{i}", T0).allowed
    assert not limiter.hit("alice@example.com", "198.51.100.7", T0 + 1).allowed
    assert not limiter.hit("alice+new@example.com", "198.51.100.7", T0 + 1).allowed
    assert limiter.hit("alicia@example.com", "198.51.100.7", T0 + 1).allowed


def test_pin_sends_per_ip_without_using_up_addresses() -> None:
    limiter = PinSendLimiter()
    for i in range(20):
        assert limiter.hit(f"user{i}@x.io", "203.0.113.9", T0).allowed
    assert not limiter.hit("victim@x.io", "203.0.113.9", T0).allowed
    # the refused attempt did not count against victim@: five sends from elsewhere still work
    for i in range(5):
        assert limiter.hit("victim@x.io", f"192.0.2.{i}", T0).allowed
    assert limiter.hit("new@x.io", "203.0.113.9", T0 + 900).allowed


def test_ipv6_clients_count_per_64() -> None:
    assert ip_key("2001:db8:1:2:aaaa::1") == ip_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    limiter = PinSendLimiter(ip_limit=Limit(2, 60))
    assert limiter.hit("a@x.io", "2001:db8::1", T0).allowed
    assert limiter.hit("b@x.io", "2001:db8::ffff", T0).allowed
    assert not limiter.hit("c@x.io", "2001:db8::1234", T0).allowed
    assert limiter.hit("c@x.io", "2001:db8:0:1::1", T0).allowed


def test_secrets_randbelow_is_the_default_source() -> None:
    # new_pin takes an injected rng; the default must be the CSPRNG, not random
    assert new_pin.__defaults__ == (secrets.randbelow,)
