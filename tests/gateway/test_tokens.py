from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import tokens as tokens_module
from gateway.config import RouteConfig
from gateway.errors import Forbidden, InvalidRequest, InvalidToken, ServiceUnavailable
from gateway.jwks import JwksCache
from gateway.routing import RouteMatch
from gateway.tokens import (
    Claims,
    TokenVerifier,
    _ed25519_valid,
    _header_safe,
    _is_b64token,
    _signature_check,
    authorize,
    extract_bearer,
)
from tests.gateway.conftest import (
    AUDIENCE,
    DROP,
    EMAIL,
    ISSUER,
    SUBJECT,
    FakeClock,
    JwksEndpoint,
    SigningKey,
    b64,
    claims_for,
    issuer_config,
    make_key,
    mint,
    resign_header,
    unsigned,
)

pytestmark = pytest.mark.anyio
NOW = 1_700_000_000.0


class Setup:
    def __init__(self, key: SigningKey, endpoint: JwksEndpoint, verifier: TokenVerifier, clock: FakeClock) -> None:
        self.key = key
        self.endpoint = endpoint
        self.verifier = verifier
        self.clock = clock

    def mint(self, **kwargs: Any) -> str:
        return mint(self.key, now=self.clock.now, **kwargs)


@pytest.fixture
async def setup(signing_key: SigningKey) -> AsyncIterator[Setup]:
    endpoint = JwksEndpoint()
    others = [make_key(alg, f"other-{alg}") for alg in ("EdDSA", "ES256") if alg != signing_key.alg]
    endpoint.serve(signing_key, *others)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        await keys.start(refresh_interval=None)
        clock = FakeClock(NOW)
        yield Setup(signing_key, endpoint, TokenVerifier([issuer_config()], keys, clock=clock), clock)


async def test_valid_token(setup: Setup) -> None:
    claims = await setup.verifier.verify(setup.mint(sid="s-1"))
    assert claims == Claims(
        sub=SUBJECT,
        iss=ISSUER,
        exp=int(NOW) + 300,
        email=EMAIL,
        sid="s-1",
        raw=claims_for(NOW, sid="s-1"),
    )


def hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    """Algorithm confusion (RFC 8725 §2.1): HMAC keyed with the verifier's public key."""
    pem = key.private_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(jwt_b64decode(payload))
    claims["sub"] = "admin"
    return ".".join((header, b64(json.dumps(claims).encode()), signature))


def tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(jwt_b64decode(signature))
    raw[0] ^= 1
    return ".".join((header, payload, b64(bytes(raw))))


def signed(setup: Setup, encoding: str) -> str:
    """A validly signed token whose header and claims are JSON in another encoding than plain UTF-8."""
    header = b64(json.dumps({"alg": setup.key.alg, "kid": setup.key.kid}).encode(encoding))
    payload = b64(json.dumps(claims_for(T)).encode(encoding))
    algorithm = jwt.get_algorithm_by_name(setup.key.alg)
    return f"{header}.{payload}.{b64(algorithm.sign(f'{header}.{payload}'.encode(), setup.key.private_key))}"


def jwt_b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


Case = Callable[[Setup], str]
T = NOW  # issued-at used by the cases below

