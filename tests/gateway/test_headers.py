"""Header rewriting (gateway/headers.py): pure functions driven by tables of cases."""

from __future__ import annotations

import ipaddress

import pytest

from gateway import proof
from gateway.errors import BadRequest, ConflictingFraming
from gateway.headers import Forwarding, Identity, downstream_headers, normalize, upstream_headers

SECRET = b"s" * 32
USER = Identity(user_id="user-123", email="user@example.com")
ANONYMOUS = Identity(user_id=None, email=None)
TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


def rewrite(
    headers: list[tuple[bytes, bytes]],
    *,
    identity: Identity = USER,
    peer: str | None = "203.0.113.7",
    scheme: str = "http",
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = TRUSTED,
    forward_authorization: bool = False,
):
    return upstream_headers(
        headers,
        method="GET",
        target="/api/user-123/tasks?x=1",
        forwarding=Forwarding(peer=peer, scheme=scheme, trusted_proxies=trusted),
        identity=identity,
        forward_authorization=forward_authorization,
        request_id="rid-1",
        proof_secret=SECRET,
        timestamp=1_700_000_000,
    )


def values(headers: list[tuple[bytes, bytes]], name: str) -> list[bytes]:
    return [v for k, v in headers if normalize(k) == normalize(name.encode())]


OWNED_SPOOFS = [
    pytest.param([(b"x-user-id", b"admin")], "x-user-id", id="x-user-id lower case"),
    pytest.param([(b"X-User-Id", b"admin")], "x-user-id", id="X-User-Id canonical case"),
    pytest.param([(b"X_User_Id", b"admin")], "x-user-id", id="X_User_Id underscores"),
    pytest.param([(b"x_user-id", b"admin")], "x-user-id", id="x_user-id mixed separators"),
    pytest.param([(b"X-USER-EMAIL", b"a@evil")], "x-user-email", id="X-USER-EMAIL upper case"),
    pytest.param([(b"x_user_email", b"a@evil")], "x-user-email", id="x_user_email underscores"),
    pytest.param([(b"X-Request-Id", b"mine")], "x-request-id", id="X-Request-Id"),
    pytest.param([(b"x_request_id", b"mine")], "x-request-id", id="x_request_id underscores"),
    pytest.param([(b"X-Edge-Proof", b"v1;t=1;s=x")], "x-edge-proof", id="X-Edge-Proof"),
    pytest.param([(b"x_edge_proof", b"v1;t=1;s=x")], "x-edge-proof", id="x_edge_proof underscores"),
    pytest.param(
        [(b"x-user-id", b"a"), (b"X-User-Id", b"b"), (b"x_user_id", b"c")], "x-user-id", id="three copies at once"
    ),
]


@pytest.mark.parametrize(("headers", "name"), OWNED_SPOOFS)
@pytest.mark.parametrize("identity", [USER, ANONYMOUS], ids=["authenticated", "anonymous"])
def test_client_copies_of_owned_headers_are_removed_in_every_spelling(headers, name, identity):
    out = rewrite([(b"accept", b"*/*"), *headers], identity=identity).headers
    found = values(out, name)
    # Only the gateway's own copy survives, in its canonical spelling; anonymous requests carry no identity.
    spoofed = {v for _, v in headers}
    assert not spoofed & set(found)
    assert all(k == k.lower() and b"_" not in k for k, _ in out)
    expected = {
        "x-user-id": [b"user-123"] if identity.user_id else [],
        "x-user-email": [b"user@example.com"] if identity.email else [],
        "x-request-id": [b"rid-1"],
    }
    if name in expected:
        assert found == expected[name]
    else:
        assert len(found) == 1


@pytest.mark.parametrize("identity", [USER, ANONYMOUS], ids=["authenticated", "anonymous"])
def test_owned_headers_appear_exactly_once_and_the_proof_verifies(identity):
    out = rewrite([], identity=identity).headers
    for name in proof.OWNED_HEADERS:
        expected = 0 if identity.user_id is None and name in ("x-user-id", "x-user-email") else 1
        assert len(values(out, name)) == expected, name
    verifier = proof.ProofVerifier([SECRET], clock=lambda: 1_700_000_000)
    proven = verifier.verify("GET", "/api/user-123/tasks?x=1", out)
    assert (proven.user_id, proven.email, proven.request_id) == (identity.user_id, identity.email, "rid-1")


def test_the_proof_does_not_verify_for_another_target():
    out = rewrite([]).headers
    verifier = proof.ProofVerifier([SECRET], clock=lambda: 1_700_000_000)
    with pytest.raises(proof.ProofError):
        verifier.verify("GET", "/api/user-123/tasks?x=2", out)


