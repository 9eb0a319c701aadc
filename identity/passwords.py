"""Password hashing: argon2id in a few low-priority threads, so a burst of sign-ins cannot starve the event loop.

Parameters (production): OWASP Password Storage Cheat Sheet's argon2id floor, m=19 MiB, t=2, p=1. Hashes made
with weaker parameters are upgraded on the next successful sign-in (``needs_rehash``).

Scheduling (issue 7): a hash costs ~25 ms of CPU. The hashes run in a pool of their own, ``concurrency`` threads,
each of which raises its own nice value by ``nice`` when it starts. argon2-cffi releases the GIL while it hashes,
so what the hashes and the request handling (the event loop thread, the SQLite thread) compete for is the CPU,
and Linux's fair scheduler weighs a nice-0 thread against a nice-10 one about 9 to 1 (weights 1024 and 110):
during a burst of sign-ins the other endpoints keep their latency and the sign-ins absorb the wait; on an idle
CPU a hash runs at full speed. On Linux the nice value is per thread and ``setpriority(PRIO_PROCESS, tid)``
changes that one thread (getpriority(2), BUGS; pthreads(7)); elsewhere ``PRIO_PROCESS`` names a process, so
there the increment is not applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

T = TypeVar("T")
MAX_NICE = 19

logger = logging.getLogger("identity")


def strong_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)


def _normalize(password: str) -> str:
    # The same NFKC step Better Auth applies, so one password typed on two keyboards gives one hash.
    return unicodedata.normalize("NFKC", password)


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (capped at 19); Linux only, else nothing."""
    if increment <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, current + increment))
    except OSError as exc:  # e.g. a sandbox that forbids it: hashing still works, only unprioritised
        logger.warning("password hashing thread keeps its priority: setpriority failed: %s", exc)


class Passwords:
    """Async facade over an argon2 ``PasswordHasher``; at most ``concurrency`` hashes run at once.

    The pool has exactly ``concurrency`` threads: the limiter keeps waiting sign-ins in the event loop (in
    order, cancellable), and the pool size still bounds the hashes when a cancelled caller has left the
    limiter while its hash runs on. ``close()`` (the app's lifespan calls it) shuts the pool down.
    """

    def __init__(self, hasher: PasswordHasher, concurrency: int, nice: int = 0) -> None:
        self._hasher = hasher
        self._concurrency = concurrency
        self._limiter: anyio.CapacityLimiter | None = None
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency,
            thread_name_prefix="identity-hash",
            initializer=lower_thread_priority,
            initargs=(nice,),
        )

    def _get_limiter(self) -> anyio.CapacityLimiter:
        # Created lazily: an anyio limiter belongs to the running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._concurrency)
        return self._limiter

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        async with self._get_limiter():
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, _normalize(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, _normalize(password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        """Refuse new hashes and let the threads exit after the one they run (without blocking the loop)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