INVALID: list[Any] = [
    # required claims missing
    pytest.param(lambda s: s.mint(exp=DROP), "missing_claim", id="exp missing"),
    pytest.param(lambda s: s.mint(iat=DROP), "missing_claim", id="iat missing"),
    pytest.param(lambda s: s.mint(iss=DROP), "missing_claim", id="iss missing"),
    pytest.param(lambda s: s.mint(aud=DROP), "missing_claim", id="aud missing"),
    pytest.param(lambda s: s.mint(sub=DROP), "missing_claim", id="sub missing"),
    pytest.param(lambda s: s.mint(sub=None), "missing_claim", id="sub null"),
    pytest.param(lambda s: s.mint(aud=[]), "missing_claim", id="aud empty list"),
    pytest.param(lambda s: s.mint(aud=""), "missing_claim", id="aud empty string"),
    # wrong types
    pytest.param(lambda s: s.mint(exp=str(int(T) + 300)), "bad_claim", id="exp as string"),
    pytest.param(lambda s: s.mint(exp=True), "bad_claim", id="exp boolean"),
    pytest.param(lambda s: s.mint(exp=float("inf")), "bad_claim", id="exp infinity"),
    pytest.param(lambda s: s.mint(exp=10**400), "bad_claim", id="exp integer beyond float range"),
    pytest.param(lambda s: s.mint(iat=-(10**400)), "bad_claim", id="iat negative beyond float range"),
    pytest.param(lambda s: s.mint(iat="now"), "bad_claim", id="iat string"),
    pytest.param(lambda s: s.mint(nbf=[1]), "bad_claim", id="nbf list"),
    pytest.param(lambda s: s.mint(sub=123), "bad_claim", id="sub number"),
    pytest.param(lambda s: s.mint(sub=""), "bad_claim", id="sub empty"),
    pytest.param(lambda s: s.mint(sub="a\r\nX-Admin: 1"), "bad_claim", id="sub with CRLF (header injection)"),
    pytest.param(lambda s: s.mint(sub="a\x00"), "bad_claim", id="sub with NUL"),
    pytest.param(lambda s: s.mint(sub=" alice"), "bad_claim", id="sub with leading space"),
    pytest.param(lambda s: s.mint(sub="x" * 256), "bad_claim", id="sub too long"),
    pytest.param(lambda s: s.mint(email=5), "bad_claim", id="email number"),
    pytest.param(lambda s: s.mint(email="a@b\nc"), "bad_claim", id="email with newline"),
    pytest.param(lambda s: s.mint(sid=5), "bad_claim", id="sid number"),
    pytest.param(lambda s: s.mint(jti=5), "bad_claim", id="jti number"),
    pytest.param(lambda s: s.mint(aud={"x": AUDIENCE}), "bad_audience", id="aud object"),
    pytest.param(lambda s: s.mint(iss=5), "bad_issuer", id="iss number"),
    pytest.param(lambda s: s.mint(aud=5), "bad_audience", id="aud number"),
    pytest.param(lambda s: s.mint(aud=[AUDIENCE, 5]), "bad_audience", id="aud list with a number"),
    # time
    pytest.param(lambda s: s.mint(exp=int(T) - 31), "expired", id="expired beyond leeway"),
    pytest.param(lambda s: s.mint(exp=int(T) - 30), "expired", id="expired at the leeway edge"),
    pytest.param(lambda s: s.mint(nbf=int(T) + 31), "not_yet_valid", id="nbf in the future"),
    pytest.param(lambda s: s.mint(iat=int(T) + 31), "not_yet_valid", id="iat in the future"),
    # issuer and audience
    pytest.param(lambda s: s.mint(iss="http://evil.example"), "bad_issuer", id="unknown issuer"),
    pytest.param(lambda s: s.mint(iss=ISSUER + "/"), "bad_issuer", id="issuer with trailing slash"),
    pytest.param(lambda s: s.mint(iss=ISSUER.upper()), "bad_issuer", id="issuer case differs"),
    pytest.param(lambda s: s.mint(aud="http://other"), "bad_audience", id="wrong audience"),
    pytest.param(lambda s: s.mint(aud=["http://a", "http://b"]), "bad_audience", id="audience list without ours"),
    # algorithms
    pytest.param(
        lambda s: unsigned({"alg": "none", "kid": s.key.kid}, claims_for(T)), "alg_not_allowed", id="alg none"
    ),
    pytest.param(
        lambda s: unsigned({"alg": "None", "kid": s.key.kid}, claims_for(T)), "alg_not_allowed", id="alg None"
    ),
    pytest.param(lambda s: hs256_with_public_key(s.key, claims_for(T)), "alg_not_allowed", id="HS256 confusion"),
    pytest.param(lambda s: s.mint(alg="ES384"), "alg_not_allowed", id="alg not in allowlist"),
    pytest.param(lambda s: s.mint(alg="PS256"), "alg_not_allowed", id="RSA-PSS not allowed"),
    pytest.param(
        lambda s: s.mint(headers={"kid": "other-EdDSA" if s.key.alg != "EdDSA" else "other-ES256"}),
        "alg_mismatch",
        id="alg of another key's type",
    ),
    pytest.param(
        lambda s: s.mint(alg=next(a for a in ("EdDSA", "ES256") if a != s.key.alg)),
        "alg_mismatch",
        id="allowed alg that is not the key's",
    ),
    pytest.param(lambda s: resign_header(s.mint(), {"kid": s.key.kid}), "malformed", id="alg missing"),
    pytest.param(lambda s: resign_header(s.mint(), {"alg": 256, "kid": s.key.kid}), "malformed", id="alg number"),
    # headers that would bring their own key
    pytest.param(lambda s: s.mint(headers={"jku": "http://evil/jwks"}), "bad_header", id="jku"),
    pytest.param(lambda s: s.mint(headers={"x5u": "http://evil/cert"}), "bad_header", id="x5u"),
    pytest.param(lambda s: s.mint(headers={"jwk": s.key.jwk}), "bad_header", id="embedded jwk"),
    pytest.param(lambda s: s.mint(headers={"x5c": ["MIIB"]}), "bad_header", id="x5c"),
    pytest.param(lambda s: s.mint(headers={"crit": ["exp"], "exp": 1}), "bad_header", id="crit"),
    pytest.param(lambda s: s.mint(headers={"b64": False}), "bad_header", id="b64 false"),
    pytest.param(lambda s: s.mint(headers={"typ": "logout+jwt"}), "bad_header", id="typ logout token"),
    pytest.param(lambda s: s.mint(headers={"typ": "dpop+jwt"}), "bad_header", id="typ DPoP proof"),
    pytest.param(lambda s: s.mint(headers={"typ": 1}), "bad_header", id="typ not a string"),
    # kid injection
    pytest.param(lambda s: s.mint(headers={"kid": "../../../../etc/passwd"}), "unknown_kid", id="kid path traversal"),
    pytest.param(lambda s: s.mint(headers={"kid": "http://evil/key.json"}), "unknown_kid", id="kid URL"),
    pytest.param(lambda s: s.mint(headers={"kid": "' OR 1=1 --"}), "unknown_kid", id="kid SQL"),
    pytest.param(lambda s: resign_header(s.mint(), {"alg": s.key.alg, "kid": 7}), "malformed", id="kid number"),
    pytest.param(lambda s: s.mint(headers={"kid": ""}), "malformed", id="kid empty"),
    pytest.param(lambda s: s.mint(headers={"kid": "a\nb"}), "malformed", id="kid newline"),
    pytest.param(lambda s: s.mint(headers={"kid": "k" * 300}), "malformed", id="kid too long"),
    pytest.param(lambda s: s.mint(drop_headers=("kid",)), "unknown_kid", id="no kid with several keys"),
    # tampering
    pytest.param(lambda s: tamper_payload(s.mint()), "bad_signature", id="tampered payload"),
    pytest.param(lambda s: tamper_signature(s.mint()), "bad_signature", id="tampered signature"),
    pytest.param(lambda s: s.mint().rsplit(".", 1)[0] + ".", "malformed", id="signature stripped"),
    pytest.param(lambda s: s.mint().rsplit(".", 1)[0] + ".AAAA", "bad_signature", id="signature too short"),
    pytest.param(lambda s: s.mint() + "AAAA", "bad_signature", id="signature too long"),
    pytest.param(lambda s: s.mint().rsplit(".", 1)[0] + ".A", "malformed", id="signature not base64"),
    pytest.param(lambda s: s.mint().rsplit(".", 1)[0] + ".AA+/", "malformed", id="signature not base64url"),
    pytest.param(lambda s: s.mint().rsplit(".", 1)[0], "malformed", id="two segments"),
    pytest.param(lambda s: s.mint() + ".x.y", "malformed", id="five segments (JWE shape)"),
    pytest.param(lambda s: s.mint().replace(".", "=.", 1), "malformed", id="padded header"),
    pytest.param(
        lambda s: ".".join((s.mint().split(".")[0], b64(b"\xff\xfe{}"), "AAAA")), "malformed", id="non-UTF-8 payload"
    ),
    pytest.param(
        lambda s: ".".join((b64(b"[1]"), b64(json.dumps(claims_for(T)).encode()), "AAAA")),
        "malformed",
        id="header not an object",
    ),
    pytest.param(lambda s: ".".join((b64(b"{"), "e30", "AAAA")), "malformed", id="header not JSON"),
    pytest.param(lambda s: signed(s, "utf-16"), "malformed", id="UTF-16 JSON (RFC 7515 §4: UTF-8)"),
    pytest.param(lambda s: signed(s, "utf-8-sig"), "malformed", id="UTF-8 JSON with a BOM"),
    pytest.param(lambda s: "a.b!.c", "malformed", id="not base64url"),
    pytest.param(lambda s: "\u00e9" + s.mint(), "malformed", id="non-ASCII token"),
    pytest.param(lambda s: s.mint(pad="x" * 9000), "oversized", id="oversized token"),
]


