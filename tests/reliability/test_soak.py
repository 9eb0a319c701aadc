"""The soak script itself, briefly (``pytest -m soak``; CI does not run it): a minute of mixed load on the real stack
must pass its own verdict. The full run is ``python -m bench.soak`` (5 minutes by default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.soak
def test_a_short_soak_passes(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "bench.soak", "--duration", "60", "--rate", "30", "--renew-every", "20"]
    argv += ["--sample-every", "2", "--json", str(figures)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(figures.read_text())
    assert result["passed"]
    assert result["load"]["unexpected"] == 0 and result["log_errors"] == 0
    assert result["load"]["requests"] >= 0.9 * 60 * 30
    assert result["load"]["jwt_renewals"] >= 4
    assert {p["service"] for p in result["processes"]} == {"identity", "tasks", "gateway"}
