"""The revocation feed gateways poll: GET /api/auth/revocations?since=<cursor>."""

from __future__ import annotations

import base64
import json

import pytest

from identity.__main__ import _revoke_user
from identity.keyring import RETIRE_MARGIN
from tests.identity.test_sessions import cookie_header

pytestmark = pytest.mark.anyio

FEED = "/api/auth/revocations"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def sid_of(h, token: str) -> str:
    jwt = (await h.client.get("/api/auth/token", headers=bearer(token))).json()["token"]
    payload = jwt.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sid"])


async def feed(h, since: str | None = None) -> dict:
    response = await h.client.get(FEED, params={"since": since} if since is not None else None)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def test_empty_feed(h):
    assert await feed(h) == {"revoked": [], "cursor": "0"}


async def test_sign_out_is_published_until_its_jwts_expire(h):
    token = (await h.sign_up()).json()["token"]
    sid = await sid_of(h, token)
    await h.client.post("/api/auth/sign-out", headers=cookie_header(token))
    body = await feed(h)
    assert body["revoked"] == [{"sid": sid, "exp": int(h.clock()) + 900 + RETIRE_MARGIN}]
    h.clock.advance(900 + RETIRE_MARGIN - 1)
    assert [e["sid"] for e in (await feed(h))["revoked"]] == [sid]
    h.clock.advance(1)
    assert (await feed(h))["revoked"] == []


async def test_cursor_returns_only_newer_entries(h):
    first = (await h.sign_up()).json()["token"]
    second = await h.token_of()
    first_sid, second_sid = await sid_of(h, first), await sid_of(h, second)
    await h.client.post("/api/auth/sign-out", headers=bearer(first))
    cursor = (await feed(h))["cursor"]
    # Recent entries are re-sent for a few seconds (commit-order safety on PostgreSQL); then only newer ones.
    assert [e["sid"] for e in (await feed(h, cursor))["revoked"]] == [first_sid]
    h.clock.advance(11)
    polled = await feed(h, cursor)
    assert polled == {"revoked": [], "cursor": cursor}
    await h.client.post("/api/auth/sign-out", headers=bearer(second))
    polled = await feed(h, cursor)
    assert [e["sid"] for e in polled["revoked"]] == [second_sid]
    assert polled["cursor"] != cursor


@pytest.mark.parametrize(
    ("path", "body", "revoked"),
    [
        pytest.param("/api/auth/revoke-sessions", None, ["a", "b"], id="revoke-sessions"),
        pytest.param("/api/auth/revoke-other-sessions", None, ["b"], id="revoke-other-sessions"),
        pytest.param("/api/auth/revoke-session", "b", ["b"], id="revoke-session"),
        pytest.param(
            "/api/auth/change-password",
            {"currentPassword": "correct horse", "newPassword": "battery staple", "revokeOtherSessions": True},
            ["a", "b"],
            id="change-password revoking sessions",
        ),
    ],
)
async def test_every_early_end_is_published(h, path, body, revoked):
    tokens = {"a": (await h.sign_up()).json()["token"], "b": await h.token_of()}
    sids = {name: await sid_of(h, token) for name, token in tokens.items()}
    if body == "b":
        body = {"token": tokens["b"]}
    response = await h.client.post(path, json=body, headers=bearer(tokens["a"]))
    assert response.status_code == 200, response.text
    assert sorted(e["sid"] for e in (await feed(h))["revoked"]) == sorted(sids[name] for name in revoked)


async def test_natural_expiry_is_not_published(h):
    token = (await h.sign_up()).json()["token"]
    h.clock.advance(8 * 24 * 3600)
    assert (await h.client.get("/api/auth/get-session", headers=bearer(token))).text == "null"
    assert (await feed(h))["revoked"] == []


async def test_revoke_user_command(h):
    first = (await h.sign_up()).json()["token"]
    second = await h.token_of()
    sids = {await sid_of(h, first), await sid_of(h, second)}
    bob = (await h.sign_up(email="bob@example.com")).json()["token"]
    service = h.app.state.identity
    # The CLI's own function, on the same database (it reads the real clock, so compare ids only).
    assert await _revoke_user(_config_with_url(h, service), "ALICE@example.com") == 0
    assert {e["sid"] for e in (await feed(h))["revoked"]} == sids
    assert (await h.client.get("/api/auth/token", headers=bearer(first))).status_code == 401
    assert (await h.client.get("/api/auth/token", headers=bearer(bob))).status_code == 200
    assert await _revoke_user(_config_with_url(h, service), "nobody@example.com") == 1


def _config_with_url(h, service):
    import dataclasses

    url = service.store._engine.url.render_as_string(hide_password=False)
    return dataclasses.replace(h.config, database_url=url)


@pytest.mark.parametrize("since", ["abc", "-1", "1" * 30, "1.5"])
async def test_invalid_cursor(h, since):
    response = await h.client.get(FEED, params={"since": since})
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid cursor", "code": "INVALID_CURSOR"}
