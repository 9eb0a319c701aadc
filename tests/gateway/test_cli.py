"""``python -m gateway``: help, configuration errors (exit 2, every problem listed), and a graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from gateway.__main__ import main
from tests.gateway._fwd_servers import Backend, LoopThread, free_port, wait_live
from tests.gateway.conftest import PROOF_SECRET

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[[issuers]]
issuer = "http://127.0.0.1:8000"
audiences = ["http://127.0.0.1:8000"]
jwks_url = "http://127.0.0.1:8001/api/auth/jwks"

[[routes]]
path = "/api/{user_id}/{rest:path}"
upstream = "http://127.0.0.1:8002"
auth = "owner"
"""

BAD = """
colour = "blue"

[[issuers]]
issuer = "http://127.0.0.1:8000"
audiences = []
jwks_url = "http://127.0.0.1:8001/api/auth/jwks"
algorithms = ["HS256"]

[[issuers]]
issuer = "http://127.0.0.1:8000"
audiences = ["x"]
jwks_url = "http://127.0.0.1:8001/api/auth/jwks"

[[routes]]
path = "/api/{rest:path}"
upstream = "http://127.0.0.1:8002"
auth = "owner"

[[routes]]
path = "/x"
upstream = "http://127.0.0.1:8002"
auth = "sometimes"
"""


@pytest.fixture
def config_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        return str(path)

    return write


def test_help_names_every_flag_and_environment_variable(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"], environ={})
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("--config", "--host", "--port", "--workers", "--graceful-timeout", "--log-level", "--no-access-log"):
        assert name in text
    for variable in ("GATEWAY_CONFIG", "EDGE_PROOF_SECRET", "PROMETHEUS_MULTIPROC_DIR"):
        assert variable in text


def test_no_configuration_exits_2(capsys):
    assert main([], environ={"EDGE_PROOF_SECRET": PROOF_SECRET}) == 2
    assert "--config" in capsys.readouterr().err


def test_every_configuration_problem_is_listed_at_once(config_file, capsys):
    assert main(["--config", config_file(BAD)], environ={}) == 2
    err = capsys.readouterr().err
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    for fragment in ("colour", "audiences", "HS256", "duplicate issuer", "{user_id}", "sometimes", "EDGE_PROOF_SECRET"):
        assert any(fragment in line for line in problems), (fragment, err)


@pytest.mark.parametrize(
    "how",
    [pytest.param("flag", id="--config"), pytest.param("env", id="GATEWAY_CONFIG")],
)
def test_check_validates_a_good_configuration(config_file, capsys, how):
    path = config_file(GOOD)
    environ = {"EDGE_PROOF_SECRET": PROOF_SECRET}
    argv = ["check"]
    if how == "flag":
        argv += ["--config", path]
    else:
        environ["GATEWAY_CONFIG"] = path
    assert main(argv, environ=environ) == 0
    assert "valid" in capsys.readouterr().out


def test_a_short_proof_secret_stops_start_up(config_file, capsys):
    assert main(["check", "--config", config_file(GOOD)], environ={"EDGE_PROOF_SECRET": "short"}) == 2
    assert "EDGE_PROOF_SECRET" in capsys.readouterr().err


def test_the_real_command_exits_2_on_a_bad_configuration(config_file):
    env = {k: v for k, v in os.environ.items() if k != "EDGE_PROOF_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", config_file(BAD), "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("  - ") >= 7


@pytest.mark.integration
def test_sigterm_drains_in_flight_requests(tmp_path):
    loop = LoopThread()
    try:
        backend = Backend(loop)
        backend_url = f"http://127.0.0.1:{loop.start_uvicorn(backend)}"
        config = tmp_path / "gateway.toml"
        config.write_text(f'[[routes]]\npath = "/b/{{rest:path}}"\nupstream = "{backend_url}"\nauth = "public"\n')
        port = free_port()
        env = {**os.environ, "EDGE_PROOF_SECRET": PROOF_SECRET}
        argv = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port)]
        argv += ["--graceful-timeout", "5"]
        with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
            try:
                url = f"http://127.0.0.1:{port}"
                wait_live(url, process)
                result: list[httpx.Response | Exception] = []

                def slow_request() -> None:
                    try:
                        result.append(httpx.get(f"{url}/b/slow?delay=1", timeout=10, trust_env=False))
                    except Exception as exc:
                        result.append(exc)

                thread = threading.Thread(target=slow_request)
                thread.start()
                assert backend.in_flight.wait(5)
                process.send_signal(signal.SIGTERM)
                thread.join(10)
                # uvicorn re-raises the captured SIGTERM once it has shut down cleanly (exit status -15).
                assert process.wait(10) in (0, -signal.SIGTERM)
                assert b"Application shutdown complete" in process.stderr.read()
            finally:
                if process.poll() is None:
                    process.kill()
        response = result[0]
        assert isinstance(response, httpx.Response), response
        assert (response.status_code, response.text) == (200, "slow done")
    finally:
        loop.close()


def test_the_served_process_tunes_its_garbage_collector():
    # In a process of its own: freezing the test runner's heap would change every later test's GC behaviour.
    script = (
        "import gc; from gateway.__main__ import tune_gc; tune_gc(); "
        "assert gc.get_threshold()[0] == 10_000, gc.get_threshold(); assert gc.get_freeze_count() > 0"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_mmap_threshold_is_pinned_unless_the_operator_set_it() -> None:
    """glibc's adjustable mmap threshold let RSS creep up in steps as the token cache turned over (issue 7); the
    gateway pins it at start, and MALLOC_MMAP_THRESHOLD_ in the environment (glibc reads it itself) wins."""
    from gateway.__main__ import pin_mmap_threshold

    assert pin_mmap_threshold({"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    # In a fresh interpreter (this one's allocator is left alone): on Linux with glibc, mallopt accepts it.
    code = "from gateway.__main__ import pin_mmap_threshold; print(pin_mmap_threshold({}))"
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == ("True" if sys.platform == "linux" else "False")
