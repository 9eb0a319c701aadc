"""Revocation feeds (issue 9, "Revocation"; issue 6, "the old JWT no longer works at the gateway").

:class:`FeedServer` plays the identity service's feed contract (identity/store.py ``revocations_since``: a page of
entries after the cursor, plus the last 10 s at or below it again without taking the page's room, ``more`` when
another page follows, entries dropped at ``exp``) behind
``httpx.MockTransport``, on the test's clock. The last tests run the real identity app in-process as the feed
and JWKS of the real gateway app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest

from gateway.app import Gateway, create_app
from gateway.config import ConfigError, IssuerConfig, parse_config
from gateway.errors import InvalidToken, ServiceUnavailable
from gateway.jwks import JwksCache
from gateway.metrics import Metrics
from gateway.revocation import MAX_PAGES_PER_POLL, FeedError, RevocationFeed, parse_page
from gateway.tokens import Claims, TokenVerifier
from gateway.upstream import HttpxUpstream
from tests.gateway._fwd_fixtures import UpstreamRecorder, gateway_config
from tests.gateway.conftest import (
    AUDIENCE,
    ISSUER,
    JWKS_URL,
    PROOF_SECRET,
    SUBJECT,
    FakeClock,
    JwksEndpoint,
    issuer_config,
    make_key,
    mint,
)
from tests.gateway.test_metrics import sample

pytestmark = pytest.mark.anyio

FEED_URL = "http://127.0.0.1:8001/api/auth/revocations"
OTHER_ISSUER = "https://other.example"
NOW = 1_000_000.0
LEEWAY = 30


@dataclass
class Row:
    seq: int
    sid: str
    exp: int
    revoked_at: float


@dataclass
class FeedServer:
    """The identity feed's contract on ``clock``. ``status``/``body``/``error``/``delay`` make it misbehave;
    ``since`` records each request's cursor (None: no cursor)."""

    clock: FakeClock
    rows: list[Row] = field(default_factory=list)
    page_size: int = 5000
    overlap: float = 10.0
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: Exception | None = None
    delay: float = 0.0
    since: list[str | None] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)  # each request's Authorization header

    def revoke(self, sid: str, ttl: int = 960) -> None:
        seq = self.rows[-1].seq + 1 if self.rows else 1
        self.rows.append(Row(seq, sid, int(self.clock()) + ttl, self.clock()))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        since = request.url.params.get("since")
        self.since.append(since)
        self.authorization.append(request.headers.get("authorization"))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if self.body is not None:
            return httpx.Response(self.status, content=self.body, headers=self.headers)
        now = self.clock()
        live = [r for r in self.rows if r.exp > now]
        page = [r for r in live if since is None or r.seq > int(since)][: self.page_size + 1]
        again = [r for r in live if since is not None and r.seq <= int(since) and r.revoked_at >= now - self.overlap]
        more = len(page) > self.page_size
        page = page[: self.page_size]
        cursor = page[-1].seq if page else int(since or 0)
        rows = again + page
        document: dict[str, Any] = {"revoked": [{"sid": r.sid, "exp": r.exp} for r in rows], "cursor": str(cursor)}
        if more:
            document["more"] = True
        return httpx.Response(self.status, json=document, headers=self.headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def server(clock: FakeClock) -> FeedServer:
    return FeedServer(clock)


Polls = list[tuple[str, str, int]]


def feed_for(server: FeedServer, clock: FakeClock, polls: Polls | None = None, **config: Any) -> RevocationFeed:
    issuers = [issuer_config(revocation_url=FEED_URL, **config), issuer_config(issuer=OTHER_ISSUER)]
    client = httpx.AsyncClient(transport=httpx.MockTransport(server), trust_env=False)
    hook = (lambda issuer, outcome, size: polls.append((issuer, outcome, size))) if polls is not None else None
    return RevocationFeed(issuers, client, leeway=LEEWAY, clock=clock, monotonic=clock, on_poll=hook)


def claims(sid: str | None = "s1", iss: str = ISSUER) -> Claims:
    return Claims(sub=SUBJECT, iss=iss, exp=int(NOW) + 300, email=None, sid=sid, raw={})


def revoked(feed: RevocationFeed, *sids: str) -> list[bool]:
    return [feed.is_revoked(claims(sid)) for sid in sids]


# --- polling -------------------------------------------------------------------------------------------------------


async def test_first_poll_gets_the_whole_list_then_polls_from_the_cursor(server, clock):
    server.revoke("a")
    server.revoke("b")
    polls: Polls = []
    feed = feed_for(server, clock, polls)
    assert not feed.ready() and feed.age(ISSUER) is None
    await feed.start(background=False)
    assert feed.ready() and feed.age(ISSUER) == 0
    assert revoked(feed, "a", "b", "c") == [True, True, False]
    assert server.since == [None]
    assert polls == [(ISSUER, "ok", 2)]
    clock.advance(11)  # past the feed's overlap window: nothing is re-sent
    server.revoke("c")
    assert await feed.poll(ISSUER) is False
    assert server.since == [None, "2"]
    assert revoked(feed, "a", "b", "c") == [True, True, True]
    assert feed.issuers == (ISSUER,)  # the other issuer publishes no feed and is never polled


async def test_more_pages_are_fetched_in_the_same_poll(server, clock):
    server.page_size = 2
    for index in range(5):
        server.revoke(f"s{index}")
    clock.advance(11)  # out of the overlap window, so each page holds only its own entries
    polls: Polls = []
    feed = feed_for(server, clock, polls)
    await feed.start(background=False)
    assert server.since == [None, "2", "4"]
    assert [outcome for _, outcome, _ in polls] == ["more", "more", "ok"]
    assert feed.size(ISSUER) == 5 and feed.ready()


async def test_a_long_backlog_continues_without_waiting(server, clock):
    server.page_size = 1
    for index in range(MAX_PAGES_PER_POLL + 3):
        server.revoke(f"s{index}")
    clock.advance(11)
    feed = feed_for(server, clock)
    assert await feed.poll(ISSUER) is True  # pages remain: the loop polls again at once
    assert feed.size(ISSUER) == MAX_PAGES_PER_POLL and not feed.ready()  # not caught up yet
    assert await feed.poll(ISSUER) is False
    assert feed.size(ISSUER) == MAX_PAGES_PER_POLL + 3 and feed.ready()


async def test_a_burst_inside_the_overlap_window_is_read_in_one_poll(server, clock):
    """A page's worth of revocations inside the re-send window (a burst) must not hold the cursor: the re-sent
    entries come on top of the page, so a sign-out behind the burst is enforced on the next poll."""
    server.page_size = 2
    feed = feed_for(server, clock)
    await feed.start(background=False)
    for index in range(5):
        server.revoke(f"s{index}")
    server.revoke("victim")
    clock.advance(1)
    assert await feed.poll(ISSUER) is False
    assert server.since == [None, "0", "2", "4"]
    assert revoked(feed, "s0", "s4", "victim") == [True, True, True]
    assert feed.age(ISSUER) == 0


async def test_more_without_an_advancing_cursor_ends_the_poll(server, clock):
    """A feed that answers ``more`` without moving its cursor (identity did, before its keyset paging, when
    re-sent entries filled a page) would make the poll spin: it stops instead, keeps what it got, and is not
    counted as caught up."""
    server.body = json.dumps({"revoked": [{"sid": "s0", "exp": int(NOW) + 900}], "cursor": "2", "more": True}).encode()
    feed = feed_for(server, clock)
    clock.advance(1)
    assert await feed.poll(ISSUER) is False
    assert server.since == [None, "2"]  # the first page set the cursor, the second did not move it
    assert revoked(feed, "s0") == [True]
    assert feed.age(ISSUER) is None and not feed.ready()


async def test_resent_entries_change_nothing(server, clock):
    server.revoke("a")
    feed = feed_for(server, clock)
    await feed.start(background=False)
    for _ in range(5):  # inside the overlap window every poll re-sends "a"
        clock.advance(1)
        await feed.poll(ISSUER)
    assert server.since == [None, "1", "1", "1", "1", "1"]
    assert feed.size(ISSUER) == 1
    assert len(feed._feeds[ISSUER].expiries) == 1  # no growth from duplicates


async def test_entries_are_forgotten_once_their_tokens_have_expired(server, clock):
    server.revoke("a", ttl=100)
    server.revoke("b", ttl=200)
    feed = feed_for(server, clock)
    await feed.start(background=False)
    server.rows.clear()  # the feed drops entries at exp; the gateway must not need it to
    clock.advance(100 + LEEWAY - 1)
    await feed.poll(ISSUER)
    assert revoked(feed, "a", "b") == [True, True]  # a token with exp = now - leeway + 1 is still accepted
    clock.advance(1)
    await feed.poll(ISSUER)
    assert revoked(feed, "a", "b") == [False, True]
    clock.advance(100)
    await feed.poll(ISSUER)
    assert feed.size(ISSUER) == 0 and feed._feeds[ISSUER].expiries == []


async def test_an_entry_that_arrives_expired_is_not_stored(server, clock):
    server.body = json.dumps({"revoked": [{"sid": "old", "exp": int(NOW) - LEEWAY}], "cursor": "1"}).encode()
    feed = feed_for(server, clock)
    await feed.poll(ISSUER)
    assert feed.size(ISSUER) == 0 and feed.ready()


async def test_a_later_exp_for_a_known_sid_extends_it(server, clock):
    feed = feed_for(server, clock)
    for exp in (int(NOW) + 10, int(NOW) + 100, int(NOW) + 50):
        server.body = json.dumps({"revoked": [{"sid": "a", "exp": exp}], "cursor": "1"}).encode()
        await feed.poll(ISSUER)
    clock.advance(10 + LEEWAY)
    await feed.poll(ISSUER)
    assert revoked(feed, "a") == [True]
    clock.advance(90)
    await feed.poll(ISSUER)
    assert revoked(feed, "a") == [False]


async def test_the_list_is_bounded_by_max_entries(server, clock):
    for sid in ("a", "b", "c"):
        server.revoke(sid)
    polls: Polls = []
    feed = feed_for(server, clock, polls, revocation_max_entries=2)
    await feed.start(background=False)
    assert polls == [(ISSUER, "too_large", 0)]
    assert feed.size(ISSUER) == 0 and not feed.ready()  # refused whole, and the operator sees it


async def test_background_loop_picks_up_a_revocation(server, clock):
    feed = RevocationFeed(
        [issuer_config(revocation_url=FEED_URL, revocation_poll_interval=0.05)],
        httpx.AsyncClient(transport=httpx.MockTransport(server), trust_env=False),
        clock=clock,
    )
    await feed.start()
    try:
        server.revoke("a")
        deadline = time.monotonic() + 2
        while not feed.is_revoked(claims("a")) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert feed.is_revoked(claims("a"))
    finally:
        await feed.aclose()
    calls = len(server.since)
    await asyncio.sleep(0.15)
    assert len(server.since) == calls  # stopped


async def test_a_failing_hook_does_not_stop_polling(server, clock):
    server.revoke("a")

    def hook(issuer: str, outcome: str, size: int) -> None:
        raise RuntimeError("metrics broke")

    feed = RevocationFeed(
        [issuer_config(revocation_url=FEED_URL)],
        httpx.AsyncClient(transport=httpx.MockTransport(server), trust_env=False),
        clock=clock,
        monotonic=clock,
        on_poll=hook,
    )
    await feed.poll(ISSUER)
    assert revoked(feed, "a") == [True]


# --- outages and bad answers ----------------------------------------------------------------------------------------

FAILURES = [
    pytest.param({"status": 500}, "error", id="HTTP 500"),
    pytest.param({"status": 302, "headers": {"location": "http://evil.example/"}}, "error", id="redirect"),
    pytest.param({"error": httpx.ConnectError("refused")}, "error", id="connection refused"),
    pytest.param({"error": httpx.ReadTimeout("slow")}, "timeout", id="read timeout"),
    pytest.param({"delay": 0.5}, "timeout", id="no answer within revocation_timeout"),
    pytest.param({"body": b"<html>oops</html>"}, "invalid", id="not JSON"),
    pytest.param({"body": b'{"revoked": [{"sid": "z", "exp": 1}, 5], "cursor": "9"}'}, "invalid", id="bad entry"),
    pytest.param({"body": b" " * 2048}, "too_large", id="body over max_bytes"),
    pytest.param({"body": b"{}", "headers": {"content-length": "99999999"}}, "too_large", id="declared too large"),
]


async def test_a_content_length_of_non_ascii_digits_is_not_a_number(server, clock):
    """httpx reads a header byte 0xb2 as "²": str.isdigit() is true, int() fails (the poll failed). The header
    means nothing; the body is counted against the cap as it streams."""
    server.headers = {b"content-length": b"\xb2"}  # type: ignore[dict-item]
    server.revoke("a")
    polls: Polls = []
    feed = feed_for(server, clock, polls)
    await feed.poll(ISSUER)
    assert polls == [(ISSUER, "ok", 1)] and revoked(feed, "a") == [True]


@pytest.mark.parametrize(("misbehave", "outcome"), FAILURES)
async def test_feed_down_keeps_the_last_known_list(server, clock, misbehave, outcome):
    server.revoke("a")
    polls: Polls = []
    feed = feed_for(server, clock, polls, revocation_timeout=0.1, revocation_max_bytes=1024)
    await feed.start(background=False)
    for name, value in misbehave.items():
        setattr(server, name, value)
    server.revoke("b")
    clock.advance(1)
    await feed.poll(ISSUER)
    assert polls[-1] == (ISSUER, outcome, 1)
    assert revoked(feed, "a") == [True]  # nothing forgotten
    assert feed._feeds[ISSUER].cursor == "1"  # nothing half-applied
    assert feed.ready()  # within revocation_stale_after
    assert revoked(feed, "b") == [False]


async def test_stale_list_refuses_tokens_with_a_sid_by_default(server, clock):
    server.revoke("a")
    feed = feed_for(server, clock, revocation_stale_after=10)
    await feed.start(background=False)
    server.status = 503
    clock.advance(10)
    await feed.poll(ISSUER)
    assert feed.ready() and revoked(feed, "b") == [False]  # exactly stale_after: still fresh
    clock.advance(0.5)
    assert not feed.ready()
    with pytest.raises(ServiceUnavailable) as caught:
        feed.is_revoked(claims("b"))  # unknown whether "b" was signed out meanwhile: fail closed
    assert caught.value.status == 503 and caught.value.headers("gateway") == [("retry-after", "1")]
    assert revoked(feed, "a") == [True]  # known revoked stays a 401, not a 503
    assert feed.is_revoked(claims(None)) is False  # a token without sid is a plain JWT
    assert feed.is_revoked(claims("b", iss=OTHER_ISSUER)) is False  # an issuer without a feed is unaffected
    server.status = 200
    server.revoke("b")
    await feed.poll(ISSUER)
    assert feed.ready() and revoked(feed, "a", "b") == [True, True]


async def test_stale_list_under_the_accept_policy_keeps_serving(server, clock):
    server.revoke("a", ttl=86_400)
    feed = feed_for(server, clock, revocation_on_stale="accept")
    await feed.start(background=False)
    server.error = httpx.ConnectError("down")
    clock.advance(3600)
    await feed.poll(ISSUER)
    assert feed.ready()
    assert revoked(feed, "a", "b") == [True, False]
    assert feed.age(ISSUER) == 3600


async def test_never_polled_successfully_is_stale(server, clock):
    server.error = httpx.ConnectError("identity not up yet")
    feed = feed_for(server, clock)
    await feed.start(background=False)
    assert not feed.ready()
    with pytest.raises(ServiceUnavailable):
        feed.is_revoked(claims("a"))
    server.error = None
    await feed.poll(ISSUER)
    assert feed.ready() and revoked(feed, "a") == [False]


def entry(**fields: Any) -> bytes:
    return json.dumps({"revoked": [{"sid": "a", "exp": 2_000_000_000, **fields}], "cursor": "1"}).encode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="a list"),
        pytest.param(b'{"cursor": "1"}', id="no revoked"),
        pytest.param(b'{"revoked": {}, "cursor": "1"}', id="revoked not a list"),
        pytest.param(b'{"revoked": []}', id="no cursor"),
        pytest.param(b'{"revoked": [], "cursor": 1}', id="numeric cursor"),
        pytest.param(b'{"revoked": [], "cursor": "-1"}', id="negative cursor"),
        pytest.param(b'{"revoked": [], "cursor": ""}', id="empty cursor"),
        pytest.param(b'{"revoked": [], "cursor": "1' + b"0" * 18 + b'"}', id="cursor too long"),
        pytest.param(b'{"revoked": [], "cursor": "\\u0661"}', id="non-ASCII digit cursor"),
        pytest.param(b'{"revoked": [], "cursor": "1", "more": "yes"}', id="more not a boolean"),
        pytest.param(b'{"revoked": ["a"], "cursor": "1"}', id="entry not an object"),
        pytest.param(entry(sid=None), id="sid null"),
        pytest.param(entry(sid=""), id="sid empty"),
        pytest.param(entry(sid=5), id="sid a number"),
        pytest.param(entry(sid="a" * 257), id="sid too long"),
        pytest.param(entry(sid="a\nb"), id="sid with a newline"),
        pytest.param(entry(exp="2000000000"), id="exp a string"),
        pytest.param(entry(exp=True), id="exp a boolean"),
        pytest.param(entry(exp=2e9), id="exp a float"),
        pytest.param(entry(exp=0), id="exp zero"),
        pytest.param(entry(exp=2**53), id="exp too large"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep nesting"),
    ],
)
def test_malformed_feed_responses_are_refused(body):
    with pytest.raises(FeedError) as caught:
        parse_page(body)
    assert caught.value.outcome == "invalid"


