"""Execute one evaluation: claim it, locate its inputs, compare the models in a supervised child process,
record the end. The machinery of runs (:mod:`worker.executor`), for a job that keeps no checkpoint.

    execute_evaluation(evaluation_id)     # what the Celery task bertpt.evaluations.execute calls

1. **Claim** (``queued -> running``, ``attempt + 1``, one conditional UPDATE): a duplicate delivery or an
   evaluation cancelled while it waited gets nothing, and the call returns None. Errors before this point
   propagate, so that the task retries them; after it, every outcome is recorded on the evaluation.
2. **Inputs** from rows only: the dataset's files (:func:`worker.inputs.dataset_paths`), each model
   resolved again as a run's base model is (a run or checkpoint deleted since is an ``input_error``).
3. **Compare** in a ``spawn``-ed child (:mod:`worker.evaluation_process`) while this process supervises
   (:func:`worker.supervision.supervise_child`): it writes the progress with the heartbeat (the lease)
   about once a second and reads whether the owner asked to cancel; a cancel sets the child's stop event,
   which ``compare_models`` polls before each fit and after every batch.
4. **Finish**: succeeded with the result (``ComparisonResult`` as JSON), cancelled, or failed with
   ``{type, message}`` (tracebacks go to this log only).
5. **Retry** an attempt whose child died or ran out of memory: queued again and its task sent, to start
   over, up to ``MAX_ATTEMPTS``; then it fails saying so. One being cancelled is stopped instead.

Every write after the claim is fenced by the claim's attempt: if the evaluation is taken away meanwhile
(the reaper), the child is stopped and nothing more is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.base_models.service import resolve_base_model
from app.config import Settings
from app.db import session_scope
from app.errors import ValidationFailed
from app.evaluations import lifecycle
from app.evaluations.lifecycle import ClaimedEvaluation, interrupted_message
from app.evaluations.states import EVALUATION_STATES, EvaluationStatus
from app.jobs.leases import Heartbeat
from app.jobs.states import Trigger
from app.models import Dataset, Evaluation, Tenant
from app.runs.lifecycle import retry_allowed
from app.storage import Storage
from worker.context import WorkerContext, get_worker_context
from worker.evaluation.results import ComparisonResult, EvaluationProgress
from worker.evaluation_process import (
    RETRIED_EVALUATION_FAILURES,
    EvaluationMessage,
    EvaluationStopped,
    run_evaluation_job,
)
from worker.failures import RunFailure, describe_process_death, supervisor_failure
from worker.inputs import InputError, dataset_paths
from worker.job import EvaluatedModel, EvaluationJob
from worker.supervision import supervise_child, write_with_retries

__all__ = ["EvaluationAttempt", "build_evaluation_job", "execute_evaluation"]

logger = logging.getLogger(__name__)


def execute_evaluation(
    evaluation_id: str, *, context: WorkerContext | None = None
) -> EvaluationStatus | None:
    """Run ``evaluation_id`` to its end if it can be claimed; its final status (``queued`` when it was
    queued again for another attempt), or None when it was not claimed (or was taken away)."""
    context = context or get_worker_context()
    with session_scope(context.session_factory) as session:
        claimed = lifecycle.claim_evaluation(session, evaluation_id, context.worker_id)
    if claimed is None:
        logger.info(
            "evaluation %s not claimed: it is not queued (a duplicate delivery, or cancelled)", evaluation_id
        )
        return None
    logger.info("evaluation %s claimed by %s (attempt %d)", evaluation_id, context.worker_id, claimed.attempt)
    attempt = EvaluationAttempt(claimed, context)
    try:
        return _execute_claimed(attempt, context)
    except Exception:
        logger.exception("%s: the supervisor failed", attempt.label)
        return attempt.fail(supervisor_failure(attempt.label))


def build_evaluation_job(
    session: Session, evaluation_id: str, settings: Settings, storage: Storage
) -> EvaluationJob:
    """The :class:`EvaluationJob` of ``evaluation_id``, from its rows; InputError when its dataset or one
    of its models is gone (``models[i]`` named)."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None:
        raise InputError(RunFailure("input_error", f"evaluation {evaluation_id} no longer exists"))
    tenant = session.get(Tenant, evaluation.tenant_id)
    if tenant is None:
        raise InputError(
            RunFailure("input_error", f"the tenant of evaluation {evaluation_id} no longer exists")
        )
    train_path, test_path = dataset_paths(
        session, storage, evaluation.dataset_id, tenant_id=evaluation.tenant_id
    )
    dataset = session.get(Dataset, evaluation.dataset_id)
    assert dataset is not None  # dataset_paths found it
    models = []
    for index, model in enumerate(evaluation.resolved_models):
        try:
            resolved = resolve_base_model(session, tenant, model["spec"], settings=settings, storage=storage)
        except ValidationFailed as exc:
            message = f"models[{index}] ({model['spec']}) can no longer be used: {exc.message}"
            raise InputError(RunFailure("input_error", message)) from None
        models.append(EvaluatedModel(name=str(resolved.spec), source=resolved.source))
    return EvaluationJob(
        evaluation_id=evaluation.id,
        dataset_id=dataset.id,
        models=tuple(models),
        train_path=str(train_path),
        train_name=dataset.filename,
        test_path=str(test_path) if test_path is not None else None,
        test_name=dataset.test_filename,
        config={
            "method": evaluation.method,
            "seeds": evaluation.seeds,
            "hyperparameters": dict(evaluation.hyperparameters or {}),
        },
        hf_hub_offline=settings.hf_hub_offline,
    )


