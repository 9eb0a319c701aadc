"""The request body reader of gateway/proxy.py: size limit, idle timeout and minimum rate (a trickled body)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from gateway.errors import PayloadTooLarge, RequestTimeout
from gateway.proxy import ClientDisconnected, _request_body

pytestmark = pytest.mark.anyio

# (seconds to wait before the message, body bytes, more_body); a None message is http.disconnect.
Step = tuple[float, bytes | None, bool]


def _receiver(steps: Sequence[Step]) -> Callable[[], Awaitable[dict[str, object]]]:
    pending = list(steps)

    async def receive() -> dict[str, object]:
        if not pending:
            await asyncio.sleep(3600)  # a client that sends nothing more
        delay, body, more = pending.pop(0)
        await asyncio.sleep(delay)
        if body is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": more}

    return receive


async def _read(steps: Sequence[Step], *, limit: int | None, idle: float, min_rate: int | None) -> bytes:
    completed: list[bool] = []
    chunks = [
        chunk async for chunk in _request_body(_receiver(steps), limit, idle, min_rate, lambda: completed.append(True))
    ]
    assert completed == [True]
    return b"".join(chunks)


TRICKLE = [(0.01, b"x", True)] * 50 + [(0.0, b"", False)]  # 100 bytes/s, never idle for 10 ms


@pytest.mark.parametrize(
    ("steps", "limit", "idle", "min_rate", "expected"),
    [
        pytest.param([(0, b"abc", True), (0, b"def", False)], None, 1.0, 500, b"abcdef", id="whole body"),
        pytest.param([(0, b"", True), (0, b"", False)], None, 1.0, 500, b"", id="empty chunks skipped"),
        pytest.param([(0, b"abc", False)], 3, 1.0, 500, b"abc", id="exactly the limit"),
        pytest.param([(0, b"abcd", False)], 3, 1.0, 500, PayloadTooLarge, id="over the limit"),
        pytest.param([(0, b"a", True), (0.3, b"b", False)], None, 0.1, None, RequestTimeout, id="idle stall"),
        pytest.param([(0, b"a", True), (0, None, False)], None, 1.0, 500, ClientDisconnected, id="disconnect"),
        # Trickled: each byte well within the idle timeout, but 100 bytes/s against a 1,000 bytes/s minimum: cut
        # off once `idle` plus what the received bytes earn has passed (about 0.17 s), before the 0.5 s it takes.
        pytest.param(TRICKLE, None, 0.15, 1000, RequestTimeout, id="trickle under the minimum rate"),
        # The same trickle with the rule off, or with a minimum it meets, arrives whole.
        pytest.param(TRICKLE, None, 0.15, None, b"x" * 50, id="trickle, rule off"),
        pytest.param(TRICKLE, None, 0.15, 10, b"x" * 50, id="trickle above the minimum rate"),
    ],
)
async def test_request_body(
    steps: Sequence[Step], limit: int | None, idle: float, min_rate: int | None, expected: bytes | type[Exception]
) -> None:
    if isinstance(expected, bytes):
        assert await _read(steps, limit=limit, idle=idle, min_rate=min_rate) == expected
    else:
        with pytest.raises(expected):
            await _read(steps, limit=limit, idle=idle, min_rate=min_rate)


async def test_a_trickled_body_is_cut_off_by_the_rate_deadline_not_the_idle_timeout() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout, match="slower than 1000 bytes/s"):
        await _read(TRICKLE, limit=None, idle=0.15, min_rate=1000)
    elapsed = loop.time() - started
    assert 0.15 <= elapsed < 0.45, elapsed  # idle (0.15 s) + ~17 bytes earned at 1,000 bytes/s, plus scheduling


async def test_a_stall_reports_the_idle_timeout() -> None:
    with pytest.raises(RequestTimeout, match=r"no request body bytes for 0\.1 s"):
        await _read([(0, b"a", True), (0.5, b"b", False)], limit=None, idle=0.1, min_rate=1)