def test_a_well_formed_page_parses():
    body = b'{"revoked": [{"sid": "a", "exp": 2000000000, "extra": 1}], "cursor": "12", "more": true, "x": null}'
    page = parse_page(body)
    assert (page.revoked, page.cursor, page.more) == ((("a", 2_000_000_000),), "12", True)
    assert parse_page(b'{"revoked": [], "cursor": "0"}').more is False


# --- the verifier ----------------------------------------------------------------------------------------------------


async def test_a_cached_verified_token_is_refused_once_revoked(server, clock):
    key = make_key("EdDSA", "ed-1")
    jwks_endpoint = JwksEndpoint()
    jwks_endpoint.serve(key)
    config = issuer_config(revocation_url=FEED_URL)
    keys = JwksCache([config], jwks_endpoint.client(), clock=clock)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server), trust_env=False)
    feed = RevocationFeed([config], client, clock=clock, monotonic=clock)
    await keys.start(refresh_interval=None)
    await feed.start(background=False)
    verifier = TokenVerifier([config], keys, clock=clock, is_revoked=feed.is_revoked)
    token, other, plain = mint(key, now=NOW, sid="s1"), mint(key, now=NOW, sid="s2"), mint(key, now=NOW)
    for each in (token, token, other, plain):
        await verifier.verify(each)
    assert verifier.hits == 1
    server.revoke("s1")
    await feed.poll(ISSUER)
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    assert caught.value.reason == "revoked"
    assert verifier.hits == 2  # refused from the cache, not re-verified
    assert (await verifier.verify(other)).sid == "s2"
    assert (await verifier.verify(plain)).sid is None
    await keys.aclose()


