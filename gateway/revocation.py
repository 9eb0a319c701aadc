"""Per-issuer lists of revoked sessions, kept current from each issuer's revocation feed (issue 9, "Revocation";
issue 6: after logging out, the old JWT no longer works at the gateway).

The identity service publishes ``GET <revocation_url>?since=<cursor>`` -> ``{"revoked": [{"sid", "exp"}],
"cursor", "more"?}``: every session ended early (sign-out, revoke-*, an operator's revoke-user) whose JWTs may
still be unexpired. Gateways never read the identity database; each worker of each replica polls on its own.

* **Poll**: every ``revocation_poll_interval`` seconds, from the last cursor (the first poll, without one, gets
  the whole live list). ``"more": true`` fetches the next page at once (at most :data:`MAX_PAGES_PER_POLL` per
  poll, then the loop continues without sleeping). Entries of the last seconds are re-sent on every poll (the
  feed's commit-order safety margin); re-adding a known sid changes nothing.
* **Fetch**: like the JWKS fetch: ``Authorization: Bearer <token>`` when the issuer has ``revocation_token_env``
  (identity's ``IDENTITY_REVOCATION_FEED_TOKEN``), a whole-request deadline (``revocation_timeout``), no redirects
  (the token goes nowhere else), the body streamed and abandoned past ``revocation_max_bytes``. Each request
  reports ``on_poll(issuer, outcome, size)`` with outcome ``ok`` (applied, caught up) | ``more`` (applied, more
  pages) | ``error | timeout | too_large | invalid`` (refused, nothing applied).
* **Parse** (:func:`parse_page`, pure): the whole response is refused when anything in it is malformed; a
  half-understood list is not applied.
* **Memory**: an entry is dropped once its ``exp`` (plus the verifier's leeway) has passed: by then every JWT of
  that session is refused as expired (the feed's ``exp`` is at least the last JWT's, identity/store.py). A feed
  that would make the list longer than ``revocation_max_entries`` is refused as ``too_large``.
* **Outage** (the documented policy, gateway/config.py): a failed poll changes nothing, so the last known list
  keeps being enforced. Once no poll has completed for ``revocation_stale_after`` seconds (or none ever has), the
  list is *stale*. With ``revocation_on_stale = "refuse"`` (default) a token carrying a ``sid`` from that issuer
  gets :class:`ServiceUnavailable` (503, Retry-After) unless it is already known revoked (401), and
  :meth:`RevocationFeed.ready` is False (``/readyz`` 503, so a load balancer prefers replicas whose feed works):
  the gateway cannot tell whether the session was ended, and it fails closed. With ``"accept"`` it keeps serving
  on the last known list. Either way the update timestamp in the metrics shows the age.

Tokens without a ``sid`` and tokens of issuers without a ``revocation_url`` are never revoked (plain JWTs).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import httpx

from gateway.config import IssuerConfig
from gateway.errors import ServiceUnavailable
from gateway.fetch import FetchError, bounded_get
from gateway.tokens import Claims

logger = logging.getLogger("gateway.revocation")

PollOutcome = Literal["ok", "more", "error", "timeout", "too_large", "invalid"]
MAX_PAGES_PER_POLL = 100
MAX_SID_LENGTH = 256
_MAX_CURSOR_DIGITS = 18  # the identity service refuses longer cursors (identity/session_endpoints.py)
_MAX_EXP = 2**53  # beyond a JSON-safe integer: not a time


class FeedError(Exception):
    def __init__(self, outcome: PollOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Page:
    """One feed response: ``(sid, exp)`` pairs, the cursor to send next, and whether more pages follow."""

    revoked: tuple[tuple[str, int], ...]
    cursor: str
    more: bool


def parse_page(body: bytes) -> Page:
    """Validate a feed response. Raises :class:`FeedError` ``invalid`` for anything unexpected."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FeedError("invalid", "the revocation feed is not JSON") from None
    if not isinstance(document, dict):
        raise FeedError("invalid", "the revocation feed is not a JSON object")
    revoked, cursor, more = document.get("revoked"), document.get("cursor"), document.get("more", False)
    if not isinstance(revoked, list):
        raise FeedError("invalid", "the revocation feed has no 'revoked' array")
    if not isinstance(cursor, str) or not cursor.isascii() or not cursor.isdigit() or len(cursor) > _MAX_CURSOR_DIGITS:
        raise FeedError("invalid", "the revocation feed's cursor is not a decimal string")
    if not isinstance(more, bool):
        raise FeedError("invalid", "the revocation feed's 'more' is not a boolean")
    entries: list[tuple[str, int]] = []
    for index, entry in enumerate(revoked):
        sid = entry.get("sid") if isinstance(entry, dict) else None
        exp = entry.get("exp") if isinstance(entry, dict) else None
        if not isinstance(sid, str) or not sid or len(sid) > MAX_SID_LENGTH or not sid.isprintable():
            raise FeedError("invalid", f"revocation entry {index} has no usable sid")
        if isinstance(exp, bool) or not isinstance(exp, int) or not 0 < exp < _MAX_EXP:
            raise FeedError("invalid", f"revocation entry {index} has no usable exp")
        entries.append((sid, exp))
    return Page(tuple(entries), cursor, more)


