"""A short-lived, in-process copy of recently looked-up sessions, keyed by SHA-256(token).

Why this is safe (issue 3, Speed): ``GET /token`` and ``GET /get-session`` read the session on every call; the
cache answers repeats within ``IDENTITY_SESSION_CACHE_MS`` (default 1000 ms, at most 5000) without the database.

- In this process every write that ends or changes a session or its user (sign-out, revoke-*, change-password,
  an expired session's removal, a sliding refresh, a password rehash) drops the affected entries through
  :class:`identity.store.Store`, and bumps a generation so a lookup that raced with the write cannot put its
  older row back.
- Another replica (or ``python -m identity revoke-user``, its own process) may leave this process answering
  from its copy for at most the TTL after a revocation. A JWT minted then
  carries the session's ``sid``; the revocation feed keeps that ``sid`` for ``IDENTITY_JWT_TTL`` + 60 s after
  the revocation (``RETIRE_MARGIN``), longer than any such JWT lives (TTL <= 5 s < 60 s), so gateways refuse it.
- Only reads use the copy. A hit that would lead to a write (expired, or a sliding refresh due) is re-read
  from the database first, so writes are decided on the row itself, never on a copy another replica outdated.

Hits and misses are counted for the bench and the tests; the cache is bounded (``max_entries``): when full it
first drops expired entries, then everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from identity.store import Session, User


class _Entry(NamedTuple):
    stored_at: float
    session: Session
    user: User


class SessionCache:
    def __init__(self, ttl: float, clock: Callable[[], float], max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, _Entry] = {}
        self._by_session: dict[str, str] = {}
        #: Bumped by every invalidation; a lookup that started before one does not store its result.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[Session, User] | None:
        entry = self._entries.get(key)
        if entry is not None and 0 <= self._clock() - entry.stored_at < self.ttl:
            self.hits += 1
            return entry.session, entry.user
        self.misses += 1
        return None

    def put(self, key: str, session: Session, user: User, generation: int) -> None:
        if self.ttl <= 0 or generation != self.generation:
            return
        now = self._clock()
        if len(self._entries) >= self._max and key not in self._entries:
            for stale in [k for k, e in self._entries.items() if not 0 <= now - e.stored_at < self.ttl]:
                self._remove(stale)
            if len(self._entries) >= self._max:
                self._entries.clear()
                self._by_session.clear()
        self._entries[key] = _Entry(now, session, user)
        self._by_session[session.id] = key

    def drop_sessions(self, session_ids: list[str]) -> None:
        self.generation += 1
        for session_id in session_ids:
            key = self._by_session.get(session_id)
            if key is not None:
                self._remove(key)

    def drop_user(self, user_id: str) -> None:
        self.generation += 1
        for key in [k for k, e in self._entries.items() if e.session.user_id == user_id]:
            self._remove(key)

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and self._by_session.get(entry.session.id) == key:
            del self._by_session[entry.session.id]
