"""Log injection (issue 17): what came from outside reaches the server's log escaped, one
record one line, so nobody can forge log lines or rewrite an operator's terminal."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from zerogate import logsetup

FORGED = (
    "access_denied: nope\n2026-12-07 10:00:00 INFO zerogate: admin ops logged in"
    "\x1b[2J\u2028x\u202e"
)


@pytest.fixture
def configured(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    logsetup.configure("INFO")
    yield
    for handler in list(root.handlers):
        if handler not in before[0]:
            root.removeHandler(handler)
    root.setLevel(before[1])


def test_escape_makes_every_control_visible() -> None:
    assert logsetup.escape("a\nb\r\tc\x00\x1b[1m\x7f\x85\u2028\u2029\u202e\u2066") == (
        "a\\nb\\r\\tc\\x00\\x1b[1m\\x7f\\x85\\u2028\\u2029\\u202e\\u2066"
    )
    assert logsetup.escape("plain ünïcode ✓ text") == "plain ünïcode ✓ text"


def test_an_idp_error_description_cannot_forge_a_log_line(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OIDC callback's ``error_description`` is the client's text (anyone can call the
    callback); it is logged as one escaped line."""
    logging.getLogger("zerogate.portal.oidc").info("oidc login via %s failed: %s", "fake", FORGED)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "\x1b" not in err and "\u2028" not in err and "\u202e" not in err
    assert "\\n2026-12-07 10:00:00 INFO" in lines[0] and "\\x1b[2J" in lines[0]


def test_zerogates_own_tracebacks_keep_their_lines(
    configured: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("zerogate.test").exception("write failed for %s", "a\nb")
    err = capsys.readouterr().err
    assert "write failed for a\\nb" in err
    assert "Traceback (most recent call last):" in err and err.count("\n") > 2


def test_the_server_and_connector_log_through_the_escaping_formatter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    importlib.import_module("zerogate.cli.main")  # the CLI package loads in its own order
    connector = importlib.import_module("zerogate.cli.connector")
    from zerogate.server import app

    root = logging.getLogger()
    saved = list(root.handlers)
    monkeypatch.setenv("ZEROGATE_LOG_LEVEL", "INFO")
    try:
        app.create_app()
        assert any(isinstance(h.formatter, logsetup.EscapingFormatter) for h in root.handlers)
        connector._configure_logging("info")
        escaping = [h for h in root.handlers if isinstance(h.formatter, logsetup.EscapingFormatter)]
        assert len(escaping) == 1  # configured twice, installed once
    finally:
        for handler in list(root.handlers):
            if handler not in saved:
                root.removeHandler(handler)


def test_structlog_events_are_escaped() -> None:
    event = logsetup.escape_event(None, "info", {"event": "dial", "edge": "x\ny", "n": 3})
    assert event == {"event": "dial", "edge": "x\\ny", "n": 3}
