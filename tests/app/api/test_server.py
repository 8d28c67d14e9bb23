"""``bertpt serve --workers 2`` as a real process tree: the port shared by two API processes, requests in
flight far beyond the database pool, Prometheus counts added up over the processes, a killed worker
replaced, SIGTERM stopping everything; and ``bertpt serve`` stopped by SIGTERM within its grace period
while an upload hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from uvicorn.config import STARTUP_FAILURE

from app.api.server import MAX_EARLY_DEATHS, Supervisor
from app.db import create_db_engine, create_session_factory, session_scope
from app.tenants.service import create_api_key, create_tenant
from tests.support import REDIS_URL, free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVE = "from worker.service_cli import serve_command; serve_command()"
START_SECONDS = 60
CONCURRENT_REQUESTS = 64
API_THREADS = 2  # so 4 requests may hold a database session at once: 64 in flight are 16 times that


class Server:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.env = env
        options = ["--workers", "2", "--port", str(port), "--no-migrate", "--log-level", "warning"]
        command = [sys.executable, "-c", SERVE, *options]
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        """The API processes (the supervisor's children that are not multiprocessing's helpers)."""
        children = psutil.Process(self.process.pid).children()
        return [child for child in children if "resource_tracker" not in " ".join(child.cmdline())]

    def wait_until(self, condition: str, check: object) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                if check():  # type: ignore[operator]
                    return
            except (httpx.TransportError, psutil.Error):
                pass
            time.sleep(0.2)
        pytest.fail(f"not {condition} after {START_SECONDS} s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def api_key(database_url: str) -> str:
    engine = create_db_engine(database_url)
    with session_scope(create_session_factory(engine)) as session:
        key = create_api_key(session, create_tenant(session, f"serve-{os.getpid()}-{time.time_ns()}")).key
    engine.dispose()
    return key


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "BERTPT_ENV": "test",
        "BERTPT_DATABASE_URL": database_url,
        "BERTPT_REDIS_URL": REDIS_URL,
        "BERTPT_STORAGE_URL": f"file://{tmp_path / 'storage'}",
        "BERTPT_API_THREADS": str(API_THREADS),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    started = Server(env, free_port(), tmp_path / "serve.log")
    try:
        started.wait_until("answering", lambda: httpx.get(f"{started.base}/healthz", timeout=2).is_success)
        started.wait_until("running two workers", lambda: len(started.workers()) == 2)
        yield started
    finally:
        started.stop()


async def _concurrent_gets(base: str, path: str, key: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        headers = {"Authorization": f"Bearer {key}"}
        responses = await asyncio.gather(*(client.get(path, headers=headers) for _ in range(count)))
    return [response.status_code for response in responses]


def _requests_counted(base: str, route: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "bertpt_http_requests":
            return sum(
                sample.value
                for sample in family.samples
                if sample.name.endswith("_total") and sample.labels["route"] == route
            )
    return 0.0


def test_two_workers_share_the_port_and_survive_a_crash(server: Server, api_key: str) -> None:
    # Far more requests in flight than database connections: none waits on the pool, all succeed.
    statuses = asyncio.run(_concurrent_gets(server.base, "/v1/corpora", api_key, CONCURRENT_REQUESTS))
    assert statuses == [200] * CONCURRENT_REQUESTS

    # Whichever process answers /metrics reports the requests of both. A request is counted once its
    # response is sent: wait for the last count, then check it is exact (one too many fails too).
    server.wait_until(
        "every request counted",
        lambda: _requests_counted(server.base, "/v1/corpora") >= CONCURRENT_REQUESTS,
    )
    assert _requests_counted(server.base, "/v1/corpora") == CONCURRENT_REQUESTS
    # ... and both served some: each process that counted a request has its own counter file.
    assert len(list(server.metrics_dir.glob("counter_*.db"))) == 2

    # A second server on the same port is refused, rather than silently given half of the connections.
    port = server.base.rsplit(":", 1)[1]
    second = subprocess.run(
        [sys.executable, "-c", SERVE, "--workers", "2", "--port", port, "--no-migrate"],
        cwd=REPO_ROOT, env=server.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1 and "already served by another process" in second.stderr, second.stderr

    # A worker that dies is replaced; the service keeps answering meanwhile and afterwards.
    victim = server.workers()[0]
    victim.kill()
    victim.wait(timeout=10)
    server.wait_until(
        "back to two workers",
        lambda: len(server.workers()) == 2 and victim.pid not in {w.pid for w in server.workers()},
    )
    server.wait_until("answering", lambda: httpx.get(f"{server.base}/healthz", timeout=2).is_success)
    assert asyncio.run(_concurrent_gets(server.base, "/v1/corpora", api_key, 8)) == [200] * 8

    # SIGTERM: the supervisor stops its workers and exits cleanly.
    workers = server.workers()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=45) == 0, server.log()[-5000:]
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)


@pytest.mark.parametrize(
    ("exit_code", "starts"),
    [(1, MAX_EARLY_DEATHS + 1), (STARTUP_FAILURE, 2)],  # (died at once, uvicorn's "could not start")
)
def test_workers_that_cannot_start_stop_the_server(exit_code: int, starts: int) -> None:
    """A worker dying at once is restarted only until it is clear it cannot start: no restart loop."""
    sigint = signal.getsignal(signal.SIGINT)
    supervisor = Supervisor("127.0.0.1", free_port(), 2, "warning", target=sys.exit, args=(exit_code,))
    started: list[int | None] = []
    start = supervisor._start

    def counted() -> BaseProcess:
        process = start()
        started.append(process.pid)
        return process

    supervisor._start = counted  # type: ignore[method-assign]
    with pytest.raises(SystemExit) as stopped:
        supervisor.run()
    assert stopped.value.code == STARTUP_FAILURE
    assert len(started) == starts  # the two first workers, then a restart per early death but the last
    assert signal.getsignal(signal.SIGINT) is sigint  # the caller's handlers are back


def test_sigterm_stops_the_server_while_an_upload_hangs(
    database_url: str, api_key: str, tmp_path: Path
) -> None:
    """A client that stops sending in the middle of its upload keeps a request in flight: SIGTERM still
    stops the server, after SHUTDOWN_GRACE_SECONDS and the upload's stop, and the upload's temporary file
    is removed (the server used to wait for the client for ever)."""
    storage = tmp_path / "storage"
    env = {
        **os.environ,
        "BERTPT_ENV": "test",
        "BERTPT_DATABASE_URL": database_url,
        "BERTPT_REDIS_URL": REDIS_URL,
        "BERTPT_STORAGE_URL": f"file://{storage}",
        "BERTPT_SHUTDOWN_GRACE_SECONDS": "1",
    }
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        command = [sys.executable, "-c", SERVE, "--port", str(port), "--no-migrate", "--log-level", "warning"]
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).is_success, process)
            boundary = "hanging"
            part = (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\n\r\n'
            ).encode() + b"A sentence of a corpus that never finishes arriving.\n" * 40_000  # > 1 chunk
            head = (
                f"POST /v1/corpora HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {8 << 20}\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(head + part)
                # In flight: its first chunk is stored in a temporary file; then the client sends nothing.
                _wait_for(lambda: any((storage / ".tmp").glob("*.part")), process)
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log_text = (tmp_path / "serve.log").read_text(errors="replace")
    assert not list((storage / ".tmp").glob("*.part")), log_text[-5000:]


def _wait_for(check: Callable[[], bool], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve exited with {process.returncode}"
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not ready after {START_SECONDS} s")
