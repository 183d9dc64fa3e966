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

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class ProviderTransport(AiohttpTransport):
    def get_client(self) -> aiohttp.ClientSession:
        # The library's session, but reading the proxy from the environment.
        connector = aiohttp.TCPConnector(
            limit=self.limits.max_connections or 0,
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector, trust_env=True)

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