# --- configuration ---------------------------------------------------------------------------------------------------

BASE = {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_url": JWKS_URL}
ENV = {"EDGE_PROOF_SECRET": PROOF_SECRET}


def issuer_from(**keys: Any) -> IssuerConfig:
    return parse_config({"issuers": [{**BASE, **keys}]}, ENV).issuers[0]


def test_config_defaults_and_every_key():
    plain = issuer_from()
    assert plain.revocation_url is None
    with_feed = issuer_from(revocation_url=FEED_URL)
    assert (
        with_feed.revocation_url,
        with_feed.revocation_poll_interval,
        with_feed.revocation_timeout,
        with_feed.revocation_max_bytes,
        with_feed.revocation_max_entries,
        with_feed.revocation_stale_after,
        with_feed.revocation_on_stale,
    ) == (FEED_URL, 1.0, 2.0, 4 * 1024 * 1024, 1_000_000, 10.0, "refuse")
    every = issuer_from(
        revocation_url=FEED_URL,
        revocation_poll_interval=0.25,
        revocation_timeout=1,
        revocation_max_bytes=65536,
        revocation_max_entries=10,
        revocation_stale_after=3,
        revocation_on_stale="accept",
    )
    assert (every.revocation_poll_interval, every.revocation_timeout, every.revocation_max_bytes) == (0.25, 1.0, 65536)
    assert (every.revocation_max_entries, every.revocation_stale_after, every.revocation_on_stale) == (
        10,
        3.0,
        "accept",
    )


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        pytest.param(
            {"revocation_poll_interval": 1},
            "issuers[0].revocation_poll_interval: is allowed only with revocation_url",
            id="interval without a feed",
        ),
        pytest.param(
            {"revocation_on_stale": "accept"},
            "issuers[0].revocation_on_stale: is allowed only with revocation_url",
            id="policy without a feed",
        ),
        pytest.param(
            {"revocation_url": "ftp://id.example/feed"},
            "issuers[0].revocation_url: must be an http:// or https:// URL with a host, not 'ftp://id.example/feed'",
            id="not http",
        ),
        pytest.param(
            {"revocation_url": 5},
            "issuers[0].revocation_url: must be a string, not an integer",
            id="not a string",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_on_stale": "ignore"},
            "issuers[0].revocation_on_stale: must be one of refuse, accept, not 'ignore'",
            id="unknown policy",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_stale_after": 1, "revocation_poll_interval": 1},
            "issuers[0].revocation_stale_after: must be longer than revocation_poll_interval",
            id="stale before the next poll",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_poll_interval": 0},
            "issuers[0].revocation_poll_interval: must be between 0.05 and 60, not 0",
            id="interval zero",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_max_bytes": 10},
            "issuers[0].revocation_max_bytes: must be between 1024 and 268435456, not 10",
            id="max_bytes too small",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_max_entries": 0},
            "issuers[0].revocation_max_entries: must be between 1 and 100000000, not 0",
            id="max_entries zero",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_poll_seconds": 1},
            "issuers[0].revocation_poll_seconds: unknown key",
            id="typo",
        ),
    ],
)
def test_config_problems(keys, problem):
    with pytest.raises(ConfigError) as caught:
        issuer_from(**keys)
    assert problem in caught.value.problems


