"""The short-lived session copy behind /token, /get-session and the pages (identity/sessioncache.py).

The tests' clock is injected and only moves when a test advances it, so "within the TTL" and "after the TTL"
are exact here.
"""

from __future__ import annotations

import pytest
from sqlalchemy import delete, update

from identity.config import ConfigError
from identity.models import sessions
from identity.sessioncache import SessionCache
from identity.store import Session, User, token_hash
from tests.identity.conftest import Clock, make_config
from tests.identity.test_revocations import bearer, feed, sid_of
from tests.identity.test_sessions import cookie_header

pytestmark = pytest.mark.anyio

TOKEN = "/api/auth/token"
GET_SESSION = "/api/auth/get-session"
TTL = 1.0  # the default IDENTITY_SESSION_CACHE_MS, in seconds


async def _delete_behind_its_back(h, token: str) -> None:
    """What another replica's revocation looks like from here: the row is gone, nothing told this process."""
    async with h.app.state.identity.store._engine.begin() as conn:
        await conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash(token)))


async def test_repeats_within_the_ttl_skip_the_database(h):
    token = (await h.sign_up()).json()["token"]
    cache = h.app.state.identity.store.session_cache
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 200
    hits = cache.hits
    for path in (TOKEN, GET_SESSION, TOKEN):
        assert (await h.client.get(path, headers=bearer(token))).status_code == 200
    assert cache.hits == hits + 3


@pytest.mark.parametrize("path", [TOKEN, GET_SESSION])
async def test_a_session_ended_elsewhere_gets_nothing_after_the_ttl(h, path):
    token = (await h.sign_up()).json()["token"]
    assert (await h.client.get(path, headers=bearer(token))).status_code == 200
    await _delete_behind_its_back(h, token)
    h.clock.advance(TTL - 0.001)
    assert (await h.client.get(path, headers=bearer(token))).status_code == 200  # the bounded window
    h.clock.advance(0.001)
    response = await h.client.get(path, headers=bearer(token))
    if path == TOKEN:
        assert response.status_code == 401
    else:
        assert response.text == "null"


async def test_zero_turns_the_cache_off(make_harness):
    h = await make_harness(IDENTITY_SESSION_CACHE_MS="0")
    token = (await h.sign_up()).json()["token"]
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 200
    await _delete_behind_its_back(h, token)
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 401
    assert len(h.app.state.identity.store.session_cache) == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/auth/sign-out", None, id="sign-out"),
        pytest.param("/api/auth/revoke-sessions", {}, id="revoke-sessions"),
        pytest.param("/api/auth/revoke-session", "own", id="revoke-session"),
        pytest.param(
            "/api/auth/change-password",
            {"currentPassword": "correct horse", "newPassword": "battery staple", "revokeOtherSessions": True},
            id="change-password revoking sessions",
        ),
    ],
)
async def test_ending_here_is_seen_at_once(h, path, body):
    token = (await h.sign_up()).json()["token"]
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 200  # cached now
    if body == "own":
        body = {"token": token}
    headers = cookie_header(token) if body is None else bearer(token)
    assert (await h.client.post(path, json=body, headers=headers)).status_code == 200
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 401
    assert (await h.client.get(GET_SESSION, headers=bearer(token))).text == "null"


async def test_password_change_drops_the_users_copies(h):
    token = (await h.sign_up()).json()["token"]
    before = (await h.client.get(GET_SESSION, headers=bearer(token))).json()["user"]["updatedAt"]
    h.clock.advance(0.5)
    body = {"currentPassword": "correct horse", "newPassword": "battery staple"}
    assert (await h.client.post("/api/auth/change-password", json=body, headers=bearer(token))).status_code == 200
    after = (await h.client.get(GET_SESSION, headers=bearer(token))).json()["user"]["updatedAt"]
    assert after != before


async def test_another_replica_serves_a_signed_out_session_only_within_the_ttl(make_harness):
    here = await make_harness()
    there = await make_harness()  # same database and clock: a second replica
    token = (await here.sign_up()).json()["token"]
    sid = await sid_of(there, token)  # "there" holds a copy now
    assert (await here.client.post("/api/auth/sign-out", headers=cookie_header(token))).status_code == 200
    # Within the TTL "there" may still mint a JWT, but its sid is in the feed every gateway polls.
    assert await sid_of(there, token) == sid
    assert sid in {e["sid"] for e in (await feed(here))["revoked"]}
    here.clock.advance(TTL)
    assert (await there.client.get(TOKEN, headers=bearer(token))).status_code == 401


