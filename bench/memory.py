"""The gateway's resident memory after many distinct tokens (issue 7: "Verified-token cache bounded: RSS flat after a
million distinct tokens").

    python -m bench.memory [--tokens 1000000] [--chunks 10] [--cache-size N] [--time-limit 20]

Starts the trivial upstream (nginx, also serving the bench's JWKS) and the real gateway, one worker,
``--no-access-log``, as ``python -m bench`` does (bench/proxybench.py), pinned the same way. Then, chunk by chunk,
it mints distinct EdDSA tokens (one user each) into a file, sends each of them exactly once with wrk (one thread),
deletes the file, and reads the gateway's ``VmRSS``, ``VmHWM`` and ``RssAnon`` from ``/proc/<pid>/status`` and its
token-cache counters from ``/metrics`` (before the first chunk and after each). The next chunk is minted while the
current one runs, so minting costs no wall time after the first chunk.

The wrk script is a variant of the bench's rotating one (bench/wrk.py) that never wraps around: ``delay()``
reserves one token per request, connections park once every token is reserved, and the thread stops when every
token has been answered; the bench then ends wrk with SIGINT (wrk's main thread sleeps for ``-d``), on which it
prints its summary. Every answer must be the upstream's exact body with 200: a chunk with any other answer, a socket
error or a timeout is not a result.

The cache's size is not exported by the gateway; ``gateway_token_cache_total{result="miss"}`` is. Every token here is
valid, distinct and outlives the run, so every miss inserts one entry and the entries are min(misses, cache size).

Verdict: RSS is flat when, from the first reading with the cache full, it grows by at most 10 % or 8 MiB (whichever
is larger; the rule of bench/soak.py). Output: a table on stdout, ``bench/results/memory-<date>-<time>.{md,json}``.
Exit status: 0 a complete result, 1 not a result (errors), 2 missing tools, 3 stopped by ``--time-limit`` (what was
measured so far is still written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench import configs, keys, prereqs, procs, proxybench, wrk
from bench.__main__ import machine, source_state
from gateway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
PROOF_ENV = "EDGE_PROOF_SECRET"
#: growth allowed after the cache is full: the larger of these (bench/soak.py's rule)
FLAT_FRACTION, FLAT_KIB = 0.10, 8 * 1024
ALLOCATOR_ENV = ("MALLOC_", "GLIBC_TUNABLES", "PYTHONMALLOC")

# args[1]: a file of "<path> <token>" lines; args[2]: how many of them to send, each once. wrk builds requests it never
# sends: one before the run (script_verify_request calls request() on the first thread to count pipelined requests)
# and one more whenever the first write of a request would block (socket_writeable returns on RETRY with nothing
# written, and builds the request again). So the file holds spare tokens, each built request takes the next line, and
# sends are counted by delay(), which wrk calls exactly once before each request it writes. A connection parks (one
# hour) once every token is reserved. The counters are globals so done() can read them.
ONCE_SCRIPT = (
    r"""
local reqs = {}
local n = 0
local threads = {}
lines, reserved, built, ok, refused = 0, 0, 0, 0, 0

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  n = tonumber(args[2])
  for line in io.lines(args[1]) do
    local path, token = line:match("^(%S+) (%S+)$")
    lines = lines + 1
    reqs[lines] = wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
  end
end

delay = function()
  if reserved < n then
    reserved = reserved + 1
    return 0
  end
  return 3600000
end

request = function()
  built = built + 1
  return reqs[math.min(built, lines)]  -- past the spares a token would repeat: done() reports built > lines
end

