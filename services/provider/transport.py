"""Provider HTTP calls on aiohttp's connection pool, and what each failure says about
whether the request reached DashScope.

aiohttp parses in C and keeps its pool cheap. Requests go to it directly: httpx's
objects over it (through an adapter) took over a third of each call's CPU
(docs/ARCHITECTURE.md, "The per-image hot path").

What a failure means matters more here than anywhere: a submit is billed, and one that
provably never left may be sent again while one that might have arrived may not. So
"could not connect" (nothing sent) stays apart from a timeout or a connection lost after
the request went out (``may_have_effect``).
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass

import aiohttp
from yarl import URL

from services.provider.errors import ProviderConnectError, ProviderTimeout, ProviderTransportError


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes
    retry_after: str | None = None
    """The ``Retry-After`` header, as sent."""


@dataclass(frozen=True)
class Proxy:
    url: URL
    headers: dict[str, str] | None
    """Credentials from the proxy's URL, as ``Authorization``: aiohttp sends that header to
    the proxy as ``Proxy-Authorization`` (on the request itself, or on the CONNECT for
    HTTPS), never to the provider."""


def environment_proxy(url: str) -> Proxy | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, and
    NO_PROXY to bypass it), read once. aiohttp reads them for every request instead
    (``trust_env``), and ~/.netrc with them, each in a thread of its own: four thread
    hand-offs per image, for values that do not change while a process runs."""
    proxies = urllib.request.getproxies_environment()
    target = URL(url)
    if not target.host or urllib.request.proxy_bypass(target.host):
        return None
    named = proxies.get(target.scheme) or proxies.get("all")
    if not named:
        return None
    proxy = URL(named if "://" in named else f"http://{named}")
    if not proxy.user:
        return Proxy(proxy, None)
    credentials = base64.b64encode(f"{proxy.user}:{proxy.password or ''}".encode()).decode()
    return Proxy(proxy.with_user(None), {"Authorization": f"Basic {credentials}"})


class ProviderTransport:
    """Requests to one provider, through the proxy the environment names for it."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
    ) -> None:
        self._proxy = environment_proxy(base_url)
        # ``connect`` bounds the wait for a pooled connection too: nothing is sent until then.
        self._timeout = aiohttp.ClientTimeout(
            connect=read_timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the event loop that will run it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=self._timeout,
            )
        return self._session

    async def send(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        may_have_effect: bool,
    ) -> Reply:
        proxy = self._proxy
        try:
            async with self._client().request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                proxy=proxy.url if proxy else None,
                proxy_headers=proxy.headers if proxy else None,
            ) as response:
                return Reply(
                    response.status,
                    response.reason or "",
                    await response.read(),
                    response.headers.get("Retry-After"),
                )
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            raise ProviderConnectError(f"{exc.__class__.__name__}: {exc}") from None
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{exc.__class__.__name__} after the request was sent", ambiguous=may_have_effect
            ) from None
        except aiohttp.ClientError as exc:
            raise ProviderTransportError(
                f"{exc.__class__.__name__}: {exc}", ambiguous=may_have_effect
            ) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
