"""The executor end to end, without Celery: claim, a real spawned training process, what gets recorded."""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models import Run, RunCheckpoint, RunEvent, RunMetric
from app.runs import live
from app.runs.schemas import RunError, RunProgress
from app.runs.states import RunStatus
from tests.support import TINY_HYPERPARAMETERS, Factory
from tests.worker import children
from worker import executor
from worker.context import WorkerContext
from worker.executor import execute_run

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it


def _events(factory: Factory, run_id: str) -> list[RunEvent]:
    with factory.session_factory() as session:
        return list(session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)))


def _stream(factory: Factory, run_id: str) -> list[tuple[str, dict]]:
    return [
        (entry.type, entry.json()) for entry in live.read_since(factory.redis, run_id, "0-0", count=10_000)
    ]


def test_a_duplicate_delivery_does_nothing(factory: Factory, worker_context: WorkerContext) -> None:
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x", status=RunStatus.RUNNING
    )
    assert execute_run(run_id, context=worker_context) is None
    assert execute_run("run_that_does_not_exist", context=worker_context) is None
    run = factory.get_run(run_id)
    assert (run.status, run.attempt) == (RunStatus.RUNNING, 0)
    assert _events(factory, run_id) == []


def test_a_missing_input_fails_the_run_before_training(
    factory: Factory, worker_context: WorkerContext, storage
) -> None:
    corpus_id = factory.corpus(b"a b c.\nd e f.\n")
    storage.delete(f"corpora/{corpus_id}/corpus.txt")
    run_id = factory.run(corpus_id=corpus_id, base_model="minilm-l6-h384-uncased")
    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED
    run = factory.get_run(run_id)
    assert run.error == {
        "type": "input_error",
        "message": f"the file of the corpus {corpus_id} is missing from storage; ask the operator",
    }
    assert [event.type for event in _events(factory, run_id)] == ["claimed", "failed"]
    assert _stream(factory, run_id)[-1] == (
        "status",
        {
            "status": "failed",
            "progress": RunProgress().model_dump(),
            "error": RunError.model_validate(run.error).model_dump(),
        },
    )


def test_a_bad_corpus_fails_with_its_line_and_no_traceback(
    factory: Factory, worker_context: WorkerContext, tiny_bert_dir: Path
) -> None:
    corpus_id = factory.corpus(b"First sentence here.\nSecond one here.\n\nThird \xff bad.\nMore text.\n")
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(corpus_id=corpus_id, base_model=f"checkpoint:{checkpoint_id}")

    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED

    run = factory.get_run(run_id)
    assert run.status == RunStatus.FAILED and run.finished_at is not None
    assert run.error is not None and run.error["type"] == "corpus_format_error"
    assert run.error["line"] == 4 and run.error["corpus_id"] == corpus_id
    message = run.error["message"]
    assert message.startswith(f"corpus {corpus_id}, line 4") and "UTF-8" in message
    assert "Traceback" not in message and str(worker_context.storage.local_path("corpora")) not in message
    events = _events(factory, run_id)
    assert [event.type for event in events] == ["claimed", "preparing", "failed"]
    assert events[-1].level == "error" and events[-1].message == message
    assert _stream(factory, run_id)[-1][1]["status"] == "failed"


def test_a_bad_replay_corpus_fails_the_run_naming_it(
    factory: Factory, worker_context: WorkerContext, tiny_bert_dir: Path, tiny_corpus_bytes: bytes
) -> None:
    """The replay corpus travels like the reference corpus: from its row to the training process, and back
    in the run's terms when it cannot be read."""
    corpus_id = factory.corpus(tiny_corpus_bytes)
    replay_id = factory.corpus(b"General text here.\nMore of it.\n\nThird \xff bad.\nMore text.\n")
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=corpus_id,
        base_model=f"checkpoint:{checkpoint_id}",
        replay_corpus_id=replay_id,
        hyperparameters={**TINY_HYPERPARAMETERS, "replay_ratio": 0.25},
    )

    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED

    run = factory.get_run(run_id)
    assert run.error is not None and run.error["type"] == "corpus_format_error"
    assert run.error["corpus_id"] == replay_id and run.error["line"] == 4
    assert run.error["message"].startswith(f"replay corpus {replay_id}, line 4")
    preparing = [event for event in _events(factory, run_id) if event.type == "preparing"]
    assert preparing[0].data["replay_corpus_id"] == replay_id


