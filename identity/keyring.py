"""The signing-key ring: keys live in the database, decrypted once and cached here.

Schedule (all replicas agree because it is computed from the rows alone):
- a key is published in the JWKS from the moment it is created;
- it signs from ``signs_from``; the signer is the newest generation whose ``signs_from`` has passed;
- it stays published until ``jwt_ttl + RETIRE_MARGIN`` after a newer key started signing, so every token it
  signed can still be verified (issue 3, rotate-key).

The first key is created race-free: ``generation`` is unique, so when two replicas start at once exactly one
insert of generation 1 succeeds and the other reads the winner's row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import anyio
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from identity import keys
from identity.config import Config, JwtAlgorithm
from identity.errors import IdentityError
from identity.ids import generate_id
from identity.models import signing_keys

logger = logging.getLogger("identity.keys")

RETIRE_MARGIN = 60  # seconds of clock skew allowed to verifiers after a retired key's last token expires
REFRESH_INTERVAL = 30.0  # seconds between re-reads of the key table (a rotate-key from another process)


class SigningUnavailable(IdentityError):
    def __init__(self) -> None:
        super().__init__(500, "SIGNING_KEY_UNAVAILABLE", "No usable signing key")


def published(keyset: Sequence[keys.SigningKey], now_ms: int, jwt_ttl: int) -> list[keys.SigningKey]:
    """Keys a verifier may meet at ``now_ms``, oldest first. Pure."""
    ordered = sorted(keyset, key=lambda k: k.generation)
    result = []
    for index, key in enumerate(ordered):
        successors = [k.signs_from for k in ordered[index + 1 :] if k.signs_from <= now_ms]
        if successors and now_ms >= min(successors) + (jwt_ttl + RETIRE_MARGIN) * 1000:
            continue
        result.append(key)
    return result


def signer(keyset: Sequence[keys.SigningKey], now_ms: int) -> keys.SigningKey | None:
    """The newest key whose ``signs_from`` has passed. Pure."""
    active = [k for k in keyset if k.signs_from <= now_ms]
    return max(active, key=lambda k: k.generation) if active else None


class KeyRing:
    def __init__(self, engine: AsyncEngine, config: Config, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._config = config
        self._clock = clock
        self._aead_key = keys.encryption_key(config.secret)
        self._keys: list[keys.SigningKey] = []
        self._loaded_at: float | None = None
        self._lock: anyio.Lock | None = None
        self._jwks_cache: tuple[tuple[str, ...], bytes] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _refresh_if_stale(self) -> None:
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < REFRESH_INTERVAL:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        if self._lock.locked() and self._loaded_at is not None:
            return  # another task is reloading; the current keys stay valid meanwhile
        async with self._lock:
            if self._loaded_at is not None and self._clock() - self._loaded_at < REFRESH_INTERVAL:
                return
            await self.ensure()

    async def ensure(self) -> None:
        """Load the keys, creating the first one (or one of the configured algorithm) when needed."""
        rows = await self._rows()
        if not rows:
            await self._insert(1, self._config.jwt_alg, self._now_ms())
            rows = await self._rows()
        newest = max(rows, key=lambda r: r["generation"])
        if newest["alg"] != self._config.jwt_alg:
            # IDENTITY_JWT_ALG changed: introduce a key of the new algorithm the same way rotate-key does.
            logger.warning(
                "IDENTITY_JWT_ALG is %s but the newest key is %s: rotating", self._config.jwt_alg, newest["alg"]
            )
            await self._insert(
                newest["generation"] + 1, self._config.jwt_alg, self._now_ms() + self._publish_delay_ms()
            )
            rows = await self._rows()
        self._install(rows)

    def _publish_delay_ms(self) -> int:
        return self._config.key_publish_delay * 1000

    async def rotate(self) -> keys.SigningKey:
        """Create the next key: published now, signing after the publish delay (``python -m identity rotate-key``)."""
        for _ in range(5):
            async with self._engine.connect() as conn:
                top = (await conn.execute(select(func.max(signing_keys.c.generation)))).scalar()
            generation = (top or 0) + 1
            signs_from = self._now_ms() + (self._publish_delay_ms() if top else 0)
            if await self._insert(generation, self._config.jwt_alg, signs_from):
                break
        else:
            raise RuntimeError("could not insert a new signing key after 5 attempts")
        self._install(await self._rows())
        return next(k for k in self._keys if k.generation == generation)

    async def _rows(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(signing_keys))
            return [dict(row._mapping) for row in result]

    async def _insert(self, generation: int, alg: JwtAlgorithm, signs_from: int) -> bool:
        kid = generate_id()
        private = keys.generate(alg)
        values = {
            "id": kid,
            "generation": generation,
            "alg": alg,
            "public_jwk": json.dumps(keys.public_jwk(alg, private, kid)),
            "private_key": keys.encrypt_private(self._aead_key, kid, private),
            "created_at": self._now_ms(),
            "signs_from": signs_from,
        }
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert(signing_keys).values(**values))
        except IntegrityError:
            return False  # another replica inserted this generation first; its key is used instead
        return True

    def _install(self, rows: list[dict[str, Any]]) -> None:
        known = {k.kid: k for k in self._keys}
        installed = []
        for row in rows:
            cached = known.get(row["id"])
            if cached is not None:
                installed.append(cached)
                continue
            try:
                private: keys.PrivateKey | None = keys.decrypt_private(self._aead_key, row["id"], row["private_key"])
            except keys.KeyDecryptionError as exc:
                logger.error("%s", exc)
                private = None
            installed.append(
                keys.SigningKey.build(
                    row["id"],
                    row["generation"],
                    cast(JwtAlgorithm, row["alg"]),
                    json.loads(row["public_jwk"]),
                    row["created_at"],
                    row["signs_from"],
                    private,
                )
            )
        self._keys = installed
        self._loaded_at = self._clock()

    async def signing_key(self) -> keys.SigningKey:
        await self._refresh_if_stale()
        key = signer(self._keys, self._now_ms())
        if key is None or key.private is None:
            raise SigningUnavailable()
        return key

    async def jwks(self) -> bytes:
        """The JWKS document, serialized once per distinct set of published keys."""
        await self._refresh_if_stale()
        current = published(self._keys, self._now_ms(), self._config.jwt_ttl)
        kids = tuple(k.kid for k in current)
        if self._jwks_cache is None or self._jwks_cache[0] != kids:
            body = json.dumps({"keys": [k.jwk for k in current]}, separators=(",", ":")).encode()
            self._jwks_cache = (kids, body)
        return self._jwks_cache[1]
