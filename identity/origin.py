"""Origin/CSRF checks and callbackURL validation, as Better Auth 1.7.25 does them (reference 2.9). Pure.

Trusted origins are the base URL's origin plus ``IDENTITY_TRUSTED_ORIGINS``; matching is exact on the
origin (scheme, host, port), so a trailing slash or path on the presented value does not matter.

A ``callbackURL`` must also be visible ASCII (no space, control or non-ASCII character), because sign-in copies
it into the ``Location`` header: non-ASCII cannot be a header value (a 500 after the session was created), and
CR/LF would split the header (uvicorn drops the connection; ``urlsplit`` strips tabs and newlines, so the origin
check alone let them through). Such a value is refused like a foreign one (403 ``INVALID_CALLBACK_URL``) rather
than percent-encoded for the client, so the ``url`` in the body and the ``Location`` are exactly what was sent;
clients percent-encode, as ``URL.href`` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from identity.config import origin_of
from identity.errors import IdentityError, bad_request, forbidden

# Better Auth's relative-callback rule: a path, never protocol-relative ("//", "/\\", encoded slashes). Matched
# whole (fullmatch): Python's "$" would also accept a final "\n", which JavaScript's does not.
_RELATIVE = re.compile(r"/(?!/|\\|%2f|%5c)[\w\-.+/@]*(?:\?[\w\-.+/=&%@]*)?", re.ASCII)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADER_SAFE_URL = re.compile(r"[!-~]+")  # visible ASCII: what a Location header carries unchanged


def is_trusted(url: str, trusted: tuple[str, ...], *, allow_relative: bool) -> bool:
    if url.startswith("/"):
        return allow_relative and _RELATIVE.fullmatch(url) is not None
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return False
        origin = origin_of(url)
    except ValueError:
        return False
    return origin in trusted


def _validate(headers: Mapping[str, str], trusted: tuple[str, ...]) -> IdentityError | None:
    presented = headers.get("origin") or headers.get("referer") or ""
    if not presented or presented == "null":
        return forbidden("MISSING_OR_NULL_ORIGIN", "Missing or null Origin")
    if not is_trusted(presented, trusted, allow_relative=False):
        return forbidden("INVALID_ORIGIN", "Invalid origin")
    return None


def check_cookie_origin(method: str, headers: Mapping[str, str], trusted: tuple[str, ...]) -> IdentityError | None:
    """Every state-changing request that carries a Cookie header must come from a trusted origin. Requests
    without cookies (Bearer clients, curl) are not checked: they carry no ambient credentials to abuse."""
    if method in _SAFE_METHODS or "cookie" not in headers:
        return None
    return _validate(headers, trusted)


def check_login_csrf(headers: Mapping[str, str], trusted: tuple[str, ...]) -> IdentityError | None:
    """Sign-in/sign-up: also refuse browser requests without cookies from foreign pages (login CSRF), using
    Fetch Metadata (https://www.w3.org/TR/fetch-metadata/) and any Origin/Referer present."""
    if "cookie" in headers:
        return _validate(headers, trusted)
    site = headers.get("sec-fetch-site", "").strip()
    mode = headers.get("sec-fetch-mode", "").strip()
    dest = headers.get("sec-fetch-dest", "").strip()
    if site or mode or dest:
        if site == "cross-site" and mode == "navigate":
            return forbidden(
                "CROSS_SITE_NAVIGATION_LOGIN_BLOCKED",
                "Cross-site navigation login blocked. This request appears to be a CSRF attack.",
            )
        return _validate(headers, trusted)
    if headers.get("origin") or headers.get("referer"):
        return _validate(headers, trusted)
    return None


def check_callback_url(value: object, trusted: tuple[str, ...]) -> IdentityError | None:
    """``callbackURL`` is read from the raw body before validation, as Better Auth does."""
    if value is None or value == "" or value is False or value == 0:
        return None
    if not isinstance(value, str):
        return bad_request("BAD_REQUEST", "Invalid callbackURL: expected a string")
    if _HEADER_SAFE_URL.fullmatch(value) is None or not is_trusted(value, trusted, allow_relative=True):
        return forbidden("INVALID_CALLBACK_URL", "Invalid callbackURL")
    return None
