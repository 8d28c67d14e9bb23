"""The whole service on one machine: the REST API (in process), a real Celery worker (a subprocess, on the
local Redis, a queue of its own), a fresh PostgreSQL database migrated by Alembic, a temporary storage
directory; a tiny BERT from upload to a downloaded, loadable model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import get_run_enqueuer
from app.api.main import create_app
from app.config import Settings
from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database
from app.runs.states import RunStatus
from app.tenants.service import create_api_key, create_tenant
from tests.support import REDIS_URL, TINY_HYPERPARAMETERS, directory_files, tar_gz

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_READY_SECONDS = 60
RUN_SECONDS = 150
REQUEUE_AFTER_SECONDS = 2  # the worker's sweep sends again what is still queued this long after its send
TERMINAL = tuple(status.value for status in RunStatus if status.is_terminal)

# The worker tests' tiny run (evaluations at step 0, the baseline, and at the end), with checkpoints.
HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "checkpoint_every_steps": 3}


class Worker:
    """``bertpt worker`` in its own session (process group), logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-c", "from worker.service_cli import worker_command; worker_command()"]
        self.process = subprocess.Popen(
            [*command, "--loglevel", "INFO", "--hostname", f"e2e-{secrets.token_hex(3)}@%h"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            time.sleep(0.2)
        pytest.fail(f"the worker was not ready in {WORKER_READY_SECONDS} s:\n{self.log()[-5000:]}")

    def stop(self) -> None:
        """Cold shutdown of the worker's process group: the pool and any training process with it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # what it left in its group (a training process)
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture
def database_url(empty_database: Callable[[], AbstractContextManager[str]]) -> Iterator[str]:
    """A database of the test's own, migrated: the worker's sweep looks at every tenant's runs, and what
    these tests commit must not reach the tests that count rows."""
    with empty_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        storage_url=f"file://{tmp_path / 'storage'}",
        training_queue=f"training-e2e-{secrets.token_hex(4)}",
        hf_hub_offline=True,
        max_upload_bytes=64 << 20,
    )


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[Worker]:
    env = {
        **os.environ,
        "BERTPT_ENV": settings.env,
        "BERTPT_DATABASE_URL": settings.database_url,
        "BERTPT_REDIS_URL": settings.redis_url,
        "BERTPT_STORAGE_URL": settings.storage_url,
        "BERTPT_TRAINING_QUEUE": settings.training_queue,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "BERTPT_REQUEUE_AFTER_SECONDS": str(REQUEUE_AFTER_SECONDS),
    }
    started = Worker(env, tmp_path / "worker.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture
def api_key(settings: Settings) -> Iterator[str]:
    engine = create_db_engine(settings.database_url)
    with session_scope(create_session_factory(engine)) as session:
        tenant = create_tenant(session, f"e2e-{secrets.token_hex(4)}")
        key = create_api_key(session, tenant).key
    engine.dispose()
    yield key


def _sse_events(body: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in body.splitlines():
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    if current:
        events.append(current)
    return events


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_from_upload_to_downloaded_model(
    settings: Settings,
    worker: Worker,
    api_key: str,
    small_corpus: Path,
    tiny_bert_dir: Path,
    tmp_path: Path,
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings)) as client:
        run_id = _submit(client, headers, small_corpus, tiny_bert_dir)
        run = _wait_for(client, headers, run_id, lambda run: run["status"] in TERMINAL, worker)
        assert run.get("status") == "succeeded", f"{run}\n--- worker log ---\n{worker.log()[-6000:]}"

        assert run["error"] is None and run["attempt"] == 1
        assert run["progress"]["step"] == run["progress"]["total_steps"] == 6
        assert run["progress"]["tokens_seen"] > 0
        assert run["baseline"]["eval"]["masked_lm_loss"] > 0
        assert run["latest"]["eval"]["step"] == 6 and run["latest"]["train"]["step"] == 6

        metrics = client.get(
            f"/v1/runs/{run_id}/metrics", params={"names": "loss,masked_lm_loss"}, headers=headers
        )
        series = {(s["split"], s["name"]): s["points"] for s in metrics.json()["series"]}
        assert [step for step, _ in series[("train", "loss")]] == [1, 2, 3, 4, 5, 6]
        assert [step for step, _ in series[("eval", "masked_lm_loss")]] == [0, 6]

        events = client.get(f"/v1/runs/{run_id}/events", params={"limit": 100}, headers=headers).json()[
            "data"
        ]
        types = [event["type"] for event in events]
        worker_types = types[types.index("claimed") :]  # the API records its own events first ("queued")
        assert worker_types[:4] == ["claimed", "preparing", "data_prepared", "training_started"]
        assert types[-1] == "succeeded" and types.count("evaluation") == 2 and "checkpoint_saved" in types

        checkpoints = client.get(f"/v1/runs/{run_id}/checkpoints", headers=headers).json()
        assert [checkpoint["step"] for checkpoint in checkpoints] == [3, 6]

        stream = client.get(f"/v1/runs/{run_id}/stream", headers=headers)
        assert stream.status_code == 200
        sse = _sse_events(stream.text)
        assert {event.get("event") for event in sse} == {"status", "event", "metric", "checkpoint"}
        assert sse[-1]["event"] == "status" and json.loads(sse[-1]["data"])["status"] == "succeeded"

        # The final model, where the run row says it is.
        from transformers import BertForPreTraining

        stored = settings.storage_url.removeprefix("file://") + "/" + _output_storage_key(settings, run_id)
        model = BertForPreTraining.from_pretrained(stored)
        assert model.config.hidden_size == 32

        download = client.get(f"/v1/runs/{run_id}/model", headers=headers)
        assert download.status_code == 200, download.text
        assert download.headers["x-content-sha256"] == hashlib.sha256(download.content).hexdigest()
        extracted = tmp_path / "downloaded"
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
            tar.extractall(extracted, filter="data")
        (model_dir,) = [path for path in extracted.iterdir() if path.is_dir()]
        downloaded = BertForPreTraining.from_pretrained(model_dir)
        assert all(
            (a == b).all()
            for a, b in zip(downloaded.state_dict().values(), model.state_dict().values(), strict=True)
        )


def test_a_run_whose_message_was_lost_still_runs(
    settings: Settings,
    worker: Worker,
    api_key: str,
    small_corpus: Path,
    tiny_bert_dir: Path,
) -> None:
    """The API's send after the commit never reaches the broker: the worker's sweep sends it again."""
    headers = {"Authorization": f"Bearer {api_key}"}
    app = create_app(settings)
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda _run_id: None  # the message is lost
    with TestClient(app) as client:
        run_id = _submit(client, headers, small_corpus, tiny_bert_dir)
        run = _wait_for(client, headers, run_id, lambda run: run["status"] != "queued", worker)
        assert run["status"] in ("preparing", "running", *TERMINAL), run
        # The sweep logs after its commit, which the claim may overtake: wait for the line naming this run.
        sent_again = re.compile(
            rf"sent the task of \d+ run\(s\) again, still queued 0:00:0{REQUEUE_AFTER_SECONDS} after their "
            rf"last send: .*\b{re.escape(run_id)}\b"
        )
        deadline = time.monotonic() + 30
        while not sent_again.search(worker.log()):
            assert time.monotonic() < deadline, worker.log()[-5000:]
            time.sleep(0.2)
        client.post(f"/v1/runs/{run_id}/cancel", headers=headers)  # no need to train it to the end
        run = _wait_for(client, headers, run_id, lambda run: run["status"] in TERMINAL, worker)
        assert run["status"] in ("cancelled", "succeeded"), run


def _submit(client: TestClient, headers: dict[str, str], corpus: Path, checkpoint_dir: Path) -> str:
    """Upload the tiny checkpoint and the corpus, submit a run on them; the run's id."""
    archive = tar_gz(directory_files(checkpoint_dir, folder="tiny-bert"))
    response = client.post("/v1/checkpoints", files={"file": ("tiny-bert.tar.gz", archive)}, headers=headers)
    assert response.status_code == 201, response.text
    checkpoint_id = response.json()["id"]
    response = client.post("/v1/corpora", files={"file": ("docs.txt", corpus.read_bytes())}, headers=headers)
    assert response.status_code in (200, 201), response.text
    body = {
        "name": "e2e",
        "base_model": f"checkpoint:{checkpoint_id}",
        "corpus_id": response.json()["id"],
        "hyperparameters": HYPERPARAMETERS,
    }
    response = client.post("/v1/runs", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait_for(
    client: TestClient,
    headers: dict[str, str],
    run_id: str,
    done: Callable[[dict[str, Any]], bool],
    worker: Worker,
) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_SECONDS
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}", headers=headers).json()
        if done(run):
            return run
        time.sleep(0.5)
    log = worker.log()[-6000:]
    pytest.fail(f"run {run_id} still {run.get('status')} after {RUN_SECONDS} s\n--- worker log ---\n{log}")


def _output_storage_key(settings: Settings, run_id: str) -> str:
    from app.models import Run

    engine = create_db_engine(settings.database_url)
    try:
        with create_session_factory(engine)() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.output_storage_key is not None
            return run.output_storage_key
    finally:
        engine.dispose()
