"""Shared test settings.

Under CI (``CI`` set) a skipped test fails the run: a missing dependency must be installed by
``.ci/run``, never silently skipped.
"""

from __future__ import annotations

import os

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not os.environ.get("CI"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        if reporter is not None:
            reporter.write_line(
                f"CI: {len(skipped)} test(s) skipped; under CI a skip is a failure", red=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.only_wire(P)``: a tunnel-protocol test about one wire's frames runs only
    with that wire (the module runs every test over both); the other is deselected, never
    skipped."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        mark = item.get_closest_marker("only_wire")
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if (
            mark is not None
            and "wire_protocol" in params
            and params["wire_protocol"] != mark.args[0]
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
