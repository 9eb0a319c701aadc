"""The bench harness's pure parts: wrk output parsing, run checks, within-round ratios, profile summaries."""

from __future__ import annotations

import json

import pytest

from bench import configs, prereqs, procs, profile, proxybench, wrk
from bench.stats import AbsoluteGoal, RatioSpec, Run, check, median_by_target, percentile, ratios, worker_ceilings

WRK_STDOUT = """Running 10s test @ http://127.0.0.1:8080/api/x/items
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms  448.21us  10.67ms   88.16%
  122781 requests in 10.00s, 19.90MB read
  Non-2xx or 3xx responses: 5
Requests/sec:  12277.02
WRK_JSON {"requests":122781,"duration_us":10001000,"bytes":20866000,"p50_us":2530,"p90_us":3000,"p99_us":4090,\
"max_us":10670,"connect_errors":0,"read_errors":1,"write_errors":0,"timeouts":2,"non_2xx":5}
"""


def test_parse_reads_the_done_hook_line() -> None:
    result = wrk.parse(WRK_STDOUT)
    assert result.requests == 122781
    assert result.rps == pytest.approx(122781 / 10.001)
    assert (result.p50_ms, result.p90_ms, result.p99_ms, result.max_ms) == (2.53, 3.0, 4.09, 10.67)
    assert result.non_2xx == 5
    assert result.socket_errors == 3
    assert result.failed == 8


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param("Running 10s test\n", id="no summary line"),
        pytest.param('WRK_JSON {"requests": 1}\n', id="missing keys"),
        pytest.param("WRK_JSON {not json\n", id="not json"),
    ],
)
def test_parse_refuses_output_without_a_complete_summary(stdout: str) -> None:
    with pytest.raises(wrk.WrkError):
        wrk.parse(stdout)


def test_command_pins_and_passes_script_arguments(tmp_path) -> None:
    argv = wrk.command(
        "http://127.0.0.1:1/",
        script=tmp_path / "s.lua",
        threads=1,
        connections=32,
        duration=9.6,
        headers=["Authorization: Bearer t"],
        script_args=["tokens.txt"],
        cpus="1",
    )
    assert argv[:3] == ["taskset", "-c", "1"]
    assert "-d10s" in argv and "--latency" in argv
    assert argv[-3:] == ["http://127.0.0.1:1/", "--", "tokens.txt"]
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer t"


def _run(round_number: int, scenario: str, target: str, rps: float, **kwargs) -> Run:
    values = {"p50_ms": 1.0, "p99_ms": 2.0, "cpu_us_per_request": 100.0, "requests": 1000, "non_2xx": 0}
    values.update(kwargs)
    return Run(round_number, scenario, target, rps, socket_errors=0, load1=0.5, **values)


@pytest.mark.parametrize(
    ("run", "token_cache", "problem"),
    [
        pytest.param(_run(1, "warm", "g", 10), True, None, id="clean run"),
        pytest.param(_run(1, "warm", "g", 10, non_2xx=3), False, "3 responses with status >= 400", id="401s"),
        pytest.param(_run(1, "warm", "g", 10, requests=0), False, "no requests completed", id="nothing"),
        pytest.param(
            Run(1, "cold", "g", 10, 1, 2, 100, 5000, 0, 0, 0.1, tokens=4000),
            True,
            "5000 requests > 4000 distinct tokens: tokens were reused",
            id="tokens wrapped on a caching target",
        ),
        pytest.param(
            Run(1, "cold", "h", 10, 1, 2, 100, 5000, 0, 0, 0.1, tokens=4000), False, None, id="wrap without cache"
        ),
    ],
)
def test_check_flags_runs_that_are_not_results(run: Run, token_cache: bool, problem: str | None) -> None:
    checked = check(run, token_cache=token_cache)
    assert checked.problems == ([] if problem is None else [problem])
    assert checked.valid is (problem is None)


def test_ratios_are_taken_within_each_round_and_skip_invalid_runs() -> None:
    runs = [
        _run(1, "warm", "ours", 300),
        _run(1, "warm", "ref", 100),
        _run(2, "warm", "ours", 200),
        _run(2, "warm", "ref", 200),
        _run(3, "warm", "ours", 900, non_2xx=1),  # a fast run of errors: not a result
        _run(3, "warm", "ref", 100),
    ]
    for run in runs:
        check(run, token_cache=False)
    spec = RatioSpec("ours/ref", ("warm", "ours"), ("warm", "ref"), goal=1.2)
    (ratio,) = ratios(runs, [spec], rounds=3)
    assert ratio.per_round == [3.0, 1.0, None]
    assert ratio.median == 2.0
    assert ratio.meets_goal is True


