""":class:`gateway.upstream.Upstream` on asyncio protocols with httptools (llhttp) parsing the responses: the
forwarding client with the least work per request (issue 7; the README's "Upstream client" has the measurement).

HTTP/1.1 only, one exchange per connection at a time, connections kept alive in a pool per origin:

* **Request**: the head is written in one piece, ``Host`` set to the route's origin and the request-target byte
  for byte; a body streams with the client's ``Content-Length`` when the headers carry one, chunked otherwise.
  Nothing else is added (no ``Accept-Encoding``, ``User-Agent``, cookies, proxies from the environment, redirects).
  A header name that is not a token or a CR, LF or NUL anywhere in the head is refused before anything is sent.
* **Response**: llhttp validates framing (``Content-Length`` with ``Transfer-Encoding`` is an error, so a response
  cannot smuggle a second one); the header list stays raw (repeated ``Set-Cookie`` separate); chunked bodies are
  de-chunked and content codings untouched; 1xx interim responses are skipped; a head over
  :data:`MAX_HEAD_BYTES` or a 101 is a 502. Reading pauses while more than :data:`HIGH_WATER` bytes wait for the
  client (the body streams, it is never buffered whole).
* **Keep-alive**: a connection goes back to the pool only when its response was read to the end and both sides
  allow keep-alive; HEAD responses and bodies delimited by the connection's end close it. The pool is LIFO per
  origin; an idle connection the upstream closes leaves the pool at once, one idle past ``keepalive_expiry`` is
  closed. Unsolicited bytes on an idle connection close it.
* **Limits**: at most ``max_connections`` open at once (an idle connection to another origin is closed to make
  room); a request waits for one at most its connect timeout, then 503.
* **Callbacks instead of awaits** (:meth:`HttptoolsUpstream.start`, the gateway's fast lane, gateway/express.py):
  a bodiless request on an idle connection is written at once and the caller is told, by a plain call at the end of
  each read (and on a timeout or the connection's end), that the exchange moved on; no future, no task.
* **Retry**: none, except the case RFC 9112 §9.3.1 describes: a request without a body, idempotent method, sent on
  a *reused* connection that the upstream closed before a single response byte (it had just timed the connection
  out) is sent once more, on a new connection. POST and PATCH never are.

Errors and timeouts follow gateway/upstream.py: refused/reset/garbage 502, connect or read timeout 504 (``read``
bounds every wait on the upstream: the head, each body chunk, a stalled request-body write).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import cast
from urllib.parse import urlsplit

import httptools

from gateway.errors import BadGateway, GatewayError, GatewayTimeout, ServiceUnavailable
from gateway.upstream import Header, Timeouts, UpstreamResponse

MAX_HEAD_BYTES = 65536
HIGH_WATER = 256 * 1024
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# RFC 9110 §5.1 field names (tokens), one per line.
_NAMES = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:\n[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
_NO_BODY_STATUS = frozenset({204, 304})


class _Origin:
    __slots__ = ("host", "host_header", "port", "ssl")

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = parts.scheme == "https"
        self.host_header = parts.netloc.encode("idna")


def _pool_timeout(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ServiceUnavailable("no upstream connection available in time"))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(GatewayTimeout())


class _Connection(asyncio.Protocol):
    """One upstream connection and the state of its current exchange (parser callbacks fill it in)."""

    def __init__(self, pool: HttptoolsUpstream, origin: str) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.counted = True  # holds one of the pool's max_connections
        self.exchanges = 0
        self.idle_since = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        # The read-timeout timer outlives a wait: a wait only moves the deadline, and the timer, when it fires, fails
        # the wait in progress if its deadline has passed or re-arms for it. A timer per wait (create and cancel)
        # cost ~1.5 µs of every request (issue 7); this one is re-created about once per read timeout.
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        #: Set by :meth:`HttptoolsUpstream.start`: called instead of waking a waiter, once per read, timeout or loss.
        self.listener: Callable[[], None] | None = None
        self.begin(head_only=False, read_timeout=0.0)
        self.active = False

    def begin(self, *, head_only: bool, read_timeout: float) -> None:
        """Reset the exchange state for the next request on this connection."""
        self.active = True
        self.head_only = head_only
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: list[Header] = []
        self.interim = False
        self.head_done = self.complete = self.keep_alive = self.received = False
        self.head_bytes = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.read_paused = False
        self.error: type[GatewayError] | None = None
        self.waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:  # nothing was asked: the connection is out of step, never reuse it
            self.close()
            return
        self.received = True
        if not self.head_done:
            # Only the head is bounded: parse what it may still take; a body in the same read is not counted.
            room = MAX_HEAD_BYTES - self.head_bytes
            if len(data) <= room:
                self.head_bytes += len(data)
            else:
                self.head_bytes = MAX_HEAD_BYTES
                if not self.feed(data[:room]) or not self.head_done:
                    self.fail(BadGateway)
                    if self.listener is not None:
                        self.listener()
                    return
                data = data[room:]
        self.feed(data)
        if self.listener is not None:
            self.listener()

    def feed(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if not self.complete:
                self.fail(BadGateway)
                return False
            self.close()  # bytes past the end of the response (on_message_begin): this connection is out of step
        return self.error is None and not self.lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timer is not None and self.waiter is None:  # a wait in progress is woken below and ends itself
            self.timer.cancel()
            self.timer = None
        if self.active and not self.complete and self.error is None:
            if exc is None and self._until_eof():
                self.complete = True  # a body delimited by the connection's end (RFC 9112 §6.3 point 8)
            else:
                self.error = BadGateway
        self.pool.forget(self)
        self.wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        if self.listener is not None:
            self.listener()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # --- httptools callbacks -----------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # After the head: chunked trailer fields (never merged into the header list, RFC 9110 §6.5.1) or the head of
        # a response nobody asked for (refused in on_headers_complete).
        if not self.head_done:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.complete:  # a second response to one request: stop parsing here (feed() retires the connection)
            raise ValueError("data after the response")
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:  # llhttp takes any three digits; RFC 9110 §15 codes are 1xx-5xx
            raise ValueError("status code out of range")
        if 100 <= status < 200:
            if status == 101:  # nothing asked to switch protocols (Upgrade is hop-by-hop, never forwarded)
                raise ValueError("unexpected 101")
            self.interim, self.headers, self.head_bytes = True, [], 0  # 1xx: skipped, the real head follows
            return
        self.status = status
        self.head_done = True
        if self.head_only:
            self.complete = True  # no body follows a HEAD response, whatever its Content-Length says
        self.wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return  # a body after a HEAD response: dropped, and the connection is not reused
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.head_only:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
        self.wake()

    def _until_eof(self) -> bool:
        """Whether the response's body ends with the connection (no Content-Length, no Transfer-Encoding): llhttp
        never completes such a message itself (httptools has no ``finish``), so the connection's end does."""
        if not self.head_done or self.status in _NO_BODY_STATUS:
            return False
        return not {name.lower() for name, _ in self.headers} & {b"content-length", b"transfer-encoding"}

    # --- the exchange ------------------------------------------------------------------------------------------

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: type[GatewayError]) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self.wake()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()
        self.pool.forget(self)

    def retryable(self, method: str) -> bool:
        """Whether a bodiless request that failed on this connection may be sent once more on a new one: the
        connection was a reused one and closed before a single response byte (RFC 9112 §9.3.1)."""
        return self.exchanges > 1 and not self.received and method in _IDEMPOTENT

    def arm(self) -> None:
        """Start (or move) the read deadline: ``read_timeout`` from now."""
        self.deadline = self.loop.time() + self.read_timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._deadline_reached)

    async def wait(self) -> None:
        """Until the parser or the connection reports something, at most ``read_timeout`` (then 504)."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        self.arm()
        try:
            await waiter
        except GatewayTimeout:
            self.fail(GatewayTimeout)
            raise
        finally:
            self.waiter = None

    def _deadline_reached(self) -> None:
        self.timer = None
        waiter, listener = self.waiter, self.listener
        if listener is None and (waiter is None or waiter.done()):
            return  # no wait in progress: the next one arms a timer again
        # A millisecond's grace: uvloop may run a timer that much early (see _acquire).
        if self.loop.time() < self.deadline - 0.001:  # a later wait moved the deadline
            self.timer = self.loop.call_at(self.deadline, self._deadline_reached)
        elif listener is not None:
            self.fail(GatewayTimeout)
            listener()
        else:
            assert waiter is not None
            waiter.set_exception(GatewayTimeout())

    async def drain(self) -> None:
        while self.write_paused and not self.lost:
            waiter = self.drain_waiter = self.loop.create_future()
            timer = self.loop.call_later(self.read_timeout, _expire, waiter)
            try:
                await waiter
            except GatewayTimeout:
                self.fail(GatewayTimeout)
                raise
            finally:
                self.drain_waiter = None
                timer.cancel()

    async def write_body(self, body: AsyncIterable[bytes], chunked: bool, length: int | None) -> None:
        assert self.transport is not None
        sent = 0
        async for chunk in body:
            if self.lost:
                return  # the upstream answered early or went away: wait_head decides which
            if not chunk:
                continue  # an empty chunk would end a chunked body
            sent += len(chunk)
            self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self.write_paused:
                await self.drain()
        if self.lost:
            return
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError("request body length differs from its Content-Length")

    # --- UpstreamResponse ----------------------------------------------------------------------------------------

    def aiter_raw(self) -> _BodyChunks:
        return _BodyChunks(self)

    def whole_body(self) -> bytes | None:
        """Everything, when the parser has seen the end of the body and nothing went wrong (see UpstreamResponse)."""
        if not self.complete or self.error is not None:
            return None
        return self.take() or b""

    def take(self) -> bytes | None:
        """Everything buffered as one chunk, or None at the end of a complete body (and nothing buffered)."""
        chunks = self.chunks
        if not chunks:
            return None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    async def next_chunk(self) -> bytes | None:
        while True:
            if self.chunks:
                return self.take()
            if self.error is not None:
                raise self.error()
            if self.complete:
                return None
            await self.wait()

    def finish(self) -> None:
        """The exchange is over: back to the pool if the response was read to its end and both sides allow it."""
        self.listener = None
        # ``counted`` is False once close() has run: a connection closed mid-read is never pooled again.
        if self.complete and self.keep_alive and self.error is None and not self.lost and self.counted:
            self.active = False
            self.pool.release(self)
        else:
            self.close()

    def aclose(self) -> asyncio.Future[None]:
        """Synchronous underneath: a finished future, so ``asyncio.shield`` around it costs no task."""
        self.finish()
        done = self.loop.create_future()
        done.set_result(None)
        return done


class _BodyChunks:
    """``aiter_raw()``. What is already buffered (usually the whole body of a small response) is handed out as a
    finished future, and the end as StopAsyncIteration at once: only a real wait costs a coroutine."""

    __slots__ = ("_connection",)

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def __aiter__(self) -> _BodyChunks:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        connection = self._connection
        if connection.chunks or (connection.complete and connection.error is None):
            chunk = connection.take()
            if chunk is None:
                raise StopAsyncIteration
            ready: asyncio.Future[bytes] = connection.loop.create_future()
            ready.set_result(chunk)
            return ready
        return self._wait()

    async def _wait(self) -> bytes:
        chunk = await self._connection.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def _request_head(
    method: str, origin: _Origin, target: bytes, headers: Sequence[Header], *, has_body: bool
) -> tuple[bytes, int | None, bool]:
    """The request head as written, the body's declared length and whether it is sent chunked."""
    length = None
    if has_body:
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
                break
    chunked = has_body and length is None
    # One join per header and one for the head, all in C (building each line with + cost ~1 µs per request).
    fields = b"\r\n".join(map(b": ".join, headers))
    head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s" % (
        method.encode("ascii"),
        target,
        origin.host_header,
        fields + b"\r\n" if headers else b"",
        b"transfer-encoding: chunked\r\n\r\n" if chunked else b"\r\n",
    )
    # Header injection guard: every CR and LF is part of a line end we wrote, no NUL, names are tokens.
    line_ends = len(headers) + (4 if chunked else 3)  # request line, host, the headers, [framing,] blank line
    if (
        head.count(b"\n") != line_ends
        or head.count(b"\r") != line_ends
        or b"\0" in head
        or (headers and _NAMES.fullmatch(b"\n".join([name for name, _ in headers])) is None)
    ):
        raise ValueError("request line or header not representable on the wire")
    return head, length, chunked


