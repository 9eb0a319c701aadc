"""Hypothesis against the whole gateway pipeline, in-process (issue 8, "Bad input"): bearer tokens, request paths
and header lists a client could send. Every answer is either accepted with exactly one meaning or a 4xx; never a
5xx, never an exception. Plus: thousands of distinct invalid tokens leave the verifier's memory bounded.

The app runs on one event loop for the whole module (``asyncio.Runner``), its upstream is an
``httpx.MockTransport`` recorder, and requests are hand-built ASGI scopes (``call_asgi``): bytes a client library
would refuse to send reach the gateway exactly as a server would pass them on.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.app import Gateway
from gateway.errors import GatewayError
from gateway.headers import normalize
from gateway.proof import OWNED_HEADERS
from gateway.routing import canonical_path
from gateway.tokens import TokenVerifier
from tests.gateway._fwd_fixtures import UpstreamRecorder, call_asgi, gateway_config, running_gateway
from tests.gateway.conftest import AUDIENCE, ISSUER, SUBJECT, JwksEndpoint, SigningKey, make_key, mint

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEVER = range(500, 600)


@dataclass
class Harness:
    runner: asyncio.Runner
    app: Gateway
    recorder: UpstreamRecorder
    key: SigningKey

    def call(self, **request: Any) -> Any:
        seen = len(self.recorder.seen)
        result = self.runner.run(call_asgi(self.app, **request))
        forwarded = self.recorder.seen[seen:]
        assert len(forwarded) <= 1
        return result, forwarded[0] if forwarded else None


@pytest.fixture(scope="module")
def gateway() -> Iterator[Harness]:
    key = make_key("EdDSA", "fuzz-1")
    endpoint = JwksEndpoint()
    endpoint.serve(key)
    recorder = UpstreamRecorder()
    with asyncio.Runner() as runner:
        context = running_gateway(gateway_config(), jwks_endpoint=endpoint, recorder=recorder)
        app, _client = runner.run(context.__aenter__())
        try:
            yield Harness(runner, app, recorder, key)
        finally:
            runner.run(context.__aexit__(None, None, None))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed(key: SigningKey, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A compact JWS over exactly these JSON objects, signed by ``key`` (EdDSA signs any bytes)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(key.private_key.sign(signing_input.encode()))}"


# --- tokens ------------------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _claims() -> st.SearchStrategy[dict[str, Any]]:
    plausible = {
        "iss": st.sampled_from([ISSUER, ISSUER + "/", "https://evil.example", ""]) | JSON,
        "aud": st.sampled_from([AUDIENCE, [AUDIENCE], ["x", AUDIENCE], "other"]) | JSON,
        "sub": st.sampled_from([SUBJECT, "alice", " alice", "a\nb", "é", "\u202e", "x" * 300]) | st.text(max_size=8),
        "exp": st.sampled_from([9_999_999_999, 1, "9999999999", True, 10**400]) | JSON,
        "iat": st.sampled_from([1, 0, -1, 9_999_999_999, 1.5]) | JSON,
        "nbf": st.sampled_from([1, 9_999_999_999]) | JSON,
        "email": st.sampled_from(["a@example.com", "a\r\nx: y", "é@example.com", "\x00"]) | JSON,
        "sid": st.text(max_size=6) | JSON,
    }
    return st.fixed_dictionaries({}, optional=plausible)


def _headers() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"alg": st.sampled_from(["EdDSA", "ES256", "RS256", "none", "HS256", "eddsa", ""]) | JSON},
        optional={
            "kid": st.sampled_from(["fuzz-1", "other", "", "\n", "k" * 300]) | JSON,
            "typ": st.sampled_from(["JWT", "at+jwt", "logout+jwt", "jwt"]) | JSON,
            "jku": st.just("https://evil.example/jwks"),
            "jwk": JSON,
            "crit": st.lists(st.text(max_size=4), max_size=2),
            "b64": st.booleans(),
        },
    )


@st.composite
def tokens(draw: st.DrawFn, key: SigningKey) -> str:
    """Signed tokens with odd headers and claims, tampered ones, and shapes that are barely tokens at all."""
    kind = draw(st.sampled_from(["signed", "signed-then-tampered", "forged", "shape"]))
    header, payload = draw(_headers()), draw(_claims())
    if kind == "signed":
        return _signed(key, header, payload)
    if kind == "signed-then-tampered":
        token = _signed(key, header, payload)
        position = draw(st.integers(min_value=0, max_value=len(token) - 1))
        replacement = draw(st.sampled_from("Aa0-_.=+/~"))
        return token[:position] + replacement + token[position + 1 :]
    if kind == "forged":
        signature = draw(st.binary(max_size=80))
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(signature)}"
    alphabet = st.sampled_from("ABCxyz019-_.~+/=")
    return draw(st.text(alphabet, min_size=1, max_size=200))


def _check_accepted(token: str, forwarded: Any) -> None:
    """A 200 must mean one thing: the upstream hears the token's ``sub`` once, and no token."""
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert forwarded is not None
    assert forwarded.values("x-user-id") == [payload["sub"]] == ["alice"]
    assert len(forwarded.values("x-edge-proof")) == 1
    assert forwarded.values("authorization") == []  # never forwarded on an owner route


