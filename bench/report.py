"""Turning results into the printed/markdown tables, the JSON file and the ratio chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import Ratio, Run, median_by_target, percentile


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (also what stdout shows)."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_line(run: Run) -> str:
    cpu = f"{run.cpu_us_per_request:,.0f} µs/req" if run.cpu_us_per_request is not None else "-"
    if run.load_cpu_us_per_request is not None:
        cpu += f" (+{run.load_cpu_us_per_request:,.0f} load)"
    flag = "" if run.valid else "  NOT A RESULT: " + "; ".join(run.problems)
    return (
        f"  r{run.round} {run.scenario:<22} {run.target:<17} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:6.2f} ms"
        f"  p99 {run.p99_ms:7.2f} ms  {cpu:>12}  (load {run.load1:.2f}){flag}"
    )


def targets_table(runs: Sequence[Run]) -> str:
    rows = []
    for row in median_by_target(runs):
        rows.append(
            [
                row["scenario"],
                row["target"],
                _fmt(row["rps"]),
                _fmt(row["p50_ms"], 2),
                _fmt(row["p99_ms"], 2),
                _fmt(row["cpu_us_per_request"]),
                ", ".join("-" if value is None else f"{value:,}" for value in row["rps_per_round"]),
                f"{row['valid_rounds']}/{row['rounds']}"
                + (" " + "; ".join(row["problems"]) if row["problems"] else ""),
            ]
        )
    return table(
        ["scenario", "target", "req/s (median)", "p50 ms", "p99 ms", "CPU µs/req", "req/s per round", "valid rounds"],
        rows,
    )


def ratios_table(ratios: Sequence[Ratio]) -> str:
    rows = []
    for ratio in ratios:
        goal = ratio.spec.goal
        goal_text = "-" if goal is None else (f">= {goal:g}" if ratio.spec.metric == "rps" else f"<= {goal:g}")
        verdict = {True: "met", False: "NOT met", None: "-"}[ratio.meets_goal]
        rows.append(
            [
                ratio.spec.name,
                ", ".join("-" if value is None else f"{value:.2f}" for value in ratio.per_round),
                _fmt(ratio.median, 2),
                goal_text,
                verdict,
            ]
        )
    return table(["ratio (within each round)", "per round", "median", "goal (issue 7)", "verdict"], rows)


def ceilings_table(ceilings: Sequence[dict[str, Any]]) -> str:
    """bench.stats.worker_ceilings, a row per round."""
    rows = [
        [
            item["scenario"],
            str(item["round"]),
            f"{item['measured']:.2f}",
            f"{item['ceiling']:.2f}",
            _fmt(item["gateway_cpu_us"]),
            _fmt(item["load_cpu_us"]),
        ]
        for item in ceilings
    ]
    headers = ["scenario", "round", "2 / 1 measured", "ceiling", "G: gateway µs/req", "X: wrk + upstream µs/req"]
    return table(headers, rows)


def goals_table(goals: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            goal["name"],
            ", ".join(f"{value:,.0f}" for value in goal["per_round"]),
            f"{goal['median']:,.0f} {goal['unit']}",
            f"<= {goal['limit']:g} {goal['unit']}",
            "met" if goal["met"] else "NOT met",
        ]
        for goal in goals
    ]
    return table(["absolute goal", "per round", "median", "goal (issue 7)", "verdict"], rows)


def sign_in_table(sign_ins: Sequence[dict[str, Any]]) -> str:
    by_service: dict[str, list[dict[str, Any]]] = {}
    for item in sign_ins:
        by_service.setdefault(item["service"], []).append(item)
    rows = []
    for service, items in by_service.items():
        latencies = [value for item in items for value in item["latencies_ms"]]

        def pct(p: float, values: list[float] = latencies) -> str:
            value = percentile(values, p)
            return "-" if value is None else f"{value:.1f}"

        rows.append(
            [
                service,
                str(len(latencies)),
                pct(50),
                pct(90),
                ", ".join(f"{item['p50_ms']:.1f}" for item in items),
                ", ".join(f"{item['cpu_ms_per_sign_in']:.1f}" for item in items),
                str(sum(item["failures"] for item in items)),
            ]
        )
    return table(
        ["service", "sign-ins", "p50 ms", "p90 ms", "p50 per round", "server CPU ms/sign-in per round", "failures"],
        rows,
    )


def burst_table(bursts: Sequence[dict[str, Any]], limit_ms: float) -> str:
    rows = []
    for item in bursts:
        rows.append(
            [
                item["service"],
                f"50 sign-ins at once ({item['window_s']:g} s)"
                if item["burst"]
                else f"baseline ({item['window_s']:g} s)",
                f"{item['jwks_p99_ms']:.1f}",
                f"{item['token_p99_ms']:.1f}",
                f"{item['jwks_rps']:,.0f} / {item['token_rps']:,.0f}",
                str(item["jwks_failed"] + item["token_failed"]),
                f"{item.get('burst_wall_ms', 0):,.0f}" if item["burst"] else "-",
                json.dumps(item.get("burst_statuses", {})) if item["burst"] else "-",
                ("yes" if max(item["jwks_p99_ms"], item["token_p99_ms"]) <= limit_ms else "NO")
                if item["burst"]
                else "-",
            ]
        )
    return table(
        [
            "service",
            "phase",
            "/jwks p99 ms",
            "/token p99 ms",
            "req/s jwks / token",
            "failed",
            "burst wall ms",
            "sign-in statuses",
            f"p99 <= {limit_ms:g} ms",
        ],
        rows,
    )


def chart(ratios: Sequence[Ratio], path: Path, title: str) -> None:
    """Horizontal bars of the median ratios (rps ratios and the p99 ratio), with each round's value as a dot
    and the issue's goal as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [ratio for ratio in ratios if ratio.median is not None]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.6))
    names = [ratio.spec.name + (" (lower is better)" if ratio.spec.metric != "rps" else "") for ratio in shown][::-1]
    medians = [ratio.median or 0 for ratio in shown][::-1]
    colors = []
    for ratio in shown[::-1]:
        verdict = ratio.meets_goal
        colors.append({True: "#2e7d32", False: "#c62828", None: "#607d8b"}[verdict])
    ys = range(len(shown))
    ax.barh(list(ys), medians, color=colors, alpha=0.8)
    for y, ratio in zip(ys, shown[::-1], strict=True):
        points = [value for value in ratio.per_round if value is not None]
        ax.scatter(points, [y] * len(points), color="black", s=10, zorder=3)
        if ratio.spec.goal is not None:
            ax.plot([ratio.spec.goal] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text((ratio.median or 0) * 1.08, y + 0.25, f"{ratio.median:.2f}", va="center", fontsize=8)
    ax.set_yticks(list(ys))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("ratio, log scale (bars: median of per-round ratios; dots: rounds; black tick: goal)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
