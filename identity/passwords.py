"""Password hashing: argon2id in a worker thread, bounded so a burst of sign-ins cannot starve the event loop.

Parameters (production): OWASP Password Storage Cheat Sheet's argon2id floor, m=19 MiB, t=2, p=1. Hashes made
with weaker parameters are upgraded on the next successful sign-in (``needs_rehash``).
"""

from __future__ import annotations

import unicodedata

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


def strong_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)


def _normalize(password: str) -> str:
    # The same NFKC step Better Auth applies, so one password typed on two keyboards gives one hash.
    return unicodedata.normalize("NFKC", password)


class Passwords:
    """Async facade over an argon2 ``PasswordHasher``; at most ``concurrency`` hashes run at once."""

    def __init__(self, hasher: PasswordHasher, concurrency: int) -> None:
        self._hasher = hasher
        self._concurrency = concurrency
        self._limiter: anyio.CapacityLimiter | None = None

    def _get_limiter(self) -> anyio.CapacityLimiter:
        # Created lazily: an anyio limiter belongs to the running event loop.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._concurrency)
        return self._limiter

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hasher.hash, _normalize(password), limiter=self._get_limiter())

    async def verify(self, password_hash: str, password: str) -> bool:
        return await anyio.to_thread.run_sync(self._verify, password_hash, password, limiter=self._get_limiter())

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
