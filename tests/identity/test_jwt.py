"""JWTs, the JWKS and signing keys (reference 2.7, 2.8): a contract test with PyJWT as the gateway uses it,
key storage, race-free creation and rotation."""

from __future__ import annotations

import base64
import json
import time

import anyio
import httpx
import jwt
import pytest
from sqlalchemy import select

from identity import keys
from identity.db import create_engine
from identity.keyring import RETIRE_MARGIN, KeyRing
from identity.models import signing_keys
from tests.identity.conftest import make_config

pytestmark = pytest.mark.anyio

ORIGIN = "http://127.0.0.1:8000"


def segment(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


async def fetch_jwt(h, token: str) -> str:
    response = await h.client.get("/api/auth/token", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return str(response.json()["token"])


async def verify(h, token: str, *, later: float = 0) -> dict:
    """What a gateway does: fetch the JWKS itself, parse with PyJWKSet, require the claims, algorithms from config.
    PyJWT reads the real clock; the leeway shifts its "now" to the test clock (plus ``later`` seconds)."""
    leeway = time.time() - h.clock() - later
    jwks = jwt.PyJWKSet.from_dict((await h.client.get("/api/auth/jwks")).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key=key,
        algorithms=[h.config.jwt_alg],
        audience=h.config.origin,
        issuer=h.config.origin,
        options={"require": ["exp", "iat", "sub", "iss", "aud"], "verify_iat": False},
        leeway=leeway,
    )


@pytest.mark.parametrize(
    ("alg", "jwk_members"),
    [
        pytest.param("EdDSA", {"alg", "crv", "x", "kty", "kid"}, id="EdDSA"),
        pytest.param("ES256", {"alg", "crv", "x", "y", "kty", "kid"}, id="ES256"),
        pytest.param("RS256", {"alg", "n", "e", "kty", "kid"}, id="RS256"),
    ],
)
async def test_contract_pyjwt_verifies_our_tokens(make_harness, clock, alg, jwk_members):
    h = await make_harness(IDENTITY_JWT_ALG=alg)
    session_token = (await h.sign_up()).json()["token"]
    token = await fetch_jwt(h, session_token)
    claims = await verify(h, token)
    header = segment(token, 0)
    assert list(header) == ["alg", "kid"] and header["alg"] == alg
    assert set(claims) == {
        "iat",
        "name",
        "email",
        "emailVerified",
        "image",
        "createdAt",
        "updatedAt",
        "id",
        "sub",
        "exp",
        "iss",
        "aud",
        "sid",
    }
    session = (await h.client.get("/api/auth/get-session", headers={"authorization": f"Bearer {session_token}"})).json()
    assert claims["sub"] == claims["id"] == session["user"]["id"]
    assert claims["sid"] == session["session"]["id"]
    assert claims["iss"] == claims["aud"] == ORIGIN
    assert claims["exp"] - claims["iat"] == 900
    assert claims["iat"] == int(clock())
    jwks = (await h.client.get("/api/auth/jwks")).json()
    assert len(jwks["keys"]) == 1 and set(jwks["keys"][0]) == jwk_members
    # Tampering is detected.
    head, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["sub"] = "someone-else"
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        await verify(h, f"{head}.{forged_payload}.{signature}")
    # Verified after its TTL, it is refused.
    await verify(h, token, later=899)
    with pytest.raises(jwt.ExpiredSignatureError):
        await verify(h, token, later=901)


async def test_get_session_jwt_header_verifies(h):
    session_token = (await h.sign_up()).json()["token"]
    response = await h.client.get("/api/auth/get-session", headers={"authorization": f"Bearer {session_token}"})
    claims = jwt.decode(
        response.headers["set-auth-jwt"],
        options={"verify_signature": False},
    )
    assert claims["email"] == "alice@example.com"


async def test_issuer_is_origin_of_base_url(make_harness):
    h = await make_harness(IDENTITY_BASE_URL="https://Auth.Example.test:443/some/path/")
    token = await fetch_jwt(h, (await h.sign_up()).json()["token"])
    claims = segment(token, 1)
    assert claims["iss"] == claims["aud"] == "https://auth.example.test"


async def test_jwt_ttl_is_configurable(make_harness):
    h = await make_harness(IDENTITY_JWT_TTL="120")
    claims = segment(await fetch_jwt(h, (await h.sign_up()).json()["token"]), 1)
    assert claims["exp"] - claims["iat"] == 120


async def test_jwks_cache_control(h):
    response = await h.client.get("/api/auth/jwks")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.headers["content-type"] == "application/json"
    assert "use" not in response.json()["keys"][0]


async def test_private_keys_encrypted_at_rest(h, migrated_url):
    await h.client.get("/api/auth/jwks")
    engine = h.app.state.identity.store._engine
    async with engine.connect() as conn:
        row = (await conn.execute(select(signing_keys))).one()
    assert row.private_key.startswith("v1:")
    # The same secret decrypts; another secret does not; the ciphertext is bound to its kid.
    key = keys.decrypt_private(keys.encryption_key(h.config.secret), row.id, row.private_key)
    assert keys.public_jwk("EdDSA", key, row.id) == json.loads(row.public_jwk)
    with pytest.raises(keys.KeyDecryptionError):
        keys.decrypt_private(keys.encryption_key("another-secret-another-secret-another!"), row.id, row.private_key)
    with pytest.raises(keys.KeyDecryptionError):
        keys.decrypt_private(keys.encryption_key(h.config.secret), "x" * 32, row.private_key)


async def test_changed_secret_gives_500_on_token_but_jwks_still_served(make_harness):
    h = await make_harness()
    session_token = (await h.sign_up()).json()["token"]
    await fetch_jwt(h, session_token)  # the key exists, encrypted under the first secret
    other = await make_harness(IDENTITY_SECRET="a-completely-different-secret-of-enough-length")
    response = await other.client.get("/api/auth/token", headers={"authorization": f"Bearer {session_token}"})
    assert response.status_code == 500
    assert response.json() == {"message": "No usable signing key", "code": "SIGNING_KEY_UNAVAILABLE"}
    assert (await other.client.get("/api/auth/jwks")).status_code == 200


async def test_signing_keys_cached(h, monkeypatch):
    session_token = (await h.sign_up()).json()["token"]
    await fetch_jwt(h, session_token)
    calls = []
    original = keys.decrypt_private
    monkeypatch.setattr(keys, "decrypt_private", lambda *a: calls.append(a) or original(*a))
    for _ in range(5):
        await fetch_jwt(h, session_token)
    h.clock.advance(60)  # the ring re-reads the table, but does not decrypt known keys again
    await fetch_jwt(h, session_token)
    assert calls == []


async def test_first_key_is_created_once_by_racing_replicas(migrated_url, clock):
    config = make_config()
    engines = [create_engine(migrated_url) for _ in range(4)]
    try:
        rings = [KeyRing(engine, config, clock) for engine in engines]
        async with anyio.create_task_group() as group:
            for ring in rings:
                group.start_soon(ring.ensure)
        async with engines[0].connect() as conn:
            rows = (await conn.execute(select(signing_keys))).all()
        assert len(rows) == 1
        kids = {(await ring.signing_key()).kid for ring in rings}
        assert kids == {rows[0].id}
    finally:
        for engine in engines:
            await engine.dispose()


async def test_rotation_publishes_before_signing_and_retires_after_ttl(h, clock):
    session_token = (await h.sign_up()).json()["token"]
    old_jwt = await fetch_jwt(h, session_token)
    old_kid = segment(old_jwt, 0)["kid"]
    # rotate-key, as the CLI does it, from "another process" (its own ring on the same database)
    other = KeyRing(h.app.state.identity.store._engine, h.config, clock)
    new = await other.rotate()
    assert new.signs_from == int(clock() * 1000) + 360_000
    clock.advance(31)  # the serving ring re-reads the table within its refresh interval
    kids = [k["kid"] for k in (await h.client.get("/api/auth/jwks")).json()["keys"]]
    assert kids == [old_kid, new.kid]  # published ...
    assert segment(await fetch_jwt(h, session_token), 0)["kid"] == old_kid  # ... but not signing yet
    clock.advance(360)
    newer_jwt = await fetch_jwt(h, session_token)
    assert segment(newer_jwt, 0)["kid"] == new.kid
    await verify(h, newer_jwt)
    # The old key stays published while tokens it signed can be valid ...
    clock.advance(900 + RETIRE_MARGIN - 31 - 2)
    kids = [k["kid"] for k in (await h.client.get("/api/auth/jwks")).json()["keys"]]
    assert kids == [old_kid, new.kid]
    # ... and is dropped afterwards.
    clock.advance(5)
    kids = [k["kid"] for k in (await h.client.get("/api/auth/jwks")).json()["keys"]]
    assert kids == [new.kid]


async def test_changing_the_algorithm_rotates_with_publish_delay(make_harness, clock):
    h = await make_harness()
    session_token = (await h.sign_up()).json()["token"]
    assert segment(await fetch_jwt(h, session_token), 0)["alg"] == "EdDSA"
    es = await make_harness(IDENTITY_JWT_ALG="ES256")
    assert segment(await fetch_jwt(es, session_token), 0)["alg"] == "EdDSA"
    assert [k["alg"] for k in (await es.client.get("/api/auth/jwks")).json()["keys"]] == ["EdDSA", "ES256"]
    clock.advance(361)
    assert segment(await fetch_jwt(es, session_token), 0)["alg"] == "ES256"


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
async def test_contract_gateway_verifier_accepts_our_tokens(make_harness, clock, alg):
    """The gateway's own verifier (issue 4) against this JWKS, fetched over the app in-process."""
    from gateway.config import IssuerConfig
    from gateway.jwks import JwksCache
    from gateway.tokens import InvalidToken, TokenVerifier

    h = await make_harness(IDENTITY_JWT_ALG=alg)
    session_token = (await h.sign_up()).json()["token"]
    token = await fetch_jwt(h, session_token)
    issuer = IssuerConfig(issuer=ORIGIN, audiences=(ORIGIN,), jwks_url=f"{ORIGIN}/api/auth/jwks", algorithms=(alg,))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app)) as client:
        cache = JwksCache([issuer], client)
        await cache.start(refresh_interval=None)
        try:
            verifier = TokenVerifier([issuer], cache, clock=clock, cache_size=0, negative_cache_size=0)
            claims = await verifier.verify(token)
            assert claims.sub == segment(token, 1)["sub"]
            assert claims.sid == segment(token, 1)["sid"]
            assert claims.email == "alice@example.com"
            head, payload, signature = token.split(".")
            with pytest.raises(InvalidToken):
                await verifier.verify(f"{head}.{payload}.{signature[:-4]}AAAA")
        finally:
            await cache.aclose()
