"""Fixtures shared by every test tier.

Database-facing tests take the ``database_url`` fixture. It always yields a fresh SQLite file; when
``EDGE_TEST_POSTGRES_URL`` is set (``.ci/run`` sets it) every such test also runs on PostgreSQL, each test in
a database of its own (``CREATE DATABASE edge_t_<random>``), dropped afterwards, so runs never see each
other's data. With the variable set and PostgreSQL unreachable the tests fail: CI must not pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

if os.environ.get("FAKETIME") and os.environ.get("FAKETIME_DONT_FAKE_MONOTONIC") == "1":
    # .ci/run runs the in-process tiers once more with the wall clock 400 days ahead (libfaketime, monotonic clock
    # left real), so that no test can depend on today's date. libfaketime 0.9.10 (Debian 12) turns the absolute
    # monotonic deadline of time.sleep's clock_nanosleep into an invalid one (EINVAL); select() takes a relative
    # timeout it leaves alone. Only this test process is affected; product code's clocks are injected anyway.
    import select
    import time

    def _sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep

POSTGRES_ENV = "EDGE_TEST_POSTGRES_URL"
BROWSER_ENV = "EDGE_TEST_REQUIRE_BROWSER"
NO_SKIPS_ENV = "EDGE_TEST_NO_SKIPS"
CHROMIUM = os.environ.get("EDGE_TEST_CHROMIUM", "/usr/bin/chromium")

_backends = ["sqlite"] + (["postgres"] if os.environ.get(POSTGRES_ENV) else [])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _asyncpg_dsn(url: str) -> str:
    """asyncpg wants ``postgresql://``; SQLAlchemy wants ``postgresql+asyncpg://``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=_backends)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy async URL for an empty database of its own (schema not created: run migrations)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    admin_url = os.environ[POSTGRES_ENV]
    name = f"edge_t_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0'))
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit(parts._replace(scheme="postgresql+asyncpg", path=f"/{name}"))
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests need Chromium. Where it is required (CI) they always run, and fail if it is missing;
    on a developer machine without it they are marked skipped with the reason, never silently dropped."""
    if os.environ.get(BROWSER_ENV) == "1" or shutil.which(CHROMIUM):
        return
    reason = f"{CHROMIUM} not installed (apt-get install -y chromium); .ci/run installs it and requires these tests"
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
    # Soak tests are run by hand only: `pytest -m soak`.


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("-m"):
        config.option.markexpr = "not soak"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With EDGE_TEST_NO_SKIPS=1 (.ci/run sets it) a skipped test fails the run: CI must not pass by skipping
    what it was meant to check (a missing tool, a missing service)."""
    if os.environ.get(NO_SKIPS_ENV) != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = ", ".join(report.nodeid for report in skipped[:10])
        print(f"\n{NO_SKIPS_ENV}=1 and {len(skipped)} test(s) skipped: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