def test_cancelling_a_running_training_stops_it_with_a_checkpoint(
    factory: Factory,
    worker_context: WorkerContext,
    tiny_bert_dir: Path,
    tiny_corpus_bytes: bytes,
) -> None:
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(tiny_corpus_bytes),
        base_model=f"checkpoint:{checkpoint_id}",
        # max_runtime_seconds: should the canceller never act, the run ends and the test fails, not hangs.
        hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 100_000, "max_runtime_seconds": 300},
    )
    seen: dict[str, object] = {}

    def cancel_once_training() -> None:
        """What the API does for a running run: flag it and move it to cancelling."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run = factory.get_run(run_id)
            if run.status == RunStatus.RUNNING and run.progress.get("step", 0) >= 2:
                seen["step"] = run.progress["step"]
                with session_scope(factory.session_factory) as session:
                    session.execute(
                        update(Run)
                        .where(Run.id == run_id)
                        .values(cancel_requested=True, status=RunStatus.CANCELLING)
                    )
                return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_once_training)
    canceller.start()
    status = execute_run(run_id, context=worker_context)
    canceller.join()

    assert "step" in seen, "the run never reported training progress"
    assert status == RunStatus.CANCELLED
    run = factory.get_run(run_id)
    assert run.status == RunStatus.CANCELLED and run.error is None and run.output_storage_key is None
    assert run.baseline["eval"]["masked_lm_loss"] > 0 and run.latest["train"]["loss"] > 0
    assert run.progress["total_steps"] == 100_000 and run.progress["step"] < 100_000
    with factory.session_factory() as session:
        checkpoints = session.scalars(select(RunCheckpoint).where(RunCheckpoint.run_id == run_id)).all()
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    assert checkpoint.step >= 2 and len(checkpoint.sha256) == 64 and checkpoint.size_bytes > 0
    assert checkpoint.storage_key == f"runs/{run_id}/checkpoints/checkpoint-{checkpoint.step}"
    assert (worker_context.storage.local_path(checkpoint.storage_key) / "model.safetensors").is_file()
    types = [event.type for event in _events(factory, run_id)]
    assert types[:4] == ["claimed", "preparing", "data_prepared", "training_started"]
    assert types[-2:] == ["checkpoint_saved", "cancelled"] and "evaluation" in types
    stream = _stream(factory, run_id)
    assert {type for type, _ in stream} == {"status", "event", "metric", "checkpoint"}
    assert stream[-1][1]["status"] == "cancelled"


def test_cancelling_while_preparing_ends_the_training_process(
    factory: Factory, worker_context: WorkerContext, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A training process that is still preparing when the cancel arrives, however fast the machine.
    monkeypatch.setattr("worker.executor.run_training_job", children.preparing_forever)
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model=f"checkpoint:{checkpoint_id}"
    )

    def cancel_once_claimed() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and factory.get_run(run_id).status != RunStatus.PREPARING:
            time.sleep(0.02)
        with session_scope(factory.session_factory) as session:
            session.execute(
                update(Run).where(Run.id == run_id).values(cancel_requested=True, status=RunStatus.CANCELLING)
            )

    canceller = threading.Thread(target=cancel_once_claimed)
    canceller.start()
    assert execute_run(run_id, context=worker_context) == RunStatus.CANCELLED
    canceller.join()
    run = factory.get_run(run_id)
    assert run.status == RunStatus.CANCELLED and run.error is None
    assert [event.type for event in _events(factory, run_id)][-1] == "cancelled"
    assert _events(factory, run_id)[-1].message == "cancelled while preparing the data"


def test_a_supervisor_that_cannot_renew_its_lease_gives_the_run_up_before_the_reaper_takes_it(
    factory: Factory,
    worker_context: WorkerContext,
    tiny_bert_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database becomes unreachable once training is being prepared: after LEASE_MARGIN of the
    heartbeat timeout the supervisor stops its training process and writes nothing, so that when the
    reaper hands the run to another attempt, no one else is still training it."""
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr("worker.executor.run_training_job", children.preparing_forever)
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model=f"checkpoint:{checkpoint_id}"
    )
    reachable = factory.session_factory
    cut = threading.Event()

    def session_factory():  # the database, until the training process has started
        if cut.is_set():
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return reachable()

    original_supervise = executor.supervise

    def supervise_then_cut(job, recorder, context):  # type: ignore[no-untyped-def]
        cut.set()
        return original_supervise(job, recorder, context)

    monkeypatch.setattr(executor, "supervise", supervise_then_cut)
    worker_context.session_factory = session_factory
    worker_context.stop_grace_seconds = 0.5  # the stand-in ignores the stop event: terminated after this
    worker_context.settings = worker_context.settings.model_copy(update={"heartbeat_timeout_seconds": 2})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="worker.executor"):
        assert execute_run(run_id, context=worker_context) is None
    assert time.monotonic() - started < 60  # it did not wait for the database to come back
    assert "the database has been unreachable too long to keep its lease" in caplog.text
    run = factory.get_run(run_id)
    assert run.status == RunStatus.PREPARING and run.attempt == 1  # nothing written: the reaper's to take


