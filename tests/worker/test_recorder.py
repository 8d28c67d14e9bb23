"""The supervisor's recorder, directly: typed records in, rows and live messages out, in that order;
fenced by the attempt; a database outage delays the writes without losing them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import RunCheckpoint, RunEvent, RunMetric
from app.runs import lifecycle
from app.runs.live import LiveMessage, StatusMessage
from app.runs.schemas import RunCheckpointPublic, RunEventPublic, RunPublic
from app.runs.states import RunStatus, Trigger
from tests.support import Factory
from worker import executor
from worker.context import WorkerContext
from worker.pretraining.layout import RunLayout
from worker.pretraining.records import (
    AddedToken,
    CheckpointSaved,
    EvalMetrics,
    LogLine,
    MetricsRecord,
    PreparedDataSummary,
    Progress,
    RunWarning,
    SelectedCheckpoint,
    SplitSummary,
    StoppedEarly,
    TokenizationStats,
    TrainingResult,
    TrainingStarted,
    TrainMetrics,
    VocabularyExtension,
)
from worker.recorder import RunRecorder, directory_digest

SPLIT = SplitSummary(
    documents=10,
    static_masks=False,
    instances=40,
    tokens=2000,
    shards=["train-00000.parquet"],
    is_next_share=0.5,
    mean_length=50.0,
    short_target_share=0.1,
    truncated_pairs=3,
    masked_share=0.15,
    unk_rate=0.0,
)
WARNING = RunWarning(code="newly_initialized_parameters", message="heads are new", parameters=["cls.x"])
STARTED = TrainingStarted(
    step=0,
    max_steps=4,
    resumed_from_step=None,
    train_instances=40,
    eval_splits={"eval": 6},
    precision="fp32",
    device="cpu",
    data=PreparedDataSummary(data_key="k1", corpus={"documents": 12}, splits={"train": SPLIT, "eval": SPLIT}),
    warnings=[WARNING],
)
BASELINE = MetricsRecord(
    split="eval", step=0, metrics=EvalMetrics(masked_lm_loss=8.0, masked_lm_accuracy=0.01, perplexity=2981.0)
)
TRAIN = MetricsRecord(
    split="train",
    step=2,
    metrics=TrainMetrics(
        loss=7.5,
        learning_rate=1e-3,
        tokens_per_second=100.0,
        samples_per_second=2.5,
        mfu=0.31,
        samples_seen=16,
        epoch=0.4,
    ),
)


class RecordingPublisher:
    def __init__(self) -> None:
        self.messages: list[LiveMessage] = []

    def publish(self, run_id: str, message: LiveMessage) -> None:
        self.messages.append(message)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recorder(
    factory: Factory, run_dir: Path, *, session_factory: Callable[[], Session] | None = None
) -> tuple[RunRecorder, RecordingPublisher, Clock]:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    with session_scope(factory.session_factory) as session:
        claimed = lifecycle.claim_run(session, run_id, "w")
        assert claimed is not None
        publisher, clock = RecordingPublisher(), Clock()
        recorder = RunRecorder(
            claimed, session_factory or factory.session_factory, publisher, run_dir=run_dir, clock=clock
        )
        recorder.restore(session)
    return recorder, publisher, clock


def _checkpoint(run_dir: Path, step: int) -> CheckpointSaved:
    path = RunLayout(run_dir).checkpoint(step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    return CheckpointSaved(
        step=step, path=path, metrics={"train": TRAIN.metrics}, tokens_seen=812, kept_steps=[step]
    )


def _rows(factory: Factory, run_id: str, model: Any) -> list[Any]:
    with factory.session_factory() as session:
        return list(session.scalars(select(model).where(model.run_id == run_id)))


def test_records_become_rows_then_messages(factory: Factory, tmp_path: Path) -> None:
    recorder, publisher, clock = _recorder(factory, tmp_path / "run")
    for record in (STARTED, BASELINE, Progress(step=0, max_steps=4), LogLine(message="hello")):
        recorder.handle(record)
    clock.now += 10
    recorder.handle(Progress(step=2, max_steps=4))
    recorder.handle(TRAIN)
    recorder.handle(_checkpoint(tmp_path / "run", 2))
    beat = recorder.flush()
    assert beat.owned and not beat.cancel_requested

    run = factory.get_run(recorder.run_id)
    assert run.status == RunStatus.RUNNING  # training started: preparing -> running
    assert run.progress == {
        "step": 2,
        "total_steps": 4,
        "eta_seconds": 10.0,
        "epoch": 0.4,
        "tokens_per_second": 100.0,
        "samples_per_second": 2.5,
        "mfu": 0.31,
        "tokens_seen": 812,
    }
    assert run.baseline == {"eval": {**BASELINE.metrics.values(), "step": 0}}
    assert run.latest["train"] == {**TRAIN.metrics.values(), "step": 2}
    assert run.warnings == [WARNING.model_dump(exclude_none=True)]
    events = [event.type for event in sorted(_rows(factory, run.id, RunEvent), key=lambda e: e.id)]
    assert events == ["data_prepared", "training_started", "warning", "evaluation", "checkpoint_saved"]
    points = {(p.split, p.name, p.step) for p in _rows(factory, run.id, RunMetric)}
    assert ("eval", "masked_lm_loss", 0) in points and ("train", "loss", 2) in points
    (checkpoint,) = _rows(factory, run.id, RunCheckpoint)
    assert checkpoint.storage_key == f"runs/{run.id}/checkpoints/checkpoint-2"
    assert (checkpoint.size_bytes, checkpoint.sha256) == directory_digest(
        tmp_path / "run/checkpoints/checkpoint-2"
    )
    assert checkpoint.metrics["train"]["loss"] == 7.5

    # The messages follow the rows, in arrival order, and end with the new status and progress.
    kinds = [type(message).__name__ for message in publisher.messages]
    assert kinds == [
        "RunEventPublic",  # data_prepared
        "RunEventPublic",  # training_started
        "RunEventPublic",  # warning
        "MetricsRecord",
        "RunEventPublic",  # evaluation
        "MetricsRecord",
        "RunCheckpointPublic",
        "RunEventPublic",  # checkpoint_saved
        "StatusMessage",
    ]
    status = publisher.messages[-1]
    assert isinstance(status, StatusMessage) and status.status == RunStatus.RUNNING
    assert status.progress.step == 2
    assert (
        isinstance(publisher.messages[6], RunCheckpointPublic)
        and publisher.messages[6].sha256 == checkpoint.sha256
    )
    assert (
        isinstance(publisher.messages[0], RunEventPublic) and publisher.messages[0].data["data_key"] == "k1"
    )

    assert recorder.finish(Trigger.SUCCEED, "done", data={"steps": 4}, output_storage_key="runs/x/model")
    run = factory.get_run(recorder.run_id)
    assert (run.status, run.output_storage_key, run.error) == (RunStatus.SUCCEEDED, "runs/x/model", None)
    last = publisher.messages[-1]
    assert isinstance(last, StatusMessage) and last.status == RunStatus.SUCCEEDED


def test_a_checkpoint_outside_the_run_directory_is_ignored(factory: Factory, tmp_path: Path) -> None:
    recorder, _, _ = _recorder(factory, tmp_path / "run")
    recorder.handle(_checkpoint(tmp_path / "elsewhere", 3))
    recorder.flush()
    assert _rows(factory, recorder.run_id, RunCheckpoint) == [] and recorder.last_checkpoint_step is None


def test_a_database_outage_delays_the_writes(factory: Factory, tmp_path: Path) -> None:
    down = {"calls": 0}

    def flaky_factory() -> Session:
        down["calls"] += 1
        if down["calls"] == 1:
            raise OperationalError("connect", {}, Exception("the database is restarting"))
        return factory.session_factory()

    recorder, publisher, _ = _recorder(factory, tmp_path / "run", session_factory=flaky_factory)
    recorder.handle(TRAIN)
    assert recorder.flush().owned  # the write failed: kept for the next flush, nothing published
    assert publisher.messages == [] and _rows(factory, recorder.run_id, RunMetric) == []
    recorder.flush()
    assert {p.name for p in _rows(factory, recorder.run_id, RunMetric)} >= {"loss", "learning_rate"}
    assert TRAIN in publisher.messages


def test_a_stale_attempt_writes_nothing(factory: Factory, tmp_path: Path) -> None:
    recorder, publisher, _ = _recorder(factory, tmp_path / "run")
    with session_scope(factory.session_factory) as session:  # another attempt took the run
        lifecycle.finish_run(session, recorder.run_id, recorder.attempt, Trigger.FAIL)
        session.execute(
            RunCheckpoint.__table__.delete().where(RunCheckpoint.run_id == recorder.run_id)  # type: ignore[attr-defined]
        )
    recorder.handle(TRAIN)
    assert not recorder.flush().owned
    assert not recorder.finish(Trigger.SUCCEED, "done")
    assert _rows(factory, recorder.run_id, RunMetric) == [] and publisher.messages == []
    assert factory.get_run(recorder.run_id).status == RunStatus.FAILED


@pytest.mark.parametrize("resumed_from", [None, 7])
def test_restore_knows_the_kept_checkpoints(
    factory: Factory, tmp_path: Path, resumed_from: int | None
) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x", progress={"step": 7})
    if resumed_from is not None:
        with session_scope(factory.session_factory) as session:
            lifecycle.record_checkpoint(
                session, run_id, resumed_from, metrics={}, size_bytes=1, sha256="0" * 64, storage_key="k"
            )
    with session_scope(factory.session_factory) as session:
        claimed = lifecycle.claim_run(session, run_id, "w")
        assert claimed is not None
        recorder = RunRecorder(claimed, factory.session_factory, RecordingPublisher(), run_dir=tmp_path)
        recorder.restore(session)
    assert recorder.last_checkpoint_step == resumed_from and recorder.progress.step == 7


def test_the_selected_checkpoint_and_an_early_stop_reach_the_run_json_and_the_event(
    factory: Factory, tmp_path: Path, worker_context: WorkerContext
) -> None:
    recorder, _, _ = _recorder(factory, tmp_path / "run")
    recorder.handle(STARTED)
    recorder.flush()  # running
    final = EvalMetrics(masked_lm_loss=3.0, masked_lm_accuracy=0.4, perplexity=20.1)
    selected = SelectedCheckpoint(
        step=4,
        select_checkpoint="best",
        reason="lowest eval masked_lm_loss (2.9000) among the 2 evaluated steps after step 0 within the "
        "forgetting budget of 0.05 nats (step 6 over it)",
        eval_masked_lm_loss=2.9,
        reference_masked_lm_loss=4.01,
        reference_loss_increase=0.01,
        max_reference_loss_increase=0.05,
        rejected_over_budget=[6],
        evaluated_steps=[2, 4, 6],
    )
    stopped = StoppedEarly(step=6, best_step=4, best_eval_masked_lm_loss=2.9, patience=1, reason="no better")
    result = TrainingResult(
        status="completed",
        steps=6,
        max_steps=10,
        baseline_metrics={"eval": BASELINE.metrics},  # type: ignore[dict-item]
        final_metrics={"eval": final},
        final_metrics_step=6,
        train_metrics=None,
        warnings=[],
        runtime_seconds=3.0,
        samples_seen=48,
        tokens_seen=900,
        data_key="k1",
        selected_checkpoint=selected,
        stopped_early=stopped,
        run_dir=tmp_path / "run",
        model_path=tmp_path / "run" / "model",
        checkpoint_path=None,
    )
    assert executor._succeed(recorder, result, worker_context) == RunStatus.SUCCEEDED
    shown = RunPublic.from_run(factory.get_run(recorder.run_id))
    assert shown.selected_checkpoint == selected and shown.stopped_early == stopped
    assert shown.progress.step == 6  # beside RunProgress's own fields, not among them
    (succeeded,) = [e for e in _rows(factory, recorder.run_id, RunEvent) if e.type == "succeeded"]
    assert "stopped early before step 10: no better" in succeeded.message
    assert "the model is step 4's: lowest eval masked_lm_loss" in succeeded.message
    assert succeeded.data["stopped_by"] == "early_stopping"
    assert succeeded.data["selected_checkpoint"]["rejected_over_budget"] == [6]
    # A run that ended otherwise shows neither.
    other = RunPublic.from_run(
        factory.get_run(factory.run(corpus_id=factory.corpus(b"x y.\n"), base_model="x"))
    )
    assert other.selected_checkpoint is None and other.stopped_early is None


def test_the_vocabulary_extension_reaches_the_started_event_and_the_run_json(
    factory: Factory, tmp_path: Path, worker_context: WorkerContext
) -> None:
    stats = TokenizationStats(words=100, unk_rate=0.01, wordpieces_per_word=1.5)
    vocabulary = VocabularyExtension(
        add_domain_tokens=1,
        min_count=20,
        added=[
            AddedToken(
                token="kinase", id=1, count=40, pieces=["kin", "##ase"], slot="unused", replaced="[unused0]"
            )
        ],
        before=stats,
        after=stats.model_copy(update={"wordpieces_per_word": 1.1}),
        vocab_size_before=30522,
    )
    recorder, _, _ = _recorder(factory, tmp_path / "run")
    recorder.handle(STARTED.model_copy(update={"vocabulary": vocabulary, "device_name": "NVIDIA H200"}))
    recorder.flush()
    (started,) = [e for e in _rows(factory, recorder.run_id, RunEvent) if e.type == "training_started"]
    assert VocabularyExtension.model_validate(started.data["vocabulary"]) == vocabulary
    assert started.data["device_name"] == "NVIDIA H200"  # the GPU whose peak the mfu is of
    result = TrainingResult(
        status="completed",
        steps=4,
        max_steps=4,
        baseline_metrics={},
        final_metrics={},
        final_metrics_step=None,
        train_metrics=None,
        warnings=[],
        runtime_seconds=3.0,
        samples_seen=32,
        tokens_seen=900,
        data_key="k1",
        vocabulary=vocabulary,
        run_dir=tmp_path / "run",
        model_path=tmp_path / "run" / "model",
        checkpoint_path=None,
    )
    assert executor._succeed(recorder, result, worker_context) == RunStatus.SUCCEEDED
    assert RunPublic.from_run(factory.get_run(recorder.run_id)).vocabulary == vocabulary
