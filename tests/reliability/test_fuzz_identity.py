"""Hypothesis against the identity service's ``/api/auth/*`` endpoints, in-process (issue 8): random methods, media
types, bodies (JSON of any shape, forms, raw bytes, deep nesting, lone surrogates, NULs, oversized) and
credentials. Every response must be one the wire reference documents (shared/reference/better-auth-wire.md 2.1
and 2.4): a 2xx with JSON, an empty-bodied 404, or a 4xx whose body is exactly ``{"message", "code"}``; never a
5xx."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from identity.app import create_app
from identity.db import create_engine, migrate
from tests.conftest import POSTGRES_ENV, _admin
from tests.identity.conftest import BASE_URL, PEER, fast_hasher, make_config

PASSWORD = "correct horse"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Statuses the reference documents for these endpoints (2.1, 2.4); 429 is off here (IDENTITY_RATE_LIMIT=off).
DOCUMENTED = {200, 400, 401, 403, 404, 405, 413, 415, 422}

ENDPOINTS = [
    ("POST", "/sign-up/email"),
    ("POST", "/sign-in/email"),
    ("POST", "/sign-out"),
    ("GET", "/get-session"),
    ("POST", "/get-session"),
    ("GET", "/token"),
    ("GET", "/jwks"),
    ("GET", "/ok"),
    ("GET", "/list-sessions"),
    ("POST", "/revoke-session"),
    ("POST", "/revoke-other-sessions"),
    ("POST", "/change-password"),
    ("GET", "/revocations"),
]
FIELDS = [
    "name", "email", "password", "image", "callbackURL", "rememberMe", "newPassword", "currentPassword",
    "revokeOtherSessions", "token",
]  # fmt: skip
NASTY_STRINGS = [
    "", " ", "alice@example.com", "ALICE@EXAMPLE.COM", "a@b", "a@b.c", "not an email", "x" * 7, "x" * 8, "x" * 128,
    "x" * 129, "é" * 64, "\U0001f600" * 65, "\ud800", "a\udfffb", "\x00", "a\x00b", "\r\n", "/dash", "//evil.example",
    "https://evil.example/", "javascript:alert(1)", "true", "false", "null", "0", "/日本", "/\ud800", "/é",
]  # fmt: skip


@dataclass
class Harness:
    runner: asyncio.Runner
    client: httpx.AsyncClient
    session: str  # a real session token (it may be revoked by an earlier example: then it is just invalid)

    def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> httpx.Response:
        return self.runner.run(self.client.request(method, path, headers=headers, content=content))


@pytest.fixture(scope="module", params=["sqlite"] + (["postgres"] if os.environ.get(POSTGRES_ENV) else []))
def identity(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The identity app on a migrated database of its own: SQLite, and PostgreSQL too when EDGE_TEST_POSTGRES_URL is
    set (a NUL that SQLite stores is an error in PostgreSQL)."""
    admin = database = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{Path(tmp_path_factory.mktemp('identity-fuzz')) / 'identity.db'}"
    else:
        admin = os.environ[POSTGRES_ENV]
        database = f"edge_fuzz_{secrets.token_hex(6)}"
        asyncio.run(_admin(admin, f'CREATE DATABASE "{database}" TEMPLATE template0'))
        url = urlunsplit(urlsplit(admin)._replace(scheme="postgresql+asyncpg", path=f"/{database}"))
    try:
        migrate(url)
        with asyncio.Runner() as runner:
            engine = create_engine(url)
            config = make_config(IDENTITY_RATE_LIMIT="off")
            app = create_app(config, engine=engine, password_hasher=fast_hasher())
            runner.run(app.state.identity.keyring.ensure())  # what the lifespan does (ASGITransport runs none)
            # raise_app_exceptions=False: an unhandled error must come back as the 500 a client would see.
            transport = httpx.ASGITransport(app=app, client=PEER, raise_app_exceptions=False)
            jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
            client = httpx.AsyncClient(transport=transport, base_url=f"{BASE_URL}/api/auth", cookies=jar)
            for name in list(client.headers.keys()):
                del client.headers[name]
            body = {"name": "Fuzz", "email": "fuzz@example.com", "password": PASSWORD}
            signed_up = runner.run(client.post("/sign-up/email", json=body))
            assert signed_up.status_code == 200, signed_up.text
            try:
                yield Harness(runner, client, signed_up.json()["token"])
            finally:
                runner.run(client.aclose())
                runner.run(engine.dispose())
    finally:
        if admin is not None:
            asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(allow_nan=False),
        st.sampled_from(NASTY_STRINGS),
        st.text(max_size=10),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=6,
    )