FEED_TOKEN = "Wq3-fR8_zL1xN6vB0kJ5tH2yC9mD4sGaPeUo7iTr"
TOKEN_ENV = "IDENTITY_REVOCATION_FEED_TOKEN"


@pytest.mark.parametrize(
    ("keys", "environ", "expected"),
    [
        pytest.param({"revocation_url": FEED_URL}, {TOKEN_ENV: FEED_TOKEN}, None, id="not named: no token"),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": TOKEN_ENV},
            {TOKEN_ENV: f" {FEED_TOKEN}\n"},
            FEED_TOKEN,
            id="named and set (surrounding blanks dropped, as identity does)",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": TOKEN_ENV},
            {},
            f"issuers[0].revocation_token_env: environment variable {TOKEN_ENV} is not set",
            id="named but unset",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": TOKEN_ENV},
            {TOKEN_ENV: "  "},
            f"issuers[0].revocation_token_env: environment variable {TOKEN_ENV} is empty",
            id="named but empty",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": TOKEN_ENV},
            {TOKEN_ENV: "two words"},
            f"issuers[0].revocation_token_env: environment variable {TOKEN_ENV} must be visible ASCII"
            " (it is sent as a Bearer token)",
            id="not header-safe",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": ""},
            {},
            "issuers[0].revocation_token_env: must be an environment variable name, not ''",
            id="empty name",
        ),
        pytest.param(
            {"revocation_url": FEED_URL, "revocation_token_env": 5},
            {},
            "issuers[0].revocation_token_env: must be a string, not an integer",
            id="not a string",
        ),
        pytest.param(
            {"revocation_token_env": TOKEN_ENV},
            {TOKEN_ENV: FEED_TOKEN},
            "issuers[0].revocation_token_env: is allowed only with revocation_url",
            id="without a feed",
        ),
    ],
)
def test_config_revocation_token_env(keys, environ, expected):
    data = {"issuers": [{**BASE, **keys}]}
    if expected is None or expected == FEED_TOKEN:
        issuer = parse_config(data, {**ENV, **environ}).issuers[0]
        assert issuer.revocation_token == expected
        assert FEED_TOKEN not in repr(issuer)  # configurations get logged; the token must not be
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(data, {**ENV, **environ})
    assert expected in caught.value.problems
    assert FEED_TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("token", "sent"),
    [
        pytest.param(None, None, id="no token: no Authorization"),
        pytest.param(FEED_TOKEN, f"Bearer {FEED_TOKEN}", id="token: Bearer on every page"),
    ],
)
async def test_polls_carry_the_feed_token(server, clock, token, sent):
    server.page_size = 1
    for sid in ("a", "b"):
        server.revoke(sid)
    feed = RevocationFeed(
        [issuer_config(revocation_url=FEED_URL, revocation_token=token)],
        httpx.AsyncClient(transport=httpx.MockTransport(server), trust_env=False),
        clock=clock,
        monotonic=clock,
    )
    await feed.poll(ISSUER)
    assert server.authorization == [sent, sent]


