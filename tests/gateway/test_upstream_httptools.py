"""The httptools upstream client (gateway/upstream_httptools.py) against raw TCP upstreams on 127.0.0.1, on both
event loops the gateway may run on (asyncio's and uvloop's): framing, keep-alive reuse, connections the upstream
closes, errors, timeouts, pool limits, flow control, TLS. The forwarding behaviour through the whole gateway is
covered for every client by test_proxy_loopback.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.errors import BadGateway, GatewayTimeout, PayloadTooLarge, ServiceUnavailable
from gateway.upstream import Timeouts
from gateway.upstream_httptools import HIGH_WATER, MAX_HEAD_BYTES, HttptoolsUpstream

pytestmark = pytest.mark.anyio

T = Timeouts(connect=2.0, read=2.0)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
Handler = Callable[["Conn"], Awaitable[None]]


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request):
    return ("asyncio", {"use_uvloop": request.param})


class Conn:
    """One accepted connection: read requests, write answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self) -> tuple[bytes, bytes]:
        """(head, body) of the next request; the body read by its Content-Length or chunked framing."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        body = b""
        for line in lines:
            if line.startswith(b"content-length:"):
                body = await self.reader.readexactly(int(line.split(b":")[1]))
        if b"transfer-encoding: chunked" in lines:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                body += data[:-2]
        return head, body

    async def answer(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


class Upstream:
    """A TCP server on 127.0.0.1 running ``handler`` per connection; records connections and requests."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.closed = 0  # connections that ended (the client closed, or the handler returned)
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(Conn(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        self.origin = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        await settle()  # connections accepted just now get their handler started (and so recorded)
        self.server.close()
        for writer in self.writers:  # every server-side transport closed before the loop ends
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


def serve_forever(answer: bytes, requests: list[tuple[bytes, bytes]] | None = None) -> Handler:
    async def handler(conn: Conn) -> None:
        while True:
            request = await conn.request()
            if requests is not None:
                requests.append(request)
            await conn.answer(answer)

    return handler


@contextlib.asynccontextmanager
async def client(**options) -> AsyncIterator[HttptoolsUpstream]:
    upstream = HttptoolsUpstream(**options)
    try:
        yield upstream
    finally:
        await upstream.aclose()


async def fetch(
    upstream: HttptoolsUpstream, origin: str, method: str = "GET", target: bytes = b"/x", body=None, headers=(), t=T
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = await upstream.send(method, origin, target, list(headers), body, t)
    try:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response.status, response.headers, data


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


# --- framing -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(OK, b"ok", id="content-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\ntrailer: x\r\n\r\n",
            b"abc",
            id="chunk extension and trailer",
        ),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", b"", id="204"),
        pytest.param(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"ok",
            id="1xx skipped",
        ),
    ],
)
async def test_response_bodies_are_read_by_their_framing_and_the_connection_is_reused(answer, expected):
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        for _ in range(3):
            status, _, body = await fetch(upstream, server.origin)
            assert body == expected
            assert status in (200, 204)
        assert server.connections == 1


