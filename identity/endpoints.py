"""The Better Auth endpoints under ``/api/auth`` (reference 2.1-2.7): sign-up, sign-in, sign-out, get-session,
token, jwks, ok. Session management lives in ``session_endpoints.py``.

Order of checks per request mirrors Better Auth: rate limit, media type and JSON, Origin (requests with
cookies) and ``callbackURL``, schema validation, login CSRF (Fetch Metadata), then the handler's own rules.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from identity import bodies, cookies, origin
from identity.errors import IdentityError, bad_request
from identity.keyring import KeyRing
from identity.service import Service, check
from identity.store import UserExists

# Cached by verifiers and load balancers for 5 minutes: a rotated key is published IDENTITY_KEY_PUBLISH_DELAY
# (default 360 s) before it signs, longer than this max-age plus the key-ring refresh, so no verifier meets a
# token whose key is missing from a cached JWKS; retired keys stay published for the JWT TTL plus a margin.
JWKS_CACHE_CONTROL = "public, max-age=300"


async def _login_body(
    request: Request, service: Service, fields: tuple[bodies.Field, ...], record: bool
) -> dict[str, object]:
    body = await bodies.read_body(request)
    check(origin.check_cookie_origin(request.method, request.headers, service.trusted))
    if isinstance(body.value, dict):
        check(origin.check_callback_url(body.value.get("callbackURL"), service.trusted))
    values = bodies.validate(body, fields, record=record)
    check(origin.check_login_csrf(request.headers, service.trusted))
    return values


def _password_length(password: str, *, check_min: bool) -> None:
    length = bodies.js_length(password)
    if check_min and length < 8:
        raise bad_request("PASSWORD_TOO_SHORT", "Password too short")
    if length > 128:
        raise bad_request("PASSWORD_TOO_LONG", "Password too long")


class AuthEndpoints:
    def __init__(self, service: Service) -> None:
        self.s = service

    async def sign_up(self, request: Request) -> Response:
        s = self.s
        s.limit_address(request, "sign-up")
        values = await _login_body(request, s, bodies.SIGN_UP, record=True)
        email = str(values["email"]).lower()
        password = str(values["password"])
        _password_length(password, check_min=True)
        s.limit_account(email)
        if await s.store.find_user_by_email(email) is not None:
            raise _user_exists()
        image = values.get("image")
        try:
            user = await s.store.create_user(
                str(values["name"]),
                email,
                image if isinstance(image, str) else None,
                await s.passwords.hash(password),
            )
        except UserExists:
            raise _user_exists() from None
        remember = values.get("rememberMe") is not False
        _, token = await s.store.create_session(
            user.id, self._expires_in(remember), remember, s.client_address(request), _user_agent(request)
        )
        return s.json(
            {"token": token, "user": user.public()},
            set_cookies=s.session_cookies(token, remember=remember),
            auth_token=token,
        )

    async def sign_in(self, request: Request) -> Response:
        s = self.s
        s.limit_address(request, "sign-in")
        values = await _login_body(request, s, bodies.SIGN_IN, record=False)
        email = str(values["email"])
        password = str(values["password"])
        if not bodies.is_email(email):
            raise bad_request("INVALID_EMAIL", "Invalid email")
        _password_length(password, check_min=False)
        email = email.lower()
        s.limit_account(email)
        user = await s.store.find_user_by_email(email)
        if user is None:
            # Spend one hash anyway: an unknown address must cost what a wrong password costs.
            await s.passwords.hash(password)
            raise _invalid_credentials()
        if not await s.passwords.verify(user.password_hash, password):
            raise _invalid_credentials()
        if s.passwords.needs_rehash(user.password_hash):
            await s.store.set_password_hash(user.id, await s.passwords.hash(password))
        remember = values.get("rememberMe") is not False
        _, token = await s.store.create_session(
            user.id, self._expires_in(remember), remember, s.client_address(request), _user_agent(request)
        )
        callback = values.get("callbackURL")
        body: dict[str, object] = {"redirect": bool(callback), "token": token}
        extra = None
        if callback:
            body["url"] = callback
            extra = {"location": str(callback)}
        body["user"] = user.public()
        return s.json(body, set_cookies=s.session_cookies(token, remember=remember), auth_token=token, extra=extra)

    def _expires_in(self, remember: bool) -> int:
        config = self.s.config
        return config.session_expires_in if remember else config.short_session_expires_in

    async def sign_out(self, request: Request) -> Response:
        s = self.s
        check(origin.check_cookie_origin(request.method, request.headers, s.trusted))
        resolved = await s.resolve(request, refresh=False)
        if resolved.info is not None:
            await s.store.end_sessions([resolved.info.session])
        return s.json({"success": True}, set_cookies=cookies.clearing_cookies(s.cookie_names))

    async def get_session(self, request: Request) -> Response:
        s = self.s
        no_store = {"cache-control": "no-store", "pragma": "no-cache"}
        if request.method == "POST":
            raise IdentityError(
                405,
                "METHOD_NOT_ALLOWED_DEFER_SESSION_REQUIRED",
                "POST method requires deferSessionRefresh to be enabled in session config",
            )
        disable_refresh = request.query_params.get("disableRefresh", "false").lower() not in ("false", "0")
        resolved = await s.resolve(request, refresh=not disable_refresh, cached=True)
        if resolved.info is None:
            return s.json(None, set_cookies=resolved.set_cookies, extra=no_store)
        info = resolved.info
        return s.json(
            {"session": info.session.public(info.token), "user": info.user.public()},
            set_cookies=resolved.set_cookies,
            auth_token=info.token if resolved.refreshed else None,
            auth_jwt=await s.jwt_for(info.user, info.session),
            extra=no_store,
        )

    async def token(self, request: Request) -> Response:
        resolved = await self.s.require(request, cached=True)
        assert resolved.info is not None
        jwt = await self.s.jwt_for(resolved.info.user, resolved.info.session)
        return self.s.json(
            {"token": jwt},
            set_cookies=resolved.set_cookies,
            auth_token=resolved.info.token if resolved.refreshed else None,
        )

    async def ok(self, request: Request) -> Response:
        return JSONResponse({"ok": True})


class Jwks:
    """``GET /jwks`` as a bare ASGI app: the body changes only with the published keys (the key ring serializes it
    once per key set), so the header list is rebuilt only when the body object changes and sent as-is otherwise."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring
        self._body = b""
        self._headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self._keyring.jwks()
        if body is not self._body:
            self._headers = [
                (b"cache-control", JWKS_CACHE_CONTROL.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ]
            self._body = body
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": body})


def _user_agent(request: Request) -> str:
    return request.headers.get("user-agent", "")


def _user_exists() -> IdentityError:
    return IdentityError(422, "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL", "User already exists. Use another email.")


def _invalid_credentials() -> IdentityError:
    return IdentityError(401, "INVALID_EMAIL_OR_PASSWORD", "Invalid email or password")
