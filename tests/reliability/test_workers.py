"""A gateway worker killed with SIGKILL under ``--workers 2``: the other worker keeps serving (only the requests the
dead worker was holding fail, and as broken connections, never as 5xx answers), and the supervisor starts a
replacement that serves too."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.gateway._fwd_servers import Backend, LoopThread
from tests.reliability._support import GatewayProcess, Recorder, children, wait_until

pytestmark = pytest.mark.integration

CONFIG = """
[[routes]]
path = "/b/{{rest:path}}"
upstream = "{backend}"
auth = "public"
"""


def _workers(supervisor: int) -> set[int]:
    """The uvicorn worker processes (multiprocessing's resource tracker is a child too, and is not one)."""
    found = set()
    for pid in children(supervisor):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(pid)
    return found


def _served_by(metrics_dir: Path, pid: int) -> float:
    path = metrics_dir / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    total = 0.0
    for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
        _metric, sample, _labels, _help = json.loads(key)
        if sample == "gateway_requests_total":
            total += value
    return total


@pytest.fixture(scope="module")
def backend_url():
    loop = LoopThread()
    try:
        yield f"http://127.0.0.1:{loop.start_uvicorn(Backend(loop))}"
    finally:
        loop.close()


def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(backend_url: str, tmp_path: Path) -> None:
    gateway = GatewayProcess(CONFIG.format(backend=backend_url), tmp_path, workers=2, args=["--no-access-log"])
    try:
        gateway.wait_live()
        assert wait_until(lambda: len(_workers(gateway.pid)) == 2, 20), children(gateway.pid)
        first = _workers(gateway.pid)

        def request(index: int) -> tuple[int, None]:
            # A connection per request, so the kernel hands them to whichever worker accepts first.
            with httpx.Client(timeout=5, trust_env=False) as client:
                return client.get(f"{gateway.url}/b/{index}", headers={"connection": "close"}).status_code, None

        loads = [Recorder(request, interval=0.02) for _ in range(2)]
        for load in loads:
            load.start()
        try:
            victim = min(first)
            # Both workers were taking requests: counted once the worker's metrics timer has flushed (about 1 s).
            assert wait_until(lambda: _served_by(gateway.metrics_dir, victim) > 0, 10)
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            seen: list[set[int]] = []

            def replaced() -> bool:
                # One reading of /proc per check, kept: reading it again could catch another moment (under a loaded
                # `make test` a second reading once found no new worker right after one that did).
                seen.append(_workers(gateway.pid))
                return len(seen[-1]) == 2 and victim not in seen[-1]

            assert wait_until(replaced, 20), seen[-1:]
            (replacement,) = seen[-1] - first
            assert wait_until(lambda: _served_by(gateway.metrics_dir, replacement) > 0, 15), "the new worker idles"
            time.sleep(0.5)
        finally:
            samples = [sample for load in loads for sample in load.stop()]
        survivor = next(iter(first - {victim}))
        assert os.path.exists(f"/proc/{survivor}"), "the other worker died too"
    finally:
        gateway.stop()

    failures = [sample for sample in samples if sample.status != 200]
    # Only what the dead worker held can fail, and as a broken connection: no 5xx, no timeout.
    assert len(failures) <= len(loads), failures
    assert all(isinstance(sample.status, str) and "Timeout" not in sample.status for sample in failures), failures
    after_kill = sorted(sample.ended for sample in samples if sample.status == 200 and sample.started >= killed)
    assert len(after_kill) > 20
    gaps = [b - a for a, b in zip([killed, *after_kill], after_kill, strict=False)]
    assert max(gaps) < 1.0, f"nobody answered for {max(gaps):.2f} s while the worker was replaced"