class HttptoolsUpstream:
    """The pooled client; see the module docstring. ``ssl_context`` is for https origins (default: the system's
    trust store with hostname checks)."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._all: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _origin(self, origin: str) -> _Origin:
        parsed = self._origins.get(origin)
        if parsed is None:
            parsed = self._origins[origin] = _Origin(origin)
        return parsed

    def has_idle(self, origin: str) -> bool:
        """Whether a kept-alive connection to ``origin`` waits in the pool (it may still turn out closed)."""
        return bool(self._idle.get(origin))

    def start(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        timeouts: Timeouts,
        listener: Callable[[], None],
    ) -> _Connection | None:
        """Send a request without a body on an idle connection, now, without awaiting anything: the connection, whose
        ``listener`` is called after each read, on the read timeout and when the connection ends (see the module
        docstring); its state then says how far the exchange is (``head_done``, ``complete``, ``error``), and
        :meth:`_Connection.finish` ends it. None when no idle connection is open: the caller uses :meth:`send`.
        Raises ValueError like :meth:`send` for a head that cannot be written."""
        head, _, _ = _request_head(method, self._origin(origin), target, headers, has_body=False)
        connection = self._idle_connection(origin)
        if connection is None:
            return None
        connection.begin(head_only=method == "HEAD", read_timeout=timeouts.read)
        connection.exchanges += 1
        connection.listener = listener
        assert connection.transport is not None
        connection.transport.write(head)
        connection.arm()
        return connection

    async def send(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        body: AsyncIterable[bytes] | None,
        timeouts: Timeouts,
        *,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """See :class:`gateway.upstream.Upstream`. ``fresh``: the retry of a request sent on a reused connection that
        closed before answering (:meth:`start`'s caller): a new connection, and no second retry."""
        parsed = self._origin(origin)
        head, length, chunked = _request_head(method, parsed, target, headers, has_body=body is not None)
        for attempt in (1,) if fresh else (0, 1):
            connection = None if attempt else self._idle_connection(origin)
            if connection is None:
                connection = await self._acquire(origin, parsed, timeouts.connect, fresh=attempt > 0)
            try:
                connection.begin(head_only=method == "HEAD", read_timeout=timeouts.read)
                connection.exchanges += 1
                assert connection.transport is not None
                connection.transport.write(head)
                if body is not None:
                    await connection.write_body(body, chunked, length)
                while not connection.head_done:
                    if connection.error is not None:
                        raise connection.error()
                    await connection.wait()
            except BadGateway:
                connection.close()
                if attempt == 0 and body is None and connection.retryable(method):
                    continue
                raise
            except BaseException:
                connection.close()  # a half-done exchange (timeout, cancelled, the client's body failing)
                raise
            return connection
        raise AssertionError("unreachable")  # pragma: no cover

    # --- the pool ----------------------------------------------------------------------------------------------

    def _idle_connection(self, key: str) -> _Connection | None:
        """The most recently used idle connection to ``key`` that is still open and fresh (others are closed)."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if not connection.lost and self.loop.time() - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _acquire(self, key: str, origin: _Origin, within: float, *, fresh: bool) -> _Connection:
        loop = self.loop
        deadline = loop.time() + within
        while True:
            connection = None if fresh else self._idle_connection(key)
            if connection is not None:
                return connection
            if self._open >= self._max_connections:
                self._evict_one()
            if self._open < self._max_connections:
                return await self._connect(key, origin, deadline - loop.time())
            waiter = loop.create_future()
            self._waiters.append(waiter)
            # The timer fails the waiter itself: telling "our timer" from "cancelled from outside" by comparing
            # loop.time() with the deadline misfired, since uvloop may run a timer up to a millisecond early.
            timer = loop.call_later(max(0.0, deadline - loop.time()), _pool_timeout, waiter)
            try:
                await waiter
            except (asyncio.CancelledError, ServiceUnavailable):
                self._wake_one()  # a wake-up this waiter can no longer use goes to the next one
                raise
            finally:
                timer.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, key: str, origin: _Origin, within: float) -> _Connection:
        self._open += 1
        connection = _Connection(self, key)
        self._all.add(connection)
        context = None
        if origin.ssl:
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        try:
            async with asyncio.timeout(max(within, 0.0)):
                await self.loop.create_connection(
                    lambda: connection,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            connection.close()
            raise GatewayTimeout() from None
        except OSError:
            connection.close()
            raise BadGateway() from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _evict_one(self) -> None:
        for idle in self._idle.values():
            if idle:
                idle.pop(0).close()
                return

    def release(self, connection: _Connection) -> None:
        connection.idle_since = self.loop.time()
        self._idle.setdefault(connection.origin, []).append(connection)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._keepalive_expiry, self._sweep)
        self._wake_one()

    def forget(self, connection: _Connection) -> None:
        """The connection is closed or closing: it leaves the pool and frees its slot (idempotent)."""
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._all.discard(connection)
            idle = self._idle.get(connection.origin)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        now = self.loop.time()
        for idle in list(self._idle.values()):
            for connection in [c for c in idle if now - c.idle_since >= self._keepalive_expiry]:
                connection.close()
        if any(self._idle.values()):
            self._sweeper = self.loop.call_later(self._keepalive_expiry / 2, self._sweep)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._all):
            connection.close()
        for waiter in self._waiters:
            waiter.cancel()