def test_a_killed_training_is_retried_from_its_checkpoint_then_fails_and_its_owner_resumes_it(
    factory: Factory,
    worker_context: WorkerContext,
    tiny_bert_dir: Path,
    tiny_corpus_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt's training process is killed at its seventh step: attempt 1 at step 7 (checkpoints 3
    and 6), attempt 2 resumes from 6 and dies at 13 (checkpoints 9 and 12); with MAX_ATTEMPTS 2 the run
    fails saying how to resume it, and its owner's resume trains it to the end from step 12."""
    from app.models import Tenant
    from app.runs import service
    from app.runs.live import LivePublisher

    monkeypatch.setattr("worker.executor.run_training_job", children.killed_on_batch_7)
    sent: list[str] = []
    worker_context.enqueue = sent.append
    worker_context.settings = worker_context.settings.model_copy(update={"max_attempts": 2})
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(tiny_corpus_bytes),
        base_model=f"checkpoint:{checkpoint_id}",
        hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 16, "checkpoint_every_steps": 3},
    )

    assert execute_run(run_id, context=worker_context) == RunStatus.QUEUED
    run = factory.get_run(run_id)
    assert (run.status, run.attempt, run.error) == (RunStatus.QUEUED, 1, None) and sent == [run_id]
    retrying = _events(factory, run_id)[-1]
    assert (retrying.type, retrying.level) == ("retrying", "warning")
    # "after step N": the last step it reported, if a report got out (progress is throttled, and a SIGKILL
    # loses what is still buffered); the checkpoint is read on disk.
    assert re.fullmatch(
        r"attempt 1 of 2 was interrupted( after step [1-6])?: the training process was killed by signal "
        r"SIGKILL \(often the host's out-of-memory killer\) before finishing; attempt 2 of 2 resumes from "
        r"the checkpoint of step 6",
        retrying.message,
    ), retrying.message
    assert (
        retrying.data["reason"]["type"] == "training_process_died" and retrying.data["checkpoint_step"] == 6
    )

    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED
    run = factory.get_run(run_id)
    assert run.attempt == 2 and run.error is not None and run.error["type"] == "training_process_died"
    assert run.error["exit_code"] == -signal.SIGKILL and run.error["checkpoint_step"] == 12
    assert re.match(r"attempt 2 of 2, the last, was interrupted( after step \d+)?: ", run.error["message"])
    assert run.error["message"].endswith(
        f"before finishing; its last checkpoint (step 12) is kept: POST /v1/runs/{run_id}/resume continues "
        "from it"
    )
    started = [event for event in _events(factory, run_id) if event.type == "training_started"]
    assert [(event.data["attempt"], event.data["resumed_from_step"]) for event in started] == [
        (1, None),
        (2, 6),
    ]
    # The live stream tells watchers to drop what attempt 1 published past step 6.
    rewinds = [data for type, data in _stream(factory, run_id) if type == "rewind"]
    assert rewinds == [{"step": 6, "attempt": 2}]

    # Its owner resumes it: the next attempt restores optimizer, schedule and data position from step 12.
    monkeypatch.undo()
    with session_scope(factory.session_factory) as session:
        tenant = session.get(Tenant, factory.tenant_id)
        assert tenant is not None
        service.resume_run(
            session,
            worker_context.storage,
            tenant,
            run_id,
            enqueue=sent.append,
            publisher=LivePublisher(None),
        )
    assert sent == [run_id, run_id]
    assert execute_run(run_id, context=worker_context) == RunStatus.SUCCEEDED
    run = factory.get_run(run_id)
    assert (run.attempt, run.resumed_after_attempt, run.error, run.progress["step"]) == (3, 2, None, 16)
    started = [event for event in _events(factory, run_id) if event.type == "training_started"]
    assert started[-1].data["resumed_from_step"] == 12
    # One point per step, every step of the curve: what the interrupted attempts left past their
    # checkpoints was superseded by the attempts that resumed from them.
    with factory.session_factory() as session:
        steps = session.scalars(
            select(RunMetric.step).where(
                RunMetric.run_id == run_id, RunMetric.split == "train", RunMetric.name == "loss"
            )
        ).all()
    assert sorted(steps) == list(range(1, 17))


