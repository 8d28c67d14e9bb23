"""The whole service on one machine, as real processes: what the end-to-end tests share.

Each test gets a PostgreSQL database of its own (migrated by Alembic: the housekeeping of its processes
looks at every run of the database, and what these tests commit must not reach the tests that count
rows), a storage directory, a training queue of its own on Redis, and starts what it needs:
``bertpt worker`` processes (:func:`start_worker`) and ``bertpt serve`` processes (:func:`start_api`),
each in a process group of its own so that a test can kill one whole, as ``kill -9`` of its group would,
or the API in process (``TestClient(create_app(settings))``). Every process a test starts carries a token
of the test in its environment, so that what it leaves behind can be found (:func:`assert_run_ended`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import psutil
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database
from app.models import Run, RunEvent, RunMetric
from app.runs.events import RunEventType
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.storage.keys import run_directory_key
from app.tenants.service import create_api_key, create_tenant
from tests.support import REDIS_URL, directory_files, tar_gz
from tests.support import free_port as pick_free_port  # the fixture below is free_port
from worker.pretraining.layout import TMP_PREFIX, RunLayout
from worker.pretraining.records import MetricsRecord
from worker.pretraining.sinks import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60  # a worker ready, an API answering
RUN_SECONDS = 150  # a tiny run from its submission to its end, on 2 CPU cores, with margin
STOP_SECONDS = 15
TOKEN_VARIABLE = "E2E_TEST_TOKEN"  # marks the processes of one test (inherited by their children)
TERMINAL = tuple(status.value for status in RunStatus if status.is_terminal)
ENDING_EVENTS = {
    RunStatus.SUCCEEDED: RunEventType.SUCCEEDED,
    RunStatus.FAILED: RunEventType.FAILED,
    RunStatus.CANCELLED: RunEventType.CANCELLED,
}
T = TypeVar("T")


def _settings_environment(settings: Settings, token: str) -> dict[str, str]:
    """The environment of a process configured like ``settings``: every setting as its ``BERTPT_``
    variable (none inherited from this process), Hugging Face offline, the test's token."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BERTPT_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(value)
        env[f"BERTPT_{name.upper()}"] = str(value)
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", TOKEN_VARIABLE: token}
    return env


class _Process:
    """A service command started in a session (process group) of its own, logging to a file."""

    # How it is asked to stop at the end of the test, and how long it may take.
    stop_signal = signal.SIGTERM
    stop_seconds = 45.0

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.killed = False  # by kill(): what its group held must be gone

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def group(self) -> list[psutil.Process]:
        """The live processes of its process group (zombies left aside: they run nothing)."""
        return [
            process
            for process in psutil.process_iter(["status"])
            if process.info["status"] != psutil.STATUS_ZOMBIE and _pgid(process.pid) == self.pid
        ]

    def kill(self) -> None:
        """``kill -9`` of its whole process group: it and every process it started, at once."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_SECONDS)

    def ask_to_stop(self) -> None:
        """Send ``stop_signal`` to its process group (every process of the test is stopped at once)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, self.stop_signal)

    def wait_stopped(self) -> None:
        """Wait for it to stop (killed after ``stop_seconds``); what it left in its group is killed."""
        try:
            self.process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):  # a training process, say
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


class Worker(_Process):
    """``bertpt worker`` (Celery, prefork, concurrency 1): its main process, one pool process, and a
    training process (a spawned child of the pool process) while it trains."""

    # The test has seen what it needed: the whole group at once (a cold shutdown takes seconds).
    stop_signal = signal.SIGKILL
    stop_seconds = STOP_SECONDS

    def __init__(self, env: dict[str, str], log_path: Path, arguments: Sequence[str] = ()) -> None:
        self.name = f"e2e-{secrets.token_hex(3)}"
        command = [sys.executable, "-c", "from worker.service_cli import worker_command; worker_command()"]
        options = ["--loglevel", "INFO", "--hostname", f"{self.name}@%h", *arguments]
        super().__init__([*command, *options], env, log_path)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.log()[-5000:]}")
        return " ready." in self.log()

    @property
    def claims(self) -> list[str]:
        """The worker ids (``<host>:<pid>`` of its pool process) of the runs it claimed, in order."""
        return re.findall(r"run \S+ claimed by (\S+) \(attempt \d+\)", self.log())

    def training_processes(self) -> list[psutil.Process]:
        """Its training processes: the spawned children among its descendants."""
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [process for process in descendants if _is_training_process(process)]


def _is_training_process(process: psutil.Process) -> bool:
    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:
        return False


