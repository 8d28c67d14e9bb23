"""Execute one run: claim it, locate its inputs, train it in a supervised child process, record the end.

    execute_run(run_id)            # what the Celery task bertpt.runs.execute calls

1. **Claim** (one conditional UPDATE, ``queued -> preparing``, ``attempt + 1``): a duplicate delivery or a
   run cancelled while it waited gets nothing and the call returns None. Errors before this point (the
   database unreachable) propagate, so that the task retries them; after it, every outcome is recorded
   on the run.
2. **Inputs** from rows only (:mod:`worker.inputs`): corpus files, the base model, ``runs/<id>/`` as the
   output directory (the same for every attempt) and the shared ``prepared/`` cache.
3. **Train** in a ``spawn``-ed child (:mod:`worker.training_process`) while this process supervises:
   it drains the child's messages into the run's rows and live stream (:class:`RunRecorder`), and about
   once a second writes progress and the heartbeat and reads ``cancel_requested``. A cancel request sets
   the child's stop event: it stops at the end of the step with a checkpoint (while data is still being
   prepared, which the library does not interrupt, the child is terminated instead).
4. **Finish**: succeeded (``output_storage_key`` = the final model directory), cancelled, or failed with
   ``{type, message}`` for the user (tracebacks go to this log only). A child that dies without a word
   (killed, crashed) fails the run with a clear message; its checkpoints stay, and because the output
   directory is per run and ``run_pretraining(resume=True)`` continues from the newest complete
   checkpoint, running the same run again (queued once more) resumes it.

Every write after the claim is fenced by the claim's attempt number: if the run is taken away meanwhile,
the child is stopped and nothing more is written.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import billiard

from app.db import session_scope
from app.models import Run, RunStatus
from app.runs import lifecycle, live
from app.runs.lifecycle import ClaimedRun
from worker.context import WorkerContext, get_worker_context
from worker.failures import RunFailure, describe_process_death
from worker.inputs import MODEL_SUBDIRECTORY, InputError, build_training_job, run_directory_key
from worker.job import TrainingJob
from worker.pretraining.checkpoints import MODEL_MANIFEST, complete_checkpoints, read_json
from worker.recorder import LivePublisher, RunRecorder
from worker.training_process import run_training_job

__all__ = ["ChildOutcome", "execute_run", "supervise"]

logger = logging.getLogger(__name__)

_RECEIVE_TIMEOUT_SECONDS = 0.2
_DRAIN_TIMEOUT_SECONDS = 0.5


@dataclass
class ChildOutcome:
    """How the training process ended."""

    result: dict[str, Any] | None = None  # TrainingResult.to_dict()
    failure: dict[str, Any] | None = None  # RunFailure.as_error() + "traceback"
    exitcode: int | None = None
    cancelled_while_preparing: bool = False
    lost: bool = False  # the run was taken away from this attempt


def execute_run(run_id: str, *, context: WorkerContext | None = None) -> RunStatus | None:
    """Run ``run_id`` to its end if it can be claimed; returns its final status, or None when it was not
    claimed (or was taken away while it ran)."""
    context = context or get_worker_context()
    publisher = LivePublisher(context.redis, run_id)
    claimed, run_state = _claim(run_id, context, publisher)
    if claimed is None:
        logger.info("run %s not claimed: it is not queued (a duplicate delivery, or cancelled)", run_id)
        return None
    logger.info("run %s claimed by %s (attempt %d)", run_id, context.worker_id, claimed.attempt)
    try:
        return _execute_claimed(claimed, run_state, context, publisher)
    except Exception:
        logger.exception("run %s: the supervisor failed", run_id)
        failure = RunFailure(
            "internal_error",
            "the worker stopped on an internal error; the operators can find the details in the worker log "
            f"under run {run_id}",
        )
        return _fail_claimed(claimed, context, publisher, failure)


def _claim(
    run_id: str, context: WorkerContext, publisher: LivePublisher
) -> tuple[ClaimedRun | None, dict[str, Any]]:
    with session_scope(context.session_factory) as session:
        claimed = lifecycle.claim_run(session, run_id, context.worker_id)
        if claimed is None:
            return None, {}
        event = lifecycle.add_event(
            session,
            run_id,
            "claimed",
            f"claimed by worker {context.worker_id} (attempt {claimed.attempt})",
            data={"worker_id": context.worker_id, "attempt": claimed.attempt},
        )
        run = session.get(Run, run_id)
        assert run is not None
        state = {
            "progress": run.progress,
            "latest": run.latest,
            "baseline": run.baseline,
            "warnings": run.warnings,
        }
        message = live.event_data(event)
    publisher.publish("event", message)
    publisher.publish(
        "status", {"status": RunStatus.PREPARING.value, "progress": state["progress"], "error": None}
    )
    return claimed, state


def _execute_claimed(
    claimed: ClaimedRun, run_state: dict[str, Any], context: WorkerContext, publisher: LivePublisher
) -> RunStatus | None:
    try:
        with session_scope(context.session_factory) as session:
            job = build_training_job(session, claimed.id, context.settings, context.storage)
    except InputError as exc:
        return _fail_claimed(claimed, context, publisher, exc.failure)
    recorder = RunRecorder(claimed, job, context.session_factory, publisher)
    recorder.restore(**run_state)
    recorder.add_event(
        "preparing",
        f"loading the base model {job.base_model_spec} and preparing the data",
        data={
            "base_model": job.base_model_spec,
            "corpus_id": job.corpus_id,
            "eval_corpus_id": job.eval_corpus_id,
            "reference_corpus_id": job.reference_corpus_id,
        },
    )
    outcome = supervise(job, recorder, context)
    return _record_outcome(outcome, recorder, job)


def supervise(job: TrainingJob, recorder: RunRecorder, context: WorkerContext) -> ChildOutcome:
    """Train ``job`` in a spawned child until it exits, recording what it reports."""
    # billiard is Celery's fork of multiprocessing: a Celery pool process counts as a daemon for the
    # standard library's, which refuses to start children from it. "spawn": CUDA does not survive fork.
    mp = billiard.get_context("spawn")
    messages = mp.Queue()
    stop = mp.Event()
    process = mp.Process(
        target=run_training_job, args=(job, messages, stop), name=f"bertpt-training-{job.run_id}"
    )
    process.start()
    logger.info("run %s: training process %s started", job.run_id, process.pid)
    outcome = ChildOutcome()
    stop_sent_at: float | None = None
    next_flush = 0.0

    def receive(message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "result":
            outcome.result = payload
        elif kind == "failure":
            outcome.failure = payload
        else:
            recorder.handle(kind, payload)

    try:
        while True:
            try:
                receive(messages.get(timeout=_RECEIVE_TIMEOUT_SECONDS))
            except queue.Empty:
                if not process.is_alive():
                    break
            now = time.monotonic()
            if now >= next_flush:
                next_flush = now + context.poll_interval_seconds
                beat = recorder.flush()
                if not beat.owned and not outcome.lost:
                    logger.warning(
                        "run %s: no longer owned by attempt %d; stopping its training",
                        job.run_id,
                        recorder.attempt,
                    )
                    outcome.lost = True
                    stop.set()
                    stop_sent_at = now
                elif beat.cancel_requested and not stop.is_set():
                    stop.set()
                    stop_sent_at = now
                    # Training stops at the end of its step, with a checkpoint. Loading the model and
                    # preparing the data do not look at the stop event: end those now (they clean up).
                    if not recorder.training_started:
                        outcome.cancelled_while_preparing = True
                        process.terminate()
            if (
                stop_sent_at is not None
                and now - stop_sent_at > context.stop_grace_seconds
                and process.is_alive()
            ):
                logger.warning(
                    "run %s: training process did not stop in %.0f s; terminating it",
                    job.run_id,
                    context.stop_grace_seconds,
                )
                process.terminate()
                stop_sent_at = now
        # The child flushed its queue before exiting: what it said last may still be in the pipe.
        while True:
            try:
                receive(messages.get(timeout=_DRAIN_TIMEOUT_SECONDS))
            except queue.Empty:
                break
    finally:
        if process.is_alive():  # this loop failed: do not leave an orphan training
            stop.set()
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
        process.join()
        messages.close()
    outcome.exitcode = process.exitcode
    logger.info("run %s: training process exited with %s", job.run_id, process.exitcode)
    return outcome


def _record_outcome(outcome: ChildOutcome, recorder: RunRecorder, job: TrainingJob) -> RunStatus | None:
    run_id = job.run_id
    if outcome.lost:
        return None
    if outcome.failure is not None and not outcome.cancelled_while_preparing:
        error = {key: value for key, value in outcome.failure.items() if key != "traceback"}
        logger.error(
            "run %s failed (%s): %s\n%s",
            run_id,
            error.get("type"),
            error.get("message"),
            outcome.failure.get("traceback", ""),
        )
        return _finish(recorder, RunStatus.FAILED, ("failed", str(error.get("message")), error), error=error)
    result = outcome.result
    if outcome.cancelled_while_preparing or (result is not None and result.get("status") == "cancelled"):
        step = recorder.last_checkpoint_step
        message = (
            "cancelled while preparing the data"
            if result is None
            else f"cancelled at step {result['steps']} of {result['max_steps']}"
            + (f"; the checkpoint of step {step} is kept" if step is not None else "")
        )
        data = {"step": None if result is None else result["steps"], "checkpoint_step": step}
        return _finish(recorder, RunStatus.CANCELLED, ("cancelled", message, data))
    if result is not None:
        return _succeed(recorder, job, result)
    checkpoints = complete_checkpoints(Path(job.out_dir) / "checkpoints")
    failure = describe_process_death(
        outcome.exitcode, last_checkpoint_step=checkpoints[-1][0] if checkpoints else None
    )
    logger.error("run %s: %s", run_id, failure.message)
    error = failure.as_error()
    return _finish(recorder, RunStatus.FAILED, ("failed", failure.message, error), error=error)


def _succeed(recorder: RunRecorder, job: TrainingJob, result: dict[str, Any]) -> RunStatus | None:
    model_key = f"{run_directory_key(job.run_id)}/{MODEL_SUBDIRECTORY}"
    manifest = read_json(Path(job.out_dir) / MODEL_SUBDIRECTORY / MODEL_MANIFEST) or {}
    recorder.progress.update(step=result["steps"], total_steps=result["max_steps"], eta_seconds=0)
    if isinstance(manifest.get("tokens_seen"), int):
        recorder.progress["tokens_seen"] = manifest["tokens_seen"]
    final_step = manifest.get("final_metrics_step", result["steps"])
    for split, metrics in (result.get("final_metrics") or {}).items():
        recorder.latest[split] = {**metrics, "step": final_step}
    for split, metrics in (result.get("baseline_metrics") or {}).items():
        recorder.baseline.setdefault(split, {**metrics, "step": 0})
    message = f"trained {result['steps']:,} steps in {result['runtime_seconds']:,.0f} s"
    before = (recorder.baseline.get("eval") or {}).get("masked_lm_loss")
    after = (result.get("final_metrics") or {}).get("eval", {}).get("masked_lm_loss")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        message += f"; eval masked_lm_loss {before:.4f} -> {after:.4f}"
    if result["status"] == "timed_out":
        message += f" (stopped by max_runtime_seconds before step {result['max_steps']:,})"
    data = {
        "steps": result["steps"],
        "max_steps": result["max_steps"],
        "stopped_by": "max_runtime_seconds" if result["status"] == "timed_out" else None,
        "runtime_seconds": result["runtime_seconds"],
        "baseline_metrics": result.get("baseline_metrics"),
        "final_metrics": result.get("final_metrics"),
        "tokens_seen": manifest.get("tokens_seen"),
    }
    return _finish(recorder, RunStatus.SUCCEEDED, ("succeeded", message, data), output_storage_key=model_key)


def _finish(
    recorder: RunRecorder,
    status: RunStatus,
    event: tuple[str, str, dict[str, Any]],
    *,
    error: dict[str, Any] | None = None,
    output_storage_key: str | None = None,
) -> RunStatus | None:
    if status != RunStatus.SUCCEEDED:
        recorder.progress["eta_seconds"] = None
    if not recorder.finish(status, event=event, error=error, output_storage_key=output_storage_key):
        logger.warning(
            "run %s: no longer owned by attempt %d; its end was not recorded",
            recorder.run_id,
            recorder.attempt,
        )
        return None
    logger.info("run %s %s: %s", recorder.run_id, status.value, event[1])
    return status


def _fail_claimed(
    claimed: ClaimedRun, context: WorkerContext, publisher: LivePublisher, failure: RunFailure
) -> RunStatus | None:
    """Fail a claimed run whose training could not start or be supervised (an input is gone, a bug)."""
    error = failure.as_error()
    with session_scope(context.session_factory) as session:
        if not lifecycle.finish_run(session, claimed.id, claimed.attempt, RunStatus.FAILED, error=error):
            return None
        event = lifecycle.add_event(session, claimed.id, "failed", failure.message, level="error", data=error)
        message = live.event_data(event)
    logger.error("run %s failed (%s): %s", claimed.id, failure.type, failure.message)
    publisher.publish("event", message)
    publisher.publish("status", {"status": RunStatus.FAILED.value, "progress": {}, "error": error})
    return RunStatus.FAILED
