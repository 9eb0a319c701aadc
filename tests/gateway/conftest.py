"""Helpers shared by the gateway tests: signing keys, JWKS documents, token minting, a mock JWKS endpoint.

Import the plain helpers with ``from tests.gateway.conftest import ...``; the fixtures are picked up by pytest.

* ``make_key(alg, kid)`` -> :class:`SigningKey` (EdDSA, ES256, ES384, RS256, PS256). EdDSA/EC keys are new on
  every call; RSA keys are cached per (alg, kid, bits) because generating them is slow, so two RSA keys that must
  differ need different kids. ``key.jwk`` is the public JWK (with ``kid``, ``alg``, ``use``);
  ``key.public_jwk(member=value | DROP)`` a variant of it.
* ``jwks(*keys)`` -> a JWKS document (dict).
* ``mint(key, **claims)`` -> a compact JWS signed by ``key``: default claims are a valid token for
  :data:`ISSUER` / :data:`AUDIENCE` / :data:`SUBJECT`, issued at ``now`` (default ``time.time()``) and valid for
  ``ttl`` seconds; pass ``claim=DROP`` to remove one, ``headers={...}`` to add or override header members, and
  ``drop_headers=("kid",)`` to remove some.
* ``issuer_config(**overrides)`` -> :class:`gateway.config.IssuerConfig` for the test issuer.
* :class:`JwksEndpoint`: an ``httpx.MockTransport`` handler serving a mutable JWKS, counting requests, able to
  fail (status, exception, delay, raw body, headers). ``endpoint.client()`` gives an AsyncClient on it.
* :class:`FakeClock`: a settable clock for ``JwksCache(clock=...)`` and ``TokenVerifier(clock=...)``.
* Fixtures: ``eddsa_key``, ``es256_key``, ``rs256_key`` (kid ``ed-1``/``es-1``/``rs-1``), ``signing_key``
  (parametrized over the three algorithms), ``clock``, ``jwks_endpoint``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import IssuerConfig

ISSUER = "http://127.0.0.1:8000"
AUDIENCE = "http://127.0.0.1:8000"
JWKS_URL = "http://127.0.0.1:8001/api/auth/jwks"
SUBJECT = "user-123"
EMAIL = "user@example.com"
ALGORITHMS = ("EdDSA", "ES256", "RS256")
#: Proof secret for configs built in tests (32+ bytes, as gateway.proof requires).
PROOF_SECRET = "test-proof-secret-0123456789abcdefghijklmnop"


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


@dataclass(frozen=True)
class SigningKey:
    alg: str
    kid: str | None
    private_key: Any
    jwk: dict[str, Any]  # public JWK as an identity service would publish it

    def public_jwk(self, **overrides: Any) -> dict[str, Any]:
        jwk = {**self.jwk, **overrides}
        return {k: v for k, v in jwk.items() if v is not DROP}


@functools.cache
def _rsa_private(seed: str, bits: int) -> rsa.RSAPrivateKey:
    del seed  # one key per (seed, bits): distinct kids get distinct keys, generation happens once per process
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_key(alg: str = "EdDSA", kid: str | None = "k1", *, rsa_bits: int = 2048) -> SigningKey:
    """A fresh signing key and its public JWK (``kid`` None: the JWK has no kid)."""
    private: Any
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        algorithm: Any = jwt.algorithms.OKPAlgorithm
    elif alg in ("ES256", "ES384"):
        private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
        algorithm = jwt.algorithms.ECAlgorithm
    elif alg in ("RS256", "PS256"):
        private = _rsa_private(f"{alg}:{kid}", rsa_bits)
        algorithm = jwt.algorithms.RSAAlgorithm
    else:
        raise ValueError(alg)
    jwk = json.loads(algorithm.to_jwk(private.public_key()))
    jwk.update({"alg": alg, "use": "sig"})
    if kid is not None:
        jwk["kid"] = kid
    return SigningKey(alg=alg, kid=kid, private_key=private, jwk=jwk)


def jwks(*keys: SigningKey | Mapping[str, Any]) -> dict[str, Any]:
    return {"keys": [dict(k.jwk) if isinstance(k, SigningKey) else dict(k) for k in keys]}


def claims_for(now: float | None = None, ttl: int = 300, **overrides: Any) -> dict[str, Any]:
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "email": EMAIL,
        "iat": int(now),
        "exp": int(now) + ttl,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not DROP}


def mint(
    key: SigningKey,
    *,
    now: float | None = None,
    ttl: int = 300,
    headers: Mapping[str, Any] | None = None,
    drop_headers: Iterable[str] = (),
    alg: str | None = None,
    **claims: Any,
) -> str:
    """A token signed by ``key``. ``alg`` overrides the header's alg (the signature still uses the key's)."""
    header: dict[str, Any] = {"alg": key.alg, "typ": "JWT"}
    if key.kid is not None:
        header["kid"] = key.kid
    header.update(headers or {})
    for name in drop_headers:
        header.pop(name, None)
    signed_header = {k: v for k, v in header.items() if k != "alg"}
    # PyJWS, not PyJWT: the payload is signed as given, even when it is wrong on purpose (iss=5, exp="1").
    payload = json.dumps(claims_for(now, ttl, **claims)).encode()
    token = jwt.api_jws.encode(payload, key.private_key, algorithm=key.alg, headers=signed_header)
    wanted = alg or header["alg"]
    if wanted != key.alg:
        return resign_header(token, {**header, "alg": wanted})
    return token


def b64(data: bytes) -> str:
    return jwt.utils.base64url_encode(data).decode()


def resign_header(token: str, header: Mapping[str, Any]) -> str:
    """Replace a token's header, keeping payload and signature (the signature is then invalid)."""
    _, payload, signature = token.split(".")
    return ".".join((b64(json.dumps(dict(header)).encode()), payload, signature))


