"""The revocation feed gateways poll: GET /api/auth/revocations?since=<cursor>."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import insert

from gateway.config import IssuerConfig
from gateway.revocation import RevocationFeed
from gateway.tokens import Claims
from identity import store as store_module
from identity.__main__ import _revoke_user
from identity.keyring import RETIRE_MARGIN
from identity.models import revocations
from identity.store import Session
from tests.identity.conftest import BASE_URL
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
    # The CLI's own function, on the same database and the test's clock: the sessions it ends must still be live by
    # the test's clock, whatever today's date is.
    assert await _revoke_user(_config_with_url(h, service), "ALICE@example.com", h.clock) == 0
    assert {e["sid"] for e in (await feed(h))["revoked"]} == sids
    # Another process ended them: this one may answer from its session copy for IDENTITY_SESSION_CACHE_MS more
    # (gateways refuse those JWTs by sid, now in the feed); after that the database decides.
    h.clock.advance(h.config.session_cache_ms / 1000)
    assert (await h.client.get("/api/auth/token", headers=bearer(first))).status_code == 401
    assert (await h.client.get("/api/auth/token", headers=bearer(bob))).status_code == 200
    assert await _revoke_user(_config_with_url(h, service), "nobody@example.com", h.clock) == 1


def _config_with_url(h, service):
    import dataclasses

    url = service.store._engine.url.render_as_string(hide_password=False)
    return dataclasses.replace(h.config, database_url=url)


@pytest.mark.parametrize(
    "since",
    [
        "abc",
        "-1",
        "1" * 30,
        "1.5",
        pytest.param("\u00b2", id="superscript two: isdigit, not int"),
        pytest.param("\u0663", id="arabic-indic three: isdigit and int, not a cursor"),
        pytest.param("\uff11", id="fullwidth one"),
    ],
)
async def test_invalid_cursor(h, since):
    response = await h.client.get(FEED, params={"since": since})
    assert response.status_code == 400
    assert response.json() == {"message": "Invalid cursor", "code": "INVALID_CURSOR"}


# --- paging: a burst of revocations never holds the cursor back (security review: revocation feed stall) ---------


def ended(h, name: str) -> Session:
    """A session (not necessarily in the database) to hand to ``Store.end_sessions``: it lands in the feed."""
    now_ms = int(h.clock() * 1000)
    return Session(name, "u", now_ms + 7 * 24 * 3600 * 1000, now_ms, now_ms, "", "", True)


async def insert_at(h, seq: int, sid: str) -> None:
    """A feed row with a chosen ``seq``: how a transaction that took its seq earlier but committed later looks."""
    now_ms = int(h.clock() * 1000)
    async with h.app.state.identity.store._engine.begin() as conn:
        await conn.execute(
            insert(revocations).values(seq=seq, session_id=sid, revoked_at=now_ms, expires_at=now_ms + 960_000)
        )


@pytest.mark.parametrize(
    ("page", "burst"),
    [
        pytest.param(None, store_module.FEED_PAGE + 1, id="5001 at the real page size (the review's repro)"),
        pytest.param(10, 11, id="one page and one"),
        pytest.param(10, 25, id="two pages and five"),
        pytest.param(10, 95, id="nine pages and five"),
    ],
)
async def test_a_burst_inside_the_overlap_window_does_not_stall_the_gateway(h, monkeypatch, page, burst):
    """Revocations inside the 10 s re-send window used to fill whole pages by themselves, so the cursor stopped
    and the gateway ended each poll without reaching a sign-out behind them (enforced only ~10 s later). The
    real feed and the gateway's RevocationFeed, in-process: the victim is refused on the very next poll."""
    if page is not None:
        monkeypatch.setattr(store_module, "FEED_PAGE", page)
    store = h.app.state.identity.store
    issuer = IssuerConfig(
        issuer=BASE_URL, audiences=(BASE_URL,), jwks_url=f"{BASE_URL}/jwks", revocation_url=f"{BASE_URL}{FEED}"
    )
    monotonic = {"now": 1000.0}
    gateway_feed = RevocationFeed([issuer], h.client, clock=h.clock, monotonic=lambda: monotonic["now"])
    await gateway_feed.poll(BASE_URL)
    await store.end_sessions([ended(h, f"burst-{index}") for index in range(burst)])
    await store.end_sessions([ended(h, "victim")])
    victim = Claims(sub="v", iss=BASE_URL, exp=int(h.clock()) + 900, email=None, sid="victim", raw={})
    h.clock.advance(1)
    monotonic["now"] += 1
    assert await gateway_feed.poll(BASE_URL) is False  # caught up in one poll
    assert gateway_feed.is_revoked(victim)
    assert gateway_feed.size(BASE_URL) == burst + 1
    assert gateway_feed.age(BASE_URL) == 0


async def test_a_full_page_always_moves_the_cursor(h, monkeypatch):
    monkeypatch.setattr(store_module, "FEED_PAGE", 3)
    store = h.app.state.identity.store
    await store.end_sessions([ended(h, f"s{index}") for index in range(7)])
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        body = await feed(h, cursor)
        pages += 1
        new = [e["sid"] for e in body["revoked"] if e["sid"] not in seen]
        seen.extend(new)
        if cursor is not None:
            assert int(body["cursor"]) > int(cursor) or not body.get("more")
        cursor = body["cursor"]
        if not body.get("more"):
            break
    assert pages == 3
    assert seen == [f"s{index}" for index in range(7)]


