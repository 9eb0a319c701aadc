"""Helpers for the forwarding tests (headers, app, loopback, CLI, metrics).

* :func:`gateway_config` builds a validated :class:`GatewayConfig` from a dict through the real parser.
* :class:`UpstreamRecorder` is an ``httpx.MockTransport`` handler standing in for a backend: it records every
  request it receives (headers as the raw list, body, request-target) and answers what the test sets.
* :func:`running_gateway` builds the app on a JWKS served by :class:`tests.gateway.conftest.JwksEndpoint` and
  the recorder, runs its start-up (ASGITransport never runs lifespan), and yields an ``httpx.AsyncClient``
  talking to it in-process from the given peer address.
* :func:`call_asgi` drives the app with a hand-built scope, for what an HTTP client refuses to send.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.app import Gateway, create_app
from gateway.config import GatewayConfig, parse_config
from gateway.metrics import Metrics
from gateway.upstream import HttpxUpstream
from tests.gateway.conftest import AUDIENCE, ISSUER, JWKS_URL, PROOF_SECRET, JwksEndpoint

UPSTREAM = "http://upstream.test:8002"


def gateway_config(
    routes: Iterable[Mapping[str, Any]] | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    issuers: Iterable[Mapping[str, Any]] | None = None,
    health: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """A config through the real parser. Default routes cover every auth mode against :data:`UPSTREAM`."""
    data: dict[str, Any] = {
        "issuers": list(
            issuers
            if issuers is not None
            else [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_url": JWKS_URL, "jwks_refetch_cooldown": 0}]
        ),
        "routes": list(routes if routes is not None else default_routes()),
    }
    if server:
        data["server"] = dict(server)
    if health:
        data["health"] = dict(health)
    return parse_config(data, environ if environ is not None else {"EDGE_PROOF_SECRET": PROOF_SECRET})


def default_routes(upstream: str = UPSTREAM) -> list[dict[str, Any]]:
    return [
        {"path": "/public/{rest:path}", "upstream": upstream, "auth": "public"},
        {"path": "/api/{user_id}/{rest:path}", "upstream": upstream, "auth": "owner"},
        {"path": "/me/{rest:path}", "upstream": upstream, "auth": "authenticated"},
        {"path": "/relay/{rest:path}", "upstream": upstream, "auth": "authenticated", "forward_token": True},
        {"path": "/small/{rest:path}", "upstream": upstream, "auth": "public", "max_body_bytes": 16},
        {"path": "/read-only", "upstream": upstream, "auth": "public", "methods": ["GET"]},
    ]


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == name.encode()]

    def names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.headers]


def streamed(status: int, chunks: Iterable[bytes], headers: Iterable[tuple[str, str]] = ()) -> httpx.Response:
    """A response whose body is a stream, as from a real connection (``content=bytes`` would be pre-read, and
    ``aiter_raw`` refuses a body that has been read). ``headers`` is a list: repeated names stay separate."""
    parts = list(chunks)

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return httpx.Response(status, headers=list(headers), content=body())


@dataclass
class UpstreamRecorder:
    """A backend behind ``httpx.MockTransport``. ``respond`` builds the answer (default: 200 ``ok``);
    ``error`` is raised instead (an httpx transport error, as a real connection would)."""

    seen: list[Seen] = field(default_factory=list)
    respond: Callable[[httpx.Request], httpx.Response] | None = None
    error: Exception | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        target = request.extensions.get("target", request.url.raw_path)
        self.seen.append(Seen(request.method, target, list(request.headers.raw), body))
        if self.error is not None:
            raise self.error
        if self.respond is not None:
            return self.respond(request)
        return streamed(200, [b"ok"], [("content-type", "text/plain")])

    @property
    def last(self) -> Seen:
        assert self.seen, "the upstream received no request"
        return self.seen[-1]


@contextlib.asynccontextmanager
async def running_gateway(
    config: GatewayConfig,
    *,
    jwks_endpoint: JwksEndpoint,
    recorder: UpstreamRecorder | None = None,
    peer: tuple[str, int] = ("203.0.113.7", 40000),
    clock: Callable[[], float] | None = None,
    upstream: Any = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    app = create_app(
        config,
        upstream=upstream or HttpxUpstream(transport=httpx.MockTransport(recorder or UpstreamRecorder())),
        clock=clock,
        metrics=metrics,
        jwks_transport=httpx.MockTransport(jwks_endpoint),
    )
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
            # Only what each test sends: httpx's defaults would hide what the gateway adds on its own.
            for name in list(client.headers.keys()):
                del client.headers[name]
            yield app, client
    finally:
        await app.shutdown()


@dataclass
class AsgiResult:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        found = [v.decode("latin-1") for k, v in self.headers if k.lower() == name.encode()]
        assert len(found) <= 1, f"{name} sent {len(found)} times"
        return found[0] if found else None


async def call_asgi(
    app: Gateway,
    *,
    method: str = "GET",
    raw_path: bytes | None = b"/",
    query_string: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    body_chunks: Iterable[bytes] = (b"",),
    client: tuple[str, int] | None = ("203.0.113.7", 40000),
) -> AsgiResult:
    """Run one request through the app with a hand-built scope (bytes the ASGI server passed on verbatim)."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": (raw_path or b"/").decode("latin-1"),
        "query_string": query_string,
        "headers": list(headers),
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    chunks = list(body_chunks)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for index, chunk in enumerate(chunks):
        inbox.put_nowait({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
    done = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not inbox.empty():
            return inbox.get_nowait()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return AsgiResult(start["status"], list(start["headers"]), body)
