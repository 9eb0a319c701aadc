"""gateway/coalescing.py: the writes of one loop iteration reach the real transport as one write, in order, and
nothing written is lost or reordered by closing, aborting or a closed peer. The gateway's server runs on it, so the
loopback tests (test_proxy_loopback.py) cover it end to end; these pin down the edges."""

from __future__ import annotations

import asyncio

import pytest

from gateway.coalescing import CoalescingTransport

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param(False, id="asyncio"), pytest.param(True, id="uvloop")])
def anyio_backend(request):
    return ("asyncio", {"use_uvloop": request.param})


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[object] = []
        self.closing = False
        self.paused = False

    def write(self, data) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


async def next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_iteration_become_one_write_in_order():
    real = Recorder()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")
    transport.write(bytearray(b"body"))
    transport.writelines([b"-", b"more"])
    assert real.events == []
    assert transport.get_write_buffer_size() == 7 + 19 + 4 + 1 + 4
    await next_iteration()
    assert real.events == [b"HTTP/1.1 200 OK\r\n\r\nbody-more"]
    transport.write(b"next")
    await next_iteration()
    assert real.events[1:] == [b"next"]


async def test_close_flushes_first_and_abort_drops():
    real = Recorder()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"last words")
    transport.close()
    assert real.events == [b"last words", "close"]
    await next_iteration()
    assert real.events == [b"last words", "close"]  # the scheduled flush finds nothing left

    real = Recorder()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"never sent")
    transport.abort()
    await next_iteration()
    assert real.events == ["abort"]


async def test_nothing_is_written_to_a_transport_that_is_closing():
    real = Recorder()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"too late")
    real.closing = True  # the peer went away meanwhile (uvloop raises on writes to a closed transport)
    await next_iteration()
    assert real.events == []


async def test_everything_else_is_passed_through():
    real = Recorder()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.pause_reading()
    assert real.paused
    transport.resume_reading()
    assert not real.paused
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)
    assert transport.is_closing() is False


async def test_on_a_real_socket_a_head_and_body_arrive_as_one_segment():
    received: list[bytes] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))
        done.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        loop = asyncio.get_running_loop()
        port = server.sockets[0].getsockname()[1]
        real, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport = CoalescingTransport(real, loop)
        transport.write(b"head|")
        transport.write(b"body")
        await asyncio.wait_for(done.wait(), 5)
        transport.close()
    finally:
        server.close()
    assert received == [b"head|body"]
