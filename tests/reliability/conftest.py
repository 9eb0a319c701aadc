"""Fixtures for the reliability tests.

``edge``: one real gateway process (``python -m gateway``) in front of loopback servers that can be broken on
purpose: a JWKS endpoint (:class:`JwksServer`), a switchable upstream (:class:`RawUpstream`), an endless download,
a slow upload sink, and a well-behaved ASGI backend. Started once per session: the fault tests restore what they
break, so they can share it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.devstack import Stack
from tests.conftest import POSTGRES_ENV
from tests.gateway._fwd_servers import Backend, LoopThread, free_port
from tests.gateway.conftest import AUDIENCE, ISSUER, SigningKey, jwks, make_key, mint
from tests.reliability._support import GatewayProcess, JwksServer, PrivatePostgres, RawUpstream, postgres_bindir

#: Short enough that a test sees keys go stale and fetches fail within a second or two.
JWKS_TTL = 1.0
JWKS_TIMEOUT = 1.0
JWKS_COOLDOWN = 0.25
JWKS_MAX_BYTES = 65536
UPSTREAM_TIMEOUT = 1.0
SMALL_BODY = 1024
HEADER_TIMEOUT = 1.0

EDGE_CONFIG = """
[server]
max_body_bytes = 0

[[issuers]]
issuer = "{issuer}"
audiences = ["{audience}"]
jwks_url = "{jwks_url}"
jwks_ttl = {ttl}
jwks_stale_for = 3600
jwks_timeout = {jwks_timeout}
jwks_max_bytes = {jwks_max_bytes}
jwks_refetch_cooldown = {cooldown}

[[routes]]
path = "/api/{{user_id}}/{{rest:path}}"
upstream = "{backend}"
auth = "owner"

[[routes]]
path = "/ok/{{rest:path}}"
upstream = "{backend}"
auth = "public"

[[routes]]
path = "/flaky/{{rest:path}}"
upstream = "{flaky}"
auth = "public"
timeout = {timeout}
connect_timeout = {timeout}

[[routes]]
path = "/endless/{{rest:path}}"
upstream = "{endless}"
auth = "public"

[[routes]]
path = "/stuck/{{rest:path}}"
upstream = "{stuck}"
auth = "public"
timeout = 30

[[routes]]
path = "/sink/{{rest:path}}"
upstream = "{sink}"
auth = "public"
timeout = 10

[[routes]]
path = "/small/{{rest:path}}"
upstream = "{sink}"
auth = "public"
max_body_bytes = {small}
"""


@dataclass
class Edge:
    loop: LoopThread
    gateway: GatewayProcess
    jwks: JwksServer
    key: SigningKey
    backend: Backend
    backend_url: str
    flaky: RawUpstream
    endless: RawUpstream
    sink: RawUpstream
    stuck: RawUpstream

    def token(self, key: SigningKey | None = None, sub: str = "alice") -> str:
        """A fresh token (a new ``jti`` each time, so the gateway's verified-token cache cannot answer it)."""
        return mint(key or self.key, sub=sub, jti=secrets.token_hex(8))


@pytest.fixture(scope="session")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    loop = LoopThread()
    gateway = None
    servers: list[JwksServer | RawUpstream] = []
    try:
        key = make_key("EdDSA", "edge-1")
        jwks_server = JwksServer(loop, jwks(key))
        backend = Backend(loop)
        backend_url = f"http://127.0.0.1:{loop.start_uvicorn(backend)}"
        flaky, endless, sink = RawUpstream(loop), RawUpstream(loop, "endless"), RawUpstream(loop, "sink")
        stuck = RawUpstream(loop, "hang")
        servers += [jwks_server, flaky, endless, sink, stuck]
        config = EDGE_CONFIG.format(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_url=jwks_server.url,
            ttl=JWKS_TTL,
            jwks_timeout=JWKS_TIMEOUT,
            jwks_max_bytes=JWKS_MAX_BYTES,
            cooldown=JWKS_COOLDOWN,
            backend=backend_url,
            flaky=flaky.url,
            endless=endless.url,
            sink=sink.url,
            stuck=stuck.url,
            timeout=UPSTREAM_TIMEOUT,
            small=SMALL_BODY,
        )
        directory: Path = tmp_path_factory.mktemp("edge")
        gateway = GatewayProcess(
            config, directory, args=["--no-access-log", "--header-timeout", str(HEADER_TIMEOUT)]
        ).wait_live()
        yield Edge(loop, gateway, jwks_server, key, backend, backend_url, flaky, endless, sink, stuck)
    finally:
        if gateway is not None:
            gateway.stop()
        for server in servers:
            server.close()
        loop.close()


@pytest.fixture(autouse=True)
def _edge_logs_no_error(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test on the shared gateway: whatever it broke, the gateway logged no ERROR and no traceback."""
    if "edge" not in request.fixturenames:
        yield
        return
    gateway: GatewayProcess = request.getfixturevalue("edge").gateway
    mark = gateway.total
    yield
    time.sleep(0.05)  # a line logged as the test ends
    assert gateway.errors(mark) == [], gateway.tail()


@dataclass
class RealStack:
    """The three services as ``make run`` starts them (scripts/devstack.py), on a private PostgreSQL cluster
    when this machine has the PostgreSQL binaries (else on SQLite, and ``postgres`` is None)."""

    stack: Stack
    postgres: PrivatePostgres | None

    @property
    def url(self) -> str:
        return self.stack.public_url


@pytest.fixture(scope="session")
def real_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    bindir = postgres_bindir()
    if bindir is None and os.environ.get(POSTGRES_ENV):
        pytest.fail(f"{POSTGRES_ENV} is set but no /usr/lib/postgresql/*/bin/initdb: the PostgreSQL tests must run")
    postgres = PrivatePostgres(bindir) if bindir is not None else None
    env = {**os.environ, "IDENTITY_RATE_LIMIT": "off"}  # every client of these tests is 127.0.0.1
    if postgres is not None:
        env["IDENTITY_DATABASE_URL"] = env["TASKS_DATABASE_URL"] = postgres.url
    ports = {"gateway": free_port(), "identity": free_port(), "tasks": free_port()}
    try:
        with Stack(tmp_path_factory.mktemp("stack"), ports=ports, env=env) as stack:
            yield RealStack(stack, postgres)
    finally:
        if postgres is not None:
            postgres.close()
