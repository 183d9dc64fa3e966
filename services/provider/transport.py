"""The HTTP transport under the provider client: httpx's API over aiohttp's connection pool.

httpx's own pool (httpcore over anyio) costs about four times the CPU per request at the
concurrency a worker runs (docs/ARCHITECTURE.md, "The per-image hot path"); aiohttp parses
in C and keeps its pool cheap. The client code still speaks httpx only.

What a failure means matters more here than anywhere: a submit is billed, and one that
provably never left may be sent again while one that might have arrived may not. The
library maps every aiohttp connection error to ``httpx.ConnectTimeout``, including a
connection that dropped after the request went out; this transport keeps "could not
connect" apart from "lost the connection".
"""

from __future__ import annotations

import urllib.request
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


def environment_proxy(url: str) -> httpx.Proxy | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, and
    NO_PROXY to bypass it), read once as httpx's client does. aiohttp reads them for every
    request instead (``trust_env``), and ~/.netrc with them, each in a thread of its own:
    four thread hand-offs per image, for values that do not change while a process runs."""
    proxies = urllib.request.getproxies_environment()
    target = httpx.URL(url)
    if not target.host or urllib.request.proxy_bypass(target.host):
        return None
    proxy = proxies.get(target.scheme) or proxies.get("all")
    return httpx.Proxy(proxy) if proxy else None


class ProviderTransport(AiohttpTransport):
    """A transport for requests to one base URL, through the proxy the environment names."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(proxy=environment_proxy(base_url), **kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ConnectionTimeoutError):
                raise  # no connection in time: nothing was sent
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(exc), request=request) from cause
            raise httpx.RemoteProtocolError(f"connection lost: {exc}", request=request) from cause
        except aiohttp.ClientError as exc:  # left unmapped by the library
            raise httpx.RemoteProtocolError(
                f"{exc.__class__.__name__}: {exc}", request=request
            ) from exc
