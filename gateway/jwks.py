"""Per-issuer signing-key cache (issue 4, "Key cache").

Keys come only from each issuer's configured ``jwks_url``, fetched with the gateway's own ``httpx.AsyncClient``
(not PyJWT's ``PyJWKClient``, which blocks the event loop and forgets every key when one fetch fails).

* **Fetch**: GET with a whole-fetch deadline (``jwks_timeout``), no redirects followed, the body streamed and
  abandoned past ``jwks_max_bytes`` (decompressed bytes, so a gzip bomb is cut off too). Each attempt reports
  ``on_fetch(issuer, outcome)`` with outcome ``ok | error | timeout | too_large | invalid``.
* **Parse**: each JWK is parsed on its own with :class:`jwt.PyJWK` and skipped when unusable: symmetric ``oct``
  keys, private keys (a ``d`` member: the identity service is leaking, do not trust it), ``use`` other than
  ``sig``, ``key_ops`` without ``verify``, an ``alg`` outside the issuer's allowlist or not matching the key's
  type/curve, RSA under 2048 bits, and duplicate ``kid`` s (ambiguous, so neither is used). A response with no
  usable key is ``invalid`` and changes nothing.
* **Freshness**: keys are fresh for ``jwks_ttl`` seconds, shortened (never lengthened) by a ``Cache-Control:
  max-age``, though never below ``jwks_refetch_cooldown``. Expired keys keep serving while a refresh runs in
  the background; when refreshes fail they keep serving for ``jwks_stale_for`` more seconds
  (stale-if-error), after which the issuer has no usable keys: requests get 503 and ``ready()`` is False.
* **Unknown kid**: at most one refetch, single-flight (concurrent callers wait for the same fetch) and no more
  than once per ``jwks_refetch_cooldown`` per issuer, so random kids cannot make the gateway hammer the identity
  service; then :class:`InvalidToken` ``unknown_kid``.
* **No kid**: a token without ``kid`` is accepted only when the issuer's set has exactly one usable key (with or
  without a kid of its own); a JWK without ``kid`` verifies only tokens without one.

A JWK without ``alg`` is usable with every allowed algorithm that fits its type (RSA: RS*/PS*; EC: by curve;
OKP: EdDSA), each bound separately, so :meth:`JwksCache.get_key` takes the token's ``alg`` and returns the
binding for it (PyJWT verifies with the key's bound algorithm, never the header's).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import jwt

from gateway.config import IssuerConfig
from gateway.errors import InvalidToken, ServiceUnavailable
from gateway.fetch import FetchError, bounded_get

logger = logging.getLogger("gateway.jwks")

FetchOutcome = Literal["ok", "error", "timeout", "too_large", "invalid"]
MIN_RSA_BITS = 2048
_CURVE_ALGORITHMS = {
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("EC", "P-521"): ("ES512",),
    ("EC", "secp256k1"): ("ES256K",),
    ("OKP", "Ed25519"): ("EdDSA",),
    ("OKP", "Ed448"): ("EdDSA",),
}
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,9})\"?\s*(?:,|$)", re.IGNORECASE)


class JwksFetchError(Exception):
    def __init__(self, outcome: FetchOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def algorithms_for(jwk: dict[str, Any]) -> tuple[str, ...]:
    """Every JWS algorithm a public JWK may verify, judged by its type and curve alone."""
    kty = jwk.get("kty")
    if kty == "RSA":
        return _RSA_ALGORITHMS
    return _CURVE_ALGORITHMS.get((str(kty), str(jwk.get("crv"))), ())


def fingerprint(jwk: dict[str, Any]) -> str:
    """A stable identity for a public key across refetches (kid plus every public member)."""
    public = {k: v for k, v in jwk.items() if k in ("kid", "kty", "crv", "x", "y", "n", "e")}
    return hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()


def key_fingerprint(key: jwt.PyJWK) -> str:
    """:func:`fingerprint` of a parsed key (PyJWK keeps its JWK dict privately)."""
    return fingerprint(key._jwk_data)


@dataclass(frozen=True)
class KeySet:
    """One successful fetch: keys by kid, each bound once per algorithm it may verify."""

    by_kid: dict[str | None, dict[str, jwt.PyJWK]]
    fingerprints: frozenset[str]
    fetched_at: float
    fresh_until: float
    usable_until: float

    @property
    def size(self) -> int:
        return len(self.by_kid)


def parse_jwks(body: bytes, allowed: Sequence[str]) -> tuple[dict[str | None, dict[str, jwt.PyJWK]], frozenset[str]]:
    """Parse a JWKS document into usable keys. Raises :class:`JwksFetchError` ``invalid`` if none is usable."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise JwksFetchError("invalid", "JWKS is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("invalid", "JWKS has no 'keys' array")
    found: dict[str | None, dict[str, jwt.PyJWK]] = {}
    prints: dict[str | None, str] = {}
    duplicates: set[str | None] = set()
    for index, jwk in enumerate(document["keys"]):
        reason = _unusable(jwk, allowed)
        if reason is not None:
            logger.warning("skipping JWKS key %d: %s", index, reason)
            continue
        kid = jwk.get("kid")
        if kid in found:
            duplicates.add(kid)
            continue
        declared = jwk.get("alg")
        candidates = (declared,) if declared else tuple(a for a in algorithms_for(jwk) if a in allowed)
        bound: dict[str, jwt.PyJWK] = {}
        for algorithm in candidates:
            try:
                key = jwt.PyJWK(jwk, algorithm=algorithm)
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                logger.warning("skipping JWKS key %d: %s", index, exc)
                break
            if jwk["kty"] == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
                logger.warning("skipping JWKS key %d: RSA key shorter than %d bits", index, MIN_RSA_BITS)
                break
            bound[algorithm] = key
        else:
            if bound:
                found[kid] = bound
                prints[kid] = fingerprint(jwk)
    for kid in duplicates:
        logger.warning("skipping JWKS keys with duplicate kid %r", kid)
        found.pop(kid, None)
        prints.pop(kid, None)
    if not found:
        raise JwksFetchError("invalid", "JWKS has no usable key")
    return found, frozenset(prints.values())