# --- the app ---------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def feed_gateway(
    feed_transport: httpx.AsyncBaseTransport,
    jwks_transport: httpx.AsyncBaseTransport,
    *,
    recorder: UpstreamRecorder | None = None,
    metrics: Metrics | None = None,
    **feed: Any,
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """The real app (JWKS, feed and upstream each on its own transport), started as the lifespan would."""
    issuer = {**BASE, "jwks_refetch_cooldown": 0, "revocation_url": FEED_URL, **feed}
    app = create_app(
        gateway_config(issuers=[issuer]),
        upstream=HttpxUpstream(transport=httpx.MockTransport(recorder or UpstreamRecorder())),
        metrics=metrics,
        jwks_transport=jwks_transport,
        revocation_transport=feed_transport,
    )
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test") as client:
            yield app, client
    finally:
        await app.shutdown()


def live_server() -> FeedServer:
    """A feed on the real clock: the app checks token and entry times against it."""
    return FeedServer(FakeClock(time.time()))


# No background poll during these tests (they poll by hand), and no staleness within one.
QUIET = {"revocation_poll_interval": 60, "revocation_stale_after": 120}


async def test_app_refuses_a_signed_out_session_and_counts_it(eddsa_key, jwks_endpoint):
    jwks_endpoint.serve(eddsa_key)
    server = live_server()
    metrics, recorder = Metrics(), UpstreamRecorder()
    token, plain = mint(eddsa_key, sid="s1"), mint(eddsa_key)
    transports = (httpx.MockTransport(server), httpx.MockTransport(jwks_endpoint))
    async with feed_gateway(*transports, recorder=recorder, metrics=metrics, **QUIET) as (app, client):
        assert app.revocations is not None
        headers = {"authorization": f"Bearer {token}"}
        assert (await client.get(f"/api/{SUBJECT}/tasks", headers=headers)).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        server.revoke("s1")
        await app.revocations.poll(ISSUER)
        refused = await client.get(f"/api/{SUBJECT}/tasks", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == (
            'Bearer realm="gateway", error="invalid_token", error_description="the token has been revoked"'
        )
        ok = await client.get(f"/api/{SUBJECT}/tasks", headers={"authorization": f"Bearer {plain}"})
        assert ok.status_code == 200  # no sid: a plain JWT
        text = (await client.get("/metrics")).text
    assert len(recorder.seen) == 2  # the refused request never reached the upstream
    assert sample(text, "gateway_token_verifications_total", outcome="revoked") == 1
    assert sample(text, "gateway_revocation_polls_total", issuer=ISSUER, outcome="ok") == 2
    assert sample(text, "gateway_revoked_sessions", issuer=ISSUER) == 1
    updated = sample(text, "gateway_revocation_updated_timestamp_seconds", issuer=ISSUER)
    assert updated is not None and abs(updated - time.time()) < 60


async def test_app_with_its_feed_down_fails_closed_and_says_so(eddsa_key, jwks_endpoint):
    jwks_endpoint.serve(eddsa_key)
    server = live_server()
    server.error = httpx.ConnectError("identity unreachable")
    metrics, recorder = Metrics(), UpstreamRecorder()
    transports = (httpx.MockTransport(server), httpx.MockTransport(jwks_endpoint))
    async with feed_gateway(*transports, recorder=recorder, metrics=metrics, **QUIET) as (app, client):
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "reason": "an issuer's revocation list is out of date"}
        with_sid = {"authorization": f"Bearer {mint(eddsa_key, sid='s1')}"}
        refused = await client.get(f"/api/{SUBJECT}/tasks", headers=with_sid)
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "60")
        plain = {"authorization": f"Bearer {mint(eddsa_key)}"}
        assert (await client.get(f"/api/{SUBJECT}/tasks", headers=plain)).status_code == 200
        server.error = None
        assert app.revocations is not None
        await app.revocations.poll(ISSUER)
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get(f"/api/{SUBJECT}/tasks", headers=with_sid)).status_code == 200
        text = (await client.get("/metrics")).text
    assert sample(text, "gateway_revocation_polls_total", issuer=ISSUER, outcome="error") == 1
    assert sample(text, "gateway_token_verifications_total", outcome="unavailable") == 1
    assert len(recorder.seen) == 2


