"""The fast lane: a bodiless request whose token is cached, or can be checked at once with a key at hand, forwarded
from the server's parser callbacks, with no ASGI task, no coroutine and no future (issue 7).

The ASGI path costs a task per request, a coroutine per ``await``, a dict per message and uvicorn's per-header
checks on the response; together several times what the work itself costs (verifying a cached token, rewriting the
headers, the proof). nginx and HAProxy answer from event callbacks; for the requests that need nothing awaited, so
does the gateway:

1. uvicorn's parser completes a request head (``OriginFormHttpToolsProtocol.on_headers_complete``). If the request
   can have no body, is HTTP/1.1 keep-alive, origin-form, not a pipelined one behind a response in progress, and
   its client reads its answers (the transport is not paused for writing), the gateway admits it synchronously
   (:meth:`gateway.app.Gateway.express`: the same route match, token check (``TokenVerifier.verify_now``: the
   cache, or the signature with a key already fetched), authorization and header rewriting as the ASGI path) onto
   an idle upstream connection (:meth:`gateway.upstream_httptools.HttptoolsUpstream.start`). Anything else (an
   admin path, no route, a key to fetch, no idle connection) takes the ASGI path untouched: nothing was counted or
   logged yet.
2. The upstream connection calls :meth:`Lane.moved` after each read. When the response is complete (the usual small
   answer) it goes to the client in one write, framed exactly as uvicorn frames what the ASGI path sends: ``date``,
   the upstream's headers less hop-by-hop ones, ``x-request-id``, then the body with its ``Content-Length`` or, when
   the upstream sent none, as one chunk (tests/gateway/test_express.py compares the two paths byte for byte).
3. Everything unusual continues as an ordinary uvicorn request cycle and task running
   :meth:`gateway.app.Gateway.resume`: a refusal (401/403), an upstream error or timeout (502/504,
   or the RFC 9112 §9.3.1 retry on a new connection), a response whose body is still arriving (streamed, with the
   ASGI path's flow control), a header uvicorn would refuse to send. Same code as the ASGI path from there on.

While the lane holds the request it stands in for uvicorn's ``RequestResponseCycle`` as the protocol's ``cycle``
(the attributes uvicorn reads: ``response_complete``, ``keep_alive``, ``disconnected``, ``more_body``,
``message_event``), so pipelining, graceful shutdown (``keep_alive`` turned off: the response says
``connection: close``) and the keep-alive timer work as for any request. A client that goes away mid-exchange
closes the upstream connection (it is not reused half-read) and is logged 499, as on the ASGI path.
"""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from gateway.coalescing import CoalescingTransport
from gateway.errors import BadGateway
from gateway.headers import downstream_headers

if TYPE_CHECKING:
    from gateway.app import Exchange, Gateway
    from gateway.upstream_httptools import _Connection

#: Request headers that keep a request off the lane: a body may follow, or the connection may change protocol.
NOT_EXPRESS = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})

# uvicorn refuses to send a response header with these (httptools_impl.HEADER_RE / HEADER_VALUE_RE); the lane checks
# all names and all values at once and leaves a response that fails to the ASGI path, which fails the same way.
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS = (204, 304)

logger = logging.getLogger("gateway")


