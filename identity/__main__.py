"""Command line: ``python -m identity [serve|migrate|rotate-key|revoke-user EMAIL]`` (``serve`` by default)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence

from identity.config import Config, ConfigError, load_config
from identity.db import create_engine, migrate
from identity.keyring import KeyRing
from identity.store import Store, iso

ENVIRONMENT_HELP = """environment variables (defaults in parentheses; see identity/config.py):
  IDENTITY_DATABASE_URL        (sqlite+aiosqlite:///data/identity.db) SQLAlchemy URL; postgres:// accepted
  IDENTITY_SECRET              (required, >= 32 chars) cookie signing and key encryption secret
  IDENTITY_ENV                 (production) or development: allows a missing secret (public dev secret)
  IDENTITY_BASE_URL            (http://127.0.0.1:8000) public URL: JWT iss/aud, trusted origin, https => Secure
  IDENTITY_TRUSTED_ORIGINS     (empty) more trusted origins, comma-separated
  IDENTITY_JWT_ALG             (EdDSA) or ES256 or RS256
  IDENTITY_JWT_TTL             (900) JWT lifetime in seconds
  IDENTITY_KEY_PUBLISH_DELAY   (360) seconds a rotated key is published before it signs
  IDENTITY_TRUSTED_PROXIES     (empty) IPs/CIDRs whose X-Forwarded-For is believed
  IDENTITY_RATE_LIMIT          (on) or off
  IDENTITY_RATE_LIMIT_WINDOW   (60) seconds
  IDENTITY_RATE_LIMIT_PER_ADDRESS (10) sign-in/sign-up/change-password requests per window per address
  IDENTITY_RATE_LIMIT_PER_ACCOUNT (5) attempts per window per email address
  IDENTITY_HASH_CONCURRENCY    (CPUs - 1, at least 1) password hashes running at once
  IDENTITY_HASH_NICE           (10) nice increment of the hashing threads (Linux, 0..19, 0 = off)
  IDENTITY_REVOCATION_FEED_TOKEN (empty: public) >= 32 chars; GET /api/auth/revocations then needs
                               "Authorization: Bearer <token>" (else an empty 404); give gateways the same value
  IDENTITY_SESSION_CACHE_MS    (1000) ms /token and /get-session may reuse a looked-up session (0..5000, 0 = off)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m identity",
        description="Identity service: Better Auth-compatible sign-up/sign-in, sessions, JWTs and JWKS.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the HTTP server (the default command)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8001, help="port to bind (default 8001)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--migrate", action="store_true", help="apply database migrations before serving")
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    commands.add_parser("migrate", help="apply database migrations (IDENTITY_DATABASE_URL)")
    commands.add_parser(
        "rotate-key",
        help="create a new signing key: published in the JWKS now, signing after IDENTITY_KEY_PUBLISH_DELAY",
    )
    revoke = commands.add_parser(
        "revoke-user", help="end every session of a user and publish them in the revocation feed"
    )
    revoke.add_argument("email", help="the user's email address")
    return parser


def _serve(config: Config, args: argparse.Namespace) -> int:
    import uvicorn

    from identity.server import HTTP_PROTOCOL, log_config

    if args.migrate:
        migrate(config.database_url)
    uvicorn.run(
        "identity.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        # An edge service decides itself whose X-Forwarded-For to believe (IDENTITY_TRUSTED_PROXIES).
        proxy_headers=False,
        server_header=False,
        date_header=True,
        log_level=args.log_level,
        # Applied in every worker (identity/server.py); identity.accesslog writes one JSON line per request, so
        # uvicorn's own access log, which would repeat it, is off.
        log_config=log_config(args.log_level),
        access_log=False,
        http=HTTP_PROTOCOL,
    )
    return 0


async def _rotate(config: Config) -> int:
    engine = create_engine(config.database_url)
    try:
        ring = KeyRing(engine, config, time.time)
        key = await ring.rotate()
    finally:
        await engine.dispose()
    print(f"new key {key.kid} ({key.alg}): published now, signs from {iso(key.signs_from)}")
    return 0


async def _revoke_user(config: Config, email: str, clock: Callable[[], float] = time.time) -> int:
    engine = create_engine(config.database_url)
    try:
        store = Store(engine, clock, config.jwt_ttl)
        user = await store.find_user_by_email(email)
        if user is None:
            print(f"no user with email {email!r}", file=sys.stderr)
            return 1
        count = await store.end_sessions(await store.user_sessions(user.id))
    finally:
        await engine.dispose()
    print(f"revoked {count} session(s) of {user.email}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "serve")
    args = _parser().parse_args(args_list)
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(config, args)
    if args.command == "migrate":
        migrate(config.database_url)
        print("identity schema is up to date")
        return 0
    if args.command == "rotate-key":
        return asyncio.run(_rotate(config))
    return asyncio.run(_revoke_user(config, args.email))


if __name__ == "__main__":
    sys.exit(main())
