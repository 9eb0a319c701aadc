"""Every error row of the reference table (shared/reference/better-auth-wire.md 2.4) and the route misses (2.1)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.anyio

SIGN_UP = "/api/auth/sign-up/email"
SIGN_IN = "/api/auth/sign-in/email"
GOOD = {"name": "Alice", "email": "alice@example.com", "password": "correct horse"}


def _without(key: str) -> dict[str, object]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "message"),
    [
        pytest.param(
            SIGN_UP,
            {**GOOD, "email": "not-an-email"},
            400,
            "VALIDATION_ERROR",
            "[body.email] Invalid email address",
            id="sign-up invalid email",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "password": "1234567"},
            400,
            "PASSWORD_TOO_SHORT",
            "Password too short",
            id="sign-up password 7 chars",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "password": "x" * 129},
            400,
            "PASSWORD_TOO_LONG",
            "Password too long",
            id="sign-up password 129 chars",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "x" * 129},
            400,
            "PASSWORD_TOO_LONG",
            "Password too long",
            id="sign-in password 129 chars",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "password": ""},
            400,
            "VALIDATION_ERROR",
            "[body.password] Too small: expected string to have >=1 characters",
            id="sign-up empty password",
        ),
        pytest.param(
            SIGN_UP,
            _without("email"),
            400,
            "VALIDATION_ERROR",
            "[body.email] Invalid input: expected string, received undefined",
            id="sign-up missing email",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com"},
            400,
            "VALIDATION_ERROR",
            "[body.password] Invalid input: expected string, received undefined",
            id="sign-in missing password",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "name": 5},
            400,
            "VALIDATION_ERROR",
            "[body.name] Invalid input: expected string, received number",
            id="sign-up wrong type",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "image": None},
            400,
            "VALIDATION_ERROR",
            "[body.image] Invalid input: expected string, received null",
            id="sign-up image null",
        ),
        pytest.param(
            SIGN_UP,
            {},
            400,
            "VALIDATION_ERROR",
            "[body.name] Invalid input: expected string, received undefined; "
            "[body.email] Invalid input: expected string, received undefined; "
            "[body.password] Invalid input: expected string, received undefined",
            id="sign-up empty object",
        ),
        pytest.param(
            SIGN_UP,
            [],
            400,
            "VALIDATION_ERROR",
            "[body] Invalid input: expected object, received array; "
            "[body] Invalid input: expected record, received array",
            id="sign-up array body",
        ),
        pytest.param(
            SIGN_IN,
            [],
            400,
            "VALIDATION_ERROR",
            "[body] Invalid input: expected object, received array",
            id="sign-in array body",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@", "password": "whatever1"},
            400,
            "INVALID_EMAIL",
            "Invalid email",
            id="sign-in invalid email",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "correct horse", "rememberMe": "no"},
            400,
            "VALIDATION_ERROR",
            "[body.rememberMe] Invalid input: expected boolean, received string",
            id="sign-in rememberMe string",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "correct horse", "callbackURL": "https://evil.test/x"},
            403,
            "INVALID_CALLBACK_URL",
            "Invalid callbackURL",
            id="sign-in foreign callbackURL",
        ),
        pytest.param(
            SIGN_UP,
            {**GOOD, "email": "bob@example.com", "callbackURL": "//evil.test/x"},
            403,
            "INVALID_CALLBACK_URL",
            "Invalid callbackURL",
            id="sign-up protocol-relative callbackURL",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "correct horse", "callbackURL": {"a": 1}},
            400,
            "BAD_REQUEST",
            "Invalid callbackURL: expected a string",
            id="sign-in callbackURL object",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "wrong password"},
            401,
            "INVALID_EMAIL_OR_PASSWORD",
            "Invalid email or password",
            id="sign-in wrong password",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "nobody@example.com", "password": "correct horse"},
            401,
            "INVALID_EMAIL_OR_PASSWORD",
            "Invalid email or password",
            id="sign-in unknown user",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": "x"},
            401,
            "INVALID_EMAIL_OR_PASSWORD",
            "Invalid email or password",
            id="sign-in 1-char password",
        ),
        pytest.param(
            SIGN_IN,
            {"email": "alice@example.com", "password": ""},
            401,
            "INVALID_EMAIL_OR_PASSWORD",
            "Invalid email or password",
            id="sign-in empty password",
        ),
    ],
)
async def test_error_rows(h, path, body, status, code, message):
    await h.sign_up()
    response = await h.client.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    # Key order is part of the wire format: message, then code.
    assert response.text == json.dumps({"message": message, "code": code}, separators=(",", ":"))
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("alice@example.com\n", id="trailing newline"),
        pytest.param("ALICE@EXAMPLE.COM\n", id="other case, trailing newline"),
        pytest.param("alice@example.com\r\n", id="trailing CRLF"),
        pytest.param("\nalice@example.com", id="leading newline"),
        pytest.param("alice@example.com ", id="trailing space"),
        pytest.param(" alice@example.com", id="leading space"),
        pytest.param("alice@example.com\t", id="trailing tab"),
        pytest.param("ali ce@example.com", id="inner space"),
        pytest.param("alice@exam\nple.com", id="inner newline"),
        pytest.param("alice@example.com\x0b", id="vertical tab"),
        pytest.param("alice@example.com\x7f", id="DEL"),
        pytest.param("alice@example.com\x85", id="C1 next line"),
        pytest.param("alice@example.com\u00a0", id="no-break space"),
        pytest.param("alice@example.com\u2028", id="line separator"),
    ],
)
async def test_email_with_whitespace_or_controls(h, email):
    """zod's email pattern ends in ``$`` (JavaScript: end of input only). Python's ``$`` also matches before a
    final newline, which let ``"alice@example.com\n"`` sign up as a second account for Alice's mailbox."""
    await h.sign_up()
    response = await h.client.post(SIGN_UP, json={**GOOD, "email": email, "password": "attacker password"})
    assert response.status_code == 400
    assert response.json() == {"message": "[body.email] Invalid email address", "code": "VALIDATION_ERROR"}
    response = await h.client.post(SIGN_IN, json={"email": email, "password": "correct horse"})
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid email", "code": "INVALID_EMAIL"}
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@Example.COM"], ids=["same case", "other case"])
async def test_duplicate_email_any_case(h, email):
    await h.sign_up()
    response = await h.client.post(SIGN_UP, json={**GOOD, "email": email})
    assert response.status_code == 422
    assert response.json() == {
        "message": "User already exists. Use another email.",
        "code": "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL",
    }


