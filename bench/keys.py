"""Signing keys the bench generates for itself, their JWKS and PEM files, and tokens minted with PyJWT.

The proxies under test only ever see public keys: the JWKS (our gateway, fetched over HTTP from the trivial
upstream nginx) and PEM public keys (HAProxy's ``jwt_verify`` takes a file). Private keys stay in memory.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://id.bench.test"
AUDIENCE = "https://api.bench.test"
ALPHABET = string.ascii_letters + string.digits
TOKEN_LIFETIME = 4 * 3600  # outlives any bench run; the proxies check exp


def user_id() -> str:
    """32 characters of [a-zA-Z0-9], the shape of a Better Auth / identity user id."""
    return "".join(secrets.choice(ALPHABET) for _ in range(32))


@dataclass(frozen=True)
class SigningKey:
    alg: str
    kid: str
    private: Any

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "alg": self.alg, "kid": self.kid}

    def mint(self, sub: str, now: int | None = None) -> str:
        issued = int(time.time()) if now is None else now
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME,
            "email": f"{sub[:8].lower()}@example.com",
            "name": "Bench User",
            "sid": user_id(),
        }
        # Header {alg, kid} as the identity service and Better Auth send it (better-auth-wire.md 2.7).
        return jwt.encode(claims, self.private, algorithm=self.alg, headers={"kid": self.kid, "typ": None})


def generate() -> dict[str, SigningKey]:
    return {
        "EdDSA": SigningKey("EdDSA", "bench-eddsa", ed25519.Ed25519PrivateKey.generate()),
        "ES256": SigningKey("ES256", "bench-es256", ec.generate_private_key(ec.SECP256R1())),
        "RS256": SigningKey("RS256", "bench-rs256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }


def write_public(keys: dict[str, SigningKey], directory: Path) -> Path:
    """Writes ``jwks.json`` and ``<alg>.pub.pem`` files; returns the JWKS path."""
    for key in keys.values():
        (directory / f"{key.alg}.pub.pem").write_bytes(key.public_pem())
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": [key.public_jwk() for key in keys.values()]}))
    return path


def write_token_file(key: SigningKey, count: int, path: Path, path_template: str = "/api/{sub}/items") -> None:
    """``count`` distinct tokens, each for its own user, as "<path> <token>" lines for the rotating wrk script."""
    now = int(time.time())
    with path.open("w") as out:
        for _ in range(count):
            sub = user_id()
            out.write(f"{path_template.format(sub=sub)} {key.mint(sub, now)}\n")