@FUZZ
@given(data=st.data())
@example(data=None)
def test_fuzzed_tokens_are_accepted_with_one_meaning_or_refused_with_a_4xx(gateway: Harness, data: Any) -> None:
    # data=None: the plain valid token, so the test is known to be able to pass one.
    token = mint(gateway.key, sub="alice") if data is None else data.draw(tokens(gateway.key))
    result, forwarded = gateway.call(
        raw_path=b"/api/alice/tasks", headers=[(b"authorization", f"Bearer {token}".encode("latin-1"))]
    )
    assert result.status not in NEVER, result.body
    assert result.status in (200, 400, 401, 403), result.status
    if result.status == 200:
        _check_accepted(token, forwarded)
    else:
        assert forwarded is None
        assert len(token) < 16 or token.encode() not in result.body  # an error never echoes the token


@FUZZ
@given(claims=_claims(), header=_headers())
def test_verifier_never_raises_anything_but_a_gateway_error(gateway: Harness, claims: Any, header: Any) -> None:
    token = _signed(gateway.key, header, claims)
    try:
        verified = gateway.runner.run(gateway.app.verifier.verify(token))
    except GatewayError as exc:
        assert 400 <= exc.status < 500, exc
        return
    # Accepted: every claim the gateway acts on has the type and value the token carries, nothing coerced.
    assert verified.sub == claims["sub"] and isinstance(claims["sub"], str)
    assert verified.iss == ISSUER == claims["iss"]
    assert type(claims["exp"]) in (int, float) and claims["exp"] > time.time() - 30


@FUZZ
@given(value=st.binary(max_size=120), extra=st.lists(st.binary(max_size=30), max_size=2))
@example(value=b"Bearer", extra=[])
@example(value=b"bearer  a.b.c", extra=[b"Bearer x"])
def test_any_authorization_header_is_a_4xx(gateway: Harness, value: bytes, extra: list[bytes]) -> None:
    value = bytes(b for b in value if b not in b"\r\n\x00")
    headers = [(b"authorization", value)] + [(b"authorization", v) for v in extra]
    result, forwarded = gateway.call(raw_path=b"/api/alice/tasks", headers=headers)
    assert result.status in (400, 401), (value, result.status, result.body)
    assert forwarded is None


# --- paths -------------------------------------------------------------------------------------------------------

PIECES = [
    "alice", SUBJECT, "tasks", "x", ".", "..", "...", "%2e", "%2F", "%2f", "%5C", "\\", ";", "%3B", "%00", "%", "%4",
    "%zz", "%25", "%252F", "%20", " ", "%C3%A9", "%C0%AF", "%EF%BC%8F", "%E2%80%8B", "%FF", "%61", "~", "@", ":",
    "%40", "+", "!", "é", "?", "#", "//", "/",
]  # fmt: skip