@pytest.mark.parametrize(
    ("content", "headers", "status", "expected"),
    [
        pytest.param(
            b"",
            {},
            400,
            {
                "message": "[body] Invalid input: expected object, received undefined; "
                "[body] Invalid input: expected record, received undefined",
                "code": "VALIDATION_ERROR",
            },
            id="no body",
        ),
        pytest.param(
            b"",
            {"content-type": "application/json"},
            400,
            {
                "message": "[body] Invalid input: expected object, received undefined; "
                "[body] Invalid input: expected record, received undefined",
                "code": "VALIDATION_ERROR",
            },
            id="empty json body",
        ),
        pytest.param(
            b"{nope",
            {"content-type": "application/json"},
            400,
            {"message": "Invalid JSON in request body", "code": "BAD_REQUEST"},
            id="invalid json",
        ),
        pytest.param(
            b"hello",
            {"content-type": "text/plain"},
            415,
            {
                "message": 'Content-Type "text/plain" is not allowed. Allowed types: '
                "application/x-www-form-urlencoded, application/json",
                "code": "UNSUPPORTED_MEDIA_TYPE",
            },
            id="text/plain",
        ),
        pytest.param(
            b"{}" + b" " * 70_000,
            {"content-type": "application/json"},
            413,
            {"message": "Request body too large", "code": "PAYLOAD_TOO_LARGE"},
            id="body over 64 KiB",
        ),
    ],
)
async def test_body_errors(h, content, headers, status, expected):
    response = await h.client.post(SIGN_UP, content=content, headers=headers)
    assert response.status_code == status
    assert response.json() == expected


async def test_token_without_session(h):
    response = await h.client.get("/api/auth/token")
    assert response.status_code == 401
    assert response.text == '{"message":"Unauthorized","code":"UNAUTHORIZED"}'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/auth/sign-in/email", id="GET sign-in"),
        pytest.param("POST", "/api/auth/token", id="POST token"),
        pytest.param("POST", "/api/auth/jwks", id="POST jwks"),
        pytest.param("HEAD", "/api/auth/jwks", id="HEAD jwks"),
        pytest.param("OPTIONS", "/api/auth/sign-in/email", id="OPTIONS preflight"),
        pytest.param("PUT", "/api/auth/get-session", id="PUT get-session"),
        pytest.param("GET", "/api/auth/nothing-here", id="unknown path"),
        pytest.param("GET", "/api/auth", id="base path"),
        pytest.param("GET", "/api/auth/sign-up/email/extra", id="longer path"),
        pytest.param("GET", "/api/auth/ok/", id="trailing slash"),
    ],
)
async def test_route_misses_are_empty_404(h, method, path):
    response = await h.client.request(method, path, headers={"origin": "https://elsewhere.test"})
    assert response.status_code == 404
    assert response.content == b""
    assert "content-type" not in response.headers
    assert not any(name.startswith("access-control-") for name in response.headers)


async def test_post_get_session_is_405(h):
    response = await h.client.post("/api/auth/get-session")
    assert response.status_code == 405
    assert response.text == (
        '{"message":"POST method requires deferSessionRefresh to be enabled in session config",'
        '"code":"METHOD_NOT_ALLOWED_DEFER_SESSION_REQUIRED"}'
    )


async def test_ok(h):
    response = await h.client.get("/api/auth/ok")
    assert response.status_code == 200
    assert response.json() == {"ok": True}
