"""The whole bench, briefly, against the real processes: every target answers correctly and every run is a
result. Needs nginx, haproxy, wrk (and node + Better Auth for the identity part): run by hand with
`pytest -m soak tests/bench` (soak tests are deselected by default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.soak
def test_one_short_round_of_every_scenario(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--rounds", "1", "--duration", "2", "--identity-duration", "2"]
    argv += ["--sign-ins", "2", "--burst-window", "2", "--cold-tokens", "20000", "--no-install"]
    argv += ["--results", str(tmp_path), "--chart", str(tmp_path / "chart.png")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = tmp_path.glob("bench-*.json")
    data = json.loads(result.read_text())
    assert data["runs"], "no runs recorded"
    assert [run for run in data["runs"] if not run["valid"]] == []
    scenarios = {run["scenario"] for run in data["runs"]}
    assert {"warm", "cold", "workers-warm", "workers-cold", "identity-token", "identity-jwks"} <= scenarios
    assert all(run["cpu_us_per_request"] > 0 for run in data["runs"])
    assert {item["service"] for item in data["sign_ins"]} == {"ours", "better-auth"}
    assert len(data["bursts"]) == 4
    assert (tmp_path / "chart.png").stat().st_size > 10_000
