"""Header rewriting between client and upstream. Pure functions: data in, header lists out (pomerium's shape).

Request headers (client -> upstream), :func:`upstream_headers`:

* Framing is the gateway's own: the client's ``Content-Length``/``Transfer-Encoding`` are validated and dropped;
  the upstream client re-frames the streamed body (``Content-Length`` when the client declared one, else
  chunked). Both together is a smuggling signature and refused (RFC 9112 §6.3), as are two ``Host`` headers
  (RFC 9112 §3.2), a ``Content-Length`` that is not one plain decimal number (RFC 9110 §8.6) and a
  ``Transfer-Encoding`` other than plain ``chunked``.
* Hop-by-hop headers (RFC 9110 §7.6.1) and every header a ``Connection`` header nominates are removed.
* Headers the gateway owns (identity, request id, proof, ``X-Forwarded-*``) are removed in every spelling:
  names are compared case-insensitively *and* with ``_`` read as ``-``, because many backends (CGI/WSGI
  ``HTTP_X_USER_ID``, nginx with ``underscores_in_headers``) read ``X_User_Id`` as ``X-User-Id``
  (oauth2-proxy CVE-2025-64484).
* Headers some frameworks honour to re-read the method or path after the gateway decided on them
  (``X-HTTP-Method-Override``, ``X-Original-URL``, ...) are removed: the access decision is made on exactly
  what is forwarded (issue 4, "One canonical path").
* ``Host`` becomes the upstream's own authority (set by the upstream client); the client's goes to
  ``X-Forwarded-Host``.
* ``X-Forwarded-For``/``-Proto``/``-Host`` come from the TCP peer; a client's values are believed only when the
  peer is a configured trusted proxy, and then the peer is appended to its ``X-Forwarded-For``.
* Then exactly one ``X-Request-Id``, ``X-User-Id``, ``X-User-Email`` (absent on anonymous requests) and
  ``X-Edge-Proof`` are appended.

Response headers (upstream -> client), :func:`downstream_headers`: hop-by-hop and ``Connection``-nominated
headers are removed, everything else is kept as the raw list (repeated ``Set-Cookie`` stay separate, and
``Content-Encoding`` is untouched because the body is forwarded raw).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from gateway import proof
from gateway.errors import BadRequest, ConflictingFraming

Header = tuple[bytes, bytes]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: RFC 9110 §7.6.1 (plus ``Proxy-Connection``, which clients still send, and the RFC 2616 §13.5.1 proxy
#: authentication pair, which is meant for the gateway, never the upstream).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

_OWNED = frozenset(name.encode() for name in proof.OWNED_HEADERS)
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
#: Never forwarded from a client. ``Expect`` is answered by the gateway's own server (100-continue) and means
#: nothing to the upstream client; ``Forwarded``/``X-Real-IP``/``X-Client-IP``/``True-Client-IP``/
#: ``X-Original-Forwarded-For`` would be a second, unchecked client-address source next to the ``X-Forwarded-For``
#: the gateway sets; the overrides re-route or re-method a request after the access decision (Symfony/IIS
#: ``X-Original-URL``/``X-Rewrite-URL``, ``X-Override-URL``, ``X-Original-Method``, Rails/Express
#: ``X-HTTP-Method-Override``).
_ALWAYS_DROPPED = (
    HOP_BY_HOP
    | _OWNED
    | _FORWARDED
    | {
        b"host",
        b"content-length",
        b"expect",
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"x-original-forwarded-for",
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-override-url",
        b"x-original-method",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
#: Response headers the gateway replaces: its own server adds ``Date``; the request id is the gateway's.
_RESPONSE_DROPPED = HOP_BY_HOP | {b"date", b"x-request-id"}
#: ``Connection`` values that nominate only names dropped anyway (issue 7: the usual upstream answer, no parsing).
_PLAIN_CONNECTION = frozenset({b"keep-alive"})


def normalize(name: bytes) -> bytes:
    """The name as a lenient backend reads it: lower case, ``_`` as ``-``."""
    return name.lower().replace(b"_", b"-")


def _tokens(values: Iterable[bytes]) -> set[bytes]:
    """Header names listed in ``Connection`` values (RFC 9110 §7.6.1), normalised."""
    return {normalize(token.strip()) for value in values for token in value.split(b",") if token.strip()}


class Identity(NamedTuple):
    """Who the gateway vouches for on one request; ``user_id`` None means anonymous (a public route)."""

    user_id: str | None
    email: str | None


class Forwarding(NamedTuple):
    """What the gateway knows about the connection, from the ASGI scope (never from client headers)."""

    peer: str | None  # the TCP peer's IP address; None on a Unix socket
    scheme: str  # "http" or "https": how the client reached the gateway
    trusted_proxies: Sequence[IPNetwork] = ()


class UpstreamHeaders(NamedTuple):
    headers: list[Header]
    #: The client's declared body length; None when the body is chunked or absent (see ``has_body``).
    content_length: int | None
    #: Whether a body follows the head at all (RFC 9112 §6.3: only Content-Length or Transfer-Encoding say so).
    has_body: bool


def is_trusted(peer: str | None, trusted: Sequence[IPNetwork]) -> bool:
    if peer is None or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _content_length(values: list[bytes]) -> int | None:
    if not values:
        return None
    # One plain decimal number. "42, 42" or two identical headers are legal to merge (RFC 9110 §8.6) but
    # appear only in smuggling attempts; refusing costs no real client anything.
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        raise BadRequest("invalid Content-Length")
    return int(values[0])


# Controls (C0, DEL, C1) anywhere, or edge whitespace that parsers strip as OWS.
_UNSAFE_CLAIM = re.compile("[\x00-\x1f\x7f-\x9f]|^[ \t]|[ \t]$")


def _claim_bytes(value: str) -> bytes:
    """A claim as a header value. Backends (and :class:`gateway.proof.ProofVerifier`) read header bytes as
    latin-1, so the claim is sent as latin-1 and proven as the same string; a claim that latin-1 cannot carry,
    or with controls (header injection) or edge whitespace (stripped by parsers as OWS), is refused."""
    if value.isascii() and value.isprintable():  # the usual case: visible ASCII, only the edges left to check
        if value[:1] == " " or value[-1:] == " ":
            raise ValueError("claim not representable in an HTTP header")
        return value.encode("ascii")
    if _UNSAFE_CLAIM.search(value) is not None:
        raise ValueError("claim not representable in an HTTP header")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("claim not representable in an HTTP header") from None


# Request header names that pass through untouched, spelled exactly so (lower case, no "_"): the common case costs
# one set lookup instead of normalising and checking every rule.
_PLAIN_FORWARDED = frozenset(
    {b"accept", b"accept-encoding", b"accept-language", b"cache-control", b"content-type", b"cookie", b"origin"}
    | {b"referer", b"user-agent", b"if-match", b"if-none-match", b"if-modified-since", b"pragma", b"range"}
)


def upstream_headers(
    headers: Iterable[Header],
    *,
    method: str,
    target: str,
    forwarding: Forwarding,
    identity: Identity,
    forward_authorization: bool,
    request_id: str,
    proof_secret: bytes,
    timestamp: int,
) -> UpstreamHeaders:
    """The header list to send upstream for one request. Raises BadRequest/ConflictingFraming on bad framing,
    ValueError when a claim cannot be carried in a header (the caller treats that token as invalid)."""
    trusted = is_trusted(forwarding.peer, forwarding.trusted_proxies)
    nominated: set[bytes] | None = None
    content_lengths: list[bytes] = []
    hosts: list[bytes] = []
    codings: list[bytes] = []
    client_xff: list[bytes] = []
    client_proto: list[bytes] = []
    client_host: list[bytes] = []
    out: list[Header] = []
    keys: list[bytes] = []  # the normalised name of each header in ``out``, for Connection-nominated removal
    for name, value in headers:
        lowered = name.lower()
        if lowered in _PLAIN_FORWARDED:
            out.append((lowered, value))
            keys.append(lowered)
            continue
        if lowered == b"connection":
            nominated = _tokens([value]) if nominated is None else nominated | _tokens([value])
        elif lowered == b"content-length":
            content_lengths.append(value.strip())
        elif lowered == b"transfer-encoding":
            codings += [coding.strip().lower() for coding in value.split(b",")]
        elif lowered == b"host":
            hosts.append(value)
        elif lowered == b"x-forwarded-for":
            client_xff.append(value.strip())
        elif lowered == b"x-forwarded-proto":
            client_proto.append(value.strip())
        elif lowered == b"x-forwarded-host":
            client_host.append(value.strip())
        key = lowered.replace(b"_", b"-")
        if key in _ALWAYS_DROPPED or (key == b"authorization" and not forward_authorization):
            continue
        # Other X-Forwarded-* (Port, Prefix, Ssl, ...) steer URL building in many frameworks: only a trusted
        # proxy may set them.
        if key.startswith(b"x-forwarded-") and not trusted:
            continue
        out.append((lowered, value))
        keys.append(key)
    chunked = bool(codings)
    if chunked and content_lengths:
        raise ConflictingFraming()
    # The gateway's server decodes only chunked; a body still under gzip (say) would be forwarded as if it were
    # plain bytes (RFC 9112 §6.1 lets a server refuse codings it does not understand).
    if chunked and codings != [b"chunked"]:
        raise BadRequest("unsupported Transfer-Encoding")
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    content_length = _content_length(content_lengths)
    if nominated:
        out = [header for header, key in zip(out, keys, strict=True) if key not in nominated]

    if content_length is not None:
        out.append((b"content-length", str(content_length).encode()))
    chain = [*client_xff] if trusted else []
    if forwarding.peer is not None:
        chain.append(forwarding.peer.encode())
    if chain:
        out.append((b"x-forwarded-for", b", ".join(chain)))
    proto = client_proto[-1] if trusted and len(client_proto) == 1 else forwarding.scheme.encode()
    out.append((b"x-forwarded-proto", proto))
    host = client_host[-1] if trusted and len(client_host) == 1 else (hosts[0] if hosts else b"")
    if host:
        out.append((b"x-forwarded-host", host))

    out.extend(
        owned_headers(
            method=method,
            target=target,
            identity=identity,
            request_id=request_id,
            proof_secret=proof_secret,
            timestamp=timestamp,
        )
    )
    return UpstreamHeaders(out, content_length, has_body=chunked or bool(content_length))


_REQUEST_ID = proof.REQUEST_ID_HEADER.encode()
_USER_ID = proof.USER_ID_HEADER.encode()
_USER_EMAIL = proof.USER_EMAIL_HEADER.encode()
_PROOF = proof.PROOF_HEADER.encode()


def owned_headers(
    *, method: str, target: str, identity: Identity, request_id: str, proof_secret: bytes, timestamp: int
) -> list[Header]:
    """Exactly one of each header the gateway owns, and the proof binding them to this request."""
    user_id = None if identity.user_id is None else _claim_bytes(identity.user_id)
    email = None if identity.email is None else _claim_bytes(identity.email)
    signature = proof.sign(
        proof_secret,
        method=method,
        target=target,
        user_id=identity.user_id,
        email=identity.email,
        request_id=request_id,
        timestamp=timestamp,
    )
    out = [(_REQUEST_ID, request_id.encode())]
    if user_id is not None:
        out.append((_USER_ID, user_id))
    if email is not None:
        out.append((_USER_EMAIL, email))
    out.append((_PROOF, signature.encode()))
    return out


def downstream_headers(headers: Iterable[Header], request_id: str) -> list[Header]:
    """The upstream's response headers as sent to the client: raw list, hop-by-hop removed, our request id."""
    out: list[Header] = []
    keys: list[bytes] = []
    nominated: set[bytes] | None = None
    for name, value in headers:
        lowered = name.lower()
        key = lowered.replace(b"_", b"-") if b"_" in lowered else lowered
        if key == b"connection":
            # "keep-alive" (what upstreams send) nominates only a hop-by-hop name, dropped anyway.
            if value.lower() not in _PLAIN_CONNECTION:
                nominated = _tokens([value]) if nominated is None else nominated | _tokens([value])
        elif key not in _RESPONSE_DROPPED:
            out.append((lowered, value))
            keys.append(key)
    if nominated:
        out = [header for header, key in zip(out, keys, strict=True) if key not in nominated]
    out.append((_REQUEST_ID, request_id.encode()))
    return out