@pytest.mark.parametrize(("make", "reason"), INVALID)
async def test_invalid_tokens(setup: Setup, make: Case, reason: str) -> None:
    token = make(setup)
    with pytest.raises(InvalidToken) as caught:
        await setup.verifier.verify(token)
    assert caught.value.reason == reason
    assert token not in caught.value.message
    for header in caught.value.headers("gateway"):
        assert token not in header[1]


VALID: list[Any] = [
    pytest.param({"exp": int(T) - 29}, id="expired within leeway"),
    pytest.param({"nbf": int(T) + 29}, id="nbf within leeway"),
    pytest.param({"iat": int(T) + 29}, id="iat within leeway"),
    pytest.param({"aud": ["http://other", AUDIENCE]}, id="audience list containing ours"),
    pytest.param({"exp": T + 300.5, "iat": T - 0.5}, id="fractional NumericDate"),
    pytest.param({"email": DROP}, id="no email"),
    pytest.param({"sub": "\u00e9l\u00e8ve"}, id="non-ASCII sub"),
    pytest.param({"extra": {"nested": [1, 2]}}, id="extra claims kept"),
]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"typ": DROP}, id="no typ (Better Auth)"),
        pytest.param({"typ": "JWT"}, id="typ JWT"),
        pytest.param({"typ": "jwt"}, id="typ jwt lower-case"),
        pytest.param({"typ": "at+jwt"}, id="typ at+jwt (RFC 9068)"),
        pytest.param({"typ": "application/at+JWT"}, id="typ application/at+jwt"),
    ],
)
async def test_accepted_token_types(setup: Setup, headers: dict[str, Any]) -> None:
    drop = tuple(name for name, value in headers.items() if value is DROP)
    kept = {name: value for name, value in headers.items() if value is not DROP}
    assert (await setup.verifier.verify(setup.mint(headers=kept, drop_headers=drop))).sub == SUBJECT


@pytest.mark.parametrize("claims", VALID)
async def test_valid_variants(setup: Setup, claims: dict[str, Any]) -> None:
    result = await setup.verifier.verify(setup.mint(**claims))
    assert result.iss == ISSUER
    assert result.raw == claims_for(NOW, **claims)


async def test_alg_not_in_a_narrower_allowlist(setup: Setup) -> None:
    allowed = "EdDSA" if setup.key.alg != "EdDSA" else "ES256"
    config = issuer_config(algorithms=(allowed,))
    verifier = TokenVerifier([config], setup.verifier._keys, clock=setup.clock)
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(setup.mint())
    assert caught.value.reason == "alg_not_allowed"


async def test_kid_less_token_with_a_single_key(signing_key: SigningKey) -> None:
    endpoint = JwksEndpoint()
    endpoint.serve(signing_key)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        clock = FakeClock(NOW)
        verifier = TokenVerifier([issuer_config()], keys, clock=clock)
        claims = await verifier.verify(mint(signing_key, now=NOW, drop_headers=("kid",)))
        assert claims.sub == SUBJECT


async def test_cache_hits_until_exp(setup: Setup) -> None:
    token = setup.mint(ttl=100)
    await setup.verifier.verify(token)
    assert (setup.verifier.hits, setup.verifier.misses) == (0, 1)
    setup.endpoint.error = RuntimeError("a cache hit must not fetch")
    for _ in range(5):
        await setup.verifier.verify(token)
    assert (setup.verifier.hits, setup.verifier.misses) == (5, 1)
    assert setup.verifier.cache_size == 1
    setup.clock.advance(100)  # exp reached: the entry is gone, verification runs again (and fails, beyond leeway)
    setup.clock.advance(30)
    with pytest.raises(InvalidToken) as caught:
        await setup.verifier.verify(token)
    assert caught.value.reason == "expired"
    assert setup.verifier.misses == 2


async def test_cache_is_bounded(setup: Setup) -> None:
    verifier = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, cache_size=3)
    for index in range(10):
        await verifier.verify(setup.mint(jti=str(index)))
    assert verifier.cache_size == 3


