"""Prometheus metrics, correct under ``--workers N`` (issue 4, "Operations").

With ``PROMETHEUS_MULTIPROC_DIR`` set (the CLI sets it to a temporary directory when it starts several
workers) every worker writes its samples to memory-mapped files there, and whichever worker answers a scrape
aggregates all of them (prometheus_client's multiprocess mode). The variable must be set before
``prometheus_client`` is imported in the worker, which is why the CLI sets it before uvicorn spawns them.

Labels are bounded: ``route`` is a configured route template or one of the ``(...)`` names below, never a raw
path; ``status`` is a status code; token ``outcome`` is ``valid``, ``missing`` or an ``InvalidToken.reason``.

The per-request counters (requests, token outcomes, cache lookups) are counted in plain integers and added to
prometheus_client's values by :meth:`Metrics.flush`: before every scrape, at shutdown, and every
:data:`FLUSH_INTERVAL` seconds (the app's timer), so another worker's counts are at most that old in a scrape.
Each ``inc`` takes a lock (and under ``--workers`` writes a memory-mapped file): three of them per request cost
~2 µs (issue 7). The latency histogram is batched too, as bucket counts and a sum per route, added to the
histogram's own values at flush: prometheus_client has no public batch update for them, so :class:`_Latencies`
checks at start-up that the histogram still has the values it adds to (``_upper_bounds``, ``_buckets``, ``_sum``)
and observes each request directly if not (test_metrics.py compares the two).
Batched counts belong to the process that made them: a ``Metrics`` is built in each worker after it starts (the
supervisors spawn, never fork, their workers).

Key age is exported as the time since each issuer's keys were last fetched successfully, computed at scrape
time from the per-worker fetch timestamps (the oldest worker's keys count), because a gauge written only by
the scraped worker would be stale in every other worker's file.

Revocation feeds (gateway/revocation.py): ``gateway_revocation_polls_total{issuer,outcome}`` counts feed requests
(``ok``, ``more`` or a failure); ``gateway_revocation_updated_timestamp_seconds`` is the Unix time of the last poll
that caught up (the oldest worker's: alert on ``time() - it`` past ``revocation_stale_after``);
``gateway_revoked_sessions`` the sessions remembered (the largest worker's). Refused revoked tokens are
``gateway_token_verifications_total{outcome="revoked"}``; tokens refused because a list is stale, ``"unavailable"``.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: ``route`` label values for requests that matched no configured route.
UNMATCHED = "(unmatched)"
LIVEZ, READYZ, METRICS = "(livez)", "(readyz)", "(metrics)"

# The ``*_created`` series double every counter's output and are not kept in multiprocess mode anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _Pid:
    """This process's id without a system call: glibc no longer caches ``getpid``, and prometheus_client's
    multiprocess values ask for it on every update (to notice a fork), five times per proxied request; about 4 µs
    per request measured under ``--workers 2`` (issue 7). Refreshed in a forked child, so simultaneously running
    processes still get distinct values, the rule ``MultiProcessValue(process_identifier=...)`` states."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self.refresh)

    def refresh(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


if MULTIPROC_ENV in os.environ or "prometheus_multiproc_dir" in os.environ:
    # The same condition prometheus_client chose multiprocess mode by at import; before any metric of ours exists.
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_Pid())  # type: ignore[no-untyped-call]