STRIPPED = [
    pytest.param([(b"connection", b"keep-alive")], ["connection"], id="Connection"),
    pytest.param([(b"keep-alive", b"timeout=5")], ["keep-alive"], id="Keep-Alive"),
    pytest.param([(b"proxy-connection", b"keep-alive")], ["proxy-connection"], id="Proxy-Connection"),
    pytest.param([(b"te", b"trailers")], ["te"], id="TE"),
    pytest.param([(b"trailer", b"x-checksum")], ["trailer"], id="Trailer"),
    pytest.param([(b"upgrade", b"websocket")], ["upgrade"], id="Upgrade"),
    pytest.param([(b"proxy-authorization", b"Basic eDp5")], ["proxy-authorization"], id="Proxy-Authorization"),
    pytest.param([(b"expect", b"100-continue")], ["expect"], id="Expect (answered by the gateway's server)"),
    pytest.param([(b"host", b"evil.example")], ["host"], id="Host (the upstream client sets the upstream's)"),
    pytest.param([(b"forwarded", b"for=1.2.3.4")], ["forwarded"], id="Forwarded"),
    pytest.param([(b"x-real-ip", b"1.2.3.4")], ["x-real-ip"], id="X-Real-IP"),
    pytest.param([(b"x_real_ip", b"1.2.3.4")], ["x-real-ip", "x_real_ip"], id="X_Real_IP underscores"),
    pytest.param([(b"x-forwarded-port", b"443")], ["x-forwarded-port"], id="X-Forwarded-Port from untrusted"),
    pytest.param([(b"x-forwarded-prefix", b"/admin")], ["x-forwarded-prefix"], id="X-Forwarded-Prefix untrusted"),
    pytest.param([(b"x-original-url", b"/admin")], ["x-original-url"], id="X-Original-URL"),
    pytest.param([(b"x-rewrite-url", b"/admin")], ["x-rewrite-url"], id="X-Rewrite-URL"),
    pytest.param([(b"x-http-method-override", b"DELETE")], ["x-http-method-override"], id="X-HTTP-Method-Override"),
    # More client-address sources next to the X-Forwarded-For the gateway sets (Akamai/Cloudflare, nginx ingress).
    pytest.param([(b"x-client-ip", b"1.2.3.4")], ["x-client-ip"], id="X-Client-IP"),
    pytest.param([(b"true-client-ip", b"1.2.3.4")], ["true-client-ip"], id="True-Client-IP"),
    pytest.param([(b"X_Client_IP", b"1.2.3.4")], ["x-client-ip", "x_client_ip"], id="X_Client_IP underscores"),
    pytest.param([(b"x-original-forwarded-for", b"1.2.3.4")], ["x-original-forwarded-for"], id="X-Original-Fwd-For"),
    # More re-route / re-method overrides honoured after the access decision (IIS, Symfony, Laravel, Spring).
    pytest.param([(b"x-original-method", b"DELETE")], ["x-original-method"], id="X-Original-Method"),
    pytest.param([(b"x-override-url", b"/admin")], ["x-override-url"], id="X-Override-URL"),
    pytest.param([(b"X-Original-URL", b"/admin")], ["x-original-url"], id="X-Original-URL mixed case"),
    pytest.param(
        [(b"connection", b"close, X-Custom, x_other"), (b"x-custom", b"1"), (b"X-Other", b"2"), (b"x-kept", b"3")],
        ["x-custom", "x-other"],
        id="Connection-nominated headers",
    ),
    pytest.param(
        [(b"Connection", b"X-Forwarded-Host"), (b"x-forwarded-host", b"evil")],
        [],
        id="Connection-nominated X-Forwarded-Host is still set by the gateway",
    ),
    pytest.param(
        [(b"connection", b"x-a"), (b"connection", b"X-B"), (b"x-a", b"1"), (b"x-b", b"2")],
        ["x-a", "x-b"],
        id="two Connection headers",
    ),
    pytest.param([(b"authorization", b"Bearer abc.def.ghi")], ["authorization"], id="Authorization (protected)"),
]


@pytest.mark.parametrize(("headers", "gone"), STRIPPED)
def test_hop_by_hop_and_risky_headers_are_not_forwarded(headers, gone):
    out = rewrite([*headers, (b"accept", b"text/html")]).headers
    names = [k for k, _ in out]
    for name in gone:
        assert name.encode() not in names, name
    for name in (b"connection", b"keep-alive", b"te", b"upgrade", b"host"):
        assert name not in names
    assert values(out, "accept") == [b"text/html"]
    if any(k == b"x-kept" for k, _ in headers):
        assert values(out, "x-kept") == [b"3"]


