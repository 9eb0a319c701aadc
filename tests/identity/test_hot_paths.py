"""The per-request shortcuts of /token and /jwks: a JWT signed once per second per session, JWKS bytes and
headers built once per key set. Neither may change what a client receives."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from identity.keyring import REFRESH_INTERVAL
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
