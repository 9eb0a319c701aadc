"""list-sessions, revoke-session(s), revoke-other-sessions, change-password (Better Auth's shapes)."""

from __future__ import annotations

import pytest

from tests.identity.test_sessions import cookie_header

pytestmark = pytest.mark.anyio

DAY = 24 * 3600


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def alive(h, token: str) -> bool:
    return (await h.client.get("/api/auth/token", headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/auth/list-sessions"),
        ("POST", "/api/auth/revoke-session"),
        ("POST", "/api/auth/revoke-sessions"),
        ("POST", "/api/auth/revoke-other-sessions"),
        ("POST", "/api/auth/change-password"),
    ],
)
async def test_require_a_session(h, method, path):
    kwargs = {"json": {"token": "x", "newPassword": "n" * 8, "currentPassword": "c" * 8}} if method == "POST" else {}
    response = await h.client.request(method, path, **kwargs)
    assert response.status_code == 401
    assert response.json() == {"message": "Unauthorized", "code": "UNAUTHORIZED"}


async def test_list_sessions(h):
    first = (await h.sign_up()).json()["token"]
    second = await h.token_of()
    await h.sign_up(email="bob@example.com")
    response = await h.client.get("/api/auth/list-sessions", headers=bearer(second))
    assert response.status_code == 200
    listed = response.json()
    assert len(listed) == 2
    assert all(
        list(s) == ["expiresAt", "token", "createdAt", "updatedAt", "ipAddress", "userAgent", "userId", "id"]
        for s in listed
    )
    mine = [s for s in listed if s["token"] == second]
    assert len(mine) == 1
    other = next(s for s in listed if s["token"] != second)
    # The other session's token is not known to the server: its handle is the session id.
    assert other["token"] == other["id"] and first not in str(listed)


async def test_list_sessions_needs_a_fresh_session(h):
    token = (await h.sign_up()).json()["token"]
    h.clock.advance(DAY)
    response = await h.client.get("/api/auth/list-sessions", headers=bearer(token))
    assert response.status_code == 403
    assert response.json() == {"message": "Session is not fresh", "code": "SESSION_NOT_FRESH"}


@pytest.mark.parametrize("handle", ["token", "id"])
async def test_revoke_session(h, handle):
    current = (await h.sign_up()).json()["token"]
    target = await h.token_of()
    listed = (await h.client.get("/api/auth/list-sessions", headers=bearer(current))).json()
    target_id = next(s["id"] for s in listed if s["token"] != current)
    value = target if handle == "token" else target_id
    response = await h.client.post("/api/auth/revoke-session", json={"token": value}, headers=bearer(current))
    assert response.status_code == 200
    assert response.json() == {"status": True}
    assert not await alive(h, target)
    assert await alive(h, current)


async def test_revoke_session_of_another_user_is_a_no_op(h):
    alice = (await h.sign_up()).json()["token"]
    bob = (await h.sign_up(email="bob@example.com")).json()["token"]
    response = await h.client.post("/api/auth/revoke-session", json={"token": bob}, headers=bearer(alice))
    assert response.json() == {"status": True}
    assert await alive(h, bob)


async def test_revoke_session_validates_body(h):
    token = (await h.sign_up()).json()["token"]
    response = await h.client.post("/api/auth/revoke-session", json={}, headers=bearer(token))
    assert response.status_code == 400
    assert response.json() == {
        "message": "[body.token] Invalid input: expected string, received undefined",
        "code": "VALIDATION_ERROR",
    }


async def test_revoke_sessions(h):
    first = (await h.sign_up()).json()["token"]
    second = await h.token_of()
    bob = (await h.sign_up(email="bob@example.com")).json()["token"]
    response = await h.client.post("/api/auth/revoke-sessions", headers=bearer(first))
    assert response.json() == {"status": True}
    assert not await alive(h, first) and not await alive(h, second)
    assert await alive(h, bob)


async def test_revoke_other_sessions(h):
    first = (await h.sign_up()).json()["token"]
    second = await h.token_of()
    third = await h.token_of()
    response = await h.client.post("/api/auth/revoke-other-sessions", headers=cookie_header(second))
    assert response.json() == {"status": True}
    assert await alive(h, second)
    assert not await alive(h, first) and not await alive(h, third)


async def test_change_password_keeps_sessions_by_default(h):
    first = (await h.sign_up()).json()["token"]
    other = await h.token_of()
    body = {"currentPassword": "correct horse", "newPassword": "battery staple"}
    response = await h.client.post("/api/auth/change-password", json=body, headers=bearer(first))
    assert response.status_code == 200
    assert response.json()["token"] is None
    assert response.json()["user"]["email"] == "alice@example.com"
    assert await alive(h, other)
    await h.token_of(password="battery staple")
    old = await h.client.post(
        "/api/auth/sign-in/email", json={"email": "alice@example.com", "password": "correct horse"}
    )
    assert old.status_code == 401


async def test_change_password_revoking_other_sessions(h):
    first = (await h.sign_up()).json()["token"]
    other = await h.token_of()
    body = {"currentPassword": "correct horse", "newPassword": "battery staple", "revokeOtherSessions": True}
    response = await h.client.post("/api/auth/change-password", json=body, headers=cookie_header(first))
    assert response.status_code == 200
    new = response.json()["token"]
    assert len(new) == 32 and new not in (first, other)
    assert response.headers["set-auth-token"].startswith(new + ".")
    assert "better-auth.session_token=" in response.headers["set-cookie"]
    assert not await alive(h, first) and not await alive(h, other)
    assert await alive(h, new)


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        pytest.param(
            {"currentPassword": "wrong password", "newPassword": "battery staple"},
            400,
            {"message": "Invalid password", "code": "INVALID_PASSWORD"},
            id="wrong current password",
        ),
        pytest.param(
            {"currentPassword": "correct horse", "newPassword": "short"},
            400,
            {"message": "Password too short", "code": "PASSWORD_TOO_SHORT"},
            id="new too short",
        ),
        pytest.param(
            {"currentPassword": "correct horse", "newPassword": "x" * 129},
            400,
            {"message": "Password too long", "code": "PASSWORD_TOO_LONG"},
            id="new too long",
        ),
        pytest.param(
            {"currentPassword": "correct horse"},
            400,
            {
                "message": "[body.newPassword] Invalid input: expected string, received undefined",
                "code": "VALIDATION_ERROR",
            },
            id="missing new password",
        ),
        pytest.param(
            {"currentPassword": "correct horse", "newPassword": "battery staple", "revokeOtherSessions": "yes"},
            400,
            {
                "message": "[body.revokeOtherSessions] Invalid input: expected boolean, received string",
                "code": "VALIDATION_ERROR",
            },
            id="revokeOtherSessions not boolean",
        ),
    ],
)
async def test_change_password_errors(h, body, status, expected):
    token = (await h.sign_up()).json()["token"]
    response = await h.client.post("/api/auth/change-password", json=body, headers=bearer(token))
    assert response.status_code == status
    assert response.json() == expected
    await h.token_of()  # the password did not change
