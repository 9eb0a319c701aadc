"""Bearer tokens: extraction from the request (RFC 6750 §2.1), verification, and the route's claim checks.

Verification order, each step refusing with :class:`InvalidToken` and a ``reason``:

1. length (``max_token_bytes``) and shape: ASCII, three base64url segments, JSON header and payload objects;
2. header: ``jku``, ``x5u``, ``jwk``, ``x5c`` (keys come only from the issuer's ``jwks_url``), ``crit`` and
   ``b64`` are refused outright (RFC 8725 §3.1, RFC 7515 §4.1.11); ``typ``, when present, must be ``JWT`` or
   ``at+jwt`` (RFC 9068), so a logout or event token signed by the same key is not an access token (RFC 8725
   §3.11); ``kid`` must be a short printable string;
3. ``iss`` is read from the *unverified* payload only to pick the issuer config (exact string match); the
   token's ``alg`` must be in that issuer's allowlist, before any key is fetched (``none``/``HS256`` never are);
4. the key comes from :class:`gateway.jwks.JwksCache` by ``kid``, bound to ``alg`` (an ES256 header on an
   EdDSA key is ``alg_mismatch``);
5. the signature over the token's own first two segments, checked as the key's PyJWT algorithm object (the one
   ``jwt.decode`` would use; the key is bound to ``alg``, never chosen by it) checks it, with cryptography's
   primitives called directly, and Ed25519 with libsodium (same verdicts, less CPU: see ``_signature_check``);
   ``jwt.decode`` itself would parse the token a second time and costs 45-85 µs around the signature check
   (issue 7). Then the registered claims as ``jwt.decode`` checks them: ``exp, iat, iss, aud, sub`` present
   (``missing_claim``), ``aud`` a string or list of strings containing one of the issuer's audiences
   (``bad_audience``), ``sub`` and ``jti`` strings (``bad_claim``); ``iss`` is the issuer's by construction;
6. our own strict claim checks against the injected clock: ``exp``/``iat``/``nbf`` are JSON numbers (not
   strings or booleans, which PyJWT would coerce) checked with ``leeway`` (PyJWT reads the wall clock, so its
   time checks are off); ``sub`` a non-empty string that can be sent as a header value; ``email``/``sid``
   strings when present.

Successful verifications are cached (bounded LRU, keyed by the token's SHA-256) until ``exp``, so a client
with a valid token costs a hash and a lookup. An entry keeps only what requests need: ``sub``, ``email``, ``sid``,
``exp``, the issuer (the configuration's own string) and, in ``Claims.raw``, the claims some route requires
(``keep_claims``), not the whole payload: the whole payload made an entry ~1.9 KiB, 185 MiB of RSS for the default
100,000 entries (measured with ``python -m bench.memory``, issue 7). Expiry is checked when an entry is read; a plain
LRU rather than cachetools' TLRU, whose expiry heap kept up to twice the live entries after each turnover. A cached
entry also remembers which key verified it and is dropped when that key leaves the issuer's JWKS. Deterministic
failures (bad signature, malformed, ...) are remembered in a small bounded cache for a minute, so a client retrying
a bad token does not cost a signature check each time; failures that time or key rotation can change
(``unknown_kid``, ``not_yet_valid``) are not.
``is_revoked`` is consulted on every call, cached or not (gateway/revocation.py); it may raise
:class:`gateway.errors.ServiceUnavailable` when it cannot tell (a revocation list too old to trust).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jwt
import jwt.algorithms
import nacl.bindings
import nacl.exceptions
from cachetools import LRUCache
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from gateway.config import IssuerConfig
from gateway.errors import Forbidden, InvalidRequest, InvalidToken
from gateway.jwks import JwksCache, key_fingerprint
from gateway.routing import RouteMatch

MAX_TOKEN_BYTES = 8192
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
_FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit", "b64")
# RFC 8725 §3.11 explicit typing: an access token has no typ (Better Auth), "JWT", or RFC 9068's "at+jwt". Other
# types an issuer may sign with the same key (logout+jwt, secevent+jwt, ...) are not access tokens.
_ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt", "application/at+jwt"})
# Alphabets checked with bytes.translate (delete every allowed byte; anything left is not allowed): one C pass, about
# a tenth of the instructions a regex spends on a 300-character token, on every protected request (issue 7).
_DIGITS_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_B64URL_ALPHABET = _DIGITS_LETTERS + b"-_"
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN_ALPHABET = _DIGITS_LETTERS + b"-._~+/"


def _is_b64token(credentials: bytes) -> bool:
    body = credentials.rstrip(b"=")
    return bool(body) and not body.translate(None, _B64TOKEN_ALPHABET)


_KNOWN_HEADERS = 64  # distinct verified token headers remembered (a few per issuer key; rotations add more)
_NEGATIVE_REASONS = frozenset(
    {"malformed", "bad_header", "alg_not_allowed", "alg_mismatch", "bad_signature", "bad_issuer", "bad_audience"}
    | {"missing_claim", "bad_claim", "expired"}
)


def extract_bearer(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of a request, from raw ASGI headers.

    * no ``Authorization`` header, or one with another scheme (``Basic``...): None (the caller answers 401 with a
      bare ``Bearer`` challenge, RFC 6750 §3.1);
    * two or more ``Authorization`` headers: :class:`InvalidRequest` (which one would a backend read?);
    * ``Bearer`` with no credentials, or with several words: :class:`InvalidRequest`;
    * credentials that are not an RFC 6750 ``b64token``: :class:`InvalidToken` ``malformed``.

    The scheme is case-insensitive (RFC 9110 §11.1); one or more spaces may separate it from the token.
    """
    found: bytes | None = None
    for name, raw in headers:
        if name.lower() == b"authorization":
            if found is not None:
                raise InvalidRequest("more than one Authorization header")
            found = raw
    if found is None:
        return None
    scheme, _, credentials = found.strip(b" \t").partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    credentials = credentials.lstrip(b" ")
    if not credentials:
        raise InvalidRequest("the Bearer scheme needs a token")
    if not _is_b64token(credentials):
        if b" " in credentials or b"\t" in credentials or b"," in credentials:
            raise InvalidRequest("the Authorization header must hold exactly one bearer token")
        raise InvalidToken("malformed")
    return credentials.decode("ascii")