def _unusable(jwk: Any, allowed: Sequence[str]) -> str | None:
    if not isinstance(jwk, dict):
        return "not an object"
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return f"key type {kty!r} is not an asymmetric signature key"
    if "d" in jwk or "p" in jwk or "k" in jwk:
        return "private key material in a public JWKS"
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        return "kid is not a non-empty string"
    if "use" in jwk and jwk["use"] != "sig":
        return f"use {jwk['use']!r} is not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not allow verify"
    fits = algorithms_for(jwk)
    declared = jwk.get("alg")
    if declared is not None:
        if not isinstance(declared, str) or declared not in allowed:
            return f"alg {declared!r} is not allowed for this issuer"
        if declared not in fits:
            return f"alg {declared!r} does not fit a {kty} key"
    elif not any(a in allowed for a in fits):
        return "no allowed algorithm fits this key"
    return None


def _ttl(config: IssuerConfig, cache_control: str | None) -> float:
    ttl = config.jwks_ttl
    if cache_control:
        match = _MAX_AGE.search(cache_control)
        if match:
            ttl = min(ttl, max(float(match.group(1)), config.jwks_refetch_cooldown, 1.0))
    return ttl


@dataclass
class _Issuer:
    config: IssuerConfig
    keys: KeySet | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_attempt: float | None = None  # any fetch attempt, successful or not (retry cooldown)
    last_kid_fetch: float | None = None  # the last fetch caused by an unknown kid (unknown-kid cooldown)
    generation: int = 0  # bumps on every completed attempt, so waiters know a fetch happened
    refreshing: asyncio.Task[None] | None = None


