"""Signing-key material: generation, public JWKs, JWS signatures, and encryption at rest. Pure functions.

Private keys are stored as ``v1:`` + base64(nonce || AES-256-GCM(PKCS#8 DER)) under a key derived from
``IDENTITY_SECRET`` with HKDF-SHA256 (RFC 5869), the key id as associated data so a ciphertext cannot be moved
to another row. (Better Auth uses XChaCha20-Poly1305 keyed by SHA-256(secret), reference 2.8.)
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from identity.config import JwtAlgorithm

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_FORMAT = "v1"


class KeyDecryptionError(Exception):
    """A stored private key does not decrypt: IDENTITY_SECRET changed, or the row was altered."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def generate(alg: JwtAlgorithm) -> PrivateKey:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(alg: JwtAlgorithm, key: PrivateKey, kid: str) -> dict[str, str]:
    """The JWKS entry: ``alg``, the public members and ``kid``; no ``use`` (reference 2.8)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"alg": alg, "crv": "Ed25519", "x": b64url(raw), "kty": "OKP", "kid": kid}
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        return {
            "alg": alg,
            "crv": "P-256",
            "x": _uint(numbers.x, 32),
            "y": _uint(numbers.y, 32),
            "kty": "EC",
            "kid": kid,
        }
    rsa_numbers = key.public_key().public_numbers()
    return {"alg": alg, "n": _uint(rsa_numbers.n), "e": _uint(rsa_numbers.e), "kty": "RSA", "kid": kid}


def sign(key: PrivateKey, message: bytes) -> bytes:
    """A JWS signature (RFC 7518 3.3, 3.4; RFC 8037 3.1): ES256 as raw r || s, not DER."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def encryption_key(secret: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"identity-service", info=b"signing-key-encryption/v1"
    ).derive(secret.encode())


def encrypt_private(aead_key: bytes, kid: str, key: PrivateKey) -> str:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    nonce = os.urandom(12)
    sealed = AESGCM(aead_key).encrypt(nonce, der, kid.encode())
    return f"{_FORMAT}:{base64.b64encode(nonce + sealed).decode()}"


def decrypt_private(aead_key: bytes, kid: str, stored: str) -> PrivateKey:
    version, _, payload = stored.partition(":")
    if version != _FORMAT:
        raise KeyDecryptionError(f"key {kid}: unknown storage format {version!r}")
    try:
        blob = base64.b64decode(payload, validate=True)
        der = AESGCM(aead_key).decrypt(blob[:12], blob[12:], kid.encode())
    except (InvalidTag, ValueError) as exc:
        raise KeyDecryptionError(f"key {kid} does not decrypt: was IDENTITY_SECRET changed?") from exc
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyDecryptionError(f"key {kid}: unsupported key type")
    return key


@dataclass(frozen=True)
class SigningKey:
    kid: str
    generation: int
    alg: JwtAlgorithm
    jwk: dict[str, str]
    created_at: int  # ms
    signs_from: int  # ms
    private: PrivateKey | None  # None when it failed to decrypt
    header_b64: str  # base64url of {"alg","kid"}, computed once

    @classmethod
    def build(
        cls,
        kid: str,
        generation: int,
        alg: JwtAlgorithm,
        jwk: dict[str, str],
        created_at: int,
        signs_from: int,
        private: PrivateKey | None,
    ) -> SigningKey:
        header = json.dumps({"alg": alg, "kid": kid}, separators=(",", ":")).encode()
        return cls(kid, generation, alg, jwk, created_at, signs_from, private, b64url(header))
