"""The per-request shortcuts of /token and /jwks: a JWT signed once per second per session, JWKS bytes and
headers built once per key set. Neither may change what a client receives."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from identity.keyring import REFRESH_INTERVAL
from tests.identity.conftest import BASE_URL, PEER
from tests.identity.test_revocations import bearer

pytestmark = pytest.mark.anyio


async def _jwt(h, token: str) -> str:
    response = await h.client.get("/api/auth/token", headers=bearer(token))
    assert response.status_code == 200
    return str(response.json()["token"])


async def test_one_jwt_per_session_and_second(h):
    alice = (await h.sign_up()).json()["token"]
    other_session = await h.token_of()
    first = await _jwt(h, alice)
    assert await _jwt(h, alice) == first  # same second, same claims: the same token
    assert await _jwt(h, other_session) != first  # another sid
    h.clock.advance(1)
    assert await _jwt(h, alice) != first  # a new iat


async def test_a_changed_user_gets_a_new_jwt_within_the_second(h):
    token = (await h.sign_up()).json()["token"]
    first = await _jwt(h, token)
    body = {"currentPassword": "correct horse", "newPassword": "battery staple"}
    h.clock.advance(0.001)  # same second, later updatedAt
    assert (await h.client.post("/api/auth/change-password", json=body, headers=bearer(token))).status_code == 200
    assert await _jwt(h, token) != first


async def test_jwks_headers_follow_the_key_set(h):
    first = await h.client.get("/api/auth/jwks")
    assert first.headers["content-type"] == "application/json"
    assert first.headers["cache-control"] == "public, max-age=300"
    assert int(first.headers["content-length"]) == len(first.content)
    await h.app.state.identity.keyring.rotate()
    second = await h.client.get("/api/auth/jwks")
    assert len(second.json()["keys"]) == 2
    assert int(second.headers["content-length"]) == len(second.content) > len(first.content)


async def test_jwks_refresh_failure_is_still_a_503(h, monkeypatch):
    keyring = h.app.state.identity.keyring

    async def down() -> None:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("database down"))

    monkeypatch.setattr(keyring, "_rows", down)
    h.clock.advance(REFRESH_INTERVAL)
    response = await h.client.get("/api/auth/jwks")
    assert response.status_code == 503


def _access_lines(caplog) -> list[tuple[str, str, int]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "identity.access"]
    return [(line["method"], line["path"], line["status"]) for line in lines]


@pytest.mark.parametrize("outage", [False, True], ids=["keys served", "database down"])
async def test_jwks_shortcut_answers_as_the_router_does(h, caplog, monkeypatch, outage):
    # A root_path makes the shortcut step aside, so the same app answers the same request through its router.
    routed = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app, root_path="/edge", client=PEER), base_url=BASE_URL
    )
    if outage:

        async def down() -> None:
            raise OperationalError("SELECT", {}, ConnectionRefusedError("database down"))

        monkeypatch.setattr(h.app.state.identity.keyring, "_rows", down)
        h.clock.advance(REFRESH_INTERVAL)
    try:
        with caplog.at_level(logging.INFO, logger="identity.access"):
            fast = await h.client.get("/api/auth/jwks")
            slow = await routed.get("/edge/api/auth/jwks")
    finally:
        await routed.aclose()
    status = 503 if outage else 200
    assert fast.status_code == slow.status_code == status
    assert fast.headers.multi_items() == slow.headers.multi_items()
    assert fast.content == slow.content
    assert _access_lines(caplog) == [("GET", "/api/auth/jwks", status), ("GET", "/edge/api/auth/jwks", status)]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("HEAD", "/api/auth/jwks", id="HEAD"),
        pytest.param("POST", "/api/auth/jwks", id="POST"),
        pytest.param("DELETE", "/api/auth/jwks", id="DELETE"),
        pytest.param("GET", "/api/auth/jwks/", id="trailing slash"),
        pytest.param("GET", "/api/auth/JWKS", id="other case"),
        pytest.param("GET", "/api/auth/jwks.json", id="longer"),
        pytest.param("GET", "/jwks", id="outside /api/auth"),
    ],
)
async def test_only_get_of_the_exact_jwks_path_takes_the_shortcut(h, caplog, method, path):
    with caplog.at_level(logging.INFO, logger="identity.access"):
        response = await h.client.request(method, path)
    assert response.status_code == 404
    assert response.content == b""
    assert _access_lines(caplog) == [(method, path, 404)]