def unsigned(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    """A compact JWS built by hand (for alg=none and malformed cases)."""
    return ".".join((b64(json.dumps(dict(header)).encode()), b64(json.dumps(dict(payload)).encode()), b64(signature)))


def issuer_config(**overrides: Any) -> IssuerConfig:
    values: dict[str, Any] = {"issuer": ISSUER, "audiences": (AUDIENCE,), "jwks_url": JWKS_URL}
    values.update(overrides)
    return IssuerConfig(**values)


class FakeClock:
    """A clock that moves only when told to (``advance``), for TTLs and token lifetimes."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class JwksEndpoint:
    """A mock identity JWKS endpoint for ``httpx.MockTransport``.

    Set ``document`` (dict) to change the served keys (rotation), ``status``/``body``/``headers`` to misbehave,
    ``error`` to raise an httpx exception, ``delay`` to answer slowly (real seconds), ``gate`` (an
    ``asyncio.Event``) to hold answers until it is set. ``requests`` counts every request.
    """

    document: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: Exception | None = None
    delay: float = 0.0
    gate: asyncio.Event | None = None
    requests: int = 0
    urls: list[str] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.urls.append(str(request.url))
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        content = self.body if self.body is not None else json.dumps(self.document).encode()
        return httpx.Response(
            self.status, content=content, headers={"content-type": "application/json", **self.headers}
        )

    def serve(self, *keys: SigningKey | Mapping[str, Any]) -> None:
        self.document = jwks(*keys)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self), trust_env=False)


@pytest.fixture(scope="session")
def eddsa_key() -> SigningKey:
    return make_key("EdDSA", "ed-1")


@pytest.fixture(scope="session")
def es256_key() -> SigningKey:
    return make_key("ES256", "es-1")


@pytest.fixture(scope="session")
def rs256_key() -> SigningKey:
    return make_key("RS256", "rs-1")


@pytest.fixture(params=ALGORITHMS, scope="session")
def signing_key(request: pytest.FixtureRequest) -> SigningKey:
    """Each of the three algorithms the issue requires (EdDSA, ES256, RS256)."""
    return make_key(request.param, f"{request.param.lower()}-1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks_endpoint() -> JwksEndpoint:
    return JwksEndpoint()


def counting(calls: list[tuple[str, str]]) -> Callable[[str, str], None]:
    """An ``on_fetch`` hook that records (issuer, outcome)."""
    return lambda issuer, outcome: calls.append((issuer, outcome))
