"""The gateway as an ASGI application: :func:`create_app` and the request pipeline (:meth:`Gateway.handle`).

The pipeline reads top to bottom in one method that calls pure modules (STYLE.md, "The shape we aim for"):

    health paths -> canonical path (routing) -> route -> [bearer token -> verify -> authorize] (tokens)
    -> upstream headers (headers) -> stream to the upstream and back (proxy)

Every refusal is a :class:`gateway.errors.GatewayError`, turned into a response in one place
(:meth:`Gateway.error_response`): JSON ``{"error", "message", "request_id"}`` plus the error's own headers
(``WWW-Authenticate`` per RFC 6750, ``Allow`` for 405). Anything else is a bug: logged, answered 500 with the
same shape. Once the response head has been sent nothing can be answered any more; the error propagates so
the server aborts the connection and a truncated body cannot pass for a whole one.

It is a plain ASGI callable rather than a Starlette app: there is exactly one endpoint, and streaming,
disconnect handling and raw header lists are easier to get right without a framework in between. The
lifespan starts the JWKS cache and the revocation feeds (gateway/revocation.py) and closes them and the upstream
client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterable, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx

from gateway import accesslog, headers, proxy
from gateway.config import GatewayConfig, RouteConfig
from gateway.errors import GatewayError, InvalidToken, MethodNotAllowed, MissingToken, NotFound, ServiceUnavailable
from gateway.jwks import JwksCache
from gateway.metrics import CONTENT_TYPE, FLUSH_INTERVAL, LIVEZ, METRICS, READYZ, UNMATCHED, Metrics
from gateway.revocation import RevocationFeed
from gateway.routing import RouteMatch, Router, canonical_path
from gateway.tokens import Claims, TokenVerifier, authorize, extract_bearer
from gateway.upstream import Header, Timeouts, Upstream, UpstreamResponse, no_cookie_client
from gateway.upstream_httptools import HttptoolsUpstream

logger = logging.getLogger("gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ANONYMOUS = headers.Identity(user_id=None, email=None)
_HEALTH_METHODS = ("GET", "HEAD")


class _RequestIds:
    """128-bit random request ids (32 hex digits), read from the OS 256 at a time: one ``getrandom`` call per 256
    requests instead of one each (issue 7). A forked child starts with an empty batch, never its parent's."""

    _BATCH = 256

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._next = "", 0

    def __call__(self) -> str:
        at = self._next
        if at >= len(self._hex):
            self._hex, at = os.urandom(16 * self._BATCH).hex(), 0
        self._next = at + 32
        return self._hex[at : at + 32]


_request_id = _RequestIds()


class _Target:
    """Per-route values computed once: where to send and how long to wait."""

    __slots__ = ("origin", "timeouts")

    def __init__(self, route: RouteConfig) -> None:
        self.origin = route.upstream
        self.timeouts = Timeouts(connect=route.connect_timeout, read=route.timeout)