class ApiServer(_Process):
    """``bertpt serve`` (one uvicorn process) on a port of its own."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        options = ["--port", str(port), "--no-migrate", "--log-level", "warning"]
        command = [sys.executable, "-c", "from worker.service_cli import serve_command; serve_command()"]
        super().__init__([*command, *options], env, log_path)

    def answering(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log()[-5000:]}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=2).is_success
        except httpx.TransportError:
            return False


class Poll(Protocol):
    def __call__(
        self, check: Callable[[], T | None], what: str, *, seconds: float = ..., every: float = ...
    ) -> T:
        """``check()`` until it returns something true, which is returned; the test fails after
        ``seconds``, with ``what`` and the logs of the test's processes."""
        ...


@pytest.fixture
def database_url(empty_database: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """A database of the test's own, migrated."""
    with empty_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Engine]:
    """An engine on the test's database, for what the test reads (and kills) directly."""
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The settings of every process of the test (a test changes some with ``model_copy``)."""
    return Settings(
        env="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        storage_url=f"file://{tmp_path / 'storage'}",
        training_queue=f"training-e2e-{secrets.token_hex(4)}",
        hf_hub_offline=True,
        max_upload_bytes=64 << 20,
        housekeeping=True,  # the API and every worker reap runs whose worker is gone
    )


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.storage_url.removeprefix("file://"))


@pytest.fixture
def api_key(settings: Settings) -> str:
    engine = create_db_engine(settings.database_url)
    with session_scope(create_session_factory(engine)) as session:
        tenant = create_tenant(session, f"e2e-{secrets.token_hex(4)}")
        key = create_api_key(session, tenant).key
    engine.dispose()
    return key


@pytest.fixture
def headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def test_token() -> str:
    """Marks the processes this test starts (in their environment, inherited by their children)."""
    return secrets.token_hex(8)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port() -> int``: a TCP port of 127.0.0.1 that nothing listens on."""
    return pick_free_port


@pytest.fixture
def started(settings: Settings, test_token: str) -> Iterator[list[_Process]]:
    """Every process the test started, oldest first; stopped at its end (before what ``settings`` names
    goes away)."""
    processes: list[_Process] = []
    yield processes
    for process in processes:
        process.ask_to_stop()
    for process in processes:
        process.wait_stopped()


def _wait_until_started(process: _Process, started: Callable[[], bool], failure: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not started():
        if time.monotonic() > deadline:
            pytest.fail(f"{failure} in {START_SECONDS} s:\n{process.log()[-5000:]}")
        time.sleep(0.1)


@pytest.fixture
def start_worker(
    settings: Settings, started: list[_Process], test_token: str, tmp_path: Path
) -> Callable[..., Worker]:
    """``start_worker(settings=None, arguments=()) -> Worker``: a ``bertpt worker`` configured like
    ``settings`` (the test's by default), with these command-line ``arguments`` (``--queues``, ``--gpus``),
    once it is ready to take tasks."""

    def start(worker_settings: Settings | None = None, arguments: Sequence[str] = ()) -> Worker:
        env = _settings_environment(worker_settings or settings, test_token)
        worker = Worker(env, tmp_path / f"worker-{len(started)}.log", arguments)
        started.append(worker)
        _wait_until_started(worker, worker.ready, "the worker was not ready")
        return worker

    return start


@pytest.fixture
def start_api(
    settings: Settings, started: list[_Process], test_token: str, tmp_path: Path
) -> Callable[..., ApiServer]:
    """``start_api(settings=None, port=None) -> ApiServer``: a ``bertpt serve`` configured like
    ``settings``, on ``port`` (a free one by default), once it answers ``/healthz``."""

    def start(api_settings: Settings | None = None, port: int | None = None) -> ApiServer:
        env = _settings_environment(api_settings or settings, test_token)
        server = ApiServer(env, port or pick_free_port(), tmp_path / f"api-{len(started)}.log")
        started.append(server)
        _wait_until_started(server, server.answering, "the API did not answer")
        return server

    return start


@pytest.fixture
def poll(started: list[_Process]) -> Poll:
    def poll(
        check: Callable[[], T | None], what: str, *, seconds: float = RUN_SECONDS, every: float = 0.1
    ) -> T:
        deadline = time.monotonic() + seconds
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.log_path.name} ---\n{p.log()[-4000:]}" for p in started)
                pytest.fail(f"not {what} after {seconds} s\n{logs}")
            time.sleep(every)

    return poll