_KEYS_UPDATED = "gateway_jwks_keys_updated_timestamp_seconds"
#: Seconds between the app's flushes of the batched counters into prometheus_client (see the module docstring).
FLUSH_INTERVAL = 1.0
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The gateway's metrics in a registry of their own (tests build one per app)."""

    def __init__(self, *, multiprocess_dir: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.multiprocess_dir = multiprocess_dir
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests answered, by route template and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_token_verifications",
            "Bearer token checks on protected routes, by outcome (valid, missing, or the invalid_token reason).",
            ["outcome"],
            registry=r,
        )
        self.token_cache = Counter(
            "gateway_token_cache", "Verified-token cache lookups, by result (hit, miss).", ["result"], registry=r
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches", "JWKS fetches, by issuer and outcome.", ["issuer", "outcome"], registry=r
        )
        self.keys_updated = Gauge(
            _KEYS_UPDATED,
            "Unix time of the last successful JWKS fetch, by issuer (the oldest across workers).",
            ["issuer"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.revocation_polls = Counter(
            "gateway_revocation_polls",
            "Revocation feed requests, by issuer and outcome.",
            ["issuer", "outcome"],
            registry=r,
        )
        self.revocation_updated = Gauge(
            "gateway_revocation_updated_timestamp_seconds",
            "Unix time of the last revocation poll that caught up, by issuer (the oldest across workers).",
            ["issuer"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.revoked_sessions = Gauge(
            "gateway_revoked_sessions",
            "Revoked sessions remembered, by issuer (the largest across workers).",
            ["issuer"],
            multiprocess_mode="livemax",
            registry=r,
        )
        # Labelled children, looked up once: ``.labels()`` validates and locks on every call (several µs, issue 7).
        # Bounded like the labels themselves: route templates x status codes, token outcomes.
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._token_children: dict[str, Counter] = {}
        self._cache_hit = self.token_cache.labels("hit")
        self._cache_miss = self.token_cache.labels("miss")
        self.fast_lane = Counter(
            "gateway_fast_lane_requests",
            "Requests admitted to the fast lane (gateway/express.py); refusals and responses still streaming "
            "continue on the ASGI path and are counted here too.",
            registry=r,
        )
        # Batched until flush(): requests by (route, status), latencies by route, token outcomes, cache hits and
        # misses, fast-lane requests.
        self._pending_requests: dict[tuple[str, int], int] = {}
        self._latencies: dict[str, _Latencies] = {}
        self._pending_fast = 0
        self._pending_tokens: dict[str, int] = {}
        self._pending_hits = self._pending_misses = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Metrics:
        return cls(multiprocess_dir=environ.get(MULTIPROC_ENV) or None)

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        if key not in self._request_children:
            self._request_children[key] = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._pending_requests[key] = 0
            if route not in self._latencies:
                self._latencies[route] = _Latencies(self._request_children[key][1])
        self._pending_requests[key] += 1
        self._latencies[route].observe(seconds)

    def fast(self, count: int) -> None:
        self._pending_fast += count

    def token(self, outcome: str) -> None:
        pending = self._pending_tokens
        pending[outcome] = pending.get(outcome, 0) + 1

    def cache(self, hits: int, misses: int) -> None:
        self._pending_hits += hits
        self._pending_misses += misses

    def flush(self) -> None:
        """Add the counts batched since the last flush to prometheus_client's values."""
        for key, count in self._pending_requests.items():
            if count:
                self._request_children[key][0].inc(count)
                self._pending_requests[key] = 0
        tokens, self._pending_tokens = self._pending_tokens, {}
        for outcome, count in tokens.items():
            child = self._token_children.get(outcome)
            if child is None:
                child = self._token_children[outcome] = self.tokens.labels(outcome)
            child.inc(count)
        for latencies in self._latencies.values():
            latencies.flush()
        if self._pending_hits:
            self._cache_hit.inc(self._pending_hits)
        if self._pending_misses:
            self._cache_miss.inc(self._pending_misses)
        if self._pending_fast:
            self.fast_lane.inc(self._pending_fast)
        self._pending_hits = self._pending_misses = self._pending_fast = 0

    def jwks_fetch(self, issuer: str, outcome: str) -> None:
        self.jwks_fetches.labels(issuer, outcome).inc()

    def keys_fetched(self, issuer: str, at: float) -> None:
        self.keys_updated.labels(issuer).set(at)

    def revocation_poll(self, issuer: str, outcome: str, size: int, at: float) -> None:
        self.revocation_polls.labels(issuer, outcome).inc()
        self.revoked_sessions.labels(issuer).set(size)
        if outcome == "ok":
            self.revocation_updated.labels(issuer).set(at)

    def render(self) -> bytes:
        """The exposition text: this process's registry, or every worker's files in multiprocess mode."""
        self.flush()
        if self.multiprocess_dir:
            source = CollectorRegistry()
            MultiProcessCollector(source, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        else:
            source = self.registry
        return generate_latest(_WithKeyAge(source, self._clock))

    def close(self) -> None:
        """Flush, then drop this worker's live gauges from the aggregate (a stopped worker's keys no longer count)."""
        self.flush()
        if self.multiprocess_dir:
            mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


class _Latencies:
    """One route's latencies since the last flush: a count per histogram bucket and their sum (module docstring)."""

    __slots__ = ("_bounds", "_counts", "_histogram", "_sum", "observe")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        bounds = getattr(histogram, "_upper_bounds", None)
        buckets = getattr(histogram, "_buckets", None)
        total = getattr(histogram, "_sum", None)
        batchable = (
            isinstance(bounds, list)
            and isinstance(buckets, list)
            and len(buckets) == len(bounds)
            and bounds[-1] == float("inf")
            and all(hasattr(value, "inc") for value in [*buckets, total])
        )
        self._bounds: list[float] = bounds if batchable else []  # type: ignore[assignment]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        # Per request: a bisect and two additions, or the histogram's own observe if its values are not as expected.
        self.observe: Callable[[float], None] = self._count if batchable else histogram.observe

    def _count(self, seconds: float) -> None:
        # The first bucket whose upper bound is >= seconds (Prometheus buckets are "le"), as Histogram.observe picks.
        self._counts[bisect.bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def flush(self) -> None:
        if not any(self._counts):
            return
        histogram: Any = self._histogram
        for index, count in enumerate(self._counts):
            if count:
                histogram._buckets[index].inc(count)
        histogram._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0


class _WithKeyAge:
    """Every collected metric, plus ``gateway_jwks_key_age_seconds`` derived from the fetch timestamps."""

    def __init__(self, source: CollectorRegistry, clock: Callable[[], float]) -> None:
        self._source = source
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "gateway_jwks_key_age_seconds", "Seconds since the issuer's keys were last fetched.", labels=["issuer"]
        )
        now = self._clock()
        for metric in self._source.collect():
            if metric.name == _KEYS_UPDATED:
                for sample in metric.samples:
                    age.add_metric([sample.labels["issuer"]], max(0.0, now - sample.value))
            yield metric
        yield age
