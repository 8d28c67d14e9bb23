"""Execute one run: claim it, locate its inputs, train it in a supervised child process, record the end.

    execute_run(run_id)            # what the Celery task bertpt.runs.execute calls

1. **Claim** (the ``claim`` transition of :mod:`app.runs.states`: one conditional UPDATE, ``attempt + 1``):
   a duplicate delivery or a run cancelled while it waited gets nothing and the call returns None. Errors
   before this point (the database unreachable) propagate, so that the task retries them; after it,
   every outcome is recorded on the run.
2. **Inputs** from rows only (:mod:`worker.inputs`): corpus files, the base model, ``runs/<id>/`` as the
   output directory (the same for every attempt) and the shared ``prepared/`` cache. The output directory
   is the run's workspace (:meth:`~app.storage.interface.Storage.workspace`): with S3 storage a local copy
   in the worker's cache, pulled first (what an earlier attempt, maybe on another worker, left).
3. **Train** in a ``spawn``-ed child (:mod:`worker.training_process`) while this process supervises:
   it drains the child's messages into the run's rows and live stream (:class:`RunRecorder`), and about
   once a second writes progress and the heartbeat and reads ``cancel_requested``. A cancel request sets
   the child's stop event: it stops at the end of the step with a checkpoint (while data is still being
   prepared, which the library does not interrupt, the child is terminated instead). Each checkpoint is
   pushed to storage as it is announced (in a thread of its own, so the heartbeat goes on), and the
   whole directory once the child has exited, before the end is recorded: what the rows name is there.
4. **Finish** (the ``succeed``, ``stop`` or ``fail`` transition): succeeded (``output_storage_key`` = the
   final model directory), cancelled, or failed with
   ``{type, message}`` for the user (tracebacks go to this log only). A run that succeeds with
   ``downstream`` settings gets its evaluation (base model against final model) queued in the same
   transaction, its task sent after it (:func:`app.evaluations.service.queue_downstream_evaluation`).
5. **Retry** an attempt interrupted by something that is not the owner's doing (a child that dies without
   a word, out of memory: :data:`~worker.failures.RETRIED_FAILURES`): the ``retry`` transition queues the
   run again and its task is sent; the next claim (attempt + 1) resumes it exactly, because the output
   directory is per run and ``run_pretraining(resume=True)`` continues from the newest complete
   checkpoint (weights, optimizer, scheduler, data position). After ``MAX_ATTEMPTS`` the run fails, and
   the message says how its owner resumes it. A run being cancelled is stopped instead.

Every write after the claim is fenced by the claim's attempt number: if the run is taken away meanwhile,
the child is stopped and nothing more is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from app.db import session_scope
from app.evaluations.service import queue_downstream_evaluation
from app.runs import lifecycle
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import Interruption
from app.runs.live import LivePublisher
from app.runs.schemas import OUTCOME_KEYS, RunEventPublic
from app.runs.states import RunStatus, Trigger, target
from app.storage import Workspace
from app.storage.keys import run_directory_key, run_model_key
from worker.context import WorkerContext, get_worker_context
from worker.failures import (
    RETRIED_FAILURES,
    RunFailure,
    describe_process_death,
    storage_failure,
    supervisor_failure,
)
from worker.inputs import InputError, build_training_job
from worker.job import TrainingJob
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, TMP_PREFIX
from worker.pretraining.records import CheckpointSaved, TrainingResult
from worker.recorder import RunRecorder, stored_metrics
from worker.supervision import supervise_child
from worker.training_process import ChildMessage, run_training_job

__all__ = ["ChildOutcome", "execute_run", "supervise"]

logger = logging.getLogger(__name__)


@dataclass
class ChildOutcome:
    """How the training process ended."""

    result: TrainingResult | None = None
    failure: RunFailure | None = None  # with its traceback
    exitcode: int | None = None
    cancelled_while_preparing: bool = False
    lost: bool = False  # the run was taken away from this attempt


def execute_run(run_id: str, *, context: WorkerContext | None = None) -> RunStatus | None:
    """Run ``run_id`` to its end if it can be claimed; returns its final status, or None when it was not
    claimed (or was taken away while it ran)."""
    context = context or get_worker_context()
    recorder = _claim(run_id, context)
    if recorder is None:
        logger.info("run %s not claimed: it is not queued (a duplicate delivery, or cancelled)", run_id)
        return None
    logger.info("run %s claimed by %s (attempt %d)", run_id, context.worker_id, recorder.attempt)
    try:
        return _execute_claimed(recorder, context)
    except Exception:
        logger.exception("run %s: the supervisor failed", run_id)
        return _fail(recorder, supervisor_failure(f"run {run_id}"))


def _retry_or_fail(recorder: RunRecorder, failure: RunFailure, context: WorkerContext) -> RunStatus | None:
    """An attempt interrupted by ``failure`` (not the owner's doing): the next attempt resumes the run
    while attempts are left; otherwise the run fails, saying how its owner can resume it. A run being
    cancelled is stopped: nobody wants it continued."""
    recorder.adopt_checkpoints()  # the newest complete checkpoint is what the next attempt resumes from
    interrupted = Interruption(
        recorder.run_id,
        recorder.attempt,
        recorder.resumed_after_attempt,
        context.settings.max_attempts,
        recorder.progress.step,
        recorder.last_checkpoint_step,
    )
    data = {
        "reason": failure.as_error(),
        "attempt": recorder.attempt,
        "checkpoint_step": interrupted.checkpoint_step,
    }
    if recorder.status == RunStatus.CANCELLING:
        return _finish(recorder, Trigger.STOP, interrupted.cancelled(failure.message), data=data)
    message = interrupted.message(failure.message)
    if interrupted.retried:
        if not recorder.retry(message, data=data):
            logger.warning(
                "run %s: no longer held by attempt %d; not retried", recorder.run_id, recorder.attempt
            )
            return None
        logger.warning("run %s: %s", recorder.run_id, message)
        try:
            context.enqueue(recorder.run_id)
        except Exception as exc:  # the run is queued: the housekeeping sends its task again in time
            logger.warning("run %s: its task could not be sent yet (%s)", recorder.run_id, exc)
        return RunStatus.QUEUED
    details = {**failure.details, "checkpoint_step": interrupted.checkpoint_step}
    return _fail(recorder, RunFailure(failure.type, message, details, failure.traceback))


def _claim(run_id: str, context: WorkerContext) -> RunRecorder | None:
    """Claim the run and announce it; the recorder of this attempt, or None when it was not claimed."""
    publisher = LivePublisher(context.redis)
    with session_scope(context.session_factory) as session:
        claimed = lifecycle.claim_run(session, run_id, context.worker_id)
        if claimed is None:
            return None
        recorder = RunRecorder(
            claimed,
            context.session_factory,
            publisher,
            run_dir=context.storage.workspace(run_directory_key(run_id)).path,
        )
        recorder.restore(session)
        event = add_event(
            session,
            run_id,
            RunEventType.CLAIMED,
            f"claimed by worker {context.worker_id} (attempt {claimed.attempt})",
            data={"worker_id": context.worker_id, "attempt": claimed.attempt},
        )
        announcement = RunEventPublic.model_validate(event)
    publisher.publish(run_id, announcement)
    publisher.publish(run_id, recorder.status_message())
    return recorder


def _execute_claimed(recorder: RunRecorder, context: WorkerContext) -> RunStatus | None:
    workspace = context.storage.workspace(run_directory_key(recorder.run_id))
    try:
        workspace.pull()
    except OSError as exc:  # app.storage.StorageError is one
        logger.exception("run %s: its directory could not be read from storage", recorder.run_id)
        return _retry_or_fail(recorder, storage_failure(exc), context)
    try:
        with session_scope(context.session_factory) as session:
            job = build_training_job(session, recorder.run_id, context.settings, context.storage)
    except InputError as exc:
        return _fail(recorder, exc.failure)
    recorder.add_event(
        RunEventType.PREPARING,
        f"loading the base model {job.base_model_spec} and preparing the data",
        data={
            "base_model": job.base_model_spec,
            "corpus_id": job.corpus_id,
            "eval_corpus_id": job.eval_corpus_id,
            "reference_corpus_id": job.reference_corpus_id,
            "replay_corpus_id": job.replay_corpus_id,
        },
    )
    outcome = supervise(job, recorder, context)
    if not outcome.lost:  # else the run belongs to another attempt: its files are not ours to write
        try:
            workspace.push(last=_WRITTEN_LAST, skip=_in_progress)
        except OSError as exc:  # app.storage.StorageError is one
            logger.exception("run %s: its directory could not be written to storage", recorder.run_id)
            return _retry_or_fail(recorder, storage_failure(exc), context)
    status = _record_outcome(outcome, recorder, context)
    if status != RunStatus.QUEUED:  # a retried attempt here finds its copy as it left it
        workspace.release()
    return status


# A checkpoint or a model counts as complete once its manifest is there: uploaded after the other files.
_WRITTEN_LAST = (CHECKPOINT_MANIFEST, MODEL_MANIFEST)


def _in_progress(path: PurePosixPath) -> bool:
    """A checkpoint being written or deleted by the training library, never pushed."""
    return any(part.startswith(TMP_PREFIX) for part in path.parts)


class _CheckpointPusher:
    """Pushes the run's ``checkpoints/`` (a new checkpoint up, rotated ones deleted) in a thread, one push
    at a time, while the supervisor goes on renewing the lease. A failed push is logged: the next one, or
    the final push of the whole directory, catches up."""

    def __init__(self, workspace: Workspace, run_id: str) -> None:
        self.workspace, self.run_id = workspace, run_id
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"push-{run_id}")

    def push(self) -> None:
        self._thread.submit(
            self.workspace.push, "checkpoints", last=_WRITTEN_LAST, skip=_in_progress
        ).add_done_callback(self._log_failure)

    def _log_failure(self, future: Future[None]) -> None:
        if future.exception() is not None:
            logger.warning("run %s: a checkpoint push failed: %s", self.run_id, future.exception())

    def wait(self) -> None:
        self._thread.shutdown(wait=True)


def supervise(job: TrainingJob, recorder: RunRecorder, context: WorkerContext) -> ChildOutcome:
    """Train ``job`` in a spawned child until it exits, recording what it reports
    (:func:`worker.supervision.supervise_child`), pushing each checkpoint to storage as it comes."""
    outcome = ChildOutcome()
    pusher = _CheckpointPusher(context.storage.workspace(run_directory_key(job.run_id)), job.run_id)

    def receive(message: ChildMessage) -> None:
        if isinstance(message, TrainingResult):
            outcome.result = message
        elif isinstance(message, RunFailure):
            outcome.failure = message
        else:
            recorder.handle(message)
            if isinstance(message, CheckpointSaved):
                pusher.push()

    try:
        end = supervise_child(
            run_training_job,
            job,
            label=f"run {job.run_id}",
            what="training process",
            process_name=f"bertpt-training-{job.run_id}",
            receive=receive,
            flush=recorder.flush,
            context=context,
            # Training stops at the end of its step, with a checkpoint. Loading the model and preparing the
            # data do not look at the stop event: a cancel ends those at once (they clean up).
            stop_at_once=lambda: not recorder.training_started,
        )
    finally:
        pusher.wait()
    outcome.exitcode, outcome.lost = end.exitcode, end.lost
    outcome.cancelled_while_preparing = end.terminated_on_cancel
    return outcome


def _record_outcome(outcome: ChildOutcome, recorder: RunRecorder, context: WorkerContext) -> RunStatus | None:
    if outcome.lost:
        return None
    failure = outcome.failure
    if failure is not None and failure.type in RETRIED_FAILURES and not outcome.cancelled_while_preparing:
        logger.error("run %s: %s\n%s", recorder.run_id, failure.message, failure.traceback or "")
        return _retry_or_fail(recorder, failure, context)
    if failure is not None and not outcome.cancelled_while_preparing:
        logger.error(
            "run %s failed (%s): %s\n%s",
            recorder.run_id,
            failure.type,
            failure.message,
            failure.traceback or "",
        )
        return _fail(recorder, failure, logged=True)
    result = outcome.result
    if outcome.cancelled_while_preparing or (result is not None and result.status == "cancelled"):
        step = recorder.last_checkpoint_step
        message = (
            "cancelled while preparing the data"
            if result is None
            else f"cancelled at step {result.steps} of {result.max_steps}"
            + (f"; the checkpoint of step {step} is kept" if step is not None else "")
        )
        data = {"step": None if result is None else result.steps, "checkpoint_step": step}
        return _finish(recorder, Trigger.STOP, message, data=data)
    if result is not None:
        return _succeed(recorder, result, context)
    death = describe_process_death(outcome.exitcode)
    logger.error("run %s: %s", recorder.run_id, death.message)
    return _retry_or_fail(recorder, death, context)


def _succeed(recorder: RunRecorder, result: TrainingResult, context: WorkerContext) -> RunStatus | None:
    recorder.progress = recorder.progress.model_copy(
        update={
            "step": result.steps,
            "total_steps": result.max_steps,
            "eta_seconds": 0,
            "tokens_seen": result.tokens_seen,
            "skipped_steps": result.skipped_steps,
        }
    )
    recorder.add_warnings(result.warnings)  # what training found (skipped steps) after it started
    final_step = result.final_metrics_step if result.final_metrics_step is not None else result.steps
    for split, metrics in result.final_metrics.items():
        recorder.latest[split] = stored_metrics(metrics, final_step)
    for split, metrics in result.baseline_metrics.items():
        recorder.baseline.setdefault(split, stored_metrics(metrics, 0))
    message = f"trained {result.steps:,} steps in {result.runtime_seconds:,.0f} s"
    before = (recorder.baseline.get("eval") or {}).get("masked_lm_loss")
    after = result.final_metrics.get("eval")
    if isinstance(before, (int, float)) and after is not None:
        message += f"; eval masked_lm_loss {before:.4f} -> {after.masked_lm_loss:.4f}"
    timed_out = result.status == "timed_out"
    if timed_out:
        message += f" (stopped by max_runtime_seconds before step {result.max_steps:,})"
    if result.stopped_early is not None:
        message += f" (stopped early before step {result.max_steps:,}: {result.stopped_early.reason})"
    selected = result.selected_checkpoint
    if selected is not None and selected.step != result.steps:
        message += f"; the model is step {selected.step:,}'s: {selected.reason}"
    # Shown by the run JSON (RunPublic), kept in the progress column by the final write.
    recorder.outcome = result.json_object(include=set(OUTCOME_KEYS), exclude_none=True)
    data = {
        **result.json_object(
            include={
                "steps",
                "max_steps",
                "runtime_seconds",
                "baseline_metrics",
                "final_metrics",
                "tokens_seen",
                "skipped_steps",
                *OUTCOME_KEYS,
            },
        ),
        "stopped_by": (
            "max_runtime_seconds" if timed_out else "early_stopping" if result.stopped_early else None
        ),
    }
    return _finish(
        recorder,
        Trigger.SUCCEED,
        message,
        data=data,
        output_storage_key=run_model_key(recorder.run_id),
        also=partial(_queue_downstream, run_id=recorder.run_id, context=context),
    )


def _queue_downstream(session: Session, *, run_id: str, context: WorkerContext) -> None:
    """The run's downstream comparison, when its body asked for one: queued in the transaction that
    records the success, its task sent after it. In a savepoint: whatever goes wrong there is logged and
    leaves the success alone (the run's JSON then shows its downstream settings without an evaluation)."""
    try:
        with session.begin_nested():
            queue_downstream_evaluation(session, run_id, enqueue=context.enqueue_evaluation)
    except Exception:
        logger.exception("run %s: its downstream evaluation could not be queued", run_id)


def _fail(recorder: RunRecorder, failure: RunFailure, *, logged: bool = False) -> RunStatus | None:
    """Fail the run with what its owner is told (the training failed, or could not start or be supervised)."""
    if not logged:
        logger.error("run %s failed (%s): %s", recorder.run_id, failure.type, failure.message)
    error = failure.as_error()
    return _finish(recorder, Trigger.FAIL, failure.message, data=error, error=error)


def _finish(
    recorder: RunRecorder,
    trigger: Trigger,
    message: str,
    *,
    data: dict[str, Any],
    error: dict[str, Any] | None = None,
    output_storage_key: str | None = None,
    also: Callable[[Session], object] | None = None,
) -> RunStatus | None:
    finished = recorder.finish(
        trigger, message, data=data, error=error, output_storage_key=output_storage_key, also=also
    )
    if not finished:
        logger.warning(
            "run %s: no longer held by attempt %d; its end was not recorded",
            recorder.run_id,
            recorder.attempt,
        )
        return None
    status = target(trigger)
    logger.info("run %s %s: %s", recorder.run_id, status.value, message)
    return status