@dataclass
class _Feed:
    config: IssuerConfig
    url: str
    revoked: dict[str, int] = field(default_factory=dict)  # sid -> exp
    expiries: list[tuple[int, str]] = field(default_factory=list)  # heap of (exp, sid): pruning in O(log n)
    cursor: str | None = None
    caught_up_at: float | None = None  # monotonic start of the last poll that reached the end of the feed
    failing: bool = False  # log the first failure and the recovery, not every poll of an outage
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RevocationFeed:
    """Revoked sessions of every issuer that has a ``revocation_url``; see the module docstring.

    ``clock`` is wall-clock seconds (compared with ``exp``), ``monotonic`` measures staleness; ``leeway`` is the
    verifier's (a token stays acceptable until ``exp + leeway``, so its revocation must too)."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        client: httpx.AsyncClient,
        *,
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_poll: Callable[[str, PollOutcome, int], None] | None = None,
    ) -> None:
        self._feeds = {c.issuer: _Feed(c, c.revocation_url) for c in issuers if c.revocation_url is not None}
        self._client = client
        self._leeway = leeway
        self._clock = clock
        self._monotonic = monotonic
        self._on_poll = on_poll
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        """Poll every feed once (failures are logged, not fatal: ``ready()`` reports them), then keep polling in
        one background task per issuer (``background=False``: tests call :meth:`poll` themselves)."""
        await asyncio.gather(*(self.poll(issuer) for issuer in self._feeds))
        if background and not self._tasks:
            self._tasks = [asyncio.create_task(self._poll_loop(feed)) for feed in self._feeds.values()]

    async def aclose(self) -> None:
        """Stop polling. The HTTP client belongs to the caller, who closes it."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll_loop(self, feed: _Feed) -> None:
        pending = False
        while True:
            await asyncio.sleep(0 if pending else feed.config.revocation_poll_interval)
            try:
                pending = await self.poll(feed.config.issuer)
            except Exception:  # the loop is all that keeps revocations current: never let it die
                logger.exception("revocation poll for %s failed", feed.config.issuer)
                pending = False

    # --- state ---------------------------------------------------------------------------------------------------

    @property
    def issuers(self) -> tuple[str, ...]:
        """The issuers that publish a feed."""
        return tuple(self._feeds)

    def is_revoked(self, claims: Claims) -> bool:
        """The :class:`gateway.tokens.TokenVerifier` hook, called on every verification (cache hits too).

        Raises :class:`ServiceUnavailable` for a token with a ``sid`` whose issuer's list is stale under the
        ``refuse`` policy: the gateway cannot know whether that session has ended."""
        if claims.sid is None:
            return False
        feed = self._feeds.get(claims.iss)
        if feed is None:
            return False
        if claims.sid in feed.revoked:
            return True
        if feed.config.revocation_on_stale == "refuse" and self._stale(feed):
            retry = max(1, math.ceil(feed.config.revocation_poll_interval))
            raise ServiceUnavailable("the token issuer's revocation list is out of date", retry_after=retry)
        return False

    def ready(self) -> bool:
        """False while a ``refuse``-policy issuer's list is stale (its tokens with a sid would get 503)."""
        return not any(f.config.revocation_on_stale == "refuse" and self._stale(f) for f in self._feeds.values())

    def size(self, issuer: str) -> int:
        """Revoked sessions currently remembered for ``issuer``."""
        return len(self._feeds[issuer].revoked)

    def age(self, issuer: str) -> float | None:
        """Seconds since the last poll that reached the end of the issuer's feed began; None if none has."""
        at = self._feeds[issuer].caught_up_at
        return None if at is None else self._monotonic() - at

    def _stale(self, feed: _Feed) -> bool:
        at = feed.caught_up_at
        return at is None or self._monotonic() - at > feed.config.revocation_stale_after

    # --- polling -------------------------------------------------------------------------------------------------

    async def poll(self, issuer: str) -> bool:
        """Fetch the issuer's feed from its cursor until caught up (or :data:`MAX_PAGES_PER_POLL` pages). Returns
        True when pages remain. A failed request ends the poll and changes nothing."""
        feed = self._feeds[issuer]
        async with feed.lock:
            started = self._monotonic()
            self._prune(feed)
            for _ in range(MAX_PAGES_PER_POLL):
                try:
                    page = parse_page(await self._download(feed))
                    advanced = feed.cursor is None or int(page.cursor) > int(feed.cursor)
                    self._apply(feed, page)
                except FeedError as exc:
                    self._failed(feed, exc)
                    return False
                self._report(feed, "more" if page.more else "ok")
                if not page.more:
                    feed.caught_up_at = started
                    if feed.failing:
                        feed.failing = False
                        logger.info("revocation feed for %s is reachable again", issuer)
                    return False
                if not advanced:
                    # More pages, yet the cursor did not move: a broken feed (identity pages by keyset, so its
                    # cursor moves with every full page). Stop rather than spin; retry at the normal interval.
                    logger.warning("revocation feed for %s: more pages but the cursor did not advance", issuer)
                    return False
            return True

    def _apply(self, feed: _Feed, page: Page) -> None:
        now = self._clock()
        live = [(sid, exp) for sid, exp in page.revoked if exp + self._leeway > now]
        new = {sid for sid, _ in live if sid not in feed.revoked}
        if len(feed.revoked) + len(new) > feed.config.revocation_max_entries:
            raise FeedError("too_large", f"the list would exceed {feed.config.revocation_max_entries} sessions")
        for sid, exp in live:
            known = feed.revoked.get(sid)
            if known is None or exp > known:  # a duplicate (re-sent entry) changes nothing
                feed.revoked[sid] = exp
                heapq.heappush(feed.expiries, (exp, sid))
        feed.cursor = page.cursor

    def _prune(self, feed: _Feed) -> None:
        """Forget sessions whose JWTs have all expired (the gateway refuses those as ``expired`` anyway)."""
        horizon = self._clock() - self._leeway
        heap = feed.expiries
        while heap and heap[0][0] <= horizon:
            exp, sid = heapq.heappop(heap)
            if feed.revoked.get(sid) == exp:
                del feed.revoked[sid]

    def _failed(self, feed: _Feed, exc: FeedError) -> None:
        self._report(feed, exc.outcome)
        if not feed.failing:
            feed.failing = True
            logger.warning(
                "revocation feed for %s failed (%s): %s; keeping the last known list of %d sessions",
                feed.config.issuer,
                exc.outcome,
                exc,
                len(feed.revoked),
            )

    def _report(self, feed: _Feed, outcome: PollOutcome) -> None:
        if self._on_poll is not None:
            try:
                self._on_poll(feed.config.issuer, outcome, len(feed.revoked))
            except Exception:  # a metrics hook must never stop revocations
                logger.exception("on_poll hook failed")

    async def _download(self, feed: _Feed) -> bytes:
        config = feed.config
        headers = {"accept": "application/json", "cache-control": "no-cache"}
        if config.revocation_token is not None:  # identity's IDENTITY_REVOCATION_FEED_TOKEN
            headers["authorization"] = f"Bearer {config.revocation_token}"
        try:
            body, _ = await bounded_get(
                self._client,
                feed.url,
                deadline=config.revocation_timeout,
                max_bytes=config.revocation_max_bytes,
                headers=headers,
                params={"since": feed.cursor} if feed.cursor is not None else None,
            )
        except FetchError as exc:
            raise FeedError(exc.outcome, exc.message) from None
        return body
