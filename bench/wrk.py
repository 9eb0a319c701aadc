"""wrk invocations: the Lua scripts, the command line, and parsing what wrk prints (pure except ``run``).

Every run uses a script whose ``done`` hook prints one ``WRK_JSON {...}`` line with exact counts and
percentiles (microseconds), so nothing depends on wrk's rounded human units. A script that does not define
``request`` leaves wrk on its static fast path (one pre-built request, headers from ``-H``); the cold
scenario's script defines ``request`` to rotate through pre-formatted requests, one token each.

``errors.status`` is wrk's count of responses with status > 399 (what its summary calls "Non-2xx or 3xx
responses"); every target is also probed once per scenario before it is measured (bench/targets.py), so a
target answering 401/403/3xx is caught either way.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
"""

# The cold scenario: args[1] is a file of "<path> <token>" lines; every request takes the next line.
ROTATE_SCRIPT = r"""
local reqs = {}
local n = 0
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    local path, token = line:match("^(%S+) (%S+)$")
    n = n + 1
    reqs[n] = wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
  end
end

request = function()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    socket_errors: int
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def failed(self) -> int:
        """Responses that are not a result: >399 statuses plus socket errors and timeouts."""
        return self.non_2xx + self.socket_errors


class WrkError(RuntimeError):
    pass


def parse(stdout: str) -> WrkResult:
    """The ``WRK_JSON`` line printed by ``DONE_HOOK``. Raises WrkError when it is missing or malformed."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            try:
                data = json.loads(line.removeprefix("WRK_JSON "))
                return WrkResult(
                    requests=int(data["requests"]),
                    duration_s=int(data["duration_us"]) / 1e6,
                    bytes=int(data["bytes"]),
                    p50_ms=int(data["p50_us"]) / 1000,
                    p90_ms=int(data["p90_us"]) / 1000,
                    p99_ms=int(data["p99_us"]) / 1000,
                    max_ms=int(data["max_us"]) / 1000,
                    socket_errors=sum(
                        int(data[key]) for key in ("connect_errors", "read_errors", "write_errors", "timeouts")
                    ),
                    non_2xx=int(data["non_2xx"]),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise WrkError(f"malformed wrk summary line: {line!r}") from exc
    raise WrkError("wrk printed no summary line:\n" + stdout[-2000:])


def write_scripts(directory: Path) -> tuple[Path, Path]:
    """(static script, rotating script); both end with the summary hook."""
    static = directory / "wrk-static.lua"
    static.write_text(DONE_HOOK)
    rotate = directory / "wrk-rotate.lua"
    rotate.write_text(ROTATE_SCRIPT + DONE_HOOK)
    return static, rotate


def command(
    url: str,
    *,
    script: Path,
    threads: int,
    connections: int,
    duration: float,
    headers: Sequence[str] = (),
    script_args: Sequence[str] = (),
    cpus: str | None = None,
    timeout_s: int = 5,
) -> list[str]:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
    ]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if script_args:
        argv += ["--", *script_args]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    return argv


def run(argv: Sequence[str], duration: float) -> WrkResult:
    # Bounded: wrk stops itself after -d; the timeout is a guard against a hung load generator.
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {done.stderr.strip()[-1000:]}")
    return parse(done.stdout)
