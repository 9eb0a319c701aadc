"""``--workers N`` on Linux: N worker processes, each listening on a socket of its own bound with ``SO_REUSEPORT`` to
the same address, so the kernel hands each new connection to one of them by a hash of its addresses.

uvicorn's supervisor binds one socket that every worker accepts from: whichever worker wakes first takes what is
queued, so a burst of keep-alive connections (a load balancer's pool, wrk's 32) can land on one worker while the
other idles. Measured (issue 7): one of two workers held 31 or 32 of wrk's 32 connections in 2 of 20 runs; with a
socket per worker, never more than 25.

The parent binds the address once, without listening, before any worker starts: a port in use fails at once (also
one taken by another gateway's ``SO_REUSEPORT`` listeners), and the port stays reserved while workers come and go.
A worker builds its app before its socket joins the group, so no connection queues for a worker still starting,
and its socket closes with it, so connections go to the others while it is replaced.

Restarts: a worker that exits unexpectedly is started again, at once after a run of ``QUICK_EXIT`` seconds or more,
after a doubling delay otherwise. A worker that reports a startup failure (uvicorn's ``STARTUP_FAILURE``: the app
or the socket is broken and would fail again), or ``MAX_QUICK_EXITS`` quick exits in a row, stop the gateway with
``STARTUP_FAILURE``. SIGINT/SIGTERM: SIGTERM to every worker (each stops accepting and finishes in-flight requests
within its graceful timeout), SIGKILL to any still running ``KILL_MARGIN`` seconds after that; exit status 0.
``on_exit(pid)`` is called for every worker that has ended, however it ended (the CLI drops its metrics there).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

QUICK_EXIT = 5.0
MAX_QUICK_EXITS = 5
KILL_MARGIN = 5.0

logger = logging.getLogger("uvicorn.error")
spawn = multiprocessing.get_context("spawn")


def available() -> bool:
    """Linux balances connections over ``SO_REUSEPORT`` listeners; elsewhere the CLI keeps uvicorn's supervisor."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """The parent's hold on the address (bound, never listening, so it is handed no connection). A second bind
    without ``SO_REUSEPORT`` must succeed too: it fails when anyone is listening there, even with ``SO_REUSEPORT``
    (another gateway started on the same port by the same user would otherwise share its traffic)."""
    held = bind(host, port, reuse_port=True)
    try:
        bind(host, held.getsockname()[1], reuse_port=False).close()
    except OSError:
        held.close()
        raise
    return held


def serve(config: uvicorn.Config) -> None:
    """A worker process (spawned): build the app, then listen, then serve until SIGTERM/SIGINT."""
    config.configure_logging()
    try:
        config.load()
        sock = bind(config.host, config.port, reuse_port=True)
    except Exception:
        logger.exception("Worker [%d] failed to start", os.getpid())
        sys.exit(STARTUP_FAILURE)
    sock.listen(config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    def __init__(
        self,
        config: uvicorn.Config,
        workers: int,
        *,
        restart_delay: float = 0.5,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.count = workers
        self.restart_delay = restart_delay
        self.on_exit = on_exit
        self.stopping = threading.Event()

    def run(self) -> int:
        try:
            held = reserve(self.config.host, self.config.port)
        except OSError as exc:
            logger.error("Cannot listen on %s:%d: %s", self.config.host, self.config.port, exc)
            return STARTUP_FAILURE
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with held:
                self.config.port = held.getsockname()[1]  # --port 0: every worker on the port the parent got
                logger.info("Started parent process [%d]", os.getpid())
                logger.info(
                    "Uvicorn running on http://%s:%d with %d workers, one SO_REUSEPORT listener each",
                    self.config.host,
                    self.config.port,
                    self.count,
                )
                workers = [self._start() for _ in range(self.count)]
                try:
                    return self._watch(workers)
                finally:
                    self._stop_all([process for process, _ in workers])
                    logger.info("Stopping parent process [%d]", os.getpid())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self) -> tuple[SpawnProcess, float]:
        process = spawn.Process(target=serve, args=(self.config,), name="gateway-worker")
        process.start()
        return process, time.monotonic()

    def _watch(self, workers: list[tuple[SpawnProcess, float]]) -> int:
        quick_exits = 0
        while not self.stopping.is_set():
            wait([process.sentinel for process, _ in workers], timeout=0.5)
            for slot, (process, started) in enumerate(workers):
                if process.is_alive() or self.stopping.is_set():
                    continue
                process.join()
                self._ended(process)
                lived = time.monotonic() - started
                if process.exitcode == STARTUP_FAILURE:
                    logger.error("Worker [%d] failed to start; stopping the gateway", process.pid)
                    return STARTUP_FAILURE
                quick_exits = quick_exits + 1 if lived < QUICK_EXIT else 0
                if quick_exits >= MAX_QUICK_EXITS:
                    logger.error("Workers exited %d times in a row within %g s of starting", quick_exits, QUICK_EXIT)
                    return STARTUP_FAILURE
                delay = self.restart_delay * 2 ** (quick_exits - 1) if quick_exits else 0.0
                logger.warning(
                    "Worker [%d] exited (status %s) after %.1f s; starting another in %.1f s",
                    process.pid,
                    process.exitcode,
                    lived,
                    delay,
                )
                if self.stopping.wait(delay):
                    break
                workers[slot] = self._start()
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _stop_all(self, processes: list[SpawnProcess]) -> None:
        for process in processes:
            process.terminate()  # SIGTERM
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0.0) + KILL_MARGIN
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                logger.warning("Worker [%d] still running after the graceful timeout: SIGKILL", process.pid)
                process.kill()
                process.join()
        for process in processes:
            if process.exitcode is not None:
                self._ended(process)

    def _ended(self, process: SpawnProcess) -> None:
        if self.on_exit is not None and process.pid is not None:
            try:
                self.on_exit(process.pid)
            except Exception:  # cleanup after a worker must not take the supervisor down
                logger.exception("Cleaning up after worker [%d] failed", process.pid)
