"""Sessions by cookie and by bearer token (reference 2.3, 2.5, 2.6, 2.11)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import pytest
from sqlalchemy import select

from identity.models import sessions as sessions_table
from identity.models import users as users_table
from tests.identity.conftest import SECRET, fast_hasher

pytestmark = pytest.mark.anyio

DAY = 24 * 3600
SESSION_COOKIE = "better-auth.session_token"


def signed(token: str, secret: str = SECRET) -> str:
    mac = hmac.new(secret.encode(), token.encode(), hashlib.sha256).digest()
    return f"{token}.{base64.b64encode(mac).decode()}"


def cookie_header(token: str, name: str = SESSION_COOKIE) -> dict[str, str]:
    # Origin included: a browser sends it with cookies on POST; GETs ignore it.
    return {"cookie": f"{name}={quote(signed(token), safe='')}", "origin": "http://127.0.0.1:8000"}


def set_cookies(response) -> list[str]:
    return response.headers.get_list("set-cookie")


CLEARING = [
    "better-auth.session_token=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
    "better-auth.session_data=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
    "better-auth.dont_remember=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
]


async def test_sign_up_response_cookie_and_headers(h):
    response = await h.sign_up(email="Alice@Example.com")
    body = response.json()
    token = body["token"]
    assert len(token) == 32 and token.isalnum()
    user = body["user"]
    assert list(user) == ["name", "email", "emailVerified", "image", "createdAt", "updatedAt", "id"]
    assert user["email"] == "alice@example.com"
    assert user["emailVerified"] is False and user["image"] is None
    assert len(user["id"]) == 32 and user["id"].isalnum()
    assert user["createdAt"] == "2026-11-26T12:57:25.000Z"
    assert set_cookies(response) == [
        f"{SESSION_COOKIE}={quote(signed(token), safe='')}; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax"
    ]
    assert response.headers["set-auth-token"] == signed(token)
    assert response.headers["access-control-expose-headers"] == "set-auth-token"


async def test_sign_up_ignores_unknown_keys_and_keeps_empty_name(h):
    response = await h.client.post(
        "/api/auth/sign-up/email",
        json={"name": "", "email": "eve@example.com", "password": "12345678", "emailVerified": True, "role": "admin"},
    )
    assert response.status_code == 200
    assert response.json()["user"]["emailVerified"] is False
    assert response.json()["user"]["name"] == ""


async def test_sign_in_shapes_and_callback(h):
    await h.sign_up()
    response = await h.client.post(
        "/api/auth/sign-in/email", json={"email": "ALICE@example.com", "password": "correct horse"}
    )
    assert response.status_code == 200
    assert list(response.json()) == ["redirect", "token", "user"]
    assert response.json()["redirect"] is False
    assert "location" not in response.headers
    response = await h.client.post(
        "/api/auth/sign-in/email",
        json={"email": "alice@example.com", "password": "correct horse", "callbackURL": "/dash"},
    )
    assert response.status_code == 200
    assert list(response.json()) == ["redirect", "token", "url", "user"]
    assert response.json()["redirect"] is True and response.json()["url"] == "/dash"
    assert response.headers["location"] == "/dash"


@pytest.mark.parametrize(
    "callback",
    [
        pytest.param("http://127.0.0.1:8000/\u7528", id="non-ASCII path (not latin-1)"),
        pytest.param("http://127.0.0.1:8000/caf\u00e9", id="non-ASCII path (latin-1)"),
        pytest.param("http://127.0.0.1:8000/x\r\nSet-Cookie: evil=1", id="CRLF header injection"),
        pytest.param("http://127.0.0.1:8000/x\n", id="trailing newline"),
        pytest.param("http://127.0.0.1:8000/a\tb", id="tab (urlsplit strips it)"),
        pytest.param("http://127.0.0.1:8000/a b", id="space"),
        pytest.param("http://127.0.0.1:8000/\x00", id="NUL"),
        pytest.param("http://127.0.0.1:8000/\x7f", id="DEL"),
        pytest.param("http://127.0.0.1:8000/\x85", id="C1 control"),
        pytest.param("/dash\n", id="relative, trailing newline"),
        pytest.param("/dash\r\nX: y", id="relative, CRLF"),
    ],
)
async def test_callback_url_that_no_location_header_can_carry(h, callback):
    """The callbackURL becomes the Location header. Non-ASCII (a 500: headers are latin-1) or a control (CR/LF:
    uvicorn drops the connection; urlsplit strips tabs and newlines, so the origin check passed) is refused as an
    untrusted callbackURL before any session exists. Clients percent-encode, as URL.href does."""
    await h.sign_up()
    body = {"email": "alice@example.com", "password": "correct horse", "callbackURL": callback}
    response = await h.client.post("/api/auth/sign-in/email", json=body)
    assert response.status_code == 403
    assert response.json() == {"message": "Invalid callbackURL", "code": "INVALID_CALLBACK_URL"}
    assert "set-cookie" not in response.headers and "location" not in response.headers
    async with h.app.state.identity.store._engine.connect() as conn:
        assert len((await conn.execute(select(sessions_table))).all()) == 1  # the sign-up's only
    percent_encoded = await h.client.post(
        "/api/auth/sign-in/email", json={**body, "callbackURL": "http://127.0.0.1:8000/%E7%94%A8?q=%0D%0A"}
    )
    assert percent_encoded.status_code == 200
    assert percent_encoded.headers["location"] == "http://127.0.0.1:8000/%E7%94%A8?q=%0D%0A"


async def test_form_bodies(h):
    form = {"name": "Form", "email": "form@example.com", "password": "form password", "rememberMe": "false"}
    response = await h.client.post("/api/auth/sign-up/email", data=form)
    assert response.status_code == 200
    assert "better-auth.dont_remember=" in " ".join(set_cookies(response))
    response = await h.client.post(
        "/api/auth/sign-in/email", data={"email": "form@example.com", "password": "form password"}
    )
    assert response.status_code == 200


async def test_remember_me_false(h):
    await h.sign_up()
    response = await h.client.post(
        "/api/auth/sign-in/email", json={"email": "alice@example.com", "password": "correct horse", "rememberMe": False}
    )
    token = response.json()["token"]
    cookies = set_cookies(response)
    assert cookies[0] == f"{SESSION_COOKIE}={quote(signed(token), safe='')}; Path=/; HttpOnly; SameSite=Lax"
    assert cookies[1] == f"better-auth.dont_remember={quote(signed('true'), safe='')}; Path=/; HttpOnly; SameSite=Lax"
    session = (await h.client.get("/api/auth/get-session", headers={"authorization": f"Bearer {token}"})).json()
    assert session["session"]["expiresAt"] == "2026-11-27T12:57:25.000Z"  # one day, not seven
    h.clock.advance(DAY + 1)
    assert (await h.client.get("/api/auth/get-session", headers={"authorization": f"Bearer {token}"})).json() is None


async def test_get_session_by_cookie(h):
    token = (await h.sign_up()).json()["token"]
    response = await h.client.get("/api/auth/get-session", headers=cookie_header(token))
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["session", "user"]
    assert list(body["session"]) == [
        "expiresAt",
        "token",
        "createdAt",
        "updatedAt",
        "ipAddress",
        "userAgent",
        "userId",
        "id",
    ]
    assert body["session"]["token"] == token
    assert body["session"]["ipAddress"] == "203.0.113.5"
    assert body["session"]["userId"] == body["user"]["id"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["access-control-expose-headers"] == "set-auth-jwt"
    assert response.headers["set-auth-jwt"].count(".") == 2
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("headers", "clears"),
    [
        pytest.param({}, False, id="nothing"),
        pytest.param({"cookie": f"{SESSION_COOKIE}=abc.def"}, False, id="cookie with bad signature"),
        pytest.param(
            {"cookie": f"{SESSION_COOKIE}={quote(signed('x' * 32), safe='')}"}, True, id="signed unknown token"
        ),
        pytest.param({"authorization": "Bearer " + signed("y" * 32)}, True, id="bearer signed unknown token"),
        pytest.param({"authorization": "Bearer garbage"}, True, id="bearer garbage without dot"),
        pytest.param({"authorization": "Bearer bad.signature"}, False, id="bearer bad signature"),
        pytest.param({"authorization": "Basic dXNlcjpwdw=="}, False, id="basic auth"),
    ],
)
async def test_no_session(h, headers, clears):
    response = await h.client.get("/api/auth/get-session", headers=headers)
    assert response.status_code == 200
    assert response.text == "null"
    assert set_cookies(response) == (CLEARING if clears else [])
    response = await h.client.get("/api/auth/token", headers=headers)
    assert response.status_code == 401
    assert set_cookies(response) == (CLEARING if clears else [])


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda t: t, id="raw token"),
        pytest.param(lambda t: signed(t), id="signed"),
        pytest.param(lambda t: quote(signed(t), safe=""), id="signed url-encoded"),
    ],
)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_bearer_forms(h, form, scheme):
    token = (await h.sign_up()).json()["token"]
    response = await h.client.get("/api/auth/token", headers={"authorization": f"{scheme} {form(token)}"})
    assert response.status_code == 200
    assert set(response.json()) == {"token"}


async def test_jwt_is_not_a_bearer_session(h):
    token = (await h.sign_up()).json()["token"]
    jwt = (await h.client.get("/api/auth/token", headers={"authorization": f"Bearer {token}"})).json()["token"]
    response = await h.client.get("/api/auth/token", headers={"authorization": f"Bearer {jwt}"})
    assert response.status_code == 401


async def test_bearer_wins_over_cookie(h):
    alice = (await h.sign_up()).json()["token"]
    bob = (await h.sign_up(email="bob@example.com")).json()["token"]
    headers = {**cookie_header(alice), "authorization": f"Bearer {bob}"}
    body = (await h.client.get("/api/auth/get-session", headers=headers)).json()
    assert body["user"]["email"] == "bob@example.com"


async def test_sign_out_ends_session(h):
    token = (await h.sign_up()).json()["token"]
    response = await h.client.post("/api/auth/sign-out", headers=cookie_header(token))
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert set_cookies(response) == CLEARING
    assert (await h.client.get("/api/auth/get-session", headers=cookie_header(token))).text == "null"


async def test_sign_out_without_session(h):
    response = await h.client.post("/api/auth/sign-out")
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert set_cookies(response) == CLEARING


async def test_sliding_refresh(h):
    token = (await h.sign_up()).json()["token"]
    h.clock.advance(DAY - 10)  # not yet due
    response = await h.client.get("/api/auth/get-session", headers=cookie_header(token))
    assert "set-cookie" not in response.headers
    assert response.json()["session"]["expiresAt"] == "2026-12-03T12:57:25.000Z"
    h.clock.advance(20)  # updateAge passed: expiry slides and the cookie is re-set
    response = await h.client.get("/api/auth/get-session", headers=cookie_header(token))
    assert response.json()["session"]["expiresAt"] == "2026-12-04T12:57:35.000Z"
    assert set_cookies(response) == [
        f"{SESSION_COOKIE}={quote(signed(token), safe='')}; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax"
    ]
    assert response.headers["set-auth-token"] == signed(token)
    assert response.headers["access-control-expose-headers"] == "set-auth-token, set-auth-jwt"


async def test_disable_refresh_query(h):
    token = (await h.sign_up()).json()["token"]
    h.clock.advance(DAY + 10)
    response = await h.client.get("/api/auth/get-session?disableRefresh=true", headers=cookie_header(token))
    assert response.json()["session"]["expiresAt"] == "2026-12-03T12:57:25.000Z"
    assert "set-cookie" not in response.headers


async def test_session_expires_after_seven_days(h):
    token = (await h.sign_up()).json()["token"]
    h.clock.advance(7 * DAY)
    response = await h.client.get("/api/auth/get-session", headers=cookie_header(token))
    assert response.text == "null"
    assert set_cookies(response) == CLEARING
    assert (await h.client.get("/api/auth/token", headers=cookie_header(token))).status_code == 401


async def test_database_stores_only_token_hashes(h):
    token = (await h.sign_up()).json()["token"]
    engine = h.app.state.identity.store._engine
    async with engine.connect() as conn:
        row = (await conn.execute(select(sessions_table))).one()
        user = (await conn.execute(select(users_table))).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(tuple(row))
    assert user.password_hash.startswith("$argon2id$")
    assert "correct horse" not in user.password_hash


async def test_https_base_url_uses_secure_prefix(make_harness):
    h = await make_harness(IDENTITY_BASE_URL="https://auth.example.test")
    response = await h.sign_up()
    token = response.json()["token"]
    assert set_cookies(response) == [
        f"__Secure-{SESSION_COOKIE}={quote(signed(token), safe='')}; "
        "Max-Age=604800; Path=/; HttpOnly; SameSite=Lax; Secure"
    ]
    good = await h.client.get("/api/auth/token", headers=cookie_header(token, f"__Secure-{SESSION_COOKIE}"))
    assert good.status_code == 200
    unprefixed = await h.client.get("/api/auth/token", headers=cookie_header(token))
    assert unprefixed.status_code == 401


async def test_cookie_signed_with_another_secret_is_ignored(h):
    token = (await h.sign_up()).json()["token"]
    forged = quote(signed(token, "another-secret-another-secret-another"), safe="")
    response = await h.client.get("/api/auth/token", headers={"cookie": f"{SESSION_COOKIE}={forged}"})
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


async def test_password_rehashed_on_login_when_parameters_change(make_harness):
    weak = await make_harness()
    await weak.sign_up()
    stronger = fast_hasher().__class__(time_cost=2, memory_cost=16, parallelism=1)
    h = await make_harness(hasher=stronger)
    engine = h.app.state.identity.store._engine
    async with engine.connect() as conn:
        before = (await conn.execute(select(users_table.c.password_hash))).scalar_one()
    assert "t=1" in before
    await h.token_of()
    async with engine.connect() as conn:
        after = (await conn.execute(select(users_table.c.password_hash))).scalar_one()
    assert "t=2" in after and "m=16" in after
    await h.token_of()  # the new hash verifies


async def test_unknown_email_costs_one_hash(h, monkeypatch):
    passwords = h.app.state.identity.passwords
    calls = []
    original = passwords.hash

    async def counting(password):
        calls.append(password)
        return await original(password)

    monkeypatch.setattr(passwords, "hash", counting)
    response = await h.client.post(
        "/api/auth/sign-in/email", json={"email": "ghost@example.com", "password": "p4ssword!"}
    )
    assert response.status_code == 401
    assert calls == ["p4ssword!"]
