"""Where the gateway's CPU goes: py-spy samples the pinned one-worker gateway during an extra (unmeasured)
wrk run, and the collapsed stacks are summarised by component and by function (pure parts: ``summarise``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Leaf-frame file -> component; first match wins. Paths are as py-spy prints them (site-packages relative).
COMPONENTS = (
    ("gateway/", "gateway (our code)"),
    ("identity/", "identity (our code)"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("sqlite3/", "sqlite3"),
    ("jwt/", "PyJWT"),
    ("cryptography/", "cryptography"),
    ("uvicorn/", "uvicorn"),
    ("httptools", "httptools"),
    ("h11/", "h11"),
    ("aiohttp/", "aiohttp"),
    ("starlette/", "starlette"),
    ("httpx/", "httpx"),
    ("httpcore/", "httpcore"),
    ("anyio/", "anyio"),
    ("prometheus_client/", "prometheus_client"),
    ("cachetools/", "cachetools"),
    ("asyncio/", "asyncio event loop"),
    ("uvloop", "uvloop"),
    ("logging/", "logging"),
    ("json/", "json"),
)
# Frames every sample passes through on its way to the event loop: left out of the inclusive table.
ENTRY_FILES = ("<frozen runpy>", "uvicorn/main.py", "uvicorn/server.py", "uvicorn/_compat.py", "asyncio/runners.py")
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Summary:
    samples: int
    by_component: list[tuple[str, int]]
    by_self: list[tuple[str, int]]
    by_total: list[tuple[str, int]]


def component(file: str) -> str:
    for needle, name in COMPONENTS:
        if needle in file:
            return name
    return "other: " + file.rsplit("/", 1)[-1]


def _frame(text: str) -> tuple[str, str]:
    match = FRAME.match(text.strip())
    if match is None:
        return text.strip(), ""
    return f"{match['function']} ({match['file']})", match["file"]


def summarise(collapsed: str, top: int = 20) -> Summary:
    """py-spy ``--format raw`` output: lines of ``frame;frame;...;leaf count`` (root first)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    components: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(part) for part in stack.split(";") if part]
        # py-spy puts the thread name first ("process 123:..."/"thread (0x..)"): skip non-code frames.
        frames = [frame for frame in frames if frame[1]]
        if not frames:
            continue
        samples += count
        leaf, leaf_file = frames[-1]
        own[leaf] += count
        components[component(leaf_file)] += count
        for name in {name for name, file in frames if file not in ENTRY_FILES and not file.endswith("__main__.py")}:
            total[name] += count
    return Summary(samples, components.most_common(), own.most_common(top), total.most_common(top))


def record(pid: int, duration: float, out: Path, rate: int = 200) -> str:
    """Run py-spy for ``duration`` seconds on ``pid``; returns the collapsed stacks (also written to ``out``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--duration", str(max(1, round(duration)))]
    argv += ["--format", "raw", "--nonblocking", "--output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return out.read_text()


def render(summary: Summary, cpu_us_per_request: float | None, title: str) -> str:
    """Markdown: shares of on-CPU samples, converted to µs per request with the run's measured CPU/request."""

    def us(count: int) -> str:
        if cpu_us_per_request is None or not summary.samples:
            return "-"
        return f"{cpu_us_per_request * count / summary.samples:.0f}"

    def pct(count: int) -> str:
        return f"{100 * count / summary.samples:.1f}%" if summary.samples else "-"

    lines = [
        f"### {title}",
        "",
        f"{summary.samples} on-CPU samples (Python frames; C/Rust time is charged to its caller).",
        "",
    ]
    lines += ["| component (leaf frame) | share | ≈ µs/req |", "| --- | --- | --- |"]
    lines += [f"| {name} | {pct(count)} | {us(count)} |" for name, count in summary.by_component]
    lines += ["", "| function (self) | share | ≈ µs/req |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {pct(count)} | {us(count)} |" for name, count in summary.by_self]
    lines += ["", "| function (inclusive) | share | ≈ µs/req |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {pct(count)} | {us(count)} |" for name, count in summary.by_total]
    return "\n".join(lines) + "\n"
