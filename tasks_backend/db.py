"""Engine creation and schema migrations (Alembic, kept in ``tasks_backend/migrations``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, event, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).with_name("migrations")
#: Our own version table, so identity and tasks can share one PostgreSQL database.
VERSION_TABLE = "tasks_alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 5000

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def normalize_database_url(url: str) -> str:
    """The SQLAlchemy async URL for ``url``: ``postgres(ql)://`` -> asyncpg, ``sqlite://`` -> aiosqlite."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _DRIVERS:
        shown = scheme if sep else "(none)"
        raise ValueError(f"unsupported database URL scheme {shown!r}; use postgresql://... or sqlite+aiosqlite:///...")
    return f"{_DRIVERS[scheme.lower()]}://{rest}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; the busy timeout makes a writer wait for the lock instead of
    # failing at once with "database is locked" when two requests write together.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine whose pool survives a database restart (``pool_pre_ping``)."""
    url = make_url(normalize_database_url(database_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, pool_pre_ping=True)
    if url.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


async def migrate_engine(engine: AsyncEngine) -> None:
    """Bring the schema behind ``engine`` to the newest revision."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_alembic_config(sync), "head"))


def migrate(database_url: str) -> None:
    """Bring the schema at ``database_url`` to the newest revision (``python -m tasks_backend migrate``)."""

    async def run() -> None:
        engine = create_engine(database_url)
        try:
            await migrate_engine(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; raises if the database cannot be reached or was never migrated."""
    async with engine.connect() as conn:
        version = table(VERSION_TABLE, column("version_num"))
        return (await conn.execute(select(version.c.version_num))).scalar_one_or_none()
