"""Operations: migrations, /livez, /readyz, and the command line."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import func, select

from identity.__main__ import main
from identity.app import create_app
from identity.db import create_engine, migrate, normalize_url
from identity.models import signing_keys
from tests.identity.conftest import SECRET, fast_hasher, make_config


@pytest.mark.anyio
async def test_livez_and_readyz(h):
    for path in ("/livez", "/readyz"):
        response = await h.client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


@pytest.mark.anyio
async def test_readyz_fails_before_migration(database_url):
    engine = create_engine(database_url)
    try:
        app = create_app(make_config(), engine=engine, password_hasher=fast_hasher())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.get("/livez")).status_code == 200
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"status": "unavailable"}
    finally:
        await engine.dispose()


def test_migrate_is_idempotent(database_url):
    migrate(database_url)
    migrate(database_url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:///data/identity.db", "sqlite+aiosqlite:///data/identity.db"),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


async def _key_count(url: str) -> int:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(signing_keys))).scalar_one())
    finally:
        await engine.dispose()


def test_cli_migrate_and_rotate_key(database_url, monkeypatch, capsys):
    monkeypatch.setenv("IDENTITY_SECRET", SECRET)
    monkeypatch.setenv("IDENTITY_DATABASE_URL", database_url)
    assert main(["migrate"]) == 0
    assert main(["rotate-key"]) == 0
    assert "published now, signs from" in capsys.readouterr().out
    assert main(["rotate-key"]) == 0
    assert asyncio.run(_key_count(database_url)) == 2


def test_cli_refuses_bad_configuration(monkeypatch, capsys):
    monkeypatch.delenv("IDENTITY_SECRET", raising=False)
    monkeypatch.delenv("IDENTITY_ENV", raising=False)
    assert main(["migrate"]) == 2
    assert "IDENTITY_SECRET is not set" in capsys.readouterr().err


def test_cli_help_names_every_variable(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in (
        "IDENTITY_DATABASE_URL",
        "IDENTITY_SECRET",
        "IDENTITY_ENV",
        "IDENTITY_BASE_URL",
        "IDENTITY_TRUSTED_ORIGINS",
        "IDENTITY_JWT_ALG",
        "IDENTITY_JWT_TTL",
        "IDENTITY_TRUSTED_PROXIES",
        "IDENTITY_KEY_PUBLISH_DELAY",
        "IDENTITY_REVOCATION_FEED_TOKEN",
        "serve",
        "migrate",
        "rotate-key",
        "revoke-user",
    ):
        assert name in out


@pytest.mark.anyio
async def test_access_log_is_one_json_line_without_secrets(h, caplog):
    import json
    import logging

    with caplog.at_level(logging.INFO, logger="identity.access"):
        token = (await h.sign_up()).json()["token"]
        await h.client.get("/api/auth/revocations?since=0")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "identity.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/api/auth/sign-up/email", 200),
        ("GET", "/api/auth/revocations", 200),
    ]
    assert token not in caplog.text and "correct horse" not in caplog.text