@dataclass
class _Outcome:
    result: ComparisonResult | None = None
    failure: RunFailure | None = None
    stopped: bool = False


@dataclass
class EvaluationAttempt:
    """One attempt at an evaluation, as its supervisor knows it: the progress to write with the next
    heartbeat, its status as the last heartbeat read it, and its writes (all fenced by ``attempt``)."""

    claimed: ClaimedEvaluation
    context: WorkerContext
    status: EvaluationStatus = field(default_factory=lambda: EVALUATION_STATES.target(Trigger.CLAIM))
    progress: dict[str, Any] = field(default_factory=dict)
    outcome: _Outcome = field(default_factory=_Outcome)
    _progress_changed: bool = field(default=False, init=False)

    @property
    def label(self) -> str:
        return f"evaluation {self.claimed.id}"

    def receive(self, message: EvaluationMessage) -> None:
        match message:
            case EvaluationProgress():
                self.progress = message.model_dump(include={"done", "total", "model", "seed"})
                self._progress_changed = True
            case ComparisonResult():
                self.outcome.result = message
            case EvaluationStopped():
                self.outcome.stopped = True
            case RunFailure():
                self.outcome.failure = message

    def flush(self) -> Heartbeat[EvaluationStatus]:
        """The heartbeat, with the progress when it changed; a database error is a heartbeat not
        confirmed (the progress is written at the next one)."""
        progress = self.progress if self._progress_changed else None
        try:
            with session_scope(self.context.session_factory) as session:
                beat = lifecycle.heartbeat(session, self.claimed.id, self.claimed.attempt, progress=progress)
        except DBAPIError as exc:
            logger.warning("%s: heartbeat failed, retrying at the next one (%s)", self.label, exc)
            cancelling = self.status == EvaluationStatus.CANCELLING
            return Heartbeat(owned=True, cancel_requested=cancelling, status=self.status, confirmed=False)
        self._progress_changed = False
        self.status = beat.status or self.status
        return beat

    def finish(
        self,
        trigger: Trigger,
        *,
        result: ComparisonResult | None = None,
        error: dict[str, Any] | None = None,
    ) -> EvaluationStatus | None:
        """End the evaluation (succeed, fail or stop) with what it leaves; its new status, or None when
        this attempt no longer holds it (nothing was written)."""

        def end(session: Session) -> bool:
            return lifecycle.finish_evaluation(
                session,
                self.claimed.id,
                self.claimed.attempt,
                trigger,
                result=result.model_dump(mode="json") if result is not None else None,
                error=error,
                progress=self.progress,
            )

        if not write_with_retries(self.context.session_factory, end, label=self.label):
            logger.warning(
                "%s: no longer held by attempt %d; its end was not recorded", self.label, self.claimed.attempt
            )
            return None
        status = EVALUATION_STATES.target(trigger)
        logger.info("%s %s", self.label, status.value)
        return status

    def fail(self, failure: RunFailure) -> EvaluationStatus | None:
        logger.error(
            "%s failed (%s): %s\n%s", self.label, failure.type, failure.message, failure.traceback or ""
        )
        return self.finish(Trigger.FAIL, error=failure.as_error())

    def retry_or_fail(self, failure: RunFailure) -> EvaluationStatus | None:
        """An attempt interrupted by ``failure`` (not the owner's doing): queued again to start over while
        attempts are left, else failed saying so; stopped when it is being cancelled (a cancel that lands
        after the last heartbeat too: the retry, from ``running`` only, is then refused and it is stopped)."""
        if self.status == EvaluationStatus.CANCELLING:
            return self.finish(Trigger.STOP)
        max_attempts = self.context.settings.max_attempts
        message = interrupted_message(self.claimed.attempt, max_attempts, failure.message)
        if not retry_allowed(self.claimed.attempt, 0, max_attempts):
            return self.fail(RunFailure(failure.type, message, failure.details, failure.traceback))

        def requeue(session: Session) -> bool:
            return lifecycle.retry_evaluation(session, self.claimed.id, self.claimed.attempt)

        if not write_with_retries(self.context.session_factory, requeue, label=self.label):
            # Still held but cancelled since the last heartbeat (else finish writes nothing and says so).
            return self.finish(Trigger.STOP)
        logger.warning("%s: %s", self.label, message)
        try:
            self.context.enqueue_evaluation(self.claimed.id)
        except Exception as exc:  # queued: the housekeeping sends its task again in time
            logger.warning("%s: its task could not be sent yet (%s)", self.label, exc)
        return EvaluationStatus.QUEUED


