""":class:`gateway.upstream.Upstream` on aiohttp's client (issue 7: httpx costs milliseconds per request on the
hot path; see the README's benchmark section for the measurement that chose this one).

The traps of a shared client, disarmed one by one:

* ``DummyCookieJar``: one user's ``Set-Cookie`` is never replayed to the next user;
* ``trust_env=False``: ``HTTP_PROXY``/``.netrc`` cannot reroute or decorate upstream traffic;
* ``auto_decompress=False`` and the raw chunk iterator: bodies pass on with their ``Content-Encoding``;
* ``skip_auto_headers``: no ``Accept``/``Accept-Encoding``/``User-Agent``/``Content-Type`` the client never sent
  (an ``Accept-Encoding`` added here would get a client a gzip body it never asked for);
* ``raw_headers``: the response header list as received, so repeated ``Set-Cookie`` stay separate;
* ``allow_redirects=False``: a redirect is the client's to follow;
* the request-target is built with ``encoded=True``, so yarl neither re-quotes nor normalises the path the
  access decision and the proof were made on.

aiohttp retries an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) once when the upstream drops the
connection before answering and no request body has been consumed yet (RFC 9112 §9.3.1 allows it; it is what
saves a request sent on a keep-alive connection the upstream had just closed). Connect failures are not retried,
and neither is any non-idempotent request (POST, PATCH): test_proxy_loopback.py checks both.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterable, AsyncIterator, Sequence

import aiohttp
from yarl import URL

from gateway.errors import BadGateway, GatewayTimeout
from gateway.upstream import Header, Timeouts, UpstreamResponse

_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return GatewayTimeout()
    return BadGateway()


@functools.lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """Per route, built once. ``connect`` also bounds the wait for a free pooled connection; ``sock_read`` bounds
    every wait for the upstream (the response head, then each body chunk), like httpx's read timeout."""
    return aiohttp.ClientTimeout(
        total=None, connect=timeouts.connect, sock_connect=timeouts.connect, sock_read=timeouts.read
    )


class _Body:
    """The request body as aiohttp's writer task reads it, remembering the error that ended it: aiohttp reports a
    failing body as a broken connection, but the gateway's own refusals raised in there (413 while streaming,
    the client gone) must surface as themselves, not as a 502."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = chunks
        self.error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


class _AiohttpResponse:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: list[Header] = list(response.raw_headers)

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc) from exc

    def whole_body(self) -> bytes | None:
        return None  # aiohttp's stream is read as it comes

    async def aclose(self) -> None:
        if self._response.content.at_eof():
            self._response.release()  # complete: the connection goes back to the pool
        else:
            self._response.close()  # unfinished: close the connection, never reuse it mid-body


class AiohttpUpstream:
    def __init__(self, *, max_connections: int = 1000, keepalive_expiry: float = 30.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use: aiohttp wants its session made inside the running event loop.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive_expiry
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        return self._session

    async def send(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        body: AsyncIterable[bytes] | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        session = self._session or self._open()
        url = URL(origin + target.decode("latin-1"), encoded=True)
        data = None if body is None else _Body(body)
        try:
            response = await session.request(
                method,
                url,
                headers=[(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers],
                data=data,
                allow_redirects=False,
                timeout=_client_timeout(timeouts),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            if data is not None and data.error is not None:
                raise data.error from exc
            raise _translate(exc) from exc
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