async def test_negative_results_are_bounded_and_not_cached_when_they_can_change(setup: Setup) -> None:
    verifier = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, negative_cache_size=5)
    for index in range(50):
        with pytest.raises(InvalidToken):
            await verifier.verify(tamper_signature(setup.mint(jti=str(index))))
    assert verifier._negative is not None and len(verifier._negative) == 5
    assert verifier.cache_size == 0
    future = setup.mint(nbf=int(NOW) + 60)
    with pytest.raises(InvalidToken):
        await verifier.verify(future)
    setup.clock.advance(60)
    assert (await verifier.verify(future)).sub == SUBJECT  # not_yet_valid was not remembered


async def test_repeated_bad_token_is_refused_from_the_negative_cache(setup: Setup) -> None:
    token = tamper_signature(setup.mint())
    for _ in range(3):
        with pytest.raises(InvalidToken) as caught:
            await setup.verifier.verify(token)
        assert caught.value.reason == "bad_signature"


async def test_a_remembered_refusal_lasts_negative_ttl(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within ``negative_ttl`` a repeated bad token costs no signature check; after it, the token is checked again."""
    checks: list[bytes] = []
    real = tokens_module._signature_check

    def counting(key: jwt.PyJWK) -> Callable[[bytes, bytes], bool]:
        check = real(key)
        return lambda signed, signature: checks.append(signed) is None and check(signed, signature)

    monkeypatch.setattr(tokens_module, "_signature_check", counting)
    verifier = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, negative_ttl=60)
    token = tamper_signature(setup.mint())
    for advance, checked in ((0, 1), (59.5, 1), (0.5, 2), (30, 2)):  # remembered while now < refused + 60
        setup.clock.advance(advance)
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(token)
        assert caught.value.reason == "bad_signature"
        assert len(checks) == checked, advance


async def test_revocation_is_checked_on_every_call(setup: Setup) -> None:
    revoked: set[str] = set()
    seen: list[str] = []

    def is_revoked(claims: Claims) -> bool:
        seen.append(claims.sub)
        return claims.sub in revoked

    verifier = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, is_revoked=is_revoked)
    token = setup.mint()
    await verifier.verify(token)
    revoked.add(SUBJECT)
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)  # a cache hit, still refused
    assert caught.value.reason == "revoked"
    assert verifier.hits == 1 and seen == [SUBJECT, SUBJECT]


async def test_rotated_out_key_invalidates_cached_verifications(setup: Setup) -> None:
    token = setup.mint()
    await setup.verifier.verify(token)
    replacement = make_key(setup.key.alg, "replacement")
    setup.endpoint.serve(replacement)
    await setup.verifier._keys.refresh(ISSUER)
    with pytest.raises(InvalidToken) as caught:
        await setup.verifier.verify(token)
    assert caught.value.reason == "unknown_kid"
    assert (await setup.verifier.verify(mint(replacement, now=NOW))).sub == SUBJECT


async def test_no_usable_keys_is_503_not_401() -> None:
    endpoint = JwksEndpoint(status=500)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        verifier = TokenVerifier([issuer_config()], keys, clock=FakeClock(NOW))
        with pytest.raises(ServiceUnavailable):
            await verifier.verify(mint(make_key("EdDSA", "k"), now=NOW))


async def test_unknown_issuer_and_bad_algorithms_never_fetch_keys() -> None:
    endpoint = JwksEndpoint()
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        verifier = TokenVerifier([issuer_config()], keys, clock=FakeClock(NOW))
        key = make_key("EdDSA", "k")
        for token in (
            mint(key, now=NOW, iss="http://evil"),
            unsigned({"alg": "none"}, claims_for(NOW)),
            hs256_with_public_key(key, claims_for(NOW)),
        ):
            with pytest.raises(InvalidToken):
                await verifier.verify(token)
        assert endpoint.requests == 0


# --- extract_bearer ------------------------------------------------------------------------------------------------

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], None, id="no header"),
        pytest.param([(b"authorization", b"Bearer " + TOKEN.encode())], TOKEN, id="bearer"),
        pytest.param([(b"Authorization", b"bearer " + TOKEN.encode())], TOKEN, id="case-insensitive scheme and name"),
        pytest.param([(b"authorization", b"BEARER   " + TOKEN.encode())], TOKEN, id="several spaces"),
        pytest.param([(b"authorization", b"Bearer abc+/~_-.==")], "abc+/~_-.==", id="b64token alphabet"),
        pytest.param([(b"authorization", b"Basic dXNlcjpwYXNz")], None, id="another scheme"),
        pytest.param([(b"authorization", b"Bearertoken")], None, id="no space after scheme"),
        pytest.param([(b"x-authorization", b"Bearer x")], None, id="other header"),
    ],
)
def test_extract_bearer(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert extract_bearer(headers) == expected


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        pytest.param(
            [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], InvalidRequest, id="two headers"
        ),
        pytest.param(
            [(b"authorization", b"Bearer a"), (b"Authorization", b"Basic b")], InvalidRequest, id="two schemes"
        ),
        pytest.param([(b"authorization", b"Bearer")], InvalidRequest, id="scheme only"),
        pytest.param([(b"authorization", b"Bearer    ")], InvalidRequest, id="scheme and spaces"),
        pytest.param([(b"authorization", b"Bearer a b")], InvalidRequest, id="two tokens"),
        pytest.param([(b"authorization", b"Bearer a,b")], InvalidRequest, id="comma list"),
        pytest.param([(b"authorization", b"Bearer a\tb")], InvalidRequest, id="tab inside"),
        pytest.param([(b"authorization", b'Bearer "abc"')], InvalidToken, id="quoted"),
        pytest.param([(b"authorization", b"Bearer ===")], InvalidToken, id="padding only"),
        pytest.param([(b"authorization", b"Bearer a=b")], InvalidToken, id="padding inside"),
        pytest.param([(b"authorization", b"Bearer \xc3\xa9")], InvalidToken, id="non-ASCII"),
    ],
)
def test_extract_bearer_refuses(headers: list[tuple[bytes, bytes]], error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        extract_bearer(headers)
    assert b"abc" not in str(caught.value).encode()


# --- authorize -----------------------------------------------------------------------------------------------------


def claims(**raw: Any) -> Claims:
    payload = claims_for(NOW, **raw)
    return Claims(sub=payload["sub"], iss=payload["iss"], exp=payload["exp"], email=None, sid=None, raw=payload)


def match(auth: str = "owner", user_id: str | None = SUBJECT, **route: Any) -> RouteMatch:
    config = RouteConfig(path="/api/{user_id}/{rest:path}", upstream="http://up", auth=auth, **route)  # type: ignore[arg-type]
    return RouteMatch(route=config, params={} if user_id is None else {"user_id": user_id, "rest": "x"})


@pytest.mark.parametrize(
    ("route_match", "token_claims", "allowed"),
    [
        pytest.param(match(), claims(), True, id="owner"),
        pytest.param(match(user_id="someone-else"), claims(), False, id="owner mismatch"),
        pytest.param(match(user_id=SUBJECT.upper()), claims(), False, id="owner compared exactly"),
        pytest.param(match(user_id=None), claims(), False, id="owner without user_id param"),
        pytest.param(match("authenticated", user_id="x"), claims(), True, id="authenticated ignores user_id"),
        pytest.param(match(issuers=(ISSUER,)), claims(), True, id="route issuer"),
        pytest.param(match(issuers=("http://other",)), claims(), False, id="route issuer mismatch"),
        pytest.param(match(required_claims={"role": "admin"}), claims(role="admin"), True, id="required claim"),
        pytest.param(match(required_claims={"role": "admin"}), claims(role="user"), False, id="required claim wrong"),
        pytest.param(match(required_claims={"role": "admin"}), claims(), False, id="required claim missing"),
        pytest.param(
            match(required_claims={"role": "admin"}), claims(role=["user", "admin"]), True, id="required in list"
        ),
        pytest.param(match(required_claims={"email_verified": True}), claims(email_verified=1), False, id="1 != true"),
        pytest.param(match(required_claims={"level": 1}), claims(level=True), False, id="true != 1"),
    ],
)
def test_authorize(route_match: RouteMatch, token_claims: Claims, allowed: bool) -> None:
    if allowed:
        authorize(route_match, token_claims)
    else:
        with pytest.raises(Forbidden):
            authorize(route_match, token_claims)


async def test_rotation_is_accepted_without_a_single_401(signing_key: SigningKey) -> None:
    """Issue 4: a key rotated in at the identity service is accepted at once, by every concurrent request,
    with one JWKS fetch."""
    endpoint = JwksEndpoint()
    endpoint.serve(signing_key)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        await keys.start(refresh_interval=None)
        verifier = TokenVerifier([issuer_config()], keys, clock=FakeClock(NOW))
        new_key = make_key(signing_key.alg, "rotated-in")
        endpoint.serve(signing_key, new_key)
        tokens = [mint(new_key, now=NOW, jti=str(i)) for i in range(100)]
        results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        assert {c.sub for c in results} == {SUBJECT}
        assert endpoint.requests == 2
        assert (await verifier.verify(mint(signing_key, now=NOW))).sub == SUBJECT  # the old key still works


async def test_keys_never_cross_issuers() -> None:
    """Two issuers publishing the same kid: a token is checked only against the keys of the issuer it names."""
    a_key, b_key = make_key("EdDSA", "k1"), make_key("EdDSA", "k1")
    a = JwksEndpoint()
    a.serve(a_key)
    b = JwksEndpoint()
    b.serve(b_key)

    async def route(request: Any) -> Any:
        return await (a if request.url.host == "a.test" else b)(request)

    issuers = [
        issuer_config(issuer="https://a.test", jwks_url="https://a.test/jwks"),
        issuer_config(issuer="https://b.test", jwks_url="https://b.test/jwks"),
    ]
    async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as client:
        keys = JwksCache(issuers, client, clock=FakeClock())
        await keys.start(refresh_interval=None)
        verifier = TokenVerifier(issuers, keys, clock=FakeClock(NOW))
        assert (await verifier.verify(mint(b_key, now=NOW, iss="https://b.test"))).iss == "https://b.test"
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(mint(b_key, now=NOW, iss="https://a.test"))  # B's key, claiming to be A
        assert caught.value.reason == "bad_signature"


async def test_cache_disabled(setup: Setup) -> None:
    verifier = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, cache_size=0)
    token = setup.mint()
    for _ in range(3):
        assert (await verifier.verify(token)).sub == SUBJECT
    assert (verifier.hits, verifier.misses, verifier.cache_size) == (0, 3, 0)


async def test_better_auth_shaped_token() -> None:
    """The exact shape identity issues (shared/reference/better-auth-wire.md 2.7/2.8): header {alg, kid} only, the
    user row in the payload, aud a string, 900 s lifetime, JWKS entries without "use"."""
    key = make_key("EdDSA", "vCVlS4iViOxuvlsjIGdD13VSvYLoMPkH")
    endpoint = JwksEndpoint()
    endpoint.serve(key.public_jwk(use=DROP))
    payload = {
        "iat": int(NOW),
        "name": "Alice",
        "email": "alice@example.com",
        "emailVerified": False,
        "image": None,
        "createdAt": "2026-11-26T12:57:23.311Z",
        "updatedAt": "2026-11-26T12:57:23.311Z",
        "id": "KI6uXfS3",
        "sub": "KI6uXfS3",
        "exp": int(NOW) + 900,
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    token = jwt_encode_exact(key, {"alg": "EdDSA", "kid": key.kid}, payload)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        verifier = TokenVerifier([issuer_config()], keys, clock=FakeClock(NOW))
        claims = await verifier.verify(token)
    assert (claims.sub, claims.email, claims.sid, claims.exp) == ("KI6uXfS3", "alice@example.com", None, int(NOW) + 900)
    assert claims.raw["emailVerified"] is False


def jwt_encode_exact(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Sign exactly this header (PyJWT would add "typ")."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    assert isinstance(key.private_key, Ed25519PrivateKey)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(key.private_key.sign(signing_input.encode()))}"


def test_the_ascii_fast_path_of_header_safe_agrees_with_the_unicode_rule() -> None:
    def reference(value: str) -> bool:
        return all(ch == " " or (ch.isprintable() and not ch.isspace()) for ch in value)

    for code in [*range(0x300), 0x2028, 0x200B, 0xFEFF, 0x1F600]:
        value = f"a{chr(code)}b"
        assert _header_safe(value) == reference(value), hex(code)


def _reference_bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    """extract_bearer as first written (str operations, then the alphabet): the fast one must agree with it."""
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest("more than one Authorization header")
    value = values[0].decode("latin-1").strip(" \t")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    credentials = credentials.lstrip(" ")
    if not credentials:
        raise InvalidRequest("the Bearer scheme needs a token")
    if " " in credentials or "\t" in credentials or "," in credentials:
        raise InvalidRequest("the Authorization header must hold exactly one bearer token")
    body = credentials.rstrip("=")
    if not body or any(ch not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/" for ch in body):
        raise InvalidToken("malformed")
    return credentials


def _outcome(function: Callable[[list[tuple[bytes, bytes]]], str | None], headers: list[tuple[bytes, bytes]]) -> Any:
    try:
        return function(headers)
    except (InvalidRequest, InvalidToken) as exc:
        return type(exc)


SCHEMES = st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Bearerx", b"", b" Bearer", b"\tBearer"])
SEPARATORS = st.sampled_from([b" ", b"  ", b"\t", b"", b" \t"])
CREDENTIAL_PIECES = st.sampled_from(
    [b"a", b"Z9", b"-._~+/", b"=", b"==", b" ", b"\t", b",", b".", b"\xe9", b"\x00", b'"', b"eyJhbGciOiJFZERTQSJ9"]
)
AUTHORIZATION_VALUES = st.tuples(SCHEMES, SEPARATORS, st.lists(CREDENTIAL_PIECES, max_size=6).map(b"".join)).map(
    b"".join
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(AUTHORIZATION_VALUES, max_size=2))
def test_extract_bearer_agrees_with_the_reference(values: list[bytes]) -> None:
    headers = [(b"Authorization", value) for value in values]
    assert _outcome(extract_bearer, headers) == _outcome(_reference_bearer, headers)


# --- Ed25519 through libsodium -----------------------------------------------------------------------------------

_ORDER = 2**252 + 27742317777372353535851937790883648493  # L, the order of the Ed25519 base point


def _cryptography_verdict(public: Any, signed: bytes, signature: bytes) -> bool:
    try:
        public.verify(signature, signed)
    except InvalidSignature:
        return False
    return True


def test_libsodium_and_cryptography_give_the_same_ed25519_verdicts() -> None:
    """Valid, bit-flipped, non-canonical (S + L), truncated, extended and random signatures: both libraries say
    the same, so moving Ed25519 to libsodium changed no outcome."""
    for index in range(60):
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        signed = f"header.payload-{index}".encode() * (index % 5 + 1)
        signature = private.sign(signed)
        s = int.from_bytes(signature[32:], "little")
        variants = [
            signature,
            bytes([signature[0] ^ 1]) + signature[1:],
            signature[:40] + bytes([signature[40] ^ 0x80]) + signature[41:],
            signature[:32] + (s + _ORDER).to_bytes(32, "little"),
            signature[:63],
            signature + b"\x00",
            bytes(64),
            os.urandom(64),
        ]
        for variant in variants:
            expected = _cryptography_verdict(public, signed, variant)
            assert _ed25519_valid(raw, signed, variant) is expected
        assert _ed25519_valid(raw, signed + b"x", signature) is False
        assert _ed25519_valid(raw, signed, signature) is True


# --- ECDSA and RSA called directly --------------------------------------------------------------------------

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _pyjwt_outcome(algorithm: Any, public: Any, signed: bytes, signature: bytes) -> object:
    """What PyJWT's own algorithm object answers: True, False, or the exception type it raises."""
    try:
        return algorithm.verify(signed, algorithm.prepare_key(public), signature)
    except Exception as exc:
        return type(exc)


def _our_outcome(key: jwt.PyJWK, signed: bytes, signature: bytes) -> object:
    try:
        return _signature_check(key)(signed, signature)
    except Exception as exc:
        return type(exc)


def _variants(signature: bytes, *, order: int | None = None) -> list[bytes]:
    half = len(signature) // 2
    variants = [
        signature,
        bytes([signature[0] ^ 1]) + signature[1:],
        signature[:-1] + bytes([signature[-1] ^ 0x80]),
        signature[:-1],
        signature + b"\x00",
        bytes(len(signature)),
        b"\xff" * len(signature),
        os.urandom(len(signature)),
        b"",
    ]
    if order is not None:  # ECDSA: r || s with s replaced by n - s (also valid: ECDSA is malleable), s = n, r = 0
        r, s = signature[:half], int.from_bytes(signature[half:], "big")
        variants += [
            r + (order - s).to_bytes(half, "big"),
            r + order.to_bytes(half, "big"),
            bytes(half) + signature[half:],
        ]
    return variants


def _near_misses(alg: str, private: Any, signed: bytes) -> list[bytes]:
    """Signatures a looser check would accept: for ECDSA, one whose s starts with a zero byte, with that byte left
    out (RFC 7518 §3.4 fixes the length); for RSA, the other padding scheme, or PSS with another salt length."""
    if alg.startswith("ES"):
        algorithm = jwt.get_algorithm_by_name(alg)
        size = len(algorithm.sign(signed, private)) // 2
        while (signature := algorithm.sign(signed, private))[size] != 0:
            pass
        return [signature[:size] + signature[size + 1 :]]
    digest = hashes.SHA256() if alg.endswith("256") else hashes.SHA512()
    pss_max = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)
    pss_zero = padding.PSS(mgf=padding.MGF1(digest), salt_length=0)
    return [private.sign(signed, scheme, digest) for scheme in (padding.PKCS1v15(), pss_max, pss_zero)]