async def test_a_body_already_complete_is_handed_over_whole_and_a_partial_one_is_not():
    """whole_body(): the proxy's one-message answer (issue 7). It may only answer when the parser has seen the end."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")
        await asyncio.sleep(0.1)
        await conn.answer(b"cde")
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        partial = await upstream.send("GET", server.origin, b"/", [], None, T)
        assert partial.whole_body() is None  # 2 of 5 bytes: the rest streams through aiter_raw
        assert b"".join([chunk async for chunk in partial.aiter_raw()]) == b"abcde"
        await partial.aclose()
        whole = await upstream.send("GET", server.origin, b"/", [], None, T)
        await settle()
        assert whole.whole_body() == b"ok"
        await whole.aclose()
        assert server.connections == 1  # taken whole, the response still returns its connection to the pool


async def test_a_chunked_body_split_across_reads_arrives_whole():
    async def handler(conn: Conn) -> None:
        await conn.request()
        for piece in (b"HTTP/1.1 200 OK\r\ntransfer-", b"encoding: chunked\r\n\r\n5\r\nab", b"cde\r\n0\r\n", b"\r\n"):
            await conn.answer(piece)
            await asyncio.sleep(0.01)
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        assert (await fetch(upstream, server.origin))[2] == b"abcde"


async def test_trailer_fields_are_not_merged_into_the_headers():
    answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n"
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        _, headers, body = await fetch(upstream, server.origin)
    assert (headers, body) == ([(b"transfer-encoding", b"chunked")], b"abc")


async def test_raw_headers_keep_their_order_case_and_repeats():
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nX-Thing: y\r\ncontent-length: 0\r\n\r\n"
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        _, headers, _ = await fetch(upstream, server.origin)
    assert headers == [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"X-Thing", b"y"), (b"content-length", b"0")]


async def test_a_body_until_the_connection_ends_is_complete_and_the_connection_not_reused():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")

    async with Upstream(handler) as server, client() as upstream:
        assert (await fetch(upstream, server.origin))[2] == b"until the end"
        assert (await fetch(upstream, server.origin))[2] == b"until the end"
        assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok", id="connection close"),
        pytest.param(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", id="HTTP/1.0"),
    ],
)
async def test_a_response_refusing_keep_alive_closes_the_connection(answer):
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        await fetch(upstream, server.origin)
        await fetch(upstream, server.origin)
        assert server.connections == 2


async def test_head_responses_have_no_body_whatever_their_content_length():
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        status, headers, body = await fetch(upstream, server.origin, "HEAD")
        assert (status, body) == (200, b"")
        assert (b"content-length", b"1000") in headers
        await fetch(upstream, server.origin, "HEAD")
        assert server.connections == 2  # never reused: a misbehaving upstream's body cannot pose as a response


# --- what is sent ------------------------------------------------------------------------------------------------


async def test_the_request_goes_out_byte_for_byte_with_the_origin_as_host():
    requests: list[tuple[bytes, bytes]] = []
    async with Upstream(serve_forever(OK, requests)) as server, client() as upstream:
        headers = [(b"x-one", b"1"), (b"X-Two", b"a, b"), (b"x-one", b"again")]
        await fetch(upstream, server.origin, "DELETE", b"/a%2Fb/c?q=%20&x", headers=headers)
    host = server.origin.removeprefix("http://").encode()
    head = b"DELETE /a%2Fb/c?q=%20&x HTTP/1.1\r\nhost: " + host + b"\r\nx-one: 1\r\nX-Two: a, b\r\nx-one: again\r\n\r\n"
    assert requests == [(head, b"")]


@pytest.mark.parametrize(
    ("headers", "framing"),
    [
        pytest.param([(b"content-length", b"7")], b"content-length: 7\r\n", id="declared length: sent as is"),
        pytest.param([], b"transfer-encoding: chunked\r\n", id="no length: chunked"),
    ],
)
async def test_request_bodies_stream_with_their_framing(headers, framing):
    requests: list[tuple[bytes, bytes]] = []
    async with Upstream(serve_forever(OK, requests)) as server, client() as upstream:
        await fetch(upstream, server.origin, "POST", body=chunks(b"abc", b"", b"defg"), headers=headers)
        await fetch(upstream, server.origin, "POST", body=chunks(b"abc", b"", b"defg"), headers=headers)
    assert [body for _, body in requests] == [b"abcdefg", b"abcdefg"]
    assert framing in requests[0][0]
    assert server.connections == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"x-a", b"1\r\nx-injected: 1")], id="CRLF in a value"),
        pytest.param([(b"x-a", b"1\nx")], id="LF in a value"),
        pytest.param([(b"x-a", b"1\x00")], id="NUL in a value"),
        pytest.param([(b"x-a: b", b"1")], id="colon in a name"),
        pytest.param([(b"x a", b"1")], id="space in a name"),
        pytest.param([(b"", b"1")], id="empty name"),
    ],
)
async def test_unrepresentable_headers_are_refused_before_anything_is_sent(headers):
    async with Upstream(serve_forever(OK)) as server, client() as upstream:
        with pytest.raises(ValueError):
            await upstream.send("GET", server.origin, b"/", headers, None, T)
        await settle()
        assert server.connections == 0


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"this is not HTTP\r\n\r\n", id="garbage"),
        pytest.param(b"", id="closed without a word"),
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n", id="CL and TE"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", id="101"),
        pytest.param(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", id="head too large"),
    ],
)
async def test_a_broken_response_head_is_502_and_a_get_on_a_new_connection_is_not_retried(answer):
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(answer)

    async with Upstream(handler) as server, client() as upstream:
        with pytest.raises(BadGateway):
            await upstream.send("GET", server.origin, b"/", [], None, T)
        assert server.connections == 1


async def test_a_large_body_in_the_same_read_as_the_head_is_not_counted_as_head():
    body = b"b" * (MAX_HEAD_BYTES * 3)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    async with Upstream(serve_forever(answer)) as server, client() as upstream:
        assert (await fetch(upstream, server.origin))[2] == body


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", id="short Content-Length body"),
        pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", id="no last chunk"),
    ],
)
async def test_a_body_cut_short_raises_502_while_reading(answer):
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(answer)

    async with Upstream(handler) as server, client() as upstream:
        response = await upstream.send("GET", server.origin, b"/", [], None, T)
        with pytest.raises(BadGateway):
            async for _ in response.aiter_raw():
                pass
        await response.aclose()


async def test_connection_refused_is_502():
    async with Upstream(serve_forever(OK)) as server:
        origin = server.origin
    async with client() as upstream:
        with pytest.raises(BadGateway):
            await upstream.send("GET", origin, b"/", [], None, T)


async def test_a_connect_timeout_is_504():
    async with Upstream(serve_forever(OK)) as server, client() as upstream:
        with pytest.raises(GatewayTimeout):
            await upstream.send("GET", server.origin, b"/", [], None, Timeouts(connect=0.0, read=1.0))


async def test_an_upstream_silent_before_its_head_is_504_after_the_read_timeout():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(GatewayTimeout):
            await upstream.send("GET", server.origin, b"/", [], None, Timeouts(connect=1.0, read=0.2))
        assert 0.15 < loop.time() - started < 1.5
        await settle()
        assert server.closed == 1  # the connection was closed, not pooled


async def test_an_upstream_stalling_mid_body_is_504_after_the_read_timeout():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        response = await upstream.send("GET", server.origin, b"/", [], None, Timeouts(connect=1.0, read=0.2))
        received = []
        with pytest.raises(GatewayTimeout):
            async for chunk in response.aiter_raw():
                received.append(chunk)
        assert received == [b"abc"]
        await response.aclose()


async def test_an_upstream_not_reading_the_request_body_is_504_after_the_read_timeout():
    async def handler(conn: Conn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)  # never reads the body: the client's writes back up

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536

    async with Upstream(handler) as server, client() as upstream:
        with pytest.raises(GatewayTimeout):
            await upstream.send("POST", server.origin, b"/", [], endless(), Timeouts(connect=1.0, read=0.3))


async def test_an_early_answer_to_a_request_body_is_returned():
    async def handler(conn: Conn) -> None:
        await conn.reader.readuntil(b"\r\n\r\n")
        await conn.answer(b"HTTP/1.1 413 Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig")

    async def slow() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"x" * 1024
            await asyncio.sleep(0.01)

    async with Upstream(handler) as server, client() as upstream:
        status, _, body = await fetch(upstream, server.origin, "POST", body=slow())
    assert (status, body) == (413, b"big")


async def test_a_failing_request_body_raises_its_own_error_and_closes_the_connection():
    async def failing() -> AsyncIterator[bytes]:
        yield b"abc"
        raise PayloadTooLarge("too big")

    async with Upstream(serve_forever(OK)) as server, client() as upstream:
        with pytest.raises(PayloadTooLarge):
            await upstream.send("POST", server.origin, b"/", [], failing(), T)
        await settle()
        assert server.closed == 1


async def test_cancelling_an_exchange_closes_its_connection():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        task = asyncio.ensure_future(upstream.send("GET", server.origin, b"/", [], None, T))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle()
        assert server.closed == 1


async def test_an_unfinished_response_closes_its_connection_instead_of_pooling_it():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"a" * 100)
        await conn.reader.read()

    async with Upstream(handler) as server, client() as upstream:
        response = await upstream.send("GET", server.origin, b"/", [], None, T)
        await response.aclose()
        await settle()
        assert server.closed == 1


# --- keep-alive and the pool -------------------------------------------------------------------------------------


async def test_an_idle_connection_closed_by_the_upstream_is_replaced():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(OK)  # keep-alive allowed, then the upstream times the connection out at once

    async with Upstream(handler) as server, client() as upstream:
        await fetch(upstream, server.origin)
        await settle()
        assert (await fetch(upstream, server.origin))[2] == b"ok"
        assert server.connections == 2


@pytest.mark.parametrize(
    ("method", "body", "retried"),
    [
        pytest.param("GET", None, True, id="GET: retried once on a new connection"),
        pytest.param("DELETE", None, True, id="DELETE: retried"),
        pytest.param("POST", None, False, id="POST: never retried"),
        pytest.param("PATCH", None, False, id="PATCH: never retried"),
        pytest.param("PUT", b"data", False, id="a request with a body: not retried"),
    ],
)
async def test_a_reused_connection_dropped_before_any_answer(method, body, retried):
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        head, _ = await conn.request()
        seen.append(head.split(b" ")[0])
        await conn.answer(OK)
        head, _ = await conn.request()  # the second request on this connection: dropped without a word
        seen.append(head.split(b" ")[0])
        conn.writer.transport.abort()

    async with Upstream(handler) as server, client() as upstream:
        await fetch(upstream, server.origin)
        content = None if body is None else chunks(body)
        headers = [] if body is None else [(b"content-length", str(len(body)).encode())]
        if retried:
            assert (await fetch(upstream, server.origin, method, body=content, headers=headers))[2] == b"ok"
            assert seen == [b"GET", method.encode(), method.encode()]
        else:
            with pytest.raises(BadGateway):
                await fetch(upstream, server.origin, method, body=content, headers=headers)
            assert seen == [b"GET", method.encode()]


async def test_unsolicited_bytes_on_an_idle_connection_retire_it():
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(OK + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra")
        await conn.reader.read()

    async with Upstream(handler) as first, client() as upstream:
        assert (await fetch(upstream, first.origin))[1:] == ([(b"content-length", b"2")], b"ok")
        await settle()
        assert (await fetch(upstream, first.origin))[2] == b"ok"
        assert first.connections == 2


async def test_idle_connections_expire():
    async with Upstream(serve_forever(OK)) as server, client(keepalive_expiry=0.1) as upstream:
        await fetch(upstream, server.origin)
        await asyncio.sleep(0.35)
        assert server.closed == 1  # swept while idle
        await fetch(upstream, server.origin)
        assert server.connections == 2


async def test_the_pool_limit_makes_requests_wait_then_503():
    async with Upstream(serve_forever(OK)) as server, client(max_connections=1) as upstream:
        held = await upstream.send("GET", server.origin, b"/", [], None, T)
        with pytest.raises(ServiceUnavailable):
            await upstream.send("GET", server.origin, b"/", [], None, Timeouts(connect=0.2, read=1.0))
        waiting = asyncio.ensure_future(fetch(upstream, server.origin))
        await settle()
        assert not waiting.done()
        async for _ in held.aiter_raw():
            pass
        await held.aclose()
        assert (await waiting)[2] == b"ok"
        assert server.connections == 1


async def test_at_the_limit_an_idle_connection_to_another_origin_makes_room():
    async with (
        Upstream(serve_forever(OK)) as first,
        Upstream(serve_forever(OK)) as second,
        client(max_connections=1) as upstream,
    ):
        await fetch(upstream, first.origin)
        await fetch(upstream, second.origin)
        await settle()
        assert first.closed == 1


async def test_concurrent_requests_each_get_their_own_connection_and_all_are_reused():
    async with Upstream(serve_forever(OK)) as server, client() as upstream:
        for _ in range(3):
            results = await asyncio.gather(*(fetch(upstream, server.origin) for _ in range(8)))
            assert [body for _, _, body in results] == [b"ok"] * 8
        assert server.connections == 8


async def test_a_slow_reader_pauses_the_upstream_and_the_body_arrives_intact():
    size = 8 * 1024 * 1024
    body = bytes(range(256)) * (size // 256)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.answer(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + body)

    async with Upstream(handler) as server, client() as upstream:
        response = await upstream.send("GET", server.origin, b"/", [], None, T)
        received = []
        async for chunk in response.aiter_raw():
            received.append(chunk)
            await asyncio.sleep(0.002)
        await response.aclose()
    assert b"".join(received) == body
    assert max(map(len, received)) <= HIGH_WATER + 262144  # buffered at most the high-water mark plus one read


async def test_closing_the_client_closes_its_connections():
    async with Upstream(serve_forever(OK)) as server:
        async with client() as upstream:
            await asyncio.gather(*(fetch(upstream, server.origin) for _ in range(3)))
        await settle()
        assert server.closed == server.connections == 3


# --- TLS ---------------------------------------------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_origins_are_verified_and_reused(tmp_path):
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with Upstream(serve_forever(OK), ssl_context=server_context) as server:
        async with client(ssl_context=trusting) as upstream:
            assert (await fetch(upstream, server.origin))[2] == b"ok"
            assert (await fetch(upstream, server.origin))[2] == b"ok"
            assert server.connections == 1
        async with client() as upstream:  # the system trust store does not know this certificate
            with pytest.raises(BadGateway):
                await upstream.send("GET", server.origin, b"/", [], None, T)


async def _started(upstream: HttptoolsUpstream, origin: str, timeouts: Timeouts = T) -> tuple[Any, asyncio.Event]:
    """``start`` on the pooled connection; the event is set by the listener once the exchange is over."""
    over = asyncio.Event()
    holder: list[Any] = []

    def listener() -> None:
        connection = holder[0]
        if connection.complete or connection.error is not None:
            over.set()

    connection = upstream.start("GET", origin, b"/lane", [(b"x-a", b"1")], timeouts, listener)
    assert connection is not None
    holder.append(connection)
    return connection, over


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_start_writes_at_once_on_a_pooled_connection_and_calls_back(tmp_path, tls):
    """The fast lane's send (gateway/express.py): no idle connection, None; with one, the request is written at once
    and the listener is called as the response arrives, on the same connection, plain or TLS."""
    server_context = trusting = None
    if tls:
        cert, key = _certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        trusting = ssl.create_default_context(cafile=str(cert))
    requests: list[tuple[bytes, bytes]] = []
    async with (
        Upstream(serve_forever(OK, requests), ssl_context=server_context) as server,
        client(ssl_context=trusting) as upstream,
    ):
        assert upstream.start("GET", server.origin, b"/", [], T, lambda: None) is None  # nothing pooled yet
        assert (await fetch(upstream, server.origin))[2] == b"ok"
        connection, over = await _started(upstream, server.origin)
        await asyncio.wait_for(over.wait(), 5)
        assert connection.status == 200 and connection.take() == b"ok" and connection.error is None
        connection.finish()
        assert server.connections == 1 and upstream.has_idle(server.origin)  # back in the pool
        assert requests[-1][0].startswith(b"GET /lane HTTP/1.1\r\n") and b"x-a: 1\r\n" in requests[-1][0]


async def test_start_reports_the_read_timeout_to_the_listener():
    async def answer_once_then_hang(conn: Conn) -> None:
        await conn.request()
        await conn.answer(OK)
        await conn.request()
        await conn.reader.read()

    async with Upstream(answer_once_then_hang) as server, client() as upstream:
        assert (await fetch(upstream, server.origin))[2] == b"ok"
        connection, over = await _started(upstream, server.origin, Timeouts(connect=1, read=0.2))
        await asyncio.wait_for(over.wait(), 5)
        assert connection.error is GatewayTimeout  # a 504 (the lane retries only a BadGateway, express.py)
        connection.finish()
        assert not upstream.has_idle(server.origin)  # a timed-out connection is never reused
