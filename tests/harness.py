"""Small helpers every test harness shares: a free port, waiting on a condition (sync and
async) or a listening port, and a process's memory. ``zg_harness`` and ``edge_harness``
re-export the ones their own code uses; tests import them from here."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from playwright.sync_api import Page

T = TypeVar("T")

__all__ = [
    "assert_screenshot_shows",
    "free_port",
    "peak_rss_kib",
    "wait_for",
    "wait_for_port",
    "wait_until",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll until ``host:port`` accepts a connection; fail at once when ``proc`` exited (or
    ``alive()`` says the server is gone), else after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}") from None
            if alive is not None and not alive():
                raise RuntimeError(f"the server for port {port} exited before listening") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.02)


def wait_until(
    check: Callable[[], T | None],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``check()`` until it returns something truthy and return that; ``TimeoutError``
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


@overload
async def wait_for(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = ...,  # noqa: ASYNC109
    what: str = ...,
    interval: float = ...,
) -> T: ...


@overload
async def wait_for(
    check: Callable[[], T | None],
    timeout: float = ...,  # noqa: ASYNC109
    what: str = ...,
    interval: float = ...,
) -> T: ...


async def wait_for(
    check: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for a poll, not for one await
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """``wait_until`` inside an event loop: ``check`` may be a plain or an async function
    (state spread over several objects, or behind a network call: no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


def peak_rss_kib(pid: int) -> int:
    """A process's peak resident set size so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise KeyError("VmHWM")


def assert_screenshot_shows(page: Page, shot: bytes, selector: str) -> None:
    """``shot``, a screenshot of ``page``, holds a rendered page: a PNG of the viewport's
    size, well over twice the size of an empty page's (so not blank), with ``selector``
    visible inside it."""
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    viewport = page.viewport_size
    assert viewport is not None
    width, height = int.from_bytes(shot[16:20], "big"), int.from_bytes(shot[20:24], "big")
    assert (width, height) == (viewport["width"], viewport["height"])
    empty = page.context.new_page()
    try:
        empty.set_content("<!doctype html><title>empty</title>")
        assert len(shot) > 2 * len(empty.screenshot()), "the screenshot is (nearly) blank"
    finally:
        empty.close()
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not rendered"
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, f"{selector} is off screen"