@pytest.fixture
def submit_run(small_corpus: Path, tiny_bert_dir: Path) -> Callable[..., str]:
    """``submit_run(client, headers, hyperparameters, **fields) -> run id``: the tiny BERT and the small
    corpus uploaded, a run submitted on them (``fields``: more of the run body, e.g. ``resources``;
    ``client``: a TestClient or an httpx.Client of the API)."""

    def submit(client: Any, headers: dict[str, str], hyperparameters: dict[str, Any], **fields: Any) -> str:
        archive = tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert"))
        files = {"file": ("tiny-bert.tar.gz", archive)}
        response = client.post("/v1/checkpoints", files=files, headers=headers)
        assert response.status_code == 201, response.text
        checkpoint_id = response.json()["id"]
        files = {"file": ("docs.txt", small_corpus.read_bytes())}
        response = client.post("/v1/corpora", files=files, headers=headers)
        assert response.status_code in (200, 201), response.text
        body = {
            "name": "e2e",
            "base_model": f"checkpoint:{checkpoint_id}",
            "corpus_id": response.json()["id"],
            "hyperparameters": hyperparameters,
            **fields,
        }
        response = client.post("/v1/runs", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    return submit


@pytest.fixture
def wait_for_run(poll: Poll) -> Callable[..., dict[str, Any]]:
    """``wait_for_run(client, headers, run_id, done=<terminal>) -> run``: the run as the API serves it,
    once ``done(run)``."""

    def wait(
        client: Any,
        headers: dict[str, str],
        run_id: str,
        done: Callable[[dict[str, Any]], bool] = lambda run: run["status"] in TERMINAL,
    ) -> dict[str, Any]:
        def fetched() -> dict[str, Any] | None:
            run: dict[str, Any] = client.get(f"/v1/runs/{run_id}", headers=headers).json()
            return run if done(run) else None

        return poll(fetched, f"run {run_id} done waiting", every=0.3)

    return wait


@pytest.fixture
def assert_run_ended(
    database: Engine, storage: LocalStorage, started: list[_Process], test_token: str
) -> Callable[..., Run]:
    """``assert_run_ended(run_id, status, max_steps=None) -> run row``, the checks every scenario ends with:

    - the run is ``status`` (terminal), and ended once: exactly one ending event (succeeded, failed or
      cancelled), the one of its status, and the last of its events;
    - one metric row per (split, name, step), and when it succeeded the train loss of every step
      ``1..max_steps``; the final model loads with ``BertForPreTraining.from_pretrained``;
    - no process left of the run: none whose command line names it, no training process of the test's
      workers, nothing alive in the process group of a worker that was killed;
    - no temporary file left: no ``tmp-*`` in the run's directory, nothing in the storage's temporary
      folder.
    """

    def check(run_id: str, status: RunStatus, max_steps: int | None = None) -> Run:
        with Session(database) as session:
            run = session.get_one(Run, run_id)
            types = list(
                session.scalars(select(RunEvent.type).where(RunEvent.run_id == run_id).order_by(RunEvent.id))
            )
            rows = session.execute(
                select(RunMetric.split, RunMetric.name, RunMetric.step, RunMetric.value).where(
                    RunMetric.run_id == run_id
                )
            ).all()
        assert run.status == status, (run.status, run.error, types)
        endings = [event for event in types if event in {ending.value for ending in ENDING_EVENTS.values()}]
        assert endings == [ENDING_EVENTS[status]] and types[-1] == ENDING_EVENTS[status], types

        # One row per (split, name, step), the current one: the value of the last attempt that reached the
        # step (metrics.jsonl, appended by every attempt, has them all in order).
        assert len(rows) == len({(split, name, step) for split, name, step, _ in rows})
        layout = RunLayout(storage.local_path(run_directory_key(run_id)))
        current = {
            (record.split, name, record.step): value
            for record in read_jsonl(layout.metrics)
            if isinstance(record, MetricsRecord)
            for name, value in record.metrics.values().items()
        }
        assert {(split, name, step): value for split, name, step, value in rows}.items() <= current.items()
        if status == RunStatus.SUCCEEDED:
            assert max_steps is not None
            loss_steps = sorted(step for split, name, step, _ in rows if (split, name) == ("train", "loss"))
            assert loss_steps == list(range(1, max_steps + 1))
            from transformers import BertForPreTraining

            assert run.output_storage_key is not None
            model = BertForPreTraining.from_pretrained(storage.local_path(run.output_storage_key))
            assert model.config.hidden_size == 32

        killed = [process for process in started if process.killed]
        deadline = time.monotonic() + STOP_SECONDS  # a process killed a moment ago may still be exiting
        while left := _processes_left(run_id, test_token, killed):
            assert time.monotonic() < deadline, left
            time.sleep(0.1)

        temporary = [path for path in layout.root.rglob("*") if path.name.startswith((TMP_PREFIX, ".tmp"))]
        assert temporary == [] and storage.temporary_entries() == []
        return run

    return check


def _processes_left(run_id: str, token: str, killed: list[_Process]) -> list[str]:
    """What is left running of the run, described: a process naming it, a training process of the test
    (every run of the test ended), a process of a group that was killed."""
    left = [
        f"process {process.pid} of the killed group {group.pid}"
        for group in killed
        for process in group.group()
    ]
    for process in psutil.process_iter(["cmdline", "status", "environ"]):
        if process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        command = " ".join(process.info["cmdline"] or [])
        environ = process.info["environ"] or {}
        if run_id in command or ("spawn_main" in command and environ.get(TOKEN_VARIABLE) == token):
            left.append(f"process {process.pid}: {command}")
    return left
