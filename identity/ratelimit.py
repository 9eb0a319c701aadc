"""In-memory sliding-window rate limits (per replica), with an injectable clock.

A key may make ``limit`` requests in any ``window`` seconds. A refused request is not counted, so a client that
waits ``Retry-After`` seconds gets through. Memory is bounded: at most ``max_keys`` keys, each forgotten a
window after its last request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from cachetools import TTLCache


class RateLimiter:
    def __init__(self, limit: int, window: int, clock: Callable[[], float], max_keys: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._hits: TTLCache[str, deque[float]] = TTLCache(maxsize=max_keys, ttl=window, timer=clock)

    def hit(self, key: str) -> int | None:
        """Count one request for ``key``; return None if allowed, else the seconds to wait."""
        now = self._clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = deque()
        while hits and hits[0] <= now - self._window:
            hits.popleft()
        if len(hits) >= self._limit:
            self._hits[key] = hits
            return max(1, math.ceil(hits[0] + self._window - now))
        hits.append(now)
        self._hits[key] = hits
        return None
