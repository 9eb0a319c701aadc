"""bench/memory.py: its pure parts (metrics parsing, the flat verdict, the wrk script), and the quick mode end to end
against the real gateway, nginx and wrk (soak marker, like test_bench_smoke.py: `pytest -m soak tests/bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import configs, memory

ROOT = Path(__file__).resolve().parents[2]

EXPOSITION = """# HELP gateway_token_cache_total Verified-token cache lookups, by result (hit, miss).
# TYPE gateway_token_cache_total counter
gateway_token_cache_total{result="hit"} 12.0
gateway_token_cache_total{result="miss"} 2002.0
# TYPE gateway_token_verifications_total counter
gateway_token_verifications_total{outcome="valid"} 2013.0
gateway_token_verifications_total{outcome="bad_signature"} 1.0
gateway_token_verifications_total{outcome="expired"} 2.0
gateway_token_verifications_total{outcome="missing"} 5.0
gateway_requests_total{route="/api/{user_id}/{rest:path}",status="200"} 2013.0
"""


def test_token_counters_read_the_cache_and_verification_series() -> None:
    assert memory.token_counters(EXPOSITION) == {"cache_hit": 12, "cache_miss": 2002, "valid": 2013, "refused": 3}


def test_token_counters_of_a_fresh_gateway_are_zero() -> None:
    assert memory.token_counters("# no samples yet\n") == {"cache_hit": 0, "cache_miss": 0, "valid": 0, "refused": 0}


def _samples(*rows: tuple[int, int, int]) -> list[dict[str, Any]]:
    return [{"tokens": tokens, "rss_kib": rss, "cache_entries": entries} for tokens, rss, entries in rows]


MIB = 1024


@pytest.mark.parametrize(
    ("samples", "cache_size", "flat", "growth_kib"),
    [
        pytest.param(
            _samples((0, 50 * MIB, 0), (100, 150 * MIB, 100), (200, 155 * MIB, 100), (300, 152 * MIB, 100)),
            100,
            True,
            5 * MIB,
            id="plateau after the cache fills",
        ),
        pytest.param(
            _samples((0, 50 * MIB, 0), (100, 150 * MIB, 100), (200, 170 * MIB, 100), (300, 190 * MIB, 100)),
            100,
            False,
            40 * MIB,
            id="growth past 10 % after the cache is full",
        ),
        pytest.param(
            _samples((0, 50 * MIB, 0), (100, 60 * MIB, 100), (200, 67 * MIB, 100)),
            100,
            True,
            7 * MIB,
            id="small process: 8 MiB floor",
        ),
        pytest.param(
            _samples((0, 50 * MIB, 0), (100, 60 * MIB, 100), (200, 69 * MIB, 100)),
            100,
            False,
            9 * MIB,
            id="small process: past the 8 MiB floor",
        ),
        pytest.param(
            _samples((0, 50 * MIB, 0), (100, 150 * MIB, 100), (200, 140 * MIB, 100)),
            100,
            True,
            -10 * MIB,
            id="shrinking is flat",
        ),
    ],
)
def test_verdict_measures_growth_from_the_first_full_reading(
    samples: list[dict[str, Any]], cache_size: int, flat: bool, growth_kib: int
) -> None:
    result = memory.verdict(samples, cache_size)
    assert result["flat"] is flat
    assert result["growth_kib"] == growth_kib
    assert result["full_at_tokens"] == 100


@pytest.mark.parametrize(
    ("samples", "cache_size"),
    [
        pytest.param(_samples((0, 50 * MIB, 0), (100, 90 * MIB, 100)), 1000, id="cache never full"),
        pytest.param(_samples((0, 50 * MIB, 0), (100, 90 * MIB, 100)), 100, id="one reading with the cache full"),
        pytest.param(_samples((0, 50 * MIB, 0), (100, 90 * MIB, 0)), 0, id="cache disabled"),
    ],
)
def test_verdict_cannot_tell_without_two_full_readings(samples: list[dict[str, Any]], cache_size: int) -> None:
    assert memory.verdict(samples, cache_size)["flat"] is None


@pytest.mark.parametrize(("count", "expected"), [(1, 64), (3200, 64), (100_000, 2000)])
def test_spares_cover_the_requests_wrk_builds_but_never_sends(count: int, expected: int) -> None:
    assert memory.spares(count) == expected


def test_the_wrk_script_counts_only_the_upstreams_exact_answer_and_keeps_the_summary_hook() -> None:
    script = memory.ONCE_SCRIPT
    assert f"body == [[{configs.UPSTREAM_BODY}]]" in script
    assert "WRK_JSON" in script and "ONCE_JSON" in script
    assert "wrk.thread:stop()" in script


def test_help_names_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--tokens", "--chunks", "--cache-size", "--time-limit", "--results", "--no-install"):
        assert option in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--tokens", "0"], id="no tokens"),
        pytest.param(["--chunks", "0"], id="no chunks"),
        pytest.param(["--time-limit", "0"], id="no time"),
        pytest.param(["--cache-size", "-1"], id="negative cache"),
    ],
)
def test_arguments_out_of_range_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        memory.parse_args(argv)
    assert exc.value.code == 2


@pytest.mark.soak
def test_quick_mode_end_to_end_rss_flat_once_a_small_cache_is_full(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.memory", "--tokens", "20000", "--chunks", "5", "--cache-size", "5000"]
    argv += ["--time-limit", "5", "--no-install", "--results", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=420, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = tmp_path.glob("memory-*.json")
    data = json.loads(result.read_text())
    assert data["complete"] is True
    assert data["meta"]["problems"] == []
    assert data["meta"]["cache_size"] == 5000
    samples = data["samples"]
    assert [row["tokens"] for row in samples] == [0, 4000, 8000, 12000, 16000, 20000]
    # Each token was sent once: one miss each, plus the two probes (a valid token and a forged one).
    assert samples[-1]["cache_miss"] == 20000 + 2
    assert samples[-1]["refused"] == 1
    assert [row["cache_entries"] for row in samples] == [1, 4001, 5000, 5000, 5000, 5000]
    assert all(row["rss_kib"] > 0 and row["hwm_kib"] >= row["rss_kib"] for row in samples)
    assert data["verdict"]["flat"] is True, data["verdict"]
    assert (tmp_path / result.name.replace(".json", ".md")).read_text().count("\n| ") == len(samples) + 2


def test_markdown_names_the_command_allocator_settings_verdict_and_every_reading() -> None:
    meta = {
        "tokens_sent": 200,
        "started": "2026-11-26 18:00:00 UTC",
        "command": "python -m bench.memory --tokens 200",
        "code": "abc1234",
        "allocator_env": {"MALLOC_MMAP_THRESHOLD_": "131072"},
        "cache_size": 100,
        "placement": "not pinned",
        "load_start": (1.0, 1.0, 1.0),
        "load_end": (2.0, 1.0, 1.0),
        "problems": [],
    }
    samples = [
        {**row, "hwm_kib": row["rss_kib"], "anon_kib": 0, "cache_miss": row["tokens"], "cache_hit": 0, "load1": 1.0}
        for row in _samples((0, 50 * MIB, 0), (100, 60 * MIB, 100), (200, 61 * MIB, 100))
    ]
    text = memory.render_markdown(meta, samples, memory.verdict(samples, 100))
    assert "`python -m bench.memory --tokens 200`; code: abc1234; MALLOC_MMAP_THRESHOLD_=131072" in text
    assert "verdict: flat (from 100 tokens (cache full) to 200: +1.0 MiB, allowed 8.0 MiB)" in text
    assert "| 200 | 61.0 | 61.0 | 0.0 | 100 | 200 | 0 | - | - | 1.00 |" in text
    assert "Not a result" not in text