class _Response:
    """Wraps ``send`` to remember whether (and with which status) the response has started."""

    __slots__ = ("_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 0

    def __call__(self, message: Message) -> Awaitable[None]:  # no coroutine of its own: one less frame per message
        if message["type"] == "http.response.start":
            self.status = message["status"]
        return self._send(message)


class _FreshConnection:
    """The httptools client, sending on a new connection (the retry of RFC 9112 §9.3.1 after the fast lane's reused
    one closed unanswered), as an :class:`Upstream` so the retry runs inside ``proxy.forward`` and its disconnect
    watch."""

    def __init__(self, client: HttptoolsUpstream) -> None:
        self._client = client

    async def send(
        self,
        method: str,
        origin: str,
        target: bytes,
        headers: Sequence[Header],
        body: AsyncIterable[bytes] | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        return await self._client.send(method, origin, target, headers, body, timeouts, fresh=True)

    async def aclose(self) -> None:
        pass  # the client itself is closed at shutdown


class Exchange:
    """One request on its way through the gateway: what the pipeline decided (the route, the headers to send),
    carried to the forward, whether by the request's task or by the fast lane's callbacks (gateway/express.py)."""

    __slots__ = ("error", "headers", "method", "record", "request_id", "route", "started", "target")

    def __init__(self, started: float, request_id: str, method: str, record: accesslog.AccessRecord) -> None:
        self.started = started
        self.request_id = request_id
        self.method = method
        self.record = record
        self.route: RouteConfig | None = None
        self.target = b""
        self.headers: headers.UpstreamHeaders | None = None
        self.error: GatewayError | None = None  # a refusal decided on the fast lane, answered by resume()


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        verifier: TokenVerifier,
        jwks: JwksCache,
        upstream: Upstream,
        metrics: Metrics,
        clock: Callable[[], float],
        closers: tuple[Callable[[], Awaitable[None]], ...] = (),
        revocations: RevocationFeed | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.jwks = jwks
        self.revocations = revocations
        self.upstream = upstream
        self.metrics = metrics
        self.clock = clock
        self.router = Router(config.routes)
        self._targets = {id(route): _Target(route) for route in config.routes}
        self._admin = {
            config.livez_path.encode(): (LIVEZ, self._livez),
            config.readyz_path.encode(): (READYZ, self._readyz),
        }
        if config.metrics_path is not None:
            self._admin[config.metrics_path.encode()] = (METRICS, self._metrics)
        self._closers = closers
        self._cache_counts = (0, 0)
        self._flusher: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the serving loop, known from start-up (proxy.forward)
        #: The client the fast lane sends with (gateway/express.py), when it is on: it needs the httptools client's
        #: callbacks (HttptoolsUpstream.start), the default; with another client every request takes the ASGI path.
        self.lane_upstream = upstream if config.fast_lane and isinstance(upstream, HttptoolsUpstream) else None
        self.fast_lane = self.lane_upstream is not None
        self.express_requests = 0
        self._fast_counted = 0

    # --- ASGI --------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not proxied; closing before accept is a 403 at the server
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Fetch every issuer's keys and revocation list (failures leave /readyz at 503, they do not stop start-up)."""
        await self.jwks.start()
        if self.revocations is not None:
            await self.revocations.start()
        self._loop = asyncio.get_running_loop()
        self._flusher = self._loop.call_later(FLUSH_INTERVAL, self._flush_periodically)

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush_metrics()
        accesslog.flush()
        await self.jwks.aclose()
        if self.revocations is not None:
            await self.revocations.aclose()
        await self.upstream.aclose()
        for close in self._closers:
            await close()
        self.metrics.close()

    # --- the request pipeline ----------------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = _request_id()
        method: str = scope["method"]
        record = accesslog.AccessRecord(request_id=request_id, method=method, route=UNMATCHED)
        exchange = Exchange(started, request_id, method, record)
        respond = _Response(send)
        await self._guarded(exchange, respond, self._pipeline(exchange, scope, receive, respond))

    async def _pipeline(self, exchange: Exchange, scope: Scope, receive: Receive, respond: _Response) -> None:
        record, method = exchange.record, exchange.method
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is None:  # every server we run under provides it; the decoded path is never forwarded
            raise GatewayError("the server did not provide the raw request path")
        admin = self._admin.get(raw_path)
        if admin is not None:
            record.route, endpoint = admin
            if method not in _HEALTH_METHODS:
                raise MethodNotAllowed(_HEALTH_METHODS)
            await endpoint(respond, exchange.request_id)
            return

        # One canonical path: the decision is made on exactly the bytes that are forwarded (routing.py).
        match = self.router.match(method, canonical_path(raw_path))
        if match is None:
            raise NotFound()
        record.route = match.route.path

        claims = None
        if match.route.auth != "public":
            try:
                token = extract_bearer(scope["headers"])
                if token is None:
                    raise MissingToken()
                claims = self.verifier.verify_now(token)  # cached or key at hand: no coroutine
                if claims is None:  # a key to fetch first
                    claims = await self.verifier.verify(token)
            except GatewayError as exc:
                self._refused(record, exc)
                raise

        query: bytes = scope.get("query_string", b"")
        client = scope.get("client")
        self._admit(
            exchange,
            match,
            claims,
            scope["headers"],
            raw_path + b"?" + query if query else raw_path,
            client[0] if client else None,
            scope.get("scheme", "http"),
        )
        await self._forward(exchange, receive, respond)

    def express(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        header_list: list[Header],
        peer: str | None,
        scheme: str,
    ) -> Exchange | None:
        """The fast lane's admission (gateway/express.py): the same pipeline as :meth:`handle`, without awaiting
        anything, for a request that needs nothing awaited. None, with nothing counted or recorded, when it needs
        the full path: an admin path, no route, a key to fetch first, no idle upstream connection to write to.
        Otherwise the exchange, ready to send, or holding the refusal (``error``) the full path would make."""
        lane = self.lane_upstream
        if lane is None or raw_path in self._admin:
            return None
        try:
            match = self.router.match(method, canonical_path(raw_path))
        except GatewayError:
            return None
        if match is None:
            return None
        route = match.route
        if not lane.has_idle(self._targets[id(route)].origin):
            return None
        token = None
        if route.auth != "public":
            try:
                token = extract_bearer(header_list)
            except GatewayError:
                return None
            if token is None:
                return None
        started = time.perf_counter()
        request_id = _request_id()
        exchange = Exchange(started, request_id, method, accesslog.AccessRecord(request_id, method, route.path))
        claims = None
        try:
            if token is not None:
                try:
                    claims = self.verifier.verify_now(token)  # cached, or checked now if its key is at hand
                except GatewayError as exc:
                    self._refused(exchange.record, exc)
                    raise
                if claims is None:
                    return None
            self._admit(
                exchange, match, claims, header_list, raw_path + b"?" + query if query else raw_path, peer, scheme
            )
        except GatewayError as exc:
            exchange.error = exc
        self.express_requests += 1
        return exchange

    def _refused(self, record: accesslog.AccessRecord, exc: GatewayError) -> None:
        record.auth, record.reason = _auth_outcome(exc)
        self.metrics.token(record.reason or record.auth)

    def _admit(
        self,
        exchange: Exchange,
        match: RouteMatch,
        claims: Claims | None,
        header_list: list[Header],
        target: bytes,
        peer: str | None,
        scheme: str,
    ) -> None:
        """Authorize (when the route is not public: ``claims`` are the verified token's) and build what is sent."""
        record, route = exchange.record, match.route
        identity = _ANONYMOUS
        record.auth = "public"
        if claims is not None:
            try:
                authorize(match, claims)  # per-route issuers, owner: {user_id} == sub exactly, required claims
            except GatewayError as exc:
                self._refused(record, exc)
                raise
            record.auth, record.user = "valid", claims.sub
            self.metrics.token("valid")
            identity = headers.Identity(user_id=claims.sub, email=claims.email)
        try:
            exchange.headers = headers.upstream_headers(
                header_list,
                method=exchange.method,
                target=target.decode("latin-1"),
                forwarding=headers.Forwarding(peer=peer, scheme=scheme, trusted_proxies=self.config.trusted_proxies),
                identity=identity,
                forward_authorization=route.forward_token,
                request_id=exchange.request_id,
                proof_secret=self.config.proof_secrets[0],
                timestamp=int(self.clock()),
            )
        except ValueError:  # a verified claim that cannot travel in a header
            raise InvalidToken("bad_claim") from None
        exchange.route, exchange.target = route, target

    async def resume(
        self,
        exchange: Exchange,
        receive: Receive,
        send: Send,
        *,
        response: UpstreamResponse | None = None,
        error: BaseException | None = None,
        fresh: bool = False,
    ) -> None:
        """The rest of an exchange the fast lane admitted, as a task (gateway/express.py): its refusal (``error``), a
        response too large for one write (``response``), or the request sent again on a ``fresh`` connection."""
        respond = _Response(send)
        await self._guarded(exchange, respond, self._resumed(exchange, receive, respond, response, error, fresh))

    async def _resumed(
        self,
        exchange: Exchange,
        receive: Receive,
        respond: _Response,
        response: UpstreamResponse | None,
        error: BaseException | None,
        fresh: bool,
    ) -> None:
        if error is not None:
            raise error
        await self._forward(exchange, receive, respond, response, fresh=fresh)

    async def _forward(
        self,
        exchange: Exchange,
        receive: Receive,
        respond: _Response,
        response: UpstreamResponse | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        route, forwarded = exchange.route, exchange.headers
        assert route is not None and forwarded is not None
        upstream = self._targets[id(route)]
        client: Upstream = self.upstream
        if fresh:  # the fast lane's retry: a new connection, no retry of its own (HttptoolsUpstream.send)
            assert self.lane_upstream is not None
            client = _FreshConnection(self.lane_upstream)
        await proxy.forward(
            client,
            method=exchange.method,
            origin=upstream.origin,
            target=exchange.target,
            headers=forwarded,
            max_body_bytes=route.max_body_bytes,
            min_body_rate=route.min_body_rate,
            timeouts=upstream.timeouts,
            request_id=exchange.request_id,
            receive=receive,
            send=respond,
            loop=self._loop,
            response=response,
        )

    async def _guarded(self, exchange: Exchange, respond: _Response, work: Awaitable[None]) -> None:
        """Run the rest of a request; every failure becomes its error response (or, once the head is out, aborts the
        connection), and the request is counted and logged once, at the end."""
        record = exchange.record
        try:
            await work
        except proxy.ClientDisconnected:
            record.error = "client_disconnected"
            respond.status = 499  # nginx's code for "client closed request"; nothing was or can be sent
        except GatewayError as exc:
            record.error = exc.error
            if respond.status:
                raise  # the head is out: abort the connection (see module docstring)
            await self.error_response(respond, exc, exchange.request_id)
        except Exception:
            record.error = "internal_error"
            logger.exception("unexpected error handling request %s", exchange.request_id)
            if respond.status:
                raise
            await self.error_response(respond, GatewayError(), exchange.request_id)
        finally:
            self.done(exchange, respond.status)

    def done(self, exchange: Exchange, status: int) -> None:
        """Count and log a finished request (``status`` 0: nothing was sent)."""
        record = exchange.record
        record.status = status
        elapsed = time.perf_counter() - exchange.started
        self.metrics.request(record.route, status, elapsed)
        accesslog.emit(record, elapsed * 1000)

    def target(self, route: RouteConfig) -> _Target:
        """Where ``route`` sends, and its timeouts."""
        return self._targets[id(route)]

    def flush_metrics(self) -> None:
        """The verifier's cache counters and the batched counters into Prometheus (gateway/metrics.py): before a
        scrape, every ``FLUSH_INTERVAL`` seconds and at shutdown."""
        hits, misses = self.verifier.hits, self.verifier.misses
        self.metrics.cache(hits - self._cache_counts[0], misses - self._cache_counts[1])
        self._cache_counts = (hits, misses)
        self.metrics.fast(self.express_requests - self._fast_counted)
        self._fast_counted = self.express_requests
        self.metrics.flush()

    def _flush_periodically(self) -> None:
        self.flush_metrics()
        accesslog.flush()
        self._flusher = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._flush_periodically)

    # --- responses the gateway makes itself --------------------------------------------------------------------

    async def error_response(self, send: Send, exc: GatewayError, request_id: str) -> None:
        body = json.dumps({"error": exc.error, "message": exc.message, "request_id": request_id}).encode()
        extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers(self.config.realm)]
        extra.append((b"cache-control", b"no-store"))  # RFC 6750 §3: token errors must not be cached
        await _send_body(send, exc.status, body, b"application/json", request_id, extra)

    async def _livez(self, send: Send, request_id: str) -> None:
        await _send_json(send, 200, {"status": "ok"}, request_id)

    async def _readyz(self, send: Send, request_id: str) -> None:
        if not self.jwks.ready():
            await _send_json(send, 503, {"status": "unavailable", "reason": "an issuer has no usable keys"}, request_id)
        elif self.revocations is not None and not self.revocations.ready():
            reason = "an issuer's revocation list is out of date"
            await _send_json(send, 503, {"status": "unavailable", "reason": reason}, request_id)
        else:
            await _send_json(send, 200, {"status": "ok"}, request_id)

    async def _metrics(self, send: Send, request_id: str) -> None:
        self.flush_metrics()
        await _send_body(send, 200, self.metrics.render(), CONTENT_TYPE.encode(), request_id)


def _auth_outcome(exc: GatewayError) -> tuple[accesslog.AuthOutcome, str | None]:
    if isinstance(exc, MissingToken):
        return "missing", None
    if isinstance(exc, InvalidToken):
        return "invalid", exc.reason
    if isinstance(exc, ServiceUnavailable):
        return "unavailable", None
    if exc.status == 403:
        return "forbidden", None
    return "invalid", exc.error  # InvalidRequest: two Authorization headers, an empty Bearer


async def _send_json(send: Send, status: int, payload: dict[str, str], request_id: str) -> None:
    await _send_body(send, status, json.dumps(payload).encode(), b"application/json", request_id)


async def _send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    head = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def create_app(
    config: GatewayConfig,
    *,
    verifier: TokenVerifier | None = None,
    jwks: JwksCache | None = None,
    upstream: Upstream | None = None,
    clock: Callable[[], float] | None = None,
    metrics: Metrics | None = None,
    jwks_transport: httpx.AsyncBaseTransport | None = None,
    revocations: RevocationFeed | None = None,
    revocation_transport: httpx.AsyncBaseTransport | None = None,
) -> Gateway:
    """Build the gateway. Every dependency may be passed in (tests pass a clock, a JWKS transport, an upstream);
    the defaults are the production ones: keys fetched with httpx, requests forwarded with the httptools client
    (measured fastest, see gateway/upstream_httptools.py). ``clock`` is wall-clock seconds (token times, proofs).
    Issuers with a ``revocation_url`` get a :class:`RevocationFeed` (polled with its own httpx client), consulted
    by the default verifier; a ``verifier`` passed in brings its own ``is_revoked``."""
    clock = clock or time.time
    closers: list[Callable[[], Awaitable[None]]] = []
    metrics = metrics or Metrics()
    if jwks is None:
        client = no_cookie_client(transport=jwks_transport)
        closers.append(client.aclose)
        wall = clock

        def on_fetch(issuer: str, outcome: str) -> None:
            metrics.jwks_fetch(issuer, outcome)
            if outcome == "ok":
                metrics.keys_fetched(issuer, wall())

        jwks = JwksCache(config.issuers, client, on_fetch=on_fetch)
    if revocations is None and any(issuer.revocation_url for issuer in config.issuers):
        feed_client = no_cookie_client(transport=revocation_transport)
        closers.append(feed_client.aclose)
        feed_clock = clock

        def on_poll(issuer: str, outcome: str, size: int) -> None:
            metrics.revocation_poll(issuer, outcome, size, feed_clock())

        revocations = RevocationFeed(config.issuers, feed_client, leeway=config.leeway, clock=clock, on_poll=on_poll)
    if verifier is None:
        verifier = TokenVerifier(
            config.issuers,
            jwks,
            leeway=config.leeway,
            clock=clock,
            cache_size=config.token_cache_size,
            max_token_bytes=config.max_token_bytes,
            is_revoked=revocations.is_revoked if revocations is not None else None,
            # Cached entries keep only the claims some route requires (tokens.py: memory per entry).
            keep_claims=frozenset(name for route in config.routes for name in route.required_claims),
        )
    return Gateway(
        config,
        verifier=verifier,
        jwks=jwks,
        upstream=upstream or HttptoolsUpstream(),
        metrics=metrics,
        clock=clock,
        closers=tuple(closers),
        revocations=revocations,
    )