_DIRECT_CASES = [
    ("ES256", lambda: ec.generate_private_key(ec.SECP256R1()), _P256_ORDER),
    ("ES384", lambda: ec.generate_private_key(ec.SECP384R1()), None),
    ("ES512", lambda: ec.generate_private_key(ec.SECP521R1()), None),
    ("ES256K", lambda: ec.generate_private_key(ec.SECP256K1()), None),
    ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), None),
    ("PS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), None),
    ("RS512", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), None),
]


@pytest.mark.parametrize(("alg", "generate", "order"), _DIRECT_CASES, ids=[case[0] for case in _DIRECT_CASES])
def test_direct_ecdsa_and_rsa_checks_give_pyjwts_verdicts(alg: str, generate: Callable[[], Any], order: Any) -> None:
    """The checks that call cryptography directly (issue 7: PyJWT's verify cost ~9 µs more per ES256 token) answer
    every signature variant exactly as PyJWT's algorithm object does: valid, bit-flipped, malleated, out of range,
    truncated, extended, zero, random, empty, or over another message."""
    algorithm = jwt.get_algorithm_by_name(alg)
    for index in range(3):
        private = generate()
        jwk = json.loads(algorithm.to_jwk(private.public_key()))
        key = jwt.PyJWK({**jwk, "alg": alg, "kid": f"k{index}"})
        signed = f"header.payload-{index}".encode()
        signature = algorithm.sign(signed, private)
        outcomes = []
        for variant in _variants(signature, order=order) + _near_misses(alg, private, signed):
            for message in (signed, signed + b"x"):
                expected = _pyjwt_outcome(algorithm, key.key, message, variant)
                assert _our_outcome(key, message, variant) == expected, (alg, variant.hex(), message)
                outcomes.append(expected)
        assert outcomes[0] is True and outcomes[1] is False  # the table holds both verdicts
        assert _signature_check(key).func.__name__ != "<lambda>"  # type: ignore[attr-defined]  # the direct path


