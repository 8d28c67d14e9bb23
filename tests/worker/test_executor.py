"""The executor end to end, without Celery: claim, a real spawned training process, what gets recorded."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models import Run, RunCheckpoint, RunEvent
from app.runs import live
from app.runs.schemas import RunProgress
from app.runs.states import RunStatus
from tests.support import TINY_HYPERPARAMETERS, Factory
from tests.worker import children
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
        {"status": "failed", "progress": RunProgress().model_dump(), "error": run.error},
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


def test_a_training_process_killed_without_a_word_fails_the_run_clearly(
    factory: Factory,
    worker_context: WorkerContext,
    tiny_bert_dir: Path,
    tiny_corpus_bytes: bytes,
) -> None:
    import psutil

    checkpoint_id = factory.checkpoint(tiny_bert_dir)
    run_id = factory.run(
        corpus_id=factory.corpus(tiny_corpus_bytes),
        base_model=f"checkpoint:{checkpoint_id}",
        # max_runtime_seconds: should the killer never act, the run ends and the test fails, not hangs.
        hyperparameters={**TINY_HYPERPARAMETERS, "max_steps": 100_000, "max_runtime_seconds": 300},
    )

    def kill_once_training() -> None:
        """What the out-of-memory killer does: SIGKILL, no goodbye."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if factory.get_run(run_id).progress.get("step", 0) >= 1:
                for child in psutil.Process().children():
                    with contextlib.suppress(psutil.Error):  # a process ending meanwhile
                        if "spawn_main" in " ".join(child.cmdline()):  # not billiard's semaphore tracker
                            child.send_signal(signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_training)
    killer.start()
    assert execute_run(run_id, context=worker_context) == RunStatus.FAILED
    killer.join()
    run = factory.get_run(run_id)
    assert run.error is not None and run.error["type"] == "training_process_died"
    assert "SIGKILL" in run.error["message"] and run.error["exit_code"] == -signal.SIGKILL
