"""Running the API: ``serve(workers=N)``.

One process is plain ``uvicorn.run``. Several are N uvicorn servers, each on its own listening socket
bound to the same address with ``SO_REUSEPORT``, so that the kernel spreads connections evenly over them
(with one shared socket, as ``uvicorn --workers`` has it, whichever process wakes first accepts a whole
burst of connections and keeps them: measured here, one process served every keep-alive client while the
other sat idle). A supervisor starts them, replaces one that dies, and stops them all on SIGTERM/SIGINT.

On SIGTERM an API process lets the requests in flight finish for ``SHUTDOWN_GRACE_SECONDS``, then cancels
them; its app's lifespan stops the uploads still running in threads (:mod:`app.api.upload_slots`), and it
exits. Without that bound, one slow upload kept a process from stopping for as long as it lasted.

Prometheus counters are per process; with several, each writes them to files in
``PROMETHEUS_MULTIPROC_DIR`` (a temporary directory unless set) and ``/metrics`` adds them up
(:func:`app.api.prometheus.create_registry`).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from app.config import get_settings

__all__ = ["APP_FACTORY", "Supervisor", "serve"]

logger = logging.getLogger("bertpt.serve")

APP_FACTORY = "app.api.main:create_app"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What a worker takes to stop beyond SHUTDOWN_GRACE_SECONDS (stopping uploads, closing its clients) before
# the supervisor kills it.
STOP_MARGIN_SECONDS = 15.0
# Workers dying this soon after their start, this many times in a row, are failing to start.
EARLY_DEATH_SECONDS = 10.0
MAX_EARLY_DEATHS = 3


# Longer than the idle timeout of the load balancers in front (60 s on the common ones): otherwise the
# server closes a keep-alive connection just as the balancer reuses it, and a client gets a 502.
KEEP_ALIVE_SECONDS = 75


def _options(log_level: str) -> dict[str, Any]:
    # proxy_headers: behind a reverse proxy in production, trust X-Forwarded-* only from the local one.
    return {"factory": True, "log_level": log_level, "proxy_headers": True,
            "timeout_keep_alive": KEEP_ALIVE_SECONDS,
            "timeout_graceful_shutdown": get_settings().shutdown_grace_seconds}  # fmt: skip


def serve(*, host: str, port: int, workers: int = 1, log_level: str = "info", reload: bool = False) -> None:
    """Serve the API until SIGTERM/SIGINT."""
    if workers == 1:
        uvicorn.run(APP_FACTORY, host=host, port=port, reload=reload, **_options(log_level))
        return
    if reload:
        raise ValueError("--reload needs a single worker")
    _refuse_if_taken(host, port)
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="bertpt-prometheus-")
        os.environ[MULTIPROC_ENV] = own_dir  # inherited by the workers
    try:
        Supervisor(host, port, workers, log_level).run()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            del os.environ[MULTIPROC_ENV]


def _refuse_if_taken(host: str, port: int) -> None:
    """Fail here, once, if the address is taken. Binding alone does not tell: with SO_REUSEPORT, a
    second ``bertpt serve`` on the same port would bind too, and silently share the traffic."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if probe.connect_ex((target, port)) == 0:
            raise OSError(errno.EADDRINUSE, f"{host}:{port} is already served by another process")
    _bind(host, port).close()  # taken by a process without SO_REUSEPORT: EADDRINUSE


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    """One API process: its own SO_REUSEPORT socket, one uvicorn server (which handles SIGTERM itself:
    it lets the requests in flight finish for SHUTDOWN_GRACE_SECONDS, then exits)."""
    sock = _bind(host, port)
    config = uvicorn.Config(APP_FACTORY, host=host, port=port, **_options(log_level))
    sock.listen(config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    """Runs ``workers`` processes of ``target(*args)`` (by default one API server each, on its own socket),
    replaces one that dies, stops them all on SIGTERM or SIGINT, and gives up (``SystemExit(3)``) when
    they cannot start rather than restart them in a loop."""

    def __init__(
        self,
        host: str,
        port: int,
        workers: int,
        log_level: str,
        *,
        target: Callable[..., object] = _worker,
        args: tuple[object, ...] | None = None,
        stop_grace_seconds: float | None = None,
    ) -> None:
        self.address = (host, port)
        # How long the workers get to stop before they are killed.
        if stop_grace_seconds is None:
            stop_grace_seconds = get_settings().shutdown_grace_seconds + STOP_MARGIN_SECONDS
        self.stop_grace_seconds = stop_grace_seconds
        self.target = target
        self.args = args if args is not None else (host, port, log_level)
        self.workers = workers
        self.stop = threading.Event()
        self.failed = False
        # spawn, not fork: each worker imports the app afresh (no inherited locks, pools or threads).
        self.context = multiprocessing.get_context("spawn")

    def _start(self) -> BaseProcess:
        process = self.context.Process(target=self.target, args=self.args, name="bertpt-api", daemon=False)
        process.start()
        return process

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: stopping the API workers", signal.Signals(signum).name)
        self.stop.set()

    def run(self) -> None:
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in signals}
        try:
            self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.failed:
            raise SystemExit(STARTUP_FAILURE)

    def _supervise(self) -> None:
        processes = [self._start() for _ in range(self.workers)]
        started = [time.monotonic()] * self.workers
        logger.info("API workers %s on %s:%d", [p.pid for p in processes], *self.address)
        early_deaths = 0
        try:
            while not self.stop.wait(0.5):
                for index, process in enumerate(processes):
                    if process.is_alive():
                        continue
                    _forget_metrics_of(process.pid)
                    lived = time.monotonic() - started[index]
                    early_deaths = early_deaths + 1 if lived < EARLY_DEATH_SECONDS else 0
                    # The app cannot start (uvicorn says so, or workers keep dying at once: bad settings,
                    # an import error): starting it again would fail the same way.
                    if process.exitcode == STARTUP_FAILURE or early_deaths >= MAX_EARLY_DEATHS:
                        logger.error("API worker %s failed to start (exit code %s); stopping", process.pid,
                                     process.exitcode)  # fmt: skip
                        self.failed = True
                        self.stop.set()
                        break
                    logger.warning("API worker %s died (exit code %s) after %.0f s; starting another",
                                   process.pid, process.exitcode, lived)  # fmt: skip
                    processes[index], started[index] = self._start(), time.monotonic()
        finally:
            _stop_all(processes, self.stop_grace_seconds)


def _stop_all(processes: list[BaseProcess], grace_seconds: float) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: uvicorn's graceful shutdown
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.warning("API worker %s did not stop in %.0f s; killing it", process.pid, grace_seconds)
            process.kill()
            process.join()
        _forget_metrics_of(process.pid)


def _forget_metrics_of(pid: int | None) -> None:
    """Live gauges of a dead process must not be reported any more (counters keep their files)."""
    if pid is not None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