def test_a_key_pyjwt_refuses_is_still_refused_by_pyjwt_on_every_check() -> None:
    """An ES256 JWK carrying a P-384 key: PyJWT's prepare_key refuses it (InvalidKeyError) each time it is used;
    the direct path is not taken for it, so each check raises, as PyJWT does (the JWKS parser already drops such a
    key; TokenVerifier would answer ``malformed``)."""
    private = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    key = jwt.PyJWK({**jwk, "alg": "ES256", "kid": "wrong-curve"})
    signature = jwt.get_algorithm_by_name("ES384").sign(b"a.b", private)
    for _ in range(2):
        with pytest.raises(jwt.exceptions.InvalidKeyError):
            _signature_check(key)(b"a.b", signature)


async def test_ed448_keys_are_still_verified_through_pyjwt() -> None:
    private = ed448.Ed448PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    jwk.update({"alg": "EdDSA", "use": "sig", "kid": "ed448"})
    key = SigningKey(alg="EdDSA", kid="ed448", private_key=private, jwk=jwk)
    endpoint = JwksEndpoint()
    endpoint.serve(key)
    async with endpoint.client() as client:
        keys = JwksCache([issuer_config()], client, clock=FakeClock())
        await keys.start(refresh_interval=None)
        verifier = TokenVerifier([issuer_config()], keys, clock=FakeClock(NOW))
        token = mint(key, now=NOW)
        assert (await verifier.verify(token)).sub == SUBJECT
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(tamper_signature(mint(key, now=NOW, jti="2")))
        assert caught.value.reason == "bad_signature"


