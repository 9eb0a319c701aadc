"""Results and the arithmetic on them (pure): per-run records, ratios computed within each round, medians."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass
class Run:
    """One wrk run against one target. ``problems`` non-empty means: not a result (excluded from ratios)."""

    round: int
    scenario: str
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    requests: int
    non_2xx: int
    socket_errors: int
    load1: float
    tokens: int | None = None
    problems: list[str] = field(default_factory=list)
    # CPU per request of the load side: wrk and the upstream nginx (what the workers scenario shares the cores with).
    load_cpu_us_per_request: float | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "valid": self.valid}


def check(run: Run, *, token_cache: bool) -> Run:
    """Flag what makes a run meaningless: error responses, socket errors, a cold run whose tokens wrapped
    around on a target that caches verified tokens (it would measure the cache, not verification)."""
    if run.requests == 0:
        run.problems.append("no requests completed")
    if run.non_2xx:
        run.problems.append(f"{run.non_2xx} responses with status >= 400")
    if run.socket_errors:
        run.problems.append(f"{run.socket_errors} socket errors/timeouts")
    if token_cache and run.tokens is not None and run.requests > run.tokens:
        run.problems.append(f"{run.requests} requests > {run.tokens} distinct tokens: tokens were reused")
    return run


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``pct`` % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[rank - 1]


Metric = Literal["rps", "p99_ms", "cpu_us_per_request"]


@dataclass(frozen=True)
class RatioSpec:
    """``numerator`` / ``denominator`` of ``metric``, each a (scenario, target) pair, taken within one round.
    ``goal`` is the target from issue 7 (for rps higher is better, for p99 and CPU lower is better)."""

    name: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    metric: Metric = "rps"
    goal: float | None = None


@dataclass
class Ratio:
    spec: RatioSpec
    per_round: list[float | None]

    @property
    def median(self) -> float | None:
        values = [value for value in self.per_round if value is not None]
        return statistics.median(values) if values else None

    @property
    def meets_goal(self) -> bool | None:
        median, goal = self.median, self.spec.goal
        if median is None or goal is None:
            return None
        return median >= goal if self.spec.metric == "rps" else median <= goal

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "metric": self.spec.metric,
            "numerator": list(self.spec.numerator),
            "denominator": list(self.spec.denominator),
            "goal": self.spec.goal,
            "per_round": self.per_round,
            "median": self.median,
            "meets_goal": self.meets_goal,
        }


@dataclass(frozen=True)
class AbsoluteGoal:
    """A bound on one target's median (lower is better), e.g. CPU per request."""

    name: str
    scenario: str
    target: str
    metric: Metric
    limit: float
    unit: str

    def evaluate(self, runs: Iterable[Run]) -> dict[str, Any] | None:
        values = [
            value
            for run in runs
            if run.scenario == self.scenario and run.target == self.target and run.valid
            for value in [_value(run, self.metric)]
            if value is not None
        ]
        if not values:
            return None
        median = statistics.median(values)
        return {
            "name": self.name,
            "unit": self.unit,
            "per_round": values,
            "median": median,
            "limit": self.limit,
            "met": median <= self.limit,
        }


def _value(run: Run, metric: Metric) -> float | None:
    value = getattr(run, metric)
    return float(value) if value is not None else None


def ratios(runs: Iterable[Run], specs: Sequence[RatioSpec], rounds: int) -> list[Ratio]:
    """Each spec's ratio in every round where both runs exist and are valid (None otherwise)."""
    by_key = {(run.round, run.scenario, run.target): run for run in runs}
    out = []
    for spec in specs:
        per_round: list[float | None] = []
        for number in range(1, rounds + 1):
            top = by_key.get((number, *spec.numerator))
            bottom = by_key.get((number, *spec.denominator))
            value = None
            if top is not None and bottom is not None and top.valid and bottom.valid:
                a, b = _value(top, spec.metric), _value(bottom, spec.metric)
                if a is not None and b:
                    value = a / b
            per_round.append(value)
        if any(value is not None for value in per_round):
            out.append(Ratio(spec, per_round))
    return out


def median_by_target(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """Per (scenario, target): medians over valid rounds of req/s, p50, p99 and CPU per request."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.scenario, run.target), []).append(run)
    rows = []
    for (scenario, target), group in groups.items():
        valid = [run for run in group if run.valid]

        def med(metric: str, runs: list[Run] = valid) -> float | None:
            values = [getattr(run, metric) for run in runs if getattr(run, metric) is not None]
            return statistics.median(values) if values else None

        rows.append(
            {
                "scenario": scenario,
                "target": target,
                "rounds": len(group),
                "valid_rounds": len(valid),
                "rps": med("rps"),
                "p50_ms": med("p50_ms"),
                "p99_ms": med("p99_ms"),
                "cpu_us_per_request": med("cpu_us_per_request"),
                "rps_per_round": [round(run.rps) if run.valid else None for run in group],
                "problems": sorted({problem for run in group for problem in run.problems}),
            }
        )
    return rows


def worker_ceilings(
    runs: Iterable[Run], scenario: str, one: str, two: str, cores: int, rounds: int
) -> list[dict[str, Any]]:
    """Per round, how far ``two`` workers can get over ``one`` when the proxy, wrk and the upstream share ``cores``
    CPUs: every request costs the two-worker gateway G and the load side X CPU-µs, so ``cores`` CPUs serve at most
    cores / (G + X) requests per second, and the ratio to the one-worker run's req/s R1 is at most
    cores / ((G + X) · R1). A cheaper gateway lowers that ceiling (X stays), which is why the warm case lands
    lower than the cold one. It is the measured 2 / 1 scaled by cores / (the CPU the three used per second), so
    it says how much the run left idle, not what a cheaper load side would allow; optimistic, since the bench's
    own Python, unattributed kernel time and other tenants of a shared machine need CPU too."""
    by_key = {(run.round, run.scenario, run.target): run for run in runs}
    out = []
    for number in range(1, rounds + 1):
        first, second = by_key.get((number, scenario, one)), by_key.get((number, scenario, two))
        if first is None or second is None or not (first.valid and second.valid):
            continue
        gateway, load = second.cpu_us_per_request, second.load_cpu_us_per_request
        if gateway is None or load is None or not first.rps:
            continue
        out.append(
            {
                "round": number,
                "scenario": scenario,
                "measured": second.rps / first.rps,
                "ceiling": cores * 1e6 / ((gateway + load) * first.rps),
                "gateway_cpu_us": gateway,
                "load_cpu_us": load,
            }
        )
    return out
