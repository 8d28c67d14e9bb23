"""Chaos: the service's real processes killed, restarted and abused while a tiny BERT trains, and what it
promises checked after each (``assert_run_ended``): the run ended exactly once, one current metric row per
step, the final model loads, no process and no temporary file left behind.

- a training process killed (``kill -9``): the worker retries it from its checkpoint;
- a whole worker killed, then a new one started: the reaper queues the run again, and it resumes;
- a whole worker killed and none left: the API's reaper fails the run (``worker_lost``), or cancels it
  when its cancel was asked;
- Redis restarted, empty, mid-run; PostgreSQL's connections killed mid-run;
- the same task delivered twice; delivered again after a visibility timeout of 5 s: trained once;
- the API killed while a client follows a run's stream: the client reconnects with ``Last-Event-ID``
  and misses nothing, sees nothing twice;
- gzip bombs uploaded at once while ``/healthz`` is polled: refused, the API answering throughout.

Each test has a Redis of its own (a private ``redis-server``): its queue, its unacknowledged messages and
its live streams are the test's only, and the Redis scenario restarts it. Kills are made where their
outcome is exactly known (:func:`_freeze_at_checkpoint`), and every wait polls an observable condition.
A training process takes about 12 s to start on 2 CPU cores (importing torch and transformers): the
scenarios are paced by it, not by the steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from app.api.main import create_app
from app.config import Settings
from app.models import Run, RunCheckpoint, RunEvent
from app.queue import create_celery, enqueue_run
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.storage.keys import run_directory_key
from tests.support import TINY_HYPERPARAMETERS, gzip_bomb
from worker.pretraining.layout import TMP_PREFIX, RunLayout
from worker.pretraining.run_checkpoints import complete_checkpoints

if TYPE_CHECKING:
    from tests.e2e.conftest import ApiServer, Poll, Worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HEARTBEAT_TIMEOUT_SECONDS = 4  # the reaper takes a run back this long after its worker's last heartbeat
VISIBILITY_TIMEOUT_SECONDS = 5
# A checkpoint every 2 steps, the first of them long before the end: a kill after a checkpoint lands
# mid-run, with steps left to resume (steps take 0.1 to 0.5 s on 2 CPU cores).
KILLED = {**TINY_HYPERPARAMETERS, "max_steps": 24, "checkpoint_every_steps": 2}
# Long enough for a disruption at its first step to land mid-run.
DISRUPTED = {**TINY_HYPERPARAMETERS, "max_steps": 20, "checkpoint_every_steps": 5}
# A task of about 20 s (12 s of it to start the training process), four times the visibility timeout.
LONG = {**TINY_HYPERPARAMETERS, "max_steps": 20, "checkpoint_every_steps": 10}
ROWS_CATCH_UP_SECONDS = 3.0  # the supervisor writes what training reports once a second
TERMINAL_STATUSES = frozenset(status for status in RunStatus if status.is_terminal)
BOMBS = 8
HEALTHZ_SECONDS = 5.0  # /healthz answers within this, whatever the uploads do (45 ms seen here)


# -- a Redis of the test's own -------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on ``port``, in memory only (``--save '' --appendonly no``): a restart empties it."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail("the chaos tests need redis-server on the PATH (a Redis of each test's own)")
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [executable, *options, "--dir", str(self.directory), "--logfile", str(self.directory / "log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            assert self.process.poll() is None, (self.directory / "log").read_text()
            assert time.monotonic() < deadline, "redis-server did not answer in 30 s"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: with --save '', it saves nothing
            self.process.wait(timeout=30)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def _answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


@pytest.fixture
def redis_server(free_port: Callable[[], int], tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, redis_server: RedisServer) -> Settings:
    """The end-to-end settings, on the test's own Redis."""
    return settings.model_copy(update={"redis_url": redis_server.url})


# -- what the tests read -------------------------------------------------------------------------------------


def _run(database: Engine, run_id: str) -> Run:
    with Session(database) as session:
        return session.get_one(Run, run_id)