@pytest.mark.parametrize(
    ("forward", "expected"),
    [pytest.param(False, [], id="dropped by default"), pytest.param(True, [b"Bearer t"], id="forward_token")],
)
def test_authorization_is_forwarded_only_when_asked(forward, expected):
    out = rewrite([(b"authorization", b"Bearer t")], forward_authorization=forward).headers
    assert values(out, "authorization") == expected


FORWARDED = [
    pytest.param(
        "203.0.113.7",
        [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"evil")],
        ("203.0.113.7", "http", "gateway.example"),
        id="untrusted peer: client values ignored",
    ),
    pytest.param(
        "203.0.113.7",
        [(b"x_forwarded_for", b"1.2.3.4"), (b"X-Forwarded-For", b"5.6.7.8")],
        ("203.0.113.7", "http", "gateway.example"),
        id="untrusted peer: every spelling ignored",
    ),
    pytest.param(
        "10.1.2.3",
        [(b"x-forwarded-for", b"198.51.100.1"), (b"x-forwarded-proto", b"https"), (b"x-forwarded-host", b"app.test")],
        ("198.51.100.1, 10.1.2.3", "https", "app.test"),
        id="trusted proxy: believed, peer appended",
    ),
    pytest.param(
        "10.1.2.3",
        [(b"x-forwarded-for", b"198.51.100.1, 192.0.2.9"), (b"x-forwarded-for", b"192.0.2.10")],
        ("198.51.100.1, 192.0.2.9, 192.0.2.10, 10.1.2.3", "http", "gateway.example"),
        id="trusted proxy: repeated X-Forwarded-For joined in order",
    ),
    pytest.param(
        "10.1.2.3",
        [(b"x_forwarded_for", b"6.6.6.6")],
        ("10.1.2.3", "http", "gateway.example"),
        id="trusted proxy: underscore spelling never believed",
    ),
    pytest.param(
        "10.1.2.3",
        [(b"x-forwarded-proto", b"https"), (b"x-forwarded-proto", b"http")],
        ("10.1.2.3", "http", "gateway.example"),
        id="trusted proxy: ambiguous proto ignored",
    ),
    pytest.param("2001:db8::5", [], ("2001:db8::5", "http", "gateway.example"), id="IPv6 peer"),
    pytest.param(None, [(b"x-forwarded-for", b"1.2.3.4")], (None, "http", "gateway.example"), id="unix socket"),
]


@pytest.mark.parametrize(("peer", "headers", "expected"), FORWARDED)
def test_x_forwarded_headers_come_from_the_peer_unless_it_is_a_trusted_proxy(peer, headers, expected):
    out = rewrite([(b"host", b"gateway.example"), *headers], peer=peer).headers
    xff, proto, host = expected
    assert values(out, "x-forwarded-for") == ([xff.encode()] if xff else [])
    assert values(out, "x-forwarded-proto") == [proto.encode()]
    assert values(out, "x-forwarded-host") == [host.encode()]


def test_other_x_forwarded_headers_pass_from_a_trusted_proxy():
    out = rewrite([(b"x-forwarded-port", b"443")], peer="10.0.0.1").headers
    assert values(out, "x-forwarded-port") == [b"443"]


def test_https_scheme_is_reported():
    assert values(rewrite([], scheme="https").headers, "x-forwarded-proto") == [b"https"]


FRAMING = [
    pytest.param([], None, False, id="no body"),
    pytest.param([(b"content-length", b"0")], 0, False, id="empty body"),
    pytest.param([(b"content-length", b"42")], 42, True, id="Content-Length"),
    pytest.param([(b"transfer-encoding", b"chunked")], None, True, id="chunked"),
    pytest.param([(b"Transfer-Encoding", b" Chunked ")], None, True, id="chunked, any case"),
]


@pytest.mark.parametrize(("headers", "length", "has_body"), FRAMING)
def test_framing_is_the_gateways_own(headers, length, has_body):
    result = rewrite(headers)
    assert (result.content_length, result.has_body) == (length, has_body)
    assert values(result.headers, "transfer-encoding") == []
    assert values(result.headers, "content-length") == ([str(length).encode()] if length is not None else [])