def valid_object(path: str) -> st.SearchStrategy[dict[str, Any]]:
    """A body the endpoint would accept (a fresh email for sign-up), to be mutated field by field."""
    email = st.from_regex(r"[a-z]{6}@example\.com", fullmatch=True)
    if path == "/sign-up/email":
        return st.fixed_dictionaries({"name": st.just("Fuzz"), "email": email, "password": st.just(PASSWORD)})
    if path == "/sign-in/email":
        return st.just({"email": "fuzz@example.com", "password": PASSWORD})
    if path == "/change-password":
        return st.just({"currentPassword": PASSWORD, "newPassword": PASSWORD})
    if path == "/revoke-session":
        return st.just({"token": "x" * 32})
    return st.just({})


@st.composite
def bodies(draw: st.DrawFn, path: str) -> tuple[str | None, bytes | None]:
    """(content type, body): mostly the endpoint's own object with a field or two made nasty, sometimes anything."""
    kind = draw(st.sampled_from(["mutated"] * 5 + ["json", "form", "raw", "nested", "huge", "none"]))
    if kind == "none":
        return draw(st.sampled_from([None, "application/json"])), None
    if kind in ("mutated", "form"):
        obj = dict(draw(valid_object(path)))
        own = st.sampled_from(sorted(obj)) if obj else st.sampled_from(FIELDS)
        for field in draw(st.lists(own | own | st.sampled_from(FIELDS), min_size=1, max_size=2)):
            obj[field] = draw(st.sampled_from(NASTY_STRINGS) | st.sampled_from(NASTY_STRINGS) | json_values())
        if draw(st.booleans()) and obj:
            del obj[draw(st.sampled_from(sorted(obj)))]
        if kind == "form":
            pairs = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in obj.items()]
            body = urlencode([(k, v.encode("utf-8", "surrogatepass")) for k, v in pairs]).encode()
            return "application/x-www-form-urlencoded", body
        body = json.dumps(obj).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    elif kind == "json":
        body = json.dumps(draw(json_values())).encode()
    elif kind == "raw":
        body = draw(st.binary(max_size=40))
    elif kind == "nested":
        depth = draw(st.sampled_from([50, 5_000, 30_000]))
        body = draw(st.sampled_from([b"[", b'{"a":'])) * depth
    else:
        body = b'{"name": "' + b"x" * 70_000 + b'"}'
    content_type = draw(
        st.sampled_from(
            [
                "application/json",
                "application/json",
                "application/json",
                "application/json; charset=utf-8",
                "application/x-www-form-urlencoded",
                "text/plain",
                "APPLICATION/JSON",
                "multipart/form-data; boundary=x",
                "",
                None,
            ]
        )
    )
    return content_type, body


@st.composite
def requests(draw: st.DrawFn, session: str) -> tuple[str, str, dict[str, str], bytes | None]:
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
        path = draw(st.sampled_from([p for _, p in ENDPOINTS] + ["/", "/sign-up", "/x", "/token/"]))
    else:  # the endpoints that take a body, twice as often
        method, path = draw(st.sampled_from(ENDPOINTS) | st.sampled_from(ENDPOINTS[:2] + ENDPOINTS[-4:-1]))
    if path == "/revocations":
        path += draw(st.sampled_from(["", "?since=", "?since=0", "?since=-1", "?since=99999999999999999999", "?x=1"]))
    headers: dict[str, str] = {}
    auth = draw(st.sampled_from(["none", "session", "garbage", "basic"]))
    if auth == "session":
        headers["authorization"] = f"Bearer {session}"
    elif auth == "garbage":
        headers["authorization"] = "Bearer " + draw(st.text(st.characters(min_codepoint=33, max_codepoint=126)))
    elif auth == "basic":
        headers["authorization"] = "Basic Zm9vOmJhcg=="
    if draw(st.booleans()):
        headers["cookie"] = draw(
            st.sampled_from(["better-auth.session_token=garbage", "a=b", f"better-auth.session_token={session}.x"])
        )
    origin = draw(st.sampled_from([None, None, BASE_URL, "https://evil.example", "null"]))
    if origin is not None:
        headers["origin"] = origin
    content_type, body = draw(bodies(path))
    if content_type is not None:
        headers["content-type"] = content_type
    return method, path, headers, body


@FUZZ
@given(data=st.data())
@example(data=None)
def test_every_identity_response_is_documented(identity: Harness, data: Any) -> None:
    if data is None:
        method, path, headers, body = "GET", "/ok", {}, None
    else:
        method, path, headers, body = data.draw(requests(identity.session))
    response = identity.send(method, path, headers, body)
    status = response.status_code
    assert status in DOCUMENTED, (method, path, headers, (body or b"")[:200], status, response.text[:300])
    if status == 404:
        assert response.content == b""  # Better Auth's route miss: no body, no content type (2.1)
        return
    if method == "HEAD":
        return
    payload = response.json()
    if status < 300:
        return
    assert isinstance(payload, dict) and set(payload) == {"message", "code"}, (status, payload)
    assert isinstance(payload["message"], str) and isinstance(payload["code"], str)
    assert payload["code"] and payload["code"] == payload["code"].upper()
