from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from tasks_backend.app import create_app
from tasks_backend.config import Config, load_config
from tasks_backend.db import create_engine, migrate_engine
from tests.tasks_backend.proofs import SECRET, FakeClock, GatewayClient


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(database_url: str) -> Config:
    return load_config({"TASKS_DATABASE_URL": database_url, "EDGE_PROOF_SECRET": SECRET.decode()})


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a freshly migrated database of this test's own (SQLite, and PostgreSQL when enabled)."""
    engine = create_engine(database_url)
    await migrate_engine(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def app(config: Config, engine: AsyncEngine, clock: FakeClock) -> Starlette:
    return create_app(config, engine=engine, clock=clock)


@pytest.fixture
async def client(app: Starlette, clock: FakeClock) -> AsyncIterator[GatewayClient]:
    client = GatewayClient(app, clock, user_id="alice")
    yield client
    await client.aclose()
