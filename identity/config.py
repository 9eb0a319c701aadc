"""Identity service configuration, read once from the environment.

Every setting, its default and its meaning (the README copies this table):

``IDENTITY_DATABASE_URL``      default ``sqlite+aiosqlite:///data/identity.db`` (relative to the working directory).
                               ``postgresql://``, ``postgres://`` and ``postgresql+asyncpg://`` are accepted.
``IDENTITY_SECRET``            required, at least 32 characters. Signs session cookies (HMAC-SHA256, as Better Auth
                               does) and, through HKDF, encrypts signing keys at rest. Refused when missing or short,
                               unless ``IDENTITY_ENV=development``, where a fixed, public dev secret is used with a
                               loud warning.
``IDENTITY_ENV``               ``production`` (default) or ``development``.
``IDENTITY_BASE_URL``          default ``http://127.0.0.1:8000`` (the gateway's public URL). Its origin is the JWT
                               ``iss`` and ``aud`` and a trusted origin; ``https://`` turns on ``Secure`` cookies
                               with the ``__Secure-`` prefix.
``IDENTITY_TRUSTED_ORIGINS``   default empty. Comma-separated extra origins trusted by the Origin/CSRF checks and
                               for ``callbackURL``.
``IDENTITY_JWT_ALG``           ``EdDSA`` (default, Ed25519), ``ES256`` or ``RS256``.
``IDENTITY_JWT_TTL``           default ``900``: seconds from ``iat`` to ``exp`` (60..86400).
``IDENTITY_KEY_PUBLISH_DELAY`` default ``360``: seconds a key from ``rotate-key`` is published in the JWKS before it
                               signs (>= the JWKS ``max-age`` of 300 s plus the key-ring refresh of 30 s).
``IDENTITY_TRUSTED_PROXIES``   default empty. Comma-separated IPs/CIDRs whose ``X-Forwarded-For`` is believed
                               (rightmost untrusted address wins). Empty: the socket peer is the client.
``IDENTITY_RATE_LIMIT``        ``on`` (default) or ``off``: limits on sign-in, sign-up and change-password.
``IDENTITY_RATE_LIMIT_WINDOW`` default ``60`` seconds.
``IDENTITY_RATE_LIMIT_PER_ADDRESS`` default ``10``: requests per window per client address and endpoint.
``IDENTITY_RATE_LIMIT_PER_ACCOUNT`` default ``5``: attempts per window per email address.
``IDENTITY_HASH_CONCURRENCY``  default ``max(1, CPUs - 1)``: password hashes running at once, so a burst of
                               sign-ins leaves a core to the event loop (issue 3, Speed).
``IDENTITY_HASH_NICE``         default ``10`` (0..19; 0 turns it off): how much the hashing threads lower their own
                               priority (Linux nice, per thread), so requests win the CPU over a burst of
                               sign-ins and the sign-ins absorb the wait (issue 7; passwords.py).
``IDENTITY_REVOCATION_FEED_TOKEN`` default empty. When set (at least 32 visible ASCII characters), the revocation
                               feed ``GET /api/auth/revocations`` answers only requests with ``Authorization:
                               Bearer <token>`` (compared in constant time) and is an empty 404, like any unknown
                               path, to everyone else: it lists session ids and when they signed out, and the public
                               ``/api/auth/*`` route of the gateway reaches it. Give the gateways the same value (an
                               issuer's ``revocation_token_env``). Empty: the feed is public.
``IDENTITY_SESSION_CACHE_MS``  default ``1000`` (0..5000; 0 turns it off): how long ``/token``, ``/get-session`` and
                               the pages may answer from this process's copy of a session instead of the database.
                               Ends in this process invalidate it at once; another replica's copy may outlive a
                               revocation by this long, and gateways refuse its JWTs by ``sid`` (sessioncache.py).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Environment = Literal["production", "development"]
JwtAlgorithm = Literal["EdDSA", "ES256", "RS256"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/identity.db"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
MIN_SECRET_LENGTH = 32
# Public on purpose: it only ever protects a developer's laptop, and it is refused outside development.
DEV_SECRET = "identity-development-secret-do-not-use-in-production"  # noqa: S105
JWT_ALGORITHMS: tuple[JwtAlgorithm, ...] = ("EdDSA", "ES256", "RS256")
FEED_TOKEN_ENV = "IDENTITY_REVOCATION_FEED_TOKEN"  # noqa: S105 (the variable's name, not a secret)

logger = logging.getLogger("identity")


class ConfigError(ValueError):
    """Every configuration problem found, reported at once."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid identity configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    database_url: str
    secret: str
    env: Environment
    base_url: str
    trusted_origins: tuple[str, ...]
    jwt_alg: JwtAlgorithm
    jwt_ttl: int
    key_publish_delay: int
    trusted_proxies: tuple[IPNetwork, ...]
    rate_limit_enabled: bool
    rate_limit_window: int
    rate_limit_per_address: int
    rate_limit_per_account: int
    hash_concurrency: int
    revocation_feed_token: str | None = field(default=None, repr=False)
    session_cache_ms: int = 1000
    hash_nice: int = 10
    # Better Auth's session settings (reference 2.11); not configurable, listed here so code reads them by name.
    session_expires_in: int = 7 * 24 * 3600
    session_update_age: int = 24 * 3600
    session_fresh_age: int = 24 * 3600
    short_session_expires_in: int = 24 * 3600  # rememberMe: false

    @property
    def origin(self) -> str:
        """The base URL's origin: JWT ``iss`` and ``aud`` (reference 2.7) and the first trusted origin."""
        return origin_of(self.base_url)

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.lower().startswith("https://")

    @property
    def all_trusted_origins(self) -> tuple[str, ...]:
        return (self.origin, *self.trusted_origins)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` with the default port dropped, like WHATWG ``URL.origin``."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not an integer")
        return default
    if not low <= value <= high:
        problems.append(f"{name}={value} is outside {low}..{high}")
    return value


def _http_origin(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def load_config(environ: Mapping[str, str]) -> Config:
    """Parse the environment into a :class:`Config`; raise :class:`ConfigError` listing every problem."""
    problems: list[str] = []

    env_raw = environ.get("IDENTITY_ENV", "production").strip().lower() or "production"
    env: Environment = "production"
    if env_raw == "development":
        env = "development"
    elif env_raw != "production":
        problems.append(f"IDENTITY_ENV={env_raw!r} must be 'production' or 'development'")

    secret = environ.get("IDENTITY_SECRET", "")
    if len(secret) < MIN_SECRET_LENGTH:
        if env == "development":
            logger.warning(
                "IDENTITY_SECRET is %s: using the PUBLIC development secret. Never run like this in production.",
                "missing" if not secret else "too short",
            )
            secret = DEV_SECRET
        else:
            state = "not set" if not secret else f"{len(secret)} characters"
            problems.append(
                f"IDENTITY_SECRET is {state}; at least {MIN_SECRET_LENGTH} are required "
                "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
    elif len(set(secret)) < 8:
        problems.append("IDENTITY_SECRET has fewer than 8 distinct characters; use a random secret")

    base_url = environ.get("IDENTITY_BASE_URL", "").strip() or DEFAULT_BASE_URL
    if not _http_origin(base_url):
        problems.append(f"IDENTITY_BASE_URL={base_url!r} must be an absolute http(s) URL")

    trusted: list[str] = []
    for item in environ.get("IDENTITY_TRUSTED_ORIGINS", "").split(","):
        item = item.strip()
        if not item:
            continue
        if _http_origin(item):
            trusted.append(origin_of(item))
        else:
            problems.append(f"IDENTITY_TRUSTED_ORIGINS entry {item!r} must be an http(s) origin")

    alg_raw = environ.get("IDENTITY_JWT_ALG", "").strip() or "EdDSA"
    jwt_alg: JwtAlgorithm = "EdDSA"
    for candidate in JWT_ALGORITHMS:
        if candidate == alg_raw:
            jwt_alg = candidate
            break
    else:
        problems.append(f"IDENTITY_JWT_ALG={alg_raw!r} must be one of {', '.join(JWT_ALGORITHMS)}")

    proxies: list[IPNetwork] = []
    for item in environ.get("IDENTITY_TRUSTED_PROXIES", "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            problems.append(f"IDENTITY_TRUSTED_PROXIES entry {item!r} is not an IP address or CIDR")

    feed_token = environ.get(FEED_TOKEN_ENV, "").strip() or None
    if feed_token is not None:
        if len(feed_token) < MIN_SECRET_LENGTH:
            problems.append(
                f"{FEED_TOKEN_ENV} is {len(feed_token)} characters; at least {MIN_SECRET_LENGTH} are required "
                "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        elif not all("!" <= ch <= "~" for ch in feed_token):
            problems.append(f"{FEED_TOKEN_ENV} must be visible ASCII (it travels in an Authorization header)")
        elif len(set(feed_token)) < 8:
            problems.append(f"{FEED_TOKEN_ENV} has fewer than 8 distinct characters; use a random token")

    rate_raw = environ.get("IDENTITY_RATE_LIMIT", "on").strip().lower() or "on"
    if rate_raw not in ("on", "off", "1", "0", "true", "false"):
        problems.append(f"IDENTITY_RATE_LIMIT={rate_raw!r} must be 'on' or 'off'")

    config = Config(
        database_url=environ.get("IDENTITY_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
        secret=secret,
        env=env,
        base_url=base_url,
        trusted_origins=tuple(trusted),
        jwt_alg=jwt_alg,
        jwt_ttl=_int(environ, "IDENTITY_JWT_TTL", 900, 60, 86400, problems),
        key_publish_delay=_int(environ, "IDENTITY_KEY_PUBLISH_DELAY", 360, 0, 86400, problems),
        trusted_proxies=tuple(proxies),
        rate_limit_enabled=rate_raw in ("on", "1", "true"),
        rate_limit_window=_int(environ, "IDENTITY_RATE_LIMIT_WINDOW", 60, 1, 86400, problems),
        rate_limit_per_address=_int(environ, "IDENTITY_RATE_LIMIT_PER_ADDRESS", 10, 1, 1_000_000, problems),
        rate_limit_per_account=_int(environ, "IDENTITY_RATE_LIMIT_PER_ACCOUNT", 5, 1, 1_000_000, problems),
        hash_concurrency=_int(
            environ, "IDENTITY_HASH_CONCURRENCY", max(1, (os.cpu_count() or 2) - 1), 1, 1024, problems
        ),
        revocation_feed_token=feed_token,
        session_cache_ms=_int(environ, "IDENTITY_SESSION_CACHE_MS", 1000, 0, 5000, problems),
        hash_nice=_int(environ, "IDENTITY_HASH_NICE", 10, 0, 19, problems),
    )
    if problems:
        raise ConfigError(problems)
    return config