async def test_verify_now_answers_a_cached_token_as_a_hit_and_refuses_like_verify(setup: Setup) -> None:
    token = setup.mint(sid="s-1")
    claims = await setup.verifier.verify(token)
    assert (setup.verifier.hits, setup.verifier.misses) == (0, 1)
    assert setup.verifier.verify_now(token) == claims
    assert (setup.verifier.hits, setup.verifier.misses) == (1, 1)
    with pytest.raises(InvalidToken) as caught:
        setup.verifier.verify_now("x" * 9000)
    assert caught.value.reason == "oversized"
    revoked = TokenVerifier([issuer_config()], setup.verifier._keys, clock=setup.clock, is_revoked=lambda c: True)
    revoked._cache = setup.verifier._cache  # the same cached verification, now with a revocation list that has it
    with pytest.raises(InvalidToken) as caught:
        revoked.verify_now(token)
    assert caught.value.reason == "revoked"


async def test_cached_claims_keep_only_what_routes_require(setup: Setup) -> None:
    """A cache entry holds sub/email/sid/exp, the configured issuer string and the claims routes require
    (keep_claims), not the whole payload: memory per entry (issue 7, bench.memory)."""
    verifier = TokenVerifier(
        [issuer_config()], setup.verifier._keys, clock=setup.clock, keep_claims=frozenset({"role"})
    )
    claims = await verifier.verify(setup.mint(role="admin", tenant="t1"))
    assert claims.raw == {"role": "admin"}
    assert claims.iss == ISSUER
    assert (claims.sub, claims.email) == (SUBJECT, EMAIL)
    everything = await setup.verifier.verify(setup.mint(role="admin", tenant="t1"))  # keep_claims=None: all of it
    assert everything.raw["tenant"] == "t1" and everything.raw["sub"] == SUBJECT


