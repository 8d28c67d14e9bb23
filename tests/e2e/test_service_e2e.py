"""The whole service on one machine: the REST API (in process), a real Celery worker (a subprocess, on the
local Redis, a queue of its own), a fresh PostgreSQL database migrated by Alembic, a temporary storage
directory; a tiny BERT from upload to a downloaded, loadable model. The fixtures are in conftest.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from app.api.deps import get_run_enqueuer
from app.api.main import create_app
from app.config import Settings
from app.runs.states import RunStatus
from tests.support import TINY_HYPERPARAMETERS

if TYPE_CHECKING:
    from tests.e2e.conftest import Poll, Worker

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it

TERMINAL = tuple(status.value for status in RunStatus if status.is_terminal)
REQUEUE_AFTER_SECONDS = 2  # the worker's sweep sends again what is still queued this long after its send

# The worker tests' tiny run (evaluations at step 0, the baseline, and at the end), with checkpoints.
HYPERPARAMETERS = {**TINY_HYPERPARAMETERS, "checkpoint_every_steps": 3, "keep_checkpoints": 2}


@pytest.fixture
def worker(settings: Settings, start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(settings.model_copy(update={"requeue_after_seconds": REQUEUE_AFTER_SECONDS}))


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


@pytest.mark.timeout(240)
def test_a_run_from_upload_to_downloaded_model(
    settings: Settings,
    worker: Worker,
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    assert_run_ended: Callable[..., Any],
    poll: Poll,
    tmp_path: Path,
) -> None:
    with TestClient(create_app(settings)) as client:
        run_id = submit_run(client, headers, HYPERPARAMETERS)
        run = wait_for_run(client, headers, run_id)
        assert run.get("status") == "succeeded", f"{run}\n--- worker log ---\n{worker.log()[-6000:]}"
        # Ended once, every step's loss, the final model loads, nothing left behind.
        stored = assert_run_ended(run_id, RunStatus.SUCCEEDED, max_steps=HYPERPARAMETERS["max_steps"])

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

        assert stored.output_storage_key is not None
        model = BertForPreTraining.from_pretrained(
            settings.storage_url.removeprefix("file://") + "/" + stored.output_storage_key
        )

        download = client.get(f"/v1/runs/{run_id}/model", headers=headers)
        assert download.status_code == 200, download.text
        # Streamed as it is written: its sha256, computed on the way, comes with the next responses.
        head = client.head(f"/v1/runs/{run_id}/model", headers=headers)
        assert head.headers["x-content-sha256"] == hashlib.sha256(download.content).hexdigest()
        extracted = tmp_path / "downloaded"
        with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:") as tar:
            tar.extractall(extracted, filter="data")
        (model_dir,) = [path for path in extracted.iterdir() if path.is_dir()]
        downloaded = BertForPreTraining.from_pretrained(model_dir)
        assert all(
            (a == b).all()
            for a, b in zip(downloaded.state_dict().values(), model.state_dict().values(), strict=True)
        )

        # And it uploads back, a base model for the next run.
        archive = ("downloaded.tar", download.content)
        again = client.post("/v1/checkpoints", files={"file": archive}, headers=headers)
        assert again.status_code == 201, again.text

        # Estimates: the run has ended, and its ETA with it. The worker analyses its corpus with its settings
        # (the run's prepared data, found in the cache); the estimate of the same body is exact, from this
        # run's own measures (throughput, startup), and within 2x of the time the run took.
        assert run["eta_seconds"] is None
        by_type = {event["type"]: event["data"] for event in events}
        analyzed = {"base_model": run["base_model"], "hyperparameters": HYPERPARAMETERS}
        answer = client.post(f"/v1/corpora/{run['corpus_id']}/analyze", json=analyzed, headers=headers)
        assert answer.status_code == 202, answer.text
        location = answer.headers["Location"]

        def analysed() -> dict[str, Any] | None:
            found: dict[str, Any] = client.get(location, headers=headers).json()
            return found if found["status"] in ("succeeded", "failed") else None

        analysis = poll(analysed, "the corpus analysed", seconds=90, every=0.3)
        assert analysis["status"] == "succeeded", f"{analysis}\n--- worker log ---\n{worker.log()[-6000:]}"
        assert analysis["analysis"]["data_key"] == by_type["data_prepared"]["data_key"]
        assert analysis["analysis"]["train"]["instances"] == by_type["training_started"]["train_instances"]
        body = {
            "base_model": run["base_model"],
            "corpus_id": run["corpus_id"],
            "hyperparameters": HYPERPARAMETERS,
        }
        estimate = client.post("/v1/runs/estimate", json=body, headers=headers).json()
        assert (estimate["exact"], estimate["analysis_id"], estimate["steps"]) == (True, analysis["id"], 6)
        assert estimate["throughput"]["source"] == "measured" and estimate["startup_source"] == "measured"
        assert estimate["queue"] == {"runs": 0, "wait_seconds": 0.0, "workers": 1, "workers_known": True}
        took = (stored.finished_at - stored.started_at).total_seconds()
        assert 0.5 <= estimate["total_seconds"] / took <= 2, (estimate, took)


def test_a_run_whose_message_was_lost_still_runs(
    settings: Settings,
    worker: Worker,
    headers: dict[str, str],
    submit_run: Callable[..., str],
    wait_for_run: Callable[..., dict[str, Any]],
    poll: Poll,
) -> None:
    """The API's send after the commit never reaches the broker: the worker's sweep sends it again."""
    app = create_app(settings)
    app.dependency_overrides[get_run_enqueuer] = lambda: lambda _run_id: None  # the message is lost
    with TestClient(app) as client:
        run_id = submit_run(client, headers, HYPERPARAMETERS)
        run = wait_for_run(client, headers, run_id, lambda run: run["status"] != "queued")
        assert run["status"] in ("preparing", "running", *TERMINAL), run
        # The sweep logs after its commit, which the claim may overtake: wait for the line naming this run.
        # Ids may end in "-" or "_": bounded by what separates them in the line, not by \b.
        line = rf"send again the tasks of runs left queued: (.*, )?{re.escape(run_id)}(,|$)"
        sent_again = re.compile(line, re.M)
        poll(lambda: sent_again.search(worker.log()), "the task sent again by the worker's sweep", seconds=30)
        client.post(f"/v1/runs/{run_id}/cancel", headers=headers)  # no need to train it to the end
        run = wait_for_run(client, headers, run_id)
        assert run["status"] in ("cancelled", "succeeded"), run
