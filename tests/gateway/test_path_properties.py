"""Property tests: a path the gateway accepts has exactly one reading of ``{user_id}`` (issue 4).

"One reading" is checked against the ways a backend may read the same bytes: decode-then-split (Starlette,
uvicorn's ``scope["path"]``), split-then-decode (per-segment decoders), Starlette's own router on the decoded
path, and re-encoding the value and reading it again. Paths are generated both from a vocabulary of known
trouble (encoded separators, dots, overlong UTF-8, fullwidth look-alikes, ...) and from arbitrary bytes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote, unquote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.routing import Match, Route

from gateway.config import RouteConfig
from gateway.errors import UnsafePath
from gateway.routing import Router, _decode_checked, canonical_path

OWNER = RouteConfig(path="/api/{user_id}/{rest:path}", upstream="http://127.0.0.1:8002", auth="owner")
ROUTER = Router([OWNER])
STARLETTE = Route("/api/{user_id}/{rest:path}", endpoint=lambda request: None)

PIECES = [
    "a", "alice", "bob", "0", "-", "_", "~", ".", "..", "/", "//", "%2F", "%2f", "%2e", "%2E", "%25", "%252F",
    "%00", "%0a", "%20", " ", "%09", "%3B", ";", "\\", "%5C", "%3F", "%23", "%40", "@", ":", "+", "%2B", "!",
    "%C3%A9", "%c3%a9", "%C0%AF", "%C0%AE", "%E0%80%AF", "%ED%A0%80", "%EF%BC%8F", "%EF%BC%8E", "%E2%80%A4",
    "%E2%80%8B", "%FF", "%", "%4", "%zz", "%%", "é", "\u0000", "\r\n", "%61", "%7E", "*", "'", "(", ")", "$",
    "&", ",", "=", "%E6%97%A5",
]  # fmt: skip
SAFE_SEGMENT_CHARS = "abcXYZ019-_~.!$&'()*+,=:@"


def owner_user_id(raw: bytes) -> str | None:
    """The user_id the gateway would authorize on, or None if the path is refused or does not match."""
    try:
        path = canonical_path(raw)
    except UnsafePath:
        return None
    match = ROUTER.match("GET", path)
    return None if match is None else match.params["user_id"]


def check_one_reading(raw: bytes) -> None:
    user_id = owner_user_id(raw)
    if user_id is None:
        return
    path = canonical_path(raw)
    # The value itself: nothing any backend could split on, decode again, or strip.
    assert user_id
    assert not any(ch in user_id for ch in "/\\%;?#")
    assert not any(unicodedata.category(ch).startswith("C") for ch in user_id)
    assert user_id == user_id.strip()
    assert user_id.strip(".") != ""
    # Decode-then-split (uvicorn scope["path"] + Starlette routing) reads the same user_id.
    assert path == unquote(raw.decode("ascii"), errors="strict")
    matched, child = STARLETTE.matches({"type": "http", "path": path, "method": "GET", "root_path": ""})
    assert matched is Match.FULL and child["path_params"]["user_id"] == user_id
    # Split-then-decode (a per-segment decoder) reads the same user_id.
    raw_segment = raw.split(b"/")[2]
    assert unquote_to_bytes(raw_segment).decode("utf-8") == user_id
    # Decoding is idempotent on what we accept: decoding the value again changes nothing.
    assert unquote(user_id) == user_id
    # Re-encoding the value (fully, or only what must be) and reading it again gives the same value.
    for encoded in (quote(user_id, safe=""), quote(user_id, safe=SAFE_SEGMENT_CHARS)):
        assert owner_user_id(f"/api/{encoded}/x".encode("ascii")) == user_id
    # Hex case does not create a second reading.
    for case in (bytes.upper, bytes.lower):
        recased = re.sub(rb"%[0-9A-Fa-f]{2}", lambda m, case=case: case(m.group()), raw)  # type: ignore[misc]
        assert owner_user_id(recased) == user_id


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=8), st.lists(st.sampled_from(PIECES), max_size=4))
@example(["alice"], ["tasks"])
@example(["alice%2Fbob"], ["tasks"])
@example(["%C0%AF"], ["x"])
def test_vocabulary_paths_have_one_reading(user_part: list[str], rest_part: list[str]) -> None:
    raw = ("/api/" + "".join(user_part) + "/" + "".join(rest_part)).encode("utf-8")
    check_one_reading(raw)


# Raw pchar characters and every possible percent-escape: about a fifth of these segments are accepted, so the
# property is exercised on many accepted paths, not only on refusals.
SEGMENT_PIECE = st.one_of(
    st.sampled_from(list(SAFE_SEGMENT_CHARS)),
    st.integers(0, 255).map(lambda byte: f"%{byte:02X}"),
    st.integers(0, 255).map(lambda byte: f"%{byte:02x}"),
    st.sampled_from(["%C3%A9", "%E6%97%A5", "%F0%9F%98%80", "%CE%A9", "%D0%96"]),
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(SEGMENT_PIECE, min_size=1, max_size=12), st.lists(SEGMENT_PIECE, max_size=4))
def test_generated_segments_have_one_reading(user_part: list[str], rest_part: list[str]) -> None:
    check_one_reading(("/api/" + "".join(user_part) + "/" + "".join(rest_part)).encode("ascii"))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=10))
def test_arbitrary_bytes_have_one_reading(user_part: bytes, rest_part: bytes) -> None:
    check_one_reading(b"/api/" + user_part + b"/" + rest_part)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=20))
@example("alice")
@example("al/ice")
@example("..")
@example("a%2Fb")
@example("\uff0f")
def test_no_user_id_can_be_read_as_another(user_id: str) -> None:
    """Whatever a client encodes, the gateway either refuses it or reads back exactly what was encoded."""
    for encoded in (quote(user_id, safe=""), quote(user_id, safe=SAFE_SEGMENT_CHARS)):
        read = owner_user_id(f"/api/{encoded}/x".encode("ascii"))
        assert read is None or read == user_id


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"/api/alice/x", id="plain"),
        pytest.param(b"/api/al%C3%A9/x", id="encoded UTF-8"),
        pytest.param(b"/api/a%20b/x", id="inner space"),
        pytest.param(b"/api/a%40b/x", id="encoded at"),
    ],
)
def test_known_paths_satisfy_the_property(raw: bytes) -> None:
    assert owner_user_id(raw) is not None
    check_one_reading(raw)


# --- the plain-path fast path ------------------------------------------------------------------------------------

PLAIN_PIECES = [*SAFE_SEGMENT_CHARS, "/", "//", ".", "..", "...", "%", "%41", " ", "\\", ";", "é", "\x00"]


def _reading(function: Callable[[bytes], str], raw: bytes) -> str | None:
    try:
        return function(raw)
    except UnsafePath:
        return None


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PLAIN_PIECES), max_size=12))
@example(["/"])
@example(["/", "/"])
@example(["/", ".", "/"])
@example(["/", "a", "/", "..", "/"])
@example(["/", "...", "a"])
@example(["/", "a", "/"])
@example([])
def test_the_plain_path_fast_path_agrees_with_the_full_check(pieces: list[str]) -> None:
    """canonical_path answers most paths with one compiled match (_PLAIN); it must accept exactly what the
    byte-by-byte reference accepts and read it the same way."""
    raw = "".join(pieces).encode("utf-8")
    assert _reading(canonical_path, raw) == _reading(_decode_checked, raw)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=30))
def test_the_fast_path_agrees_on_arbitrary_bytes(tail: bytes) -> None:
    raw = b"/" + tail
    assert _reading(canonical_path, raw) == _reading(_decode_checked, raw)
