"""zerogate's one outbound HTTP client (aiohttp), for the two kinds of use it has:

- :func:`proxy_session`: a long-lived session for forwarding to origins (the edge's origin
  proxy, the connector): no cookie jar, no environment proxies, no decompression, no headers
  of its own, large buffers;
- :func:`fetch`: one bounded request to an identity provider (discovery, keys, token
  exchange, "test connection"): a total time limit, a size limit, no cookies, and redirects
  followed only on the origin (scheme, host, port) the request was made to — a provider's
  discovery document that redirects to another address (an internal one, say) is refused
  rather than fetched, so "test connection" cannot be turned into a probe of other hosts.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

#: redirects :func:`fetch` follows at most (each on the same origin)
MAX_REDIRECTS = 3

_HEADERS_WE_DO_NOT_ADD = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class FetchFailed(Exception):
    """No usable answer: connection, TLS, timeout, size, or a redirect off the origin."""


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    body: bytes
    content_type: str


def proxy_session(
    connector: aiohttp.BaseConnector,
    timeout: aiohttp.ClientTimeout,
    *,
    max_field_size: int = 65536,
) -> aiohttp.ClientSession:
    """A session that forwards requests as given: adds, stores and decodes nothing."""
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=_HEADERS_WE_DO_NOT_ADD,
        read_bufsize=2**18,
        max_line_size=max_field_size,
        max_field_size=max_field_size,
    )


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


async def fetch(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    timeout: float,  # noqa: ASYNC109 - a total for the whole exchange, redirects included
    max_bytes: int,
    follow_redirects: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> Fetched:
    """One request; ``FetchFailed`` with a one-line reason when there is no usable answer.
    Redirects (GET only) are followed on the request's own origin, at most
    :data:`MAX_REDIRECTS`; an answer over ``max_bytes`` is refused."""
    origin = _origin(url)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context is not None else None
    try:
        async with aiohttp.ClientSession(
            timeout=client_timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            connector=connector,
        ) as session:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.request(
                    method,
                    url,
                    headers=dict(headers or {}),
                    data=body or None,
                    allow_redirects=False,
                ) as response:
                    location = response.headers.get("Location")
                    if (
                        follow_redirects
                        and method == "GET"
                        and response.status in (301, 302, 303, 307, 308)
                        and location
                    ):
                        target = urljoin(url, location)
                        if _origin(target) != origin:
                            raise FetchFailed(
                                f"{url}: redirected to another host or port; not followed"
                            )
                        url = target
                        continue
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        size += len(chunk)
                        if size > max_bytes:
                            raise FetchFailed(f"{url}: answer larger than {max_bytes} bytes")
                        chunks.append(chunk)
                    content_type = response.headers.get("Content-Type", "")
                    return Fetched(response.status, b"".join(chunks), content_type)
            raise FetchFailed(f"{url}: more than {MAX_REDIRECTS} redirects")
    except FetchFailed:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise FetchFailed(f"{url}: {type(exc).__name__} {exc}".strip()) from None