_GRAMMAR_ALPHABET = "Az09-._~+/= \t,"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40) | st.text(alphabet=_GRAMMAR_ALPHABET, max_size=40).map(str.encode))
def test_the_b64token_check_is_rfc6750s_grammar(data: bytes) -> None:
    """The translate-based check (issue 7: a regex cost ten times more on a 300-character token) accepts exactly
    the RFC 6750 §2.1 b64token grammar."""
    assert _is_b64token(data) == (re.fullmatch(rb"[A-Za-z0-9._~+/-]+=*", data) is not None)


async def test_verify_now_waits_for_nothing_and_counts_nothing_when_a_key_must_be_fetched(jwks_endpoint, clock):
    """The fast lane's check (gateway/express.py): None until the issuer's keys are at hand, then the claims."""
    key = make_key("EdDSA")
    jwks_endpoint.serve(key)
    async with jwks_endpoint.client() as client:
        cache = JwksCache([issuer_config()], client, clock=clock)
        verifier = TokenVerifier([issuer_config()], cache, clock=clock)
        token = mint(key, now=clock())
        assert verifier.verify_now(token) is None  # no keys fetched yet
        assert (verifier.hits, verifier.misses, jwks_endpoint.requests) == (0, 0, 0)
        assert (await verifier.verify(token)).sub == SUBJECT  # fetches, then checks
        assert (verifier.hits, verifier.misses, jwks_endpoint.requests) == (0, 1, 1)
        other = mint(key, now=clock(), sub="someone-else")
        assert verifier.verify_now(other).sub == "someone-else"  # key at hand: checked at once
        assert verifier.verify_now(other).sub == "someone-else"  # then cached
        assert (verifier.hits, verifier.misses, jwks_endpoint.requests) == (1, 2, 1)
        stranger = mint(make_key("EdDSA", kid="k2"), now=clock())
        assert verifier.verify_now(stranger) is None  # an unknown kid: verify decides, after a refetch
        with pytest.raises(InvalidToken) as refused:
            verifier.verify_now(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
        assert refused.value.reason == "bad_signature"
        await cache.aclose()


async def test_headers_of_verified_tokens_are_remembered_and_only_those(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header memo (issue 7): a verified token's header segment is remembered with its alg and kid; a refused
    token's never is, whatever the reason; a remembered header does not make a forged signature or a refused
    payload pass; the memo stops growing at its bound."""
    verifier = setup.verifier
    forged = tamper_signature(setup.mint(jti="forged"))
    signed_but_expired = mint(setup.key, now=NOW - 3600, headers={"typ": "JWT", "n": "expired"})
    for refused in (
        forged,
        resign_header(setup.mint(), {"alg": setup.key.alg, "kid": setup.key.kid, "x": 1}),
        signed_but_expired,  # a good signature, refused on its claims
    ):
        with pytest.raises(InvalidToken):
            await verifier.verify(refused)
    assert verifier._headers == {}
    token = setup.mint(sid="s-1")
    await verifier.verify(token)
    header = token.split(".")[0].encode()
    assert verifier._headers == {header: (setup.key.alg, setup.key.kid)}
    # Same header, fresh payloads: checked in full apart from the header, which is not decoded again.
    decoded: list[bytes] = []
    real = tokens_module._segment
    monkeypatch.setattr(tokens_module, "_segment", lambda data: decoded.append(data) or real(data))
    fresh = setup.mint(sub="someone-else")
    assert (await verifier.verify(fresh)).sub == "someone-else"
    assert decoded == [fresh.split(".")[1].encode()]
    refusals = [(tamper_signature(setup.mint(jti="2")), "bad_signature"), (setup.mint(aud="x"), "bad_audience")]
    for bad, reason in refusals:
        assert bad.split(".")[0].encode() == header
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(bad)
        assert caught.value.reason == reason
    for index in range(100):  # distinct valid headers: the memo keeps at most its bound
        await verifier.verify(setup.mint(headers={"typ": "JWT", "n": index}))
        assert 1 <= len(verifier._headers) <= 64
    assert setup.mint(headers={"typ": "JWT", "n": 99}).split(".")[0].encode() in verifier._headers  # the newest


async def test_a_remembered_header_still_meets_each_issuers_algorithm_allowlist(setup: Setup) -> None:
    """Two issuers whose tokens share a header: the second does not allow the header's alg. A token of the first
    puts the header in the memo; the second's token with the same header is still refused ``alg_not_allowed``."""
    other = "https://other.example"
    others_algorithms = tuple(alg for alg in ("EdDSA", "ES256", "RS256") if alg != setup.key.alg)
    issuers = [issuer_config(), issuer_config(issuer=other, algorithms=others_algorithms)]
    verifier = TokenVerifier(issuers, setup.verifier._keys, clock=setup.clock)
    first = setup.mint()
    await verifier.verify(first)
    second = setup.mint(iss=other)
    assert second.split(".")[0] == first.split(".")[0] and second.split(".")[0].encode() in verifier._headers
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(second)
    assert caught.value.reason == "alg_not_allowed"