@pytest.mark.parametrize(
    ("advance", "resent"),
    [
        pytest.param(0, True, id="committed late, inside the window: re-sent below the cursor"),
        pytest.param(9, True, id="9 s later: still re-sent"),
        pytest.param(11, False, id="past the window: not re-sent"),
    ],
)
async def test_entries_below_the_cursor_are_resent_for_the_overlap_window(h, monkeypatch, advance, resent):
    """PostgreSQL may commit a lower seq after a higher one: the feed keeps re-sending the last 10 s below the
    cursor (without letting them take the page's room), so a poll between the two commits misses nothing."""
    monkeypatch.setattr(store_module, "FEED_PAGE", 2)
    await insert_at(h, 1, "first")
    await insert_at(h, 10, "later-seq")
    cursor = (await feed(h))["cursor"]
    assert cursor == "10"
    await insert_at(h, 5, "late-commit")  # took seq 5 before "later-seq" committed, committed after the poll
    await insert_at(h, 11, "new-1")
    await insert_at(h, 12, "new-2")
    await insert_at(h, 13, "new-3")
    h.clock.advance(advance)
    body = await feed(h, cursor)
    sids = [e["sid"] for e in body["revoked"]]
    assert sids[-2:] == ["new-1", "new-2"]  # the page: two newer entries, the re-sent ones do not count
    assert body["cursor"] == "12" and body["more"] is True
    assert ("late-commit" in sids) is resent
    body = await feed(h, body["cursor"])
    assert [e["sid"] for e in body["revoked"]][-1:] == ["new-3"] and "more" not in body


# --- IDENTITY_REVOCATION_FEED_TOKEN: the feed only for gateways (security review LOW: it was public) ---------------

FEED_TOKEN = "Wq3-fR8_zL1xN6vB0kJ5tH2yC9mD4sGaPeUo7iTr"


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        pytest.param({}, None, 404, id="no credentials"),
        pytest.param({}, {"since": "abc"}, 404, id="no credentials, bad cursor: still a plain 404"),
        pytest.param({"authorization": f"Bearer {FEED_TOKEN}"}, None, 200, id="the token"),
        pytest.param({"authorization": f"bearer {FEED_TOKEN}"}, None, 200, id="scheme is case-insensitive"),
        pytest.param({"authorization": f"Bearer {FEED_TOKEN}"}, {"since": "abc"}, 400, id="the token, bad cursor"),
        pytest.param({"authorization": f"Bearer {FEED_TOKEN[:-1]}"}, None, 404, id="a prefix of the token"),
        pytest.param({"authorization": f"Bearer {FEED_TOKEN}x"}, None, 404, id="the token and more"),
        pytest.param({"authorization": f"Bearer  {FEED_TOKEN}"}, None, 404, id="two spaces"),
        pytest.param({"authorization": FEED_TOKEN}, None, 404, id="no scheme"),
        pytest.param({"authorization": f"Basic {FEED_TOKEN}"}, None, 404, id="other scheme"),
        pytest.param({"authorization": b"Bearer \xe9"}, None, 404, id="latin-1 token"),
        pytest.param({"cookie": f"token={FEED_TOKEN}"}, None, 404, id="in a cookie"),
    ],
)
async def test_feed_token_is_required_when_configured(make_harness, headers, params, status):
    h = await make_harness(IDENTITY_REVOCATION_FEED_TOKEN=FEED_TOKEN)
    token = (await h.sign_up()).json()["token"]
    await h.client.post("/api/auth/sign-out", headers=bearer(token))
    response = await h.client.get(FEED, params=params, headers=headers)
    assert response.status_code == status
    if status == 404:  # exactly like a path identity does not serve: nothing says the feed exists
        assert response.content == b"" and "content-type" not in response.headers
    if status == 200:
        assert len(response.json()["revoked"]) == 1


async def test_a_session_token_is_not_the_feed_token(make_harness):
    h = await make_harness(IDENTITY_REVOCATION_FEED_TOKEN=FEED_TOKEN)
    token = (await h.sign_up()).json()["token"]
    assert (await h.client.get(FEED, headers=bearer(token))).status_code == 404


async def test_the_gateway_polls_with_its_token(make_harness):
    """The gateway's issuer config names the variable (revocation_token_env); its polls carry the token."""
    from gateway.config import parse_config
    from tests.gateway.conftest import PROOF_SECRET

    h = await make_harness(IDENTITY_REVOCATION_FEED_TOKEN=FEED_TOKEN)
    token = (await h.sign_up()).json()["token"]
    sid = await sid_of(h, token)
    await h.client.post("/api/auth/sign-out", headers=bearer(token))
    issuer = {"issuer": BASE_URL, "audiences": [BASE_URL], "jwks_url": f"{BASE_URL}/api/auth/jwks"}
    for environ, ok in (({"FEED_TOKEN": FEED_TOKEN}, True), ({"FEED_TOKEN": FEED_TOKEN[::-1]}, False)):
        config = parse_config(
            {"issuers": [{**issuer, "revocation_url": f"{BASE_URL}{FEED}", "revocation_token_env": "FEED_TOKEN"}]},
            {"EDGE_PROOF_SECRET": PROOF_SECRET, **environ},
        )
        outcomes: list[str] = []
        gateway_feed = RevocationFeed(
            config.issuers, h.client, clock=h.clock, on_poll=lambda issuer, outcome, size: outcomes.append(outcome)
        )
        await gateway_feed.poll(BASE_URL)
        revoked = Claims(sub="u", iss=BASE_URL, exp=int(h.clock()) + 60, email=None, sid=sid, raw={})
        assert outcomes == (["ok"] if ok else ["error"])
        assert (gateway_feed.size(BASE_URL) == 1 and gateway_feed.is_revoked(revoked)) is ok
