"""`make bench` (= python -m bench [options]): our gateway vs HAProxy jwt_verify and nginx, and our identity
service vs Better Auth 1.7.25, side by side on loopback. See bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import identitybench, prereqs, procs, profile, proxybench, report
from bench.stats import Run, median_by_target, ratios, worker_ceilings

ROOT = Path(__file__).resolve().parent.parent
ALL_SCENARIOS = ("warm", "cold", "workers", "identity")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="Example: make bench BENCH_ARGS='--rounds 3 --duration 5 --scenarios warm,cold'",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; ratios are taken within each (default 3)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads, proxy side (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections, proxy side (default 32)")
    parser.add_argument(
        "--scenarios",
        default=",".join(ALL_SCENARIOS),
        help=f"comma-separated subset of {','.join(ALL_SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--cold-tokens",
        type=int,
        default=None,
        help="distinct tokens per cold run (default: 12000 per second of --duration, at least 20000)",
    )
    parser.add_argument(
        "--identity-duration", type=float, default=None, help="seconds per identity wrk run (default: --duration)"
    )
    parser.add_argument(
        "--identity-connections", type=int, default=10, help="wrk connections, identity side (default 10)"
    )
    parser.add_argument(
        "--sign-ins", type=int, default=10, help="sequential sign-ins per service per round (default 10)"
    )
    parser.add_argument(
        "--burst-window",
        type=float,
        default=6.0,
        help="seconds of the burst check's baseline /jwks + /token load (default 6)",
    )
    parser.add_argument(
        "--burst-connections", type=int, default=4, help="wrk connections per endpoint in the burst check (default 4)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample with py-spy: the gateway (warm, cold) and our identity service (/token)",
    )
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing missing tools")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results", help="output directory (default bench/results)"
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=ROOT / "docs" / "bench-ratios.png",
        help="ratio chart, PNG (default docs/bench-ratios.png)",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not write the chart")
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="only redraw the chart from a results JSON of an earlier run"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary directory (configs, logs)")
    args = parser.parse_args(argv)
    args.scenarios = tuple(item.strip() for item in args.scenarios.split(",") if item.strip())
    unknown = set(args.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if args.cold_tokens is None:
        args.cold_tokens = max(20000, int(args.duration * 12000))  # 2 workers cold passed 7,000/s here
    if args.identity_duration is None:
        args.identity_duration = args.duration
    return args


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": socket.gethostname(),
        "cpu": model,
        "cpus_online": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def source_state() -> str:
    """The commit measured, and whether the services' code had uncommitted changes (the tree is shared)."""

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return ""
        return done.stdout.rstrip()

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "gateway", "identity").splitlines()]
    return head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds into the `finally` that stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot is not None:
        return replot(args.replot, args.chart)
    started = dt.datetime.now().astimezone()
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    source = source_state()  # the services are started from this tree in a moment
    print(f"{started:%Y-%m-%d %H:%M:%S %Z}  {command}")
    print(f"code: {source}")
    start_load = procs.loadavg()
    print(f"load average at start: {' '.join(f'{value:.2f}' for value in start_load)}  (CPUs: {os.cpu_count()})")

    install = not args.no_install
    try:
        prereqs.ensure_debian_packages(install=install)
        haproxy_line = prereqs.check_haproxy()
        if "identity" in args.scenarios:
            prereqs.ensure_better_auth(install=install)
    except prereqs.PrereqError as exc:
        print(f"prerequisites: {exc}", file=sys.stderr)
        return 2
    print(f"{haproxy_line}: jwt_verify available")

    where = proxybench.placement()
    print(where.note)
    if where.load is not None:
        os.sched_setaffinity(0, {int(where.load)})  # this process (token minting, probes, burst client) = load side

    signal.signal(signal.SIGTERM, _on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    work.chmod(0o755)  # nginx workers (user nobody) read the JWKS file from here
    processes = procs.Processes(work)
    runs: list[Run] = []
    sign_ins: list[identitybench.SignInRound] = []
    bursts: list[dict[str, Any]] = []
    profiles: list[str] = []
    loads: list[dict[str, Any]] = []
    ok = False
    proxy_scenarios = tuple(name for name in args.scenarios if name in proxybench.SCENARIOS)
    try:
        proxy_rig = identity_rig = None
        if proxy_scenarios:
            proxy_rig = proxybench.ProxyRig(processes, work, where, workers="workers" in proxy_scenarios)
            print("starting upstream, nginx proxy, HAProxy ES256/RS256, gateway ...", flush=True)
            proxy_rig.start()
            problems = proxy_rig.probe()
            if problems:
                print("targets answer wrongly; nothing measured:\n  " + "\n  ".join(problems), file=sys.stderr)
                return 1
            print("probe: every target passes valid / missing / forged / expired / other-user checks")
        if "identity" in args.scenarios:
            identity_rig = identitybench.IdentityRig(processes, work, where.proxy)
            print("starting identity and Better Auth; signing up accounts ...", flush=True)
            identity_rig.start(accounts=max(args.sign_ins, identitybench.BURST_SIZE))

        def show(run: Run) -> None:
            print(report.run_line(run), flush=True)

        for number in range(1, args.rounds + 1):
            loads.append({"round": number, "loadavg": procs.loadavg()})
            print(
                f"\n== round {number}/{args.rounds}  load {' '.join(f'{v:.2f}' for v in procs.loadavg())}", flush=True
            )
            if proxy_rig is not None:
                runs += proxybench.run_round(
                    proxy_rig,
                    number,
                    proxy_scenarios,
                    duration=args.duration,
                    threads=args.threads,
                    connections=args.connections,
                    cold_tokens=args.cold_tokens,
                    report=show,
                )
            if identity_rig is not None:
                new_runs, new_sign_ins = identitybench.run_round(
                    identity_rig,
                    number,
                    duration=args.identity_duration,
                    connections=args.identity_connections,
                    sign_ins=args.sign_ins,
                    load_cpus=where.load,
                    report=show,
                )
                runs += new_runs
                sign_ins += new_sign_ins
                for item in new_sign_ins:
                    print(
                        f"  r{number} sign-in {item.service:<12} {item.as_dict()['p50_ms']:.1f} ms p50, "
                        f"{item.cpu_ms_per_sign_in:.1f} ms CPU each, {item.failures} failures"
                    )

        if identity_rig is not None:
            bursts = burst_check(identity_rig, args, where.load)

        if args.profile:
            profiles = run_profiles(proxy_rig, identity_rig, args, runs, where.load)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        leftovers = [proc.name for proc in processes.running]
        if leftovers:
            print(f"could not stop: {leftovers}", file=sys.stderr)
        if ok and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"configs and logs kept in {work}", file=sys.stderr)

    write_outputs(args, started, start_load, command, source, where, loads, runs, sign_ins, bursts, profiles)
    return 0