BAD_FRAMING = [
    pytest.param([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], ConflictingFraming, id="CL with TE"),
    pytest.param(
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], ConflictingFraming, id="TE with CL, any case"
    ),
    pytest.param([(b"content-length", b"5"), (b"content-length", b"6")], BadRequest, id="two Content-Lengths"),
    pytest.param([(b"content-length", b"5"), (b"content-length", b"5")], BadRequest, id="duplicate Content-Length"),
    pytest.param([(b"content-length", b"5, 5")], BadRequest, id="Content-Length list"),
    pytest.param([(b"content-length", b"-1")], BadRequest, id="negative Content-Length"),
    pytest.param([(b"content-length", b"0x10")], BadRequest, id="hex Content-Length"),
    pytest.param([(b"content-length", b"1" * 30)], BadRequest, id="absurd Content-Length"),
    pytest.param([(b"host", b"a.example"), (b"host", b"b.example")], BadRequest, id="two Host headers"),
    pytest.param([(b"transfer-encoding", b"gzip, chunked")], BadRequest, id="transfer coding other than chunked"),
    pytest.param(
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], BadRequest, id="chunked twice"
    ),
]


@pytest.mark.parametrize(("headers", "error"), BAD_FRAMING)
def test_ambiguous_framing_is_refused(headers, error):
    with pytest.raises(error):
        rewrite(headers)


@pytest.mark.parametrize(
    "identity",
    [
        pytest.param(Identity("user\r\nx-admin: 1", None), id="CRLF in sub"),
        pytest.param(Identity("user-1", "a@b\x00c"), id="NUL in email"),
        pytest.param(Identity(" user-1", None), id="leading space"),
        pytest.param(Identity("user-1", "\u5c71\u7530@example.jp"), id="beyond latin-1"),
    ],
)
def test_claims_that_cannot_travel_in_a_header_are_refused(identity):
    with pytest.raises(ValueError):
        rewrite([], identity=identity)


def test_latin1_claims_are_sent_as_latin1_and_proven():
    identity = Identity("user-1", "jos\u00e9@example.com")
    out = rewrite([], identity=identity).headers
    assert values(out, "x-user-email") == ["jos\u00e9@example.com".encode("latin-1")]
    verifier = proof.ProofVerifier([SECRET], clock=lambda: 1_700_000_000)
    assert verifier.verify("GET", "/api/user-123/tasks?x=1", out).email == "jos\u00e9@example.com"


def test_other_headers_keep_their_order_and_values():
    headers = [(b"Accept", b"a"), (b"Cookie", b"s=1"), (b"cookie", b"t=2"), (b"X-Custom", b"v")]
    out = rewrite(headers).headers
    assert [(k, v) for k, v in out if k in (b"accept", b"cookie", b"x-custom")] == [
        (b"accept", b"a"),
        (b"cookie", b"s=1"),
        (b"cookie", b"t=2"),
        (b"x-custom", b"v"),
    ]


RESPONSES = [
    pytest.param(
        [(b"Set-Cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"), (b"Set-Cookie", b"c=3")],
        [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"), (b"set-cookie", b"c=3")],
        id="repeated Set-Cookie stay separate",
    ),
    pytest.param(
        [(b"content-encoding", b"gzip"), (b"content-length", b"20")],
        [(b"content-encoding", b"gzip"), (b"content-length", b"20")],
        id="Content-Encoding and Content-Length untouched",
    ),
    pytest.param(
        [(b"connection", b"keep-alive, x-internal"), (b"keep-alive", b"timeout=5"), (b"x-internal", b"1")],
        [],
        id="hop-by-hop and nominated removed",
    ),
    pytest.param([(b"transfer-encoding", b"chunked")], [], id="Transfer-Encoding removed (re-framed)"),
    pytest.param([(b"upgrade", b"h2c"), (b"trailer", b"x")], [], id="Upgrade and Trailer removed"),
    pytest.param([(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")], [], id="Date is the gateway server's"),
    pytest.param([(b"x-request-id", b"upstream-id")], [], id="upstream request id replaced"),
]


@pytest.mark.parametrize(("upstream", "expected"), RESPONSES)
def test_response_headers(upstream, expected):
    assert downstream_headers(upstream, "rid-1") == [*expected, (b"x-request-id", b"rid-1")]


def _reference_claim_bytes(value: str) -> bytes:
    if value != value.strip(" \t") or any(ch < " " or "\x7f" <= ch < "\xa0" for ch in value):
        raise ValueError("claim not representable in an HTTP header")
    return value.encode("latin-1")


@pytest.mark.parametrize("where", ["{}x", "x{}", "x{}x", "{}"])
def test_claim_bytes_fast_path_agrees_with_the_rule(where):
    from gateway.headers import _claim_bytes

    for code in [*range(0x180), 0x2028, 0xFEFF, 0x1F600]:
        value = where.format(chr(code))
        try:
            expected: bytes | None = _reference_claim_bytes(value)
        except (ValueError, UnicodeEncodeError):
            expected = None
        try:
            actual: bytes | None = _claim_bytes(value)
        except ValueError:
            actual = None
        assert actual == expected, (hex(code), where)
