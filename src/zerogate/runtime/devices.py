"""A person-readable name for the device behind a User-Agent ("Firefox on Windows", "Safari on
iPhone"), for the sessions lists. A heuristic on the usual tokens, not a database: an agent it
does not recognise is shown cut short as it came."""

from __future__ import annotations

import re

#: (pattern, name) in the order to try: more specific browsers before the engines they embed
_BROWSERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"\bEdg(?:e|A|iOS)?/", "Edge"),
        (r"\bOPR/|\bOpera\b", "Opera"),
        (r"\bSamsungBrowser/", "Samsung Internet"),
        (r"\bFirefox/|\bFxiOS/", "Firefox"),
        (r"\bCriOS/", "Chrome"),
        (r"\bHeadlessChrome/", "Headless Chrome"),
        (r"\bChromium/", "Chromium"),
        (r"\bChrome/", "Chrome"),
        (r"\bVersion/[\d.]+.*\bSafari/", "Safari"),
        (r"^curl/", "curl"),
        (r"^python-requests/|^aiohttp/|^Python-urllib/|^python-httpx/", "Python"),
        (r"^Wget/", "Wget"),
    )
)
_SYSTEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), name)
    for pattern, name in (
        (r"\biPhone\b", "iPhone"),
        (r"\biPad\b", "iPad"),
        (r"\bAndroid\b", "Android"),
        (r"\bCrOS\b", "ChromeOS"),
        (r"\bWindows\b", "Windows"),
        (r"\bMac OS X\b|\bMacintosh\b", "macOS"),
        (r"\bLinux\b", "Linux"),
    )
)
#: an unrecognised agent is shown cut to this many characters
SHOWN_CHARS = 60


def device_of(user_agent: str | None) -> str:
    """``"Chrome on Linux"``, ``"Safari on iPhone"``, ``"curl"``; ``"unknown device"`` when
    there was no User-Agent."""
    agent = (user_agent or "").strip()
    if not agent:
        return "unknown device"
    browser = next((name for pattern, name in _BROWSERS if pattern.search(agent)), None)
    system = next((name for pattern, name in _SYSTEMS if pattern.search(agent)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser or system:
        return browser or f"a browser on {system}"
    return agent if len(agent) <= SHOWN_CHARS else agent[: SHOWN_CHARS - 1] + "…"