def test_a_diverging_run_fails_clearly_and_its_last_good_checkpoint_continues(
    factory: Factory,
    worker_context: WorkerContext,
    tiny_bert_dir: Path,
    tiny_corpus_bytes: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.base_models.service import resolve_base_model
    from app.models import Tenant
    from worker.pretraining.base_model import load_base_model, non_finite_parameter

    # The real training process, with NaN losses from the third batch on.
    monkeypatch.setattr("worker.executor.run_training_job", children.diverging_from_step_3)
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(tiny_corpus_bytes),
        base_model=f"checkpoint:{checkpoint_id}",
        hyperparameters={
            **TINY_HYPERPARAMETERS,
            "max_steps": 20,
            "checkpoint_every_steps": 2,
            "max_nonfinite_steps": 2,
        },
    )
    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED

    run = factory.get_run(run_id)
    assert run.error is not None and (run.error["type"], run.error["step"]) == ("non_finite_loss", 4)
    assert RunError.model_validate(run.error).step == 4  # what REST and the live stream show
    assert "2 steps in a row, steps 3 to 4: lower learning_rate" in run.error["message"]
    assert run.error["message"].endswith("the checkpoint of step 2 is intact")
    assert run.progress["skipped_steps"] == 2 and run.output_storage_key is None
    assert run.latest["train"]["loss"] is None and run.latest["train"]["non_finite"]["loss"] == "nan"
    events = _events(factory, run_id)
    skipped = [event for event in events if event.data.get("code") == "step_skipped"]
    assert [(event.level, event.data["step"], event.data["consecutive"]) for event in skipped] == [
        ("warning", 3, 1),
        ("warning", 4, 2),
    ]
    assert skipped[0].message == "step 3 was not applied: its loss was not finite (1 in a row)"
    assert events[-1].type == "failed"
    # The newest checkpoint is the last good step; the run continues from it as run:<id>@2.
    with factory.session_factory() as session:
        steps = session.scalars(select(RunCheckpoint.step).where(RunCheckpoint.run_id == run_id)).all()
        tenant = session.get(Tenant, factory.tenant_id)
        assert steps == [2] and tenant is not None
        base = resolve_base_model(session, tenant, f"run:{run_id}@2", storage=worker_context.storage)
    assert base.local_path is not None
    assert non_finite_parameter(load_base_model(base.local_path).model) is None


def test_the_corpus_warnings_are_the_runs_warnings_and_events(
    factory: Factory, worker_context: WorkerContext, tiny_bert_dir: Path, blank_line_corpus: Path
) -> None:
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(blank_line_corpus.read_bytes()),
        base_model=f"checkpoint:{checkpoint_id}",
        hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 2},
    )
    assert execute_run(run_id, context=worker_context) == RunStatus.SUCCEEDED
    run = factory.get_run(run_id)
    codes = [warning["code"] for warning in run.warnings]
    assert "blank_line_after_every_sentence" in codes and "is_next_share" in codes
    blank = run.warnings[codes.index("blank_line_after_every_sentence")]
    assert blank["count"] > 0 and blank["first_line"] == 1
    events = [event for event in _events(factory, run_id) if event.type == "warning"]
    assert [(event.data["code"], event.message) for event in events] == [
        (warning["code"], warning["message"]) for warning in run.warnings
    ]
    assert all(event.level == "warning" for event in events)


@pytest.mark.slow  # a training in 2 processes (torchrun's launcher, gloo): about 15 s on 2 busy cores
def test_a_run_on_two_devices_trains_in_two_processes_and_records_once(
    factory: Factory, worker_context: WorkerContext, tiny_bert_dir: Path, tiny_corpus_bytes: bytes
) -> None:
    """resources.devices 2: the training child launches 2 DDP processes; rank 0's records reach the
    database once each, and the run completes with its model."""
    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(tiny_corpus_bytes),
        base_model=f"checkpoint:{checkpoint_id}",
        resources={"class": "cpu", "devices": 2},
    )

    assert execute_run(run_id, context=worker_context) == RunStatus.SUCCEEDED

    run = factory.get_run(run_id)
    assert run.output_storage_key is not None and run.progress["step"] == 6
    with factory.session_factory() as session:
        steps = session.scalars(
            select(RunMetric.step).where(RunMetric.run_id == run_id, RunMetric.split == "train")
        ).all()
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]
    types = [event.type for event in _events(factory, run_id)]
    assert types.count("training_started") == 1 and types.count("checkpoint_saved") == 1  # rank 0's only
