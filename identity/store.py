"""Users, sessions and the revocation feed in the database. Every method is one short transaction.

Session tokens never reach the database: rows hold SHA-256(token), so a leaked table cannot be replayed.
Ending a session early (sign-out, revoke-*, change-password, revoke-user) also appends its id to
``identity_revocations`` in the same transaction, which gateways read through ``GET /api/auth/revocations``.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from identity.ids import generate_id
from identity.keyring import RETIRE_MARGIN
from identity.models import revocations, sessions, users
from identity.sessioncache import SessionCache

_TOKEN_ALPHABET = string.ascii_letters + string.digits
#: Rows newer than this are re-sent on every poll: on PostgreSQL a transaction may commit after one with a
#: higher ``seq``, so a cursor alone could skip it. Duplicates are harmless to a set of revoked ids.
FEED_OVERLAP_MS = 10_000
#: Rows after the cursor per response. The re-sent rows come on top and never take the page's room, so a full page
#: always moves the cursor (a burst of over a page of revocations once held it still for the whole window).
FEED_PAGE = 5000
#: At most this many re-sent rows per response, the highest ``seq`` first: a late commit lands just below the
#: cursor, and the response stays bounded (two pages) however large a burst is.
FEED_OVERLAP_ROWS = 5000


class UserExists(Exception):
    pass


def iso(ms: int) -> str:
    """JavaScript's ``Date.toISOString()``: millisecond precision, ``Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(32))


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str
    email_verified: bool
    image: str | None
    created_at: int
    updated_at: int
    password_hash: str

    def public(self) -> dict[str, Any]:
        """Better Auth's user object, in its key order (reference 2.3)."""
        return {
            "name": self.name,
            "email": self.email,
            "emailVerified": self.email_verified,
            "image": self.image,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "id": self.id,
        }


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    expires_at: int
    created_at: int
    updated_at: int
    ip_address: str
    user_agent: str
    remember: bool

    def public(self, token: str) -> dict[str, Any]:
        return {
            "expiresAt": iso(self.expires_at),
            "token": token,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "ipAddress": self.ip_address,
            "userAgent": self.user_agent,
            "userId": self.user_id,
            "id": self.id,
        }


@dataclass(frozen=True)
class SessionInfo:
    """A live session found from a request: the hook the web pages use (``app.state.current_session``)."""

    session: Session
    user: User
    token: str


def _user(row: Any) -> User:
    return User(
        row.id, row.name, row.email, row.email_verified, row.image, row.created_at, row.updated_at, row.password_hash
    )


def _session(row: Any) -> Session:
    return Session(
        row.id,
        row.user_id,
        row.expires_at,
        row.created_at,
        row.updated_at,
        row.ip_address,
        row.user_agent,
        row.remember,
    )


_SESSION_COLUMNS = [
    sessions.c.id,
    sessions.c.user_id,
    sessions.c.expires_at,
    sessions.c.created_at,
    sessions.c.updated_at,
    sessions.c.ip_address,
    sessions.c.user_agent,
    sessions.c.remember,
]
_USER_COLUMNS = [c.label(f"u_{c.name}") for c in users.c]