def test_worker_ceiling_is_the_cores_over_cpu_per_request_against_one_workers_throughput() -> None:
    """Round 1: 2 cores / (60 + 40 µs) = 20,000 req/s at most, over one worker's 10,000 -> 2.0; measured 14,000 ->
    1.4. Round 2 has an invalid run and round 3 no load measurement: no row for them."""
    runs = [
        _run(1, "workers-warm", "gateway-1w", 10_000, cpu_us_per_request=95.0, load_cpu_us_per_request=38.0),
        _run(1, "workers-warm", "gateway-2w", 14_000, cpu_us_per_request=60.0, load_cpu_us_per_request=40.0),
        _run(2, "workers-warm", "gateway-1w", 10_000),
        _run(2, "workers-warm", "gateway-2w", 14_000, non_2xx=3, load_cpu_us_per_request=40.0),
        _run(3, "workers-warm", "gateway-1w", 10_000),
        _run(3, "workers-warm", "gateway-2w", 14_000),
        _run(1, "workers-cold", "gateway-2w", 1),
    ]
    for run in runs:
        check(run, token_cache=False)
    (row,) = worker_ceilings(runs, "workers-warm", "gateway-1w", "gateway-2w", cores=2, rounds=3)
    assert row["round"] == 1
    assert row["measured"] == pytest.approx(1.4)
    assert row["ceiling"] == pytest.approx(2.0)
    assert (row["gateway_cpu_us"], row["load_cpu_us"]) == (60.0, 40.0)
    assert worker_ceilings(runs, "workers-cold", "gateway-1w", "gateway-2w", cores=2, rounds=3) == []


def test_children_cpu_seconds_counts_a_child_once_it_has_been_waited_for() -> None:
    import subprocess
    import sys

    before = procs.children_cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"], check=True)
    assert procs.children_cpu_seconds() - before >= 0.05


def test_lower_is_better_metrics_meet_their_goal_from_below() -> None:
    runs = [_run(1, "warm", "ours", 1, p99_ms=3.0), _run(1, "warm", "ref", 1, p99_ms=2.0)]
    spec = RatioSpec("p99", ("warm", "ours"), ("warm", "ref"), metric="p99_ms", goal=1.0)
    (ratio,) = ratios(runs, [spec], rounds=1)
    assert ratio.median == 1.5
    assert ratio.meets_goal is False


def test_ratio_without_any_pair_is_left_out() -> None:
    assert ratios([_run(1, "warm", "ours", 1)], [RatioSpec("x", ("warm", "ours"), ("warm", "ref"))], 1) == []


def test_median_by_target_ignores_invalid_rounds() -> None:
    runs = [_run(1, "warm", "ours", 100), _run(2, "warm", "ours", 300), _run(3, "warm", "ours", 5000, non_2xx=9)]
    for run in runs:
        check(run, token_cache=False)
    (row,) = median_by_target(runs)
    assert row["rps"] == 200
    assert row["valid_rounds"] == 2
    assert row["rps_per_round"] == [100, 300, None]


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        pytest.param([5.0, 1.0, 3.0, 2.0, 4.0], 50, 3.0, id="median of five"),
        pytest.param([float(i) for i in range(1, 11)], 90, 9.0, id="p90 of ten"),
        pytest.param([7.0], 99, 7.0, id="single value"),
        pytest.param([], 50, None, id="empty"),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], pct: float, expected: float | None) -> None:
    assert percentile(values, pct) == expected


