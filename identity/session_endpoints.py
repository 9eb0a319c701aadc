"""Session management (Better Auth's list-sessions, revoke-session(s), revoke-other-sessions, change-password)
and the revocation feed for gateways (``GET /api/auth/revocations``).

``list-sessions`` differs from Better Auth in one visible way: the database keeps only token hashes, so the
``token`` of a session other than the caller's is the session id, which ``revoke-session`` accepts as well.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from identity import bodies, origin
from identity.errors import IdentityError, RouteNotFound, bad_request, forbidden
from identity.service import Resolved, Service, check


class SessionEndpoints:
    def __init__(self, service: Service) -> None:
        self.s = service

    async def _authorized(
        self, request: Request, *, body: tuple[bodies.Field, ...] | None = None
    ) -> tuple[Resolved, dict[str, object]]:
        """Origin check, body (when the endpoint takes one), then the session (Better Auth runs the session
        middleware after validation)."""
        values: dict[str, object] = {}
        parsed = await bodies.read_body(request) if body is not None else None
        check(origin.check_cookie_origin(request.method, request.headers, self.s.trusted))
        if parsed is not None and body is not None:
            values = bodies.validate(parsed, body)
        return await self.s.require(request), values

    async def list_sessions(self, request: Request) -> Response:
        resolved = await self.s.require(request)
        info = resolved.info
        assert info is not None
        # freshSessionMiddleware: listing devices needs a session created within freshAge (reference 2.11).
        if self.s.store.now_ms() - info.session.created_at >= self.s.config.session_fresh_age * 1000:
            raise forbidden("SESSION_NOT_FRESH", "Session is not fresh")
        listed = [
            session.public(info.token if session.id == info.session.id else session.id)
            for session in await self.s.store.list_sessions(info.user.id)
        ]
        return self.s.json(listed, set_cookies=resolved.set_cookies)

    async def revoke_session(self, request: Request) -> Response:
        resolved, values = await self._authorized(request, body=bodies.REVOKE_SESSION)
        assert resolved.info is not None
        target = await self.s.store.find_user_session(resolved.info.user.id, str(values["token"]))
        if target is not None:
            await self.s.store.end_sessions([target])
        return self.s.json({"status": True}, set_cookies=resolved.set_cookies)

    async def revoke_sessions(self, request: Request) -> Response:
        resolved, _ = await self._authorized(request)
        assert resolved.info is not None
        await self.s.store.end_sessions(await self.s.store.user_sessions(resolved.info.user.id))
        return self.s.json({"status": True}, set_cookies=resolved.set_cookies)

    async def revoke_other_sessions(self, request: Request) -> Response:
        resolved, _ = await self._authorized(request)
        info = resolved.info
        assert info is not None
        others = [s for s in await self.s.store.user_sessions(info.user.id) if s.id != info.session.id]
        await self.s.store.end_sessions(others)
        return self.s.json({"status": True}, set_cookies=resolved.set_cookies)

    async def change_password(self, request: Request) -> Response:
        s = self.s
        s.limit_address(request, "change-password")
        resolved, values = await self._authorized(request, body=bodies.CHANGE_PASSWORD)
        info = resolved.info
        assert info is not None
        new_password = str(values["newPassword"])
        length = bodies.js_length(new_password)
        if length < 8:
            raise bad_request("PASSWORD_TOO_SHORT", "Password too short")
        if length > 128:
            raise bad_request("PASSWORD_TOO_LONG", "Password too long")
        s.limit_account(info.user.email)
        if not await s.passwords.verify(info.user.password_hash, str(values["currentPassword"])):
            raise bad_request("INVALID_PASSWORD", "Invalid password")
        await s.store.set_password_hash(info.user.id, await s.passwords.hash(new_password))
        if values.get("revokeOtherSessions") is not True:
            return s.json({"token": None, "user": info.user.public()}, set_cookies=resolved.set_cookies)
        # Better Auth ends every session, the caller's included, and starts a fresh one for the caller.
        await s.store.end_sessions(await s.store.user_sessions(info.user.id))
        _, token = await s.store.create_session(
            info.user.id,
            s.config.session_expires_in,
            True,
            s.client_address(request),
            request.headers.get("user-agent", ""),
        )
        return s.json(
            {"token": token, "user": info.user.public()},
            set_cookies=s.session_cookies(token, remember=True),
            auth_token=token,
        )

    async def revocations(self, request: Request) -> Response:
        """``{"revoked": [{"sid", "exp"}], "cursor"}``: sessions ended early whose JWTs may still be unexpired.
        Poll with ``?since=<cursor>``; without it the whole live list comes back. Entries may repeat.

        With ``IDENTITY_REVOCATION_FEED_TOKEN`` set, only ``Authorization: Bearer <token>`` gets an answer;
        anyone else gets the empty 404 of an unknown path, before the query is even read."""
        expected = self.s.config.revocation_feed_token
        if expected is not None:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            # Header values arrive as latin-1 text; compare bytes, in constant time (compare_digest refuses
            # non-ASCII str).
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode("latin-1"), expected.encode()):
                raise RouteNotFound()
        raw = request.query_params.get("since")
        since: int | None = None
        if raw:
            # isascii: str.isdigit() is also true for "²" (int() fails) and "٣" (int() reads 3).
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
                raise IdentityError(400, "INVALID_CURSOR", "Invalid cursor")
            since = int(raw)
        entries, cursor, more = await self.s.store.revocations_since(since)
        body: dict[str, object] = {"revoked": [{"sid": sid, "exp": exp} for sid, exp in entries], "cursor": str(cursor)}
        if more:
            body["more"] = True
        return JSONResponse(body, headers={"cache-control": "no-store"})