class _NoEvent:
    """uvicorn sets the cycle's ``message_event`` when the request ends or the client leaves; the lane needs neither."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


def admit(protocol: HttpToolsProtocol, gateway: Gateway) -> bool:
    """Step 1 (module docstring), called when a request head is complete: whether the lane took the request."""
    url: bytes = protocol.url
    if url[:1] != b"/" or b"#" in url or protocol.pipeline:
        return False
    if protocol.cycle is not None and not protocol.cycle.response_complete:
        return False  # pipelined behind a response in progress: uvicorn queues it
    if protocol.flow.write_paused:
        return False  # a client not reading its answers: the ASGI path waits for it (a lane would buffer without end)
    parser = protocol.parser
    if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
        return False
    header_list: list[tuple[bytes, bytes]] = protocol.headers
    for name, _ in header_list:
        if name in NOT_EXPRESS:
            return False
    method = parser.get_method().decode("ascii")
    if method == "HEAD":
        return False
    raw_path, _, query = url.partition(b"?")
    client = protocol.client
    try:
        exchange = gateway.express(
            method, raw_path, query, header_list, client[0] if client else None, protocol.scheme or "http"
        )
    except Exception:  # a bug: the ASGI path runs the same steps again and answers it as one (500, logged)
        logger.exception("fast lane admission failed; the request takes the ASGI path")
        return False
    if exchange is None:
        return False
    # The request's own scope: a pipelined request that begins while this one is out replaces protocol.scope.
    scope = protocol.scope
    scope["method"], scope["raw_path"], scope["query_string"] = method, raw_path, query
    lane = Lane(protocol, gateway, exchange, scope)
    protocol.cycle = lane  # type: ignore[assignment]
    cast(Any, protocol).lane = lane  # OriginFormHttpToolsProtocol's: the connection's request on the lane, if any
    lane.start()
    return True


def client_lost(protocol: HttpToolsProtocol) -> None:
    """The client connection ended: an exchange still on the lane is given up (called before uvicorn's own
    ``connection_lost``)."""
    lane: Lane | None = getattr(protocol, "lane", None)  # the protocol's cycle may be a pipelined request's by now
    if lane is not None and not lane.response_complete:
        lane.abandon()


class Lane:
    """One exchange on the fast lane; see the module docstring."""

    __slots__ = (
        "connection",
        "disconnected",
        "exchange",
        "gateway",
        "keep_alive",
        "message_event",
        "more_body",
        "protocol",
        "response_complete",
        "scope",
    )

    def __init__(self, protocol: HttpToolsProtocol, gateway: Gateway, exchange: Exchange, scope: Any) -> None:
        self.protocol: Any = protocol  # uvicorn's protocol, with OriginFormHttpToolsProtocol's ``lane``
        self.gateway = gateway
        self.exchange = exchange
        self.scope = scope
        self.connection: _Connection | None = None
        # What uvicorn reads and writes on its cycle.
        self.response_complete = False
        self.keep_alive = True
        self.disconnected = False
        self.more_body = True
        self.message_event = _NO_EVENT

    def start(self) -> None:
        exchange = self.exchange
        if exchange.error is not None:
            self.resume(error=exchange.error)
            return
        route, forwarded = exchange.route, exchange.headers
        assert route is not None and forwarded is not None
        target = self.gateway.target(route)
        try:
            lane = self.gateway.lane_upstream
            assert lane is not None  # admitted only when the lane is on
            connection = lane.start(
                exchange.method, target.origin, exchange.target, forwarded.headers, target.timeouts, self.moved
            )
        except ValueError as exc:  # a head that cannot be written: the ASGI path's 500
            self.resume(error=exc)
            return
        if connection is None:  # the idle connection turned out closed: send as the ASGI path does
            self.resume()
            return
        self.connection = connection

    def moved(self) -> None:
        """Step 2: the upstream connection read something, timed out or ended."""
        try:
            self._moved()
        except Exception as exc:  # a bug: answered by the ASGI path's code (500, logged) rather than never
            if self.response_complete:
                raise
            if self.connection is not None:
                self.connection.close()
            self.resume(error=exc)

    def _moved(self) -> None:
        connection = self.connection
        assert connection is not None
        if connection.error is not None:
            connection.finish()
            if connection.error is BadGateway and connection.retryable(self.exchange.method):
                self.resume(fresh=True)
            else:
                self.resume(error=connection.error())
        elif connection.complete:
            self.respond()
        elif connection.head_done:
            self.resume(response=connection)  # the body is still coming: streamed by the ASGI path's code

    def respond(self) -> None:
        connection = self.connection
        assert connection is not None
        status = connection.status
        protocol = self.protocol
        head = protocol.server_state.default_headers + downstream_headers(connection.headers, self.exchange.request_id)
        length = None
        for name, value in head:
            if name == b"content-length":
                length = value
                break
        size = connection.buffered
        if (
            _BAD_NAME.search(b"".join([name for name, _ in head])) is not None
            or _BAD_VALUE.search(b"\t".join([value for _, value in head])) is not None
            or (length is not None and (not length.isdigit() or int(length) != size))
        ):
            self.resume(response=connection)  # uvicorn refuses what the ASGI path would send: fail as it does
            return
        body = connection.take() or b""
        connection.finish()
        out = [STATUS_LINE[status]]
        for name, value in head:
            out += (name, b": ", value, b"\r\n")
        if not self.keep_alive:  # the server is shutting down
            out.append(b"connection: close\r\n")
        if length is None and status not in _NO_BODY_STATUS:
            out += (
                (b"transfer-encoding: chunked\r\n\r\n%x\r\n" % size, body, b"\r\n0\r\n\r\n")
                if body
                else (b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",)
            )
        else:
            out += (b"\r\n", body)
        transport = cast(CoalescingTransport, protocol.transport)  # OriginFormHttpToolsProtocol's own
        transport.write_now(b"".join(out))
        self.response_complete = True
        self.protocol.lane = None
        self.gateway.done(self.exchange, status)
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()

    def abandon(self) -> None:
        """The client left: the upstream connection is closed (it cannot be reused half-read), 499 logged."""
        self.response_complete = True
        if self.connection is not None:
            self.connection.listener = None
            self.connection.close()
        self.protocol.lane = None
        self.exchange.record.error = "client_disconnected"
        self.gateway.done(self.exchange, 499)

    def resume(self, **how: Any) -> None:
        """Step 3: the rest as an ordinary uvicorn request cycle running :meth:`Gateway.resume` (keyword ``how``)."""
        if self.connection is not None:
            self.connection.listener = None
        self.response_complete = True  # the lane is done with it, whatever happens next
        protocol = self.protocol
        protocol.lane = None
        scope = self.scope
        path = scope["raw_path"].decode("latin-1")
        scope["path"] = urllib.parse.unquote(path) if "%" in path else path  # as uvicorn has it, for its access log
        cycle = RequestResponseCycle(
            scope=scope,
            transport=protocol.transport,
            flow=protocol.flow,
            logger=protocol.logger,
            access_logger=protocol.access_logger,
            access_log=protocol.access_log,
            default_headers=protocol.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=self.keep_alive,
            on_response=protocol.on_response_complete,
        )
        if not self.more_body:  # uvicorn's parser saw the end of the request while the lane had it
            cycle.more_body = False
            cycle.message_event.set()
        if protocol.cycle is self:  # else a pipelined request's cycle is current: uvicorn starts it after this one
            protocol.cycle = cycle
        gateway, exchange = self.gateway, self.exchange

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await gateway.resume(exchange, receive, send, **how)

        protocol._start_asgi_task(cycle, app)
