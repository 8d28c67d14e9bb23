"""Resource classes with real workers: a run asking for a class no live worker serves stays queued and
says why (its JSON, one event); a worker of that class started, two runs train at the same time, each on
the worker of its own class (pinned with ``--gpus``: CUDA_VISIBLE_DEVICES of its training process), each
writing only in its own run directory. The fixtures are in conftest.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.runs.states import RunStatus
from app.storage import LocalStorage
from app.storage.keys import run_directory_key
from tests.support import TINY_HYPERPARAMETERS
from worker.pretraining.layout import RunLayout, checkpoint_step

if TYPE_CHECKING:
    from tests.e2e.conftest import Poll, Worker

pytestmark = pytest.mark.slow  # trains two tiny BERTs: `pytest -m "not slow"` skips it

# Long enough to be still training when the other run starts; both are cancelled once seen together.
HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "max_steps": 100_000, "logging_every_steps": 10}
# The housekeeping period (the requeue delay bounds it): the waiting run's event comes within seconds.
REQUEUE_AFTER_SECONDS = 2


def _events(client: TestClient, headers: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/runs/{run_id}/events", params={"limit": 100}, headers=headers)
    return list(response.json()["data"])


def _claimed_runs(worker: Worker) -> list[str]:
    """The runs ``worker`` claimed, in order (its log)."""
    return re.findall(r"run (\S+) claimed by \S+ \(attempt \d+\)", worker.log())


@pytest.mark.timeout(300)
def test_runs_of_two_classes_train_at_once_on_their_own_workers(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    assert_run_ended: Callable[..., Any],
    storage: LocalStorage,
    poll: Poll,
) -> None:
    settings = settings.model_copy(update={"requeue_after_seconds": REQUEUE_AFTER_SECONDS})
    cpu_queue, gpu_queue = settings.training_queue_for("cpu"), settings.training_queue_for("gpu")
    cpu_worker = start_worker(settings, ["--queues", cpu_queue])
    with TestClient(create_app(settings)) as client:  # its housekeeping notes the runs that wait
        cpu_run = submit_run(client, headers, HYPERPARAMETERS)  # no resources: the default class, cpu
        first = client.get(f"/v1/runs/{cpu_run}", headers=headers).json()
        assert (first["resources"], first["queue"]) == ({"class": "cpu", "devices": 1}, cpu_queue)
        body = {
            "base_model": first["base_model"],
            "corpus_id": first["corpus_id"],
            "hyperparameters": HYPERPARAMETERS,
            "resources": {"class": "gpu", "devices": 1},
        }
        response = client.post("/v1/runs", json=body, headers=headers)
        assert response.status_code == 201, response.text
        gpu_run = response.json()["id"]

        # No worker serves training.gpu: the run stays queued and says why, once, while the other trains.
        reason = f"no worker serves {gpu_queue}; start one with `bertpt worker --queues {gpu_queue} --gpus 0`"
        waiting = poll(
            lambda: [e for e in _events(client, headers, gpu_run) if e["type"] == "waiting_for_worker"],
            "the gpu run's waiting event recorded",
            seconds=60,
        )
        assert waiting[0]["data"]["reason"] == reason and waiting[0]["data"]["queue"] == gpu_queue
        shown = client.get(f"/v1/runs/{gpu_run}", headers=headers).json()
        assert (shown["status"], shown["queue"], shown["waiting_reason"]) == ("queued", gpu_queue, reason)
        wait_for_run(client, headers, cpu_run, done=lambda run: run["status"] == "running")

        # A worker of the gpu class, pinned to device 0: both train at once, each on its own worker.
        gpu_worker = start_worker(settings, ["--queues", gpu_queue, "--gpus", "0"])

        def both_running() -> list[dict[str, Any]] | None:
            runs = [client.get(f"/v1/runs/{run_id}", headers=headers).json() for run_id in (cpu_run, gpu_run)]
            return runs if all(run["status"] == "running" for run in runs) else None

        running = poll(both_running, "both runs running at once", seconds=120, every=0.3)
        assert running[1]["waiting_reason"] is None
        assert len(cpu_worker.claims) == len(gpu_worker.claims) == 1
        assert _claimed_runs(cpu_worker) == [cpu_run] and _claimed_runs(gpu_worker) == [gpu_run]

        # Each training process: its worker's devices (CUDA_VISIBLE_DEVICES from --gpus, inherited).
        (cpu_training,) = cpu_worker.training_processes()
        (gpu_training,) = gpu_worker.training_processes()
        assert "CUDA_VISIBLE_DEVICES" not in cpu_training.environ()
        assert gpu_training.environ()["CUDA_VISIBLE_DEVICES"] == "0"

        for run_id in (cpu_run, gpu_run):
            client.post(f"/v1/runs/{run_id}/cancel", headers=headers)
        for run_id in (cpu_run, gpu_run):
            assert wait_for_run(client, headers, run_id)["status"] == "cancelled"
        claimed = {
            run_id: [
                e["data"]["worker_id"] for e in _events(client, headers, run_id) if e["type"] == "claimed"
            ]
            for run_id in (cpu_run, gpu_run)
        }
        assert claimed == {cpu_run: cpu_worker.claims, gpu_run: gpu_worker.claims}
        events = {
            run_id: [e["type"] for e in _events(client, headers, run_id)] for run_id in (cpu_run, gpu_run)
        }
        assert (
            events[gpu_run].count("waiting_for_worker") == 1 and "waiting_for_worker" not in events[cpu_run]
        )
        checkpoints = {
            run_id: [c["step"] for c in client.get(f"/v1/runs/{run_id}/checkpoints", headers=headers).json()]
            for run_id in (cpu_run, gpu_run)
        }
    # Each run's files in its own directory: exactly its checkpoints there (each cancelled run saved one),
    # and its metrics (assert_run_ended: every stored point is the last one its metrics.jsonl has).
    runs_root = storage.local_path(run_directory_key(cpu_run)).parent
    assert sorted(path.name for path in runs_root.iterdir()) == sorted([cpu_run, gpu_run])
    for run_id in (cpu_run, gpu_run):
        assert_run_ended(run_id, RunStatus.CANCELLED)  # no process or temporary file left of either
        layout = RunLayout(storage.local_path(run_directory_key(run_id)))
        on_disk = sorted(
            step for path in layout.checkpoints.iterdir() if (step := checkpoint_step(path.name))
        )
        assert on_disk == checkpoints[run_id] and on_disk, (run_id, on_disk)


@pytest.mark.timeout(300)
def test_a_run_on_two_devices_trains_under_a_real_worker(
    settings: Settings,
    start_worker: Callable[..., Worker],
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    assert_run_ended: Callable[..., Any],
) -> None:
    """resources.devices 2 through the API to a real `bertpt worker`: its training child, started by a
    Celery pool process, launches the 2 DDP ranks (a daemonic pool process's child could not, before
    worker.training_process.prepare_to_spawn) and the run succeeds, recorded once."""
    start_worker(settings)
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, TINY_HYPERPARAMETERS, resources={"class": "cpu", "devices": 2})
        run = wait_for_run(client, headers, run_id)
        assert run["status"] == RunStatus.SUCCEEDED, run["error"]
        started = [e for e in _events(client, headers, run_id) if e["type"] == "training_started"]
    assert len(started) == 1
    assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=TINY_HYPERPARAMETERS["max_steps"])