@st.composite
def raw_paths(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(["/public/", f"/api/{SUBJECT}/", "/api/", "/me/", "/", "", "/read-only", "//"]))
    pieces = draw(st.lists(st.sampled_from(PIECES) | st.text(max_size=4), max_size=8))
    separators = draw(st.lists(st.sampled_from(["", "/"]), min_size=len(pieces), max_size=len(pieces)))
    text = prefix + "".join(piece + sep for piece, sep in zip(pieces, separators, strict=True))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(raw=raw_paths(), method=st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PATCH"]))
@example(raw=f"/api/{SUBJECT}/tasks".encode(), method="GET")
@example(raw=b"/public/caf%C3%A9", method="GET")
def test_fuzzed_paths_are_forwarded_byte_for_byte_or_refused(gateway: Harness, raw: bytes, method: str) -> None:
    token = mint(gateway.key)  # sub = SUBJECT
    result, forwarded = gateway.call(
        method=method, raw_path=raw, headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    assert result.status in (200, 400, 403, 404, 405), (raw, result.status, result.body)
    if result.status != 200:
        assert forwarded is None
        return
    # Accepted: forwarded exactly as received, and the gateway's reading is everyone's reading.
    assert forwarded.target == raw
    decoded = canonical_path(raw)
    assert decoded == unquote(raw.decode("ascii"), errors="strict")
    assert [unquote(segment) for segment in raw.decode("ascii").split("/")] == decoded.split("/")
    if decoded.startswith("/api/"):
        assert decoded.split("/")[2] == SUBJECT  # the owner check held on the same segment the backend reads


# --- header lists ------------------------------------------------------------------------------------------------

OWNED_SPELLINGS = [
    spelling
    for name in OWNED_HEADERS
    for spelling in (name, name.upper(), name.title(), name.replace("-", "_"), name.replace("-", "_").upper())
]
NAMES = [
    *OWNED_SPELLINGS,
    "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "host", "content-length",
    "transfer-encoding", "x-forwarded-for", "X_Forwarded_For", "x-forwarded-host", "x-forwarded-port", "forwarded",
    "x-real-ip", "x-original-url", "x-http-method-override", "expect", "cookie", "accept", "x-custom", "X_Custom",
    "authorization",
]  # fmt: skip
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FIELD_VALUE_BYTES = [9, *range(0x20, 0x7F), *range(0x80, 0x100)]  # what httptools/h11 pass on: no CR, LF, NUL


def header_names() -> st.SearchStrategy[str]:
    return st.sampled_from(NAMES) | st.text(TCHAR, min_size=1, max_size=12)


def header_values(names: list[str]) -> st.SearchStrategy[bytes]:
    # Connection values that nominate other headers in the list, framing values, and arbitrary field bytes.
    nominations = st.lists(st.sampled_from(names or ["x-custom"]), max_size=3).map(lambda n: ", ".join(n).encode())
    return (
        nominations
        | st.sampled_from([b"0", b"5", b"chunked", b"gzip, chunked", b"close", b"keep-alive", b"1, 1", b"-1"])
        | st.lists(st.sampled_from(FIELD_VALUE_BYTES), max_size=20).map(bytes)
    )


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    names = draw(st.lists(header_names(), max_size=10))
    values = [draw(header_values(names)) for _ in names]
    return [(name.encode(), value) for name, value in zip(names, values, strict=True)]


@FUZZ
@given(headers=header_lists())
@example(headers=[(b"x-custom", b"1")])
@example(headers=[(b"Connection", b"x-custom"), (b"x-custom", b"1"), (b"X_User_Id", b"admin")])
def test_fuzzed_header_lists_reach_the_upstream_rewritten_or_are_refused(
    gateway: Harness, headers: list[tuple[bytes, bytes]]
) -> None:
    result, forwarded = gateway.call(method="POST", raw_path=b"/public/echo", headers=headers)
    assert result.status in (200, 400, 413), (headers, result.status, result.body)
    if result.status != 200:
        assert forwarded is None
        return
    names = [normalize(name) for name, _ in forwarded.headers]
    # The gateway's own headers: exactly once each (anonymous: no identity), whatever the client sent.
    assert names.count(b"x-request-id") == 1 and names.count(b"x-edge-proof") == 1
    assert b"x-user-id" not in names and b"x-user-email" not in names
    nominated = {
        normalize(token.strip())
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    hop_by_hop = {b"connection", b"keep-alive", b"te", b"trailer", b"upgrade", b"proxy-authorization"}
    ours = {b"x-request-id", b"x-edge-proof", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
    framing = {b"host", b"content-length", b"transfer-encoding"}
    for name, value in forwarded.headers:
        key = normalize(name)
        assert key not in hop_by_hop, name
        if key in ours | framing:
            continue
        assert key not in nominated, name
        # Anything else is one of the client's own headers, passed on unchanged.
        assert (name.lower(), value) in [(n.lower(), v) for n, v in headers], (name, value)


# --- memory under invalid tokens ---------------------------------------------------------------------------------


def test_thousands_of_distinct_invalid_tokens_keep_memory_bounded(gateway: Harness) -> None:
    """Every distinct bad token is remembered as a failure in a cache with a fixed bound (tokens.py). Once it is
    full, thousands more distinct tokens must not allocate anything that stays: a leak of even one object per
    token would show as thousands of blocks (``sys.getallocatedblocks``, no tracing overhead)."""
    verifier: TokenVerifier = gateway.app.verifier
    template = mint(gateway.key, sub="alice")
    head, payload, _ = template.split(".")

    async def flood(count: int) -> None:
        for _ in range(count):
            token = f"{head}.{payload}.{_b64(secrets.token_bytes(64))}"  # a distinct token, a bad signature
            try:
                await verifier.verify(token)
            except GatewayError as exc:
                assert exc.status == 401
            else:
                raise AssertionError("a random signature verified")

    verified = verifier.cache_size
    gateway.runner.run(flood(10_500))  # fills the failure cache (10 000 entries by default)
    gc.collect()
    before = sys.getallocatedblocks()
    gateway.runner.run(flood(6_000))
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert grown < 1_500, f"{grown} more memory blocks after 6 000 more distinct invalid tokens"
    assert verifier.cache_size == verified  # nothing invalid went into the verified-token cache


def test_a_subject_that_needs_percent_encoding_owns_its_path(gateway: Harness) -> None:
    # The owner check compares the decoded segment with sub; the upstream gets sub as latin-1 header bytes.
    sub = "é user@x"
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": int(time.time()), "exp": 9_999_999_999}
    token = _signed(gateway.key, {"alg": "EdDSA", "kid": "fuzz-1"}, claims)
    raw = f"/api/{quote(sub, safe='@')}/tasks".encode()
    result, forwarded = gateway.call(raw_path=raw, headers=[(b"authorization", f"Bearer {token}".encode())])
    assert result.status == 200, result.body
    assert forwarded.values("x-user-id") == [sub]