def test_rotate_starts_each_round_one_target_later() -> None:
    targets = ("a", "b", "c")
    assert [proxybench.rotate(targets, n) for n in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


@pytest.mark.parametrize(
    ("output", "version"),
    [
        pytest.param("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/", (2, 6), id="debian"),
        pytest.param("HA-Proxy version 2.4.22 2023/02/14", (2, 4), id="old spelling"),
    ],
)
def test_haproxy_version(output: str, version: tuple[int, int]) -> None:
    assert prereqs.haproxy_version(output) == version


def test_haproxy_version_unreadable() -> None:
    with pytest.raises(prereqs.PrereqError):
        prereqs.haproxy_version("nginx version: nginx/1.22.1")


def test_profile_summary_by_component_self_and_inclusive() -> None:
    collapsed = "\n".join(
        [
            "process 1:python;run (asyncio/base_events.py:600);handle (gateway/app.py:10);decode (jwt/api_jws.py:5) 30",
            "process 1:python;run (asyncio/base_events.py:600);handle (gateway/app.py:10) 50",
            "process 1:python;run (asyncio/base_events.py:600);_run_once (asyncio/base_events.py:1900) 20",
            "garbage line",
        ]
    )
    summary = profile.summarise(collapsed)
    assert summary.samples == 100
    assert dict(summary.by_component) == {"gateway (our code)": 50, "PyJWT": 30, "asyncio event loop": 20}
    assert summary.by_self[0] == ("handle (gateway/app.py)", 50)
    assert dict(summary.by_total)["handle (gateway/app.py)"] == 80
    assert dict(summary.by_total)["run (asyncio/base_events.py)"] == 100  # not an entry frame: kept
    text = profile.render(summary, 200.0, "t")
    assert "| PyJWT | 30.0% | 60 |" in text


def test_haproxy_config_checks_what_an_owner_route_checks(tmp_path) -> None:
    text = configs.haproxy(1, 2, alg="ES256", public_pem=tmp_path / "k.pem", issuer="https://i", audience="https://a")
    for needle in (
        "-m str ES256",
        f'jwt_verify(txn.alg,"{tmp_path / "k.pem"}")',
        "-m str https://i",
        "-m str https://a",
        "sub(txn.now) -m int gt 0",
        "strcmp(txn.sub) eq 0",
        "deny_status 403",
    ):
        assert needle in text


def test_absolute_goal_uses_the_median_of_valid_rounds() -> None:
    runs = [
        _run(1, "warm", "ours", 1, cpu_us_per_request=140.0),
        _run(2, "warm", "ours", 1, cpu_us_per_request=170.0),
        _run(3, "warm", "ours", 1, cpu_us_per_request=160.0),
        _run(4, "warm", "ours", 1, cpu_us_per_request=10.0, non_2xx=1),
    ]
    for run in runs:
        check(run, token_cache=False)
    goal = AbsoluteGoal("cpu", "warm", "ours", "cpu_us_per_request", 150.0, "µs").evaluate(runs)
    assert goal is not None
    assert (goal["median"], goal["met"]) == (160.0, False)
    assert AbsoluteGoal("cpu", "cold", "ours", "cpu_us_per_request", 150.0, "µs").evaluate(runs) is None


def test_profile_inclusive_table_leaves_out_entry_frames() -> None:
    collapsed = (
        "_run_code (<frozen runpy>:88);main (gateway/__main__.py:5);Runner.run (asyncio/runners.py:118);"
        "h (gateway/app.py:1) 4"
    )
    summary = profile.summarise(collapsed)
    assert [name for name, _ in summary.by_total] == ["h (gateway/app.py)"]


def test_bench_gateway_config_is_accepted_by_the_gateway() -> None:
    """The bench's TOML must stay a valid gateway configuration as the gateway's config grows."""
    import tomllib

    from gateway.config import parse_config

    text = configs.gateway_toml(8080, issuer="https://id.bench.test", audience="https://api.bench.test")
    config = parse_config(tomllib.loads(text), {"EDGE_PROOF_SECRET": "s" * 48})
    assert [route.auth for route in config.routes] == ["owner"]


def test_replot_redraws_the_chart_from_a_results_file(tmp_path) -> None:
    from bench.__main__ import replot

    runs = [
        _run(n, "warm", target, rps) for n in (1, 2) for target, rps in (("gateway-EdDSA", 3), ("haproxy-ES256", 4))
    ]
    meta = {
        "started": "2026-11-26T15:39:11+00:00",
        "settings": {"rounds": 2, "duration": 10.0},
        "load_average_per_round": [{"round": 1, "loadavg": [2.4, 3, 4]}, {"round": 2, "loadavg": [4.1, 3, 4]}],
        "machine": {"cpus_online": 2},
        "source": "abc1234",
    }
    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"meta": meta, "runs": [run.as_dict() for run in runs]}))
    assert replot(results, tmp_path / "chart.png") == 0
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
