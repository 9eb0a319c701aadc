"""Engine construction and migrations.

``migrate(database_url)`` runs the Alembic migrations in ``identity/migrations`` (version table
``identity_alembic_version``, so identity and the tasks backend can share one PostgreSQL database).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

VERSION_TABLE = "identity_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(database_url: str) -> str:
    """Rewrite ``postgres://`` and ``postgresql://`` to the asyncpg driver; leave anything else alone."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    return database_url


def _prepare_sqlite_path(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; the busy timeout makes a writer wait instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(database_url: str) -> AsyncEngine:
    database_url = normalize_url(database_url)
    _prepare_sqlite_path(database_url)
    # pool_pre_ping lets a pool survive a PostgreSQL restart; a local SQLite file never drops a connection,
    # and the ping would cost a worker-thread round trip on every checkout (bench/README.md, identity profile).
    sqlite = make_url(database_url).get_backend_name() == "sqlite"
    engine = create_async_engine(database_url, pool_pre_ping=not sqlite)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(database_url: str) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not a main option: configparser would choke on '%' in a password.
    config.attributes["database_url"] = normalize_url(database_url)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def migrate(database_url: str) -> None:
    """Bring the schema to the newest revision. Synchronous; do not call from a running event loop."""
    _prepare_sqlite_path(normalize_url(database_url))
    command.upgrade(_alembic_config(database_url), "head")


async def schema_is_current(engine: AsyncEngine, head: str) -> bool:
    """True when the database answers and its schema is at ``head`` (``/readyz``)."""
    async with engine.connect() as conn:
        row = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).first()  # noqa: S608
    return row is not None and row[0] == head


#: Failures that mean "the database cannot be reached right now" (issue 8: each was a bare 500 during a PostgreSQL
#: restart). SQLAlchemy wraps errors raised while a statement runs, but not those raised while asyncpg opens a
#: connection (refused, too many clients), which arrive as the driver's own exceptions or as OSError.
UNAVAILABLE: tuple[type[Exception], ...] = (
    OperationalError,
    DisconnectionError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)
#: The same as SQLSTATE classes (PostgreSQL Appendix A), for driver errors wrapped in a plain DBAPIError: 08
#: connection exception, 53 insufficient resources, 57 operator intervention ("not yet accepting connections").
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable for now (worth a retry), rather than a bug."""
    if isinstance(exc, UNAVAILABLE):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