class Claims(NamedTuple):  # NamedTuples: built on every verification, cheaper than frozen dataclasses
    """The verified claims the gateway acts on. ``raw`` is the verified payload, restricted to the claims routes
    require when the verifier was given ``keep_claims``."""

    sub: str
    iss: str
    exp: int
    email: str | None
    sid: str | None
    raw: Mapping[str, Any]


class _Verified(NamedTuple):
    claims: Claims
    issuer: str
    key_fingerprint: str
    expires_at: float


_TO_STANDARD_BASE64 = bytes.maketrans(b"-_", b"+/")
_JSON = json.JSONDecoder()


def _base64url(data: bytes) -> bytes:
    # The alphabet is checked first, so binascii (which skips characters outside it) decodes exactly these bytes.
    if not data or data.translate(None, _B64URL_ALPHABET):
        raise InvalidToken("malformed")
    try:
        return binascii.a2b_base64(data.translate(_TO_STANDARD_BASE64) + b"=" * (-len(data) % 4))
    except binascii.Error:
        raise InvalidToken("malformed") from None


def _segment(data: bytes) -> Any:
    """A JOSE header or JWT claims set: base64url of UTF-8 JSON (RFC 7515 §7.1, RFC 7519 §7.2)."""
    decoded = _base64url(data)
    try:
        value = _JSON.decode(decoded.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidToken("malformed") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed")
    return value


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    if name not in payload:
        return None
    value = payload[name]
    try:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(name)
        return float(value)
    except (ValueError, OverflowError):  # JSON integers are unbounded: 1e400 as an int overflows a float
        raise InvalidToken("bad_claim", f"the token's {name} claim is not a number") from None


_VISIBLE_ASCII = re.compile(r"[ -~]*")


def _header_safe(value: str) -> bool:
    """Claims forwarded as header values (X-User-Id, X-User-Email) must be visible ASCII or non-control text
    that survives latin-1/UTF-8 header encoding without CR, LF, NUL or other controls (header injection)."""
    if value.isascii():  # the usual case, in one compiled match: space and the visible characters
        return _VISIBLE_ASCII.fullmatch(value) is not None
    return all(ch == " " or (ch.isprintable() and not ch.isspace()) for ch in value)


def _registered_claims(payload: Mapping[str, Any], audiences: Sequence[str]) -> None:
    """What ``jwt.decode(require=REQUIRED_CLAIMS, audience=..., issuer=...)`` checks, in its order and with its
    outcomes (PyJWT 2.x ``_validate_claims``); ``iss`` already picked the issuer by exact match."""
    for name in REQUIRED_CLAIMS:
        if payload.get(name) is None:
            raise InvalidToken("missing_claim", f"the token lacks the {name} claim")
    aud = payload["aud"]
    if not aud:
        raise InvalidToken("missing_claim", "the token lacks the aud claim")
    claimed = [aud] if isinstance(aud, str) else aud
    if not isinstance(claimed, list) or any(not isinstance(value, str) for value in claimed):
        raise InvalidToken("bad_audience")
    if all(audience not in claimed for audience in audiences):
        raise InvalidToken("bad_audience")
    if not isinstance(payload["sub"], str) or ("jti" in payload and not isinstance(payload["jti"], str)):
        raise InvalidToken("bad_claim")


SignatureCheck = Callable[[bytes, bytes], bool]  # (signing input, signature) -> valid


@functools.lru_cache(maxsize=256)
def _signature_check(key: jwt.PyJWK) -> SignatureCheck:
    """How ``key``'s signatures are checked, decided once per key object (parsed once per JWKS fetch).

    Ed25519 goes to libsodium (PyNaCl): about half the CPU of cryptography's OpenSSL build here (~58 vs ~110 µs,
    issue 7), and just as strict on length, encoding and S < L (RFC 8032 §5.1.7). ECDSA and RSA keys call
    cryptography directly with what PyJWT's algorithm object would pass it (its ``verify`` rebuilt the padding,
    hash and ``ECDSA`` objects and re-checked the key's curve on every call: ~9 µs of an ES256 check's ~90,
    issue 7), after PyJWT's own ``prepare_key`` has accepted the key once. Anything else (Ed448, a key PyJWT
    would refuse) stays with PyJWT on every call, so it answers exactly as it does."""
    algorithm = key.Algorithm
    public = key.key
    if isinstance(algorithm, jwt.algorithms.OKPAlgorithm) and isinstance(public, Ed25519PublicKey):
        return functools.partial(
            _ed25519_valid, public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
    try:
        prepared = algorithm.prepare_key(public)
    except (jwt.PyJWTError, ValueError, TypeError):
        prepared = None
    # RSAPSSAlgorithm subclasses RSAAlgorithm: test it first.
    if isinstance(algorithm, jwt.algorithms.RSAPSSAlgorithm) and isinstance(prepared, rsa.RSAPublicKey):
        digest = algorithm.hash_alg()
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return functools.partial(_rsa_valid, prepared, pss, digest)
    if isinstance(algorithm, jwt.algorithms.RSAAlgorithm) and isinstance(prepared, rsa.RSAPublicKey):
        return functools.partial(_rsa_valid, prepared, padding.PKCS1v15(), algorithm.hash_alg())
    if isinstance(algorithm, jwt.algorithms.ECAlgorithm) and isinstance(prepared, ec.EllipticCurvePublicKey):
        size = (prepared.curve.key_size + 7) // 8  # r and s, each left-padded to the curve's size (RFC 7518 §3.4)
        return functools.partial(_ecdsa_valid, prepared, size, ec.ECDSA(algorithm.hash_alg()))
    return lambda signed, signature: algorithm.verify(signed, algorithm.prepare_key(public), signature)


def _ed25519_valid(public: bytes, signed: bytes, signature: bytes) -> bool:
    if len(signature) != nacl.bindings.crypto_sign_BYTES:
        return False  # what cryptography (and so PyJWT) answers for a signature of the wrong length
    try:
        nacl.bindings.crypto_sign_open(signature + signed, public)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def _ecdsa_valid(
    public: ec.EllipticCurvePublicKey, size: int, ecdsa: ec.ECDSA, signed: bytes, signature: bytes
) -> bool:
    # PyJWT's ECAlgorithm.verify, with its raw_to_der_signature: the wrong length is simply invalid.
    if len(signature) != 2 * size:
        return False
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    try:
        public.verify(encode_dss_signature(r, s), signed, ecdsa)
    except InvalidSignature:
        return False
    return True


def _rsa_valid(
    public: rsa.RSAPublicKey,
    scheme: padding.AsymmetricPadding,
    digest: hashes.HashAlgorithm,
    signed: bytes,
    signature: bytes,
) -> bool:
    # PyJWT's RSAAlgorithm.verify / RSAPSSAlgorithm.verify.
    try:
        public.verify(signature, signed, scheme, digest)
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _fingerprint(key: jwt.PyJWK) -> str:
    """Per key object (parsed once per JWKS fetch): hashing the JWK costs more than the rest of a cache entry."""
    return key_fingerprint(key)


def _claims(payload: Mapping[str, Any], now: float, leeway: int, issuer: str, keep: frozenset[str] | None) -> Claims:
    exp = _number(payload, "exp")
    iat = _number(payload, "iat")
    nbf = _number(payload, "nbf")
    if exp is None or iat is None:
        raise InvalidToken("missing_claim")
    if exp <= now - leeway:
        raise InvalidToken("expired")
    if nbf is not None and nbf > now + leeway:
        raise InvalidToken("not_yet_valid")
    if iat > now + leeway:
        raise InvalidToken("not_yet_valid", "the token was issued in the future")
    sub = payload.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255 or not _header_safe(sub) or sub != sub.strip():
        raise InvalidToken("bad_claim", "the token's sub claim is not a usable subject")
    email = payload.get("email")
    if email is not None and (not isinstance(email, str) or len(email) > 320 or not _header_safe(email)):
        raise InvalidToken("bad_claim", "the token's email claim is malformed")
    sid = payload.get("sid")
    if sid is not None and not isinstance(sid, str):
        raise InvalidToken("bad_claim", "the token's sid claim is malformed")
    raw = payload if keep is None else {name: payload[name] for name in keep if name in payload}
    return Claims(sub=sub, iss=issuer, exp=int(exp), email=email, sid=sid, raw=raw)


class TokenVerifier:
    """Verifies bearer tokens against the configured issuers; see the module docstring for the rules.

    ``hits``/``misses`` count verified-token cache lookups (a miss is a full verification attempt)."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        keys: JwksCache,
        *,
        leeway: int = 30,
        clock: Callable[[], float] = time.time,
        cache_size: int = 100_000,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        is_revoked: Callable[[Claims], bool] | None = None,
        negative_cache_size: int = 10_000,
        negative_ttl: float = 60.0,
        keep_claims: frozenset[str] | None = None,
    ) -> None:
        self._issuers = {config.issuer: config for config in issuers}
        self._keys = keys
        self._leeway = leeway
        self._clock = clock
        self._max_token_bytes = max_token_bytes
        self._is_revoked = is_revoked
        self._keep_claims = keep_claims
        self._cache: LRUCache[bytes, _Verified] | None = LRUCache(maxsize=cache_size) if cache_size > 0 else None
        # (reason, message, until) only: an exception would keep its traceback, and with it whole frames, alive.
        # An LRU with the expiry checked on reading, like the positive cache: a TTLCache lookup costs a timer context
        # and a raised KeyError, on every fresh token (~1.2 µs, issue 7). An expired entry waits for eviction and
        # may outlive a live one evicted before it: at worst one more signature check, never another verdict.
        self._negative: LRUCache[bytes, tuple[str, str, float]] | None = (
            LRUCache(maxsize=negative_cache_size) if negative_cache_size > 0 else None
        )
        self._negative_ttl = negative_ttl
        # Header segments of tokens that verified, with their alg and kid: an issuer signs every token with the same
        # few headers ({"alg", "kid"} per key), so a fresh token skips decoding and checking its header again
        # (~4 µs of a cold check, issue 7). Only verified tokens add one, so a client cannot fill it with junk;
        # a header's checks depend on nothing but its bytes (the issuer's alg allowlist is applied after it).
        self._headers: dict[bytes, tuple[str, str | None]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def cache_size(self) -> int:
        return 0 if self._cache is None else len(self._cache)

    async def verify(self, token: str) -> Claims:
        """The verified claims of ``token``, or :class:`InvalidToken` (or :class:`ServiceUnavailable` from the key
        cache when the issuer has no usable keys, or from ``is_revoked``)."""
        claims = self.verify_now(token)
        if claims is not None:
            return claims
        # No key at hand: fetch it (or learn that there is none), then check the token with it.
        digest = hashlib.sha256(token.encode("ascii")).digest()
        parsed = self._parse(token)  # verify_now parsed it without an error
        self.misses += 1
        try:
            verified = self._check(parsed, await self._keys.get_key(parsed.issuer.issuer, parsed.kid, parsed.alg))
        except InvalidToken as exc:
            self._failed(digest, exc)
            raise
        return self._accepted(digest, parsed, verified)

    def verify_now(self, token: str) -> Claims | None:
        """:meth:`verify` without awaiting (the fast lane, gateway/express.py, and the first step of ``verify``): the
        claims of a cached token, or of one whose key is at hand, checked now; None, with nothing counted, when a key
        has to be fetched first. Raises what ``verify`` raises."""
        if len(token) > self._max_token_bytes:
            raise InvalidToken("oversized")
        if not token.isascii():
            raise InvalidToken("malformed")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        verified = self._cached(digest)
        if verified is not None:
            self.hits += 1
            if self._is_revoked is not None and self._is_revoked(verified.claims):
                raise InvalidToken("revoked")
            return verified.claims
        failure = self._negative.get(digest) if self._negative is not None else None
        if failure is not None and failure[2] > self._clock():
            self.misses += 1
            raise InvalidToken(failure[0], failure[1])
        try:
            parsed = self._parse(token)
            key = self._keys.key_now(parsed.issuer.issuer, parsed.kid, parsed.alg)
            if key is None:
                return None
            verified = self._check(parsed, key)
        except InvalidToken as exc:
            self.misses += 1
            self._failed(digest, exc)
            raise
        self.misses += 1
        return self._accepted(digest, parsed, verified)

    def _failed(self, digest: bytes, exc: InvalidToken) -> None:
        if self._negative is not None and exc.reason in _NEGATIVE_REASONS:
            self._negative[digest] = (exc.reason, exc.message, self._clock() + self._negative_ttl)

    def _accepted(self, digest: bytes, parsed: _Parsed, verified: _Verified) -> Claims:
        if parsed.parts[0] not in self._headers:
            if len(self._headers) >= _KNOWN_HEADERS:
                self._headers.clear()  # rotated keys' headers leave too; the current ones come back at once
            self._headers[parsed.parts[0]] = (parsed.alg, parsed.kid)
        if self._cache is not None:
            self._cache[digest] = verified
        if self._is_revoked is not None and self._is_revoked(verified.claims):
            raise InvalidToken("revoked")
        return verified.claims

    def _cached(self, digest: bytes) -> _Verified | None:
        if self._cache is None:
            return None
        verified = self._cache.get(digest)
        if verified is None:
            return None
        if verified.expires_at <= self._clock() or verified.key_fingerprint not in self._keys.fingerprints(
            verified.issuer
        ):
            # Past its exp, or the key that verified it was rotated out (or the issuer's keys are unusable):
            # verify afresh (which refuses an expired token with its own reason).
            self._cache.pop(digest, None)
            return None
        return verified

    def _parse(self, token: str) -> _Parsed:
        """Steps 1-3 of the module docstring: everything decided before a key is needed."""
        parts = token.encode("ascii").split(b".")
        if len(parts) != 3:
            raise InvalidToken("malformed")
        known = self._headers.get(parts[0])
        if known is not None:
            payload = _segment(parts[1])
            alg, kid = known
        else:
            header = _segment(parts[0])
            if any(name in header for name in _FORBIDDEN_HEADERS):
                raise InvalidToken("bad_header")
            payload = _segment(parts[1])
            typ = header.get("typ")
            if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES):
                raise InvalidToken("bad_header")
            alg = header.get("alg")
            kid = header.get("kid")
            if not isinstance(alg, str):
                raise InvalidToken("malformed")
            if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256 or not kid.isprintable()):
                raise InvalidToken("malformed")
        iss = payload.get("iss")
        if iss is None:
            raise InvalidToken("missing_claim", "the token has no iss claim")
        config = self._issuers.get(iss) if isinstance(iss, str) else None
        if config is None:
            raise InvalidToken("bad_issuer")
        if alg not in config.algorithms:
            raise InvalidToken("alg_not_allowed")
        if not parts[2]:
            raise InvalidToken("malformed")
        return _Parsed(parts, payload, config, alg, kid)

    def _check(self, parsed: _Parsed, key: jwt.PyJWK) -> _Verified:
        """Steps 4-6: the key's binding, the signature, the claims."""
        parts, payload, config, alg = parsed.parts, parsed.payload, parsed.issuer, parsed.alg
        if key.algorithm_name != alg:  # get_key returns the binding for alg; PyJWT would refuse a mismatch too
            raise InvalidToken("alg_mismatch")
        signature = _base64url(parts[2])
        signed = parts[0] + b"." + parts[1]
        try:
            valid = _signature_check(key)(signed, signature)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("malformed") from None
        if not valid:
            raise InvalidToken("bad_signature")
        _registered_claims(payload, config.audiences)
        claims = _claims(payload, self._clock(), self._leeway, config.issuer, self._keep_claims)
        return _Verified(
            claims=claims,
            issuer=config.issuer,
            key_fingerprint=_fingerprint(key),
            expires_at=float(claims.exp),
        )


class _Parsed(NamedTuple):
    """A token's parts and what was read from them before its key is looked up."""

    parts: list[bytes]
    payload: dict[str, Any]
    issuer: IssuerConfig
    alg: str
    kid: str | None


def authorize(match: RouteMatch, claims: Claims) -> None:
    """The route's access rules for verified claims (pure). Raises :class:`Forbidden` (403 insufficient_scope).

    * ``issuers``: the token's issuer must be one the route accepts;
    * ``owner``: the path's ``{user_id}`` must equal ``sub`` exactly (no case folding, no normalisation: the
      path was canonicalised by :func:`gateway.routing.canonical_path`);
    * ``required_claims``: each claim equals the required value, or is a list containing it. ``True`` never
      matches ``1`` (JSON booleans are not numbers).
    """
    route = match.route
    if route.issuers is not None and claims.iss not in route.issuers:
        raise Forbidden("this route does not accept tokens from that issuer")
    if route.auth == "owner" and match.params.get("user_id") != claims.sub:
        raise Forbidden("the token's subject does not own this resource")
    for name, required in route.required_claims.items():
        actual = claims.raw.get(name)
        values = actual if isinstance(actual, list) else [actual]
        if not any(type(value) is type(required) and value == required for value in values):
            raise Forbidden(f"the token lacks the required {name} claim")
