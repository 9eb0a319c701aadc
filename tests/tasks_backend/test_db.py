"""Schema migrations, readiness, URL handling, and a pool that survives the database dropping connections."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import inspect

from tasks_backend.app import create_app
from tasks_backend.db import VERSION_TABLE, create_engine, head_revision, migrate, normalize_database_url
from tests.conftest import POSTGRES_ENV
from tests.tasks_backend.proofs import GatewayClient

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db", id="postgresql"),
        pytest.param("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db", id="postgres"),
        pytest.param("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db", id="asyncpg already"),
        pytest.param("sqlite:///data/tasks.db", "sqlite+aiosqlite:///data/tasks.db", id="sqlite"),
        pytest.param("sqlite+aiosqlite:////abs/tasks.db", "sqlite+aiosqlite:////abs/tasks.db", id="aiosqlite"),
        pytest.param("POSTGRESQL://h/db", "postgresql+asyncpg://h/db", id="scheme is case-insensitive"),
    ],
)
def test_normalize_database_url(url, expected):
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://h/db", "postgresql+psycopg2://h/db", "tasks.db", "", "http://example.com/db"])
def test_unsupported_database_urls_are_refused(url):
    with pytest.raises(ValueError, match="unsupported database URL scheme"):
        normalize_database_url(url)


def test_migrate_is_idempotent_and_records_its_own_version_table(database_url):
    migrate(database_url)
    migrate(database_url)

    async def inspect_schema():
        engine = create_engine(database_url)
        catalog = (
            "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'"
            if engine.dialect.name == "postgresql"
            else "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'"
        )
        try:
            async with engine.connect() as conn:
                tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
                indexes = set((await conn.exec_driver_sql(catalog)).scalars())
                revision = (await conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        finally:
            await engine.dispose()
        return tables, indexes, revision

    tables, indexes, revision = asyncio.run(inspect_schema())
    assert set(tables) >= {"tasks", "tasks_alembic_version"}
    assert "alembic_version" not in tables  # identity's table name stays free in a shared database
    assert revision == head_revision()
    assert indexes >= {
        f"ix_tasks_user_{completed}{sort}" for completed in ("", "completed_") for sort in ("created", "title", "due")
    }


def test_sqlite_parent_directory_is_created(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'dir' / 'tasks.db'}"
    migrate(url)
    assert (tmp_path / "nested" / "dir" / "tasks.db").exists()


async def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 5000
    finally:
        await engine.dispose()


async def test_readyz_is_503_until_migrated(config, database_url):
    engine = create_engine(database_url)
    app = create_app(config, engine=engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as plain:
            before = await plain.get("/readyz")
            assert (await plain.get("/livez")).status_code == 200
            await asyncio.to_thread(migrate, database_url)
            after = await plain.get("/readyz")
    finally:
        await engine.dispose()
    assert before.status_code == 503
    assert before.json()["status"] == "unavailable"
    assert after.status_code == 200
    assert after.json() == {"status": "ok"}


UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"  # port 9 (discard): nothing listens


async def test_an_unreachable_database_is_503_not_500(config, clock):
    engine = create_engine(UNREACHABLE)
    client = GatewayClient(create_app(config, engine=engine, clock=clock), clock)
    try:
        ready = await client.http.get("/readyz")
        listed = await client.get("/api/alice/tasks")
        created = await client.post("/api/alice/tasks", json={"title": "t"})
    finally:
        await client.aclose()
        await engine.dispose()
    assert ready.status_code == 503
    for response in (listed, created):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"
        assert response.headers["retry-after"] == "1"
        assert "nowhere" not in response.text  # no connection details leak


# PostgreSQL only: a database restart is a server event. Not skipped on SQLite -- simply not generated
# without EDGE_TEST_POSTGRES_URL, which CI always sets.
@pytest.mark.parametrize("database_url", ["postgres"] if os.environ.get(POSTGRES_ENV) else [], indirect=True)
async def test_the_pool_survives_postgres_dropping_every_connection(client, engine, database_url):
    import asyncpg

    assert (await client.post("/api/alice/tasks", json={"title": "before"})).status_code == 201
    pooled = engine.pool.checkedin()
    assert pooled >= 1

    # What a restart does to the pool: every server-side connection to this database goes away.
    admin = await asyncpg.connect(urlunsplit(urlsplit(os.environ[POSTGRES_ENV])._replace(scheme="postgresql")))
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            urlsplit(database_url).path.lstrip("/"),
        )
    finally:
        await admin.close()
    assert killed >= 1

    # The very next request succeeds: pool_pre_ping notices the dead connection and replaces it.
    after = await client.get("/api/alice/tasks")
    assert after.status_code == 200, after.text
    assert [task["title"] for task in after.json()["items"]] == ["before"]
