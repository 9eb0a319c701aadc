"""The upstream HTTP client behind one small interface, so it can be swapped (issue 7 measured httpx as slow on
the hot path: httpcore scans its whole pool on every request). Three implementations: :class:`HttpxUpstream` here
(in-process tests drive it through ``httpx.MockTransport``), ``gateway.upstream_aiohttp.AiohttpUpstream``, and
``gateway.upstream_httptools.HttptoolsUpstream``, the production default (the least CPU per request); the
loopback tests run every forwarding case against all three.

    await upstream.send(method, origin, target, headers, body, timeouts) -> UpstreamResponse
        .status, .headers (the raw list), aiter_raw(), aclose()

Every failure is a :mod:`gateway.errors` refusal: connection refused/reset or a protocol error -> BadGateway
(502), a connect/read/write timeout -> GatewayTimeout (504), no free pooled connection in time ->
ServiceUnavailable (503). Nothing is retried (a retried POST may run twice, RFC 9110 §9.2.2, and a retried GET
would double the time to a 504), except an idempotent request the upstream dropped before answering (RFC 9112
§9.3.1): aiohttp sends it once more if no body was consumed, the httptools client only if it has no body and the
connection was a reused keep-alive one (the upstream had just timed it out).

Timeouts are per operation (like nginx's ``proxy_read_timeout``): ``connect`` bounds opening a connection,
``read`` bounds every wait on the upstream, for its response head and between body chunks, so an upstream that
hangs yields 504 after ``read`` seconds.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from gateway.errors import BadGateway, GatewayTimeout, ServiceUnavailable

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


class UpstreamResponse(Protocol):
    status: int
    headers: list[Header]

    def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body exactly as received (content-coding untouched); raises BadGateway/GatewayTimeout."""
        ...

    def whole_body(self) -> bytes | None:
        """The whole body when all of it has already arrived (then ``aiter_raw`` is not used), else None: a small
        response goes to the client as one final message instead of a chunk and an empty end (issue 7). Never waits;
        None is always a correct answer."""
        ...

    def aclose(self) -> Awaitable[None]:
        """Release the connection; an unfinished body closes it instead of returning it to the pool. Any awaitable:
        a finished future lets the caller's ``asyncio.shield`` skip creating a task."""
        ...


class Upstream(Protocol):
    async def send(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        body: AsyncIterable[bytes] | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Send one request (``target`` is the request-target as forwarded, byte for byte) and return once the
        response head has arrived."""
        ...

    async def aclose(self) -> None: ...


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that stores nothing: one user's Set-Cookie must never be replayed to the next user (STYLE.md)."""

    def extract_cookies(self, response: http.client.HTTPResponse, request: urllib.request.Request) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def no_cookie_client(
    *, transport: httpx.AsyncBaseTransport | None = None, limits: httpx.Limits | None = None
) -> httpx.AsyncClient:
    """A shared client that cannot leak between users or be rerouted by the environment (STYLE.md)."""
    return httpx.AsyncClient(
        transport=transport,
        cookies=_NoCookies(),
        trust_env=False,  # HTTP_PROXY/NO_PROXY/SSL_CERT_FILE/.netrc must not reroute or decorate our traffic
        follow_redirects=False,  # a redirect is the client's to follow, not ours
        limits=limits or httpx.Limits(),
    )


def _translate(exc: httpx.HTTPError) -> Exception:
    if isinstance(exc, httpx.PoolTimeout):
        return ServiceUnavailable("no upstream connection available in time")
    if isinstance(exc, httpx.TimeoutException):
        return GatewayTimeout()
    return BadGateway()


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers: list[Header] = response.headers.raw

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            # aiter_raw, not aiter_bytes: the body is passed on with its Content-Encoding (STYLE.md).
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise _translate(exc) from exc

    def whole_body(self) -> bytes | None:
        return None  # httpx reads lazily: nothing is known to have arrived

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """:class:`Upstream` on a shared ``httpx.AsyncClient``, with the traps of a shared client disarmed."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        max_keepalive_connections: int = 200,
        keepalive_expiry: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = no_cookie_client(
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
                keepalive_expiry=keepalive_expiry,
            ),
        )
        # httpx adds Accept, Accept-Encoding, Connection and User-Agent to every request. Forwarded requests
        # carry the client's headers only: an Accept-Encoding the client never sent would get it a gzip body.
        for name in list(self._client.headers.keys()):
            del self._client.headers[name]

    async def send(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        body: AsyncIterable[bytes] | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        request = self._client.build_request(
            method,
            origin,
            headers=list(headers),
            content=body,
            timeout=httpx.Timeout(
                connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
            ),
            # httpcore writes this request-target verbatim: httpx.URL would re-quote and normalise the path,
            # and the proof (and the access decision) covers the bytes the client sent.
            extensions={"target": target},
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc) from exc
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        await self._client.aclose()