def _events(database: Engine, run_id: str, *types: str) -> list[RunEvent]:
    """The run's events (of ``types``, or all), oldest first."""
    statement = select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)
    if types:
        statement = statement.where(RunEvent.type.in_(types))
    with Session(database) as session:
        return list(session.scalars(statement))


def _checkpoint_rows(database: Engine, run_id: str) -> list[int]:
    with Session(database) as session:
        statement = (
            select(RunCheckpoint.step).where(RunCheckpoint.run_id == run_id).order_by(RunCheckpoint.step)
        )
        return list(session.scalars(statement))


def _trained(database: Engine, run_id: str, steps: int) -> bool:
    """Whether the metrics of the run's first ``steps`` training steps are in the database."""
    with database.connect() as connection:
        statement = text("SELECT max(step) FROM run_metrics WHERE run_id = :id AND split = 'train'")
        return int(connection.execute(statement, {"id": run_id}).scalar() or 0) >= steps


def _waiting_for_a_lock(database: Engine) -> bool:
    """Whether a session of the database waits for a lock."""
    statement = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    with database.connect() as connection:
        return bool(connection.execute(statement).scalar())


def _attempts(events: list[RunEvent], event_type: str, *fields: str) -> list[tuple[Any, ...]]:
    """(attempt, *fields) of each event of ``event_type``."""
    return [(e.data.get("attempt"), *(e.data.get(f) for f in fields)) for e in events if e.type == event_type]


@dataclass(frozen=True)
class _Event:
    id: str
    event: str
    data: str


