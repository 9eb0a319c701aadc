"""Origin / CSRF checks, row by row from reference 2.9, plus the pure matching rules."""

from __future__ import annotations

import pytest

from identity.origin import is_trusted
from tests.identity.test_sessions import cookie_header, signed

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8000"
FOREIGN = "https://evil.example"
SIGN_IN_BODY = {"email": "alice@example.com", "password": "correct horse"}
MISSING = {"message": "Missing or null Origin", "code": "MISSING_OR_NULL_ORIGIN"}
INVALID = {"message": "Invalid origin", "code": "INVALID_ORIGIN"}
NAVIGATION = {
    "message": "Cross-site navigation login blocked. This request appears to be a CSRF attack.",
    "code": "CROSS_SITE_NAVIGATION_LOGIN_BLOCKED",
}


@pytest.mark.parametrize("path", ["/api/auth/sign-in/email", "/api/auth/sign-up/email"])
@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        pytest.param({}, 200, None, id="curl: no origin, no cookie, no fetch metadata"),
        pytest.param({"origin": BASE}, 200, None, id="origin is the base URL"),
        pytest.param({"origin": BASE + "/"}, 200, None, id="trailing slash tolerated"),
        pytest.param({"origin": "http://localhost:8000"}, 403, INVALID, id="localhost is not 127.0.0.1"),
        pytest.param({"origin": FOREIGN}, 403, INVALID, id="foreign origin"),
        pytest.param({"referer": FOREIGN + "/page"}, 403, INVALID, id="foreign referer"),
        pytest.param({"referer": BASE + "/login"}, 200, None, id="own referer"),
        pytest.param({"origin": "null"}, 403, MISSING, id="null origin"),
        pytest.param(
            {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"},
            403,
            NAVIGATION,
            id="cross-site navigation",
        ),
        pytest.param({"sec-fetch-mode": "cors"}, 403, MISSING, id="fetch metadata without origin"),
        pytest.param(
            {"sec-fetch-mode": "cors", "sec-fetch-site": "same-origin", "origin": BASE},
            200,
            None,
            id="fetch metadata with trusted origin",
        ),
        pytest.param({"cookie": "theme=dark"}, 403, MISSING, id="any cookie and no origin"),
        pytest.param({"cookie": "theme=dark", "origin": BASE}, 200, None, id="cookie with trusted origin"),
        pytest.param({"cookie": "theme=dark", "origin": FOREIGN}, 403, INVALID, id="cookie with foreign origin"),
    ],
)
async def test_login_origin_rows(h, path, headers, status, error):
    await h.sign_up()
    body = SIGN_IN_BODY if "sign-in" in path else {"name": "B", "email": "b@example.com", "password": "12345678"}
    response = await h.client.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    if error is not None:
        assert response.json() == error


async def test_trusted_origins_setting(make_harness):
    h = await make_harness(IDENTITY_TRUSTED_ORIGINS="https://app.example.test, http://localhost:3000")
    await h.sign_up()
    for origin, status in [("https://app.example.test", 200), ("http://localhost:3000", 200), (FOREIGN, 403)]:
        response = await h.client.post("/api/auth/sign-in/email", json=SIGN_IN_BODY, headers={"origin": origin})
        assert response.status_code == status, origin


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        pytest.param({"origin": BASE}, 200, None, id="cookie and trusted origin"),
        pytest.param({}, 403, MISSING, id="cookie and no origin"),
        pytest.param({"origin": FOREIGN}, 403, INVALID, id="cookie and foreign origin"),
    ],
)
async def test_sign_out_with_cookie(h, headers, status, error):
    token = (await h.sign_up()).json()["token"]
    cookie = cookie_header(token)["cookie"]
    response = await h.client.post("/api/auth/sign-out", headers={"cookie": cookie, **headers})
    assert response.status_code == status
    if error:
        assert response.json() == error
        # Refused: the session is still alive.
        assert (await h.client.get("/api/auth/token", headers={"authorization": f"Bearer {token}"})).status_code == 200


@pytest.mark.parametrize("origin", [None, FOREIGN, "null"])
async def test_sign_out_with_bearer_is_not_origin_checked(h, origin):
    token = (await h.sign_up()).json()["token"]
    headers = {"authorization": f"Bearer {signed(token)}"}
    if origin:
        headers["origin"] = origin
    response = await h.client.post("/api/auth/sign-out", headers=headers)
    assert response.status_code == 200
    assert (await h.client.get("/api/auth/token", headers={"authorization": f"Bearer {token}"})).status_code == 401


@pytest.mark.parametrize("path", ["/api/auth/token", "/api/auth/get-session", "/api/auth/jwks"])
async def test_gets_are_never_origin_checked(h, path):
    token = (await h.sign_up()).json()["token"]
    headers = {**cookie_header(token), "origin": FOREIGN}
    assert (await h.client.get(path, headers=headers)).status_code == 200


@pytest.mark.parametrize("path", ["/api/auth/revoke-sessions", "/api/auth/revoke-other-sessions"])
async def test_session_management_with_cookie_needs_trusted_origin(h, path):
    token = (await h.sign_up()).json()["token"]
    cookie = cookie_header(token)["cookie"]
    response = await h.client.post(path, headers={"cookie": cookie, "origin": FOREIGN})
    assert response.json() == INVALID
    assert (await h.client.post(path, headers={"cookie": cookie, "origin": BASE})).status_code == 200


@pytest.mark.parametrize(
    ("url", "relative", "expected"),
    [
        pytest.param("http://127.0.0.1:8000", False, True, id="base"),
        pytest.param("HTTP://127.0.0.1:8000/x?y", False, True, id="case and path ignored"),
        pytest.param("http://127.0.0.1:8001", False, False, id="other port"),
        pytest.param("https://127.0.0.1:8000", False, False, id="other scheme"),
        pytest.param("/dashboard?tab=1", True, True, id="relative path"),
        pytest.param("/dashboard", False, False, id="relative not allowed for origins"),
        pytest.param("/dashboard\n", True, False, id="relative path, trailing newline"),
        pytest.param("/dashboard?tab=1\n", True, False, id="relative query, trailing newline"),
        pytest.param("//evil.example/x", True, False, id="protocol-relative"),
        pytest.param("/\\evil.example", True, False, id="backslash"),
        pytest.param("/%2fevil.example", True, False, id="encoded slash"),
        pytest.param("javascript:alert(1)", True, False, id="javascript scheme"),
        pytest.param("not a url", True, False, id="garbage"),
        pytest.param("http://[::1", True, False, id="broken ipv6"),
    ],
)
def test_is_trusted(url, relative, expected):
    assert is_trusted(url, ("http://127.0.0.1:8000",), allow_relative=relative) is expected
