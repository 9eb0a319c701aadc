"""The gateway's configuration: one TOML file plus the environment, parsed once into frozen dataclasses.

Every problem is collected and reported at once (:class:`ConfigError`); the gateway never starts with a
configuration it does not fully understand, so an unknown key anywhere is an error, not a warning.

    [server]                          # optional; every key optional
    realm = "gateway"                 # RFC 6750 realm in WWW-Authenticate (printable ASCII, no '"' or '\\')
    leeway = 30                       # seconds of clock skew allowed on exp / nbf / iat (0..300)
    trusted_proxies = []              # IPs or CIDRs whose X-Forwarded-* headers are believed
    token_cache_size = 100000         # verified tokens remembered until their exp (0 disables the cache)
    max_token_bytes = 8192            # longer bearer tokens are refused without parsing
    fast_lane = true                  # bodiless requests whose token is cached or whose key is at hand are
                                      # forwarded from the server's callbacks, without an ASGI task
                                      # (gateway/express.py); false: every request takes the ASGI path (the
                                      # same answers, more CPU)
    timeout = 30.0                    # default upstream response timeout, seconds (a route's `timeout`)
    connect_timeout = 5.0             # default upstream connect timeout, seconds
    max_body_bytes = 10485760         # default request body limit, bytes (0 = unlimited)
    min_body_rate = 500               # default minimum request body rate, bytes/s, once `timeout` has passed
                                      # (0 = off): the body must arrive by timeout + received / min_body_rate
                                      # seconds after it started, as Apache mod_reqtimeout's MinRate (a body
                                      # trickled a byte at a time never trips the idle timeout alone)

    [health]                          # optional; paths the gateway answers itself, before any route
    livez_path = "/livez"
    readyz_path = "/readyz"
    metrics_path = "/metrics"         # "" disables the Prometheus endpoint on this listener

    [proof]                           # optional
    secret_env = "EDGE_PROOF_SECRET"  # environment variable holding the proof secret(s) (gateway/proof.py)

    [[issuers]]                       # zero or more; needed by any route that is not public
    issuer = "https://id.example"     # required; exact match against the token's iss; unique
    audiences = ["https://api"]       # required, non-empty; the token's aud must contain one of them
    jwks_url = "https://id.example/jwks"  # required; http(s) URL; keys come only from here
    algorithms = ["EdDSA", "ES256", "RS256"]  # asymmetric only: RS/PS 256/384/512, ES256/384/512, ES256K, EdDSA
    jwks_ttl = 300.0                  # seconds keys are fresh; a Cache-Control max-age may shorten it
    jwks_stale_for = 3600.0           # seconds past the TTL that the last good keys keep serving while fetches fail
    jwks_timeout = 5.0                # seconds for one whole JWKS fetch
    jwks_max_bytes = 262144           # bytes; a bigger JWKS response is refused
    jwks_refetch_cooldown = 10.0      # seconds between fetches triggered by unknown kids or retries after failure
    revocation_url = "https://id.example/api/auth/revocations"  # optional; the issuer's revocation feed
                                      # (gateway/revocation.py). Absent: tokens are plain JWTs, never revoked.
                                      # The other revocation_* keys are allowed only with it.
    revocation_token_env = "IDENTITY_REVOCATION_FEED_TOKEN"  # optional; an environment variable holding the
                                      # feed's token (identity's IDENTITY_REVOCATION_FEED_TOKEN), sent as
                                      # "Authorization: Bearer" on every poll. Named but unset or empty: an error.
    revocation_poll_interval = 1.0    # seconds between polls (issue 9: revoked within 2 s on every replica)
    revocation_timeout = 2.0          # seconds for one whole feed request
    revocation_max_bytes = 4194304    # bytes; a bigger feed response is refused
    revocation_max_entries = 1000000  # revoked sessions remembered at once; a feed that would exceed it is refused
    revocation_stale_after = 10.0     # seconds without a complete poll after which the list is out of date
    revocation_on_stale = "refuse"    # refuse | accept: what an out-of-date list means for tokens with a sid.
                                      # refuse (default, fail closed): such tokens get 503 + Retry-After and
                                      # /readyz answers 503, so a revoked session never passes unnoticed.
                                      # accept: keep serving with the last known list (still enforced); only
                                      # the metrics show it. Either way the last known list is never dropped.

    [[routes]]                        # matched in file order; the first match wins; no match is 404
    path = "/api/{user_id}/{rest:path}"  # required; Starlette template: {name}, {name:str}, {name:int}, {name:path}
    upstream = "http://127.0.0.1:8002"   # required; an origin (scheme, host, port); the path is forwarded as is
    auth = "owner"                    # required; public | authenticated | owner (owner: path user_id == sub)
    methods = ["GET", "POST"]         # optional; default all; GET implies HEAD
    issuers = ["https://id.example"]  # optional; default every issuer; not allowed on public routes
    timeout = 30.0                    # optional; default [server].timeout
    connect_timeout = 5.0             # optional; default [server].connect_timeout
    max_body_bytes = 10485760         # optional; default [server].max_body_bytes (0 = unlimited)
    min_body_rate = 500               # optional; default [server].min_body_rate (0 = off)
    forward_token = false             # optional; forward the client's Authorization header upstream.
                                      # Default: true on public routes (the gateway does not consume it
                                      # there), false on authenticated/owner routes.
    required_claims = { email_verified = true }  # optional; claim -> required value (string, integer or
                                      # boolean; a list-valued claim must contain it); mismatch is 403

The environment supplies the proof secret(s): ``EDGE_PROOF_SECRET`` (or ``[proof].secret_env``), parsed by
:func:`gateway.proof.parse_secrets` (comma-separated, each at least 32 bytes), and each issuer's revocation feed
token, from the variable its ``revocation_token_env`` names (visible ASCII; surrounding blanks are dropped).
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from gateway import proof
from gateway.errors import UnsafePath
from gateway.routing import TemplateError, canonical_path, compile_template

AuthMode = Literal["public", "authenticated", "owner"]
AUTH_MODES: tuple[AuthMode, ...] = ("public", "authenticated", "owner")
StalePolicy = Literal["refuse", "accept"]
STALE_POLICIES: tuple[StalePolicy, ...] = ("refuse", "accept")
DEFAULT_ALGORITHMS = ("EdDSA", "ES256", "RS256")
#: Asymmetric JWS algorithms PyJWT implements (RFC 7518 §3.1, RFC 8037). HS* and "none" are never accepted:
#: a symmetric algorithm would make a public JWKS key an HMAC secret (algorithm confusion, RFC 8725 §2.1).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512", "EdDSA"}
)
_SYMMETRIC = frozenset({"HS256", "HS384", "HS512", "none"})
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*\Z")
ClaimValue = str | int | bool


class ConfigError(Exception):
    """Every problem found in a configuration, so an operator fixes them in one go."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid gateway configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_ttl: float = 300.0
    jwks_stale_for: float = 3600.0
    jwks_timeout: float = 5.0
    jwks_max_bytes: int = 262_144
    jwks_refetch_cooldown: float = 10.0
    revocation_url: str | None = None
    revocation_poll_interval: float = 1.0
    revocation_timeout: float = 2.0
    revocation_max_bytes: int = 4 * 1024 * 1024
    revocation_max_entries: int = 1_000_000
    revocation_stale_after: float = 10.0
    revocation_on_stale: StalePolicy = "refuse"
    #: The value of the variable ``revocation_token_env`` names (never shown in a repr: configurations get logged).
    revocation_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RouteConfig:
    path: str
    upstream: str
    auth: AuthMode
    methods: tuple[str, ...] | None = None
    issuers: tuple[str, ...] | None = None
    timeout: float = 30.0
    connect_timeout: float = 5.0
    max_body_bytes: int | None = 10_485_760
    min_body_rate: int | None = 500
    forward_token: bool = False
    required_claims: Mapping[str, ClaimValue] = field(default_factory=dict)