def write_outputs(
    args: argparse.Namespace,
    started: dt.datetime,
    start_load: tuple[float, float, float],
    command: str,
    source: str,
    where: proxybench.Placement,
    loads: list[dict[str, Any]],
    runs: list[Run],
    sign_ins: list[identitybench.SignInRound],
    bursts: list[dict[str, Any]],
    profiles: list[str],
) -> None:
    """The tables on stdout, bench/results/bench-<date>.{md,json} and the chart."""
    finished = dt.datetime.now().astimezone()
    all_ratios = ratios(runs, proxybench.RATIO_SPECS + identitybench.RATIO_SPECS, args.rounds)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "load_average_start_end": [start_load, procs.loadavg()],
        "load_average_per_round": loads,
        "placement": where.note,
        "source": source,
        "versions": prereqs.versions(),
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
    }
    goals = [goal for spec in proxybench.ABSOLUTE_GOALS if (goal := spec.evaluate(runs)) is not None]
    ceilings = [
        item
        for scenario in ("workers-warm", "workers-cold")
        for item in worker_ceilings(runs, scenario, *proxybench.WORKER_TARGETS, where.cores, args.rounds)
    ]
    markdown = render_markdown(meta, runs, all_ratios, goals, sign_ins, bursts, profiles, ceilings)
    print("\n" + markdown)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{started:%Y%m%d-%H%M%S}"
    data = {
        "meta": meta,
        "runs": [run.as_dict() for run in runs],
        "targets": median_by_target(runs),
        "ratios": [ratio.as_dict() for ratio in all_ratios],
        "absolute_goals": goals,
        "worker_ceilings": ceilings,
        "sign_ins": [item.as_dict() for item in sign_ins],
        "bursts": bursts,
    }
    (args.results / f"{stem}.md").write_text(markdown)
    (args.results / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str))
    print(f"written: {args.results / stem}.md and .json")
    if not args.no_chart and all_ratios:
        report.chart(all_ratios, args.chart, chart_title(meta))
        print(f"chart: {args.chart}")


