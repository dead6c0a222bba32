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