class JwksCache:
    """Keys per issuer; see the module docstring for the rules. ``clock`` is monotonic seconds."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_fetch: Callable[[str, FetchOutcome], None] | None = None,
    ) -> None:
        self._issuers = {config.issuer: _Issuer(config) for config in issuers}
        self._client = client
        self._clock = clock
        self._on_fetch = on_fetch
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self, *, refresh_interval: float | None = 1.0) -> None:
        """Fetch every issuer's keys once (failures are logged, not fatal: ``ready()`` reports them), then keep
        them fresh in a background task that checks every ``refresh_interval`` seconds (None: no task)."""
        await asyncio.gather(*(self.refresh(name) for name in self._issuers))
        if refresh_interval is not None and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._refresh_loop(refresh_interval))

    async def aclose(self) -> None:
        """Stop background refreshes. The HTTP client belongs to the caller, who closes it."""
        tasks = [*self._tasks, *([self._loop_task] if self._loop_task else [])]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh_due()
            except Exception:  # the loop is the only thing keeping keys fresh without traffic: never let it die
                logger.exception("JWKS refresh loop iteration failed")

    # --- state ---------------------------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when every issuer has keys that may still be used (fresh, or stale within ``jwks_stale_for``)."""
        now = self._clock()
        return all(state.keys is not None and now < state.keys.usable_until for state in self._issuers.values())

    def key_age(self, issuer: str) -> float | None:
        """Seconds since the issuer's keys were last fetched successfully; None if never."""
        keys = self._issuers[issuer].keys
        return None if keys is None else self._clock() - keys.fetched_at

    def fingerprints(self, issuer: str) -> frozenset[str]:
        """Fingerprints of the issuer's currently usable keys (empty when none may be used). The token cache
        checks a cached verification's key against this, so a key removed from the JWKS stops working at once."""
        state = self._issuers.get(issuer)
        if state is None or state.keys is None or self._clock() >= state.keys.usable_until:
            return frozenset()
        return state.keys.fingerprints

    # --- lookups -------------------------------------------------------------------------------------------------

    async def get_key(self, issuer: str, kid: str | None, alg: str | None = None) -> jwt.PyJWK:
        """The issuer's key for ``kid`` bound to ``alg`` (any binding when ``alg`` is None).

        Raises :class:`InvalidToken` ``unknown_kid`` / ``alg_mismatch``, or :class:`ServiceUnavailable` when the
        issuer has no usable keys at all (never fetched, or stale for longer than ``jwks_stale_for``)."""
        state = self._issuers.get(issuer)
        if state is None:
            raise InvalidToken("bad_issuer")
        now = self._clock()
        keys = state.keys
        if keys is not None and now >= keys.fresh_until:
            self._refresh_in_background(state)
        if keys is None or now >= keys.usable_until:
            await self._refetch(state)
            keys = state.keys
            if keys is None or self._clock() >= keys.usable_until:
                retry = max(1, math.ceil(state.config.jwks_refetch_cooldown))  # the next fetch attempt
                raise ServiceUnavailable("the token issuer's signing keys are unavailable", retry_after=retry)
        bound = self._lookup(keys, kid)
        if bound is None:
            await self._refetch(state, kid_miss=True)
            keys = state.keys
            bound = None if keys is None or self._clock() >= keys.usable_until else self._lookup(keys, kid)
            if bound is None:
                raise InvalidToken("unknown_kid")
        if alg is None:
            return next(iter(bound.values()))
        key = bound.get(alg)
        if key is None:
            raise InvalidToken("alg_mismatch")
        return key

    def key_now(self, issuer: str, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """:meth:`get_key` when it would await nothing (the fast lane, gateway/express.py): the key, if the issuer's
        keys are fresh and hold ``kid``; None when :meth:`get_key` has a fetch to start or wait for, or an error to
        decide after one. Raises ``alg_mismatch`` as :meth:`get_key` does."""
        state = self._issuers.get(issuer)
        keys = None if state is None else state.keys
        if keys is None or self._clock() >= keys.fresh_until:
            return None
        bound = self._lookup(keys, kid)
        if bound is None:
            return None
        key = bound.get(alg)
        if key is None:
            raise InvalidToken("alg_mismatch")
        return key

    @staticmethod
    def _lookup(keys: KeySet, kid: str | None) -> dict[str, jwt.PyJWK] | None:
        if kid is None:
            # Without a kid the only unambiguous choice is the only key (module docstring).
            return next(iter(keys.by_kid.values())) if keys.size == 1 else None
        return keys.by_kid.get(kid)

    async def _refetch(self, state: _Issuer, *, kid_miss: bool = False) -> None:
        """Single-flight, rate-limited refetch. Callers that queued behind a fetch reuse its result. A fetch for an
        unknown kid is allowed once per cooldown since the last *unknown-kid* fetch (a scheduled refresh does not
        block one: the key may have been published just after it); any other refetch once per cooldown since the
        last attempt (retries while the identity service is down)."""
        generation = state.generation
        async with state.lock:
            if state.generation != generation:
                return  # another caller fetched while we waited for the lock
            now = self._clock()
            last = state.last_kid_fetch if kid_miss else state.last_attempt
            if last is not None and now - last < state.config.jwks_refetch_cooldown:
                return
            if kid_miss:
                state.last_kid_fetch = now
            await self._fetch_locked(state)

    # --- refresh -------------------------------------------------------------------------------------------------

    async def refresh(self, issuer: str) -> bool:
        """Fetch the issuer's keys now (waiting for an in-flight fetch instead of starting a second).
        Returns whether the issuer has usable keys afterwards."""
        state = self._issuers[issuer]
        generation = state.generation
        async with state.lock:
            if state.generation == generation:
                await self._fetch_locked(state)
        return state.keys is not None and self._clock() < state.keys.usable_until

    async def refresh_due(self) -> None:
        """Refresh every issuer whose keys are past their TTL (or missing), no more often than its cooldown."""
        now = self._clock()
        due = []
        for state in self._issuers.values():
            if state.keys is not None and now < state.keys.fresh_until:
                continue
            if state.last_attempt is not None and now - state.last_attempt < state.config.jwks_refetch_cooldown:
                continue
            due.append(self._refetch(state))
        await asyncio.gather(*due)

    def _refresh_in_background(self, state: _Issuer) -> None:
        if state.refreshing is not None and not state.refreshing.done():
            return
        now = self._clock()
        if state.last_attempt is not None and now - state.last_attempt < state.config.jwks_refetch_cooldown:
            return
        task = asyncio.create_task(self._refetch(state))
        state.refreshing = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_locked(self, state: _Issuer) -> None:
        config = state.config
        state.last_attempt = self._clock()
        try:
            body, cache_control = await self._download(config)
            by_kid, prints = parse_jwks(body, config.algorithms)
        except JwksFetchError as exc:
            logger.warning("JWKS fetch for %s failed (%s): %s", config.issuer, exc.outcome, exc)
            self._report(config.issuer, exc.outcome)
            return
        finally:
            state.generation += 1
        now = self._clock()
        fresh_until = now + _ttl(config, cache_control)
        state.keys = KeySet(
            by_kid=by_kid,
            fingerprints=prints,
            fetched_at=now,
            fresh_until=fresh_until,
            usable_until=fresh_until + config.jwks_stale_for,
        )
        self._report(config.issuer, "ok")

    def _report(self, issuer: str, outcome: FetchOutcome) -> None:
        if self._on_fetch is not None:
            try:
                self._on_fetch(issuer, outcome)
            except Exception:  # a metrics hook must never break key refresh
                logger.exception("on_fetch hook failed")

    async def _download(self, config: IssuerConfig) -> tuple[bytes, str | None]:
        try:
            body, headers = await bounded_get(
                self._client,
                config.jwks_url,
                deadline=config.jwks_timeout,
                max_bytes=config.jwks_max_bytes,
                headers={"accept": "application/jwk-set+json, application/json"},
            )
        except FetchError as exc:
            raise JwksFetchError(exc.outcome, exc.message) from None
        return body, headers.get("cache-control")
