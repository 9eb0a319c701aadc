"""The streaming forward: request body to the upstream and response back, chunk by chunk, never a whole body.

The request body is read from ASGI ``receive`` as the upstream client asks for it; ``max_body_bytes`` is
enforced on the declared ``Content-Length`` before anything is sent and on the bytes counted while streaming
(a chunked body has no declared length); a client that sends no body bytes for the route's ``timeout`` gets a
408, and so does one trickling its body slower than ``min_body_rate`` bytes per second once that ``timeout`` has
passed (the body must be in by ``timeout + received / min_body_rate`` seconds after it started: Apache
mod_reqtimeout's MinRate; an idle timeout alone never cuts off a client sending a byte every few seconds).
The response head goes out as soon as the upstream's arrives, each raw chunk as soon as it is read, and the
upstream response is closed in a ``finally`` (Starlette's ``background=`` would run only after a normal finish,
STYLE.md).

A client that disconnects must free the upstream connection. uvicorn's ``send`` silently drops messages to a
closed connection (ASGI spec 2.3), so a watcher task waits on ``receive`` for ``http.disconnect`` once the
request body is consumed and cancels the exchange; the unfinished upstream response is then closed, which
closes its connection rather than returning it to the pool. The watcher is a plain asyncio task (the servers
we run under are asyncio): an anyio task group per request cost more than the rest of the forward. It is only
started for exchanges still running :data:`WATCH_AFTER` seconds after the request body was consumed: almost every
exchange is over sooner. Nor does each exchange arm a timer for that (a timer created and cancelled per request
cost ~1.5 µs, issue 7): one :class:`_Watchdog` per event loop looks every :data:`WATCH_AFTER` seconds at the
exchanges in flight and starts the watchers of those past the delay, so a client that leaves is noticed within
twice that delay.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import PayloadTooLarge, RequestTimeout
from gateway.headers import UpstreamHeaders, downstream_headers
from gateway.upstream import Timeouts, Upstream, UpstreamResponse

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Seconds after the request body is consumed before an unfinished exchange starts watching for a disconnect.
WATCH_AFTER = 0.25


class ClientDisconnected(Exception):
    """The client went away before the exchange finished; there is nobody left to answer."""


class _Watchdog:
    """The exchanges of one event loop whose request body is consumed, each with the loop time it was and the
    callback that starts its disconnect watcher. A tick every :data:`WATCH_AFTER` seconds, armed only while any is
    in flight, starts the watchers due."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[object, tuple[float, Callable[[], None]]] = {}
        self._tick: asyncio.TimerHandle | None = None

    def add(self, key: object, start_watching: Callable[[], None]) -> None:
        self._waiting[key] = (self._loop.time(), start_watching)
        if self._tick is None:
            self._tick = self._loop.call_later(WATCH_AFTER, self._run)

    def discard(self, key: object) -> None:
        self._waiting.pop(key, None)

    def _run(self) -> None:
        self._tick = None
        due = self._loop.time() - WATCH_AFTER
        for key, (since, start_watching) in list(self._waiting.items()):
            if since <= due:
                del self._waiting[key]
                start_watching()
        if self._waiting:
            self._tick = self._loop.call_later(WATCH_AFTER, self._run)


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()


def _watchdog(loop: asyncio.AbstractEventLoop) -> _Watchdog:
    watchdog = _watchdogs.get(loop)
    if watchdog is None:
        watchdog = _watchdogs[loop] = _Watchdog(loop)
    return watchdog


async def _request_body(
    receive: Receive,
    limit: int | None,
    idle: float,
    min_rate: int | None,
    on_complete: Callable[[], None],
    loop: asyncio.AbstractEventLoop | None = None,
) -> AsyncIterator[bytes]:
    received = 0
    loop = loop or asyncio.get_running_loop()
    started = loop.time()
    while True:
        # nginx's client_body_timeout: a client that sends nothing for ``idle`` seconds is given up on. No upstream
        # timeout can catch it: the upstream waits for the body, and the upstream read timeout starts after it.
        wait, slow = idle, False
        if min_rate is not None:
            left = started + idle + received / min_rate - loop.time()
            if left <= 0:
                raise RequestTimeout(f"request body slower than {min_rate} bytes/s")
            wait, slow = (left, True) if left < idle else (idle, False)
        try:
            async with asyncio.timeout(wait):
                message = await receive()
        except TimeoutError:
            if slow:
                raise RequestTimeout(f"request body slower than {min_rate} bytes/s") from None
            raise RequestTimeout(f"no request body bytes for {idle:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if limit is not None and received > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            on_complete()
            return


async def forward(
    upstream: Upstream,
    *,
    method: str,
    origin: str,
    target: bytes,
    headers: UpstreamHeaders,
    max_body_bytes: int | None,
    min_body_rate: int | None = None,
    timeouts: Timeouts,
    request_id: str,
    receive: Receive,
    send: Send,
    loop: asyncio.AbstractEventLoop | None = None,
    response: UpstreamResponse | None = None,
) -> None:
    """Forward one request and stream the response back. ``response``: the upstream's, when the request was sent
    already (the fast lane hands over a response that does not fit in one write, gateway/express.py).

    Raises a GatewayError if the exchange fails before the response head is sent, ClientDisconnected if the client
    left; after the head, an upstream failure propagates so the server aborts the client connection (a truncated body
    must not look complete).

    ``loop``, when the caller knows it, saves looking it up: on Python 3.11 ``asyncio.get_running_loop()`` (which
    ``current_task()`` calls) makes a ``getpid`` system call every time, once per request here (issue 7, strace)."""
    if max_body_bytes is not None and headers.content_length is not None and headers.content_length > max_body_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_body_bytes} bytes")
    task = asyncio.current_task(loop) if loop is not None else None
    if task is None:  # no loop given, or not the one running this request
        task = asyncio.current_task()
        assert task is not None
    loop = task.get_loop()
    watcher: asyncio.Task[None] | None = None
    watchdog = _watchdog(loop)
    disconnected = complete = False

    async def watch_disconnect() -> None:
        nonlocal disconnected
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # a server's receive failing is not this request's error; nothing to watch then
            return
        if not complete:  # servers also report http.disconnect once the response is complete
            disconnected = True
            task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch_disconnect())

    def body_consumed() -> None:
        watchdog.add(task, start_watching)

    body = None
    if headers.has_body:
        body = _request_body(receive, max_body_bytes, timeouts.read, min_body_rate, body_consumed, loop)
    if body is None:
        body_consumed()
    try:
        if response is None:
            response = await upstream.send(method, origin, target, headers.headers, body, timeouts)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": downstream_headers(response.headers, request_id),
                }
            )
            whole = response.whole_body()
            if whole is not None:  # all of it is here already (the usual small answer): one message
                complete = True
                await send({"type": "http.response.body", "body": whole, "more_body": False})
            else:
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                complete = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            # Closing must finish even when the exchange was cancelled: it is what frees the connection.
            await asyncio.shield(response.aclose())
    except asyncio.CancelledError:
        # Our own cancellation (the watcher's) becomes ClientDisconnected; anyone else's (server shutdown) stands.
        if disconnected and task.uncancel() == 0:
            raise ClientDisconnected() from None
        raise
    finally:
        watchdog.discard(task)
        if watcher is not None:
            watcher.cancel()
