"""Password hashing in its own low-priority thread pool (issue 7): same hashes and verdicts as argon2 itself,
threads really reniced (Linux), at most ``concurrency`` hashes at once, the pool shut down with the app."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import anyio
import pytest
from argon2 import PasswordHasher

from identity.app import create_app
from identity.config import ConfigError
from identity.db import create_engine
from identity.passwords import MAX_NICE, Passwords
from tests.identity.conftest import fast_hasher, make_config

pytestmark = pytest.mark.anyio


def _nice_of(tid: int) -> int:
    """Field 19 of /proc/self/task/<tid>/stat: the thread's nice value as the scheduler sees it."""
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # fields 3.. follow the ")" closing the command name


class Recording(PasswordHasher):
    """A fast argon2 hasher that notes which thread ran each hash and that thread's nice value."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.threads: list[threading.Thread] = []
        self.nice: list[tuple[int, int]] = []  # (getpriority, /proc stat) per call

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        tid = threading.get_native_id()
        self.threads.append(threading.current_thread())
        if sys.platform == "linux":
            self.nice.append((os.getpriority(os.PRIO_PROCESS, tid), _nice_of(tid)))
        return super().hash(password, salt=salt)


@pytest.mark.parametrize("nice", [0, 10], ids=["nice 0", "nice 10"])
@pytest.mark.parametrize(
    ("stored", "normalized", "typed", "expected"),
    [
        pytest.param("correct horse", "correct horse", "correct horse", True, id="same password"),
        pytest.param("correct horse", "correct horse", "correct horsE", False, id="other password"),
        pytest.param("\ufb01le", "file", "file", True, id="NFKC: ligature fi"),
        pytest.param("\uff21lice", "Alice", "Alice", True, id="NFKC: full-width A"),
    ],
)
async def test_hashes_and_verdicts_are_argon2s(
    nice: int, stored: str, normalized: str, typed: str, expected: bool
) -> None:
    reference = fast_hasher()
    passwords = Passwords(fast_hasher(), concurrency=1, nice=nice)
    try:
        ours = await passwords.hash(stored)
        assert ours.startswith("$argon2id$")
        assert await passwords.verify(ours, typed) is expected
        # Interchangeable with argon2 run directly on the normalized text, both ways.
        assert reference.verify(ours, normalized)
        assert await passwords.verify(reference.hash(normalized), typed) is expected
        assert await passwords.verify("not an argon2 hash", typed) is False
    finally:
        passwords.close()


@pytest.mark.parametrize(
    ("increment", "expected_raise"),
    [
        pytest.param(0, 0, id="0 = off"),
        pytest.param(5, 5, id="5"),
        pytest.param(10, 10, id="10 (default)"),
        pytest.param(40, MAX_NICE, id="capped at 19"),
    ],
)
async def test_hashing_threads_run_reniced_and_the_loop_does_not(increment: int, expected_raise: int) -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    hasher = Recording()
    passwords = Passwords(hasher, concurrency=2, nice=increment)
    try:
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(passwords.hash, f"password {n}")
    finally:
        passwords.close()
    assert all(thread is not threading.current_thread() for thread in hasher.threads)
    if sys.platform == "linux":
        expected = min(MAX_NICE, base + expected_raise)
        assert hasher.nice == [(expected, expected)] * 4
    # The event loop's own thread is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def _blocking_hasher(concurrency: int) -> tuple[PasswordHasher, dict[str, int], threading.Event]:
    """A hasher whose calls block until released, counting how many run at once."""
    state = {"running": 0, "most": 0, "calls": 0}
    lock = threading.Lock()
    release = threading.Event()

    class Blocking(PasswordHasher):
        def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
            with lock:
                state["running"] += 1
                state["calls"] += 1
                state["most"] = max(state["most"], state["running"])
            release.wait(10)
            with lock:
                state["running"] -= 1
            return "$argon2id$stub"

    return Blocking(), state, release


async def _until(condition: object, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.005)


@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_at_most_concurrency_hashes_run_even_when_callers_give_up(concurrency: int) -> None:
    hasher, state, release = _blocking_hasher(concurrency)
    passwords = Passwords(hasher, concurrency=concurrency)
    try:
        # Callers that give up while their hash runs leave the limiter; the pool size still bounds the threads.
        async with anyio.create_task_group() as abandoned:
            for _ in range(concurrency):
                abandoned.start_soon(passwords.hash, "x")
            await _until(lambda: state["running"] == concurrency)
            abandoned.cancel_scope.cancel()
        results: list[str] = []

        async def one() -> None:
            results.append(await passwords.hash("y"))

        async with anyio.create_task_group() as tg:
            for _ in range(2 * concurrency):
                tg.start_soon(one)
            await anyio.sleep(0.2)  # time for any extra thread to start a hash
            assert state["running"] == concurrency
            release.set()
        assert results == ["$argon2id$stub"] * (2 * concurrency)
        assert state["most"] == concurrency
        assert state["calls"] == 3 * concurrency
    finally:
        release.set()
        passwords.close()


async def test_the_app_shuts_the_pool_down_with_its_lifespan(migrated_url: str) -> None:
    hasher = Recording()
    engine = create_engine(migrated_url)
    try:
        app = create_app(make_config(), engine=engine, password_hasher=hasher)
        passwords = app.state.identity.passwords
        async with app.router.lifespan_context(app):
            await passwords.hash("while serving")
            assert hasher.threads and all(thread.is_alive() for thread in hasher.threads)
        for thread in hasher.threads:
            thread.join(5)
            assert not thread.is_alive()
        with pytest.raises(RuntimeError, match="shutdown"):
            await passwords.hash("after shutdown")
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, 10, id="default 10"),
        pytest.param("0", 0, id="0 = off"),
        pytest.param("19", 19, id="19"),
        pytest.param(" 7 ", 7, id="spaces"),
    ],
)
def test_hash_nice_setting(value: str | None, expected: int) -> None:
    env = {} if value is None else {"IDENTITY_HASH_NICE": value}
    assert make_config(**env).hash_nice == expected


@pytest.mark.parametrize("value", ["20", "-1", "ten"])
def test_hash_nice_setting_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="IDENTITY_HASH_NICE"):
        make_config(IDENTITY_HASH_NICE=value)