def _sse_events(lines: Iterable[str]) -> Iterator[_Event]:
    """The complete Server-Sent Events of ``lines`` (an event is complete at its blank line)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield _Event(fields.get("id", ""), fields.get("event", "message"), fields["data"])
            fields = {}
        elif not line.startswith(":"):  # comments: keep-alive pings
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def _stream(client: TestClient, headers: dict[str, str], run_id: str) -> list[_Event]:
    """The whole live stream of a finished run, replayed."""
    return list(_sse_events(client.get(f"/v1/runs/{run_id}/stream", headers=headers).iter_lines()))


def _freeze_at_checkpoint(
    worker: Worker, run_id: str, storage: LocalStorage, database: Engine, poll: Poll
) -> tuple[psutil.Process, int]:
    """Stop (SIGSTOP) the run's training process at a moment when its newest checkpoint is complete on
    disk and recorded in the database, and no checkpoint is being written or removed: whatever is killed
    there, which checkpoint the run resumes from is exactly known, and nothing half-written is left. The
    frozen process and that checkpoint's step.

    Frozen just after it published a checkpoint, the process has sent its record to the supervisor, which
    writes the row within a second (its flush), so the rows are given that long to catch up; frozen
    before that, or in the middle of a write, it goes on and is stopped again a moment later."""
    checkpoints = RunLayout(storage.local_path(run_directory_key(run_id))).checkpoints

    def frozen() -> tuple[psutil.Process, int] | None:
        processes = worker.training_processes()
        if not processes:
            assert _run(database, run_id).status not in TERMINAL_STATUSES, "the run ended before the kill"
            return None
        (process,) = processes
        try:
            process.suspend()
        except psutil.NoSuchProcess:  # it ended meanwhile: the run is found ended at the next look
            return None
        deadline = time.monotonic() + ROWS_CATCH_UP_SECONDS
        while True:
            on_disk = [step for step, _ in complete_checkpoints(checkpoints)]
            if not on_disk or any(path.name.startswith(TMP_PREFIX) for path in checkpoints.iterdir()):
                break  # no checkpoint yet, or one being written or removed: no row changes that
            if on_disk == _checkpoint_rows(database, run_id):
                return process, on_disk[-1]
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        process.resume()
        return None

    return poll(frozen, f"run {run_id} frozen after a recorded checkpoint", every=0.05)


# -- processes killed ----------------------------------------------------------------------------------------


def test_a_killed_training_process_is_retried_from_its_checkpoint(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """``kill -9`` of the training process (the spawned child of the worker's pool process) after a
    checkpoint: the worker retries the run at once, and attempt 2 resumes from that checkpoint."""
    worker = start_worker()
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, KILLED)
        process, step = _freeze_at_checkpoint(worker, run_id, storage, database, poll)
        process.kill()
        run = wait_for_run(client, headers, run_id)
        rewinds = [
            json.loads(event.data) for event in _stream(client, headers, run_id) if event.event == "rewind"
        ]
    assert (run["status"], run["attempt"], run["error"]) == ("succeeded", 2, None), run
    assert rewinds == [{"step": step, "attempt": 2}]  # watchers drop the points attempt 1 made past it

    events = _events(database, run_id)
    assert _attempts(events, "claimed", "worker_id") == list(zip([1, 2], worker.claims, strict=True))
    (retrying,) = [event for event in events if event.type == "retrying"]
    assert retrying.data["attempt"] == 1 and retrying.data["checkpoint_step"] == step
    assert retrying.data["reason"]["type"] == "training_process_died"
    assert f"attempt 2 of 3 resumes from the checkpoint of step {step}" in retrying.message
    assert _attempts(events, "training_started", "resumed_from_step") == [(1, None), (2, step)]
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=KILLED["max_steps"])


def test_a_killed_worker_is_reaped_and_its_run_resumed_by_a_new_worker(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """``kill -9`` of a whole worker (main process, pool, training process) mid-run, then a new worker: the
    reaper (the new worker's or the API's) queues the run again once its heartbeat is older than
    HEARTBEAT_TIMEOUT_SECONDS, and the new worker resumes it from its checkpoint. Nothing waits for the
    broker's visibility timeout (12 h here)."""
    settings = settings.model_copy(update={"heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS})
    first = start_worker(settings)
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, KILLED)
        _, step = _freeze_at_checkpoint(first, run_id, storage, database, poll)
        first.kill()
        second = start_worker(settings)
        run = wait_for_run(client, headers, run_id)
        rewinds = [
            json.loads(event.data) for event in _stream(client, headers, run_id) if event.event == "rewind"
        ]
    assert (run["status"], run["attempt"], run["error"]) == ("succeeded", 2, None), run
    assert rewinds == [{"step": step, "attempt": 2}]

    events = _events(database, run_id)
    (lost_worker, new_worker) = [worker_id for _, worker_id in _attempts(events, "claimed", "worker_id")]
    assert lost_worker != new_worker
    assert [lost_worker, new_worker] == [*first.claims, *second.claims]
    (retrying,) = [event for event in events if event.type == "retrying"]
    assert (retrying.data["worker_id"], retrying.data["attempt"]) == (lost_worker, 1)
    assert (retrying.data["checkpoint_step"], retrying.data["trigger"]) == (step, "retry")
    assert f"worker {lost_worker} stopped answering" in retrying.message
    assert f"attempt 2 of 3 resumes from the checkpoint of step {step}" in retrying.message
    assert _attempts(events, "training_started", "resumed_from_step") == [(1, None), (2, step)]
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=KILLED["max_steps"])


@pytest.mark.parametrize("cancelled", [False, True], ids=["failed", "cancel-asked-first"])
def test_a_killed_worker_with_no_other_ends_its_run(
    cancelled: bool,
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """``kill -9`` of the only worker, with MAX_ATTEMPTS=1: the API's housekeeping fails the run
    (``worker_lost``, naming the resume route) once its heartbeat is too old; a run whose cancel was asked
    (the worker frozen first, so that it cannot act on it) is cancelled instead."""
    settings = settings.model_copy(
        update={"heartbeat_timeout_seconds": HEARTBEAT_TIMEOUT_SECONDS, "max_attempts": 1}
    )
    worker = start_worker(settings)
    with TestClient(create_app(settings)) as client:  # its lifespan starts the housekeeping (the reaper)
        run_id = submit_run(client, headers, KILLED)
        _, step = _freeze_at_checkpoint(worker, run_id, storage, database, poll)
        if cancelled:
            os.killpg(worker.pid, signal.SIGSTOP)  # the whole worker: nothing of it sees the request
            with ThreadPoolExecutor(1) as pool:
                cancel = pool.submit(client.post, f"/v1/runs/{run_id}/cancel", headers=headers)
                # The worker may have been stopped in a transaction that holds the run's row: then the
                # cancel waits for its lock, released by the kill.
                poll(lambda: cancel.done() or _waiting_for_a_lock(database), "the cancel asked")
                worker.kill()
                response = cancel.result()
            assert response.json()["status"] == "cancelling", response.text
        else:
            worker.kill()
        run = wait_for_run(client, headers, run_id)

    (lost_worker,) = [
        worker_id for _, worker_id in _attempts(_events(database, run_id), "claimed", "worker_id")
    ]
    (ending,) = _events(database, run_id, "failed", "cancelled")
    assert (ending.data["worker_id"], ending.data["attempt"], ending.data["checkpoint_step"]) == (
        lost_worker,
        1,
        step,
    )
    if cancelled:
        assert (run["status"], run["error"], ending.data["trigger"]) == ("cancelled", None, "stop"), run
        assert ending.message.startswith(
            f"cancelled: while it was stopping, worker {lost_worker} stopped answering"
        )
        assert_run_ended(run_id, RunStatus.CANCELLED)
        return
    assert (run["status"], ending.data["trigger"]) == ("failed", "fail"), run
    assert run["error"]["type"] == "worker_lost" and run["error"]["message"] == ending.message
    stored = _run(database, run_id).error or {}
    assert (stored["type"], stored["checkpoint_step"]) == ("worker_lost", step)
    assert f"its last checkpoint (step {step}) is kept: POST /v1/runs/{run_id}/resume" in ending.message
    assert _events(database, run_id, "retrying") == []
    assert_run_ended(run_id, RunStatus.FAILED)


# -- the services restarted ----------------------------------------------------------------------------------


def test_redis_restarted_mid_run(
    settings: Settings,
    redis_server: RedisServer,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """Redis (broker and live streams) stopped and started again, empty, while the run trains: the run
    finishes, the database has every step's metrics, the live stream goes on after the restart. The
    training process is held (SIGSTOP) during the outage, so that the run is mid-run however fast it
    trains."""
    worker = start_worker()
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, DISRUPTED)
        process, _step = _freeze_at_checkpoint(worker, run_id, storage, database, poll)
        redis_server.stop()
        # The worker lost its broker while it held the run.
        poll(lambda: "Connection to broker lost" in worker.log(), "the worker's broker connection lost")
        assert _run(database, run_id).status == RunStatus.RUNNING
        redis_server.start()
        process.resume()
        run = wait_for_run(client, headers, run_id)
        assert run["status"] == "succeeded", run
        # What was published after the restart is there: the stream ends with the run's end.
        stream = _stream(client, headers, run_id)
        assert stream[-1].event == "status" and json.loads(stream[-1].data)["status"] == "succeeded"
    assert _attempts(_events(database, run_id), "claimed") == [(1,)]
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=DISRUPTED["max_steps"])


def test_database_connections_killed_mid_run(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """Every connection to the run's database killed (``pg_terminate_backend``), twice, while the run
    trains (its training process held by SIGSTOP meanwhile, so that it is mid-run however fast it
    trains): the API answers the next request, the worker's heartbeats and writes go on, the run
    succeeds."""
    worker = start_worker()
    terminate = text(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS killed, now() AS at "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, DISRUPTED)
        process, _step = _freeze_at_checkpoint(worker, run_id, storage, database, poll)
        for _ in range(2):
            with database.connect() as connection:
                killed, at = connection.execute(terminate).one()
                status = connection.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
            assert killed >= 1 and status == RunStatus.RUNNING, (killed, status)
            response = client.get(f"/v1/runs/{run_id}", headers=headers)  # a pooled connection was killed
            assert response.status_code == 200, response.text
            poll(partial(_heartbeat_after, database, run_id, at), "a heartbeat after the kill")
        process.resume()  # its metrics are written through the connections that replaced the killed ones
        run = wait_for_run(client, headers, run_id)
    assert (run["status"], run["attempt"]) == ("succeeded", 1), run
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=DISRUPTED["max_steps"])


def _heartbeat_after(database: Engine, run_id: str, moment: datetime) -> bool:
    heartbeat = _run(database, run_id).heartbeat_at
    return heartbeat is not None and heartbeat > moment


# -- tasks delivered more than once --------------------------------------------------------------------------


def test_the_same_task_delivered_twice_trains_once(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """``bertpt.runs.execute(run_id)`` sent twice, with two idle workers: both deliveries are taken at
    once, one claims the run, the other finds it claimed and does nothing."""
    workers = [start_worker(), start_worker()]
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, DISRUPTED)  # sent once
        enqueue_run(run_id, celery=create_celery(settings))  # and again
        refused = f"run {run_id} not claimed"
        poll(lambda: any(refused in worker.log() for worker in workers), "the second delivery refused")
        run = wait_for_run(client, headers, run_id)
    assert (run["status"], run["attempt"]) == ("succeeded", 1), run
    events = _events(database, run_id)
    assert _attempts(events, "claimed") == [(1,)] and _attempts(events, "training_started") == [(1,)]
    assert sum(len(worker.claims) for worker in workers) == 1
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=DISRUPTED["max_steps"])


def test_a_task_redelivered_after_the_visibility_timeout_trains_once(
    settings: Settings,
    redis_server: RedisServer,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    database: Engine,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """VISIBILITY_TIMEOUT=5 and a run of about 20 s: Redis hands its unacknowledged task out again while
    it trains, and the second delivery does nothing.

    A worker restores the messages whose visibility timed out when it starts consuming (then kombu scans
    only about every 100 s): a second worker, started once the message is older than the timeout, takes
    the redelivery while the first still trains."""
    settings = settings.model_copy(update={"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS})
    first = start_worker(settings)
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, LONG)
        poll(lambda: first.claims, "the run claimed")
        # Held (SIGSTOP) until the redelivery is refused, so that the first worker still holds the run
        # then however fast it trains; its supervisor keeps the heartbeat meanwhile.
        (process,) = poll(lambda: first.training_processes() or None, "the training process started")
        process.suspend()
        with redis_server.client() as broker:
            poll(lambda: _unacknowledged_for(broker) > VISIBILITY_TIMEOUT_SECONDS, "the visibility timed out")
        second = start_worker(settings)
        poll(lambda: f"run {run_id} not claimed" in second.log(), "the redelivery refused")
        # Refused while the first holds the run (preparing it, or training).
        assert _run(database, run_id).status in (RunStatus.PREPARING, RunStatus.RUNNING)
        process.resume()
        run = wait_for_run(client, headers, run_id)
    assert (run["status"], run["attempt"]) == ("succeeded", 1), run
    assert _attempts(_events(database, run_id), "claimed") == [(1,)] and second.claims == []
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=LONG["max_steps"])


def _unacknowledged_for(broker: redis.Redis) -> float:
    """Seconds since the oldest unacknowledged message was delivered (kombu's ``unacked_index``)."""
    delivered = broker.zrange("unacked_index", 0, 0, withscores=True)
    return time.time() - float(delivered[0][1]) if delivered else 0.0


# -- the API killed, the API abused --------------------------------------------------------------------------


def test_a_client_follows_a_stream_across_an_api_killed_mid_run(
    start_worker: Callable[..., Worker],
    start_api: Callable[..., ApiServer],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    database: Engine,
    storage: LocalStorage,
    poll: Poll,
    assert_run_ended: Callable[..., Run],
) -> None:
    """A client follows ``GET /v1/runs/{id}/stream`` from a real ``bertpt serve``; the API is killed
    (``kill -9``) mid-run; the client reconnects to the restarted API with the ``Last-Event-ID`` it saw
    last. What it saw, over both connections, is the whole stream as replayed after the run's end: nothing
    missed, nothing twice. The training process is held (SIGSTOP) until the client has reconnected, so
    that the API dies mid-run however fast the run trains."""
    worker = start_worker()
    api = start_api()
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        run_id = submit_run(client, headers, DISRUPTED)
    process, _step = _freeze_at_checkpoint(worker, run_id, storage, database, poll)
    seen: list[_Event] = []
    killed = False
    while True:
        after = {"Last-Event-ID": seen[-1].id} if seen else {}
        try:
            with httpx.stream(
                "GET", f"{api.base_url}/v1/runs/{run_id}/stream", headers=headers | after, timeout=60
            ) as response:
                assert response.status_code == 200, response.read()
                for event in _sse_events(response.iter_lines()):
                    seen.append(event)
                    if not killed and event.event == "metric" and json.loads(event.data)["split"] == "train":
                        assert _run(database, run_id).status == RunStatus.RUNNING
                        api.kill()
                        killed = True
            break  # the stream ended: the run's last status was sent
        except httpx.TransportError:
            assert api.killed and seen  # cut by the kill, once
            api = start_api(port=api.port)
            process.resume()
    assert killed and json.loads(seen[-1].data)["status"] == "succeeded"

    with httpx.stream(
        "GET", f"{api.base_url}/v1/runs/{run_id}/stream", headers=headers, timeout=60
    ) as response:
        replayed = list(_sse_events(response.iter_lines()))
    assert [event.id for event in seen] == [event.id for event in replayed]
    assert seen == replayed
    metrics = [json.loads(event.data) for event in seen if event.event == "metric"]
    train_steps = [metric["step"] for metric in metrics if metric["split"] == "train"]
    assert train_steps == list(range(1, DISRUPTED["max_steps"] + 1))
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=DISRUPTED["max_steps"])


def test_concurrent_gzip_bombs_while_healthz_is_polled(
    settings: Settings,
    start_api: Callable[..., ApiServer],
    headers: dict[str, str],
    storage: LocalStorage,
    poll: Poll,
) -> None:
    """Eight ``.txt.gz`` uploads at once, each a megabyte inflating to 256 MiB (the cap: 8 MiB; ratio 100),
    against a real ``bertpt serve`` (8 threads, 4 uploads at once) while ``/healthz`` is polled: every
    bomb is refused (413 by a cap, or 429 past the uploads at once), ``/healthz`` answers every time
    within 2 s, and no temporary file is left."""
    limits = {"max_decompressed_bytes": 8 << 20, "api_threads": 8, "max_concurrent_uploads": 4}
    api = start_api(settings.model_copy(update=limits))
    bomb = gzip_bomb(256 << 20)
    answers: list[tuple[float, float, int | str]] = []  # (sent at, seconds, status or error)
    stop = threading.Event()

    def poll_healthz() -> None:
        with httpx.Client(base_url=api.base_url, timeout=HEALTHZ_SECONDS) as healthz:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status: int | str = healthz.get("/healthz").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                answers.append((sent, time.monotonic() - sent, status))
                stop.wait(0.02)

    start = threading.Barrier(BOMBS)

    def upload(number: int) -> httpx.Response:
        with httpx.Client(base_url=api.base_url, timeout=60) as uploader:
            start.wait()
            files = {"file": (f"bomb-{number}.txt.gz", bomb)}
            return uploader.post("/v1/corpora", files=files, headers=headers)

    poller = threading.Thread(target=poll_healthz, name="healthz")
    poller.start()
    try:
        poll(lambda: answers, "/healthz polled")
        began = time.monotonic()
        with ThreadPoolExecutor(BOMBS) as pool:
            responses = list(pool.map(upload, range(BOMBS)))
        ended = time.monotonic()
        during = len(answers)
        poll(lambda: len(answers) > during, "/healthz polled after the bombs")
    finally:
        stop.set()
        poller.join()

    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {413, 422, 429} and 413 in statuses, [r.text for r in responses]
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) > 0
    assert [status for _, _, status in answers if status != 200] == []
    assert max(seconds for _, seconds, _ in answers) < HEALTHZ_SECONDS
    assert any(began <= sent <= ended for sent, _, _ in answers), "no /healthz while the bombs were uploaded"
    poll(lambda: storage.temporary_entries() == [], "the uploads' temporary files removed", seconds=10)
    assert not re.search(r"Traceback|Exception in ASGI", api.log()), api.log()[-5000:]