@dataclass(frozen=True)
class GatewayConfig:
    issuers: tuple[IssuerConfig, ...]
    routes: tuple[RouteConfig, ...]
    proof_secrets: tuple[bytes, ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    realm: str = "gateway"
    leeway: int = 30
    livez_path: str = "/livez"
    readyz_path: str = "/readyz"
    metrics_path: str | None = "/metrics"
    token_cache_size: int = 100_000
    max_token_bytes: int = 8192
    fast_lane: bool = True

    def issuer(self, name: str) -> IssuerConfig:
        for issuer in self.issuers:
            if issuer.issuer == name:
                return issuer
        raise KeyError(name)


def load_config(path: str | Path, environ: Mapping[str, str]) -> GatewayConfig:
    """Read and validate a TOML file. Raises :class:`ConfigError` (also for unreadable or invalid TOML)."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return parse_config(data, environ)


class _Reader:
    """Typed access to one TOML table that records problems instead of raising."""

    def __init__(self, data: Any, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not isinstance(data, dict):
            self.problem(None, "must be a table")

    def problem(self, key: str | None, message: str) -> None:
        location = self.where if key is None else (f"{self.where}.{key}" if self.where else key)
        self.problems.append(f"{location}: {message}")

    def has(self, key: str) -> bool:
        self.seen.add(key)
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if not self.has(key):
            if required:
                self.problem(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, str):
            self.problem(key, f"must be a string, not {_type(value)}")
            return default
        return value

    def number(self, key: str, default: float, *, low: float, high: float) -> float:
        if not self.has(key):
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problem(key, f"must be a number, not {_type(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"must be between {low:g} and {high:g}, not {value:g}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        if not self.has(key):
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be an integer, not {_type(value)}")
            return default
        if not low <= value <= high:
            self.problem(key, f"must be between {low} and {high}, not {value}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, not {_type(value)}")
            return default
        return value

    def strings(self, key: str, *, required: bool = False, nonempty: bool = False) -> tuple[str, ...] | None:
        if not self.has(key):
            if required:
                self.problem(key, "is required")
            return None
        value = self.data[key]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(key, "must be a list of strings")
            return None
        if nonempty and not value:
            self.problem(key, "must not be empty")
            return None
        if any(not item for item in value):
            self.problem(key, "must not contain empty strings")
            return None
        if len(set(value)) != len(value):
            self.problem(key, "must not contain duplicates")
            return None
        return tuple(value)

    def finish(self) -> None:
        for key in sorted(set(self.data) - self.seen):
            self.problem(key, "unknown key")


def _type(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _http_url(reader: _Reader, key: str, *, origin: bool) -> str | None:
    value = reader.string(key, required=True)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        reader.problem(key, f"is not a valid URL: {value!r}")
        return None
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem(key, f"must be an http:// or https:// URL with a host, not {value!r}")
        return None
    if parts.username is not None or parts.password is not None:
        reader.problem(key, "must not contain credentials")
        return None
    if parts.fragment or any(ch.isspace() or not ch.isprintable() for ch in value):
        reader.problem(key, f"is not a valid URL: {value!r}")
        return None
    if origin:
        if parts.path not in ("", "/") or parts.query:
            reader.problem(key, f"must be an origin (scheme://host[:port]) without path or query, not {value!r}")
            return None
        return f"{parts.scheme}://{parts.netloc}"
    return value


def _realm(reader: _Reader) -> str:
    realm = reader.string("realm", "gateway")
    if realm is None:
        return "gateway"
    if not realm or any(not (" " <= ch <= "~") or ch in '"\\' for ch in realm):
        reader.problem("realm", "must be non-empty printable ASCII without '\"' or '\\'")
        return "gateway"
    return realm


def _algorithms(reader: _Reader) -> tuple[str, ...]:
    algorithms = reader.strings("algorithms", nonempty=True)
    if algorithms is None:
        return DEFAULT_ALGORITHMS
    for algorithm in algorithms:
        if algorithm in _SYMMETRIC or algorithm.lower() == "none" or algorithm.upper().startswith("HS"):
            reader.problem("algorithms", f"{algorithm!r} is symmetric or unsigned; only asymmetric algorithms")
        elif algorithm not in ASYMMETRIC_ALGORITHMS:
            reader.problem(
                "algorithms", f"unknown algorithm {algorithm!r} (use {', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
            )
    return algorithms


def _issuer(data: Any, where: str, problems: list[str], environ: Mapping[str, str]) -> IssuerConfig | None:
    reader = _Reader(data, where, problems)
    before = len(problems)
    issuer = reader.string("issuer", required=True)
    if issuer is not None and not issuer:
        reader.problem("issuer", "must not be empty")
    audiences = reader.strings("audiences", required=True, nonempty=True)
    jwks_url = _http_url(reader, "jwks_url", origin=False)
    algorithms = _algorithms(reader)
    ttl = reader.number("jwks_ttl", 300.0, low=1, high=86_400)
    stale_for = reader.number("jwks_stale_for", 3600.0, low=0, high=7 * 86_400)
    timeout = reader.number("jwks_timeout", 5.0, low=0.01, high=120)
    max_bytes = reader.integer("jwks_max_bytes", 262_144, low=1024, high=16 * 1024 * 1024)
    cooldown = reader.number("jwks_refetch_cooldown", 10.0, low=0, high=3600)
    revocation = _revocation(reader, environ)
    reader.finish()
    if len(problems) > before or issuer is None or audiences is None or jwks_url is None:
        return None
    return IssuerConfig(
        issuer=issuer,
        audiences=audiences,
        jwks_url=jwks_url,
        algorithms=algorithms,
        jwks_ttl=ttl,
        jwks_stale_for=stale_for,
        jwks_timeout=timeout,
        jwks_max_bytes=max_bytes,
        jwks_refetch_cooldown=cooldown,
        **revocation,
    )


def _revocation(reader: _Reader, environ: Mapping[str, str]) -> dict[str, Any]:
    """The issuer's ``revocation_*`` keys (issue 9). Without ``revocation_url`` none of the others may be set: a
    poll interval without a feed is a typo that would leave an operator believing sign-outs are enforced."""
    keys = ("poll_interval", "timeout", "max_bytes", "max_entries", "stale_after", "on_stale", "token_env")
    if not reader.has("revocation_url"):
        for key in keys:
            if reader.has(f"revocation_{key}"):
                reader.problem(f"revocation_{key}", "is allowed only with revocation_url")
        return {}
    url = _http_url(reader, "revocation_url", origin=False)
    interval = reader.number("revocation_poll_interval", 1.0, low=0.05, high=60)
    timeout = reader.number("revocation_timeout", 2.0, low=0.01, high=60)
    max_bytes = reader.integer("revocation_max_bytes", 4 * 1024 * 1024, low=1024, high=256 * 1024 * 1024)
    max_entries = reader.integer("revocation_max_entries", 1_000_000, low=1, high=100_000_000)
    stale_after = reader.number("revocation_stale_after", 10.0, low=0.1, high=86_400)
    if stale_after <= interval:
        reader.problem("revocation_stale_after", "must be longer than revocation_poll_interval")
    on_stale = reader.string("revocation_on_stale", "refuse")
    if on_stale not in STALE_POLICIES:
        reader.problem("revocation_on_stale", f"must be one of {', '.join(STALE_POLICIES)}, not {on_stale!r}")
    return {
        "revocation_url": url,
        "revocation_token": _revocation_token(reader, environ),
        "revocation_poll_interval": interval,
        "revocation_timeout": timeout,
        "revocation_max_bytes": max_bytes,
        "revocation_max_entries": max_entries,
        "revocation_stale_after": stale_after,
        "revocation_on_stale": on_stale,
    }


def _revocation_token(reader: _Reader, environ: Mapping[str, str]) -> str | None:
    """The feed token from the variable ``revocation_token_env`` names. A named variable that is unset or empty is
    an error: the gateway would poll without it, and a protected feed answers that with 404 (fail loudly)."""
    name = reader.string("revocation_token_env")
    if name is None:
        return None
    if not name or any(ch.isspace() or not ch.isprintable() for ch in name):
        reader.problem("revocation_token_env", f"must be an environment variable name, not {name!r}")
        return None
    if name not in environ:
        reader.problem("revocation_token_env", f"environment variable {name} is not set")
        return None
    token = environ[name].strip()
    if not token:
        reader.problem("revocation_token_env", f"environment variable {name} is empty")
        return None
    if not all("!" <= ch <= "~" for ch in token):
        reader.problem(
            "revocation_token_env", f"environment variable {name} must be visible ASCII (it is sent as a Bearer token)"
        )
        return None
    return token


@dataclass(frozen=True)
class _RouteDefaults:
    timeout: float
    connect_timeout: float
    max_body_bytes: int
    min_body_rate: int


def _methods(reader: _Reader) -> tuple[str, ...] | None:
    methods = reader.strings("methods", nonempty=True)
    if methods is None:
        return None
    bad = [m for m in methods if not _METHOD.match(m)]
    if bad:
        reader.problem("methods", f"must be upper-case HTTP method names, not {', '.join(map(repr, bad))}")
        return None
    if "GET" in methods and "HEAD" not in methods:
        methods = (*methods, "HEAD")  # RFC 9110 §9.3.2: HEAD is GET without the body
    return methods


def _required_claims(reader: _Reader) -> dict[str, ClaimValue]:
    if not reader.has("required_claims"):
        return {}
    value = reader.raw("required_claims")
    if not isinstance(value, dict):
        reader.problem("required_claims", "must be a table of claim = value")
        return {}
    claims: dict[str, ClaimValue] = {}
    for name, required in value.items():
        if not isinstance(required, str | int | bool) or isinstance(required, float):
            reader.problem(f"required_claims.{name}", "must be a string, integer or boolean")
            continue
        if name in ("iss", "aud", "exp", "iat", "nbf"):
            reader.problem(f"required_claims.{name}", "is checked by token verification; use issuers/audiences")
            continue
        claims[name] = required
    return claims


def _route(
    data: Any, where: str, problems: list[str], defaults: _RouteDefaults, issuers: set[str]
) -> RouteConfig | None:
    reader = _Reader(data, where, problems)
    before = len(problems)
    path = reader.string("path", required=True)
    params: dict[str, str] = {}
    if path is not None:
        try:
            params = compile_template(path).params
        except TemplateError as exc:
            reader.problem("path", f"invalid template {path!r}: {exc}")
    upstream = _http_url(reader, "upstream", origin=True)
    auth = reader.string("auth", required=True)
    if auth is not None and auth not in AUTH_MODES:
        reader.problem("auth", f"must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
    if auth == "owner" and path is not None and "user_id" not in params:
        reader.problem("path", "an owner route needs a {user_id} parameter")
    if params.get("user_id") == "path":
        reader.problem("path", "{user_id} must be a single segment ({user_id} or {user_id:str}), not a path")
    methods = _methods(reader)
    route_issuers = reader.strings("issuers", nonempty=True)
    if route_issuers is not None:
        for name in route_issuers:
            if name not in issuers:
                reader.problem("issuers", f"{name!r} is not a configured issuer")
        if auth == "public":
            reader.problem("issuers", "a public route verifies no token; remove issuers or change auth")
    if auth in ("authenticated", "owner") and not issuers:
        reader.problem("auth", f"an {auth} route needs at least one [[issuers]] entry")
    timeout = reader.number("timeout", defaults.timeout, low=0.001, high=3600)
    connect_timeout = reader.number("connect_timeout", defaults.connect_timeout, low=0.001, high=600)
    max_body = reader.integer("max_body_bytes", defaults.max_body_bytes, low=0, high=2**53)
    min_rate = reader.integer("min_body_rate", defaults.min_body_rate, low=0, high=2**40)
    forward_token = reader.boolean("forward_token", auth == "public")
    required_claims = _required_claims(reader)
    if required_claims and auth == "public":
        reader.problem("required_claims", "a public route verifies no token; remove required_claims or change auth")
    reader.finish()
    if len(problems) > before or path is None or upstream is None or auth is None:
        return None
    return RouteConfig(
        path=path,
        upstream=upstream,
        auth=cast(AuthMode, auth),
        methods=methods,
        issuers=route_issuers,
        timeout=timeout,
        connect_timeout=connect_timeout,
        max_body_bytes=max_body or None,
        min_body_rate=min_rate or None,
        forward_token=forward_token,
        required_claims=required_claims,
    )


def _admin_path(reader: _Reader, key: str, default: str, *, may_disable: bool = False) -> str | None:
    value = reader.string(key, default)
    if value is None:
        return default
    if value == "" and may_disable:
        return None
    plain = value.startswith("/") and all(" " < ch <= "~" for ch in value) and "%" not in value
    try:
        plain = plain and canonical_path(value.encode()) == value  # compared with raw_path bytes by the app
    except UnsafePath:
        plain = False
    if not plain:
        reader.problem(key, f"must be a plain absolute path like {default!r}, not {value!r}")
        return default
    return value


def _list_of_tables(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        problems.append(f"{key}: must be an array of tables ([[{key}]])")
        return []
    return value


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str]) -> GatewayConfig:
    """Validate already-parsed TOML plus the environment. Raises :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    top = _Reader(dict(data), "", problems)
    for key in ("server", "health", "proof", "issuers", "routes"):
        top.seen.add(key)
    top.finish()

    server = _Reader(data.get("server", {}), "server", problems)
    realm = _realm(server)
    leeway = server.integer("leeway", 30, low=0, high=300)
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in server.strings("trusted_proxies") or ():
        try:
            proxies.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            server.problem("trusted_proxies", f"{entry!r} is not an IP address or network: {exc}")
    cache_size = server.integer("token_cache_size", 100_000, low=0, high=10_000_000)
    max_token = server.integer("max_token_bytes", 8192, low=256, high=65_536)
    fast_lane = server.boolean("fast_lane", True)
    defaults = _RouteDefaults(
        timeout=server.number("timeout", 30.0, low=0.001, high=3600),
        connect_timeout=server.number("connect_timeout", 5.0, low=0.001, high=600),
        max_body_bytes=server.integer("max_body_bytes", 10_485_760, low=0, high=2**53),
        min_body_rate=server.integer("min_body_rate", 500, low=0, high=2**40),
    )
    server.finish()

    health = _Reader(data.get("health", {}), "health", problems)
    livez = _admin_path(health, "livez_path", "/livez") or "/livez"
    readyz = _admin_path(health, "readyz_path", "/readyz") or "/readyz"
    metrics = _admin_path(health, "metrics_path", "/metrics", may_disable=True)
    admin = [p for p in (livez, readyz, metrics) if p is not None]
    if len(set(admin)) != len(admin):
        health.problem(None, "livez_path, readyz_path and metrics_path must differ")
    health.finish()

    proof_table = _Reader(data.get("proof", {}), "proof", problems)
    secret_env = proof_table.string("secret_env", proof.PROOF_SECRET_ENV) or proof.PROOF_SECRET_ENV
    proof_table.finish()
    secrets: tuple[bytes, ...] = ()
    try:
        secrets = proof.parse_secrets(environ.get(secret_env))
    except ValueError as exc:
        problems.append(
            f"environment: {exc}" if secret_env == proof.PROOF_SECRET_ENV else f"environment {secret_env}: {exc}"
        )

    issuers: list[IssuerConfig] = []
    names: set[str] = set()
    for index, entry in enumerate(_list_of_tables(data, "issuers", problems)):
        where = f"issuers[{index}]"
        name = entry.get("issuer") if isinstance(entry, dict) else None
        if isinstance(name, str) and name in names:
            problems.append(f"{where}.issuer: duplicate issuer {name!r}")
        elif isinstance(name, str):
            names.add(name)
        issuer = _issuer(entry, where, problems, environ)
        if issuer is not None:
            issuers.append(issuer)

    routes: list[RouteConfig] = []
    for index, entry in enumerate(_list_of_tables(data, "routes", problems)):
        route = _route(entry, f"routes[{index}]", problems, defaults, names)
        if route is not None:
            routes.append(route)

    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        issuers=tuple(issuers),
        routes=tuple(routes),
        proof_secrets=secrets,
        trusted_proxies=tuple(proxies),
        realm=realm,
        leeway=leeway,
        livez_path=livez,
        readyz_path=readyz,
        metrics_path=metrics,
        token_cache_size=cache_size,
        max_token_bytes=max_token,
        fast_lane=fast_lane,
    )
