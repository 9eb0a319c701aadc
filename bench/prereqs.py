"""What the bench needs from outside Python, installed on first use: nginx, HAProxy (2.5+ for
``jwt_verify``) and wrk from Debian's packages, and Better Auth 1.7.25 from npm into bench/better_auth."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

BETTER_AUTH_DIR = Path(__file__).resolve().parent / "better_auth"
DEBIAN_PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "wrk": "wrk"}
HAPROXY_JWT_SINCE = (2, 5)


class PrereqError(RuntimeError):
    pass


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 900) -> str:
    print("+", " ".join(argv), flush=True)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise PrereqError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def ensure_debian_packages(*, install: bool) -> None:
    missing = [package for tool, package in DEBIAN_PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    if not install:
        raise PrereqError(
            f"missing {', '.join(missing)}; run without --no-install or: apt-get install -y {' '.join(missing)}"
        )
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*prefix, *env_prefix, "apt-get", "update", "-qq"])
    _run([*prefix, *env_prefix, "apt-get", "install", "-y", "-qq", *missing])


def haproxy_version(vv_output: str) -> tuple[int, int]:
    """``haproxy -vv`` -> (major, minor). Pure, for tests."""
    match = re.search(r"HA-?Proxy version (\d+)\.(\d+)", vv_output)
    if match is None:
        raise PrereqError("cannot read the HAProxy version from `haproxy -vv`")
    return int(match.group(1)), int(match.group(2))


def check_haproxy() -> str:
    output = _run(["haproxy", "-vv"])
    version = haproxy_version(output)
    if version < HAPROXY_JWT_SINCE:
        raise PrereqError(f"HAProxy {version[0]}.{version[1]} has no jwt_verify (needs 2.5+)")
    if "OPENSSL" not in output:
        raise PrereqError("HAProxy is built without OpenSSL: jwt_verify needs it")
    return output.splitlines()[0].strip()


def ensure_better_auth(*, install: bool) -> None:
    modules = BETTER_AUTH_DIR / "node_modules"
    if not (modules / "better-auth" / "package.json").exists() or not (modules / "better-sqlite3").exists():
        if not install:
            raise PrereqError(f"Better Auth is not installed; run without --no-install or: npm ci in {BETTER_AUTH_DIR}")
        if shutil.which("npm") is None:
            raise PrereqError("npm is missing (apt-get install -y nodejs npm)")
        lock = BETTER_AUTH_DIR / "package-lock.json"
        _run(["npm", "ci" if lock.exists() else "install", "--no-audit", "--no-fund"], cwd=BETTER_AUTH_DIR)
    # better-sqlite3 is native: make sure its binding loads on this Node before a run depends on it.
    _run(["node", "-e", "require('better-sqlite3')(':memory:').close()"], cwd=BETTER_AUTH_DIR)


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            return "missing"
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"

    ba = BETTER_AUTH_DIR / "node_modules" / "better-auth" / "package.json"
    return {
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "node": first_line(["node", "--version"]),
        "better-auth": re.search(r'"version":\s*"([^"]+)"', ba.read_text()).group(1) if ba.exists() else "missing",  # type: ignore[union-attr]
    }