async def _slide_behind_its_back(h, token: str, expires_at_ms: int) -> None:
    """Another replica's sliding refresh: the row's expiry moved, this process's copy did not."""
    async with h.app.state.identity.store._engine.begin() as conn:
        await conn.execute(
            update(sessions).where(sessions.c.token_hash == token_hash(token)).values(expires_at=expires_at_ms)
        )


async def test_an_expired_copy_does_not_delete_a_row_another_replica_extended(h):
    token = (await h.sign_up()).json()["token"]
    h.app.state.identity.store.session_cache.ttl = 30 * 24 * 3600  # keep the copy across the days skipped
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 200
    await _slide_behind_its_back(h, token, int((h.clock() + 20 * 24 * 3600) * 1000))
    h.clock.advance(8 * 24 * 3600)  # the copy's expiry passed, the row's did not
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 200
    h.clock.advance(13 * 24 * 3600)  # now the row's too
    assert (await h.client.get(TOKEN, headers=bearer(token))).status_code == 401
    assert await h.app.state.identity.store.find_session(token) is None


async def test_a_refresh_due_copy_is_read_again_before_sliding(h):
    token = (await h.sign_up()).json()["token"]
    h.app.state.identity.store.session_cache.ttl = 30 * 24 * 3600
    assert (await h.client.get(GET_SESSION, headers=bearer(token))).status_code == 200
    h.clock.advance(24 * 3600 + 1)  # updateAge passed for the copy
    await _slide_behind_its_back(h, token, int((h.clock() + 7 * 24 * 3600) * 1000))  # another replica slid it
    response = await h.client.get(GET_SESSION, headers=bearer(token))
    assert "set-auth-token" not in response.headers  # the row is fresh: no second write, no re-issued cookie
    h.clock.advance(24 * 3600 + 1)  # now due for real: the slide happens and is seen by the next call
    slid = await h.client.get(GET_SESSION, headers=bearer(token))
    assert "set-auth-token" in slid.headers
    again = await h.client.get(GET_SESSION, headers=bearer(token))
    assert "set-auth-token" not in again.headers
    assert again.json()["session"]["expiresAt"] == slid.json()["session"]["expiresAt"]


def _pair(sid: str, user_id: str = "u1") -> tuple[Session, User]:
    return (
        Session(sid, user_id, 10**13, 0, 0, "127.0.0.1", "ua", True),
        User(user_id, "n", "e@example.com", False, None, 0, 0, "hash"),
    )


def test_a_lookup_that_raced_an_end_is_not_stored():
    cache = SessionCache(TTL, Clock())
    started = cache.generation
    cache.drop_sessions(["s1"])  # the end commits while the lookup waits on the database
    cache.put("k1", *_pair("s1"), started)
    assert cache.get("k1") is None


def test_bounded_size_drops_expired_entries_first():
    clock = Clock()
    cache = SessionCache(TTL, clock, max_entries=2)
    cache.put("k1", *_pair("s1"), cache.generation)
    clock.advance(TTL)
    cache.put("k2", *_pair("s2"), cache.generation)
    cache.put("k3", *_pair("s3"), cache.generation)  # full: k1 (expired) goes
    assert len(cache) == 2
    assert cache.get("k2") is not None
    assert cache.get("k3") is not None
    cache.put("k4", *_pair("s4"), cache.generation)  # full of live entries: start over
    assert len(cache) == 1
    assert cache.get("k4") is not None


def test_drop_user_drops_only_that_users_sessions():
    cache = SessionCache(TTL, Clock())
    cache.put("k1", *_pair("s1", "alice"), cache.generation)
    cache.put("k2", *_pair("s2", "bob"), cache.generation)
    cache.drop_user("alice")
    assert cache.get("k1") is None
    assert cache.get("k2") is not None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, 1000, id="default"),
        pytest.param("0", 0, id="off"),
        pytest.param("5000", 5000, id="upper bound"),
    ],
)
def test_config_accepts(raw, expected):
    env = {} if raw is None else {"IDENTITY_SESSION_CACHE_MS": raw}
    assert make_config(**env).session_cache_ms == expected


@pytest.mark.parametrize("raw", ["5001", "-1", "1.5", "soon"])
def test_config_refuses(raw):
    with pytest.raises(ConfigError, match="IDENTITY_SESSION_CACHE_MS"):
        make_config(IDENTITY_SESSION_CACHE_MS=raw)