class Store:
    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], float], jwt_ttl: int, *, session_cache_ms: int = 0
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._jwt_ttl = jwt_ttl
        # Every method below that ends or changes a session or user drops it here (sessioncache.py says why
        # a short TTL is safe across replicas).
        self.session_cache = SessionCache(session_cache_ms / 1000, clock)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # users

    async def find_user_by_email(self, email: str) -> User | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.email == email.lower()))).first()
        return _user(row) if row else None

    async def create_user(self, name: str, email: str, image: str | None, password_hash: str) -> User:
        now = self.now_ms()
        user = User(generate_id(), name, email.lower(), False, image, now, now, password_hash)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(users).values(
                        id=user.id,
                        name=user.name,
                        email=user.email,
                        email_verified=False,
                        image=image,
                        password_hash=password_hash,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError as exc:
            # Two sign-ups for one address raced past the lookup; the unique index decided.
            raise UserExists(email) from exc
        return user

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        self.session_cache.drop_user(user_id)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(users).where(users.c.id == user_id).values(password_hash=password_hash, updated_at=self.now_ms())
            )
        self.session_cache.drop_user(user_id)

    # sessions

    async def create_session(
        self, user_id: str, expires_in: int, remember: bool, ip_address: str, user_agent: str
    ) -> tuple[Session, str]:
        now = self.now_ms()
        token = new_token()
        session = Session(generate_id(), user_id, now + expires_in * 1000, now, now, ip_address, user_agent, remember)
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    id=session.id,
                    token_hash=token_hash(token),
                    user_id=user_id,
                    expires_at=session.expires_at,
                    created_at=now,
                    updated_at=now,
                    ip_address=ip_address,
                    user_agent=user_agent,
                    remember=remember,
                )
            )
        return session, token

    def cached_session(self, token: str) -> tuple[Session, User] | None:
        """What :meth:`find_session` returned for this token at most ``IDENTITY_SESSION_CACHE_MS`` ago, if nothing
        in this process ended or changed it since. For read-only callers."""
        return self.session_cache.get(token_hash(token))

    async def find_session(self, token: str) -> tuple[Session, User] | None:
        """The session and its user for a token, expired or not (callers decide), from the database."""
        key = token_hash(token)
        generation = self.session_cache.generation
        query = (
            select(*_SESSION_COLUMNS, *_USER_COLUMNS)
            .select_from(sessions.join(users, users.c.id == sessions.c.user_id))
            .where(sessions.c.token_hash == key)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        user = User(
            m["u_id"],
            m["u_name"],
            m["u_email"],
            m["u_email_verified"],
            m["u_image"],
            m["u_created_at"],
            m["u_updated_at"],
            m["u_password_hash"],
        )
        session = _session(row)
        self.session_cache.put(key, session, user, generation)
        return session, user

    async def extend_session(self, session: Session, expires_in: int) -> Session:
        now = self.now_ms()
        expires_at = now + expires_in * 1000
        async with self._engine.begin() as conn:
            await conn.execute(
                update(sessions).where(sessions.c.id == session.id).values(expires_at=expires_at, updated_at=now)
            )
        self.session_cache.drop_sessions([session.id])
        return Session(
            session.id,
            session.user_id,
            expires_at,
            session.created_at,
            now,
            session.ip_address,
            session.user_agent,
            session.remember,
        )

    async def list_sessions(self, user_id: str) -> list[Session]:
        query = (
            select(*_SESSION_COLUMNS)
            .where(sessions.c.user_id == user_id, sessions.c.expires_at > self.now_ms())
            .order_by(sessions.c.created_at)
        )
        async with self._engine.connect() as conn:
            return [_session(row) for row in await conn.execute(query)]

    async def find_user_session(self, user_id: str, handle: str) -> Session | None:
        """One of ``user_id``'s sessions by its token or by its id (list-sessions shows ids for other sessions)."""
        query = select(*_SESSION_COLUMNS).where(
            sessions.c.user_id == user_id,
            or_(sessions.c.token_hash == token_hash(handle), sessions.c.id == handle),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _session(row) if row else None

    async def end_sessions(self, targets: Iterable[Session]) -> int:
        """Delete sessions and record the still-live ones in the revocation feed, in one transaction."""
        targets = list(targets)
        if not targets:
            return 0
        ids = [s.id for s in targets]
        self.session_cache.drop_sessions(ids)
        now = self.now_ms()
        keep_ms = (self._jwt_ttl + RETIRE_MARGIN) * 1000
        feed = [
            {"session_id": s.id, "revoked_at": now, "expires_at": min(s.expires_at, now) + keep_ms}
            for s in targets
            if min(s.expires_at, now) + keep_ms > now
        ]
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(sessions).where(sessions.c.id.in_(ids)))
            if feed:
                await conn.execute(insert(revocations), feed)
            await conn.execute(delete(revocations).where(revocations.c.expires_at <= now))
        # Again after the commit: a lookup that read the row while this transaction ran must not serve it.
        self.session_cache.drop_sessions(ids)
        return int(result.rowcount or 0)

    async def delete_expired_session(self, session: Session) -> None:
        """A session found past its expiry: removed without a feed entry (its JWTs expire on their own)."""
        async with self._engine.begin() as conn:
            await conn.execute(delete(sessions).where(sessions.c.id == session.id))
        self.session_cache.drop_sessions([session.id])

    async def user_sessions(self, user_id: str) -> list[Session]:
        async with self._engine.connect() as conn:
            return [
                _session(r) for r in await conn.execute(select(*_SESSION_COLUMNS).where(sessions.c.user_id == user_id))
            ]

    # revocation feed

    async def revocations_since(self, since: int | None) -> tuple[list[tuple[str, int]], int, bool]:
        """Live feed entries: up to :data:`FEED_PAGE` after ``since`` in ``seq`` order (keyset paging), preceded
        by the entries at or below ``since`` revoked in the last :data:`FEED_OVERLAP_MS` (re-sent for commit-order
        safety, up to :data:`FEED_OVERLAP_ROWS`). Returns them, the next cursor (the page's last ``seq``, so it
        moves whenever more remain) and whether more remain."""
        now = self.now_ms()
        columns = (revocations.c.seq, revocations.c.session_id, revocations.c.expires_at)
        live = revocations.c.expires_at > now
        page = select(*columns).where(live)
        if since is not None:
            page = page.where(revocations.c.seq > since)
        page = page.order_by(revocations.c.seq).limit(FEED_PAGE + 1)
        async with self._engine.connect() as conn:
            rows = list(await conn.execute(page))
            again = []
            if since is not None:
                recent = (
                    select(*columns)
                    .where(live, revocations.c.seq <= since, revocations.c.revoked_at >= now - FEED_OVERLAP_MS)
                    .order_by(revocations.c.seq.desc())
                    .limit(FEED_OVERLAP_ROWS)
                )
                again = list(await conn.execute(recent))
        more = len(rows) > FEED_PAGE
        rows = rows[:FEED_PAGE]
        cursor = rows[-1].seq if rows else since or 0
        entries = [(row.session_id, row.expires_at // 1000) for row in (*reversed(again), *rows)]
        return entries, cursor, more
