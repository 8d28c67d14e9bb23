"""The supervisor's bookkeeping: the training process's records become the run's rows (metrics, events,
checkpoints, progress) and messages on its live stream.

Writes are buffered and made about once a second, in one transaction together with the heartbeat (which
also reads ``cancel_requested``), then published to the live stream in arrival order: a watcher that sees
a message can read its rows. A database that is briefly unreachable only delays the writes; a live
stream that fails is logged and skipped (the database has everything).

Everything a record could carry comes with it (:mod:`worker.pretraining.records`); the only files read
here are a checkpoint's, to record the digest of what is stored.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import Run, RunCheckpoint, utcnow
from app.runs import lifecycle
from app.runs.events import EventLevel, RunEventType, add_event
from app.runs.lifecycle import ClaimedRun, Heartbeat
from app.runs.live import LiveMessage, LivePublisher, RewindMessage, StatusMessage
from app.runs.schemas import RunCheckpointPublic, RunError, RunEventPublic, RunProgress
from app.runs.states import RunStatus, Trigger, target
from app.storage.keys import run_checkpoint_key
from worker.pretraining.layout import RunLayout
from worker.pretraining.records import (
    CheckpointSaved,
    EvalMetrics,
    LogLine,
    MetricsRecord,
    Progress,
    RunWarning,
    StepSkipped,
    TrainingFailed,
    TrainingFinished,
    TrainingRecord,
    TrainingStarted,
    TrainMetrics,
)
from worker.pretraining.run_checkpoints import complete_checkpoints
from worker.supervision import write_with_retries

__all__ = ["ENDING_EVENTS", "RunRecorder", "directory_digest", "stored_metrics"]

logger = logging.getLogger(__name__)

# The event that tells how a run ended, by the trigger that ended it.
ENDING_EVENTS = {
    Trigger.SUCCEED: RunEventType.SUCCEEDED,
    Trigger.FAIL: RunEventType.FAILED,
    Trigger.STOP: RunEventType.CANCELLED,
}
_EVAL_SUMMARY = ("masked_lm_loss", "perplexity", "masked_lm_accuracy", "next_sentence_accuracy")
# What the training_started event tells of the TrainingStarted record (vocabulary: add_domain_tokens's
# report, null when off; model: the model's size, which run estimates match throughput on).
_STARTED_FIELDS = {
    "max_steps",
    "resumed_from_step",
    "train_instances",
    "replay_instances",
    "eval_splits",
    "precision",
    "device",
    "device_name",
    "vocabulary",
    "model",
}


def stored_metrics(metrics: TrainMetrics | EvalMetrics, step: int) -> dict[str, Any]:
    """Metrics as a run's ``latest`` and ``baseline`` keep them: JSON, with the step; a value that is not
    finite is a null named in ``non_finite``."""
    stored = {**metrics.json_object(exclude_none=True), "step": step}
    if not stored["non_finite"]:
        del stored["non_finite"]
    return stored


def directory_digest(directory: Path) -> tuple[int, str]:
    """(total bytes, sha256) of the files under ``directory``. The digest is the sha256 of the lines
    ``<file sha256>  <relative path>`` sorted by path, i.e. of
    ``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum``."""
    files = sorted(
        (path.relative_to(directory).as_posix(), path) for path in directory.rglob("*") if path.is_file()
    )
    listing = hashlib.sha256()
    size = 0
    for relative, path in files:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256")
        size += path.stat().st_size
        listing.update(f"{digest.hexdigest()}  {relative}\n".encode())
    return size, listing.hexdigest()


@dataclass(frozen=True)
class _EventRow:
    type: RunEventType
    message: str
    level: EventLevel = "info"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _CheckpointRow:
    checkpoint: RunCheckpointPublic
    storage_key: str
    kept_steps: list[int]


@dataclass(frozen=True)
class _Rewind:
    step: int | None  # the checkpoint this attempt resumes from (None: from the beginning)


# A write waiting for the next flush.
_Pending = MetricsRecord | _EventRow | _CheckpointRow | _Rewind


def _summary(metrics: Mapping[str, float]) -> str:
    parts = [f"{name} {metrics[name]:.4g}" for name in _EVAL_SUMMARY if name in metrics]
    return ", ".join(parts) or "no metrics"


class RunRecorder:
    """Everything the supervisor learns about one attempt of a run, and the writes that record it.
    ``run_dir`` is where the attempt trains (None before the training could start)."""

    def __init__(
        self,
        claimed: ClaimedRun,
        session_factory: Callable[[], Session],
        publisher: LivePublisher,
        *,
        run_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = claimed.id
        self.attempt = claimed.attempt
        self.resumed_after_attempt = claimed.resumed_after_attempt
        self.session_factory = session_factory
        self.publisher = publisher
        self.layout = RunLayout(run_dir) if run_dir is not None else None
        self.clock = clock
        self.status = target(Trigger.CLAIM)
        self.training_started = False
        self.cancel_requested = False
        self.last_checkpoint_step: int | None = None
        self.checkpoint_steps: set[int] = set()  # those with a row
        self.progress = RunProgress()
        self.latest: dict[str, dict[str, Any]] = {}
        self.baseline: dict[str, dict[str, Any]] = {}
        self.warnings: list[RunWarning] = []
        # What a succeeded run ended with besides its progress (selected_checkpoint, stopped_early: the
        # keys of app.runs.schemas.OUTCOME_KEYS), written into the same JSON column by the final write.
        self.outcome: dict[str, Any] = {}
        self._pending: list[_Pending] = []
        self._start_running = False
        self._progress_changed = False
        self._state_changed = False  # latest, baseline or warnings
        self._mean_instance_tokens: float | None = None
        self._origin: tuple[int, float] | None = None  # (step, time) this attempt's step counting started

    def restore(self, session: Session) -> None:
        """Start from what earlier attempts recorded: a resumed run keeps its progress, baseline,
        warnings and the knowledge of its kept checkpoints."""
        run = session.get(Run, self.run_id)
        if run is None:
            return
        self.progress = RunProgress.model_validate(run.progress or {})
        self.latest = dict(run.latest or {})
        self.baseline = dict(run.baseline or {})
        self.warnings = [RunWarning.model_validate(w) for w in run.warnings or []]
        steps = select(RunCheckpoint.step).where(RunCheckpoint.run_id == self.run_id)
        self.checkpoint_steps = set(session.scalars(steps))
        self.last_checkpoint_step = max(self.checkpoint_steps, default=None)

    # ---- records from the training process

    def handle(self, record: TrainingRecord) -> None:
        match record:
            case MetricsRecord():
                self._on_metrics(record)
            case TrainingStarted():
                self._on_started(record)
            case CheckpointSaved():
                self._on_checkpoint(record)
            case Progress():
                self._on_progress(record)
            case StepSkipped():
                self._on_step_skipped(record)
            case LogLine():
                logger.info("run %s: %s", self.run_id, record.message)
            case TrainingFinished() | TrainingFailed():
                pass  # told by the result or the failure that follows
            case _:
                assert_never(record)

    def add_event(
        self,
        type: RunEventType,
        message: str,
        *,
        level: EventLevel = "info",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self._pending.append(_EventRow(type, message, level, dict(data or {})))

    def _on_metrics(self, record: MetricsRecord) -> None:
        self._pending.append(record)
        values = record.metrics.values()
        stored = stored_metrics(record.metrics, record.step)
        self.latest[record.split] = stored
        self._state_changed = True
        if record.split == "train":
            progress: dict[str, Any] = {"epoch": values.get("epoch")}
            for speed in ("tokens_per_second", "samples_per_second", "mfu"):
                progress[speed] = values.get(speed)
            if self._mean_instance_tokens:
                # Exact counts come with checkpoints and the final model; in between, samples x mean length.
                progress["tokens_seen"] = round(values["samples_seen"] * self._mean_instance_tokens)
            self._update_progress(**progress)
            return
        baseline = record.step == 0 and record.split not in self.baseline
        if baseline:
            self.baseline[record.split] = stored
        label = f"baseline {record.split}" if baseline else record.split
        self.add_event(
            RunEventType.EVALUATION,
            f"{label} at step {record.step}: {_summary(values)}",
            data={
                "split": record.split,
                "step": record.step,
                "metrics": {name: value for name, value in stored.items() if name != "step"},
                "baseline": baseline,
            },
        )

    def _on_step_skipped(self, record: StepSkipped) -> None:
        self._update_progress(skipped_steps=record.skipped_steps)
        self.add_event(
            RunEventType.WARNING,
            record.summary(),
            level="warning",
            data={"code": "step_skipped", **record.json_object(exclude={"kind"})},
        )

    def _update_progress(self, **values: Any) -> None:
        self.progress = self.progress.model_copy(update=values)
        self._progress_changed = True

    def _on_progress(self, record: Progress) -> None:
        now = self.clock()
        if self._origin is None or record.step < self._origin[0]:
            self._origin = (record.step, now)
        origin_step, origin_time = self._origin
        done = record.step - origin_step
        eta = (record.max_steps - record.step) * (now - origin_time) / done if done > 0 else None
        self._update_progress(
            step=record.step, total_steps=record.max_steps, eta_seconds=None if eta is None else round(eta, 1)
        )

    def _on_started(self, record: TrainingStarted) -> None:
        self.training_started = True
        self._start_running = True
        data = record.data
        train, held_out = data.splits["train"], data.splits.get("eval")
        self._mean_instance_tokens = train.mean_length
        self.add_event(
            RunEventType.DATA_PREPARED,
            f"prepared {train.instances:,} training instances ({train.tokens:,} tokens) and "
            f"{held_out.instances if held_out else 0:,} eval instances from "
            f"{data.corpus.get('documents', 0):,} documents",
            data=data.json_object(),
        )
        resumed = record.resumed_from_step is not None
        if self.attempt > 1:
            # What an interrupted attempt recorded past the checkpoint this one resumes from is superseded.
            self._pending.append(_Rewind(record.resumed_from_step))
            self.checkpoint_steps = {
                s for s in self.checkpoint_steps if s <= (record.resumed_from_step or -1)
            }
            self.last_checkpoint_step = max(self.checkpoint_steps, default=None)
            self.adopt_checkpoints()
        self._update_progress(step=record.step, total_steps=record.max_steps)
        self.add_event(
            RunEventType.TRAINING_STARTED,
            f"training {record.max_steps:,} steps on {record.train_instances:,} instances per epoch "
            + (f"({record.replay_instances:,} of them replayed) " if record.replay_instances else "")
            + f"({record.precision}, {record.device})"
            + (f", resuming from the checkpoint of step {record.step}" if resumed else ""),
            data={**record.json_object(include=_STARTED_FIELDS), "attempt": self.attempt},
        )
        self.add_warnings(record.warnings)

    def add_warnings(self, warnings: list[RunWarning]) -> None:
        """Keep the warnings not known yet (an attempt repeats its predecessor's), one event each."""
        known = {(w.code, w.message) for w in self.warnings}
        for warning in warnings:
            if (warning.code, warning.message) not in known:
                self.warnings.append(warning)
                self._state_changed = True
                self.add_event(
                    RunEventType.WARNING,
                    warning.message,
                    level="warning",
                    data=warning.json_object(exclude_none=True),
                )

    def _on_checkpoint(self, record: CheckpointSaved) -> None:
        if self.layout is None or record.path != self.layout.checkpoint(record.step):
            logger.warning(
                "run %s: checkpoint outside the run's directory ignored: %s", self.run_id, record.path
            )
            return
        metrics: dict[str, Any] = {split: values.json_object() for split, values in record.metrics.items()}
        if self._record_checkpoint(record.step, record.path, metrics, record.kept_steps):
            self._update_progress(tokens_seen=record.tokens_seen)

    def adopt_checkpoints(self) -> list[int]:
        """Record the complete checkpoints in the run's directory that no record announced (the training
        process was killed before its message left it), so that the rows show what a resume starts
        from; returns their steps."""
        if self.layout is None:
            return []
        on_disk = complete_checkpoints(self.layout.checkpoints)
        kept = [step for step, _ in on_disk]
        return [
            step
            for step, path in on_disk
            if step not in self.checkpoint_steps and self._record_checkpoint(step, path, {}, kept)
        ]

    def _record_checkpoint(
        self, step: int, path: Path, metrics: dict[str, Any], kept_steps: list[int]
    ) -> bool:
        try:
            size, sha256 = directory_digest(path)
        except FileNotFoundError:  # rotated away already
            return False
        self.checkpoint_steps = {s for s in self.checkpoint_steps if s in kept_steps} | {step}
        self.last_checkpoint_step = max(self.checkpoint_steps)
        checkpoint = RunCheckpointPublic(
            step=step, created_at=utcnow(), metrics=metrics, size_bytes=size, sha256=sha256
        )
        key = run_checkpoint_key(self.run_id, step)
        self._pending.append(_CheckpointRow(checkpoint, key, kept_steps))
        self.add_event(
            RunEventType.CHECKPOINT_SAVED,
            f"checkpoint saved at step {step} ({size / 1e6:,.1f} MB)",
            data={"step": step, "size_bytes": size, "sha256": sha256},
        )
        return True

    # ---- writes

    def _write_pending(self, session: Session) -> list[LiveMessage]:
        """Write the buffered items; returns their live messages, in order."""
        messages: list[LiveMessage] = []
        metrics: list[MetricsRecord] = []
        for item in self._pending:
            match item:
                case MetricsRecord():
                    metrics.append(item)
                    messages.append(item)
                case _EventRow():
                    event = add_event(
                        session, self.run_id, item.type, item.message, level=item.level, data=item.data
                    )
                    messages.append(RunEventPublic.model_validate(event))
                case _CheckpointRow():
                    checkpoint = item.checkpoint
                    lifecycle.record_checkpoint(
                        session,
                        self.run_id,
                        checkpoint.step,
                        created_at=checkpoint.created_at,
                        metrics=checkpoint.metrics,
                        size_bytes=checkpoint.size_bytes,
                        sha256=checkpoint.sha256,
                        storage_key=item.storage_key,
                    )
                    lifecycle.forget_checkpoints(session, self.run_id, item.kept_steps)
                    messages.append(checkpoint)
                case _Rewind():
                    lifecycle.write_metrics(session, self.run_id, metrics)  # this attempt's, before it
                    metrics = []
                    lifecycle.rewind(session, self.run_id, item.step)
                    messages.append(RewindMessage(step=item.step, attempt=self.attempt))
                case _:
                    assert_never(item)
        lifecycle.write_metrics(session, self.run_id, metrics)
        return messages

    def status_message(self, error: RunError | None = None) -> StatusMessage:
        return StatusMessage(status=self.status, progress=self.progress, error=error)

    def _stored_progress(self) -> dict[str, Any]:
        return {**self.progress.model_dump(exclude_none=True), **self.outcome}

    def _stored_warnings(self) -> list[dict[str, Any]]:
        return [warning.json_object(exclude_none=True) for warning in self.warnings]

    def flush(self) -> Heartbeat:
        """Write what is buffered with the heartbeat, publish it; returns the heartbeat (ownership and
        cancel request). A database error keeps the buffer for the next flush."""
        previous_status = self.status
        try:
            with session_scope(self.session_factory) as session:
                if self._start_running and self.status == RunStatus.PREPARING:
                    lifecycle.mark_running(session, self.run_id, self.attempt)
                beat = lifecycle.heartbeat(
                    session,
                    self.run_id,
                    self.attempt,
                    progress=self._stored_progress() if self._progress_changed else None,
                    latest=self.latest if self._state_changed else None,
                    baseline=self.baseline if self._state_changed else None,
                    warnings=self._stored_warnings() if self._state_changed else None,
                )
                if not beat.owned:
                    return beat
                messages = self._write_pending(session)
        except DBAPIError as exc:
            logger.warning("run %s: database write failed, retrying at the next flush (%s)", self.run_id, exc)
            return Heartbeat(
                owned=True, cancel_requested=self.cancel_requested, status=self.status, confirmed=False
            )
        self._pending = []
        self.status = beat.status or self.status
        self.cancel_requested = beat.cancel_requested
        status_changed = self.status != previous_status
        progress_changed = self._progress_changed
        self._progress_changed = self._state_changed = False
        for message in messages:
            self.publisher.publish(self.run_id, message)
        if status_changed or progress_changed:
            self.publisher.publish(self.run_id, self.status_message())
        return beat

    def finish(
        self,
        trigger: Trigger,
        message: str,
        *,
        data: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        output_storage_key: str | None = None,
        also: Callable[[Session], object] | None = None,
    ) -> bool:
        """The end of the run (``trigger`` is succeed, fail or stop): what is still buffered, the closing
        event and the run's final state, in one transaction (retried while the database is unreachable);
        then the closing messages on the live stream. ``also(session)`` writes more in that transaction
        when this attempt ended the run (the downstream evaluation of a succeeded run). False when this
        attempt no longer holds the run."""
        if target(trigger) != RunStatus.SUCCEEDED:
            self.progress = self.progress.model_copy(update={"eta_seconds": None})
        self.add_event(
            ENDING_EVENTS[trigger], message, level="error" if trigger == Trigger.FAIL else "info", data=data
        )

        def end(session: Session) -> bool:
            ended = lifecycle.finish_run(
                session,
                self.run_id,
                self.attempt,
                trigger,
                error=error,
                output_storage_key=output_storage_key,
                progress=self._stored_progress(),
                latest=self.latest,
                baseline=self.baseline,
                warnings=self._stored_warnings(),
            )
            if ended and also is not None:
                also(session)
            return ended

        return self._close(end, target(trigger), error)

    def retry(self, message: str, *, data: Mapping[str, Any]) -> bool:
        """End this interrupted attempt with the ``retry`` transition (the run is queued for the next
        one), a ``retrying`` event and what is still buffered; False when it no longer holds the run (or
        the run is cancelling: it is not retried)."""
        self.progress = self.progress.model_copy(update={"eta_seconds": None})
        self.add_event(RunEventType.RETRYING, message, level="warning", data=data)

        def requeue(session: Session) -> bool:
            return lifecycle.retry_run(session, self.run_id, self.attempt, progress=self._stored_progress())

        return self._close(requeue, target(Trigger.RETRY), None)

    def _close(
        self,
        transition: Callable[[Session], bool],
        status: RunStatus,
        error: Mapping[str, Any] | None,
        *,
        retries: int = 5,
    ) -> bool:
        """The attempt's last write: ``transition`` and what is buffered, in one transaction (retried while
        the database is unreachable), then the messages and the new status on the live stream."""

        def write(session: Session) -> tuple[bool, list[LiveMessage]]:
            owned = transition(session)
            return owned, self._write_pending(session) if owned else []

        owned, messages = write_with_retries(
            self.session_factory, write, label=f"run {self.run_id}", retries=retries
        )
        self._pending = []
        if not owned:
            return False
        self.status = status
        for live_message in messages:
            self.publisher.publish(self.run_id, live_message)
        self.publisher.publish(
            self.run_id, self.status_message(RunError.model_validate(error) if error else None)
        )
        return True