def chart_title(meta: dict[str, Any]) -> str:
    settings = meta["settings"]
    ones = [item["loadavg"][0] for item in meta["load_average_per_round"]]
    source = meta.get("source", "?")
    code = source.split(" ")[0] + (" + uncommitted changes" if "uncommitted" in source else "")
    return (
        f"edge gateway bench {meta['started'][:16].replace('T', ' ')}, {settings['rounds']} rounds x "
        f"{settings['duration']:g} s per run\n1-min load average {min(ones, default=0):.1f}-{max(ones, default=0):.1f}"
        f" on {meta['machine']['cpus_online']} shared CPUs; code {code}"
    )


def replot(results: Path, chart: Path) -> int:
    data = json.loads(results.read_text())
    fields = set(Run.__dataclass_fields__)
    runs = [Run(**{key: value for key, value in item.items() if key in fields}) for item in data["runs"]]
    rounds = data["meta"]["settings"]["rounds"]
    report.chart(
        ratios(runs, proxybench.RATIO_SPECS + identitybench.RATIO_SPECS, rounds), chart, chart_title(data["meta"])
    )
    print(f"chart: {chart}")
    return 0


def burst_check(
    rig: identitybench.IdentityRig, args: argparse.Namespace, load_cpus: str | None
) -> list[dict[str, Any]]:
    print("\n== burst check: 50 concurrent sign-ins under /jwks + /token load", flush=True)
    bursts = []
    for service in identitybench.SERVICES:
        for with_burst in (False, True):
            item = rig.burst(
                service,
                window=args.burst_window,
                connections=args.burst_connections,
                load_cpus=load_cpus,
                with_burst=with_burst,
            )
            bursts.append(item)
            phase = "burst" if with_burst else "baseline"
            jwks, token = item["jwks_p99_ms"], item["token_p99_ms"]
            print(f"  {service:<12} {phase:<8} /jwks p99 {jwks:.1f} ms, /token p99 {token:.1f} ms", flush=True)
    return bursts