def _execute_claimed(attempt: EvaluationAttempt, context: WorkerContext) -> EvaluationStatus | None:
    try:
        with session_scope(context.session_factory) as session:
            job = build_evaluation_job(session, attempt.claimed.id, context.settings, context.storage)
    except InputError as exc:
        return attempt.fail(exc.failure)
    models = ", ".join(model.name for model in job.models)
    logger.info("%s: comparing %s on dataset %s", attempt.label, models, job.dataset_id)
    end = supervise_child(
        run_evaluation_job,
        job,
        label=attempt.label,
        what="evaluation process",
        process_name=f"bertpt-evaluation-{job.evaluation_id}",
        receive=attempt.receive,
        flush=attempt.flush,
        context=context,
    )
    if end.lost:
        return None
    outcome = attempt.outcome
    if outcome.failure is not None:
        if outcome.failure.type in RETRIED_EVALUATION_FAILURES:
            logger.error(
                "%s: %s\n%s", attempt.label, outcome.failure.message, outcome.failure.traceback or ""
            )
            return attempt.retry_or_fail(outcome.failure)
        return attempt.fail(outcome.failure)
    if outcome.result is not None:
        return attempt.finish(Trigger.SUCCEED, result=outcome.result)
    if outcome.stopped:
        return attempt.finish(Trigger.STOP)
    death = describe_process_death(end.exitcode, process="evaluation process", type="evaluation_process_died")
    logger.error("%s: %s", attempt.label, death.message)
    return attempt.retry_or_fail(death)
