"""Fixtures for the identity tests: a migrated database, a controllable clock, and an in-process client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from identity.app import create_app
from identity.config import Config, load_config
from identity.db import create_engine, migrate

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
BASE_URL = "http://127.0.0.1:8000"
PEER = ("203.0.113.5", 40000)
START = 1_795_697_845.0  # 2026-11-26T...: a fixed, realistic epoch


def fast_hasher() -> PasswordHasher:
    # Far below production strength: keeps the suite fast. Production uses identity.passwords.strong_hasher().
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(**env: str) -> Config:
    environ = {"IDENTITY_SECRET": SECRET, "IDENTITY_BASE_URL": BASE_URL, **env}
    return load_config(environ)


@pytest.fixture
def migrated_url(database_url: str) -> str:
    migrate(database_url)
    return database_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class Harness:
    """An app over a migrated database with a client that never stores cookies (tests send them explicitly)."""

    client: httpx.AsyncClient
    clock: Clock
    config: Config
    app: Any

    async def sign_up(
        self, email: str = "alice@example.com", password: str = "correct horse", **extra: Any
    ) -> httpx.Response:
        body = {"name": "Alice", "email": email, "password": password, **extra}
        response = await self.client.post("/api/auth/sign-up/email", json=body)
        assert response.status_code == 200, response.text
        return response

    async def token_of(self, email: str = "alice@example.com", password: str = "correct horse") -> str:
        response = await self.client.post("/api/auth/sign-in/email", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])


def _no_cookies() -> CookieJar:
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


HarnessFactory = Callable[..., Any]


@pytest.fixture
async def make_harness(migrated_url: str, clock: Clock) -> AsyncIterator[HarnessFactory]:
    engines = []
    clients = []

    async def factory(peer: tuple[str, int] = PEER, hasher: PasswordHasher | None = None, **env: str) -> Harness:
        config = make_config(**env)
        engine = create_engine(migrated_url)
        engines.append(engine)
        app = create_app(config, engine=engine, clock=clock, password_hasher=hasher or fast_hasher())
        transport = httpx.ASGITransport(app=app, client=peer)
        client = httpx.AsyncClient(transport=transport, base_url=BASE_URL, cookies=_no_cookies())
        clients.append(client)
        return Harness(client, clock, config, app)

    yield factory
    for client in clients:
        await client.aclose()
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def h(make_harness: HarnessFactory) -> Harness:
    return await make_harness()  # type: ignore[no-any-return]
