"""Better Auth's signed cookies (reference 2.5) and bearer tokens (reference 2.6). Pure functions.

A signed value is ``<value>.<base64(HMAC-SHA256(secret, value))>`` with standard base64 (44 characters, ending in
``=``), URL-encoded in the ``Set-Cookie`` header. Verification splits at the last ``.``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, unquote

SESSION_COOKIE = "better-auth.session_token"
DATA_COOKIE = "better-auth.session_data"
DONT_REMEMBER_COOKIE = "better-auth.dont_remember"
SECURE_PREFIX = "__Secure-"


def _signature(secret: bytes, value: str) -> str:
    return base64.b64encode(hmac.new(secret, value.encode(), hashlib.sha256).digest()).decode()


def sign(secret: bytes, value: str) -> str:
    return f"{value}.{_signature(secret, value)}"


def unsign(secret: bytes, signed: str) -> str | None:
    """The value inside a signed cookie, or None when the signature is missing or wrong."""
    value, dot, signature = signed.rpartition(".")
    if not dot or len(signature) != 44 or not signature.endswith("="):
        return None
    if not hmac.compare_digest(signature, _signature(secret, value)):
        return None
    return value


@dataclass(frozen=True)
class CookieNames:
    session: str
    data: str
    dont_remember: str
    secure: bool

    @classmethod
    def for_base_url(cls, secure: bool) -> CookieNames:
        prefix = SECURE_PREFIX if secure else ""
        return cls(prefix + SESSION_COOKIE, prefix + DATA_COOKIE, prefix + DONT_REMEMBER_COOKIE, secure)


def set_cookie(names: CookieNames, name: str, value: str, max_age: int | None) -> str:
    """One ``Set-Cookie`` header value with Better Auth's attribute order."""
    parts = [f"{name}={quote(value, safe='')}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    parts += ["Path=/", "HttpOnly", "SameSite=Lax"]
    if names.secure:
        parts.append("Secure")
    return "; ".join(parts)


def session_cookies(names: CookieNames, secret: bytes, token: str, max_age: int, remember: bool) -> list[str]:
    """Cookies for a live session; ``remember=False`` gives a browser-session cookie plus ``dont_remember``."""
    headers = [set_cookie(names, names.session, sign(secret, token), max_age if remember else None)]
    if not remember:
        headers.append(set_cookie(names, names.dont_remember, sign(secret, "true"), None))
    return headers


def clearing_cookies(names: CookieNames) -> list[str]:
    return [set_cookie(names, name, "", 0) for name in (names.session, names.data, names.dont_remember)]


def parse_cookie_header(header: str) -> dict[str, str]:
    """Cookie pairs, first occurrence wins (RFC 6265 5.4 orders the most specific path first)."""
    cookies: dict[str, str] = {}
    for chunk in header.split(";"):
        name, eq, value = chunk.strip().partition("=")
        if eq and name and name not in cookies:
            cookies[name] = value.strip().strip('"')
    return cookies


@dataclass(frozen=True)
class Presented:
    """A session token found on a request. ``token`` is None when a value was present but its signature failed:
    such a request simply has no session and gets no clearing cookies (reference 2.6)."""

    token: str | None


def presented_token(
    secret: bytes, names: CookieNames, authorization: str | None, cookie_header: str | None
) -> Presented | None:
    """The session token a request carries: a Bearer token wins over the cookie, as in Better Auth's bearer
    plugin, which rewrites the cookie from the Authorization header before routing."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and credentials:
            if "." not in credentials:
                # A raw session token, as returned in sign-in's JSON: accepted unsigned (reference 2.6).
                return Presented(credentials)
            return Presented(unsign(secret, unquote(credentials)))
    if cookie_header:
        raw = parse_cookie_header(cookie_header).get(names.session)
        if raw:
            return Presented(unsign(secret, unquote(raw)))
    return None


def dont_remember(secret: bytes, names: CookieNames, cookie_header: str | None) -> bool:
    if not cookie_header:
        return False
    raw = parse_cookie_header(cookie_header).get(names.dont_remember)
    return raw is not None and unsign(secret, unquote(raw)) is not None