async def test_app_without_a_feed_has_no_revocations(eddsa_key, jwks_endpoint):
    jwks_endpoint.serve(eddsa_key)
    app = create_app(gateway_config(), upstream=HttpxUpstream(transport=httpx.MockTransport(UpstreamRecorder())))
    assert app.revocations is None and app.verifier._is_revoked is None
    await app.upstream.aclose()
    for close in app._closers:
        await close()


# --- the real identity service as the feed ---------------------------------------------------------------------------


@pytest.fixture
def identity_url(database_url: str) -> str:
    from identity.db import migrate

    migrate(database_url)
    return database_url


async def test_contract_a_sign_out_at_identity_is_refused_at_the_gateway(identity_url, request):
    """identity's real feed and JWKS (in-process, on SQLite and PostgreSQL) driving the real gateway app."""
    from identity.app import create_app as create_identity
    from identity.db import create_engine
    from tests.identity.conftest import BASE_URL, fast_hasher, make_config

    engine = create_engine(identity_url)
    identity = httpx.ASGITransport(app=create_identity(make_config(), engine=engine, password_hasher=fast_hasher()))
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    try:
        async with (
            httpx.AsyncClient(transport=identity, base_url=BASE_URL, cookies=no_cookies) as idp,
            feed_gateway(identity, identity, **QUIET) as (app, gateway),
        ):
            body = {"name": "Alice", "email": "alice@example.com", "password": "correct horse"}
            signed_up = (await idp.post("/api/auth/sign-up/email", json=body)).json()
            user_id, first = signed_up["user"]["id"], signed_up["token"]
            login = {"email": "alice@example.com", "password": "correct horse"}
            second = (await idp.post("/api/auth/sign-in/email", json=login)).json()["token"]

            async def jwt_of(session: str) -> str:
                response = await idp.get("/api/auth/token", headers={"authorization": f"Bearer {session}"})
                assert response.status_code == 200, response.text
                return str(response.json()["token"])

            jwts = {"first": await jwt_of(first), "second": await jwt_of(second)}

            async def status(name: str) -> int:
                headers = {"authorization": f"Bearer {jwts[name]}"}
                return (await gateway.get(f"/api/{user_id}/tasks", headers=headers)).status_code

            assert [await status("first"), await status("second")] == [200, 200]
            signed_out = await idp.post("/api/auth/sign-out", headers={"authorization": f"Bearer {first}"})
            assert signed_out.status_code == 200, signed_out.text
            assert app.revocations is not None
            await app.revocations.poll(ISSUER)
            assert [await status("first"), await status("second")] == [401, 200]  # only that session
    finally:
        await engine.dispose()