response = function(status, headers, body)
  if status == 200 and body == [["""
    + configs.UPSTREAM_BODY
    + r"""]] then
    ok = ok + 1
  else
    refused = refused + 1
  end
  if ok + refused == n then
    io.write("CHUNK_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end
"""
    + wrk.DONE_HOOK
    + r"""
local summary_done = done
done = function(summary, latency, requests)
  summary_done(summary, latency, requests)
  local names = {"lines", "reserved", "built", "ok", "refused"}
  local fields = {}
  for _, name in ipairs(names) do
    local total = 0
    for _, thread in ipairs(threads) do
      total = total + thread:get(name)
    end
    table.insert(fields, string.format('"%s":%d', name, total))
  end
  io.write("ONCE_JSON {" .. table.concat(fields, ",") .. "}\n")
end
"""
)

_METRIC = re.compile(r'^gateway_token_(cache_total\{result|verifications_total\{outcome)="(\w+)"\} (\S+)$', re.M)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and RssAnon of ``pid`` in KiB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon")
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            found[name] = int(value.split()[0])
    return found


def token_counters(exposition: str) -> dict[str, int]:
    """From the gateway's /metrics text (pure): ``cache_hit``, ``cache_miss``, ``valid`` verifications and
    ``refused`` ones (every invalid_token reason; a request without a token is neither)."""
    counters = {"cache_hit": 0, "cache_miss": 0, "valid": 0, "refused": 0}
    for family, label, value in _METRIC.findall(exposition):
        count = int(float(value))
        if family.startswith("cache"):
            counters[f"cache_{label}"] = count
        elif label == "valid":
            counters["valid"] = count
        elif label != "missing":
            counters["refused"] += count
    return counters


def spares(count: int) -> int:
    """Extra tokens in a chunk's file for the requests wrk builds but never sends (see ONCE_SCRIPT)."""
    return max(64, count // 50)


def verdict(samples: list[dict[str, Any]], cache_size: int) -> dict[str, Any]:
    """Flat or not, from the first sample whose cache is full (pure). ``flat`` is None when it cannot tell."""
    full = [s for s in samples if cache_size > 0 and s["cache_entries"] >= cache_size]
    if len(full) < 2:
        return {"flat": None, "why": "fewer than two readings with the cache full"}
    base, later = full[0], full[1:]
    peak = max(s["rss_kib"] for s in later)
    allowed = max(FLAT_FRACTION * base["rss_kib"], FLAT_KIB)
    growth = peak - base["rss_kib"]
    return {
        "flat": growth <= allowed,
        "full_at_tokens": base["tokens"],
        "rss_full_kib": base["rss_kib"],
        "rss_peak_after_kib": peak,
        "growth_kib": growth,
        "allowed_kib": round(allowed),
        "why": f"from {base['tokens']:,} tokens (cache full) to {later[-1]['tokens']:,}: "
        f"{growth / 1024:+.1f} MiB, allowed {allowed / 1024:.1f} MiB",
    }


def render_markdown(meta: dict[str, Any], samples: list[dict[str, Any]], result: dict[str, Any]) -> str:
    lines = [
        f"## Gateway RSS after {meta['tokens_sent']:,} distinct tokens ({meta['started']})",
        "",
        f"- command: `{meta['command']}`; code: {meta['code']}"
        + "".join(f"; {name}={value}" for name, value in meta.get("allocator_env", {}).items()),
        f"- gateway token_cache_size {meta['cache_size']:,}; one worker; {meta['placement']}",
        f"- load average (1 min) at start {meta['load_start'][0]:.2f}, at end {meta['load_end'][0]:.2f}",
        f"- verdict: {'flat' if result['flat'] else 'NOT flat' if result['flat'] is False else 'cannot tell'}"
        f" ({result['why']})",
        "",
        "| tokens so far | VmRSS MiB | VmHWM MiB | RssAnon MiB | cache entries | misses | hits | chunk s | req/s "
        "| load 1m |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in samples:
        lines.append(
            f"| {s['tokens']:,} | {s['rss_kib'] / 1024:.1f} | {s['hwm_kib'] / 1024:.1f} | {s['anon_kib'] / 1024:.1f} "
            f"| {s['cache_entries']:,} | {s['cache_miss']:,} | {s['cache_hit']:,} | {s.get('chunk_s', '-')} "
            f"| {s.get('rps', '-')} | {s['load1']:.2f} |"
        )
    if meta["problems"]:
        lines += ["", "Not a result:", *(f"- {problem}" for problem in meta["problems"])]
    return "\n".join(lines) + "\n"


class Minter:
    """Mints the next chunk's token file on a background thread while wrk sends the current one."""

    def __init__(self, key: keys.SigningKey, work: Path) -> None:
        self.key, self.work = key, work
        self.pending: queue.Queue[Path | BaseException] = queue.Queue()
        self.thread: threading.Thread | None = None

    def start(self, index: int, count: int) -> None:
        path = self.work / f"tokens-{index}.txt"

        def mint() -> None:
            try:
                keys.write_token_file(self.key, count + spares(count), path)
                self.pending.put(path)
            except BaseException as exc:  # re-raised on the main thread by take()
                self.pending.put(exc)

        self.thread = threading.Thread(target=mint, name=f"mint-{index}", daemon=True)
        self.thread.start()

    def take(self, timeout: float) -> Path:
        item = self.pending.get(timeout=max(timeout, 0.1))
        if isinstance(item, BaseException):
            raise item
        return item


def send_once(
    argv: list[str], deadline: float, progress: Callable[[], int], stall_s: float = 60.0
) -> tuple[wrk.WrkResult, dict[str, int], bool]:
    """Runs wrk until every token is answered, then SIGINT: (summary, ONCE counts, completed). Gives up at
    ``deadline`` or when ``progress()`` (the gateway's cache misses) stands still for ``stall_s`` seconds (a request
    lost to a reconnect would otherwise leave wrk waiting for it until the deadline)."""
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    finished = threading.Event()

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.append(line)
            if line.startswith("CHUNK_DONE"):
                finished.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        last, moved = progress(), time.monotonic()
        while not finished.is_set() and popen.poll() is None and time.monotonic() < min(deadline, moved + stall_s):
            if not finished.wait(5.0) and (now := progress()) != last:
                last, moved = now, time.monotonic()
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)  # wrk prints its summary and the done() lines on SIGINT
        popen.wait(60)
        reader.join(10)
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
    stdout = "".join(lines)
    counts = {"lines": 0, "reserved": 0, "built": 0, "ok": 0, "refused": 0}
    for line in lines:
        if line.startswith("ONCE_JSON "):
            counts = json.loads(line.removeprefix("ONCE_JSON "))
    return wrk.parse(stdout), counts, finished.is_set()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="distinct tokens, each sent once (1000000)")
    parser.add_argument("--chunks", type=int, default=10, help="RSS is read after each chunk of tokens (10)")
    parser.add_argument(
        "--cache-size", type=int, default=None, help="the gateway's token_cache_size (default: the gateway's default)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32; wrk runs one thread)")
    parser.add_argument("--time-limit", type=float, default=20.0, help="minutes; then stop and report (20)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="output directory")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing nginx/wrk")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.chunks < 1 or args.connections < 1 or args.time_limit <= 0:
        parser.error("--tokens, --chunks, --connections and --time-limit must be positive")
    if args.cache_size is not None and args.cache_size < 0:
        parser.error("--cache-size must be 0 or more")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds into the `finally` that stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = time.monotonic() + args.time_limit * 60
    started = dt.datetime.now().astimezone()
    command = "python -m bench.memory " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta: dict[str, Any] = {"started": f"{started:%Y-%m-%d %H:%M:%S %Z}", "command": command, "code": source_state()}
    meta["load_start"] = procs.loadavg()
    # The allocator's settings decide part of the RSS curve (glibc's mmap threshold: see bench/README.md).
    meta["allocator_env"] = {name: value for name, value in os.environ.items() if name.startswith(ALLOCATOR_ENV)}
    print(f"{meta['started']}  {command}\ncode: {meta['code']}\nload average: {meta['load_start']}", flush=True)
    if meta["allocator_env"]:
        print(f"allocator environment (the gateway inherits it): {meta['allocator_env']}")
    try:
        prereqs.ensure_debian_packages(install=not args.no_install)
    except prereqs.PrereqError as exc:
        print(f"prerequisites: {exc}", file=sys.stderr)
        return 2
    where = proxybench.placement()
    meta["placement"] = where.note
    print(where.note)
    if where.load is not None:
        os.sched_setaffinity(0, {int(where.load)})  # minting and wrk on the load side

    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-memory-"))
    work.chmod(0o755)  # nginx workers (user nobody) read the JWKS file from here
    processes = procs.Processes(work)
    samples: list[dict[str, Any]] = []
    problems: list[str] = []
    meta["problems"] = problems
    complete = False
    try:
        signing = keys.generate()
        jwks = keys.write_public(signing, work)
        key = signing["EdDSA"]
        upstream_port, port = proxybench.free_port(), proxybench.free_port()
        (work / "upstream-tmp").mkdir()
        (work / "upstream.conf").write_text(configs.nginx_upstream(work, upstream_port, jwks))
        nginx = ["nginx", "-p", str(work), "-e", str(work / "upstream-error.log"), "-c", str(work / "upstream.conf")]
        upstream = processes.start("upstream", nginx, cpus=where.proxy)
        toml = configs.gateway_toml(upstream_port, issuer=keys.ISSUER, audience=keys.AUDIENCE)
        if args.cache_size is not None:
            toml += f"\n[server]\ntoken_cache_size = {args.cache_size}\n"
        (work / "gateway.toml").write_text(toml)
        proof = {PROOF_ENV: secrets.token_urlsafe(48)}
        meta["cache_size"] = cache_size = parse_config(tomllib.loads(toml), proof).token_cache_size
        argv = [sys.executable, "-m", "gateway", "--config", str(work / "gateway.toml"), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1", "--no-access-log"]
        env = {**os.environ, **proof, "PYTHONUNBUFFERED": "1"}
        gateway = processes.start("gateway", argv, cpus=where.proxy, env=env, cwd=ROOT)
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(trust_env=False, timeout=10.0)

        def ready(url: str) -> bool:
            try:
                return client.get(url).status_code == 200
            except httpx.HTTPError:
                return False

        procs.wait_until(lambda: ready(f"http://127.0.0.1:{upstream_port}/jwks.json"), 20, "upstream", upstream)
        procs.wait_until(lambda: ready(f"{base}/readyz"), 60, "gateway /readyz", gateway)
        # A gateway that lets anything through would have nothing to cache: one valid token, one forged signature.
        user = keys.user_id()
        token = key.mint(user)
        forged = token[: token.rindex(".") + 1] + token[token.rindex(".") + 1 :][::-1]
        for label, value, expected in (("valid token", token, 200), ("forged signature", forged, 401)):
            status = client.get(f"{base}/api/{user}/items", headers={"authorization": f"Bearer {value}"}).status_code
            if status != expected:
                raise RuntimeError(f"probe {label}: expected {expected}, got {status}")
        script = work / "wrk-once.lua"
        script.write_text(ONCE_SCRIPT)

        def scrape() -> dict[str, int]:
            return token_counters(client.get(f"{base}/metrics").text)

        def sample(tokens: int, **extra: Any) -> dict[str, Any]:
            status = memory_kib(gateway.pid)
            counters = scrape()
            row: dict[str, Any] = {"tokens": tokens, "rss_kib": status["VmRSS"], "hwm_kib": status["VmHWM"]}
            row |= {"anon_kib": status["RssAnon"], **counters, "load1": procs.loadavg()[0], **extra}
            # Every miss but the refused ones (the forged probe) is a valid, distinct, unexpired token: one cache
            # entry each, up to the cache's size.
            row["cache_entries"] = min(counters["cache_miss"] - counters["refused"], cache_size)
            return row

        def show(row: dict[str, Any]) -> None:
            print(
                f"{row['tokens']:>10,} tokens  RSS {row['rss_kib'] / 1024:7.1f} MiB  HWM {row['hwm_kib'] / 1024:7.1f}"
                f" MiB  cache {row['cache_entries']:,} (misses {row['cache_miss']:,})"
                + (f"  {row['chunk_s']} s, {row['rps']} req/s" if "chunk_s" in row else "")
                + f"  load {row['load1']:.2f}",
                flush=True,
            )

        samples.append(sample(0))
        show(samples[-1])
        size = math.ceil(args.tokens / args.chunks)
        counts = [min(size, args.tokens - start) for start in range(0, args.tokens, size)]
        minter = Minter(key, work)
        minter.start(0, counts[0])
        sent = 0
        for index, count in enumerate(counts):
            path = minter.take(deadline - time.monotonic())
            if index + 1 < len(counts):
                minter.start(index + 1, counts[index + 1])
            remaining = deadline - time.monotonic()
            if remaining < 2:
                break
            wrk_argv = wrk.command(
                f"{base}/", script=script, threads=1, connections=args.connections, duration=remaining,
                script_args=[str(path), str(count)], cpus=where.load,
            )  # fmt: skip
            began = time.monotonic()
            result, once, finished = send_once(wrk_argv, deadline, lambda: scrape()["cache_miss"])
            elapsed = time.monotonic() - began
            path.unlink()
            sent += once["reserved"]
            if gateway.popen.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{gateway.tail()}")
            wrong = {"non-2xx": result.non_2xx, "socket errors": result.socket_errors, "refused": once["refused"]}
            wrong["tokens reused"] = max(0, once["built"] - once["lines"])
            if any(wrong.values()) or not result.requests == once["reserved"] == once["ok"] == count:
                problems.append(f"chunk {index + 1}: {count} tokens, {result.requests} requests, {once}, {wrong}")
            extra: dict[str, Any] = {"chunk_s": round(elapsed, 1), "rps": round(once["ok"] / elapsed)}
            samples.append(sample(sent, **extra, rebuilt=once["built"] - once["reserved"]))
            show(samples[-1])
            if not finished or problems:
                break
        else:
            complete = True
        client.close()
    except (Exception, KeyboardInterrupt) as exc:  # reported with whatever was measured before it
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        processes.stop_all()
    meta["load_end"] = procs.loadavg()
    meta["tokens_sent"] = samples[-1]["tokens"] if samples else 0
    meta["machine"] = machine()
    meta.setdefault("cache_size", args.cache_size or 0)
    if not complete and not problems:
        problems.append(f"stopped by --time-limit {args.time_limit} min after {meta['tokens_sent']:,} tokens")
    judged = verdict(samples, meta["cache_size"]) if samples else {"flat": None, "why": "no readings"}
    markdown = render_markdown(meta, samples, judged)
    print("\n" + markdown)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{started:%Y%m%d-%H%M%S}"
    (args.results / f"{stem}.md").write_text(markdown)
    data = {"meta": meta, "samples": samples, "verdict": judged, "complete": complete}
    (args.results / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"written: {args.results / stem}.md and .json")
    if complete and not problems:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work}")
    if problems and problems[-1].startswith("stopped by"):
        return 3
    return 0 if complete and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
