"""What every endpoint shares: configuration, storage, keys, passwords, limits, and session resolution."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from identity import cookies, tokens
from identity.clientip import client_address
from identity.config import Config
from identity.errors import IdentityError, RateLimited, Unauthorized
from identity.keyring import KeyRing
from identity.passwords import Passwords
from identity.ratelimit import RateLimiter
from identity.store import Session, SessionInfo, Store, User


@dataclass
class Resolved:
    """The outcome of looking for a session: the session (or None) and the cookies the response must carry
    (clearing ones for a dead session, a re-issued one after a sliding refresh)."""

    info: SessionInfo | None
    set_cookies: list[str] = field(default_factory=list)
    refreshed: bool = False


class Service:
    def __init__(
        self,
        config: Config,
        store: Store,
        keyring: KeyRing,
        passwords: Passwords,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.keyring = keyring
        self.passwords = passwords
        self.clock = clock
        self.secret = config.secret.encode()
        self.cookie_names = cookies.CookieNames.for_base_url(config.secure_cookies)
        self.trusted = config.all_trusted_origins
        window = config.rate_limit_window
        self.address_limiter = RateLimiter(config.rate_limit_per_address, window, clock)
        self.account_limiter = RateLimiter(config.rate_limit_per_account, window, clock)
        self._jwt_second = -1
        self._jwt_memo: dict[tuple[str, str, User], str] = {}

    # client and limits

    def client_address(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.getlist("x-forwarded-for"), self.config.trusted_proxies)

    def limit_address(self, request: Request, endpoint: str) -> None:
        if self.config.rate_limit_enabled:
            retry = self.address_limiter.hit(f"{self.client_address(request)}|{endpoint}")
            if retry is not None:
                raise RateLimited(retry)

    def limit_account(self, email: str) -> None:
        if self.config.rate_limit_enabled:
            retry = self.account_limiter.hit(email.lower())
            if retry is not None:
                raise RateLimited(retry)

    # sessions

    async def resolve(self, request: Request, *, refresh: bool = True, cached: bool = False) -> Resolved:
        """Find the request's session (Bearer first, then cookie), slide its expiry when due (reference 2.11).

        ``cached``: a read-only caller (``/token``, ``/get-session``, the pages) may be answered from the store's
        short-lived session copy; a copy that would lead to a write (expired, refresh due) is read again first."""
        presented = cookies.presented_token(
            self.secret, self.cookie_names, request.headers.get("authorization"), request.headers.get("cookie")
        )
        if presented is None or presented.token is None:
            return Resolved(None)
        now_ms = self.store.now_ms()
        found = self.store.cached_session(presented.token) if cached else None
        if found is not None:
            session = found[0]
            if session.expires_at <= now_ms or (refresh and session.remember and self._refresh_due(session, now_ms)):
                found = None
        if found is None:
            found = await self.store.find_session(presented.token)
            now_ms = self.store.now_ms()
        if found is None:
            return Resolved(None, cookies.clearing_cookies(self.cookie_names))
        session, user = found
        if session.expires_at <= now_ms:
            await self.store.delete_expired_session(session)
            return Resolved(None, cookies.clearing_cookies(self.cookie_names))
        info = SessionInfo(session, user, presented.token)
        remembered = session.remember and not cookies.dont_remember(
            self.secret, self.cookie_names, request.headers.get("cookie")
        )
        if refresh and remembered and self._refresh_due(session, now_ms):
            session = await self.store.extend_session(session, self.config.session_expires_in)
            info = SessionInfo(session, user, presented.token)
            return Resolved(info, self.session_cookies(presented.token, remember=True), refreshed=True)
        return Resolved(info)

    def _refresh_due(self, session: Session, now_ms: int) -> bool:
        config = self.config
        return session.expires_at - config.session_expires_in * 1000 + config.session_update_age * 1000 <= now_ms

    async def require(self, request: Request, *, cached: bool = False) -> Resolved:
        resolved = await self.resolve(request, cached=cached)
        if resolved.info is None:
            raise Unauthorized([("set-cookie", value) for value in resolved.set_cookies])
        return resolved

    async def current_session(self, request: Request) -> SessionInfo | None:
        """For page handlers: the request's live session, or None. Never refreshes or sets cookies."""
        return (await self.resolve(request, refresh=False, cached=True)).info

    def session_cookies(self, token: str, *, remember: bool) -> list[str]:
        return cookies.session_cookies(self.cookie_names, self.secret, token, self.config.session_expires_in, remember)

    async def jwt_for(self, user: User, session: Session) -> str:
        key = await self.keyring.signing_key()
        now = int(self.clock())
        # Within one second the claims of a (session, user) are the same, so is the JWT (EdDSA and RS256 are
        # deterministic; a fresh ES256 signature would differ but verify the same): sign once per second.
        # Only reached after the session was found live; the memo holds one second's worth of entries.
        if now != self._jwt_second:
            self._jwt_memo.clear()
            self._jwt_second = now
        memo_key = (key.kid, session.id, user)
        jwt = self._jwt_memo.get(memo_key)
        if jwt is None:
            claims = tokens.claims_for(user.public(), session.id, now, self.config.jwt_ttl, self.config.origin)
            jwt = self._jwt_memo[memo_key] = tokens.mint(key, claims)
        return jwt

    # responses

    def json(
        self,
        body: Any,
        *,
        set_cookies: list[str] | None = None,
        auth_token: str | None = None,
        auth_jwt: str | None = None,
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> JSONResponse:
        response = JSONResponse(body, status_code=status, headers=extra)
        for value in set_cookies or []:
            response.headers.append("set-cookie", value)
        exposed = []
        if auth_token is not None:
            # The signed value, not URL-encoded (reference 2.6).
            response.headers["set-auth-token"] = cookies.sign(self.secret, auth_token)
            exposed.append("set-auth-token")
        if auth_jwt is not None:
            response.headers["set-auth-jwt"] = auth_jwt
            exposed.append("set-auth-jwt")
        if exposed:
            response.headers["access-control-expose-headers"] = ", ".join(exposed)
        return response


def check(error: IdentityError | None) -> None:
    if error is not None:
        raise error