def run_profiles(
    proxy_rig: proxybench.ProxyRig | None,
    identity_rig: identitybench.IdentityRig | None,
    args: argparse.Namespace,
    runs: list[Run],
    load_cpus: str | None,
) -> list[str]:
    """py-spy on the one-worker gateway (warm and cold, EdDSA) and on our identity service (GET /token),
    each during one extra run of the same shape as the measured ones."""
    jobs: list[tuple[str, str, int, tuple[str, str], Callable[[Callable[[], None]], Run]]] = []
    if proxy_rig is not None:
        gateway = proxy_rig.targets["gateway-EdDSA"]
        for scenario, cold in (("warm", False), ("cold", True)):

            def measure_gateway(on_start: Callable[[], None], scenario: str = scenario, cold: bool = cold) -> Run:
                return proxy_rig.measure(
                    "gateway-EdDSA",
                    f"profile-{scenario}",
                    0,
                    cold=cold,
                    duration=args.duration,
                    threads=args.threads,
                    connections=args.connections,
                    cold_tokens=args.cold_tokens,
                    load_cpus=load_cpus,
                    on_start=on_start,
                )

            label = f"gateway, {scenario} EdDSA"
            jobs.append((label, f"gateway-{scenario}", gateway.proc.pid, (scenario, "gateway-EdDSA"), measure_gateway))
    if identity_rig is not None:

        def measure_identity(on_start: Callable[[], None]) -> Run:
            return identity_rig.measure(
                "ours",
                "token",
                0,
                duration=args.identity_duration,
                connections=args.identity_connections,
                load_cpus=load_cpus,
                on_start=on_start,
            )

        pid = identity_rig.services["ours"].proc.pid
        jobs.append(
            ("identity, GET /api/auth/token", "identity-token", pid, ("identity-token", "ours"), measure_identity)
        )

    out = []
    args.results.mkdir(parents=True, exist_ok=True)
    for label, stem, pid, (scenario, target), measure in jobs:
        collapsed_path = args.results / f"profile-{stem}.txt"
        print(f"\n== py-spy on {label}", flush=True)
        holder: dict[str, Any] = {}
        duration = args.identity_duration if stem.startswith("identity") else args.duration
        thread = threading.Thread(target=_spy, args=(pid, duration, collapsed_path, holder))
        run = measure(thread.start)
        thread.join()
        print(report.run_line(run) + "  (under py-spy: not a result)")
        if "error" in holder:
            out.append(f"### {label}: py-spy failed\n\n{holder['error']}\n")
            continue
        measured = [r.cpu_us_per_request for r in runs if r.scenario == scenario and r.target == target and r.valid]
        cpu = [value for value in measured if value is not None]
        cpu_median = statistics.median(cpu) if cpu else run.cpu_us_per_request
        title = (
            f"{label}: where {cpu_median or 0:.0f} µs CPU/request goes "
            f"(µs = share x the unprofiled median; collapsed stacks: {collapsed_path.name})"
        )
        out.append(profile.render(profile.summarise(holder["text"]), cpu_median, title))
    return out


def _spy(pid: int, duration: float, path: Path, holder: dict[str, Any]) -> None:
    try:
        holder["text"] = profile.record(pid, duration, path)
    except RuntimeError as exc:
        holder["error"] = str(exc)


def render_markdown(
    meta: dict[str, Any],
    runs: list[Run],
    all_ratios: list[Any],
    goals: list[dict[str, Any]],
    sign_ins: list[identitybench.SignInRound],
    bursts: list[dict[str, Any]],
    profiles: list[str],
    ceilings: Sequence[dict[str, Any]] = (),
) -> str:
    load_start, load_end = meta["load_average_start_end"]
    lines = [
        f"## Bench results {meta['started']}",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cpus_online']} CPUs, "
        f"{meta['machine']['memory_gib']} GiB, kernel {meta['machine']['kernel']}, Python {meta['machine']['python']}",
        f"- load average (1/5/15 min) at start {load_start}, at end {tuple(round(v, 2) for v in load_end)}; per round: "
        + ", ".join(f"r{item['round']} {item['loadavg'][0]:.2f}" for item in meta["load_average_per_round"]),
        f"- placement: {meta['placement']}",
        f"- code measured: {meta['source']}",
        "- versions: " + ", ".join(f"{key} {value}" for key, value in meta["versions"].items()),
        "",
    ]
    if runs:
        lines += ["### Per target (medians over valid rounds)", "", report.targets_table(runs), ""]
    if all_ratios:
        lines += [
            "### Ratios (computed within each round; median across rounds)",
            "",
            report.ratios_table(all_ratios),
            "",
        ]
    if goals:
        lines += [report.goals_table(goals), ""]
    if ceilings:
        lines += [
            "### Workers: what the cores allow (2 / 1 at most cores / ((G + X) x one worker's req/s))",
            "",
            report.ceilings_table(ceilings),
            "",
        ]
    if sign_ins:
        lines += [
            "### Sign-in latency (sequential, one keep-alive connection)",
            "",
            report.sign_in_table([item.as_dict() for item in sign_ins]),
            "",
        ]
    if bursts:
        lines += [
            f"### Burst: {identitybench.BURST_SIZE} concurrent sign-ins during /jwks + /token load",
            "",
            report.burst_table(bursts, identitybench.BURST_P99_LIMIT_MS),
            "",
        ]
    invalid = [run for run in runs if not run.valid]
    if invalid:
        lines += ["### Runs that are not results", ""]
        lines += [f"- round {run.round} {run.scenario} {run.target}: {'; '.join(run.problems)}" for run in invalid]
        lines.append("")
    lines += profiles
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
